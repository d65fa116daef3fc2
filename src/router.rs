//! Picks the route (and so the chain) for a stream from its first message.
//!
//! A route matches on what Envoy tells the gateway about the request: the path,
//! authority, method and headers, the Envoy route name (`xds.route_name` attribute) and
//! the gRPC initial metadata of the stream (`grpc_initial_metadata` on ExtProcPerRoute).
//! Routes are tried in order; the first match wins.
//!
//! The path is read through the router's [`PathPolicy`] first (see [`crate::path`]):
//! routes match the normalised path, and a path that cannot be read one way only is
//! answered 400 by the built-in route `path_refused` before any processor runs.

mod path_guard;

use std::borrow::Cow;
use std::sync::Arc;

use regex::Regex;
use serde::Serialize;

use crate::chain::Chain;
use crate::metrics::Metrics;
use crate::path::{PathPolicy, RoutingPath};
use crate::phase::Headers;
use path_guard::{ForwardNormalizedLayer, PathGuard};

/// How a route matches the request path (query string excluded; normalised unless the
/// router's [`PathPolicy`] says otherwise).
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

    /// `:path` as sent (bytes: a path that is not UTF-8 is refused, not skipped), or
    /// the `request.path` attribute when the stream did not start with headers.
    fn raw_path(&self) -> Option<&[u8]> {
        self.headers
            .and_then(|h| h.get(":path"))
            .map(|v| v.as_ref())
            .or_else(|| {
                self.attributes
                    .get("request.path")
                    .and_then(|v| v.as_str())
                    .map(str::as_bytes)
            })
    }
}

impl RouteMatch {
    /// Whether every condition holds for this stream, the path read with the default
    /// [`PathPolicy`] (a path it refuses fails any path condition).
    pub fn matches(&self, input: &RouteInput<'_>) -> bool {
        let policy = PathPolicy::default();
        let path = input
            .raw_path()
            .and_then(|raw| policy.routing_path(raw).ok());
        self.matches_with(input, path.as_ref())
    }

    /// Whether every condition holds, with the path already read by the router's
    /// policy (`None`: the request has no path).
    fn matches_with(&self, input: &RouteInput<'_>, path: Option<&RoutingPath<'_>>) -> bool {
        if let Some(condition) = &self.path {
            let Some(p) = path.map(RoutingPath::path) else {
                return false;
            };
            let ok = match condition {
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
            // A condition on `:path` reads the normalised path too (query kept).
            let value = match path {
                Some(p) if name == ":path" => Some(Cow::Owned(p.with_query())),
                _ => input
                    .headers
                    .and_then(|h| h.get_str(name))
                    .map(Cow::Borrowed),
            };
            if !want.matches(value.as_deref()) {
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

/// Name of the built-in route of requests whose path is refused (400 before any
/// processor runs; see [`crate::path::PathRefusal`]).
pub const PATH_REFUSED: &str = "path_refused";

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
    /// Each processor's entry in chain order: its `when:` and `on_error:`.
    pub chain: Vec<EntrySummary>,
    /// Phases the gateway asks Envoy for on this route.
    pub phases: Vec<String>,
    /// Streams on this route that got less from Envoy than the chain needs, by reason
    /// (see `extproc_mode_mismatches_total`): the first place to look when a header
    /// is missing.
    pub mode_mismatches: std::collections::BTreeMap<String, u64>,
}

/// One processor of a route as `/routes` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EntrySummary {
    /// Its name.
    pub processor: String,
    /// Its `when:` condition (absent: every request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// `fail_closed` or `fail_open`.
    pub on_error: &'static str,
    /// The phases it hooks, as `phases` of the route names them.
    pub phases: Vec<String>,
}

/// Phases as `/routes` names them, in message order: a body with the mode it is
/// wanted in (`request_body (buffered)`).
fn phase_names(needs: crate::processor::PhaseNeeds, request_headers: bool) -> Vec<String> {
    let none = crate::processor::BodyNeed::None;
    let mut phases = Vec::new();
    if needs.request_headers || request_headers {
        phases.push("request_headers".to_string());
    }
    if needs.request_body != none {
        phases.push(format!("request_body ({:?})", needs.request_body).to_lowercase());
    }
    if needs.request_trailers {
        phases.push("request_trailers".into());
    }
    if needs.response_headers {
        phases.push("response_headers".into());
    }
    if needs.response_body != none {
        phases.push(format!("response_body ({:?})", needs.response_body).to_lowercase());
    }
    if needs.response_trailers {
        phases.push("response_trailers".into());
    }
    phases
}

impl EntrySummary {
    /// The entry in one line: `digest (when: ...; on_error: fail_open)`; just the name
    /// for an entry with the defaults.
    pub fn describe(&self) -> String {
        let mut extra = Vec::new();
        if let Some(when) = &self.when {
            extra.push(format!("when: {when}"));
        }
        if self.on_error != crate::processor::OnError::default().as_str() {
            extra.push(format!("on_error: {}", self.on_error));
        }
        if extra.is_empty() {
            self.processor.clone()
        } else {
            format!("{} ({})", self.processor, extra.join("; "))
        }
    }
}

impl Route {
    /// The route in words.
    pub fn summary(&self) -> RouteSummary {
        // Request headers always come for a chain with processors (routing needs them).
        let phases = phase_names(self.chain.needs(), !self.chain.entries().is_empty());
        RouteSummary {
            name: self.name.to_string(),
            matcher: self.matcher.describe(),
            processors: self.chain.names().map(String::from).collect(),
            chain: self
                .chain
                .entries()
                .iter()
                .map(|e| EntrySummary {
                    processor: e.name.to_string(),
                    when: e.when.as_ref().map(|w| w.to_string()),
                    on_error: e.on_error.as_str(),
                    phases: phase_names(e.needs, false),
                })
                .collect(),
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
    paths: PathGuard,
    access_log: bool,
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
            paths: PathGuard::new(PathPolicy::default(), None),
            access_log: false,
        }
    }

    /// Reads request paths per `policy` (the default one unless this is called):
    /// refusals are counted in `metrics` (`extproc_paths_refused_total`, and the
    /// `path_refused` route's stream metrics), and under `forward_normalized` every
    /// route's chain, `unmatched` included, first rewrites `:path` to the normalised
    /// path. Call it once, after the routes are in.
    pub fn with_path_policy(mut self, policy: PathPolicy, metrics: Option<&Arc<Metrics>>) -> Self {
        if policy.forward_normalized {
            let wrap = |route: &Arc<Route>| {
                Arc::new(Route {
                    chain: route.chain.wrapped_direct(ForwardNormalizedLayer(policy)),
                    ..Route::clone(route)
                })
            };
            self.routes = self.routes.iter().map(wrap).collect();
            self.unmatched = wrap(&self.unmatched);
        }
        self.paths = PathGuard::new(policy, metrics);
        self
    }

    /// How this router reads request paths.
    pub fn path_policy(&self) -> PathPolicy {
        self.paths.policy
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

    /// Logs one line per stream of these routes (target `extproc_gateway::access`):
    /// carried by the router so a reload turns it on or off for new streams.
    pub fn with_access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    /// See [`Router::with_access_log`].
    pub fn access_log(&self) -> bool {
        self.access_log
    }

    /// The first route whose conditions hold, on the path as the [`PathPolicy`] reads
    /// it; the built-in `path_refused` route (a 400, counted and logged at debug) when
    /// the policy refuses the path.
    pub fn select(&self, input: &RouteInput<'_>) -> &Arc<Route> {
        let raw = input.raw_path();
        let path = match raw.map(|r| (r, self.paths.policy.routing_path(r))) {
            Some((raw, Err(reason))) => return self.paths.refuse(reason, raw),
            Some((_, Ok(p))) => Some(p),
            None => None,
        };
        self.routes
            .iter()
            .find(|r| r.matcher.matches_with(input, path.as_ref()))
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

    /// Writes what it saw upstream: its route, the `:path` header and `RequestCtx::path`.
    struct SeenPath(&'static str);

    impl crate::processor::Processor for SeenPath {
        type State = ();

        fn new_state(&self) {}

        fn name(&self) -> &str {
            "seen_path"
        }

        fn needs(&self) -> crate::processor::PhaseNeeds {
            crate::processor::PhaseNeeds {
                request_headers: true,
                ..crate::processor::PhaseNeeds::NONE
            }
        }

        async fn on_request_headers(
            &self,
            ctx: &mut crate::processor::RequestCtx,
            _: &mut (),
            h: &crate::phase::HeadersPhase,
            out: &mut crate::phase::Mutations,
        ) -> crate::processor::HookResult {
            out.set("x-route", self.0);
            out.set(
                "x-seen-path",
                h.headers.get(":path").cloned().unwrap_or_default(),
            );
            out.set("x-ctx-path", ctx.path.clone());
            Ok(crate::phase::Flow::Continue)
        }
    }

    /// The jwt example's shape: `/public` open, everything else authenticated (a
    /// recording processor stands in for jwt_auth).
    fn jwt_like(policy: PathPolicy, metrics: Option<&Arc<Metrics>>) -> Router {
        let chain =
            |name: &'static str| Chain::builder().processor(SeenPath(name)).build().unwrap();
        Router::new(vec![
            Route {
                name: Arc::from("public"),
                matcher: RouteMatch {
                    path: Some(PathMatch::Prefix("/public".into())),
                    ..Default::default()
                },
                chain: chain("public"),
                metrics: None,
            },
            Route {
                name: Arc::from("api"),
                matcher: RouteMatch::default(),
                chain: chain("api"),
                metrics: None,
            },
        ])
        .with_path_policy(policy, metrics)
    }

    fn pick(router: &Router, path: &[u8]) -> String {
        let mut headers = Headers::new();
        headers.push(":path", bytes::Bytes::copy_from_slice(path));
        let input = RouteInput {
            headers: Some(&headers),
            attributes: &NO_METADATA,
            grpc_metadata: &[],
            metadata: &NO_METADATA,
        };
        router.select(&input).name.to_string()
    }

    #[test]
    fn routes_match_the_normalised_path() {
        let router = jwt_like(PathPolicy::default(), None);
        for (path, want) in [
            ("/public/info", "public"),
            ("/public/../api/items", "api"),
            ("/public/%2e%2e/api/x", "api"),
            ("/public/%2E%2E/api/x", "api"),
            ("/public/./../api/x", "api"),
            ("//public/../api", "api"),
            ("/./public/../api", "api"),
            ("/public/../../api", "api"),
            ("/PUBLIC/../api", "api"),
            ("/public/x/..", "public"),
            ("/public?x=/../api", "public"),
            ("/public/%252e%252e/api", "public"),
            ("/%70ublic/info", "public"),
            ("//public", "public"),
        ] {
            assert_eq!(pick(&router, path.as_bytes()), want, "{path}");
        }
        for path in [
            &b"/public/..%2fapi/x"[..],
            b"/public/..%5capi/x",
            b"/public%2f..%2fapi",
            b"/public/..;/api",
            b"/public/..%00/api",
            b"/public/..\\api",
            b"/public/%zz",
            b"/public/\xff",
        ] {
            assert_eq!(pick(&router, path), PATH_REFUSED, "{path:?}");
        }
    }

    #[test]
    fn raw_matching_is_the_old_behaviour_and_still_refuses() {
        let router = jwt_like(
            PathPolicy {
                normalize: false,
                ..PathPolicy::default()
            },
            None,
        );
        assert_eq!(pick(&router, b"/public/../api"), "public");
        assert_eq!(pick(&router, b"/public/..%2fapi"), PATH_REFUSED);
    }

    #[test]
    fn header_conditions_on_path_and_the_path_attribute_are_normalised() {
        let m = RouteMatch {
            headers: vec![(":path".into(), ValueMatch::Prefix("/public".into()))],
            ..Default::default()
        };
        let headers: Headers = [(":path", "/public/../admin?a=1")].into_iter().collect();
        let input = RouteInput {
            headers: Some(&headers),
            attributes: &NO_METADATA,
            grpc_metadata: &[],
            metadata: &NO_METADATA,
        };
        assert!(!m.matches(&input));
        let m = RouteMatch {
            headers: vec![(":path".into(), ValueMatch::Exact("/admin?a=1".into()))],
            ..Default::default()
        };
        assert!(m.matches(&input));

        let router = jwt_like(PathPolicy::default(), None);
        let mut attrs = serde_json::Map::new();
        attrs.insert("request.path".into(), "/public/%2e%2e/api".into());
        let input = RouteInput {
            headers: None,
            attributes: &attrs,
            grpc_metadata: &[],
            metadata: &NO_METADATA,
        };
        assert_eq!(&*router.select(&input).name, "api");
        attrs.insert("request.path".into(), "/public/..%2f/api".into());
        let input = RouteInput {
            headers: None,
            attributes: &attrs,
            grpc_metadata: &[],
            metadata: &NO_METADATA,
        };
        assert_eq!(&*router.select(&input).name, PATH_REFUSED);
    }

    #[tokio::test]
    async fn a_refused_path_gets_400_before_any_processor_and_is_counted() {
        let metrics = Metrics::new();
        let router = jwt_like(PathPolicy::default(), Some(&metrics));
        let mut driver = crate::testing::Driver::with_router(router);
        let answer = driver
            .request_headers(&[(":path", "/public/..%2Fapi"), (":method", "GET")], true)
            .await
            .unwrap();
        let immediate = answer.immediate.expect("an immediate response");
        assert_eq!(immediate.status, 400);
        assert_eq!(immediate.header("content-type"), Some("application/json"));
        assert_eq!(immediate.header("x-route"), None, "a processor ran");
        let body: serde_json::Value = serde_json::from_slice(&immediate.body).unwrap();
        assert_eq!(body["reason"], "escaped_slash");
        assert!(body["error"].as_str().unwrap().contains("%2F"), "{body}");
        assert!(driver.is_finished());
        assert_eq!(driver.route_name().as_deref(), Some(PATH_REFUSED));
        let text = metrics.render();
        let count = |series: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .map(str::to_string)
        };
        assert_eq!(
            count(r#"extproc_paths_refused_total{reason="escaped_slash"}"#).as_deref(),
            Some("1")
        );
        for reason in crate::path::PathRefusal::ALL {
            let series = format!(
                r#"extproc_paths_refused_total{{reason="{}"}}"#,
                reason.as_str()
            );
            assert!(count(&series).is_some(), "{series} not exported");
        }
        assert_eq!(
            count(r#"extproc_streams_total{outcome="immediate_response",route="path_refused"}"#)
                .as_deref(),
            Some("1")
        );
    }

    #[tokio::test]
    async fn processors_see_the_path_as_sent_unless_forward_normalized() {
        let mut driver = crate::testing::Driver::with_router(jwt_like(PathPolicy::default(), None));
        let answer = driver
            .request_headers(&[(":path", "/public/x/..?q=1"), (":method", "GET")], true)
            .await
            .unwrap();
        assert_eq!(driver.route_name().as_deref(), Some("public"));
        assert_eq!(answer.header(":path"), None);
        assert!(!answer.clear_route_cache);
        assert_eq!(answer.header("x-seen-path"), Some("/public/x/..?q=1"));
        assert_eq!(answer.header("x-ctx-path"), Some("/public/x/..?q=1"));

        let policy = PathPolicy {
            forward_normalized: true,
            ..PathPolicy::default()
        };
        for (sent, route, forwarded) in [
            ("/public/x/..?q=1", "public", Some("/public/?q=1")),
            ("/public/../api//items", "api", Some("/api/items")),
            ("/public/info", "public", None),
        ] {
            let mut driver = crate::testing::Driver::with_router(jwt_like(policy, None));
            let answer = driver
                .request_headers(&[(":path", sent), (":method", "GET")], true)
                .await
                .unwrap();
            assert_eq!(driver.route_name().as_deref(), Some(route), "{sent}");
            assert_eq!(answer.header(":path"), forwarded, "{sent}");
            assert_eq!(answer.clear_route_cache, forwarded.is_some(), "{sent}");
            assert_eq!(answer.header("x-route"), Some(route));
            let seen = forwarded.unwrap_or(sent);
            assert_eq!(answer.header("x-seen-path"), Some(seen), "{sent}");
            assert_eq!(answer.header("x-ctx-path"), Some(seen), "{sent}");
        }
        // The unmatched route rewrites too.
        let router = Router::new(Vec::new()).with_path_policy(policy, None);
        let mut driver = crate::testing::Driver::with_router(router);
        let answer = driver
            .request_headers(&[(":path", "/a/./b"), (":method", "GET")], true)
            .await
            .unwrap();
        assert_eq!(driver.route_name().as_deref(), Some(UNMATCHED));
        assert_eq!(answer.header(":path"), Some("/a/b"));
    }
}
