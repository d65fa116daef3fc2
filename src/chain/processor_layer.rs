//! Turns any [`Processor`] into a tower `Layer`: the service runs the processor's hook
//! for the phase, then (unless it answered the client) calls the rest of the chain.
//!
//! Cross-cutting concerns of one processor live here too, resolved when the chain is
//! built: its metrics handles, its time limit, its tracing span, and panic isolation
//! (a processor that panics gets its request a 500; other requests and the process are
//! untouched).

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tower::{Layer, Service};
use tracing::Instrument;

use super::service::{PhaseFuture, PhaseOutcome, PhaseRequest, PhaseService};
use crate::metrics::ProcessorMetrics;
use crate::phase::{Flow, ImmediateResponse, Mutations, Phase};
use crate::processor::{PhaseNeeds, Processor};

/// Wraps the rest of a chain with one processor at chain position `index`.
pub struct ProcessorLayer<P> {
    processor: Arc<P>,
    index: usize,
    metrics: Option<ProcessorMetrics>,
    timeout: Option<Duration>,
}

impl<P: Processor> ProcessorLayer<P> {
    /// A layer for `processor`, which sits at `index` in its chain (the index keys its
    /// per-request state and its place in `x-ext-procs-applied`).
    pub fn new(processor: Arc<P>, index: usize) -> Self {
        Self {
            processor,
            index,
            metrics: None,
            timeout: None,
        }
    }

    /// Records hook latency, immediate responses and failures into these handles.
    pub fn with_metrics(mut self, metrics: ProcessorMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Bounds each hook; one that runs longer answers 504 (Envoy's own
    /// `message_timeout` would otherwise fail the request less clearly).
    pub fn with_timeout(mut self, limit: Option<Duration>) -> Self {
        self.timeout = limit;
        self
    }
}

impl<P> Clone for ProcessorLayer<P> {
    fn clone(&self) -> Self {
        Self {
            processor: self.processor.clone(),
            index: self.index,
            metrics: self.metrics.clone(),
            timeout: self.timeout,
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
                index: self.index,
                metrics: self.metrics.clone(),
                timeout: self.timeout,
            }),
            inner,
        }
    }
}

struct Shared<P> {
    processor: Arc<P>,
    needs: PhaseNeeds,
    index: usize,
    metrics: Option<ProcessorMetrics>,
    timeout: Option<Duration>,
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
        if !self.shared.needs.wants(req.phase.kind()) {
            let mut req = req;
            if let Phase::RequestHeaders(_) = req.phase {
                // Its needs cannot depend on headers it does not read.
                req.ctx.need(self.shared.needs);
            }
            return self.inner.run(req);
        }
        let shared = self.shared.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut req = req;
            let flow = shared.run(&mut req).await;
            match flow {
                Flow::Continue => inner.run(req).await,
                respond => Ok(req.finish(respond)),
            }
        })
    }
}

impl<P: Processor> Shared<P> {
    /// Runs the hook with its span, time limit, panic guard and metrics.
    async fn run(&self, req: &mut PhaseRequest) -> Flow {
        let kind = req.phase.kind();
        let span = tracing::debug_span!(
            "ext_proc.processor",
            otel.name = %format_args!("processor {}", self.processor.name()),
            processor = self.processor.name(),
            phase = kind.as_str(),
            outcome = tracing::field::Empty,
        );
        // The clock is read only when someone records the time.
        let started = self.metrics.as_ref().map(|_| Instant::now());
        let guarded = AssertUnwindSafe(run_hook(&*self.processor, self.index, req)).catch_unwind();
        let result = match self.timeout {
            Some(limit) => tokio::time::timeout(limit, guarded.instrument(span.clone()))
                .await
                .map_err(|_| ()),
            None => Ok(guarded.instrument(span.clone()).await),
        };
        let name = self.processor.name();
        let flow = match result {
            Ok(Ok(flow)) => flow,
            Ok(Err(_panic)) => {
                tracing::error!(processor = %name, "processor panicked; answering 500");
                if let Some(m) = &self.metrics {
                    m.panicked();
                }
                Flow::Respond(ImmediateResponse::json_error(
                    500,
                    &format!("processor {name} failed"),
                ))
            }
            Err(()) => {
                tracing::error!(processor = %name, "processor timed out; answering 504");
                if let Some(m) = &self.metrics {
                    m.timed_out();
                }
                Flow::Respond(ImmediateResponse::json_error(
                    504,
                    &format!("processor {name} timed out"),
                ))
            }
        };
        let withheld = req.ctx.take_withheld();
        if let Some(reason) = withheld {
            tracing::debug!(processor = %name, reason = reason.as_str(), "processor withheld a result");
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
            Flow::Continue => span.record("outcome", "continue"),
            Flow::Respond(r) => span.record("outcome", format_args!("respond {}", r.status)),
        };
        flow
    }
}

/// Runs the processor's hook for the phase, then applies and merges its changes.
async fn run_hook<P: Processor>(processor: &P, index: usize, req: &mut PhaseRequest) -> Flow {
    req.ctx.mark_ran(index);
    let mut state = req.ctx.take_state::<P::State>(index);
    // The processor writes its own changes; they are then applied to the event and
    // merged, so the next processor sees the message as the next Envoy filter would.
    let mut delta = Mutations::new();
    let out = &mut delta;
    let PhaseRequest { phase, ctx, .. } = req;
    if let Phase::RequestHeaders(h) = &*phase {
        ctx.need(processor.needs_for(h));
    }
    let flow = match phase {
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
    if flow == Flow::Continue && !delta.is_empty() {
        delta.apply_to(&mut req.phase);
        if let Phase::RequestBody(_) = req.phase {
            // Header changes made while the body is read apply to the held headers.
            delta.apply_to_headers(req.ctx.request_headers_mut());
        }
        req.mutations.merge(delta);
    }
    flow
}
