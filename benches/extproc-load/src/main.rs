//! `extproc-load`: Envoy's side of ext_proc under load, against any server (see the
//! library's documentation and `--help`).

use std::time::Duration;

use clap::{Parser, ValueEnum};
use extproc_load::{BodyMode, ExchangeSpec, LoadSpec, Stop};

/// The phases a filter can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PhaseArg {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BodyModeArg {
    Streamed,
    Buffered,
}

#[derive(Parser)]
#[command(
    about = "Plays Envoy's side of ext_proc against any server under load",
    after_help = "Examples:\n  extproc-load --target http://127.0.0.1:50051 -c 16 -d 10s\n  extproc-load -c 4 -n 10000 --phases request-headers,response-headers\n  extproc-load --rate 2000 -c 64 -d 30s --allow-mode-override --json out.json"
)]
struct Args {
    /// The ext_proc server.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Exchanges in flight at most.
    #[arg(short = 'c', long, default_value_t = 1)]
    concurrency: usize,
    /// HTTP/2 connections to the server.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Run this long (e.g. 10s, 1m).
    #[arg(short = 'd', long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Run this many exchanges.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Open loop: start this many exchanges per second in total, each timed from when
    /// it should have started. Closed loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// A closed-loop warm-up, not recorded, before the run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    warmup: Duration,
    /// The phases sent, in Envoy's order whatever the order given.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "request-headers,request-body,response-headers,response-body"
    )]
    phases: Vec<PhaseArg>,
    /// Request body bytes (0: no body).
    #[arg(long, default_value_t = 1024)]
    request_body: usize,
    /// Response body bytes (0: no body).
    #[arg(long, default_value_t = 1024)]
    response_body: usize,
    /// How bodies are sent: whole (BUFFERED) or in --chunk byte chunks (STREAMED).
    #[arg(long, value_enum, default_value = "buffered")]
    body_mode: BodyModeArg,
    /// Chunk size of a streamed body.
    #[arg(long, default_value_t = 16384)]
    chunk: usize,
    /// Honour the server's mode_override, as Envoy does with allow_mode_override.
    #[arg(long)]
    allow_mode_override: bool,
    /// `:method` of the request.
    #[arg(long, default_value = "POST")]
    method: String,
    /// `:path` of the request.
    #[arg(long, default_value = "/")]
    path: String,
    /// `:authority` of the request.
    #[arg(long, default_value = "load.test")]
    authority: String,
    /// A further request header, `name:value` (repeatable).
    #[arg(short = 'H', long = "header", value_parser = pair::<':'>)]
    headers: Vec<(String, String)>,
    /// gRPC initial metadata of every stream, `key=value` (repeatable).
    #[arg(long, value_parser = pair::<'='>)]
    metadata: Vec<(String, String)>,
    /// How long one exchange may take before it counts as an error.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// The server's process id: report its CPU time per exchange (with --hold, its
    /// memory per held stream).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Instead of load: open this many streams, answer-checked request headers each,
    /// hold them all open, and report the server's resident memory per held stream
    /// (needs --server-pid; spread them over enough --connections).
    #[arg(long, requires = "server_pid")]
    hold: Option<usize>,
    /// Write the report as JSON to this file (`-`: stdout, instead of the table).
    #[arg(long)]
    json: Option<String>,
    /// No progress line.
    #[arg(short, long)]
    quiet: bool,
}

fn pair<const SEP: char>(s: &str) -> Result<(String, String), String> {
    match s.split_once(SEP) {
        Some((k, v)) if !k.trim().is_empty() => {
            Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        }
        _ => Err(format!("expected name{SEP}value, got `{s}`")),
    }
}

fn spec(args: &Args) -> LoadSpec {
    let has = |p| args.phases.contains(&p);
    let body = |phase| match (has(phase), args.body_mode) {
        (false, _) => BodyMode::None,
        (true, BodyModeArg::Streamed) => BodyMode::Streamed,
        (true, BodyModeArg::Buffered) => BodyMode::Buffered,
    };
    LoadSpec {
        target: args.target.clone(),
        connections: args.connections.max(1),
        concurrency: args.concurrency,
        stop: match (args.duration, args.requests) {
            (_, Some(n)) => Stop::Requests(n),
            (Some(d), None) => Stop::Duration(d),
            (None, None) => Stop::Duration(Duration::from_secs(10)),
        },
        rate: args.rate,
        warmup: args.warmup,
        progress: !args.quiet,
        server_pid: args.server_pid,
        exchange: ExchangeSpec {
            method: args.method.clone(),
            path: args.path.clone(),
            authority: args.authority.clone(),
            headers: args.headers.clone(),
            request_headers: has(PhaseArg::RequestHeaders),
            response_headers: has(PhaseArg::ResponseHeaders),
            request_body_bytes: args.request_body,
            response_body_bytes: args.response_body,
            request_body_mode: body(PhaseArg::RequestBody),
            response_body_mode: body(PhaseArg::ResponseBody),
            chunk_bytes: args.chunk.max(1),
            request_trailers: has(PhaseArg::RequestTrailers),
            response_trailers: has(PhaseArg::ResponseTrailers),
            allow_mode_override: args.allow_mode_override,
            metadata: args.metadata.clone(),
            timeout: args.timeout,
        },
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let spec = spec(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("extproc-load: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = match (args.hold, args.server_pid) {
        (Some(streams), Some(pid)) => {
            let hold = extproc_load::hold::HoldSpec {
                target: spec.target.clone(),
                connections: spec.connections,
                streams,
                server_pid: pid,
                exchange: spec.exchange.clone(),
            };
            runtime
                .block_on(extproc_load::hold::run(&hold))
                .and_then(|r| show(&r, r.table(), args.json.as_deref(), r.errors.is_empty()))
        }
        _ => runtime
            .block_on(extproc_load::run(&spec))
            .and_then(|r| show(&r, r.table(), args.json.as_deref(), r.errors == 0)),
    };
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        // A run with failed exchanges (or streams not held) fails: its figures
        // measure errors, not work.
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("extproc-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints the table, or the JSON with `--json -`, and writes the JSON to a `--json`
/// file; passes `clean` on.
fn show(
    report: &impl serde::Serialize,
    table: String,
    json: Option<&str>,
    clean: bool,
) -> anyhow::Result<bool> {
    let text = serde_json::to_string_pretty(report)?;
    match json {
        Some("-") => println!("{text}"),
        Some(path) => {
            print!("{table}");
            std::fs::write(path, text).map_err(|e| anyhow::anyhow!("writing {path}: {e}"))?;
        }
        None => print!("{table}"),
    }
    Ok(clean)
}
