//! `extproc-otlp-sink`: a local OTLP/gRPC trace collector that counts what it gets
//! (see `extproc_load::otlp_sink`).
//!
//!   extproc-otlp-sink --addr 127.0.0.1:0
//!
//! prints `listening on ADDR` once bound, then `spans N exports M` each second the
//! counts change, until killed.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use extproc_load::otlp_sink::{serve, Received};

#[derive(Parser)]
#[command(about = "A local OTLP/gRPC trace collector that only counts the spans it receives")]
struct Args {
    /// Where to listen (port 0: any free port, printed once bound).
    #[arg(long, default_value = "127.0.0.1:4317")]
    addr: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(args.addr).await?;
            let mut out = std::io::stdout();
            writeln!(out, "listening on {}", listener.local_addr()?)?;
            out.flush()?;
            let received = Arc::new(Received::default());
            let server = tokio::spawn(serve(listener, received.clone()));
            let mut shown = (0, 0);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !server.is_finished() {
                tick.tick().await;
                let now = (received.spans(), received.exports());
                if now != shown {
                    writeln!(out, "spans {} exports {}", now.0, now.1)?;
                    out.flush()?;
                    shown = now;
                }
            }
            server.await??;
            Ok(())
        })
}
