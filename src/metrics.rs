//! Prometheus metrics. Every label set used on the hot path is resolved once, when a
//! chain is built ([`RouteMetrics`], [`ProcessorMetrics`]), so recording a message costs
//! a few atomic adds and no label lookup or allocation.

use std::sync::Arc;
use std::time::Duration;

use extproc_gateway_api::metrics::MetricFamilies;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::Serialize;

use crate::modes::{ModeMismatch, Violation};
use crate::path::PathRefusal;
use crate::phase::PhaseKind;
use crate::processor::Withheld;

/// Buckets from 10 µs to 10 s: ext_proc answers are usually tens of microseconds,
/// slow upstream-bound streams take seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    /// Envoy closed it after the last phase.
    Completed,
    /// A processor answered the client.
    ImmediateResponse,
    /// The gateway ended it with an error status (bad input).
    Error,
    /// Envoy went away mid-stream (client reset, timeout).
    Cancelled,
}

impl StreamOutcome {
    const ALL: [StreamOutcome; 4] = [
        StreamOutcome::Completed,
        StreamOutcome::ImmediateResponse,
        StreamOutcome::Error,
        StreamOutcome::Cancelled,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamOutcome::Completed => "completed",
            StreamOutcome::ImmediateResponse => "immediate_response",
            StreamOutcome::Error => "error",
            StreamOutcome::Cancelled => "cancelled",
        }
    }
}

/// All the gateway's metrics, in their own registry.
pub struct Metrics {
    registry: Registry,
    families: MetricFamilies,
    message: HistogramVec,
    processor: HistogramVec,
    stream: HistogramVec,
    streams: IntCounterVec,
    immediate: IntCounterVec,
    processor_errors: IntCounterVec,
    processor_skipped: IntCounterVec,
    grpc_errors: IntCounterVec,
    violations: IntCounterVec,
    mismatches: IntCounterVec,
    withheld: IntCounterVec,
    limits: IntCounterVec,
    buffered: IntGauge,
    budget: std::sync::OnceLock<Arc<crate::budget::BodyBudget>>,
    paths_refused: IntCounterVec,
    active: IntGauge,
    http: HttpMetrics,
    tls_handshake_failures: IntCounter,
    tls_reloads: IntCounterVec,
    config_reloads: IntCounterVec,
}

/// gRPC status codes the gateway ends streams with (label values of
/// `extproc_grpc_stream_errors_total`, exported at 0 from the start).
pub const GRPC_ERROR_CODES: [&str; 6] = [
    "invalid_argument",
    "failed_precondition",
    "out_of_range",
    "resource_exhausted",
    "internal",
    "other",
];

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| unreachable!("static histogram {name}: {e}"))
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("static counter {name}: {e}"))
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let m = Metrics {
            message: histogram(
                "extproc_message_duration_seconds",
                "Gateway time per ext_proc message (decode, chain, encode), by route and phase",
                &["route", "phase"],
            ),
            processor: histogram(
                "extproc_processor_duration_seconds",
                "Time spent in one processor's hook, by route, processor and phase",
                &["route", "processor", "phase"],
            ),
            stream: histogram(
                "extproc_stream_duration_seconds",
                "Duration of an ext_proc stream (one HTTP request), by route",
                &["route"],
            ),
            streams: counter(
                "extproc_streams_total",
                "ext_proc streams by route and outcome (completed, immediate_response, error, cancelled)",
                &["route", "outcome"],
            ),
            immediate: counter(
                "extproc_immediate_responses_total",
                "Immediate responses sent to clients, by route, processor and HTTP status",
                &["route", "processor", "status"],
            ),
            processor_errors: counter(
                "extproc_processor_errors_total",
                "Processor failures (error, panic, timeout, condition), by route, processor and kind",
                &["route", "processor", "kind"],
            ),
            processor_skipped: counter(
                "extproc_processor_skipped_total",
                "Requests a processor was left out of (when_false, failed_open), by route, processor and reason",
                &["route", "processor", "reason"],
            ),
            grpc_errors: counter(
                "extproc_grpc_stream_errors_total",
                "ext_proc streams ended with a gRPC error status, by code",
                &["code"],
            ),
            violations: counter(
                "extproc_protocol_violations_total",
                "ext_proc streams the gateway ended because of what Envoy sent, by kind",
                &["kind"],
            ),
            mismatches: counter(
                "extproc_mode_mismatches_total",
                "Streams whose route got less from Envoy than its chain needs (or more than it asked), by route and reason",
                &["route", "reason"],
            ),
            withheld: counter(
                "extproc_results_withheld_total",
                "Results a processor left out rather than give a wrong one (e.g. a digest of a partial body), by route, processor and reason",
                &["route", "processor", "reason"],
            ),
            limits: counter(
                "extproc_limits_hit_total",
                "Streams or messages refused by a server limit (streams, idle, header_count, header_bytes)",
                &["limit"],
            ),
            buffered: IntGauge::new(
                "extproc_buffered_body_bytes",
                "Body bytes streams hold in memory now (server.max_buffered_bytes bounds it)",
            )
            .unwrap_or_else(|e| unreachable!("static gauge: {e}")),
            budget: std::sync::OnceLock::new(),
            paths_refused: counter(
                "extproc_paths_refused_total",
                "Requests refused with 400 for their path before any processor ran, by reason",
                &["reason"],
            ),
            active: IntGauge::new("extproc_active_streams", "ext_proc streams open now")
                .unwrap_or_else(|e| unreachable!("static gauge: {e}")),
            http: HttpMetrics::new(),
            tls_handshake_failures: IntCounter::new(
                "extproc_tls_handshake_failures_total",
                "TLS handshakes on the gRPC listener that failed or timed out (e.g. a client without a certificate from server.tls.client_ca_file)",
            )
            .unwrap_or_else(|e| unreachable!("static counter: {e}")),
            tls_reloads: counter(
                "extproc_tls_reloads_total",
                "Reloads of changed TLS files of the gRPC listener, by result (loaded, failed: the running certificate was kept)",
                &["result"],
            ),
            config_reloads: counter(
                "extproc_config_reloads_total",
                "Config reloads (SIGHUP or a changed file seen by server.config_reload_interval), by result (loaded, failed: the running config was kept)",
                &["result"],
            ),
            families: MetricFamilies::new(registry.clone()),
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new("extproc_build_info", "Build information; always 1"),
            &["version"],
        )
        .unwrap_or_else(|e| unreachable!("static gauge: {e}"));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for code in GRPC_ERROR_CODES {
            m.grpc_errors.with_label_values(&[code]);
        }
        for kind in Violation::ALL {
            m.violations.with_label_values(&[kind.as_str()]);
        }
        for result in ["loaded", "failed"] {
            m.tls_reloads.with_label_values(&[result]);
            m.config_reloads.with_label_values(&[result]);
        }
        for limit in crate::limits::Limit::ALL {
            m.limits.with_label_values(&[limit.as_str()]);
        }
        for reason in PathRefusal::ALL {
            m.paths_refused.with_label_values(&[reason.as_str()]);
        }
        let collectors: [Box<dyn prometheus::core::Collector>; 22] = [
            Box::new(m.buffered.clone()),
            Box::new(m.config_reloads.clone()),
            Box::new(m.tls_handshake_failures.clone()),
            Box::new(m.tls_reloads.clone()),
            Box::new(m.http.requests_vec.clone()),
            Box::new(m.http.exchanges_vec.clone()),
            Box::new(m.http.held.clone()),
            Box::new(m.message.clone()),
            Box::new(m.processor.clone()),
            Box::new(m.stream.clone()),
            Box::new(m.streams.clone()),
            Box::new(m.immediate.clone()),
            Box::new(m.processor_errors.clone()),
            Box::new(m.processor_skipped.clone()),
            Box::new(m.grpc_errors.clone()),
            Box::new(m.violations.clone()),
            Box::new(m.mismatches.clone()),
            Box::new(m.withheld.clone()),
            Box::new(m.limits.clone()),
            Box::new(m.paths_refused.clone()),
            Box::new(m.active.clone()),
            Box::new(build),
        ];
        for c in collectors {
            if let Err(e) = m.registry.register(c) {
                tracing::error!(error = %e, "metric registration failed");
            }
        }
        Arc::new(m)
    }

    /// The registry as processors see it ([`BuildContext::metrics`]), for families of
    /// their own such as `jwt_auth`'s JWKS counters.
    ///
    /// [`BuildContext::metrics`]: crate::registry::BuildContext::metrics
    pub fn families(&self) -> &MetricFamilies {
        &self.families
    }

    /// Handles for one route.
    pub fn route(self: &Arc<Self>, route: &str) -> RouteMetrics {
        RouteMetrics {
            messages: PhaseKind::ALL.map(|p| self.message.with_label_values(&[route, p.as_str()])),
            stream: self.stream.with_label_values(&[route]),
            outcomes: StreamOutcome::ALL
                .map(|o| self.streams.with_label_values(&[route, o.as_str()])),
            mismatches: ModeMismatch::ALL.map(|r| MismatchCounter {
                counter: self.mismatches.with_label_values(&[route, r.as_str()]),
                logged: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            }),
            active: self.active.clone(),
        }
    }

    /// Handles for one processor of one route.
    pub fn processor(self: &Arc<Self>, route: &str, processor: &str) -> ProcessorMetrics {
        ProcessorMetrics {
            durations: PhaseKind::ALL.map(|p| {
                self.processor
                    .with_label_values(&[route, processor, p.as_str()])
            }),
            failures: Failure::ALL.map(|f| {
                self.processor_errors
                    .with_label_values(&[route, processor, f.as_str()])
            }),
            skipped: Skipped::ALL.map(|r| {
                self.processor_skipped
                    .with_label_values(&[route, processor, r.as_str()])
            }),
            withheld: Withheld::ALL.map(|w| {
                self.withheld
                    .with_label_values(&[route, processor, w.as_str()])
            }),
            immediate: self.immediate.clone(),
            route: Arc::from(route),
            processor: Arc::from(processor),
        }
    }

    /// Handles of `extproc_paths_refused_total`, one per reason, resolved once (the
    /// router counts each refused path without a label lookup).
    pub fn path_refusals(&self) -> PathRefusalMetrics {
        PathRefusalMetrics(
            PathRefusal::ALL.map(|r| self.paths_refused.with_label_values(&[r.as_str()])),
        )
    }

    /// Handles for the ext_proc-over-HTTP listener (`server.http_addr`).
    pub fn http(&self) -> &HttpMetrics {
        &self.http
    }

    /// Counts a stream ended with a gRPC error (`code` as its canonical name).
    pub fn grpc_error(&self, code: &str) {
        self.grpc_errors.with_label_values(&[code]).inc();
    }

    /// Reports `budget`'s bytes in `extproc_buffered_body_bytes` at every scrape.
    pub fn watch_budget(&self, budget: Arc<crate::budget::BodyBudget>) {
        let _ = self.budget.set(budget);
    }

    /// Counts a stream or message refused by a server limit.
    pub fn limit_hit(&self, limit: crate::limits::Limit) {
        self.limits.with_label_values(&[limit.as_str()]).inc();
    }

    /// Counts a TLS handshake on the gRPC listener that failed or timed out: a client
    /// refused by mutual TLS shows here (its connection never reaches gRPC).
    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    /// Counts a reload of changed TLS files: `loaded`, or `failed` (old one kept).
    pub fn tls_reload(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "failed" };
        self.tls_reloads.with_label_values(&[result]).inc();
    }

    /// Counts a config reload: `loaded`, or `failed` (the running config kept), so an
    /// alert can fire on a ConfigMap edit that never took effect.
    pub fn config_reload(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "failed" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Counts a stream ended because of what Envoy sent.
    pub fn violation(&self, kind: Violation) {
        self.violations.with_label_values(&[kind.as_str()]).inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(b) = self.budget.get() {
            self.buffered
                .set(i64::try_from(b.used()).unwrap_or(i64::MAX));
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            return format!("# encoding failed: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Cumulative figures for the built-in dashboard.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            buckets: LATENCY_BUCKETS.to_vec(),
            active_streams: self.active.get(),
            ..Default::default()
        };
        for family in self.registry.gather() {
            for m in family.get_metric() {
                let labels: Vec<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                let label = |k: &str| {
                    labels
                        .iter()
                        .find(|(n, _)| *n == k)
                        .map(|(_, v)| v.to_string())
                        .unwrap_or_default()
                };
                let hist = || {
                    let h = m.get_histogram();
                    Series {
                        labels: labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        count: h.get_sample_count(),
                        sum: h.get_sample_sum(),
                        cumulative: h
                            .get_bucket()
                            .iter()
                            .map(|b| b.cumulative_count())
                            .collect(),
                    }
                };
                match family.name() {
                    "extproc_message_duration_seconds" => s.messages.push(hist()),
                    "extproc_processor_duration_seconds" => s.processors.push(hist()),
                    "extproc_stream_duration_seconds" => s.streams.push(hist()),
                    "extproc_streams_total" => s.outcomes.push(Count {
                        route: label("route"),
                        key: label("outcome"),
                        value: m.get_counter().get_value() as u64,
                    }),
                    "extproc_immediate_responses_total" => s.immediate.push(Count {
                        route: label("route"),
                        key: format!("{} {}", label("processor"), label("status")),
                        value: m.get_counter().get_value() as u64,
                    }),
                    "extproc_mode_mismatches_total" => s.mismatches.push(Count {
                        route: label("route"),
                        key: label("reason"),
                        value: m.get_counter().get_value() as u64,
                    }),
                    "extproc_protocol_violations_total" => s.violations.push(Count {
                        route: String::new(),
                        key: label("kind"),
                        value: m.get_counter().get_value() as u64,
                    }),
                    "extproc_processor_errors_total" => s.errors.push(Count {
                        route: label("route"),
                        key: format!("{} {}", label("processor"), label("kind")),
                        value: m.get_counter().get_value() as u64,
                    }),
                    _ => {}
                }
            }
        }
        s
    }
}

/// One histogram series, cumulative since start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Observations.
    pub count: u64,
    /// Sum of observations (seconds).
    pub sum: f64,
    /// Cumulative count per bucket of [`LATENCY_BUCKETS`].
    pub cumulative: Vec<u64>,
}

/// One counter value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Count {
    /// Route label.
    pub route: String,
    /// The other labels, joined.
    pub key: String,
    /// Value.
    pub value: u64,
}

/// Everything the dashboard page polls.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Bucket upper bounds (seconds).
    pub buckets: Vec<f64>,
    /// Open streams.
    pub active_streams: i64,
    /// Per route and phase.
    pub messages: Vec<Series>,
    /// Per route, processor and phase.
    pub processors: Vec<Series>,
    /// Per route.
    pub streams: Vec<Series>,
    /// Streams by outcome.
    pub outcomes: Vec<Count>,
    /// Immediate responses by processor and status.
    pub immediate: Vec<Count>,
    /// Processor errors by kind.
    pub errors: Vec<Count>,
    /// Mode mismatches by route and reason.
    pub mismatches: Vec<Count>,
    /// Streams ended for what Envoy sent, by kind (process-wide: `route` is empty).
    pub violations: Vec<Count>,
}

/// Pre-resolved handles of one route.
#[derive(Clone)]
pub struct RouteMetrics {
    messages: [Histogram; 6],
    stream: Histogram,
    outcomes: [IntCounter; 4],
    mismatches: [MismatchCounter; 7],
    active: IntGauge,
}

/// A mismatch counter and whether its first occurrence was logged (once per route and
/// reason, so a misconfigured filter does not flood the log).
#[derive(Clone)]
struct MismatchCounter {
    counter: IntCounter,
    logged: Arc<std::sync::atomic::AtomicBool>,
}

fn phase_index(kind: PhaseKind) -> usize {
    match kind {
        PhaseKind::RequestHeaders => 0,
        PhaseKind::RequestBody => 1,
        PhaseKind::RequestTrailers => 2,
        PhaseKind::ResponseHeaders => 3,
        PhaseKind::ResponseBody => 4,
        PhaseKind::ResponseTrailers => 5,
    }
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

impl RouteMetrics {
    /// Records one message's gateway time.
    pub fn message(&self, kind: PhaseKind, took: Duration) {
        self.messages[phase_index(kind)].observe(took.as_secs_f64());
    }

    /// A stream opened.
    pub fn stream_started(&self) {
        self.active.inc();
    }

    /// A stream ended.
    pub fn stream_ended(&self, outcome: StreamOutcome, took: Duration) {
        self.active.dec();
        self.stream.observe(took.as_secs_f64());
        let i = StreamOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.outcomes[i].inc();
    }

    /// Counts a mode mismatch; returns true the first time for this route and reason
    /// (the caller logs it then).
    pub fn mismatch(&self, reason: ModeMismatch) -> bool {
        let i = ModeMismatch::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        let m = &self.mismatches[i];
        m.counter.inc();
        !m.logged.swap(true, std::sync::atomic::Ordering::Relaxed)
    }

    /// Mismatch counts of this route, for `/routes`.
    pub fn mismatch_counts(&self) -> Vec<(&'static str, u64)> {
        ModeMismatch::ALL
            .iter()
            .zip(&self.mismatches)
            .map(|(r, m)| (r.as_str(), m.counter.get()))
            .collect()
    }
}

/// Pre-resolved counters of refused request paths, by reason
/// (`extproc_paths_refused_total`).
#[derive(Clone)]
pub struct PathRefusalMetrics([IntCounter; 7]);

impl std::fmt::Debug for PathRefusalMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathRefusalMetrics")
    }
}

impl PathRefusalMetrics {
    /// Counts one refused path.
    pub fn refused(&self, reason: PathRefusal) {
        if let Some(c) = self.0.get(reason.index()) {
            c.inc();
        }
    }
}

/// How a processor failed (label `kind` of `extproc_processor_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A hook returned an error.
    Error,
    /// A hook panicked.
    Panic,
    /// A hook overran `server.processor_timeout`.
    Timeout,
    /// The `when:` condition could not be evaluated on the request.
    Condition,
}

impl Failure {
    /// Every kind, in index order, for zero-initialised series.
    pub const ALL: [Failure; 4] = [
        Failure::Error,
        Failure::Panic,
        Failure::Timeout,
        Failure::Condition,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Error => "error",
            Failure::Panic => "panic",
            Failure::Timeout => "timeout",
            Failure::Condition => "condition",
        }
    }
}

/// Why a processor was left out of a request (label `reason` of
/// `extproc_processor_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// Its `when:` condition was false.
    WhenFalse,
    /// It failed under `on_error: fail_open`.
    FailedOpen,
}

impl Skipped {
    /// Every reason, in index order.
    pub const ALL: [Skipped; 2] = [Skipped::WhenFalse, Skipped::FailedOpen];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Skipped::WhenFalse => "when_false",
            Skipped::FailedOpen => "failed_open",
        }
    }
}

/// Pre-resolved handles of one processor on one route.
#[derive(Clone)]
pub struct ProcessorMetrics {
    durations: [Histogram; 6],
    failures: [IntCounter; 4],
    skipped: [IntCounter; 2],
    withheld: [IntCounter; 4],
    immediate: IntCounterVec,
    route: Arc<str>,
    processor: Arc<str>,
}

impl ProcessorMetrics {
    /// Records one hook's time.
    pub fn hook(&self, kind: PhaseKind, took: Duration) {
        self.durations[phase_index(kind)].observe(took.as_secs_f64());
    }

    /// A hook (or the processor's condition) failed.
    pub fn failed(&self, kind: Failure) {
        self.failures[kind as usize].inc();
    }

    /// The processor was left out of a request.
    pub fn skipped(&self, reason: Skipped) {
        self.skipped[reason as usize].inc();
    }

    /// Counts a result the processor left out.
    pub fn withheld(&self, reason: Withheld) {
        let i = Withheld::ALL.iter().position(|w| *w == reason).unwrap_or(0);
        self.withheld[i].inc();
    }

    /// The processor answered the client (rare path: the status label is looked up).
    pub fn responded(&self, status: u16) {
        self.immediate
            .with_label_values(&[&*self.route, &*self.processor, status.to_string().as_str()])
            .inc();
    }
}

/// How one POST of Envoy's `http_service` was answered (label `result` of
/// `extproc_http_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpResult {
    /// 200 with a ProcessingResponse.
    Ok,
    /// 400: the body is not a ProcessingRequest in proto3 JSON.
    Malformed,
    /// 413: the body exceeds `server.max_message_bytes`.
    TooLarge,
    /// 4xx: a well-formed message the exchange refused (out of order, no phase).
    Rejected,
    /// 405: not a POST.
    NotAllowed,
    /// 500: the answer could not be encoded (a bug, never bad input).
    Internal,
}

impl HttpResult {
    const ALL: [HttpResult; 6] = [
        HttpResult::Ok,
        HttpResult::Malformed,
        HttpResult::TooLarge,
        HttpResult::Rejected,
        HttpResult::NotAllowed,
        HttpResult::Internal,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpResult::Ok => "ok",
            HttpResult::Malformed => "malformed",
            HttpResult::TooLarge => "too_large",
            HttpResult::Rejected => "rejected",
            HttpResult::NotAllowed => "not_allowed",
            HttpResult::Internal => "internal",
        }
    }
}

/// What happened to the per-request state the HTTP listener keeps between Envoy's
/// POSTs (label `event` of `extproc_http_exchanges_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpExchangeEvent {
    /// A later POST found the state its request headers left.
    Resumed,
    /// Dropped after `server.http_exchange_ttl` without a later POST (Envoy skipped
    /// the response phase, the request was reset, or the state was never needed).
    Expired,
    /// Dropped to stay within `server.http_max_exchanges`, oldest first.
    Evicted,
    /// Replaced by new request headers under the same key.
    Replaced,
    /// A POST without the `x-request-id` Envoy sets: handled alone, no state kept.
    Uncorrelated,
}

impl HttpExchangeEvent {
    const ALL: [HttpExchangeEvent; 5] = [
        HttpExchangeEvent::Resumed,
        HttpExchangeEvent::Expired,
        HttpExchangeEvent::Evicted,
        HttpExchangeEvent::Replaced,
        HttpExchangeEvent::Uncorrelated,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpExchangeEvent::Resumed => "resumed",
            HttpExchangeEvent::Expired => "expired",
            HttpExchangeEvent::Evicted => "evicted",
            HttpExchangeEvent::Replaced => "replaced",
            HttpExchangeEvent::Uncorrelated => "uncorrelated",
        }
    }
}

/// Pre-resolved handles of the HTTP listener: every label value exists (at zero)
/// from the start, so a dashboard or alert sees the series before the first error.
#[derive(Clone)]
pub struct HttpMetrics {
    requests_vec: IntCounterVec,
    requests: [IntCounter; 6],
    exchanges_vec: IntCounterVec,
    exchanges: [IntCounter; 5],
    held: IntGauge,
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpMetrics")
    }
}

impl HttpMetrics {
    fn new() -> Self {
        let requests_vec = counter(
            "extproc_http_requests_total",
            "POSTs of Envoy's ext_proc http_service, by result (ok, malformed, too_large, rejected, not_allowed, internal)",
            &["result"],
        );
        let exchanges_vec = counter(
            "extproc_http_exchanges_total",
            "Per-request state kept between http_service POSTs, by event (resumed, expired, evicted, replaced, uncorrelated)",
            &["event"],
        );
        Self {
            requests: HttpResult::ALL.map(|r| requests_vec.with_label_values(&[r.as_str()])),
            exchanges: HttpExchangeEvent::ALL
                .map(|e| exchanges_vec.with_label_values(&[e.as_str()])),
            requests_vec,
            exchanges_vec,
            held: IntGauge::new(
                "extproc_http_exchanges_held",
                "Per-request states held now between http_service POSTs",
            )
            .unwrap_or_else(|e| unreachable!("static gauge: {e}")),
        }
    }

    /// Counts one POST by how it was answered.
    pub fn request(&self, result: HttpResult) {
        let i = HttpResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.requests[i].inc();
    }

    /// Counts `n` events of one kind.
    pub fn exchanges(&self, event: HttpExchangeEvent, n: u64) {
        let i = HttpExchangeEvent::ALL
            .iter()
            .position(|e| *e == event)
            .unwrap_or(0);
        self.exchanges[i].inc_by(n);
    }

    /// Sets how many states are held now.
    pub fn held(&self, n: usize) {
        self.held.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
