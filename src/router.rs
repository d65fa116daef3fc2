//! Picks the route (and so the chain) for a stream from its first message.
//!
//! A route matches on what Envoy tells the gateway about the request: the path,
//! authority, method and headers, the Envoy route name (`xds.route_name` attribute) and
//! the gRPC initial metadata of the stream (`grpc_initial_metadata` on ExtProcPerRoute).
//! Routes are tried in order; the first match wins.

use std::sync::Arc;

use regex::Regex;
use serde::Serialize;

use crate::chain::Chain;
use crate::phase::Headers;

/// How a route matches the request path (query string excluded).
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// The path equals this.
    Exact(String),
    /// The path starts with this.
    Prefix(String),
    /// The whole path matches this regular expression.
    Regex(Regex),
}

/// How a route matches one header (or metadata) value.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// The value equals this.
    Exact(String),
    /// The value starts with this.
    Prefix(String),
    /// The whole value matches this regular expression.
    Regex(Regex),
    /// The header is present (`true`) or absent (`false`).
    Present(bool),
}

impl ValueMatch {
    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (ValueMatch::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (ValueMatch::Exact(e), Some(v)) => v == e,
            (ValueMatch::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (ValueMatch::Regex(r), Some(v)) => r.is_match(v),
        }
    }
}

/// The conditions of one route; all set conditions must hold. An empty match is a
/// catch-all.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Path condition.
    pub path: Option<PathMatch>,
    /// `:authority` (case-insensitive, port included if the client sent one).
    pub authority: Option<String>,
    /// Allowed `:method`s; empty allows all.
    pub methods: Vec<String>,
    /// Header conditions.
    pub headers: Vec<(String, ValueMatch)>,
    /// Envoy's route name, from the `xds.route_name` attribute.
    pub route_name: Option<String>,
    /// gRPC initial metadata entries that must be present with these values.
    pub grpc_metadata: Vec<(String, String)>,
    /// A dynamic metadata value Envoy forwards (`metadata_options.forwarding_namespaces`):
    /// a per-route identity that survives reordering Envoy's routes.
    pub metadata: Option<MetadataMatch>,
}

/// A condition on Envoy's dynamic metadata: `namespace.key` equals `value` (strings
/// compare as they are; numbers and booleans by their JSON text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataMatch {
    /// Metadata namespace, e.g. `envoy.filters.http.set_metadata` or a route's
    /// `metadata.filter_metadata` key.
    pub namespace: String,
    /// Key inside the namespace.
    pub key: String,
    /// Expected value.
    pub value: String,
}

impl MetadataMatch {
    fn matches(&self, metadata: &serde_json::Map<String, serde_json::Value>) -> bool {
        match metadata
            .get(&self.namespace)
            .and_then(|ns| ns.get(&self.key))
        {
            Some(serde_json::Value::String(s)) => *s == self.value,
            Some(serde_json::Value::Bool(b)) => self.value == if *b { "true" } else { "false" },
            Some(serde_json::Value::Number(n)) => {
                n.as_f64().is_some() && self.value.parse::<f64>().ok() == n.as_f64()
            }
            _ => false,
        }
    }
}

/// What the router sees of a stream when it starts.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    /// Request headers, when the stream starts with them.
    pub headers: Option<&'a Headers>,
    /// Flattened request attributes.
    pub attributes: &'a serde_json::Map<String, serde_json::Value>,
    /// gRPC initial metadata of the stream.
    pub grpc_metadata: &'a [(String, String)],
    /// Dynamic metadata Envoy forwarded: namespace -> object.
    pub metadata: &'a serde_json::Map<String, serde_json::Value>,
}

impl RouteInput<'_> {
    /// A request property from the headers, or from Envoy's attributes when the stream
    /// did not start with request headers.
    fn property(&self, header: &str, attribute: &str) -> Option<&str> {
        self.headers
            .and_then(|h| h.get_str(header))
            .or_else(|| self.attributes.get(attribute).and_then(|v| v.as_str()))
    }
}

impl RouteMatch {
    /// Whether every condition holds for this stream.
    pub fn matches(&self, input: &RouteInput<'_>) -> bool {
        if let Some(path) = &self.path {
            let Some(full) = input.property(":path", "request.path") else {
                return false;
            };
            let p = full.split('?').next().unwrap_or(full);
            let ok = match path {
                PathMatch::Exact(e) => p == e,
                PathMatch::Prefix(prefix) => p.starts_with(prefix.as_str()),
                PathMatch::Regex(r) => r.is_match(p),
            };
            if !ok {
                return false;
            }
        }
        if let Some(authority) = &self.authority {
            match input.property(":authority", "request.host") {
                Some(a) if a.eq_ignore_ascii_case(authority) => {}
                _ => return false,
            }
        }
        if !self.methods.is_empty() {
            match input.property(":method", "request.method") {
                Some(m) if self.methods.iter().any(|x| x == m) => {}
                _ => return false,
            }
        }
        for (name, want) in &self.headers {
            let value = input.headers.and_then(|h| h.get_str(name));
            if !want.matches(value) {
                return false;
            }
        }
        if let Some(name) = &self.route_name {
            let got = input
                .attributes
                .get("xds.route_name")
                .and_then(|v| v.as_str());
            if got != Some(name.as_str()) {
                return false;
            }
        }
        if let Some(m) = &self.metadata {
            if !m.matches(input.metadata) {
                return false;
            }
        }
        self.grpc_metadata.iter().all(|(k, v)| {
            input
                .grpc_metadata
                .iter()
                .any(|(gk, gv)| gk.eq_ignore_ascii_case(k) && gv == v)
        })
    }

    /// True when the match has no condition.
    pub fn is_catch_all(&self) -> bool {
        self.path.is_none()
            && self.authority.is_none()
            && self.methods.is_empty()
            && self.headers.is_empty()
            && self.route_name.is_none()
            && self.grpc_metadata.is_empty()
            && self.metadata.is_none()
    }

    /// A human-readable description, for `/routes` and `check-config`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.path {
            Some(PathMatch::Exact(p)) => parts.push(format!("path = {p}")),
            Some(PathMatch::Prefix(p)) => parts.push(format!("path prefix {p}")),
            Some(PathMatch::Regex(r)) => parts.push(format!("path ~ {}", r.as_str())),
            None => {}
        }
        if let Some(a) = &self.authority {
            parts.push(format!("authority = {a}"));
        }
        if !self.methods.is_empty() {
            parts.push(format!("method in [{}]", self.methods.join(", ")));
        }
        for (name, m) in &self.headers {
            parts.push(match m {
                ValueMatch::Exact(v) => format!("header {name} = {v}"),
                ValueMatch::Prefix(v) => format!("header {name} prefix {v}"),
                ValueMatch::Regex(r) => format!("header {name} ~ {}", r.as_str()),
                ValueMatch::Present(true) => format!("header {name} present"),
                ValueMatch::Present(false) => format!("header {name} absent"),
            });
        }
        if let Some(n) = &self.route_name {
            parts.push(format!("envoy route = {n}"));
        }
        for (k, v) in &self.grpc_metadata {
            parts.push(format!("grpc metadata {k} = {v}"));
        }
        if let Some(m) = &self.metadata {
            parts.push(format!("metadata {}.{} = {}", m.namespace, m.key, m.value));
        }
        if parts.is_empty() {
            "any request".to_string()
        } else {
            parts.join(" and ")
        }
    }
}

/// Name of the built-in route of requests no configured route matches.
pub const UNMATCHED: &str = "unmatched";

/// A named route: its conditions and its chain.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name used in logs, metrics and `/routes`.
    pub name: Arc<str>,
    /// Conditions.
    pub matcher: RouteMatch,
    /// The processors that serve the route.
    pub chain: Chain,
    /// Metric handles of the route (none for chains built without metrics).
    pub metrics: Option<crate::metrics::RouteMetrics>,
}

/// A route as `/routes` and `check-config` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteSummary {
    /// Route name.
    pub name: String,
    /// Conditions, in words.
    #[serde(rename = "match")]
    pub matcher: String,
    /// Processor names in chain order.
    pub processors: Vec<String>,
    /// Phases the gateway asks Envoy for on this route.
    pub phases: Vec<String>,
    /// Streams on this route that got less from Envoy than the chain needs, by reason
    /// (see `extproc_mode_mismatches_total`): the first place to look when a header
    /// is missing.
    pub mode_mismatches: std::collections::BTreeMap<String, u64>,
}

impl Route {
    /// The route in words.
    pub fn summary(&self) -> RouteSummary {
        let needs = self.chain.needs();
        let mut phases = Vec::new();
        if needs.request_headers || !self.chain.names().is_empty() {
            phases.push("request_headers".to_string());
        }
        if needs.request_body != crate::processor::BodyNeed::None {
            phases.push(format!("request_body ({:?})", needs.request_body).to_lowercase());
        }
        if needs.request_trailers {
            phases.push("request_trailers".into());
        }
        if needs.response_headers {
            phases.push("response_headers".into());
        }
        if needs.response_body != crate::processor::BodyNeed::None {
            phases.push(format!("response_body ({:?})", needs.response_body).to_lowercase());
        }
        if needs.response_trailers {
            phases.push("response_trailers".into());
        }
        RouteSummary {
            name: self.name.to_string(),
            matcher: self.matcher.describe(),
            processors: self.chain.names().iter().map(|n| n.to_string()).collect(),
            phases,
            mode_mismatches: self
                .metrics
                .as_ref()
                .map(|m| {
                    m.mismatch_counts()
                        .into_iter()
                        .filter(|(_, n)| *n > 0)
                        .map(|(r, n)| (r.to_string(), n))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The routes of one config load. Requests that match no route pass through unchanged
/// on the built-in `unmatched` route.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    unmatched: Arc<Route>,
    buffer_limit: usize,
}

/// Envoy's default `per_connection_buffer_limit_bytes` (1 MiB): a BUFFERED body over it
/// gets the client a 413.
pub const ENVOY_DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

impl Router {
    /// Routes in match order.
    pub fn new(routes: Vec<Route>) -> Self {
        Self::with_unmatched(routes, None)
    }

    /// Routes in match order; `unmatched_metrics` observes requests no route matched.
    pub fn with_unmatched(
        routes: Vec<Route>,
        unmatched_metrics: Option<crate::metrics::RouteMetrics>,
    ) -> Self {
        Self {
            routes: routes.into_iter().map(Arc::new).collect(),
            unmatched: Arc::new(Route {
                name: Arc::from(UNMATCHED),
                matcher: RouteMatch::default(),
                chain: Chain::empty(),
                metrics: unmatched_metrics,
            }),
            buffer_limit: ENVOY_DEFAULT_BUFFER_LIMIT,
        }
    }

    /// The largest body Envoy buffers (its listener's `per_connection_buffer_limit_bytes`).
    /// A request whose `content-length` is larger is asked for as STREAMED where a
    /// processor wants it BUFFERED, so it is read whole instead of refused with 413.
    pub fn with_buffer_limit(mut self, bytes: usize) -> Self {
        self.buffer_limit = bytes;
        self
    }

    /// See [`Router::with_buffer_limit`].
    pub fn buffer_limit(&self) -> usize {
        self.buffer_limit
    }

    /// The first route whose conditions hold.
    pub fn select(&self, input: &RouteInput<'_>) -> &Arc<Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(input))
            .unwrap_or(&self.unmatched)
    }

    /// All configured routes in match order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_METADATA: std::sync::LazyLock<serde_json::Map<String, serde_json::Value>> =
        std::sync::LazyLock::new(serde_json::Map::new);

    fn route(name: &str, m: RouteMatch) -> Route {
        Route {
            name: Arc::from(name),
            matcher: m,
            chain: Chain::empty(),
            metrics: None,
        }
    }

    #[test]
    fn first_match_wins_and_unmatched_falls_through() {
        let router = Router::new(vec![
            route(
                "api",
                RouteMatch {
                    path: Some(PathMatch::Prefix("/api".into())),
                    methods: vec!["POST".into()],
                    ..Default::default()
                },
            ),
            route(
                "meta",
                RouteMatch {
                    grpc_metadata: vec![("x-chain".into(), "digest".into())],
                    ..Default::default()
                },
            ),
            route(
                "envoy-route",
                RouteMatch {
                    route_name: Some("r1".into()),
                    ..Default::default()
                },
            ),
        ]);
        let headers: Headers = [(":path", "/api/x?q=1"), (":method", "POST")]
            .into_iter()
            .collect();
        let mut attrs = serde_json::Map::new();
        let input = RouteInput {
            headers: Some(&headers),
            attributes: &attrs,
            grpc_metadata: &[],
            metadata: &NO_METADATA,
        };
        assert_eq!(&*router.select(&input).name, "api");
        let get: Headers = [(":path", "/api/x"), (":method", "GET")]
            .into_iter()
            .collect();
        let md = vec![("X-Chain".to_string(), "digest".to_string())];
        let input = RouteInput {
            headers: Some(&get),
            attributes: &attrs,
            grpc_metadata: &md,
            metadata: &NO_METADATA,
        };
        assert_eq!(&*router.select(&input).name, "meta");
        attrs.insert("xds.route_name".into(), "r1".into());
        let input = RouteInput {
            headers: None,
            attributes: &attrs,
            grpc_metadata: &[],
            metadata: &NO_METADATA,
        };
        assert_eq!(&*router.select(&input).name, "envoy-route");
        attrs.clear();
        let input = RouteInput {
            headers: None,
            attributes: &attrs,
            grpc_metadata: &[],
            metadata: &NO_METADATA,
        };
        assert_eq!(&*router.select(&input).name, "unmatched");
    }

    #[test]
    fn header_and_path_regex_conditions() {
        let m = RouteMatch {
            path: Some(PathMatch::Regex(Regex::new("^/v[0-9]+/items$").unwrap())),
            headers: vec![
                ("x-tenant".into(), ValueMatch::Exact("a".into())),
                ("x-debug".into(), ValueMatch::Present(false)),
            ],
            ..Default::default()
        };
        let attrs = serde_json::Map::new();
        let ok: Headers = [(":path", "/v2/items"), ("x-tenant", "a")]
            .into_iter()
            .collect();
        let input = |h| RouteInput {
            headers: Some(h),
            attributes: &attrs,
            grpc_metadata: &[],
            metadata: &NO_METADATA,
        };
        assert!(m.matches(&input(&ok)));
        let debug: Headers = [(":path", "/v2/items"), ("x-tenant", "a"), ("x-debug", "1")]
            .into_iter()
            .collect();
        assert!(!m.matches(&input(&debug)));
        let wrong: Headers = [(":path", "/v2/items/1"), ("x-tenant", "a")]
            .into_iter()
            .collect();
        assert!(!m.matches(&input(&wrong)));
    }
}
