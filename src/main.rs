//! The `extproc-gateway` binary: the command line with the built-in processors.

use std::process::ExitCode;

use extproc_gateway::registry::Registry;

fn main() -> ExitCode {
    extproc_gateway::cli::run(Registry::builtin())
}
