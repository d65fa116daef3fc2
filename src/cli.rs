//! The `extproc-gateway` command line. Every server setting comes from the config
//! file, and can be overridden by an environment variable and then by a flag.
//!
//! [`run`] is the whole binary: a user's own binary registers its processors and
//! calls it, so it gets the same subcommands, flags, reload and checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, GatewayConfig, ListenAddr, Secret};
use crate::registry::Registry;
use crate::server;
use crate::telemetry::LogFormat;

/// One ext_proc server for Envoy that runs a chain of processors per route.
#[derive(Debug, Parser)]
#[command(name = "extproc-gateway", version, about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve` (also accepted without the word `serve`).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands.
// Parsed once at start-up: the size of the serve variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(ServeArgs),
    /// Validate a config file and print its effective routes.
    CheckConfig {
        /// The YAML file.
        file: PathBuf,
    },
    /// Check an Envoy bootstrap against the gateway's routes: report ext_proc
    /// settings that withhold what a route needs, fail open, or break under load.
    /// Exit code 0 without errors, 1 with errors, 2 when a file cannot be read.
    CheckEnvoy {
        /// The Envoy bootstrap YAML (what `envoy -c` reads).
        envoy: PathBuf,
        /// The gateway config to check against (default: the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the embedded default config.
    PrintConfig,
    /// Print the config file's JSON Schema (every registered processor's settings
    /// included), for editors: `# yaml-language-server: $schema=gateway.schema.json`.
    Schema,
    /// Run a small HTTP upstream that answers every request with a JSON echo of its
    /// method, path, headers and body (for trying the gateway and for load tests).
    EchoUpstream {
        /// Listen address.
        #[arg(long, env = "ECHO_ADDR", default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
    },
}

/// Settings of `serve`; each overrides the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Config file (YAML). Without one, the embedded default is served.
    #[arg(long, short = 'c', env = "EXTPROC_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// ext_proc gRPC listen address, `ip:port` or `unix:/path/to.sock` (overrides
    /// server.grpc_addr).
    #[arg(long, env = "EXTPROC_GRPC_ADDR", global = true)]
    pub grpc_addr: Option<ListenAddr>,
    /// Admin HTTP listen address (overrides server.admin_addr).
    #[arg(long, env = "EXTPROC_ADMIN_ADDR", global = true)]
    pub admin_addr: Option<SocketAddr>,
    /// Bearer token for /config, /routes and /api/snapshot (overrides
    /// server.admin_token and server.admin_token_file). Prefer the environment
    /// variable or --admin-token-file: a flag's value shows in `ps`.
    #[arg(
        long,
        env = "EXTPROC_ADMIN_TOKEN",
        hide_env_values = true,
        global = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<String>,
    /// File holding the admin token (overrides server.admin_token_file and
    /// server.admin_token).
    #[arg(long, env = "EXTPROC_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,
    /// ext_proc over HTTP (Envoy's http_service) listen address (overrides server.http_addr).
    #[arg(long, env = "EXTPROC_HTTP_ADDR", global = true)]
    pub http_addr: Option<SocketAddr>,
    /// Largest gRPC message in bytes (overrides server.max_message_bytes).
    #[arg(long, env = "EXTPROC_MAX_MESSAGE_BYTES", global = true)]
    pub max_message_bytes: Option<usize>,
    /// Drain time after SIGTERM, e.g. `10s` (overrides server.shutdown_grace).
    #[arg(long, env = "EXTPROC_SHUTDOWN_GRACE", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Option<Duration>,
    /// Time between SIGTERM and the drain, serving while reported not ready, e.g. `5s`
    /// (overrides server.drain_delay).
    #[arg(long, env = "EXTPROC_DRAIN_DELAY", value_parser = humantime::parse_duration, global = true)]
    pub drain_delay: Option<Duration>,
    /// Read the config file again this often and reload it when it changed, e.g. `10s`
    /// (overrides server.config_reload_interval; `0s`: on SIGHUP only).
    #[arg(long, env = "EXTPROC_CONFIG_RELOAD_INTERVAL", value_parser = humantime::parse_duration, global = true)]
    pub config_reload_interval: Option<Duration>,
    /// Once listening, write the bound addresses here as JSON (`{"grpc": ..., "admin":
    /// ..., "http": ...}`), so a supervisor or a test can bind port 0 and learn the port.
    #[arg(long, env = "EXTPROC_ADDRESSES_FILE", global = true)]
    pub addresses_file: Option<PathBuf>,
    /// Log filter, e.g. `info` or `extproc_gateway=debug`.
    #[arg(long, env = "EXTPROC_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log lines as `text` or `json` (one object per line, with `trace_id` and
    /// `span_id` when the stream's trace is exported).
    #[arg(long, env = "EXTPROC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// Loads the config (file or embedded default) naming built-in processors only,
    /// and applies the overrides.
    pub fn resolve(&self) -> Result<GatewayConfig, ConfigError> {
        self.resolve_with(&Registry::builtin())
    }

    /// Loads the config (file or embedded default), its processors named by
    /// `registry`, and applies the overrides.
    pub fn resolve_with(&self, registry: &Registry) -> Result<GatewayConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => GatewayConfig::load_with(registry, path)?,
            None => GatewayConfig::embedded_with(registry)?,
        };
        if let Some(a) = &self.grpc_addr {
            config.server.grpc_addr = a.clone();
        }
        if let Some(a) = self.admin_addr {
            config.server.admin_addr = a;
        }
        if let Some(t) = &self.admin_token {
            config.server.admin_token = Some(Secret::new(t.clone()));
            config.server.admin_token_file = None;
        }
        if let Some(f) = &self.admin_token_file {
            config.server.admin_token_file = Some(f.clone());
            config.server.admin_token = None;
        }
        if let Some(a) = self.http_addr {
            config.server.http_addr = Some(a);
        }
        if let Some(n) = self.max_message_bytes {
            config.server.max_message_bytes = n;
        }
        if let Some(g) = self.shutdown_grace {
            config.server.shutdown_grace = g;
        }
        if let Some(d) = self.drain_delay {
            config.server.drain_delay = d;
        }
        if let Some(i) = self.config_reload_interval {
            config.server.config_reload_interval = i;
        }
        Ok(config)
    }
}

/// Runs the command line (`extproc-gateway` and its subcommands) with the processors
/// of `registry`: parses the arguments, then serves or checks, and returns the
/// process's exit code.
pub fn run(registry: Registry) -> ExitCode {
    let cli = Cli::parse();
    let serve_args = match &cli.command {
        Some(Command::Serve(args)) => args.clone(),
        _ => cli.serve.clone(),
    };
    match cli.command {
        Some(Command::PrintConfig) => {
            print!("{}", crate::config::DEFAULT_YAML);
            ExitCode::SUCCESS
        }
        Some(Command::Schema) => {
            let schema = crate::config::GatewayConfig::json_schema(&registry);
            match serde_json::to_string_pretty(&schema) {
                Ok(text) => {
                    println!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot write the schema: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::CheckEnvoy { envoy, config }) => {
            crate::check_envoy::main(&registry, &envoy, config.as_deref())
        }
        Some(Command::CheckConfig { file }) => match check(&registry, &serve_args.log, &file) {
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
                                s.chain
                                    .iter()
                                    .map(|e| e.describe())
                                    .collect::<Vec<_>>()
                                    .join(", "),
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
        Some(Command::EchoUpstream { addr }) => {
            run_async(&serve_args.log, serve_args.log_format, async move {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                tracing::info!(%addr, "echo upstream serving");
                tokio::select! {
                    r = crate::upstream::serve(listener) => r?,
                    _ = server::shutdown_signal() => {}
                }
                Ok(())
            })
        }
        None | Some(Command::Serve(_)) => {
            let config = match serve_args.resolve_with(&registry) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            // SIGHUP loads the same sources again (file, environment, flags).
            let args = serve_args.clone();
            let reload: server::Reload =
                Box::new(move || args.resolve_with(&registry).map_err(|e| e.to_string()));
            let addresses_file = serve_args.addresses_file.clone();
            run_async(
                &serve_args.log,
                serve_args.log_format,
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
fn run_async(
    log: &str,
    format: LogFormat,
    fut: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
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
        let guard = crate::telemetry::init(log, format);
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
    registry: &Registry,
    log: &str,
    file: &std::path::Path,
) -> Result<GatewayConfig, ConfigError> {
    init_logging(log);
    GatewayConfig::load_with(registry, file)
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
