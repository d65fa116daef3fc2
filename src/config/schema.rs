//! The YAML shape of the config. Unknown keys are errors everywhere, so a typo is
//! caught at start-up instead of silently ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::transport::{ListenAddr, Secret, SocketMode, TlsConfig};
use crate::path::PathPolicy;
use crate::registry::ProcessorSpec;

/// The whole config file.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listeners and limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Response header listing the processors that ran; empty turns it off.
    #[serde(default = "default_applied_header")]
    pub applied_header: String,
    /// How routes read `:path`: normalised, with unreadable paths refused (400). Applied
    /// with the routes, so a reload applies it too.
    #[serde(default)]
    pub path_policy: PathPolicy,
    /// One log line per ext_proc stream (target `extproc_gateway::access`, level
    /// INFO, JSON with `--log-format json`): route, outcome, duration, the processors
    /// that ran, an immediate response's status, and why a body was incomplete. Off by
    /// default; applied with the routes, so a reload turns it on or off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub access_log: bool,
    /// Routes in match order.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn default_applied_header() -> String {
    crate::chain::APPLIED_HEADER.to_string()
}

/// Listeners and limits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Where Envoy connects (ext_proc and gRPC health): `ip:port`, or
    /// `unix:/path/to.sock` for a Unix-domain socket (Envoy's `pipe` address).
    pub grpc_addr: ListenAddr,
    /// Permissions of the Unix socket when `grpc_addr` is `unix:` (octal, `"0660"`
    /// by default: owner and group may connect, others may not).
    #[serde(skip_serializing_if = "is_default_mode")]
    pub grpc_socket_mode: SocketMode,
    /// TLS (and, with `client_ca_file`, mutual TLS) on the gRPC listener. Unset:
    /// plaintext, as Envoy's default cluster speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// The admin HTTP server (health, routes, config).
    pub admin_addr: SocketAddr,
    /// Bearer token required by the admin endpoints that show the config, the routes
    /// and the dashboard's data (`/config`, `/routes`, `/api/snapshot`); probes and
    /// `/metrics` stay open. Prefer `admin_token_file` or `EXTPROC_ADMIN_TOKEN`:
    /// shown as `<redacted>` in `/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret>,
    /// A file holding the admin token (surrounding whitespace ignored), read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// ext_proc over HTTP (Envoy's `http_service`: one JSON POST per message) on this
    /// address, through the same routes as gRPC. Unset (the default): not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    /// How long the HTTP listener keeps one request's state (its exchange) waiting for
    /// Envoy's next POST, e.g. response headers after request headers. Longer than the
    /// slowest upstream response the routes should still see whole.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway_api::settings::duration_schema")]
    pub http_exchange_ttl: Duration,
    /// Most request states the HTTP listener holds at once; past it the oldest is
    /// dropped (counted in `extproc_http_exchanges_total{event="evicted"}`).
    pub http_max_exchanges: usize,
    /// Largest gRPC message accepted or sent; buffered bodies must fit. Also the
    /// largest JSON body the HTTP listener reads.
    pub max_message_bytes: usize,
    /// How long in-flight streams may run once the drain starts.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway_api::settings::duration_schema")]
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long the gateway keeps accepting new streams while it reports
    /// not ready (gRPC health NOT_SERVING, `/readyz` 503), before it drains: long
    /// enough for Envoy's active health checks (interval x unhealthy_threshold) or a
    /// Kubernetes readiness probe to take it out of rotation, so no request is sent to
    /// a closed port. SIGINT (Ctrl-C) drains at once.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway_api::settings::duration_schema")]
    pub drain_delay: Duration,
    /// How often the config file is read again and, when what it says changed,
    /// reloaded as on SIGHUP; `0s` (the default) reloads on SIGHUP only. A mounted
    /// Kubernetes ConfigMap is updated in place with no signal to send, so this is how
    /// an edit reaches running pods without a rollout.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway_api::settings::duration_schema")]
    pub config_reload_interval: Duration,
    /// Longest one processor hook may take before the request gets 504; unset means
    /// no limit of the gateway's own (Envoy's `message_timeout` still applies).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "extproc_gateway_api::settings::optional_duration_schema")]
    pub processor_timeout: Option<Duration>,
    /// ext_proc streams open at once, over all connections; past it a new stream is
    /// refused with RESOURCE_EXHAUSTED (Envoy then fails or skips the request as its
    /// `failure_mode_allow` says).
    pub max_streams: usize,
    /// Streams one HTTP/2 connection may carry at once (SETTINGS_MAX_CONCURRENT_STREAMS):
    /// Envoy opens more connections past it.
    pub max_streams_per_connection: u32,
    /// A stream with no message from Envoy for this long is ended with
    /// DEADLINE_EXCEEDED (it waits across the upstream's response time, so keep it
    /// above your route timeouts); `0s` turns it off.
    #[serde(with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway_api::settings::duration_schema")]
    pub stream_idle_timeout: Duration,
    /// Body bytes all streams together may hold in memory (gathered by `echo`,
    /// `context_check`, a held full-duplex body); past it new buffering gets 503. A
    /// message still arriving over several frames holds its size here too (past the
    /// budget it is skipped, not kept, and the request gets 503), so many streams
    /// sending large messages at once cannot grow memory past it.
    pub max_buffered_bytes: usize,
    /// Body bytes one stream may hold in memory; past it 413.
    pub max_buffered_bytes_per_stream: usize,
    /// Headers (or trailers) one message may carry; more gets the client 431 (502 for
    /// a response).
    pub max_headers: usize,
    /// Bytes of header names and values one message may carry; more gets 431 (502 for
    /// a response).
    pub max_header_bytes: usize,
    /// Envoy's buffer limit (the listener's `per_connection_buffer_limit_bytes`,
    /// 1 MiB by default). A request with a larger `content-length` is asked for as
    /// STREAMED rather than BUFFERED, so Envoy does not refuse it with 413.
    pub envoy_buffer_limit_bytes: usize,
    /// Per-request metrics: stream, message and processor latency and outcomes, by
    /// route (what `/metrics`, the dashboard and the Grafana board show per route).
    /// `false` keeps only the process-wide counters (limits hit, protocol errors,
    /// JWKS fetches) and saves the clock reads and histogram updates of every message.
    pub request_metrics: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], 50051))),
            grpc_socket_mode: SocketMode::default(),
            tls: None,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 9180)),
            admin_token: None,
            admin_token_file: None,
            http_addr: None,
            http_exchange_ttl: Duration::from_secs(60),
            http_max_exchanges: 16_384,
            // Envoy's default buffer (1 MiB) plus headers, with room to spare.
            max_message_bytes: 4 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            drain_delay: Duration::from_secs(5),
            config_reload_interval: Duration::ZERO,
            processor_timeout: None,
            envoy_buffer_limit_bytes: crate::router::ENVOY_DEFAULT_BUFFER_LIMIT,
            max_streams: 10_000,
            max_streams_per_connection: 1_000,
            stream_idle_timeout: Duration::from_secs(300),
            max_headers: 256,
            max_header_bytes: 96 * 1024,
            max_buffered_bytes: 512 * 1024 * 1024,
            max_buffered_bytes_per_stream: 16 * 1024 * 1024,
            request_metrics: true,
        }
    }
}

fn is_default_mode(m: &SocketMode) -> bool {
    *m == SocketMode::default()
}

/// One route.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name (logs, metrics, `/routes`).
    pub name: String,
    /// Conditions; absent means every request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matcher: Option<MatchConfig>,
    /// The chain, in order.
    #[serde(default)]
    pub processors: Vec<ProcessorSpec>,
    /// Lets a processor after `jwt_auth` write headers under its claim header prefix
    /// (`instructions`, whose names the client picks; `headers` or any processor
    /// whose header falls under the prefix). Off: such a chain is refused at load,
    /// since the upstream could no longer tell verified claims from forged ones. On:
    /// the chain loads and a warning is logged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_claim_overwrite: bool,
}

/// Route conditions; all that are set must hold.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Path equals (query string excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// Path starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Whole path matches this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// `:authority` equals (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// `:method` is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Header conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchConfig>,
    /// Envoy route name (`xds.route_name`; list it in the filter's `request_attributes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_name: Option<String>,
    /// gRPC initial metadata entries (ExtProcPerRoute `grpc_initial_metadata`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grpc_metadata: BTreeMap<String, String>,
    /// A dynamic metadata value Envoy forwards to the gateway (list the namespace in
    /// the filter's `metadata_options.forwarding_namespaces.untyped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataMatchConfig>,
}

/// `namespace.key == value` in Envoy's dynamic metadata.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataMatchConfig {
    /// Metadata namespace.
    pub namespace: String,
    /// Key in the namespace.
    pub key: String,
    /// Expected value (numbers and booleans as their JSON text).
    pub value: String,
}

/// One header condition: exactly one of `exact`, `prefix`, `regex`, `present`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatchConfig {
    /// Header name.
    pub name: String,
    /// Value equals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Value starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Whole value matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Header present (true) or absent (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}
