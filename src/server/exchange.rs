//! The per-stream state machine: one `Exchange` per HTTP request, fed Envoy's messages
//! in order, answering each with exactly one response of the matching kind (or, when a
//! full-duplex request body is held for the headers' answer, several at once, still in
//! Envoy's order).
//!
//! It knows nothing of tonic nor of protobuf: the transports (the gRPC service, the
//! HTTP service, the in-process test driver) decode Envoy's messages into
//! [`wire::Inbound`] events and encode its [`wire::Outbound`] answers. What Envoy
//! really sends is tracked in [`Flows`](super::flows): the gateway never assumes its
//! `mode_override` took effect.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::flows::{Flows, Step};
use crate::chain::{PhaseOutcome, PhaseRequest};
use crate::metrics::StreamOutcome;
use crate::modes::{BodyModes, ModeMismatch, ModeOverride, Protocol, Violation};
use crate::phase::{Flow, Mutations, Phase, PhaseKind};
use crate::router::{Route, RouteInput, Router};
use crate::wire::{self, Inbound, Outbound};

/// Most bytes of a full-duplex request body held back while the request headers'
/// answer waits for a processor that needs the whole body; past it the headers are
/// answered and the body streams on.
pub const DUPLEX_HOLD_LIMIT: usize = 8 * 1024 * 1024;

/// Why a stream had to end: the gRPC status it maps to, with a message for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    /// The message itself is malformed (INVALID_ARGUMENT).
    #[error("invalid message: {0}")]
    InvalidArgument(String),
    /// The message is well formed but not allowed at this point (FAILED_PRECONDITION).
    #[error("message out of order: {0}")]
    OutOfOrder(String),
}

impl From<wire::WireError> for ExchangeError {
    fn from(e: wire::WireError) -> Self {
        ExchangeError::InvalidArgument(e.to_string())
    }
}

impl ExchangeError {
    /// The violation counted for this error.
    pub fn violation(&self) -> Violation {
        match self {
            ExchangeError::InvalidArgument(_) => Violation::EmptyMessage,
            ExchangeError::OutOfOrder(_) => Violation::OutOfOrder,
        }
    }
}

/// The request headers' answer, held while a full-duplex body is read.
struct Held {
    /// The chain's outcome for the request headers (its mutations grow with header
    /// changes made while the body is read).
    mutations: Mutations,
    /// What the headers' answer asks Envoy to send.
    mode_override: Option<ModeOverride>,
    /// Body answers, in order, sent after the headers' answer.
    bodies: Vec<Outbound>,
    bytes: usize,
}

/// A stream that has received its first message.
struct Active {
    route: Arc<Route>,
    started: Instant,
    span: tracing::Span,
    ctx: Option<Box<crate::processor::RequestCtx>>,
    flows: Flows,
    held: Option<Held>,
    /// The status of the immediate response sent, if one was.
    immediate: Option<u16>,
    /// Mode mismatches seen on this stream, for the access log.
    mismatches: Vec<&'static str>,
}

impl Active {
    /// Counts and logs (once per route) a mismatch, and keeps it for the access log.
    fn mismatch(&mut self, reason: ModeMismatch) {
        record_mismatch(&self.route, reason);
        if !self.mismatches.contains(&reason.as_str()) {
            self.mismatches.push(reason.as_str());
        }
    }
}

/// How to answer one message beyond what the chain decided.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Sent on the request headers' answer only.
    mode_override: Option<ModeOverride>,
    /// Body modes in force, to pick the body answer's shape.
    modes: BodyModes,
}

/// What happened to one message.
#[derive(Debug)]
pub enum Handled {
    /// Send this answer.
    Reply(Box<Outbound>),
    /// Send these answers, in order (a held full-duplex exchange released).
    Replies(Vec<Outbound>),
    /// Send nothing (observability mode, a duplicated chunk after end of stream, or a
    /// full-duplex message whose answer is held).
    Silent,
}

/// The state of one ext_proc stream.
pub struct Exchange {
    router: Arc<Router>,
    grpc_metadata: Vec<(String, String)>,
    active: Option<Active>,
    finished: bool,
    stopped: bool,
    ended: bool,
    /// Whether the last message came in observability mode (Envoy takes no answers).
    observability: bool,
    headers_only: bool,
    extender: Option<crate::processor::TimeoutExtender>,
    limits: Option<(
        Arc<crate::limits::StreamLimits>,
        Arc<crate::metrics::Metrics>,
    )>,
    budget: Option<Arc<crate::budget::BodyBudget>>,
}

impl Exchange {
    /// A stream served by `router`, opened with the given gRPC initial metadata.
    pub fn new(router: Arc<Router>, grpc_metadata: Vec<(String, String)>) -> Self {
        Self {
            router,
            grpc_metadata,
            active: None,
            finished: false,
            stopped: false,
            ended: false,
            observability: false,
            headers_only: false,
            extender: None,
            limits: None,
            budget: None,
        }
    }

    /// Draws the body bytes this stream's processors hold from `budget`.
    pub fn with_budget(mut self, budget: Option<Arc<crate::budget::BodyBudget>>) -> Self {
        self.budget = budget;
        self
    }

    /// Refuses messages whose headers break `limits` (431 to the client for a
    /// request, 502 for a response), counting them in `metrics`.
    pub fn with_limits(
        mut self,
        limits: Arc<crate::limits::StreamLimits>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        self.limits = Some((limits, metrics));
        self
    }

    /// Lets processors extend Envoy's message timeout on this stream: `extender` sends
    /// an `override_message_timeout` ahead of the answer being worked on.
    pub fn with_timeout_extender(mut self, extender: crate::processor::TimeoutExtender) -> Self {
        self.extender = Some(extender);
        self
    }

    /// A stream over a transport that carries headers only (Envoy's ext_proc over
    /// HTTP): bodies and trailers are never asked for, so their absence is no
    /// mismatch (processors that need them still withhold their results).
    pub fn headers_only(mut self) -> Self {
        self.headers_only = true;
        self
    }

    /// True once an immediate response was sent: the stream should close.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The route chosen at the first message.
    pub fn route(&self) -> Option<&Arc<Route>> {
        self.active.as_ref().map(|a| &a.route)
    }

    /// Records how the stream ended (metrics and the stream's span). Called once by
    /// the server; a stream dropped without it counts as cancelled.
    pub fn end(&mut self, outcome: StreamOutcome) {
        if self.ended {
            return;
        }
        let Some(active) = &mut self.active else {
            return;
        };
        self.ended = true;
        // Envoy often resets a stream instead of half-closing it once it has what it
        // needs: that is a completed exchange if the response was already processed
        // (or nothing of the response was asked for and the request was through).
        let outcome = match outcome {
            StreamOutcome::Cancelled if active.flows.looks_complete() => StreamOutcome::Completed,
            other => other,
        };
        if outcome == StreamOutcome::Completed {
            for reason in active.flows.at_stream_end() {
                active.mismatch(reason);
            }
        }
        if let Some(m) = &active.route.metrics {
            m.stream_ended(outcome, active.started.elapsed());
        }
        active.span.record("outcome", outcome.as_str());
        if self.router.access_log() {
            access_log(active, outcome);
        }
    }

    /// Answers a message the gateway had no memory to receive (its bytes are being
    /// skipped, see `server::inbound`): 503 to the client, as when a processor finds
    /// the body budget spent. `None` when Envoy takes no answer here (no message yet,
    /// or observability mode): the stream must end instead.
    pub(crate) fn refuse_unreceived(&mut self) -> Option<Handled> {
        if self.active.is_none() || self.observability || self.finished {
            return None;
        }
        Some(self.refuse(503, "the gateway's body budget is in use; try again later"))
    }

    /// Ends the exchange with an immediate response of `status` and a JSON `reason`,
    /// for a refusal by the server itself (a limit, the budget), before any processor.
    fn refuse(&mut self, status: u16, reason: &str) -> Handled {
        if let Some(active) = self.active.as_mut() {
            active.immediate = Some(status);
        }
        self.finished = true;
        self.stopped = true;
        self.end(StreamOutcome::ImmediateResponse);
        let reply = crate::phase::ImmediateResponse::json_error(status, reason);
        Handled::Reply(Box::new(Outbound::refusal(reply)))
    }

    /// Handles one message from Envoy.
    pub async fn handle(&mut self, message: Inbound) -> Result<Handled, ExchangeError> {
        // The clock is read only when the route records metrics.
        let received = self
            .active
            .as_ref()
            .is_none_or(|a| a.route.metrics.is_some())
            .then(Instant::now);
        let Inbound {
            mut phase,
            observability_mode: observability,
            attributes,
            mut metadata_context,
            protocol,
        } = message;
        self.observability = observability;
        if let Some((limits, metrics)) = &self.limits {
            if let Some(limit) = crate::limits::headers_over(&phase, limits) {
                metrics.limit_hit(limit);
                let request = phase.kind().is_request();
                tracing::debug!(
                    limit = limit.as_str(),
                    request,
                    "headers over the server's limit"
                );
                if observability {
                    self.stopped = true;
                    return Ok(Handled::Silent);
                }
                let (status, what) = if request {
                    (431, "request headers exceed the gateway's limit")
                } else {
                    (502, "response headers exceed the gateway's limit")
                };
                return Ok(self.refuse(status, what));
            }
        }
        let first = self.active.is_none();
        if first {
            // The first message's metadata starts the context; later ones update it.
            let metadata = metadata_context.take().unwrap_or_default();
            self.start(&phase, attributes, metadata, protocol, observability);
        }
        let Some(active) = self.active.as_mut() else {
            return Err(ExchangeError::InvalidArgument("stream not started".into()));
        };
        let step = active
            .flows
            .observe(&mut phase, observability)
            .map_err(ExchangeError::OutOfOrder)?;
        let mismatches = active.flows.take_mismatches();
        for reason in mismatches {
            active.mismatch(reason);
        }
        match step {
            Step::Run => {}
            Step::IgnoreSilently => {
                tracing::debug!(route = %active.route.name, "ignoring a body chunk after end of stream");
                return Ok(Handled::Silent);
            }
            Step::Answer => {
                // A duplicate end of stream: answered, not given to processors.
                if observability {
                    return Ok(Handled::Silent);
                }
                let response = Outbound::proceed(&phase, active.flows.modes());
                return Ok(Handled::Reply(Box::new(response)));
            }
        }
        if self.stopped {
            // Observability mode after a processor answered: the chain is over.
            return Ok(Handled::Silent);
        }
        if let Some(metadata) = metadata_context {
            // Envoy sends the forwarded namespaces with every message: keep the latest.
            if let Some(ctx) = active.ctx.as_mut() {
                for (ns, value) in metadata {
                    ctx.metadata.insert(ns, value);
                }
            }
        }
        let Some(mut ctx) = active.ctx.take() else {
            return Err(ExchangeError::InvalidArgument(
                "request context lost".into(),
            ));
        };
        if let Phase::RequestHeaders(h) = &phase {
            ctx.fill_from_request_headers(h);
        }
        active.flows.fill_receipts(&mut ctx);
        let kind = phase.kind();
        // An unsampled stream has no span: its messages get none either (they would
        // otherwise start traces of their own).
        let phase_span = if active.span.is_none() {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                parent: &active.span,
                "ext_proc.phase",
                otel.name = %format_args!("phase {kind}"),
                phase = kind.as_str(),
            )
        };
        let mut outcome = active
            .route
            .chain
            .run(PhaseRequest::new(phase, ctx))
            .instrument(phase_span)
            .await;
        let mut plan = Plan {
            mode_override: None,
            modes: active.flows.modes(),
        };
        if let Phase::RequestHeaders(_) = &outcome.phase {
            let mut needs = outcome.ctx.needs();
            if self.headers_only {
                needs.request_body = crate::processor::BodyNeed::None;
                needs.response_body = crate::processor::BodyNeed::None;
                needs.request_trailers = false;
                needs.response_trailers = false;
            }
            let mode = active
                .flows
                .plan(needs, observability, self.router.buffer_limit());
            plan.mode_override = Some(mode);
            plan.modes = active.flows.modes();
        }
        let responded = match &outcome.flow {
            Flow::Respond(r) => {
                active.immediate = Some(r.status);
                true
            }
            _ => false,
        };
        if responded && observability {
            active.mismatch(ModeMismatch::ObservabilityCannotBlock);
        }
        let handled = if observability {
            Handled::Silent
        } else {
            respond(active, outcome.phase.kind(), &mut outcome, plan, responded)
        };
        if let (Some(m), Some(received)) = (&active.route.metrics, received) {
            m.message(kind, received.elapsed());
        }
        let PhaseOutcome { phase, mut ctx, .. } = outcome;
        if let Phase::RequestHeaders(h) = phase {
            // The event already carries every processor's changes: keep it as the
            // request's current headers (moved, not copied).
            *ctx.request_headers_mut() = h.headers;
        }
        active.ctx = Some(ctx);
        if responded {
            self.stopped = true;
            self.finished = !observability;
            if self.finished {
                self.end(StreamOutcome::ImmediateResponse);
            }
        }
        Ok(handled)
    }

    fn start(
        &mut self,
        phase: &Phase,
        attributes: serde_json::Map<String, serde_json::Value>,
        metadata: serde_json::Map<String, serde_json::Value>,
        protocol: Protocol,
        observability: bool,
    ) {
        let headers = match phase {
            Phase::RequestHeaders(h) => Some(&h.headers),
            _ => None,
        };
        let route = self
            .router
            .select(&RouteInput {
                headers,
                attributes: &attributes,
                grpc_metadata: &self.grpc_metadata,
                metadata: &metadata,
            })
            .clone();
        let span = tracing::debug_span!(
            "ext_proc.stream",
            otel.name = "ext_proc stream",
            route = %route.name,
            outcome = tracing::field::Empty,
        );
        if let Some(h) = headers {
            // The HTTP request's traceparent makes the gateway's spans part of the
            // trace Envoy (or the client) started.
            crate::telemetry::set_parent(&span, h);
        }
        // The sampler decides once per stream, here: a stream it leaves out costs no
        // further span.
        let span = crate::telemetry::if_sampled(span);
        if let Some(m) = &route.metrics {
            m.stream_started();
        }
        let mut ctx = Box::new(route.chain.new_ctx(route.name.clone()));
        fill_from_attributes(&mut ctx, &attributes);
        ctx.attributes = attributes;
        ctx.metadata = metadata;
        ctx.grpc_metadata = std::mem::take(&mut self.grpc_metadata);
        if !observability {
            ctx.set_timeout_extender(self.extender.take());
        }
        ctx.set_budget(self.budget.clone().map(crate::budget::StreamBudget::new));
        let flows = Flows::new(protocol);
        self.active = Some(Active {
            route,
            started: Instant::now(),
            span,
            ctx: Some(ctx),
            flows,
            held: None,
            immediate: None,
            mismatches: Vec::new(),
        });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.end(StreamOutcome::Cancelled);
    }
}

/// The stream's access-log line (target [`ACCESS_LOG`](crate::telemetry::ACCESS_LOG)).
fn access_log(active: &Active, outcome: StreamOutcome) {
    let ctx = active.ctx.as_deref();
    let processors = ctx.map(|c| active.route.chain.ran(c)).unwrap_or_default();
    // Why a body was incomplete: only bodies that exist and did not arrive whole.
    let incomplete = |r: crate::processor::BodyReceipt| match r {
        crate::processor::BodyReceipt::Partial => Some("partial"),
        crate::processor::BodyReceipt::NotSent => Some("not_sent"),
        crate::processor::BodyReceipt::Pending => Some("pending"),
        _ => None,
    };
    // Only bodies a processor of the chain asked for.
    let needs = ctx.map(|c| c.needs()).unwrap_or_default();
    let none = crate::processor::BodyNeed::None;
    let request_body = ctx
        .filter(|_| needs.request_body != none)
        .and_then(|c| incomplete(c.request_body()));
    let response_body = ctx
        .filter(|_| needs.response_body != none)
        .and_then(|c| incomplete(c.response_body()));
    let mismatches = (!active.mismatches.is_empty()).then(|| active.mismatches.join(","));
    // In the stream's span: a JSON line then carries its trace and span ids.
    tracing::info!(
        target: crate::telemetry::ACCESS_LOG,
        parent: &active.span,
        route = %active.route.name,
        outcome = outcome.as_str(),
        duration_ms = active.started.elapsed().as_secs_f64() * 1000.0,
        processors = %processors,
        status = active.immediate,
        request_body,
        response_body,
        mismatches,
        "stream"
    );
}

/// Counts a mismatch on the route and logs its first occurrence.
fn record_mismatch(route: &Route, reason: ModeMismatch) {
    let first = route.metrics.as_ref().is_none_or(|m| m.mismatch(reason));
    if first {
        tracing::warn!(
            route = %route.name,
            reason = reason.as_str(),
            hint = reason.hint(),
            "Envoy's processing mode does not give this route what its chain needs"
        );
    }
}

/// The chain's answer to its phase: the flow and the changes are moved out of
/// `outcome` (the phase stays, for the request's context).
fn answer(outcome: &mut PhaseOutcome, plan: Plan) -> Outbound {
    Outbound::answer(
        &outcome.phase,
        std::mem::replace(&mut outcome.flow, Flow::Continue),
        std::mem::take(&mut outcome.mutations),
        plan.modes,
        plan.mode_override,
    )
}

/// Decides the answer, holding the request headers' answer while a full-duplex body
/// that a processor needs whole is read.
fn respond(
    active: &mut Active,
    kind: PhaseKind,
    outcome: &mut PhaseOutcome,
    plan: Plan,
    responded: bool,
) -> Handled {
    if responded {
        // An immediate response replaces anything held.
        active.held = None;
        return Handled::Reply(Box::new(answer(outcome, plan)));
    }
    if kind == PhaseKind::RequestHeaders && active.flows.hold_request_headers() {
        active.held = Some(Held {
            mutations: std::mem::take(&mut outcome.mutations),
            mode_override: plan.mode_override,
            bodies: Vec::new(),
            bytes: 0,
        });
        return Handled::Silent;
    }
    let Some(held) = active.held.as_mut() else {
        return Handled::Reply(Box::new(answer(outcome, plan)));
    };
    match &outcome.phase {
        Phase::RequestBody(b) => {
            // Header changes made while reading the body go with the headers' answer.
            let mut body_outcome = std::mem::take(&mut outcome.mutations);
            held.mutations.merge(body_outcome.take_header_changes());
            held.bytes += b.chunk.len();
            held.bodies.push(Outbound::answer(
                &outcome.phase,
                std::mem::replace(&mut outcome.flow, Flow::Continue),
                body_outcome,
                plan.modes,
                plan.mode_override,
            ));
            // The held chunk counts against the stream's and the server's budget; past
            // either, the headers are answered now and the body streams on.
            let within_budget = active
                .ctx
                .as_mut()
                .is_none_or(|ctx| ctx.reserve_body_bytes(b.chunk.len()).is_ok());
            if b.end_of_stream || held.bytes > DUPLEX_HOLD_LIMIT || !within_budget {
                if !b.end_of_stream {
                    tracing::debug!(route = %active.route.name, "full-duplex body over the hold limit: answering the headers now");
                }
                return release(active, None);
            }
            Handled::Silent
        }
        Phase::RequestTrailers(_) => {
            let trailers = answer(outcome, plan);
            release(active, Some(trailers))
        }
        _ => {
            // Anything else means the request side is over: answer in order.
            let this = answer(outcome, plan);
            release(active, Some(this))
        }
    }
}

fn release(active: &mut Active, last: Option<Outbound>) -> Handled {
    let Some(held) = active.held.take() else {
        return last.map_or(Handled::Silent, |r| Handled::Reply(Box::new(r)));
    };
    active.flows.released_request_headers();
    let mut out = Vec::with_capacity(held.bodies.len() + 2);
    out.push(Outbound::Continue {
        kind: PhaseKind::RequestHeaders,
        mutations: held.mutations,
        body: None,
        mode_override: held.mode_override,
    });
    out.extend(held.bodies);
    out.extend(last);
    Handled::Replies(out)
}

/// Standard fields for a stream that did not start with request headers.
fn fill_from_attributes(
    ctx: &mut crate::processor::RequestCtx,
    attributes: &serde_json::Map<String, serde_json::Value>,
) {
    let get = |k: &str| {
        attributes
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    ctx.method = get("request.method");
    ctx.path = get("request.path");
    ctx.authority = get("request.host");
    ctx.request_id = get("request.id");
}
