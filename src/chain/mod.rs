//! A route's chain: processors stacked as tower layers, built once per config load.
//!
//! Processor k wraps processors k+1..n, so a processor that answers the client simply
//! does not call the rest: the chain stops there. Mutations accumulate in chain order
//! in the request as it travels inwards.

mod probe;
mod processor_layer;
mod service;

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tower::Layer;

pub use processor_layer::{ProcessorLayer, ProcessorService};
pub(crate) use service::PhaseCall;
pub use service::{
    boxed_phase, ready_phase, PhaseFuture, PhaseOutcome, PhaseRequest, PhaseService,
};

use crate::condition::Condition;
use crate::metrics::Metrics;
use crate::phase::{Flow, HeadersPhase, Phase};
use crate::processor::{OnError, PhaseNeeds, Processor, RequestCtx};

/// Default name of the response header listing the processors that ran.
pub const APPLIED_HEADER: &str = "x-ext-procs-applied";

type Wrap = Box<dyn FnOnce(PhaseService) -> PhaseService + Send>;
type Narrow = Arc<dyn Fn(&HeadersPhase) -> PhaseNeeds + Send + Sync>;
/// Makes a processor's layer once the chain-wide options are known.
type MakeLayer = Box<dyn FnOnce(&ChainOptions, usize) -> Wrap + Send>;

/// Options that apply to every processor of a chain, whenever they were set.
struct ChainOptions {
    metrics: Option<(Arc<Metrics>, Arc<str>)>,
    timeout: Option<Duration>,
}

/// One step of the stack, in chain order.
enum Step {
    Processor(MakeLayer),
    Layer(Wrap),
}

/// Per-processor settings of a chain entry (the fields of a config entry besides the
/// processor's own settings).
#[derive(Debug, Clone, Default)]
pub struct ProcessorOptions {
    name: Option<Arc<str>>,
    on_error: OnError,
    when: Option<Condition>,
}

impl ProcessorOptions {
    /// The defaults: the processor's own name, `on_error: fail_closed`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names the processor in metrics, traces and `x-ext-procs-applied` instead of
    /// [`Processor::name`] (config entries use their registered name).
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// What a failed hook (or a condition that cannot be evaluated) does to the
    /// request.
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// Runs the processor only for requests `when` holds for, decided once per
    /// request at its request headers: otherwise it neither runs nor asks Envoy for
    /// its phases.
    pub fn when(mut self, when: Condition) -> Self {
        self.when = Some(when);
        self
    }
}

/// How one processor of a built chain is set up, as operators read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The name in metrics, traces and `x-ext-procs-applied`.
    pub name: Arc<str>,
    /// The source of its `when:` condition, if any.
    pub when: Option<Arc<str>>,
    /// Its failure policy.
    pub on_error: OnError,
    /// The phases it hooks (its `needs()`), what the chain asks Envoy for on its
    /// behalf.
    pub needs: PhaseNeeds,
}

/// A chain that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A hook is written for a phase the processor's `needs()` leaves out, so the
    /// gateway would never call it.
    #[error("processor `{processor}` implements the {phase} hook, but its needs() does not declare {phase}: the hook would never be called")]
    UndeclaredHook {
        /// The processor.
        processor: String,
        /// The phase (`request_body`, ...).
        phase: &'static str,
    },
}

/// Collects processors (and any other tower layers over phases) in chain order.
/// Chain-wide options ([`ChainBuilder::observe`], [`ChainBuilder::processor_timeout`])
/// apply to every processor, whatever the order of the calls.
pub struct ChainBuilder {
    steps: Vec<Step>,
    entries: Vec<EntryInfo>,
    needs: PhaseNeeds,
    narrows: Vec<Narrow>,
    applied_header: Option<String>,
    options: ChainOptions,
    problems: Vec<ChainError>,
}

impl Default for ChainBuilder {
    fn default() -> Self {
        Self {
            steps: Vec::new(),
            entries: Vec::new(),
            needs: PhaseNeeds::NONE,
            narrows: Vec::new(),
            applied_header: None,
            options: ChainOptions {
                metrics: None,
                timeout: None,
            },
            problems: Vec::new(),
        }
    }
}

impl ChainBuilder {
    /// Records metrics for every processor of the chain, labelled with `route`
    /// (handles are resolved when the chain is built, once).
    pub fn observe(mut self, metrics: &Arc<Metrics>, route: &str) -> Self {
        self.options.metrics = Some((metrics.clone(), Arc::from(route)));
        self
    }

    /// Bounds each hook of every processor of the chain.
    pub fn processor_timeout(mut self, limit: Option<Duration>) -> Self {
        self.options.timeout = limit;
        self
    }

    /// Appends a processor to the chain, under its own name, failing closed.
    pub fn processor<P: Processor>(self, processor: P) -> Self {
        self.processor_with(processor, ProcessorOptions::default())
    }

    /// Appends a processor with per-entry options (name, failure policy).
    pub fn processor_with<P: Processor>(mut self, processor: P, options: ProcessorOptions) -> Self {
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| Arc::from(processor.name()));
        for phase in probe::undeclared_hooks(&processor) {
            self.problems.push(ChainError::UndeclaredHook {
                processor: name.to_string(),
                phase: phase.as_str(),
            });
        }
        self.entries.push(EntryInfo {
            name: name.clone(),
            when: options.when.as_ref().map(|w| Arc::from(w.source())),
            on_error: options.on_error,
            needs: processor.needs(),
        });
        self.needs = self.needs.union(processor.needs());
        let processor = Arc::new(processor);
        let narrow = processor.clone();
        let declared = narrow.needs();
        self.narrows.push(Arc::new(move |h: &HeadersPhase| {
            narrow.needs_for(h).intersect(declared)
        }));
        let make: MakeLayer = Box::new(move |chain: &ChainOptions, index: usize| {
            let mut layer = ProcessorLayer::new(processor, index)
                .with_name(name.clone())
                .with_timeout(chain.timeout)
                .with_on_error(options.on_error)
                .with_when(options.when);
            if let Some((metrics, route)) = &chain.metrics {
                layer = layer.with_metrics(metrics.processor(route, &name));
            }
            Box::new(move |inner| PhaseService::direct(layer.layer(inner)))
        });
        self.steps.push(Step::Processor(make));
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
        self.steps.push(Step::Layer(Box::new(move |inner| {
            PhaseService::new(layer.layer(inner))
        })));
        self
    }

    /// Names the response header that lists the processors that ran (`None` turns it
    /// off). Default: `x-ext-procs-applied`.
    pub fn applied_header(mut self, name: Option<String>) -> Self {
        self.applied_header = name.map(|n| n.to_ascii_lowercase());
        self
    }

    /// Stacks the layers (the first added is the outermost), or says why the chain
    /// cannot serve.
    pub fn build(self) -> Result<Chain, ChainError> {
        if let Some(problem) = self.problems.into_iter().next() {
            return Err(problem);
        }
        let mut wraps = Vec::with_capacity(self.steps.len());
        let mut index = 0;
        for step in self.steps {
            wraps.push(match step {
                Step::Processor(make) => {
                    index += 1;
                    make(&self.options, index - 1)
                }
                Step::Layer(wrap) => wrap,
            });
        }
        let mut service = PhaseService::terminal();
        for wrap in wraps.into_iter().rev() {
            service = wrap(service);
        }
        let mut needs = self.needs;
        if self.applied_header.is_some() && !self.entries.is_empty() {
            needs.response_headers = true;
        }
        Ok(Chain {
            service,
            entries: self.entries.into(),
            needs,
            narrows: self.narrows.into(),
            applied_header: self.applied_header,
        })
    }
}

/// A built chain, shared by every stream on its route.
#[derive(Clone)]
pub struct Chain {
    service: PhaseService,
    entries: Arc<[EntryInfo]>,
    needs: PhaseNeeds,
    narrows: Arc<[Narrow]>,
    applied_header: Option<String>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("names", &self.names().collect::<Vec<_>>())
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
        Chain {
            service: PhaseService::terminal(),
            entries: Arc::from([]),
            needs: PhaseNeeds::NONE,
            narrows: Arc::from([]),
            applied_header: None,
        }
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

    /// Like [`Chain::wrapped`], for the gateway's own layers, which are called in place.
    pub(crate) fn wrapped_direct<L>(&self, layer: L) -> Chain
    where
        L: Layer<PhaseService>,
        L::Service: PhaseCall,
    {
        Chain {
            service: PhaseService::direct(layer.layer(self.service.clone())),
            ..self.clone()
        }
    }

    /// Each processor's entry settings (name, `when:`, `on_error:`) in chain order, for
    /// `/routes` and `check-config`.
    pub fn entries(&self) -> &[EntryInfo] {
        &self.entries
    }

    /// Processor names in chain order.
    pub fn names(&self) -> impl ExactSizeIterator<Item = &str> {
        self.entries.iter().map(|e| &*e.name)
    }

    /// The union of what the processors need: drives `mode_override`.
    pub fn needs(&self) -> PhaseNeeds {
        self.needs
    }

    /// What the chain would ask Envoy for on a request with these headers: the union
    /// of every processor's `needs_for` (as if none answered early), plus the response
    /// headers the applied-processors header needs. Lets tools see the narrower modes
    /// the gateway sends per request, not only the route's widest one. Every `when:`
    /// is taken as true here: a condition may read what only a real stream carries
    /// (Envoy's attributes, metadata), so this is the most a request can be asked for.
    pub fn needs_for(&self, request: &HeadersPhase) -> PhaseNeeds {
        let mut needs = self
            .narrows
            .iter()
            .fold(PhaseNeeds::NONE, |acc, n| acc.union(n(request)));
        if self.applied_header.is_some() && !self.entries.is_empty() {
            needs.response_headers = true;
        }
        needs
    }

    /// A fresh per-request context sized for this chain.
    pub fn new_ctx(&self, route: Arc<str>) -> RequestCtx {
        RequestCtx::new(route, self.entries.len())
    }

    /// Runs one phase, then stamps the list of processors that ran on the response.
    pub async fn run(&self, req: PhaseRequest) -> PhaseOutcome {
        let mut outcome = match self.service.run(req).await {
            Ok(outcome) => outcome,
            Err(never) => match never {},
        };
        if let Some(header) = &self.applied_header {
            if let Phase::RequestHeaders(_) = outcome.phase {
                if !self.entries.is_empty() {
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

    /// The processors that have run on this request so far, comma-separated in chain
    /// order (what `x-ext-procs-applied` carries).
    pub fn ran(&self, ctx: &RequestCtx) -> String {
        String::from_utf8_lossy(&self.ran_list(ctx)).into_owned()
    }

    fn ran_list(&self, ctx: &RequestCtx) -> Bytes {
        let mut out = BytesMut::new();
        for (i, name) in self.names().enumerate() {
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
