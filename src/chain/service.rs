//! The request and response types of a chain, and the type-erased service that lets a
//! chain of any length (decided by config at run time) be one tower stack.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use std::future::Ready;
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

/// The future of a phase service: ready at once when no processor on the way does
/// anything for the phase (the common case for most layers in most phases), boxed only
/// where a hook really runs. Saves an allocation per layer per phase against boxing
/// every layer's future.
pub type PhaseFuture = Either<
    Ready<Result<PhaseOutcome, Infallible>>,
    Pin<Box<dyn Future<Output = Result<PhaseOutcome, Infallible>> + Send>>,
>;

/// A phase that is decided already, without a future to allocate.
pub fn ready_phase(outcome: PhaseOutcome) -> PhaseFuture {
    Either::Left(std::future::ready(Ok(outcome)))
}

/// A phase that has work to await.
pub fn boxed_phase(
    future: impl Future<Output = Result<PhaseOutcome, Infallible>> + Send + 'static,
) -> PhaseFuture {
    Either::Right(Box::pin(future))
}

/// A service of the chain's own layers: always ready, and already answering with a
/// [`PhaseFuture`], so it is called in place (no clone of the service, no `oneshot`
/// state machine and no second box around its future).
pub(crate) trait PhaseCall: Send + Sync + 'static {
    /// Runs one phase.
    fn call_phase(&self, req: PhaseRequest) -> PhaseFuture;
}

/// Any tower service, driven the tower way: cloned into a `oneshot` that waits for
/// readiness, and boxed.
struct Erased<S>(S);

impl<S> PhaseCall for Erased<S>
where
    S: Service<PhaseRequest, Response = PhaseOutcome, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn call_phase(&self, req: PhaseRequest) -> PhaseFuture {
        let svc = self.0.clone();
        boxed_phase(svc.oneshot(req))
    }
}

/// The end of every chain.
struct Terminal;

impl PhaseCall for Terminal {
    fn call_phase(&self, req: PhaseRequest) -> PhaseFuture {
        ready_phase(req.finish(Flow::Continue))
    }
}

/// Any tower service over phases, erased so layers can be stacked in a loop.
/// Cloning is an `Arc` clone, so a layer can hand its inner service to each call's
/// future without allocating a new stack.
#[derive(Clone)]
pub struct PhaseService(Arc<dyn PhaseCall>);

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

    /// Erases one of the chain's own layers, which is called in place.
    pub(crate) fn direct(service: impl PhaseCall) -> Self {
        Self(Arc::new(service))
    }

    /// The innermost service: the end of the chain, where the phase continues with
    /// whatever the processors wrote.
    pub fn terminal() -> Self {
        Self::direct(Terminal)
    }

    /// Runs one phase through the stack.
    pub fn run(&self, req: PhaseRequest) -> PhaseFuture {
        self.0.call_phase(req)
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
        self.0.call_phase(req)
    }
}
