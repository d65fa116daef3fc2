//! Finds hooks written for phases a processor's `needs()` leaves out: the chain would
//! never call them, and nothing else would say so.
//!
//! Rust cannot ask whether a trait method was overridden, so the chain builder asks
//! the hook itself: the trait's default hooks answer at once with a private marker
//! error. Each undeclared hook is polled once, on an empty event, with a fresh state
//! and context that are then dropped; anything but the marker (another answer, a
//! pending future, a panic) means the processor wrote that hook.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::phase::{Headers, HeadersPhase, Mutations, PhaseKind};
use crate::processor::{HookResult, Processor, RequestCtx};

/// The phases whose hook `processor` overrides without declaring them in `needs()`.
pub(super) fn undeclared_hooks<P: Processor>(processor: &P) -> Vec<PhaseKind> {
    let needs = processor.needs();
    PhaseKind::ALL
        .into_iter()
        .filter(|kind| !needs.wants(*kind))
        .filter(|kind| !answers_with_default(processor, *kind))
        .collect()
}

/// True when the hook of `kind` is the trait's default.
fn answers_with_default<P: Processor>(processor: &P, kind: PhaseKind) -> bool {
    let polled = std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(processor, kind)));
    matches!(polled, Ok(Some(Err(e))) if e.is_not_overridden())
}

/// Calls the hook of `kind` on an empty event. The chain's `run_hook` keeps its own
/// match from phase to hook: sharing one async dispatch function with it added an
/// await layer to every hook call (about 1,300 more instructions per stream in
/// `benches/instructions.rs`).
fn poll_once<P: Processor>(processor: &P, kind: PhaseKind) -> Option<HookResult> {
    let mut ctx = RequestCtx::new(Arc::from(""), 0);
    let mut state = processor.new_state();
    let mut out = Mutations::new();
    let headers = HeadersPhase::default();
    let body = crate::phase::BodyPhase::default();
    let trailers = Headers::new();
    let (ctx, state, out) = (&mut ctx, &mut state, &mut out);
    match kind {
        PhaseKind::RequestHeaders => processor
            .on_request_headers(ctx, state, &headers, out)
            .now_or_never(),
        PhaseKind::RequestBody => processor
            .on_request_body(ctx, state, &body, out)
            .now_or_never(),
        PhaseKind::RequestTrailers => processor
            .on_request_trailers(ctx, state, &trailers, out)
            .now_or_never(),
        PhaseKind::ResponseHeaders => processor
            .on_response_headers(ctx, state, &headers, out)
            .now_or_never(),
        PhaseKind::ResponseBody => processor
            .on_response_body(ctx, state, &body, out)
            .now_or_never(),
        PhaseKind::ResponseTrailers => processor
            .on_response_trailers(ctx, state, &trailers, out)
            .now_or_never(),
    }
}
