//! The checks: for every ext_proc filter, and every `ExtProcPerRoute` override of it,
//! what Envoy will send and do, compared with what the gateway routes reachable through
//! it need.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::envoy::{
    header_values, merge_metadata, mode_text, parse_duration, part_value, per_route, value_name,
    Bootstrap, ExtProcFilter, Flag, Hcm, Listener, Mode, Part, ProcessingMode, Service,
    DEFAULT_BUFFER_LIMIT, DEFAULT_MESSAGE_TIMEOUT, SEND, SKIP,
};
use super::findings::{Finding, Report, Severity};
use super::gateway::{reachable, wants, GatewayRoute};
use super::yaml::Node;
use crate::config::GatewayConfig;
use crate::modes::{BodyMode, BodyModes, ModeOverride};
use crate::processor::{BodyNeed, PhaseNeeds};

const NONE: i32 = BodyMode::None.as_i32();
const STREAMED: i32 = BodyMode::Streamed.as_i32();
const BUFFERED: i32 = BodyMode::Buffered.as_i32();
const PARTIAL: i32 = BodyMode::BufferedPartial.as_i32();
const DUPLEX: i32 = BodyMode::FullDuplexStreamed.as_i32();
const GRPC: i32 = BodyMode::Grpc.as_i32();

/// One way a filter is used: the filter itself, or the filter as changed by the
/// `ExtProcPerRoute` overrides on some Envoy routes.
struct Context<'a, 'b> {
    listener: &'b Listener<'a>,
    filter: &'b ExtProcFilter<'a>,
    /// `""` for the filter itself, else `on Envoy route `x` (ExtProcPerRoute): `.
    label: String,
    /// Where the override is (the typed_config line for the filter itself).
    line: usize,
    /// The filter's own processing_mode (Envoy decides on overrides from it).
    filter_mode: Mode<'a>,
    /// The processing_mode in force here.
    mode: Mode<'a>,
    failure_mode_allow: Flag<'a>,
    service: Service<'a>,
    metadata: Vec<(String, String)>,
}

/// Why Envoy sends what it sends for one request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    /// The gateway's mode_override is taken.
    Applied,
    /// `allow_mode_override` is off.
    OverrideOff,
    /// `allowed_override_modes` does not list the gateway's mode (its text).
    NotAllowed(String),
    /// `send_body_without_waiting_for_header_response: true`.
    SendWithoutWaiting,
    /// FULL_DUPLEX_STREAMED in the filter's mode: Envoy ignores mode_override.
    Duplex(Part),
    /// request_header_mode SKIP: no request-headers message to answer.
    HeadersSkipped,
    /// `observability_mode: true`.
    Observability,
}

/// Which of a route's two modes is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    /// Its widest needs (`chain.needs()`).
    Full,
    /// A request that triggers no optional reading.
    Narrow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Gap {
    /// Envoy withholds what the route needs.
    Withheld,
    /// Envoy sends what nothing reads.
    Excess,
}

/// Findings of one kind, gathered over routes before they are written.
#[derive(Default)]
struct Group {
    routes: Vec<String>,
    processors: Vec<String>,
    need: i32,
    others_need: bool,
}

/// Routes whose bodies Envoy buffers in one mode, and whether the gateway asked.
#[derive(Default)]
struct Buffered {
    routes: Vec<String>,
    processors: Vec<String>,
    asked: bool,
}

/// Runs every check.
pub fn run(
    file: &str,
    boot: &Bootstrap<'_>,
    routes: &[GatewayRoute],
    gateway: &GatewayConfig,
    root_line: usize,
) -> Report {
    let mut c = Checker {
        file,
        boot,
        gateway,
        report: Report {
            file: file.to_string(),
            filters: boot.filter_count(),
            routes: routes.len(),
            ..Report::default()
        },
        clusters_seen: BTreeSet::new(),
    };
    if c.report.filters == 0 {
        let lds = if boot.dynamic_listeners {
            " (listeners from LDS are not checked)"
        } else {
            ""
        };
        c.error(
            root_line,
            format!("no ext_proc filter: no listener's HttpConnectionManager has an http_filters entry whose typed_config is an envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor{lds}"),
            "add ONE envoy.filters.http.ext_proc filter whose grpc_service points at the gateway (see the project's envoy.yaml)",
        );
    }
    for listener in &boot.listeners {
        for hcm in &listener.hcms {
            let mut path_routes: Vec<&GatewayRoute> = Vec::new();
            for filter in &hcm.filters {
                for ctx in c.contexts(listener, hcm, filter) {
                    let reach = reachable(routes, &ctx.metadata);
                    c.check_context(&ctx, &reach);
                    for r in reach {
                        if r.path_match.is_some() && !path_routes.iter().any(|p| p.name == r.name) {
                            path_routes.push(r);
                        }
                    }
                }
            }
            c.check_paths(hcm, &path_routes);
        }
    }
    c.report.sort();
    c.report
}

struct Checker<'c, 'a> {
    file: &'c str,
    boot: &'c Bootstrap<'a>,
    gateway: &'c GatewayConfig,
    report: Report,
    clusters_seen: BTreeSet<String>,
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn routes_phrase(names: &[String]) -> String {
    if names.len() == 1 {
        format!("gateway route {}", list(names))
    } else {
        format!("gateway routes {}", list(names))
    }
}

fn plain_list(names: impl IntoIterator<Item = String>) -> String {
    names.into_iter().collect::<Vec<_>>().join(", ")
}

/// A duration as Envoy's YAML writes it (`1.5s`).
fn proto_duration(d: Duration) -> String {
    let millis = d.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        let frac = format!("{:03}", millis % 1000);
        format!("{}.{}s", millis / 1000, frac.trim_end_matches('0'))
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl<'c, 'a> Checker<'c, 'a> {
    fn push(&mut self, line: usize, severity: Severity, what: String, fix: impl Into<String>) {
        self.report.push(Finding {
            file: self.file.to_string(),
            line,
            severity,
            what,
            fix: fix.into(),
        });
    }

    fn error(&mut self, line: usize, what: String, fix: impl Into<String>) {
        self.push(line, Severity::Error, what, fix);
    }

    fn warning(&mut self, line: usize, what: String, fix: impl Into<String>) {
        self.push(line, Severity::Warning, what, fix);
    }

    fn mode(&mut self, node: Option<&'a Node>) -> Mode<'a> {
        match Mode::parse(node) {
            Ok(m) => m,
            Err((line, message)) => {
                self.error(
                    line,
                    message,
                    "use SEND/SKIP/DEFAULT for headers and trailers, NONE/STREAMED/BUFFERED/BUFFERED_PARTIAL/FULL_DUPLEX_STREAMED for bodies",
                );
                Mode {
                    node,
                    ..Mode::default()
                }
            }
        }
    }

    /// The filter itself, and one context per distinct `ExtProcPerRoute` override.
    fn contexts<'b>(
        &mut self,
        listener: &'b Listener<'a>,
        hcm: &'b Hcm<'a>,
        filter: &'b ExtProcFilter<'a>,
    ) -> Vec<Context<'a, 'b>> {
        let filter_mode = self.mode(filter.field("processing_mode"));
        let base = Context {
            listener,
            filter,
            label: String::new(),
            line: filter.line(),
            filter_mode,
            mode: filter_mode,
            failure_mode_allow: filter.flag("failure_mode_allow"),
            service: Service::of(filter.config).unwrap_or(Service::Missing),
            metadata: Service::metadata_of(filter.config),
        };
        let envoy_routes = hcm.routes();
        let mut base_used = envoy_routes.is_empty();
        // Overrides, keyed by the lines of the per-route configs they merge.
        let mut derived: BTreeMap<Vec<usize>, (Vec<String>, Context<'a, 'b>)> = BTreeMap::new();
        for route in envoy_routes {
            let levels: Vec<_> = route
                .levels
                .iter()
                .flatten()
                .filter_map(|l| per_route(l, &filter.name))
                .collect();
            // Envoy's merge, least to most specific: a later `disabled` wins over
            // earlier overrides, later overrides over an earlier `disabled`; modes and
            // services are replaced, metadata merged key by key.
            let mut disabled = false;
            let mut mode = None;
            let mut service = None;
            let mut extra = Vec::new();
            let mut failure = None;
            for pr in &levels {
                if pr.disabled {
                    disabled = true;
                    mode = None;
                    continue;
                }
                disabled = false;
                if let Some(o) = pr.overrides {
                    if let Some(m) = o.get("processing_mode") {
                        mode = Some(m);
                    }
                    if o.get("grpc_service").is_some() {
                        service = Some(o);
                    }
                    merge_metadata(&mut extra, &header_values(o.get("grpc_initial_metadata")));
                    if let Some(f) = o.get("failure_mode_allow") {
                        failure = Some(f);
                    }
                }
            }
            if disabled {
                continue;
            }
            if mode.is_none() && service.is_none() && extra.is_empty() && failure.is_none() {
                base_used = true;
                continue;
            }
            let key: Vec<usize> = levels.iter().map(|p| p.node.line).collect();
            let line = levels.last().map(|p| p.node.line).unwrap_or(base.line);
            if let Some((labels, _)) = derived.get_mut(&key) {
                labels.push(route.label);
                continue;
            }
            let mut metadata = match service {
                Some(o) => Service::metadata_of(o),
                None => base.metadata.clone(),
            };
            merge_metadata(&mut metadata, &extra);
            let ctx = Context {
                listener,
                filter,
                label: String::new(),
                line,
                filter_mode,
                mode: match mode {
                    Some(m) => self.mode(Some(m)),
                    None => filter_mode,
                },
                failure_mode_allow: match failure {
                    Some(f) => Flag::of(Some(f)),
                    None => base.failure_mode_allow,
                },
                service: service
                    .and_then(Service::of)
                    .unwrap_or_else(|| base.service.clone()),
                metadata,
            };
            derived.insert(key, (vec![route.label], ctx));
        }
        let mut out = Vec::new();
        if base_used {
            out.push(base);
        }
        for (_, (labels, mut ctx)) in derived {
            ctx.label = format!("on {} (ExtProcPerRoute): ", labels.join(", "));
            out.push(ctx);
        }
        out
    }

    fn check_context(&mut self, ctx: &Context<'a, '_>, reach: &[&GatewayRoute]) {
        if reach.is_empty() {
            let meta = if ctx.metadata.is_empty() {
                "no gRPC metadata".to_string()
            } else {
                let pairs: Vec<String> = ctx
                    .metadata
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect();
                format!("gRPC metadata {{{}}}", pairs.join(", "))
            };
            self.warning(
                ctx.line,
                format!("{}no gateway route matches the streams of this filter ({meta}): requests pass through unprocessed (route `unmatched`)", ctx.label),
                "add a gateway route whose match.grpc_metadata equals the filter's initial metadata, or fix the metadata",
            );
        }
        match &ctx.service {
            Service::Http(node) => {
                self.check_http_service(ctx, node, reach);
                return;
            }
            Service::Missing => {
                self.error(
                    ctx.line,
                    format!("{}the filter has no grpc_service.envoy_grpc or google_grpc: Envoy cannot reach the gateway", ctx.label),
                    "set grpc_service: {envoy_grpc: {cluster_name: <the gateway's cluster>}}",
                );
                return;
            }
            Service::EnvoyGrpc {
                cluster,
                node,
                authority,
            } => {
                self.check_authority(ctx, cluster, node, authority.as_deref());
                self.check_cluster(cluster, node);
            }
            Service::GoogleGrpc(_) => {}
        }
        self.check_modes(ctx, reach);
        self.check_buffers(ctx, reach);
        self.check_timeout(ctx, reach);
        self.check_fail_open(ctx, reach);
    }

    /// What Envoy sends for a request whose route needs `needs`, and why.
    fn effective(&mut self, ctx: &Context<'a, '_>, needs: PhaseNeeds) -> (ProcessingMode, Reason) {
        let configured = ctx.mode.resolved();
        let f = ctx.filter;
        if f.flag("observability_mode").value {
            // Only STREAMED, GRPC and NONE bodies are sent in observability mode.
            let mut m = configured;
            for body in [&mut m.request_body_mode, &mut m.response_body_mode] {
                if ![STREAMED, GRPC].contains(body) {
                    *body = NONE;
                }
            }
            return (m, Reason::Observability);
        }
        if configured.request_header_mode == SKIP {
            return (configured, Reason::HeadersSkipped);
        }
        if !f.flag("allow_mode_override").value {
            return (configured, Reason::OverrideOff);
        }
        if f.flag("send_body_without_waiting_for_header_response")
            .value
        {
            return (configured, Reason::SendWithoutWaiting);
        }
        let filter_mode = ctx.filter_mode.resolved();
        if filter_mode.request_body_mode == DUPLEX {
            return (configured, Reason::Duplex(Part::RequestBody));
        }
        if filter_mode.response_body_mode == DUPLEX {
            return (configured, Reason::Duplex(Part::ResponseBody));
        }

        let mut ask = ProcessingMode::from_override(ModeOverride::for_needs(
            needs,
            BodyModes {
                request: BodyMode::from_i32(configured.request_body_mode),
                response: BodyMode::from_i32(configured.response_body_mode),
            },
        ));
        // GRPC is not implemented by Envoy 1.40 (no body is sent); the gateway asks
        // for another mode, but whether Envoy takes it is not something to rely on.
        for (asked, configured) in [
            (&mut ask.request_body_mode, configured.request_body_mode),
            (&mut ask.response_body_mode, configured.response_body_mode),
        ] {
            if configured == GRPC {
                *asked = GRPC;
            }
        }
        let allowed = f
            .field("allowed_override_modes")
            .map(Node::items)
            .unwrap_or_default();
        if !allowed.is_empty() {
            let entries: Vec<ProcessingMode> = allowed
                .iter()
                .map(|n| self.mode(Some(n)).literal())
                .collect();
            // Envoy compares every field but request_header_mode.
            let same = |e: &ProcessingMode| {
                Part::ALL
                    .iter()
                    .filter(|p| **p != Part::RequestHeaders)
                    .all(|p| part_value(e, *p) == part_value(&ask, *p))
            };
            if !entries.iter().any(same) {
                return (configured, Reason::NotAllowed(mode_text(&ask)));
            }
        }
        (ask, Reason::Applied)
    }

    fn check_modes(&mut self, ctx: &Context<'a, '_>, reach: &[&GatewayRoute]) {
        let configured = ctx.mode.resolved();
        type Key = (usize, Severity, Part, Gap, Reason, Variant, i32);
        let mut groups: BTreeMap<Key, Group> = BTreeMap::new();
        for route in reach {
            let (full, full_reason) = self.effective(ctx, route.needs);
            let mut variants = vec![(Variant::Full, route.needs, full, full_reason.clone())];
            if route.narrow_needs != route.needs && full_reason == Reason::Applied {
                let (narrow, reason) = self.effective(ctx, route.narrow_needs);
                if matches!(reason, Reason::NotAllowed(_)) {
                    variants.push((Variant::Narrow, route.narrow_needs, narrow, reason));
                }
            }
            for (variant, needs, got_mode, reason) in variants {
                for part in Part::ALL {
                    let got = part_value(&got_mode, part);
                    let Some(gap) = gap(part, &needs, got) else {
                        continue;
                    };
                    if gap == Gap::Excess
                        && (variant == Variant::Narrow || reason == Reason::Applied && !fixed(got))
                    {
                        continue;
                    }
                    let reason = match &reason {
                        Reason::Applied => Reason::Duplex(part),
                        other => other.clone(),
                    };
                    let severity = match (gap, part) {
                        (Gap::Withheld, Part::RequestTrailers | Part::ResponseTrailers) => {
                            Severity::Warning
                        }
                        (Gap::Withheld, _) => Severity::Error,
                        (Gap::Excess, _) => Severity::Warning,
                    };
                    let line = self.gap_line(ctx, part, &reason);
                    let g = groups
                        .entry((line, severity, part, gap, reason, variant, got))
                        .or_default();
                    g.routes.push(route.name.clone());
                    let at_least = body_need(&needs, part).max(BodyNeed::Streamed);
                    for p in route.needing(part, at_least) {
                        if !g.processors.contains(&p) {
                            g.processors.push(p);
                        }
                    }
                    g.need = g.need.max(wanted_mode(part, &needs));
                }
            }
        }
        for ((line, severity, part, gap, reason, variant, got), mut g) in groups {
            g.others_need = reach
                .iter()
                .any(|r| wants(&r.needs, part, BodyNeed::Streamed));
            let (what, fix) = describe(ctx, part, gap, &reason, variant, got, &configured, &g);
            self.push(line, severity, what, fix);
        }
    }

    /// The line of a mode gap: where the setting that causes it is written.
    fn gap_line(&self, ctx: &Context<'a, '_>, part: Part, reason: &Reason) -> usize {
        let f = ctx.filter;
        let field = |p: Part| {
            ctx.mode
                .field(p)
                .node
                .or(ctx.mode.node)
                .map(|n| n.line)
                .unwrap_or(ctx.line)
        };
        match reason {
            Reason::OverrideOff => f
                .field("allow_mode_override")
                .map(|n| n.line)
                .unwrap_or_else(|| field(part)),
            Reason::NotAllowed(_) => f
                .field("allowed_override_modes")
                .map(|n| n.line)
                .unwrap_or(ctx.line),
            Reason::SendWithoutWaiting => f
                .field("send_body_without_waiting_for_header_response")
                .map(|n| n.line)
                .unwrap_or(ctx.line),
            Reason::Duplex(p) => ctx
                .filter_mode
                .field(*p)
                .node
                .or(ctx.mode.field(*p).node)
                .map(|n| n.line)
                .unwrap_or_else(|| field(*p)),
            Reason::HeadersSkipped => field(Part::RequestHeaders),
            Reason::Observability => f
                .field("observability_mode")
                .map(|n| n.line)
                .unwrap_or(ctx.line),
            Reason::Applied => field(part),
        }
    }

    fn check_buffers(&mut self, ctx: &Context<'a, '_>, reach: &[&GatewayRoute]) {
        let listener = ctx.listener;
        let limit = listener.buffer_limit_bytes();
        let max = self.gateway.server.max_message_bytes as u64;
        // (part, mode) -> routes, processors, asked via mode_override
        let mut groups: BTreeMap<(Part, i32), Buffered> = BTreeMap::new();
        for route in reach {
            let (got, reason) = self.effective(ctx, route.needs);
            for part in [Part::RequestBody, Part::ResponseBody] {
                let mode = part_value(&got, part);
                if mode != BUFFERED && mode != PARTIAL {
                    continue;
                }
                let g = groups.entry((part, mode)).or_default();
                g.routes.push(route.name.clone());
                for p in route.needing(part, BodyNeed::Streamed) {
                    if !g.processors.contains(&p) {
                        g.processors.push(p);
                    }
                }
                g.asked |=
                    reason == Reason::Applied && part_value(&ctx.mode.resolved(), part) != mode;
            }
        }
        let chosen = listener.buffer_limit.is_some();
        for (
            (part, mode),
            Buffered {
                routes,
                processors: procs,
                asked,
            },
        ) in groups
        {
            let via = if asked {
                format!(
                    "the gateway asks for {} via mode_override",
                    value_name(part, mode)
                )
            } else {
                format!("{}: {}", part.field(), value_name(part, mode))
            };
            let procs = if procs.is_empty() {
                "no processor reads it".to_string()
            } else {
                plain_list(procs)
            };
            let line = listener
                .buffer_limit
                .map(|n| n.line)
                .unwrap_or(listener.node.line);
            if !chosen {
                let (what, fix) = if mode == BUFFERED {
                    let over = if part == Part::RequestBody {
                        "request bodies over that size get 413 from Envoy"
                    } else {
                        "responses with bodies over that size fail with 500 from Envoy"
                    };
                    (
                        format!("{}Envoy holds the whole {} for {} ({via}; {procs}) in a buffer of 1048576 bytes, the default per_connection_buffer_limit_bytes of listener `{}`: {over}", ctx.label, part.words(), routes_phrase(&routes), listener.name),
                        format!("set per_connection_buffer_limit_bytes on listener `{}` to the largest body you accept (the gateway takes up to server.max_message_bytes = {max}), or stream instead (STREAMED, e.g. `digest: {{body_mode: streamed}}`)", listener.name),
                    )
                } else {
                    (
                        format!("{}with BUFFERED_PARTIAL ({via}) a {} over 1048576 bytes (the default per_connection_buffer_limit_bytes of listener `{}`) reaches {} as a partial prefix ({procs}): processors that need the whole body emit nothing (digest omits x-request-digest)", ctx.label, part.words(), listener.name, routes_phrase(&routes)),
                        format!("set per_connection_buffer_limit_bytes on listener `{}` to the largest body you accept, or use BUFFERED (413 above the limit) or STREAMED", listener.name),
                    )
                };
                debug_assert_eq!(DEFAULT_BUFFER_LIMIT, 1048576);
                self.warning(line, what, fix);
            } else if limit > max {
                self.warning(
                    line,
                    format!("{}per_connection_buffer_limit_bytes of listener `{}` ({limit}) is above the gateway's server.max_message_bytes ({max}): a buffered {} between the two sizes ({}) is refused by the gateway and the request fails", ctx.label, listener.name, part.words(), routes_phrase(&routes)),
                    format!("raise server.max_message_bytes to at least {limit} (plus a little for headers), or lower the listener's limit"),
                );
            }
        }
    }

    fn check_timeout(&mut self, ctx: &Context<'a, '_>, reach: &[&GatewayRoute]) {
        if reach.is_empty() {
            return;
        }
        let f = ctx.filter;
        let node = f.field("message_timeout");
        let timeout = match node {
            None => DEFAULT_MESSAGE_TIMEOUT,
            Some(n) => match parse_duration(n) {
                Some(d) => d,
                None => {
                    self.error(
                        n.line,
                        "message_timeout is not a duration Envoy reads".into(),
                        "write seconds with an `s`, e.g. `message_timeout: 1s` or `0.250s`",
                    );
                    return;
                }
            },
        };
        let line = node.map(|n| n.line).unwrap_or(ctx.line);
        let written = if node.is_some() {
            ""
        } else {
            ", Envoy's default"
        };
        if timeout.is_zero() {
            self.error(
                line,
                "message_timeout is 0: every message to the gateway times out at once".into(),
                "set message_timeout above the gateway's slowest answer, e.g. 1s",
            );
            return;
        }
        let Some(processor) = self.gateway.server.processor_timeout else {
            return;
        };
        if timeout <= processor {
            let outcome = if ctx.failure_mode_allow.value {
                "the request goes on unprocessed (failure_mode_allow)"
            } else {
                "the request fails with Envoy's error"
            };
            self.error(
                line,
                format!("{}message_timeout ({}{written}) is not longer than the gateway's server.processor_timeout ({}): when a processor is slow Envoy gives up first, the gateway's own timeout answer never arrives, and {outcome} ({})", ctx.label, show(timeout), show(processor), routes_phrase(&reach.iter().map(|r| r.name.clone()).collect::<Vec<_>>())),
                format!("set message_timeout above server.processor_timeout plus the gateway's own overhead (e.g. `message_timeout: {}`), or lower server.processor_timeout", proto_duration(processor + Duration::from_millis(500))),
            );
        }
    }

    fn check_fail_open(&mut self, ctx: &Context<'a, '_>, reach: &[&GatewayRoute]) {
        let auth: Vec<String> = reach
            .iter()
            .filter(|r| r.authenticates)
            .map(|r| r.name.clone())
            .collect();
        let f = ctx.filter;
        if ctx.failure_mode_allow.value && !auth.is_empty() {
            self.error(
                ctx.failure_mode_allow.line_or(ctx.line),
                format!("{}failure_mode_allow: true fails open: when the gateway is down, slow or refuses a stream, Envoy forwards the request without jwt_auth, unauthenticated ({} {})", ctx.label, routes_phrase(&auth), if auth.len() == 1 { "authenticates" } else { "authenticate" }),
                "set failure_mode_allow: false on filters whose routes authenticate (routes that may fail open can use a filter of their own)",
            );
        }
        let observe = f.flag("observability_mode");
        if observe.value {
            let line = observe.line_or(ctx.line);
            if !auth.is_empty() {
                self.error(
                    line,
                    format!("{}observability_mode: true makes Envoy ignore every answer of the gateway, so jwt_auth cannot block: requests to {} reach the upstream unauthenticated", ctx.label, routes_phrase(&auth)),
                    "remove observability_mode from filters whose routes authenticate",
                );
            }
            let others: Vec<String> = reach
                .iter()
                .filter(|r| !r.authenticates && !r.processors.is_empty())
                .map(|r| r.name.clone())
                .collect();
            if !others.is_empty() {
                self.warning(
                    line,
                    format!("{}observability_mode: true makes Envoy ignore every answer: the header changes and responses of {} never apply", ctx.label, routes_phrase(&others)),
                    "remove observability_mode unless these routes only observe",
                );
            }
        }
        let immediate = f.flag("disable_immediate_response");
        if immediate.value {
            let line = immediate.line_or(ctx.line);
            if !auth.is_empty() {
                self.error(
                    line,
                    format!("{}disable_immediate_response: true drops jwt_auth's 401: Envoy closes the stream and the request goes on to the upstream unauthenticated ({})", ctx.label, routes_phrase(&auth)),
                    "remove disable_immediate_response from filters whose routes authenticate",
                );
            }
            let mut answering: Vec<String> = Vec::new();
            for p in reach
                .iter()
                .filter(|r| !r.authenticates)
                .flat_map(|r| r.answering())
            {
                if !answering.contains(&p) {
                    answering.push(p);
                }
            }
            if !answering.is_empty() {
                self.warning(
                    line,
                    format!("{}disable_immediate_response: true drops the immediate responses of {}: the request goes on to the upstream instead of being answered", ctx.label, plain_list(answering)),
                    "remove disable_immediate_response",
                );
            }
        }
    }

    /// Envoy sends `envoy_grpc.authority`, or else the cluster name, as the stream's
    /// `:authority`; a name that is not a valid authority (Istio's
    /// `outbound|9002||host`) makes the gateway's HTTP/2 stack reset every stream.
    fn check_authority(
        &mut self,
        ctx: &Context<'a, '_>,
        cluster: &str,
        node: &Node,
        authority: Option<&str>,
    ) {
        let (sent, fix) = match authority {
            Some(a) => (a, "fix envoy_grpc.authority"),
            None => (
                cluster,
                "set envoy_grpc.authority to the gateway's host name (e.g. its Service's DNS name)",
            ),
        };
        if http::uri::Authority::try_from(sent).is_err() {
            let source = if authority.is_some() {
                "envoy_grpc.authority"
            } else {
                "the cluster name, which Envoy sends when envoy_grpc.authority is unset"
            };
            self.error(
                node.line,
                format!("{}the ext_proc streams carry :authority `{sent}` ({source}), which is not a valid authority: the gateway refuses each stream as malformed HTTP/2 and every request fails", ctx.label),
                fix,
            );
        }
    }

    fn check_cluster(&mut self, name: &str, node: &Node) {
        if !self.clusters_seen.insert(name.to_string()) {
            return;
        }
        let Some(cluster) = self.boot.cluster(name) else {
            if self.boot.dynamic_clusters {
                self.warning(
                    node.line,
                    format!("cluster `{name}` is not among the static clusters: if CDS does not provide it, every ext_proc stream fails (CDS clusters are not checked)"),
                    format!("make sure CDS serves `{name}` with HTTP/2, a gRPC health check and raised circuit breakers"),
                );
            } else {
                self.error(
                    node.line,
                    format!("grpc_service names cluster `{name}`, which the bootstrap does not define: Envoy accepts the config, then fails every ext_proc stream"),
                    format!("add a cluster `{name}` pointing at the gateway's gRPC address (HTTP/2), or fix cluster_name"),
                );
            }
            return;
        };
        if !speaks_http2(cluster) {
            self.error(
                cluster.line,
                format!("cluster `{name}` talks HTTP/1.1 to the gateway (no http2_protocol_options): gRPC needs HTTP/2, so every ext_proc stream fails"),
                "add typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}",
            );
        }
        let health = cluster
            .get("health_checks")
            .map(Node::items)
            .unwrap_or_default()
            .iter()
            .any(|h| h.get("grpc_health_check").is_some());
        if !health {
            self.warning(
                cluster.get("health_checks").unwrap_or(cluster).line,
                format!("cluster `{name}` has no grpc_health_check: Envoy keeps opening streams to a gateway that is down or draining (the gateway serves grpc.health.v1 and reports NOT_SERVING while it drains)"),
                "add health_checks: [{timeout: 1s, interval: 5s, unhealthy_threshold: 2, healthy_threshold: 1, grpc_health_check: {service_name: envoy.service.ext_proc.v3.ExternalProcessor}}]",
            );
        }
        let raised = cluster
            .at(&["circuit_breakers", "thresholds"])
            .map(Node::items)
            .unwrap_or_default()
            .iter()
            .filter(|t| {
                t.get("priority")
                    .and_then(Node::as_str)
                    .is_none_or(|p| p == "DEFAULT")
            })
            .any(|t| t.get("max_requests").and_then(Node::as_u64).unwrap_or(1024) > 1024);
        if !raised {
            self.warning(
                cluster.get("circuit_breakers").unwrap_or(cluster).line,
                format!("cluster `{name}` keeps Envoy's default circuit breakers: at most 1024 concurrent requests, and every HTTP request in flight holds one ext_proc stream, so request 1025 fails its ext_proc call"),
                format!("set circuit_breakers: {{thresholds: [{{max_requests: N, max_pending_requests: N}}]}} on `{name}` with N above the concurrent requests you expect"),
            );
        }
    }

    fn check_http_service(&mut self, ctx: &Context<'a, '_>, node: &Node, reach: &[&GatewayRoute]) {
        let bodies: Vec<String> = reach
            .iter()
            .filter(|r| {
                r.needs.request_body != BodyNeed::None || r.needs.response_body != BodyNeed::None
            })
            .map(|r| r.name.clone())
            .collect();
        let served = self.gateway.server.http_addr.is_some();
        if bodies.is_empty() && served {
            return;
        }
        let mut problems = Vec::new();
        if !bodies.is_empty() {
            problems.push(format!(
                "it carries headers only, so {} would never get the bodies {} needs",
                routes_phrase(&bodies),
                if bodies.len() == 1 {
                    "its chain"
                } else {
                    "their chains"
                }
            ));
        }
        if !served {
            problems.push(
                "the gateway serves it only with server.http_addr (or --http-addr) set, and this gateway config sets none"
                    .to_string(),
            );
        }
        let fix = if bodies.is_empty() {
            "set server.http_addr in the gateway config (or --http-addr) and point http_uri at it"
        } else {
            "for bodies, point the filter at the gateway with grpc_service: {envoy_grpc: {cluster_name: <the gateway's cluster>}}"
        };
        self.warning(
            node.line,
            format!(
                "{}this filter uses ext_proc over HTTP (http_service): {}",
                ctx.label,
                problems.join("; ")
            ),
            fix,
        );
    }

    fn check_paths(&mut self, hcm: &Hcm<'a>, routes: &[&GatewayRoute]) {
        let Some(first) = routes.first() else {
            return;
        };
        let names: Vec<String> = routes.iter().map(|r| r.name.clone()).collect();
        let matched = first.path_match.clone().unwrap_or_default();
        let example = matched
            .strip_prefix("path_prefix: ")
            .map(|p| format!("`{}/../x`", p.trim_end_matches('/')))
            .unwrap_or_else(|| "`/a/../b`".to_string());
        let normalize = hcm.flag("normalize_path");
        let merge = hcm.flag("merge_slashes");
        let mut missing = Vec::new();
        if !normalize.value {
            missing.push(("normalize_path", normalize));
        }
        if !merge.value {
            missing.push(("merge_slashes", merge));
        }
        if let Some((_, flag)) = missing.first() {
            let settings: Vec<String> = missing.iter().map(|(n, _)| format!("{n}: true")).collect();
            self.error(
                flag.line_or(hcm.config.line),
                format!("{} {} on the path (`{}`: {matched}), but this HttpConnectionManager does not set {}: a path such as {example} or `//x` reaches Envoy's routes (and their ExtProcPerRoute) and the upstream as written, so Envoy can pick a route by that text and the upstream serves whatever it resolves the path to (the gateway itself routes on the normalised path unless path_policy.normalize is false)", routes_phrase(&names), if names.len() == 1 { "matches" } else { "match" }, first.name, settings.join(" and ")),
                "set normalize_path: true and merge_slashes: true on the HttpConnectionManager (and path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT)",
            );
        }
        let action = hcm.config.get("path_with_escaped_slashes_action");
        let value = action.and_then(Node::as_str).unwrap_or("not set");
        let safe = [
            "UNESCAPE_AND_REDIRECT",
            "REJECT_REQUEST",
            "UNESCAPE_AND_FORWARD",
        ];
        if !safe.contains(&value) {
            self.warning(
                action.map(|n| n.line).unwrap_or(hcm.config.line),
                format!("path_with_escaped_slashes_action is {value}: `%2F` in a path reaches the gateway undecoded, so {} (matching on the path) can be picked or missed for a path an upstream that decodes `%2F` reads differently", routes_phrase(&names)),
                "set path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT (or REJECT_REQUEST) on the HttpConnectionManager",
            );
        }
    }
}

/// Whether a cluster speaks HTTP/2 to its endpoints.
fn speaks_http2(cluster: &Node) -> bool {
    if cluster.get("http2_protocol_options").is_some() {
        return true;
    }
    cluster
        .get("typed_extension_protocol_options")
        .map(Node::entries)
        .unwrap_or_default()
        .iter()
        .filter(|(key, opts)| {
            key == "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
                || opts.get("@type").and_then(Node::as_str).is_some_and(|t| {
                    t.ends_with("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
                })
        })
        .any(|(_, opts)| {
            opts.at(&["explicit_http_config", "http2_protocol_options"])
                .is_some()
                || (opts.get("auto_config").is_some() && cluster.get("transport_socket").is_some())
        })
}

fn body_need(needs: &PhaseNeeds, part: Part) -> BodyNeed {
    match part {
        Part::RequestBody => needs.request_body,
        Part::ResponseBody => needs.response_body,
        _ => BodyNeed::None,
    }
}

/// The mode that gives a route exactly what it needs for one part.
fn wanted_mode(part: Part, needs: &PhaseNeeds) -> i32 {
    if part.is_body() {
        match body_need(needs, part) {
            BodyNeed::None => NONE,
            BodyNeed::Streamed => STREAMED,
            BodyNeed::Buffered => BUFFERED,
        }
    } else if wants(needs, part, BodyNeed::Streamed) {
        SEND
    } else {
        SKIP
    }
}

/// Body modes mode_override cannot change.
fn fixed(mode: i32) -> bool {
    mode == DUPLEX || mode == GRPC
}

/// How Envoy's mode `got` for `part` falls short of (or beyond) what `needs` asks.
fn gap(part: Part, needs: &PhaseNeeds, got: i32) -> Option<Gap> {
    if part.is_body() {
        let need = body_need(needs, part);
        return match need {
            BodyNeed::None if got != NONE => Some(Gap::Excess),
            BodyNeed::None => None,
            _ if got == NONE || got == GRPC => Some(Gap::Withheld),
            BodyNeed::Buffered if got == STREAMED || got == DUPLEX => Some(Gap::Withheld),
            _ => None,
        };
    }
    let need = wants(needs, part, BodyNeed::Streamed);
    let sends = match part {
        Part::RequestTrailers | Part::ResponseTrailers => got == SEND,
        _ => got != SKIP,
    };
    match (need, sends) {
        (true, false) => Some(Gap::Withheld),
        // The request headers are always wanted: they pick the route.
        (false, true) if part != Part::RequestHeaders => Some(Gap::Excess),
        _ => None,
    }
}

/// The sentence and the fix for a group of mode gaps.
#[allow(clippy::too_many_arguments)]
fn describe(
    ctx: &Context<'_, '_>,
    part: Part,
    gap: Gap,
    reason: &Reason,
    variant: Variant,
    got: i32,
    configured: &ProcessingMode,
    g: &Group,
) -> (String, String) {
    let field = part.field();
    let got_name = value_name(part, got);
    let configured_name = value_name(part, part_value(configured, part));
    let need_name = value_name(part, g.need);
    let because = match reason {
        Reason::OverrideOff => format!("{field} is {configured_name} and allow_mode_override is off (Envoy's default), so the gateway's mode_override is ignored"),
        Reason::NotAllowed(asked) => format!("the gateway asks for {asked}, which allowed_override_modes does not list, so Envoy keeps {field}: {configured_name}"),
        Reason::SendWithoutWaiting => format!("send_body_without_waiting_for_header_response: true makes Envoy ignore mode_override, so {field} stays {configured_name}"),
        Reason::Duplex(p) if *p == part => format!("{field} is {got_name}, which mode_override cannot change"),
        Reason::Duplex(p) => format!("{} is FULL_DUPLEX_STREAMED, so Envoy ignores mode_override and {field} stays {configured_name}", p.field()),
        Reason::HeadersSkipped => "request_header_mode is SKIP, so the gateway gets no request headers and cannot send mode_override".to_string(),
        Reason::Observability => format!("observability_mode: true sends only STREAMED or GRPC bodies and ignores mode_override, so {field} is {got_name} here"),
        Reason::Applied => format!("{field} is {got_name}"),
    };
    let who = if variant == Variant::Narrow {
        format!(
            "requests of {} that trigger no optional body reading",
            routes_phrase(&g.routes)
        )
    } else {
        routes_phrase(&g.routes)
    };
    let procs = if g.processors.is_empty() {
        if part == Part::ResponseHeaders {
            "the applied-processors header".to_string()
        } else {
            String::new()
        }
    } else if part == Part::ResponseHeaders {
        format!(
            "{} and the applied-processors header",
            plain_list(g.processors.clone())
        )
    } else {
        plain_list(g.processors.clone())
    };
    let procs = if procs.is_empty() {
        String::new()
    } else {
        format!(" ({procs})")
    };
    let set_mode = match reason {
        Reason::HeadersSkipped => "set request_header_mode: SEND (or remove it)".to_string(),
        Reason::Observability => "remove observability_mode".to_string(),
        Reason::NotAllowed(_) => "add the mode the gateway asks for to allowed_override_modes, every field written as above (or remove allowed_override_modes)".to_string(),
        Reason::SendWithoutWaiting => "remove send_body_without_waiting_for_header_response".to_string(),
        Reason::Duplex(p) => format!("set {}: {} (mode_override cannot change FULL_DUPLEX_STREAMED or GRPC)", p.field(), if p.is_body() { "STREAMED or BUFFERED" } else { "SEND" }),
        Reason::OverrideOff => "set allow_mode_override: true (the gateway then asks per request for what its route needs)".to_string(),
        Reason::Applied => String::new(),
    };
    match gap {
        Gap::Withheld => {
            let what_need = if part.is_body() && g.need == BUFFERED {
                format!("the {} whole, before the headers go on", part.words())
            } else {
                format!("the {}", part.words())
            };
            let gets = if !part.is_body() {
                "Envoy does not send them".to_string()
            } else if got == NONE {
                "Envoy does not send it".to_string()
            } else if got == GRPC {
                "Envoy sends de-framed gRPC messages (GRPC), not the body".to_string()
            } else {
                format!(
                    "Envoy streams it ({got_name}), so the headers go on before the body is read"
                )
            };
            let what = format!(
                "{}{who} need{} {what_need}{procs}, but {gets}: {because}",
                ctx.label,
                if g.routes.len() == 1 && variant == Variant::Full {
                    "s"
                } else {
                    ""
                }
            );
            let fix = match reason {
                Reason::OverrideOff => format!("{set_mode}, or set {field}: {need_name}"),
                Reason::NotAllowed(_) | Reason::SendWithoutWaiting => {
                    format!("{set_mode}, or set {field}: {need_name}")
                }
                _ => set_mode,
            };
            (what, fix)
        }
        Gap::Excess => {
            let what = format!("{}Envoy sends the {} ({got_name}) for {who}, which no processor of {} reads: an extra message{} per request for nothing (cost only; {because})", ctx.label, part.words(), if g.routes.len() == 1 { "it" } else { "them" }, if got == BUFFERED || got == PARTIAL { " and a buffered body" } else { "" });
            let none = if part.is_body() { "NONE" } else { "SKIP" };
            let fix = match reason {
                Reason::OverrideOff if !g.others_need => {
                    format!("{set_mode}, or set {field}: {none}")
                }
                Reason::OverrideOff => set_mode,
                _ if !g.others_need => format!("set {field}: {none}"),
                _ => set_mode,
            };
            (what, fix)
        }
    }
}
