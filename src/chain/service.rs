//! The request and response types of a chain, and the type-erased service that lets a
//! chain of any length (decided by config at run time) be one tower stack.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use crate::phase::{Flow, Mutations, Phase};
use crate::processor::RequestCtx;

/// One phase on its way through the chain: the event, the request's context, and the
/// changes processors have made so far in this phase.
#[derive(Debug)]
pub struct PhaseRequest {
    /// The event.
    pub phase: Phase,
    /// The request's context, moved in and handed back in [`PhaseOutcome`] (boxed, so
    /// each layer moves a pointer rather than the whole context).
    pub ctx: Box<RequestCtx>,
    /// Changes accumulated in chain order.
    pub mutations: Mutations,
}

impl PhaseRequest {
    /// A phase with no changes yet.
    pub fn new(phase: Phase, ctx: Box<RequestCtx>) -> Self {
        Self {
            phase,
            ctx,
            mutations: Mutations::new(),
        }
    }

    /// Ends the chain here with the given decision.
    pub fn finish(self, flow: Flow) -> PhaseOutcome {
        PhaseOutcome {
            phase: self.phase,
            ctx: self.ctx,
            mutations: self.mutations,
            flow,
        }
    }
}

/// What the chain decided for one phase.
#[derive(Debug)]
pub struct PhaseOutcome {
    /// The event, handed back (a full-duplex body is re-sent from it).
    pub phase: Phase,
    /// The request's context, for the next phase.
    pub ctx: Box<RequestCtx>,
    /// Merged changes (ignored when `flow` is a response).
    pub mutations: Mutations,
    /// Continue, or answer the client now.
    pub flow: Flow,
}

/// A boxed future of a phase service.
pub type PhaseFuture = Pin<Box<dyn Future<Output = Result<PhaseOutcome, Infallible>> + Send>>;

trait ErasedService: Send + Sync {
    fn call(&self, req: PhaseRequest) -> PhaseFuture;
}

struct Erased<S>(S);

impl<S> ErasedService for Erased<S>
where
    S: Service<PhaseRequest, Response = PhaseOutcome, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, req: PhaseRequest) -> PhaseFuture {
        let svc = self.0.clone();
        Box::pin(svc.oneshot(req))
    }
}

/// Any tower service over phases, erased so layers can be stacked in a loop.
/// Cloning is an `Arc` clone, so a layer can hand its inner service to each call's
/// future without allocating a new stack.
#[derive(Clone)]
pub struct PhaseService(Arc<dyn ErasedService>);

impl PhaseService {
    /// Erases a tower service.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<PhaseRequest, Response = PhaseOutcome, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self(Arc::new(Erased(service)))
    }

    /// The innermost service: the end of the chain, where the phase continues with
    /// whatever the processors wrote.
    pub fn terminal() -> Self {
        Self::new(tower::service_fn(|req: PhaseRequest| async move {
            Ok::<_, Infallible>(req.finish(Flow::Continue))
        }))
    }

    /// Runs one phase through the stack.
    pub fn run(&self, req: PhaseRequest) -> PhaseFuture {
        self.0.call(req)
    }
}

impl std::fmt::Debug for PhaseService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhaseService")
    }
}

impl Service<PhaseRequest> for PhaseService {
    type Response = PhaseOutcome;
    type Error = Infallible;
    type Future = PhaseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: PhaseRequest) -> Self::Future {
        self.0.call(req)
    }
}
