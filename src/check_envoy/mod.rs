//! `extproc-gateway check-envoy ENVOY_YAML [--config GATEWAY_YAML]`: reads an Envoy
//! bootstrap and reports where its ext_proc filters and the gateway's routes disagree.
//!
//! Envoy accepts most of these configs silently and the trouble shows only under
//! traffic: a body the gateway never receives because `allow_mode_override` is off, a
//! 413 on the first large body, an authenticating route that fails open. Each finding
//! names the line to edit and the fix.
//!
//! How routes are paired with filters: a filter's gRPC initial metadata (its
//! `grpc_service.initial_metadata`, merged with the `grpc_initial_metadata` of an
//! `ExtProcPerRoute` override) decides which gateway routes with `match.grpc_metadata`
//! it can reach; every other route condition (path, headers, authority, route name)
//! is assumed to be able to match, so each such route counts for every filter.

mod checks;
pub mod envoy;
pub mod findings;
pub mod gateway;
pub mod yaml;

use std::path::Path;
use std::process::ExitCode;

pub use findings::{Finding, Report, Severity};

use crate::config::GatewayConfig;

/// Exit code when the input could not be checked at all (unreadable file, YAML
/// syntax, invalid gateway config), as opposed to 1 for a config with errors.
pub const EXIT_UNCHECKED: u8 = 2;

/// Checks Envoy YAML text against a gateway config. `file` names the text in findings.
/// `Err` means the text is not YAML (a finding with the line of the syntax error).
pub fn check(text: &str, file: &str, gateway: &GatewayConfig) -> Result<Report, Finding> {
    let unchecked = |line: usize, what: String| Finding {
        file: file.to_string(),
        line,
        severity: Severity::Error,
        what,
        fix: String::new(),
    };
    let root = yaml::parse(text)
        .map_err(|e| {
            unchecked(
                e.line,
                format!("not valid YAML (column {}): {}", e.column, e.message),
            )
        })?
        .ok_or_else(|| unchecked(0, "the file holds no YAML document".into()))?;
    let routes = gateway::routes(gateway)
        .map_err(|(field, msg)| unchecked(0, format!("gateway config: {field}: {msg}")))?;
    let mut report = Report {
        file: file.to_string(),
        routes: routes.len(),
        ..Report::default()
    };
    let boot = match envoy::Bootstrap::read(&root) {
        Ok(b) => b,
        Err(e) => {
            report.push(Finding {
                file: file.to_string(),
                line: e.line,
                severity: Severity::Error,
                what: e.message,
                fix: "pass an Envoy bootstrap (the file given to `envoy -c`)".into(),
            });
            return Ok(report);
        }
    };
    Ok(checks::run(file, &boot, &routes, gateway, root.line))
}

/// The subcommand: loads both files, prints one line per finding and a summary, and
/// returns 0 (no errors), 1 (errors) or 2 (could not check).
pub fn main(envoy_file: &Path, config: Option<&Path>) -> ExitCode {
    let name = envoy_file.display().to_string();
    let gateway = match config {
        Some(path) => GatewayConfig::load(path),
        None => GatewayConfig::embedded(),
    };
    let gateway = match gateway {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_UNCHECKED);
        }
    };
    let text = match std::fs::read_to_string(envoy_file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: error: cannot read: {e}");
            return ExitCode::from(EXIT_UNCHECKED);
        }
    };
    match check(&text, &name, &gateway) {
        Ok(report) => {
            for f in &report.findings {
                println!("{f}");
            }
            println!("{}", report.summary());
            if report.errors() > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(finding) => {
            eprintln!("{finding}");
            ExitCode::from(EXIT_UNCHECKED)
        }
    }
}
