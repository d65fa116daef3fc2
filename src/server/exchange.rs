//! The per-stream state machine: one `Exchange` per HTTP request, fed Envoy's messages
//! in order, answering each with exactly one response of the matching kind.
//!
//! It knows nothing of tonic: the gRPC service feeds it decoded messages, and the
//! in-process test driver feeds it the same way.

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use crate::chain::PhaseRequest;
use crate::metrics::StreamOutcome;
use crate::phase::{Flow, Phase};
use crate::proto::ext_proc::{ProcessingRequest, ProcessingResponse};
use crate::router::{Route, RouteInput, Router};
use crate::wire::{self, BodyModes, Reply};

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

/// What the gateway has seen of one direction (request or response).
#[derive(Debug, Default, Clone, Copy)]
struct Direction {
    headers: bool,
    body: bool,
    /// end_of_stream seen (on headers or body), or trailers: nothing more may follow.
    ended: bool,
    trailers: bool,
}

/// A stream that has received its first message.
struct Active {
    route: Arc<Route>,
    /// Whether the gateway asked Envoy for any response phase.
    asked_response: bool,
    started: Instant,
    span: tracing::Span,
    ctx: Option<Box<crate::processor::RequestCtx>>,
    modes: BodyModes,
    request: Direction,
    response: Direction,
}

/// What happened to one message.
#[derive(Debug)]
pub enum Handled {
    /// Send this response.
    Reply(Box<ProcessingResponse>),
    /// Send nothing (observability mode, or a duplicated chunk after end of stream).
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
        }
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
        let Some(active) = &self.active else {
            return;
        };
        self.ended = true;
        // Envoy often resets a stream instead of half-closing it once it has what it
        // needs: that is a completed exchange if the response was already processed
        // (or nothing of the response was asked for and the request was through).
        let outcome = match outcome {
            StreamOutcome::Cancelled
                if active.response.headers
                    || active.response.ended
                    || (!active.asked_response && active.request.ended) =>
            {
                StreamOutcome::Completed
            }
            other => other,
        };
        if let Some(m) = &active.route.metrics {
            m.stream_ended(outcome, active.started.elapsed());
        }
        active.span.record("outcome", outcome.as_str());
    }

    /// Handles one message from Envoy.
    pub async fn handle(
        &mut self,
        mut message: ProcessingRequest,
    ) -> Result<Handled, ExchangeError> {
        // The clock is read only when the route records metrics.
        let received = self
            .active
            .as_ref()
            .is_none_or(|a| a.route.metrics.is_some())
            .then(Instant::now);
        let observability = message.observability_mode;
        let phase = wire::decode(&mut message)
            .map_err(|e| ExchangeError::InvalidArgument(e.to_string()))?;
        if self.active.is_none() {
            self.start(&message, &phase);
        }
        let Some(active) = self.active.as_mut() else {
            return Err(ExchangeError::InvalidArgument("stream not started".into()));
        };
        if !check_order(active, &phase)? {
            tracing::debug!(route = %active.route.name, "ignoring a body chunk after end of stream");
            return Ok(Handled::Silent);
        }
        if self.stopped {
            // Observability mode after a processor answered: the chain is over.
            return Ok(Handled::Silent);
        }
        let Some(mut ctx) = active.ctx.take() else {
            return Err(ExchangeError::InvalidArgument(
                "request context lost".into(),
            ));
        };
        if let Phase::RequestHeaders(h) = &phase {
            ctx.fill_from_request_headers(h);
        }
        let kind = phase.kind();
        let phase_span = tracing::debug_span!(
            parent: &active.span,
            "ext_proc.phase",
            otel.name = %format_args!("phase {kind}"),
            phase = kind.as_str(),
        );
        let outcome = active
            .route
            .chain
            .run(PhaseRequest::new(phase, ctx))
            .instrument(phase_span)
            .await;
        let mut reply = Reply {
            mode_override: None,
            modes: active.modes,
        };
        if let Phase::RequestHeaders(_) = &outcome.phase {
            let needs = outcome.ctx.needs();
            active.asked_response = needs.response_headers
                || needs.response_trailers
                || needs.response_body != crate::processor::BodyNeed::None;
            let mode = wire::mode_override(needs, active.modes);
            active.modes = BodyModes {
                request: mode.request_body_mode,
                response: mode.response_body_mode,
            };
            reply.mode_override = Some(mode);
        }
        let response = wire::encode(&outcome, &reply);
        let responded = matches!(outcome.flow, Flow::Respond(_));
        if let (Some(m), Some(received)) = (&active.route.metrics, received) {
            m.message(kind, received.elapsed());
        }
        let mut ctx = outcome.ctx;
        if let Phase::RequestHeaders(h) = outcome.phase {
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
        if observability {
            return Ok(Handled::Silent);
        }
        Ok(Handled::Reply(Box::new(response)))
    }

    fn start(&mut self, message: &ProcessingRequest, phase: &Phase) {
        let attributes = wire::attributes(message);
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
        if let Some(m) = &route.metrics {
            m.stream_started();
        }
        let mut ctx = Box::new(route.chain.new_ctx(route.name.clone()));
        fill_from_attributes(&mut ctx, &attributes);
        ctx.attributes = attributes;
        ctx.grpc_metadata = std::mem::take(&mut self.grpc_metadata);
        let modes = message
            .protocol_config
            .as_ref()
            .map(|p| BodyModes {
                request: p.request_body_mode,
                response: p.response_body_mode,
            })
            .unwrap_or_default();
        self.active = Some(Active {
            route,
            asked_response: true,
            started: Instant::now(),
            span,
            ctx: Some(ctx),
            modes,
            request: Direction::default(),
            response: Direction::default(),
        });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.end(StreamOutcome::Cancelled);
    }
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

/// Checks per-direction order: headers, then body chunks, then trailers. Returns
/// `Ok(false)` for a full-duplex chunk after end of stream, which Envoy is known to
/// duplicate on large bodies and which must be ignored, not answered.
fn check_order(active: &mut Active, phase: &Phase) -> Result<bool, ExchangeError> {
    let kind = phase.kind();
    let request = kind.is_request();
    let duplex = active.modes.duplex(request);
    let dir = if request {
        &mut active.request
    } else {
        &mut active.response
    };
    let side = if request { "request" } else { "response" };
    match phase {
        Phase::RequestHeaders(h) | Phase::ResponseHeaders(h) => {
            if dir.headers || dir.body || dir.trailers {
                return Err(ExchangeError::OutOfOrder(format!(
                    "{side} headers after {side} headers, body or trailers"
                )));
            }
            dir.headers = true;
            dir.ended = h.end_of_stream;
        }
        Phase::RequestBody(b) | Phase::ResponseBody(b) => {
            if dir.trailers {
                return Err(ExchangeError::OutOfOrder(format!(
                    "{side} body after {side} trailers"
                )));
            }
            if dir.ended {
                if duplex {
                    return Ok(false);
                }
                return Err(ExchangeError::OutOfOrder(format!(
                    "{side} body after the {side}'s end_of_stream"
                )));
            }
            dir.body = true;
            dir.ended = b.end_of_stream;
        }
        Phase::RequestTrailers(_) | Phase::ResponseTrailers(_) => {
            if dir.trailers {
                return Err(ExchangeError::OutOfOrder(format!(
                    "{side} trailers arrived twice"
                )));
            }
            if dir.ended && !duplex {
                return Err(ExchangeError::OutOfOrder(format!(
                    "{side} trailers after the {side}'s end_of_stream"
                )));
            }
            dir.trailers = true;
            dir.ended = true;
        }
    }
    Ok(true)
}
