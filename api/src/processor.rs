//! The one trait a processor implements, and the per-request context it shares.
//!
//! The shape follows Pingora's `ProxyHttp`: a hook per phase that defaults to
//! "continue", and a typed per-request state (`Processor::State`, made by the
//! processor itself in [`Processor::new_state`]) instead of a string-keyed map, so
//! cross-phase data is checked by the compiler. Hooks return a [`HookResult`]: an
//! error goes through the processor's failure policy ([`OnError`]) instead of being
//! turned into a response by hand.

use std::any::Any;
use std::future::{ready, Future};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::phase::{BodyPhase, Flow, Headers, HeadersPhase, Mutations, PhaseKind};

/// How much of a body a processor needs to see.
///
/// Ordered: a chain asks Envoy for the largest need among its processors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub enum BodyNeed {
    /// The body is not needed; Envoy does not send it.
    #[default]
    None,
    /// Chunks as they arrive (Envoy's STREAMED mode); headers are already upstream.
    Streamed,
    /// The whole body in one message, headers held until it is answered, so header
    /// changes made while reading the body still reach the upstream (BUFFERED mode).
    Buffered,
}

/// Which phases a processor (or a whole chain) wants Envoy to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct PhaseNeeds {
    /// Request headers.
    pub request_headers: bool,
    /// Request body.
    pub request_body: BodyNeed,
    /// Request trailers.
    pub request_trailers: bool,
    /// Response headers.
    pub response_headers: bool,
    /// Response body.
    pub response_body: BodyNeed,
    /// Response trailers.
    pub response_trailers: bool,
}

impl PhaseNeeds {
    /// Nothing at all.
    pub const NONE: PhaseNeeds = PhaseNeeds {
        request_headers: false,
        request_body: BodyNeed::None,
        request_trailers: false,
        response_headers: false,
        response_body: BodyNeed::None,
        response_trailers: false,
    };

    /// Request headers only: a processor that decides before the upstream is called.
    pub const REQUEST_HEADERS: PhaseNeeds = PhaseNeeds {
        request_headers: true,
        ..PhaseNeeds::NONE
    };

    /// Request and response headers only: the common case.
    pub const HEADERS: PhaseNeeds = PhaseNeeds {
        request_headers: true,
        response_headers: true,
        ..PhaseNeeds::NONE
    };

    /// What both allow: a request's narrowed needs never exceed what was declared.
    pub fn intersect(self, other: PhaseNeeds) -> PhaseNeeds {
        PhaseNeeds {
            request_headers: self.request_headers && other.request_headers,
            request_body: self.request_body.min(other.request_body),
            request_trailers: self.request_trailers && other.request_trailers,
            response_headers: self.response_headers && other.response_headers,
            response_body: self.response_body.min(other.response_body),
            response_trailers: self.response_trailers && other.response_trailers,
        }
    }

    /// What two processors together need.
    pub fn union(self, other: PhaseNeeds) -> PhaseNeeds {
        PhaseNeeds {
            request_headers: self.request_headers || other.request_headers,
            request_body: self.request_body.max(other.request_body),
            request_trailers: self.request_trailers || other.request_trailers,
            response_headers: self.response_headers || other.response_headers,
            response_body: self.response_body.max(other.response_body),
            response_trailers: self.response_trailers || other.response_trailers,
        }
    }

    /// Whether a phase of this kind should reach the processor.
    pub fn wants(&self, kind: PhaseKind) -> bool {
        match kind {
            PhaseKind::RequestHeaders => self.request_headers,
            PhaseKind::RequestBody => self.request_body != BodyNeed::None,
            PhaseKind::RequestTrailers => self.request_trailers,
            PhaseKind::ResponseHeaders => self.response_headers,
            PhaseKind::ResponseBody => self.response_body != BodyNeed::None,
            PhaseKind::ResponseTrailers => self.response_trailers,
        }
    }
}

/// What has reached the gateway of one body (request or response), as far as it knows
/// now. Envoy's body mode decides what is sent, and the gateway never assumes its
/// `mode_override` was honoured: this is what it saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum BodyReceipt {
    /// The headers have not arrived yet.
    #[default]
    Unknown,
    /// The headers said no body follows.
    NoBody,
    /// Body messages may still arrive.
    Pending,
    /// The whole body reached the gateway (end of stream, or trailers after it).
    Complete,
    /// Only the first bytes reached the gateway (BUFFERED_PARTIAL over Envoy's buffer
    /// limit, or the other direction moved on before the body ended).
    Partial,
    /// There is a body but none of it was sent (body mode NONE, or an override Envoy
    /// did not honour).
    NotSent,
}

impl BodyReceipt {
    /// True when a result over the body covers all of it (there was none, or all of
    /// it arrived).
    pub fn is_whole(self) -> bool {
        matches!(self, BodyReceipt::NoBody | BodyReceipt::Complete)
    }

    /// Why a result over this body cannot be given, when it cannot.
    pub fn withheld_reason(self) -> Option<Withheld> {
        match self {
            BodyReceipt::NoBody | BodyReceipt::Complete => None,
            BodyReceipt::Partial => Some(Withheld::BodyPartial),
            BodyReceipt::NotSent => Some(Withheld::BodyNotSent),
            BodyReceipt::Unknown | BodyReceipt::Pending => Some(Withheld::BodyPending),
        }
    }
}

/// Why a processor left out a result rather than give a wrong one: counted per route
/// and processor (`extproc_results_withheld_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Withheld {
    /// Envoy did not send the body (body mode NONE, or the override was ignored).
    BodyNotSent,
    /// Only a prefix of the body arrived (BUFFERED_PARTIAL over the buffer limit).
    BodyPartial,
    /// The body had not ended when the result was due.
    BodyPending,
    /// The body exceeded the processor's own size limit.
    BodyTooLarge,
}

impl Withheld {
    /// Every reason, for zero-initialised metrics.
    pub const ALL: [Withheld; 4] = [
        Withheld::BodyNotSent,
        Withheld::BodyPartial,
        Withheld::BodyPending,
        Withheld::BodyTooLarge,
    ];

    /// Stable snake_case name (a metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Withheld::BodyNotSent => "body_not_sent",
            Withheld::BodyPartial => "body_partial",
            Withheld::BodyPending => "body_pending",
            Withheld::BodyTooLarge => "body_too_large",
        }
    }
}

/// Sends an `override_message_timeout` to Envoy on the current stream, out of band
/// (while the processor still works); false when it could not be sent.
pub type TimeoutExtender = std::sync::Arc<dyn Fn(std::time::Duration) -> bool + Send + Sync>;

/// Everything the gateway knows about one HTTP request, lent to every phase.
///
/// Standard fields are filled from the request headers when Envoy sends them (a stream
/// whose request headers are skipped leaves them empty). Each processor of the chain
/// also keeps its own typed state here, private to it.
// Without the runtime's mutators some fields are only ever written.
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
pub struct RequestCtx {
    route: Arc<str>,
    /// `:method` of the request.
    pub method: String,
    /// `:path` of the request (with query string).
    pub path: String,
    /// `:authority` of the request.
    pub authority: String,
    /// `x-request-id` of the request (Envoy generates one by default).
    pub request_id: String,
    /// When the gateway received the first message of the stream.
    pub started: Instant,
    /// The same moment on the wall clock, for timestamps sent to the upstream.
    pub started_at: SystemTime,
    /// Request attributes Envoy sent (`request_attributes` of the filter), flattened
    /// to `name -> JSON value`, e.g. `xds.route_name`.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// gRPC initial metadata of the stream (`grpc_initial_metadata` of the filter or of
    /// ExtProcPerRoute), ASCII entries only.
    pub grpc_metadata: Vec<(String, String)>,
    /// Whether the request headers said no body follows.
    pub request_end_of_stream: bool,
    /// Dynamic metadata Envoy forwarded (`metadata_options.forwarding_namespaces`):
    /// namespace -> JSON object.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    request_body: BodyReceipt,
    response_body: BodyReceipt,
    withheld: Option<Withheld>,
    timeout_extender: Option<TimeoutExtender>,
    budget: Option<crate::budget::StreamBudget>,
    request_headers: Headers,
    needs: PhaseNeeds,
    slots: Vec<Slot>,
}

impl RequestCtx {
    /// A fresh context for a stream on `route` whose chain has `processors` entries.
    pub fn new(route: Arc<str>, processors: usize) -> Self {
        let mut slots = Vec::new();
        slots.resize_with(processors, Slot::default);
        Self {
            route,
            method: String::new(),
            path: String::new(),
            authority: String::new(),
            request_id: String::new(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            attributes: serde_json::Map::new(),
            grpc_metadata: Vec::new(),
            request_end_of_stream: false,
            metadata: serde_json::Map::new(),
            request_body: BodyReceipt::Unknown,
            response_body: BodyReceipt::Unknown,
            withheld: None,
            timeout_extender: None,
            budget: None,
            request_headers: Headers::new(),
            needs: PhaseNeeds::NONE,
            slots,
        }
    }

    /// The name of the route serving this request.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Fills the standard fields from request headers.
    pub fn fill_from_request_headers(&mut self, headers: &HeadersPhase) {
        let get = |name: &str| headers.headers.get_str(name).unwrap_or("").to_string();
        self.method = get(":method");
        self.path = get(":path");
        self.authority = get(":authority");
        self.request_id = get("x-request-id");
        self.request_end_of_stream = headers.end_of_stream;
    }

    /// The request headers as the upstream will get them, once the request-headers
    /// phase is over: every processor's changes applied, including header changes made
    /// while reading a held (BUFFERED) body. Empty before that phase, or when Envoy
    /// skips it.
    pub fn request_headers(&self) -> &Headers {
        &self.request_headers
    }

    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn request_headers_mut(&mut self) -> &mut Headers {
        &mut self.request_headers
    }

    /// What has reached the gateway of the request body so far.
    pub fn request_body(&self) -> BodyReceipt {
        self.request_body
    }

    /// What has reached the gateway of the response body so far.
    pub fn response_body(&self) -> BodyReceipt {
        self.response_body
    }

    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn set_body_receipt(&mut self, request: bool, receipt: BodyReceipt) {
        if request {
            self.request_body = receipt;
        } else {
            self.response_body = receipt;
        }
    }

    /// Records that the running processor left a result out, and why (counted in
    /// `extproc_results_withheld_total`).
    pub fn withhold(&mut self, reason: Withheld) {
        self.withheld = Some(reason);
    }

    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn take_withheld(&mut self) -> Option<Withheld> {
        self.withheld.take()
    }

    /// Asks Envoy to wait up to `by` for the answer to the message being processed
    /// (`override_message_timeout`), for a processor that knowingly needs longer than
    /// Envoy's `message_timeout` (a remote policy check, a key refetch). Envoy takes it
    /// only when its filter sets `max_message_timeout` and `by` does not exceed it (a
    /// longer ask is ignored, not capped: stat `override_message_timeout_ignored`),
    /// once per message, and only before the timeout fires (its stat
    /// `override_message_timeout_received` counts it). Returns false where nothing can
    /// be sent: observability mode, ext_proc over HTTP, the in-process test driver.
    pub fn extend_message_timeout(&self, by: std::time::Duration) -> bool {
        self.timeout_extender.as_ref().is_some_and(|f| f(by))
    }

    /// Reserves `n` bytes of body this processor is about to hold in memory, against
    /// the stream's share and the server's budget (`server.max_buffered_bytes_per_stream`,
    /// `server.max_buffered_bytes`). Refused past either: answer 413 for the stream's
    /// share, 503 for the server's budget, rather than hold more. Given back when the
    /// stream ends. Always granted where no budget is set (the in-process driver).
    pub fn reserve_body_bytes(&mut self, n: usize) -> Result<(), crate::budget::OverBudget> {
        match self.budget.as_mut() {
            Some(b) => b.reserve(n),
            None => Ok(()),
        }
    }

    /// Gives back bytes reserved with [`RequestCtx::reserve_body_bytes`] that are no
    /// longer held.
    pub fn release_body_bytes(&mut self, n: usize) {
        if let Some(b) = self.budget.as_mut() {
            b.release(n);
        }
    }

    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn set_budget(&mut self, budget: Option<crate::budget::StreamBudget>) {
        self.budget = budget;
    }

    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn set_timeout_extender(&mut self, extender: Option<TimeoutExtender>) {
        self.timeout_extender = extender;
    }

    /// A value Envoy forwarded in `metadata_context`, e.g. `("envoy.filters.http.jwt_authn", "payload")`.
    pub fn metadata_value(&self, namespace: &str, key: &str) -> Option<&serde_json::Value> {
        self.metadata.get(namespace)?.get(key)
    }

    /// What this request needs from Envoy, as the processors decided at its request
    /// headers (each from the headers as it saw them); sent as `mode_override`.
    pub fn needs(&self) -> PhaseNeeds {
        self.needs
    }

    /// Adds to what this request needs.
    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn need(&mut self, needs: PhaseNeeds) {
        self.needs = self.needs.union(needs);
    }

    #[cfg(feature = "runtime")]
    fn slot(&mut self, index: usize) -> &mut Slot {
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, Slot::default);
        }
        &mut self.slots[index]
    }

    /// Records that the processor at chain position `index` ran.
    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn mark_ran(&mut self, index: usize) {
        self.slot(index).ran = true;
    }

    /// Whether the processor at chain position `index` has run for this request.
    pub fn has_run(&self, index: usize) -> bool {
        self.slots.get(index).is_some_and(|s| s.ran)
    }

    /// Leaves the processor at chain position `index` out of the rest of this request
    /// (its `when:` was false, or it failed under `on_error: fail_open`).
    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn skip(&mut self, index: usize) {
        let slot = self.slot(index);
        slot.skipped = true;
        slot.state = None;
    }

    /// True the first time it is asked for the processor at `index` on this request:
    /// its `when:` is decided once, at the first phase it sees.
    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn first_look(&mut self, index: usize) -> bool {
        !std::mem::replace(&mut self.slot(index).looked, true)
    }

    /// Whether the processor at chain position `index` is left out of this request.
    pub fn is_skipped(&self, index: usize) -> bool {
        self.slots.get(index).is_some_and(|s| s.skipped)
    }

    /// The state of the processor at `index`, made with `new` on its first hook.
    /// A slot holding another type is an error, never a silent fresh state: it would
    /// mean two processors share a chain position.
    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn take_state<S: Send + 'static>(
        &mut self,
        index: usize,
        new: impl FnOnce() -> S,
    ) -> Result<Box<S>, ProcessorError> {
        match self.slot(index).state.take() {
            None => Ok(Box::new(new())),
            Some(held) => held.downcast::<S>().map_err(|_| {
                ProcessorError::new(format!(
                    "the per-request state at chain position {index} is not a {}",
                    std::any::type_name::<S>()
                ))
            }),
        }
    }

    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn put_state<S: Send + 'static>(&mut self, index: usize, state: Box<S>) {
        self.slot(index).state = Some(state);
    }
}

/// What the context keeps for one chain position.
#[derive(Default)]
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
struct Slot {
    ran: bool,
    skipped: bool,
    looked: bool,
    state: Option<Box<dyn Any + Send>>,
}

/// What a hook returns: how the chain goes on, or an error for the processor's
/// failure policy ([`OnError`]) to handle.
pub type HookResult = Result<Flow, ProcessorError>;

/// A hook that could not do its work: a policy service down, a cache that timed out,
/// input it cannot handle. Any `std::error::Error` converts with `?`.
///
/// Under `on_error: fail_closed` (the default) the client gets a JSON error naming
/// the processor: status 500, or 503 for [`ProcessorError::unavailable`]. The message
/// itself goes to the log and the trace only, since it may name internal systems.
/// Under `on_error: fail_open` the processor is skipped for the rest of the request.
#[derive(Debug)]
pub struct ProcessorError {
    message: String,
    status: u16,
    // Read only by the runtime, which tells "the default hook ran" from an error.
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    not_overridden: bool,
}

impl ProcessorError {
    /// An error answered with 500 under `fail_closed`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            status: 500,
            not_overridden: false,
        }
    }

    /// A dependency the processor needs is unavailable: answered with 503 under
    /// `fail_closed`, so clients and Envoy's retry policy can tell it from a bug.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: 503,
            ..Self::new(message)
        }
    }

    /// What went wrong (logged, not sent to the client).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The status `fail_closed` answers with.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// What the trait's default hooks return: the chain treats it as "continue", and
    /// the chain builder uses it to find hooks overridden for phases `needs()` leaves
    /// out. Private, so a processor cannot return it by accident.
    fn not_overridden() -> Self {
        Self {
            not_overridden: true,
            ..Self::new("hook not implemented")
        }
    }

    /// True for the default hooks' answer (see [`ProcessorError::not_overridden`]).
    #[cfg(feature = "runtime")]
    #[doc(hidden)]
    pub fn is_not_overridden(&self) -> bool {
        self.not_overridden
    }
}

impl std::fmt::Display for ProcessorError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a hook returns for a phase it does not handle, the same as not writing the
/// hook at all: for a processor whose settings decide which phases it reads (static
/// response headers configured or not), so the chain builder's check of hooks against
/// [`Processor::needs`] agrees with it.
pub fn unhandled() -> HookResult {
    Err(ProcessorError::not_overridden())
}

/// Lets `?` turn any error into a [`ProcessorError`] answered with 500 (not itself an
/// `Error`, as with `anyhow`, so this blanket conversion is coherent).
impl<E: std::error::Error + Send + Sync + 'static> From<E> for ProcessorError {
    fn from(e: E) -> Self {
        ProcessorError::new(e.to_string())
    }
}

/// What the chain does when a processor's hook fails (returns an error, panics or
/// overruns `server.processor_timeout`), or its `when:` condition cannot be
/// evaluated. Set per processor entry (`on_error:`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Answer the client: 500 (error, panic), 503 (unavailable) or 504 (timeout),
    /// with a JSON reason naming the processor. The default: a check that cannot run
    /// must not let the request through.
    #[default]
    FailClosed,
    /// Skip this processor for the rest of the request and continue the chain
    /// (counted in `extproc_processor_skipped_total{reason="failed_open"}`). For
    /// processors that only enrich a request.
    FailOpen,
}

impl OnError {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::FailClosed => "fail_closed",
            OnError::FailOpen => "fail_open",
        }
    }
}

impl std::fmt::Debug for RequestCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestCtx")
            .field("route", &self.route)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("authority", &self.authority)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// A unit of request logic: one behaviour, one hook per phase.
///
/// Every hook defaults to "continue without changes", so a processor implements only
/// the phases it cares about and declares them in [`Processor::needs`]; the gateway asks
/// Envoy only for the phases some processor of the route needs. Hooks are async so a
/// processor may call out (a cache, a policy service) without blocking the runtime.
///
/// A hook overridden for a phase that [`Processor::needs`] leaves out would never be
/// called: the chain builder finds such a hook and refuses the chain
/// (`ChainError::UndeclaredHook`).
///
/// ```
/// use extproc_gateway_api::prelude::*;
///
/// struct AddTenant;
///
/// impl Processor for AddTenant {
///     type State = ();
///     fn name(&self) -> &str { "add_tenant" }
///     fn needs(&self) -> PhaseNeeds { PhaseNeeds { request_headers: true, ..PhaseNeeds::NONE } }
///     fn new_state(&self) {}
///     async fn on_request_headers(&self, _: &mut RequestCtx, _: &mut (), h: &HeadersPhase, out: &mut Mutations) -> HookResult {
///         if h.headers.get("x-tenant-id").is_none() {
///             out.set("x-tenant-id", "public");
///         }
///         Ok(Flow::Continue)
///     }
/// }
/// ```
pub trait Processor: Send + Sync + 'static {
    /// Per-request state the processor keeps across phases; `()` when it needs none.
    type State: Send + 'static;

    /// Name used in logs, metrics and `x-ext-procs-applied` when the processor is
    /// added in code (a processor built from config carries its registered name).
    fn name(&self) -> &str;

    /// The phases this processor may read: the route asks Envoy for no more than the
    /// union of these, and hooks of other phases are never called.
    fn needs(&self) -> PhaseNeeds;

    /// A fresh state for one request, made before the first hook that runs for it.
    /// It may start from the processor's settings (a limit, a key), which a `Default`
    /// could not see.
    fn new_state(&self) -> Self::State;

    /// The phases needed for one request, decided from its request headers as this
    /// processor sees them (sent to Envoy as that request's `mode_override`). Narrow it
    /// to skip bodies a request does not need read, e.g. only when a trigger header is
    /// present. Must stay within [`Processor::needs`]. Default: `needs()`.
    fn needs_for(&self, _request: &HeadersPhase) -> PhaseNeeds {
        self.needs()
    }

    /// Request headers arrived.
    fn on_request_headers(
        &self,
        _ctx: &mut RequestCtx,
        _state: &mut Self::State,
        _headers: &HeadersPhase,
        _out: &mut Mutations,
    ) -> impl Future<Output = HookResult> + Send {
        ready(Err(ProcessorError::not_overridden()))
    }

    /// A request body message arrived.
    fn on_request_body(
        &self,
        _ctx: &mut RequestCtx,
        _state: &mut Self::State,
        _body: &BodyPhase,
        _out: &mut Mutations,
    ) -> impl Future<Output = HookResult> + Send {
        ready(Err(ProcessorError::not_overridden()))
    }

    /// Request trailers arrived.
    fn on_request_trailers(
        &self,
        _ctx: &mut RequestCtx,
        _state: &mut Self::State,
        _trailers: &Headers,
        _out: &mut Mutations,
    ) -> impl Future<Output = HookResult> + Send {
        ready(Err(ProcessorError::not_overridden()))
    }

    /// Response headers arrived.
    fn on_response_headers(
        &self,
        _ctx: &mut RequestCtx,
        _state: &mut Self::State,
        _headers: &HeadersPhase,
        _out: &mut Mutations,
    ) -> impl Future<Output = HookResult> + Send {
        ready(Err(ProcessorError::not_overridden()))
    }

    /// A response body message arrived.
    fn on_response_body(
        &self,
        _ctx: &mut RequestCtx,
        _state: &mut Self::State,
        _body: &BodyPhase,
        _out: &mut Mutations,
    ) -> impl Future<Output = HookResult> + Send {
        ready(Err(ProcessorError::not_overridden()))
    }

    /// Response trailers arrived.
    fn on_response_trailers(
        &self,
        _ctx: &mut RequestCtx,
        _state: &mut Self::State,
        _trailers: &Headers,
        _out: &mut Mutations,
    ) -> impl Future<Output = HookResult> + Send {
        ready(Err(ProcessorError::not_overridden()))
    }
}
