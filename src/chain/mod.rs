//! A route's chain: processors stacked as tower layers, built once per config load.
//!
//! Processor k wraps processors k+1..n, so a processor that answers the client simply
//! does not call the rest: the chain stops there. Mutations accumulate in chain order
//! in the request as it travels inwards.

mod processor_layer;
mod service;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tower::Layer;

pub use processor_layer::{ProcessorLayer, ProcessorService};
pub use service::{PhaseFuture, PhaseOutcome, PhaseRequest, PhaseService};

use crate::metrics::Metrics;
use crate::phase::{Flow, HeadersPhase, Phase};
use crate::processor::{PhaseNeeds, Processor, RequestCtx};

/// Default name of the response header listing the processors that ran.
pub const APPLIED_HEADER: &str = "x-ext-procs-applied";

type Wrap = Box<dyn FnOnce(PhaseService) -> PhaseService + Send>;
type Narrow = Arc<dyn Fn(&HeadersPhase) -> PhaseNeeds + Send + Sync>;

/// Collects processors (and any other tower layers over phases) in chain order.
#[derive(Default)]
pub struct ChainBuilder {
    wraps: Vec<Wrap>,
    names: Vec<Arc<str>>,
    needs: PhaseNeeds,
    narrows: Vec<Narrow>,
    applied_header: Option<String>,
    metrics: Option<(Arc<Metrics>, Arc<str>)>,
    timeout: Option<Duration>,
}

impl ChainBuilder {
    /// Records metrics for the processors added after this call, labelled with
    /// `route` (handles are resolved now, once).
    pub fn observe(mut self, metrics: &Arc<Metrics>, route: &str) -> Self {
        self.metrics = Some((metrics.clone(), Arc::from(route)));
        self
    }

    /// The metrics and route label set by [`ChainBuilder::observe`], for a processor
    /// with counters of its own beyond its hooks (a JWKS URL's fetches).
    pub fn observed(&self) -> Option<(&Arc<Metrics>, &str)> {
        self.metrics.as_ref().map(|(m, route)| (m, &**route))
    }

    /// Bounds each hook of the processors added after this call.
    pub fn processor_timeout(mut self, limit: Option<Duration>) -> Self {
        self.timeout = limit;
        self
    }

    /// Appends a processor to the chain.
    pub fn processor<P: Processor>(mut self, processor: P) -> Self {
        let index = self.names.len();
        self.names.push(Arc::from(processor.name()));
        self.needs = self.needs.union(processor.needs());
        let processor = Arc::new(processor);
        let narrow = processor.clone();
        self.narrows
            .push(Arc::new(move |h: &HeadersPhase| narrow.needs_for(h)));
        let mut layer = ProcessorLayer::new(processor, index).with_timeout(self.timeout);
        if let Some((metrics, route)) = &self.metrics {
            layer = layer.with_metrics(metrics.processor(route, &self.names[index]));
        }
        self.wraps
            .push(Box::new(move |inner| PhaseService::new(layer.layer(inner))));
        self
    }

    /// Appends a cross-cutting tower layer (metrics, tracing, timeouts): it wraps every
    /// processor added after it.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<PhaseService> + Send + 'static,
        L::Service: tower::Service<PhaseRequest, Response = PhaseOutcome, Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<PhaseRequest>>::Future: Send + 'static,
    {
        self.wraps
            .push(Box::new(move |inner| PhaseService::new(layer.layer(inner))));
        self
    }

    /// Names the response header that lists the processors that ran (`None` turns it
    /// off). Default: `x-ext-procs-applied`.
    pub fn applied_header(mut self, name: Option<String>) -> Self {
        self.applied_header = name.map(|n| n.to_ascii_lowercase());
        self
    }

    /// Stacks the layers: the first added is the outermost.
    pub fn build(self) -> Chain {
        let mut service = PhaseService::terminal();
        for wrap in self.wraps.into_iter().rev() {
            service = wrap(service);
        }
        let mut needs = self.needs;
        if self.applied_header.is_some() && !self.names.is_empty() {
            needs.response_headers = true;
        }
        Chain {
            service,
            names: self.names.into(),
            needs,
            narrows: self.narrows.into(),
            applied_header: self.applied_header,
        }
    }
}

/// A built chain, shared by every stream on its route.
#[derive(Clone)]
pub struct Chain {
    service: PhaseService,
    names: Arc<[Arc<str>]>,
    needs: PhaseNeeds,
    narrows: Arc<[Narrow]>,
    applied_header: Option<String>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("names", &self.names)
            .field("needs", &self.needs)
            .finish_non_exhaustive()
    }
}

impl Chain {
    /// Starts a chain with `x-ext-procs-applied` on.
    pub fn builder() -> ChainBuilder {
        ChainBuilder::default().applied_header(Some(APPLIED_HEADER.to_string()))
    }

    /// A chain that changes nothing and asks Envoy for nothing beyond headers.
    pub fn empty() -> Chain {
        ChainBuilder::default().build()
    }

    /// The same chain inside one more layer, outermost: it sees each phase before any
    /// processor does. Lets the router add a route-independent step (the path rewrite
    /// of `path_policy.forward_normalized`) to chains built elsewhere, without touching
    /// their processors, names or needs.
    pub fn wrapped<L>(&self, layer: L) -> Chain
    where
        L: Layer<PhaseService>,
        L::Service: tower::Service<PhaseRequest, Response = PhaseOutcome, Error = std::convert::Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as tower::Service<PhaseRequest>>::Future: Send + 'static,
    {
        Chain {
            service: PhaseService::new(layer.layer(self.service.clone())),
            ..self.clone()
        }
    }

    /// Processor names in chain order.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// The union of what the processors need: drives `mode_override`.
    pub fn needs(&self) -> PhaseNeeds {
        self.needs
    }

    /// What the chain would ask Envoy for on a request with these headers: the union
    /// of every processor's `needs_for` (as if none answered early), plus the response
    /// headers the applied-processors header needs. Lets tools see the narrower modes
    /// the gateway sends per request, not only the route's widest one.
    pub fn needs_for(&self, request: &HeadersPhase) -> PhaseNeeds {
        let mut needs = self
            .narrows
            .iter()
            .fold(PhaseNeeds::NONE, |acc, n| acc.union(n(request)));
        if self.applied_header.is_some() && !self.names.is_empty() {
            needs.response_headers = true;
        }
        needs
    }

    /// A fresh per-request context sized for this chain.
    pub fn new_ctx(&self, route: Arc<str>) -> RequestCtx {
        RequestCtx::new(route, self.names.len())
    }

    /// Runs one phase, then stamps the list of processors that ran on the response.
    pub async fn run(&self, req: PhaseRequest) -> PhaseOutcome {
        let mut outcome = match self.service.run(req).await {
            Ok(outcome) => outcome,
            Err(never) => match never {},
        };
        if let Some(header) = &self.applied_header {
            if let Phase::RequestHeaders(_) = outcome.phase {
                if !self.names.is_empty() {
                    outcome.ctx.need(PhaseNeeds {
                        response_headers: true,
                        ..PhaseNeeds::NONE
                    });
                }
            }
            self.stamp_applied(header, &mut outcome);
        }
        outcome
    }

    fn stamp_applied(&self, header: &str, outcome: &mut PhaseOutcome) {
        // Only a response carries the list: request phases build nothing.
        let answers_client = matches!(outcome.flow, Flow::Respond(_))
            || matches!(outcome.phase, Phase::ResponseHeaders(_));
        if !answers_client {
            return;
        }
        let ran = self.ran_list(&outcome.ctx);
        if ran.is_empty() {
            return;
        }
        match (&mut outcome.flow, &outcome.phase) {
            (Flow::Respond(response), _) => {
                // The name was checked when the chain was built; a refused one is
                // left out rather than failing the reply.
                let _ = response.set_header(header, ran);
            }
            (Flow::Continue, Phase::ResponseHeaders(h)) => {
                let extended = match h.headers.get(header) {
                    Some(existing) if !existing.is_empty() => {
                        let mut v = BytesMut::with_capacity(existing.len() + 1 + ran.len());
                        v.put_slice(existing);
                        v.put_u8(b',');
                        v.put_slice(&ran);
                        Some(v.freeze())
                    }
                    _ => None,
                };
                // A value already present that cannot be sent back (a control
                // character) is replaced by this gateway's list alone.
                let extended = extended.map(|v| outcome.mutations.try_set(header, v));
                if !matches!(extended, Some(Ok(()))) {
                    outcome.mutations.set(header, ran);
                }
            }
            _ => {}
        }
    }

    fn ran_list(&self, ctx: &RequestCtx) -> Bytes {
        let mut out = BytesMut::new();
        for (i, name) in self.names.iter().enumerate() {
            if ctx.has_run(i) {
                if !out.is_empty() {
                    out.put_u8(b',');
                }
                out.put_slice(name.as_bytes());
            }
        }
        out.freeze()
    }
}
