//! `extproc-floor`: the minimal ext_proc server that load comparisons are measured
//! against (see `extproc_load::floor`).
//!
//!   extproc-floor --addr 127.0.0.1:0
//!
//! prints `listening on ADDR` once bound, then serves until killed.

use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "The minimal ext_proc server: an empty CONTINUE of the matching kind for every message"
)]
struct Args {
    /// Where to listen (port 0: any free port, printed once bound).
    #[arg(long, default_value = "127.0.0.1:50061")]
    addr: SocketAddr,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = args.threads {
        runtime.worker_threads(n.max(1));
    }
    runtime.build()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr).await?;
        let mut out = std::io::stdout();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
        extproc_load::floor::serve(listener).await?;
        Ok(())
    })
}
