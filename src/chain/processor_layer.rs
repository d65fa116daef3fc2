//! Turns any [`Processor`] into a tower `Layer`: the service runs the processor's hook
//! for the phase, then (unless it answered the client) calls the rest of the chain.
//!
//! Cross-cutting concerns of one processor live here too, resolved when the chain is
//! built: its metrics handles, its time limit, its tracing span, its failure policy
//! (`on_error`) and panic isolation (a processor that panics fails like one that
//! returns an error; other requests and the process are untouched).

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tower::{Layer, Service};
use tracing::Instrument;

use super::service::{
    boxed_phase, ready_phase, PhaseCall, PhaseFuture, PhaseOutcome, PhaseRequest, PhaseService,
};
use crate::condition::Condition;
use crate::metrics::{Failure, ProcessorMetrics, Skipped};
use crate::phase::{Flow, ImmediateResponse, Mutations, Phase, PhaseKind};
use crate::processor::{HookResult, OnError, PhaseNeeds, Processor, ProcessorError};

/// Wraps the rest of a chain with one processor at chain position `index`.
pub struct ProcessorLayer<P> {
    processor: Arc<P>,
    name: Arc<str>,
    index: usize,
    metrics: Option<ProcessorMetrics>,
    timeout: Option<Duration>,
    on_error: OnError,
    when: Option<Condition>,
}

impl<P: Processor> ProcessorLayer<P> {
    /// A layer for `processor`, which sits at `index` in its chain (the index keys its
    /// per-request state and its place in `x-ext-procs-applied`).
    pub fn new(processor: Arc<P>, index: usize) -> Self {
        Self {
            name: Arc::from(processor.name()),
            processor,
            index,
            metrics: None,
            timeout: None,
            on_error: OnError::default(),
            when: None,
        }
    }

    /// The name in logs, spans and the reason of a failure response (a processor
    /// built from config goes by its registered name).
    pub fn with_name(mut self, name: Arc<str>) -> Self {
        self.name = name;
        self
    }

    /// Records hook latency, immediate responses and failures into these handles.
    pub fn with_metrics(mut self, metrics: ProcessorMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Bounds each hook; one that runs longer fails with kind `timeout` (answered 504
    /// under `fail_closed`: Envoy's own `message_timeout` would otherwise fail the
    /// request less clearly).
    pub fn with_timeout(mut self, limit: Option<Duration>) -> Self {
        self.timeout = limit;
        self
    }

    /// What a failed hook does to the request.
    pub fn with_on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// Runs the processor only for requests `when` holds for.
    pub fn with_when(mut self, when: Option<Condition>) -> Self {
        self.when = when;
        self
    }
}

impl<P> Clone for ProcessorLayer<P> {
    fn clone(&self) -> Self {
        Self {
            processor: self.processor.clone(),
            name: self.name.clone(),
            index: self.index,
            metrics: self.metrics.clone(),
            timeout: self.timeout,
            on_error: self.on_error,
            when: self.when.clone(),
        }
    }
}

impl<P: Processor> Layer<PhaseService> for ProcessorLayer<P> {
    type Service = ProcessorService<P>;

    fn layer(&self, inner: PhaseService) -> Self::Service {
        ProcessorService {
            shared: Arc::new(Shared {
                needs: self.processor.needs(),
                processor: self.processor.clone(),
                name: self.name.clone(),
                index: self.index,
                metrics: self.metrics.clone(),
                timeout: self.timeout,
                on_error: self.on_error,
                when: self.when.clone(),
            }),
            inner,
        }
    }
}

struct Shared<P> {
    processor: Arc<P>,
    name: Arc<str>,
    needs: PhaseNeeds,
    index: usize,
    metrics: Option<ProcessorMetrics>,
    timeout: Option<Duration>,
    on_error: OnError,
    when: Option<Condition>,
}

/// The service a [`ProcessorLayer`] produces.
pub struct ProcessorService<P> {
    shared: Arc<Shared<P>>,
    inner: PhaseService,
}

impl<P> Clone for ProcessorService<P> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<P: Processor> Service<PhaseRequest> for ProcessorService<P> {
    type Response = PhaseOutcome;
    type Error = Infallible;
    type Future = PhaseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: PhaseRequest) -> Self::Future {
        self.call_phase(req)
    }
}

impl<P: Processor> PhaseCall for ProcessorService<P> {
    fn call_phase(&self, mut req: PhaseRequest) -> PhaseFuture {
        let shared = &self.shared;
        if req.ctx.is_skipped(shared.index) {
            return self.inner.run(req);
        }
        if shared.when.is_some() && req.ctx.first_look(shared.index) {
            match shared.decide(&mut req) {
                Decided::Run => {}
                Decided::Skip => return self.inner.run(req),
                Decided::Respond(flow) => return ready_phase(req.finish(flow)),
            }
        }
        if !shared.needs.wants(req.phase.kind()) {
            if let Phase::RequestHeaders(_) = req.phase {
                // Its needs cannot depend on headers it does not read.
                req.ctx.need(shared.needs);
            }
            return self.inner.run(req);
        }
        let shared = shared.clone();
        let inner = self.inner.clone();
        boxed_phase(async move {
            let mut req = req;
            let flow = shared.run(&mut req).await;
            match flow {
                Flow::Continue => inner.run(req).await,
                respond => Ok(req.finish(respond)),
            }
        })
    }
}

/// Why a hook did not give a [`Flow`].
enum Failed {
    Error(ProcessorError),
    Panic,
    Timeout,
    Condition(String),
}

/// What the processor's `when:` decided for a request.
enum Decided {
    Run,
    Skip,
    Respond(Flow),
}

impl<P: Processor> Shared<P> {
    /// Evaluates `when:` on the first phase the processor sees (the request headers,
    /// as this processor sees them, unless Envoy skipped them). False leaves it out of
    /// the request before it adds its needs, so Envoy is not asked for its phases.
    fn decide(&self, req: &mut PhaseRequest) -> Decided {
        let Some(when) = &self.when else {
            return Decided::Run;
        };
        let headers = match &req.phase {
            Phase::RequestHeaders(h) => &h.headers,
            _ => req.ctx.request_headers(),
        };
        match when.evaluate(&req.ctx, headers) {
            Ok(true) => Decided::Run,
            Ok(false) => {
                req.ctx.skip(self.index);
                if let Some(m) = &self.metrics {
                    m.skipped(Skipped::WhenFalse);
                }
                Decided::Skip
            }
            Err(e) => {
                let span = self.span(req.phase.kind());
                match self.fail(req, Failed::Condition(e.to_string()), &span) {
                    Flow::Continue => Decided::Skip,
                    Flow::Respond(r) => {
                        span.record("outcome", format_args!("respond {}", r.status));
                        if let Some(m) = &self.metrics {
                            m.responded(r.status);
                        }
                        Decided::Respond(Flow::Respond(r))
                    }
                }
            }
        }
    }

    /// The processor's span for one phase; `outcome` and `error` are recorded later.
    fn span(&self, kind: PhaseKind) -> tracing::Span {
        // Inside a message's span only: a message with none (its stream was not
        // sampled) must not start a trace of each processor.
        if !tracing::enabled!(target: crate::telemetry::PROCESSOR_SPANS, tracing::Level::DEBUG)
            || tracing::Span::current().is_none()
        {
            return tracing::Span::none();
        }
        tracing::debug_span!(
            target: crate::telemetry::PROCESSOR_SPANS,
            "ext_proc.processor",
            otel.name = %format_args!("processor {}", self.name),
            processor = &*self.name,
            phase = kind.as_str(),
            outcome = tracing::field::Empty,
            error = tracing::field::Empty,
        )
    }

    /// Runs the hook with its span, time limit, panic guard, failure policy and metrics.
    async fn run(&self, req: &mut PhaseRequest) -> Flow {
        let kind = req.phase.kind();
        let span = self.span(kind);
        // The clock is read only when someone records the time.
        let started = self.metrics.as_ref().map(|_| Instant::now());
        let guarded = AssertUnwindSafe(run_hook(self, req)).catch_unwind();
        let result = match self.timeout {
            Some(limit) => tokio::time::timeout(limit, guarded.instrument(span.clone()))
                .await
                .ok(),
            None => Some(guarded.instrument(span.clone()).await),
        };
        let result = match result {
            Some(Ok(Ok(flow))) => Ok(flow),
            Some(Ok(Err(e))) => Err(Failed::Error(e)),
            Some(Err(_panic)) => Err(Failed::Panic),
            None => Err(Failed::Timeout),
        };
        let flow = match result {
            Ok(flow) => {
                req.ctx.mark_ran(self.index);
                flow
            }
            Err(failed) => self.fail(req, failed, &span),
        };
        let withheld = req.ctx.take_withheld();
        if let Some(reason) = withheld {
            tracing::debug!(processor = %self.name, reason = reason.as_str(), "processor withheld a result");
        }
        if let (Some(m), Some(started)) = (&self.metrics, started) {
            m.hook(kind, started.elapsed());
            if let Some(reason) = withheld {
                m.withheld(reason);
            }
            if let Flow::Respond(r) = &flow {
                m.responded(r.status);
            }
        }
        match &flow {
            Flow::Continue if req.ctx.is_skipped(self.index) => span.record("outcome", "skipped"),
            Flow::Continue => span.record("outcome", "continue"),
            Flow::Respond(r) => span.record("outcome", format_args!("respond {}", r.status)),
        };
        flow
    }

    /// Applies the failure policy: answer the client (`fail_closed`) or leave the
    /// processor out of the rest of the request (`fail_open`).
    fn fail(&self, req: &mut PhaseRequest, failed: Failed, span: &tracing::Span) -> Flow {
        let name = &*self.name;
        let (kind, status, reason, message) = match &failed {
            Failed::Error(e) => {
                let reason = if e.status() == 503 {
                    format!("processor {name} unavailable")
                } else {
                    format!("processor {name} failed")
                };
                (Failure::Error, e.status(), reason, e.message().to_string())
            }
            Failed::Panic => (
                Failure::Panic,
                500,
                format!("processor {name} failed"),
                "panicked".to_string(),
            ),
            Failed::Timeout => (
                Failure::Timeout,
                504,
                format!("processor {name} timed out"),
                "timed out".to_string(),
            ),
            Failed::Condition(message) => (
                Failure::Condition,
                500,
                format!("condition of processor {name} failed"),
                message.clone(),
            ),
        };
        span.record("error", message.as_str());
        if let Some(m) = &self.metrics {
            m.failed(kind);
        }
        match self.on_error {
            OnError::FailClosed => {
                tracing::error!(processor = %name, kind = kind.as_str(), error = %message, status, "processor failed; answering the client (on_error: fail_closed)");
                req.ctx.mark_ran(self.index);
                Flow::Respond(ImmediateResponse::json_error(status, &reason))
            }
            OnError::FailOpen => {
                tracing::warn!(processor = %name, kind = kind.as_str(), error = %message, "processor failed; skipped for the rest of the request (on_error: fail_open)");
                req.ctx.skip(self.index);
                if let Some(m) = &self.metrics {
                    m.skipped(Skipped::FailedOpen);
                }
                Flow::Continue
            }
        }
    }
}

/// Runs the processor's hook for the phase, then applies and merges its changes. Its
/// changes and its narrowed needs count only when the hook succeeds.
async fn run_hook<P: Processor>(shared: &Shared<P>, req: &mut PhaseRequest) -> HookResult {
    let processor = &*shared.processor;
    let index = shared.index;
    let mut state = req.ctx.take_state(index, || processor.new_state())?;
    // The processor writes its own changes; they are then applied to the event and
    // merged, so the next processor sees the message as the next Envoy filter would.
    let mut delta = Mutations::new();
    let out = &mut delta;
    let PhaseRequest { phase, ctx, .. } = req;
    // Decided from the headers as this processor sees them (before its own changes).
    let narrowed = match &*phase {
        Phase::RequestHeaders(h) => Some(processor.needs_for(h).intersect(shared.needs)),
        _ => None,
    };
    let result = match phase {
        Phase::RequestHeaders(h) => processor.on_request_headers(ctx, &mut state, h, out).await,
        Phase::RequestBody(b) => processor.on_request_body(ctx, &mut state, b, out).await,
        Phase::RequestTrailers(t) => processor.on_request_trailers(ctx, &mut state, t, out).await,
        Phase::ResponseHeaders(h) => processor.on_response_headers(ctx, &mut state, h, out).await,
        Phase::ResponseBody(b) => processor.on_response_body(ctx, &mut state, b, out).await,
        Phase::ResponseTrailers(t) => {
            processor
                .on_response_trailers(ctx, &mut state, t, out)
                .await
        }
    };
    req.ctx.put_state(index, state);
    let flow = match result {
        Ok(flow) => flow,
        // A phase it declared but did not write a hook for.
        Err(e) if e.is_not_overridden() => Flow::Continue,
        Err(e) => return Err(e),
    };
    if let Some(needs) = narrowed {
        req.ctx.need(needs);
    }
    if flow == Flow::Continue && !delta.is_empty() {
        delta.apply_to(&mut req.phase);
        if let Phase::RequestBody(_) = req.phase {
            // Header changes made while the body is read apply to the held headers.
            delta.apply_to_headers(req.ctx.request_headers_mut());
        }
        req.mutations.merge(delta);
    }
    Ok(flow)
}
