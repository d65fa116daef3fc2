//! Turns any [`Processor`] into a tower `Layer`: the service runs the processor's hook
//! for the phase, then (unless it answered the client) calls the rest of the chain.
//!
//! A processor that panics is isolated here: its request gets a 500 and the stream
//! ends, other requests and the process are untouched.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tower::{Layer, Service};

use super::service::{PhaseFuture, PhaseOutcome, PhaseRequest, PhaseService};
use crate::phase::{Flow, ImmediateResponse, Mutations, Phase};
use crate::processor::{PhaseNeeds, Processor};

/// Wraps the rest of a chain with one processor at chain position `index`.
pub struct ProcessorLayer<P> {
    processor: Arc<P>,
    index: usize,
}

impl<P: Processor> ProcessorLayer<P> {
    /// A layer for `processor`, which sits at `index` in its chain (the index keys its
    /// per-request state and its bit in `x-ext-procs-applied`).
    pub fn new(processor: Arc<P>, index: usize) -> Self {
        Self { processor, index }
    }
}

impl<P> Clone for ProcessorLayer<P> {
    fn clone(&self) -> Self {
        Self {
            processor: self.processor.clone(),
            index: self.index,
        }
    }
}

impl<P: Processor> Layer<PhaseService> for ProcessorLayer<P> {
    type Service = ProcessorService<P>;

    fn layer(&self, inner: PhaseService) -> Self::Service {
        ProcessorService {
            processor: self.processor.clone(),
            needs: self.processor.needs(),
            index: self.index,
            inner,
        }
    }
}

/// The service a [`ProcessorLayer`] produces.
pub struct ProcessorService<P> {
    processor: Arc<P>,
    needs: PhaseNeeds,
    index: usize,
    inner: PhaseService,
}

impl<P> Clone for ProcessorService<P> {
    fn clone(&self) -> Self {
        Self {
            processor: self.processor.clone(),
            needs: self.needs,
            index: self.index,
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
        if !self.needs.wants(req.phase.kind()) {
            let mut req = req;
            if let Phase::RequestHeaders(_) = req.phase {
                // Its needs cannot depend on headers it does not read.
                req.ctx.need(self.needs);
            }
            return self.inner.run(req);
        }
        let processor = self.processor.clone();
        let inner = self.inner.clone();
        let index = self.index;
        Box::pin(async move {
            let mut req = req;
            let flow = run_hook(&*processor, index, &mut req).await;
            match flow {
                Flow::Continue => inner.run(req).await,
                respond => Ok(req.finish(respond)),
            }
        })
    }
}

async fn run_hook<P: Processor>(processor: &P, index: usize, req: &mut PhaseRequest) -> Flow {
    req.ctx.mark_ran(index);
    let mut state = req.ctx.take_state::<P::State>(index);
    // The processor writes its own changes; they are then applied to the event and
    // merged, so the next processor sees the message as the next Envoy filter would.
    let mut delta = Mutations::new();
    let mutations = &mut delta;
    let PhaseRequest { phase, ctx, .. } = req;
    if let Phase::RequestHeaders(h) = &*phase {
        ctx.need(processor.needs_for(h));
    }
    let hook = async {
        match phase {
            Phase::RequestHeaders(h) => {
                processor
                    .on_request_headers(ctx, &mut state, h, mutations)
                    .await
            }
            Phase::RequestBody(b) => {
                processor
                    .on_request_body(ctx, &mut state, b, mutations)
                    .await
            }
            Phase::RequestTrailers(t) => {
                processor
                    .on_request_trailers(ctx, &mut state, t, mutations)
                    .await
            }
            Phase::ResponseHeaders(h) => {
                processor
                    .on_response_headers(ctx, &mut state, h, mutations)
                    .await
            }
            Phase::ResponseBody(b) => {
                processor
                    .on_response_body(ctx, &mut state, b, mutations)
                    .await
            }
            Phase::ResponseTrailers(t) => {
                processor
                    .on_response_trailers(ctx, &mut state, t, mutations)
                    .await
            }
        }
    };
    let flow = match AssertUnwindSafe(hook).catch_unwind().await {
        Ok(flow) => flow,
        Err(_) => {
            let name = processor.name().to_string();
            tracing::error!(processor = %name, "processor panicked; answering 500");
            return Flow::Respond(ImmediateResponse::json_error(
                500,
                &format!("processor {name} failed"),
            ));
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
