//! The `extproc-gateway` binary.

use std::process::ExitCode;

use clap::Parser;
use extproc_gateway::cli::{Cli, Command};
use extproc_gateway::config::GatewayConfig;
use extproc_gateway::{server, upstream};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serve_args = match &cli.command {
        Some(Command::Serve(args)) => args.clone(),
        _ => cli.serve.clone(),
    };
    match cli.command {
        Some(Command::PrintConfig) => {
            print!("{}", extproc_gateway::config::DEFAULT_YAML);
            ExitCode::SUCCESS
        }
        Some(Command::CheckEnvoy { envoy, config }) => {
            extproc_gateway::check_envoy::main(&envoy, config.as_deref())
        }
        Some(Command::CheckConfig { file }) => match check(&serve_args.log, &file) {
            Ok(config) => {
                if let Err(e) = server::check_files(&config) {
                    eprintln!("{}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
                println!("{}: ok", file.display());
                match config.build_router() {
                    Ok(router) => {
                        for r in router.routes() {
                            let s = r.summary();
                            println!(
                                "route {}: {} -> [{}] (phases: {})",
                                s.name,
                                s.matcher,
                                s.processors.join(", "),
                                s.phases.join(", ")
                            );
                        }
                        ExitCode::SUCCESS
                    }
                    Err((field, msg)) => {
                        eprintln!("{}: {field}: {msg}", file.display());
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::EchoUpstream { addr }) => run(&serve_args.log, async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(%addr, "echo upstream serving");
            tokio::select! {
                r = upstream::serve(listener) => r?,
                _ = server::shutdown_signal() => {}
            }
            Ok(())
        }),
        None | Some(Command::Serve(_)) => {
            let config = match serve_args.resolve() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            // SIGHUP loads the same sources again (file, environment, flags).
            let args = serve_args.clone();
            let reload: server::Reload =
                Box::new(move || args.resolve().map_err(|e| e.to_string()));
            let addresses_file = serve_args.addresses_file.clone();
            run(
                &serve_args.log,
                server::serve_with_reload(config, reload, server::shutdown_signal(), move |b| {
                    if let Some(path) = addresses_file {
                        write_addresses(&path, &b);
                    }
                }),
            )
        }
    }
}

/// Runs `fut` on a multi-threaded runtime with logging and (when the OTEL variables
/// ask for it) trace export, flushed before returning.
fn run(log: &str, fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let guard = extproc_gateway::telemetry::init(log);
        let result = fut.await;
        // Flush spans while the runtime (and the exporter's channel) still runs.
        let _ = tokio::task::spawn_blocking(move || drop(guard)).await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("extproc-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes the bound addresses for `--addresses-file` (whole file at once: written to
/// a temporary name, then renamed, so a reader never sees half of it).
fn write_addresses(path: &std::path::Path, bound: &server::Bound) {
    let json = serde_json::json!({
        "grpc": bound.grpc.to_string(),
        "admin": bound.admin.to_string(),
        "http": bound.http.map(|a| a.to_string()),
    });
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, json.to_string()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::error!(path = %path.display(), error = %e, "cannot write the addresses file");
    }
}

fn check(
    log: &str,
    file: &std::path::Path,
) -> Result<GatewayConfig, extproc_gateway::config::ConfigError> {
    init_logging(log);
    GatewayConfig::load(file)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
