//! The parts of an Envoy bootstrap that decide how requests reach the gateway: the
//! listeners, their HttpConnectionManagers, the ext_proc filters in them, the
//! `ExtProcPerRoute` overrides on virtual hosts and routes, and the clusters. Only what
//! the checks read is modelled; every piece keeps its node so findings can name a line.

use std::time::Duration;

use super::yaml::{Node, Value};
use crate::modes::{BodyMode, ModeOverride};

const HCM_TYPE: &str =
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const HCM_NAME: &str = "envoy.filters.network.http_connection_manager";
const EXT_PROC_TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor";
const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute";
const FILTER_CONFIG_TYPE: &str = "envoy.config.route.v3.FilterConfig";

/// Envoy's `per_connection_buffer_limit_bytes` when a listener does not set it.
pub const DEFAULT_BUFFER_LIMIT: u64 = 1024 * 1024;

/// Envoy's ext_proc `message_timeout` when the filter does not set it.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_millis(200);

/// The whole bootstrap, as far as the checks go.
#[derive(Debug)]
pub struct Bootstrap<'a> {
    /// Static listeners (LDS ones cannot be seen in the file).
    pub listeners: Vec<Listener<'a>>,
    /// Static clusters.
    pub clusters: Vec<&'a Node>,
    /// Whether clusters may also come from CDS (a missing static cluster is then not
    /// proof of a missing cluster).
    pub dynamic_clusters: bool,
    /// Whether listeners may also come from LDS.
    pub dynamic_listeners: bool,
}

/// One listener.
#[derive(Debug)]
pub struct Listener<'a> {
    /// `name`, or `#N` when unnamed.
    pub name: String,
    /// The listener's node (its line is the `- name:` line).
    pub node: &'a Node,
    /// `per_connection_buffer_limit_bytes` when set.
    pub buffer_limit: Option<&'a Node>,
    /// Every HttpConnectionManager in its filter chains.
    pub hcms: Vec<Hcm<'a>>,
}

impl Listener<'_> {
    /// The buffer limit Envoy applies (a bad value reads as the default; Envoy would
    /// refuse the file anyway).
    pub fn buffer_limit_bytes(&self) -> u64 {
        self.buffer_limit
            .and_then(Node::as_u64)
            .unwrap_or(DEFAULT_BUFFER_LIMIT)
    }
}

/// One HttpConnectionManager.
#[derive(Debug)]
pub struct Hcm<'a> {
    /// Its `typed_config`.
    pub config: &'a Node,
    /// The ext_proc filters in its `http_filters`, in order.
    pub filters: Vec<ExtProcFilter<'a>>,
    /// Its inline `route_config` (absent with RDS).
    pub route_config: Option<&'a Node>,
}

/// One ext_proc filter.
#[derive(Debug)]
pub struct ExtProcFilter<'a> {
    /// The filter's `name` (the key of its per-route configs).
    pub name: String,
    /// The filter entry (`- name: envoy.filters.http.ext_proc`).
    pub node: &'a Node,
    /// Its `typed_config` (the ExternalProcessor).
    pub config: &'a Node,
}

impl<'a> ExtProcFilter<'a> {
    /// A field of the ExternalProcessor.
    pub fn field(&self, name: &str) -> Option<&'a Node> {
        self.config.get(name)
    }

    /// A boolean field with Envoy's default `false`, and the node when set.
    pub fn flag(&self, name: &str) -> Flag<'a> {
        Flag::of(self.config.get(name))
    }

    /// The line to point at for a setting that is absent: the typed_config.
    pub fn line(&self) -> usize {
        self.config.line
    }
}

/// A boolean setting: its value (Envoy's default when absent) and the node when set.
#[derive(Debug, Clone, Copy)]
pub struct Flag<'a> {
    /// The value in force.
    pub value: bool,
    /// The node, when the setting is written.
    pub node: Option<&'a Node>,
}

impl<'a> Flag<'a> {
    /// Reads a boolean (or BoolValue) node; absent or unreadable means `false`.
    pub fn of(node: Option<&'a Node>) -> Self {
        Flag {
            value: node.and_then(Node::as_bool).unwrap_or(false),
            node,
        }
    }

    /// The line of the setting, or `fallback` when it is not written.
    pub fn line_or(&self, fallback: usize) -> usize {
        self.node.map(|n| n.line).unwrap_or(fallback)
    }
}

/// Where a filter's gRPC stream goes.
#[derive(Debug, Clone)]
pub enum Service<'a> {
    /// `grpc_service.envoy_grpc`: a cluster of this bootstrap.
    EnvoyGrpc {
        /// `cluster_name`.
        cluster: String,
        /// The `cluster_name` node.
        node: &'a Node,
        /// `authority`, when set: Envoy sends it as `:authority` instead of the
        /// cluster name.
        authority: Option<String>,
    },
    /// `grpc_service.google_grpc`: Envoy's other gRPC client, no cluster.
    GoogleGrpc(&'a Node),
    /// `http_service`: ext_proc over HTTP (headers only).
    Http(&'a Node),
    /// Neither.
    Missing,
}

impl<'a> Service<'a> {
    /// Reads `grpc_service` (or `http_service`) of an ExternalProcessor or of
    /// ExtProcOverrides; `None` when neither is written.
    pub fn of(config: &'a Node) -> Option<Self> {
        if let Some(grpc) = config.get("grpc_service") {
            if let Some(envoy) = grpc.get("envoy_grpc") {
                let node = envoy.get("cluster_name").unwrap_or(envoy);
                return Some(Service::EnvoyGrpc {
                    cluster: node.as_str().unwrap_or_default().to_string(),
                    node,
                    authority: envoy
                        .get("authority")
                        .and_then(Node::as_str)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string),
                });
            }
            if let Some(google) = grpc.get("google_grpc") {
                return Some(Service::GoogleGrpc(google));
            }
            return Some(Service::Missing);
        }
        config.get("http_service").map(Service::Http)
    }

    /// The gRPC initial metadata the service sends (`grpc_service.initial_metadata`).
    pub fn metadata_of(config: &Node) -> Vec<(String, String)> {
        header_values(config.at(&["grpc_service", "initial_metadata"]))
    }
}

/// `HeaderValue` lists (`[{key, value}]`) as lower-case key / value pairs.
pub fn header_values(node: Option<&Node>) -> Vec<(String, String)> {
    node.map(Node::items)
        .unwrap_or_default()
        .iter()
        .filter_map(|h| {
            let key = h.get("key")?.as_str()?.to_ascii_lowercase();
            let value = h.get("value").and_then(Node::as_str).unwrap_or_default();
            Some((key, value.to_string()))
        })
        .collect()
}

/// Envoy's metadata merge: a later entry replaces every earlier one of the same key.
pub fn merge_metadata(base: &mut Vec<(String, String)>, more: &[(String, String)]) {
    for (k, v) in more {
        if let Some(slot) = base.iter_mut().find(|(bk, _)| bk == k) {
            slot.1 = v.clone();
        } else {
            base.push((k.clone(), v.clone()));
        }
    }
}

/// `HeaderSendMode.DEFAULT`: headers sent, trailers skipped.
pub const DEFAULT: i32 = 0;
/// `HeaderSendMode.SEND`.
pub const SEND: i32 = 1;
/// `HeaderSendMode.SKIP`.
pub const SKIP: i32 = 2;

/// An Envoy `processing_mode` as the checks compare it: each field holds the enum
/// value Envoy's config takes (as a number or a name), so a value the gateway has no
/// name for still reads back as it was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessingMode {
    /// `request_header_mode` (a `HeaderSendMode`).
    pub request_header_mode: i32,
    /// `response_header_mode` (a `HeaderSendMode`).
    pub response_header_mode: i32,
    /// `request_body_mode` (a `BodySendMode`).
    pub request_body_mode: i32,
    /// `response_body_mode` (a `BodySendMode`).
    pub response_body_mode: i32,
    /// `request_trailer_mode` (a `HeaderSendMode`).
    pub request_trailer_mode: i32,
    /// `response_trailer_mode` (a `HeaderSendMode`).
    pub response_trailer_mode: i32,
}

impl ProcessingMode {
    /// The gateway's `mode_override` as Envoy's config would write it (the request
    /// headers are always sent).
    pub fn from_override(o: ModeOverride) -> ProcessingMode {
        let send = |sent: bool| if sent { SEND } else { SKIP };
        ProcessingMode {
            request_header_mode: SEND,
            response_header_mode: send(o.response_headers),
            request_body_mode: o.request_body.as_i32(),
            response_body_mode: o.response_body.as_i32(),
            request_trailer_mode: send(o.request_trailers),
            response_trailer_mode: send(o.response_trailers),
        }
    }
}

/// The `HeaderSendMode` value of one of its names.
fn header_mode(name: &str) -> Option<i32> {
    match name {
        "DEFAULT" => Some(DEFAULT),
        "SEND" => Some(SEND),
        "SKIP" => Some(SKIP),
        _ => None,
    }
}

/// One field of a `ProcessingMode`: the proto enum value and its node when written.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModeField<'a> {
    /// The enum value as written (0 = DEFAULT / NONE when absent).
    pub value: i32,
    /// The node, when written.
    pub node: Option<&'a Node>,
}

/// A `ProcessingMode` with where each field was written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode<'a> {
    /// The `processing_mode` node, when written.
    pub node: Option<&'a Node>,
    /// `request_header_mode`.
    pub request_header: ModeField<'a>,
    /// `response_header_mode`.
    pub response_header: ModeField<'a>,
    /// `request_body_mode`.
    pub request_body: ModeField<'a>,
    /// `response_body_mode`.
    pub response_body: ModeField<'a>,
    /// `request_trailer_mode`.
    pub request_trailer: ModeField<'a>,
    /// `response_trailer_mode`.
    pub response_trailer: ModeField<'a>,
}

/// The six phases of an HTTP request, in the order Envoy sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// Request headers.
    RequestHeaders,
    /// Request body.
    RequestBody,
    /// Request trailers.
    RequestTrailers,
    /// Response headers.
    ResponseHeaders,
    /// Response body.
    ResponseBody,
    /// Response trailers.
    ResponseTrailers,
}

impl Part {
    /// All six, in order.
    pub const ALL: [Part; 6] = [
        Part::RequestHeaders,
        Part::RequestBody,
        Part::RequestTrailers,
        Part::ResponseHeaders,
        Part::ResponseBody,
        Part::ResponseTrailers,
    ];

    /// Words for messages.
    pub fn words(self) -> &'static str {
        match self {
            Part::RequestHeaders => "request headers",
            Part::RequestBody => "request body",
            Part::RequestTrailers => "request trailers",
            Part::ResponseHeaders => "response headers",
            Part::ResponseBody => "response body",
            Part::ResponseTrailers => "response trailers",
        }
    }

    /// The ProcessingMode field that controls it.
    pub fn field(self) -> &'static str {
        match self {
            Part::RequestHeaders => "request_header_mode",
            Part::RequestBody => "request_body_mode",
            Part::RequestTrailers => "request_trailer_mode",
            Part::ResponseHeaders => "response_header_mode",
            Part::ResponseBody => "response_body_mode",
            Part::ResponseTrailers => "response_trailer_mode",
        }
    }

    /// Whether it is a body (BodySendMode) rather than headers or trailers.
    pub fn is_body(self) -> bool {
        matches!(self, Part::RequestBody | Part::ResponseBody)
    }
}

impl<'a> Mode<'a> {
    /// Reads a `processing_mode` node. Unknown enum names are returned as errors
    /// (line, message); Envoy would refuse them too.
    pub fn parse(node: Option<&'a Node>) -> Result<Mode<'a>, (usize, String)> {
        let mut mode = Mode {
            node,
            ..Mode::default()
        };
        let Some(n) = node else {
            return Ok(mode);
        };
        for part in Part::ALL {
            let Some(v) = n.get(part.field()) else {
                continue;
            };
            let value = match &v.value {
                Value::Int(i) => i32::try_from(*i).ok(),
                Value::Str(s) if part.is_body() => BodyMode::from_name(s).map(BodyMode::as_i32),
                Value::Str(s) => header_mode(s),
                _ => None,
            }
            .ok_or_else(|| {
                (
                    v.line,
                    format!("{} has a value Envoy does not know", part.field()),
                )
            })?;
            *mode.field_mut(part) = ModeField {
                value,
                node: Some(v),
            };
        }
        Ok(mode)
    }

    /// The field for a part.
    pub fn field(&self, part: Part) -> ModeField<'a> {
        match part {
            Part::RequestHeaders => self.request_header,
            Part::RequestBody => self.request_body,
            Part::RequestTrailers => self.request_trailer,
            Part::ResponseHeaders => self.response_header,
            Part::ResponseBody => self.response_body,
            Part::ResponseTrailers => self.response_trailer,
        }
    }

    fn field_mut(&mut self, part: Part) -> &mut ModeField<'a> {
        match part {
            Part::RequestHeaders => &mut self.request_header,
            Part::RequestBody => &mut self.request_body,
            Part::RequestTrailers => &mut self.request_trailer,
            Part::ResponseHeaders => &mut self.response_header,
            Part::ResponseBody => &mut self.response_body,
            Part::ResponseTrailers => &mut self.response_trailer,
        }
    }

    /// The mode Envoy applies, DEFAULT resolved (headers sent, trailers skipped).
    pub fn resolved(&self) -> ProcessingMode {
        let header = |f: ModeField<'_>, default: i32| {
            if f.value == DEFAULT {
                default
            } else {
                f.value
            }
        };
        ProcessingMode {
            request_header_mode: header(self.request_header, SEND),
            response_header_mode: header(self.response_header, SEND),
            request_body_mode: self.request_body.value,
            response_body_mode: self.response_body.value,
            request_trailer_mode: header(self.request_trailer, SKIP),
            response_trailer_mode: header(self.response_trailer, SKIP),
        }
    }

    /// The mode exactly as written (DEFAULT kept), as Envoy compares
    /// `allowed_override_modes` entries.
    pub fn literal(&self) -> ProcessingMode {
        ProcessingMode {
            request_header_mode: self.request_header.value,
            response_header_mode: self.response_header.value,
            request_body_mode: self.request_body.value,
            response_body_mode: self.response_body.value,
            request_trailer_mode: self.request_trailer.value,
            response_trailer_mode: self.response_trailer.value,
        }
    }
}

/// The value of one part in a ProcessingMode.
pub fn part_value(mode: &ProcessingMode, part: Part) -> i32 {
    match part {
        Part::RequestHeaders => mode.request_header_mode,
        Part::RequestBody => mode.request_body_mode,
        Part::RequestTrailers => mode.request_trailer_mode,
        Part::ResponseHeaders => mode.response_header_mode,
        Part::ResponseBody => mode.response_body_mode,
        Part::ResponseTrailers => mode.response_trailer_mode,
    }
}

/// The enum name of one part's value, for messages.
pub fn value_name(part: Part, value: i32) -> &'static str {
    match (part.is_body(), value) {
        (true, 0..=5) => BodyMode::from_i32(value).as_str(),
        (false, DEFAULT) => "DEFAULT",
        (false, SEND) => "SEND",
        (false, SKIP) => "SKIP",
        _ => "UNKNOWN",
    }
}

/// A ProcessingMode written out with every field, as an `allowed_override_modes`
/// entry that matches it must be.
pub fn mode_text(mode: &ProcessingMode) -> String {
    // In the order of ProcessingMode's fields; request_header_mode is not compared.
    let order = [
        Part::ResponseHeaders,
        Part::RequestBody,
        Part::ResponseBody,
        Part::RequestTrailers,
        Part::ResponseTrailers,
    ];
    let fields: Vec<String> = order
        .iter()
        .map(|p| format!("{}: {}", p.field(), value_name(*p, part_value(mode, *p))))
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// Envoy's protobuf JSON duration (`1s`, `0.250s`); `None` when it is not one.
pub fn parse_duration(node: &Node) -> Option<Duration> {
    let text = node.as_str()?.trim();
    let number = text.strip_suffix('s')?;
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(Duration::new(secs, nanos))
}

/// Whether a typed_config's `@type` names `type_name`.
fn is_type(config: &Node, type_name: &str) -> bool {
    config
        .get("@type")
        .and_then(Node::as_str)
        .is_some_and(|t| t.rsplit('/').next() == Some(type_name))
}

/// Why a file cannot be checked as a bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotABootstrap {
    /// Line to point at.
    pub line: usize,
    /// Why.
    pub message: String,
}

impl<'a> Bootstrap<'a> {
    /// Finds listeners, HttpConnectionManagers, ext_proc filters and clusters.
    pub fn read(root: &'a Node) -> Result<Bootstrap<'a>, NotABootstrap> {
        if !root.is_map() {
            return Err(NotABootstrap {
                line: root.line,
                message: "not an Envoy bootstrap: the document is not a mapping".into(),
            });
        }
        let statics = root.get("static_resources");
        let dynamics = root.get("dynamic_resources");
        if statics.is_none() && dynamics.is_none() {
            let hint = if root.get("routes").is_some() || root.get("server").is_some() {
                " (it looks like a gateway config: check that with `check-config`, and pass it to check-envoy with --config)"
            } else {
                ""
            };
            return Err(NotABootstrap {
                line: root.line,
                message: format!(
                    "not an Envoy bootstrap: it has neither static_resources nor dynamic_resources{hint}"
                ),
            });
        }
        let listeners = statics
            .and_then(|s| s.get("listeners"))
            .map(Node::items)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, l)| Listener::read(l, i))
            .collect();
        let clusters = statics
            .and_then(|s| s.get("clusters"))
            .map(Node::items)
            .unwrap_or_default()
            .iter()
            .collect();
        Ok(Bootstrap {
            listeners,
            clusters,
            dynamic_clusters: dynamics.is_some_and(|d| d.get("cds_config").is_some()),
            dynamic_listeners: dynamics.is_some_and(|d| d.get("lds_config").is_some()),
        })
    }

    /// The static cluster of this name.
    pub fn cluster(&self, name: &str) -> Option<&'a Node> {
        self.clusters
            .iter()
            .copied()
            .find(|c| c.get("name").and_then(Node::as_str) == Some(name))
    }

    /// Number of ext_proc filters found.
    pub fn filter_count(&self) -> usize {
        self.listeners
            .iter()
            .flat_map(|l| &l.hcms)
            .map(|h| h.filters.len())
            .sum()
    }
}

impl<'a> Listener<'a> {
    fn read(node: &'a Node, index: usize) -> Listener<'a> {
        let name = node
            .get("name")
            .and_then(Node::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{index}"));
        let mut chains: Vec<&Node> = node
            .get("filter_chains")
            .map(Node::items)
            .unwrap_or_default()
            .iter()
            .collect();
        chains.extend(node.get("default_filter_chain"));
        let hcms = chains
            .iter()
            .flat_map(|c| c.get("filters").map(Node::items).unwrap_or_default())
            .filter_map(|f| {
                let config = f.get("typed_config")?;
                let named = f.get("name").and_then(Node::as_str) == Some(HCM_NAME);
                (named || is_type(config, HCM_TYPE)).then(|| Hcm::read(config))
            })
            .collect();
        Listener {
            name,
            node,
            buffer_limit: node.get("per_connection_buffer_limit_bytes"),
            hcms,
        }
    }
}

impl<'a> Hcm<'a> {
    fn read(config: &'a Node) -> Hcm<'a> {
        let filters = config
            .get("http_filters")
            .map(Node::items)
            .unwrap_or_default()
            .iter()
            .filter_map(|f| {
                let typed = f.get("typed_config")?;
                is_type(typed, EXT_PROC_TYPE).then(|| ExtProcFilter {
                    name: f
                        .get("name")
                        .and_then(Node::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    node: f,
                    config: typed,
                })
            })
            .collect();
        Hcm {
            config,
            filters,
            route_config: config.get("route_config"),
        }
    }

    /// A boolean HCM setting.
    pub fn flag(&self, name: &str) -> Flag<'a> {
        Flag::of(self.config.get(name))
    }

    /// Every Envoy route of the inline route config with where it sits, for the
    /// per-route override lookup: (route_config, virtual host, route, label).
    pub fn routes(&self) -> Vec<EnvoyRoute<'a>> {
        let Some(rc) = self.route_config else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for vh in rc.get("virtual_hosts").map(Node::items).unwrap_or_default() {
            let vh_name = vh.get("name").and_then(Node::as_str).unwrap_or("?");
            for (i, r) in vh
                .get("routes")
                .map(Node::items)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let label = match r.get("name").and_then(Node::as_str) {
                    Some(n) => format!("Envoy route `{n}`"),
                    None => format!("Envoy route #{i} of virtual host `{vh_name}`"),
                };
                out.push(EnvoyRoute {
                    levels: [Some(rc), Some(vh), Some(r)],
                    label,
                });
            }
        }
        out
    }
}

/// One Envoy route and the levels above it that may carry per-filter configs.
#[derive(Debug, Clone)]
pub struct EnvoyRoute<'a> {
    /// route_config, virtual host, route: least to most specific.
    pub levels: [Option<&'a Node>; 3],
    /// For messages.
    pub label: String,
}

/// An `ExtProcPerRoute` as written at one level.
#[derive(Debug, Clone, Copy)]
pub struct PerRoute<'a> {
    /// The ExtProcPerRoute node.
    pub node: &'a Node,
    /// `disabled: true`.
    pub disabled: bool,
    /// `overrides`.
    pub overrides: Option<&'a Node>,
}

/// The per-filter config for `filter` at one level (`typed_per_filter_config`),
/// unwrapping an `envoy.config.route.v3.FilterConfig`.
pub fn per_route<'a>(level: &'a Node, filter: &str) -> Option<PerRoute<'a>> {
    let mut node = level.get("typed_per_filter_config")?.get(filter)?;
    if is_type(node, FILTER_CONFIG_TYPE) {
        node = node.get("config")?;
    }
    if !is_type(node, PER_ROUTE_TYPE) {
        return None;
    }
    Some(PerRoute {
        node,
        disabled: node.get("disabled").and_then(Node::as_bool) == Some(true),
        overrides: node.get("overrides"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_envoy::yaml::parse;

    #[test]
    fn durations_as_envoy_writes_them() {
        let d = |s: &str| {
            parse_duration(&Node {
                line: 1,
                value: Value::Str(s.into()),
            })
        };
        assert_eq!(d("1s"), Some(Duration::from_secs(1)));
        assert_eq!(d("0.2s"), Some(Duration::from_millis(200)));
        assert_eq!(d(".5s"), Some(Duration::from_millis(500)));
        assert_eq!(d("0.000000001s"), Some(Duration::from_nanos(1)));
        assert_eq!(d("200ms"), None);
        assert_eq!(d("s"), None);
        assert_eq!(d("1.2.3s"), None);
        assert_eq!(d("-1s"), None);
    }

    #[test]
    fn processing_mode_defaults_resolve_as_envoy_does() {
        let doc = parse("m: {request_body_mode: BUFFERED, response_header_mode: SKIP}\n")
            .unwrap()
            .unwrap();
        let m = Mode::parse(doc.get("m")).unwrap();
        let r = m.resolved();
        assert_eq!(r.request_header_mode, SEND);
        assert_eq!(r.response_header_mode, SKIP);
        assert_eq!(r.request_body_mode, BodyMode::Buffered.as_i32());
        assert_eq!(r.request_trailer_mode, SKIP);
        assert_eq!(m.literal().request_trailer_mode, 0);
        let bad = parse("m: {request_body_mode: BUFFERD}\n").unwrap().unwrap();
        assert_eq!(Mode::parse(bad.get("m")).unwrap_err().0, 1);
    }

    #[test]
    fn filters_are_found_in_every_filter_chain() {
        let doc = parse(
            r#"
static_resources:
  listeners:
  - name: a
    filter_chains:
    - filters:
      - name: hcm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          http_filters:
          - name: one
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {envoy_grpc: {cluster_name: gw}, initial_metadata: [{key: X-Chain, value: api}]}
    default_filter_chain:
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          http_filters:
          - name: two
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: {google_grpc: {target_uri: gw:50051, stat_prefix: gw}}
"#,
        )
        .unwrap()
        .unwrap();
        let b = Bootstrap::read(&doc).unwrap();
        assert_eq!(b.filter_count(), 2);
        let one = &b.listeners[0].hcms[0].filters[0];
        assert_eq!(one.name, "one");
        assert!(
            matches!(Service::of(one.config), Some(Service::EnvoyGrpc { cluster, .. }) if cluster == "gw")
        );
        assert_eq!(
            Service::metadata_of(one.config),
            vec![("x-chain".to_string(), "api".to_string())]
        );
        let two = &b.listeners[0].hcms[1].filters[0];
        assert!(matches!(
            Service::of(two.config),
            Some(Service::GoogleGrpc(_))
        ));
    }

    #[test]
    fn a_gateway_config_is_not_a_bootstrap() {
        let doc = parse("routes: []\n").unwrap().unwrap();
        let e = Bootstrap::read(&doc).unwrap_err();
        assert!(e.message.contains("gateway config"), "{e:?}");
    }
}
