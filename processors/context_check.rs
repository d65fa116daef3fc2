//! `context_check`: catches cross-talk between requests. A client sends its own id in
//! `x-context-id` and the same id as the body; the upstream echoes the request path in
//! a JSON body. The gateway checks that the body it sees for this stream is this
//! request's body, and that the response it sees is this request's response. Any
//! mismatch means data of another request leaked into this one: it answers 500 and
//! never forwards the mixed-up data.

use bytes::{Bytes, BytesMut};

use crate::prelude::*;

/// Request header carrying the id (and response header echoing it).
pub const HEADER: &str = "x-context-id";

/// Largest response body kept to read its `path` (a streamed response is gathered;
/// a buffered one is already bounded by the gateway's message size).
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct ContextCheck;

/// Per-request state.
#[derive(Default)]
pub struct ContextState {
    /// The id as sent: shares the request header's bytes (no copy, however long).
    id: Option<Bytes>,
    path: String,
    request_body: BytesMut,
    /// The request body ended and was compared.
    checked: bool,
    response_body: BytesMut,
}

fn mismatch(reason: &str) -> Flow {
    tracing::warn!(reason, "context_check detected cross-talk");
    Flow::Respond(
        ImmediateResponse::json_error(500, &format!("context mismatch: {reason}"))
            .details("context_mismatch"),
    )
}

impl ContextCheck {
    fn check_request_body(state: &ContextState) -> Option<Flow> {
        let id = state.id.as_deref()?;
        (state.request_body.as_ref() != id)
            .then(|| mismatch("request body does not equal x-context-id"))
    }
}

/// Settings of `context_check`: none (`- context_check` or `- context_check: {}`).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ContextCheckSettings {}

impl ProcessorSettings for ContextCheckSettings {
    type Processor = ContextCheck;

    fn build(&self, _: &BuildContext<'_>) -> Result<ContextCheck, String> {
        Ok(ContextCheck)
    }

    fn request_header_writes(&self) -> RequestHeaderWrites {
        RequestHeaderWrites::Names(vec![HEADER.to_string()])
    }
}

impl Processor for ContextCheck {
    type State = ContextState;

    fn new_state(&self) -> ContextState {
        ContextState::default()
    }

    fn name(&self) -> &str {
        "context_check"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds {
            request_body: BodyNeed::Buffered,
            response_body: BodyNeed::Buffered,
            ..PhaseNeeds::HEADERS
        }
    }

    /// Without an id there is nothing to check: only the (empty) upstream header is
    /// written, and no body is read.
    fn needs_for(&self, request: &HeadersPhase) -> PhaseNeeds {
        if request.headers.get(HEADER).is_some() {
            self.needs()
        } else {
            PhaseNeeds::REQUEST_HEADERS
        }
    }

    async fn on_request_headers(
        &self,
        ctx: &mut RequestCtx,
        state: &mut ContextState,
        h: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        // The body must repeat the id byte for byte.
        let id = h.headers.get(HEADER).cloned();
        out.set(HEADER, id.clone().unwrap_or_default());
        state.path = ctx.path.clone();
        state.id = id;
        // A request without a body (a GET) has nothing to compare, as in the SDK's
        // example: only a body that arrives is checked.
        Ok(Flow::Continue)
    }

    async fn on_request_body(
        &self,
        _: &mut RequestCtx,
        state: &mut ContextState,
        body: &BodyPhase,
        _: &mut Mutations,
    ) -> HookResult {
        let Some(id) = state.id.as_deref() else {
            return Ok(Flow::Continue);
        };
        // Keep at most one byte more than the id: enough to know it differs.
        let room = (id.len() + 1).saturating_sub(state.request_body.len());
        let take = room.min(body.chunk.len());
        state
            .request_body
            .extend_from_slice(body.chunk.get(..take).unwrap_or_default());
        if body.end_of_stream {
            state.checked = true;
            if let Some(flow) = Self::check_request_body(state) {
                return Ok(flow);
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_response_headers(
        &self,
        ctx: &mut RequestCtx,
        state: &mut ContextState,
        h: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        if state.id.is_some() && ctx.request_body() == BodyReceipt::Partial && !state.checked {
            // Only a prefix of the request body arrived. One already longer than the
            // id proves the body differs; a shorter one proves nothing.
            if state.request_body.len() > state.id.as_ref().map_or(0, Bytes::len) {
                return Ok(mismatch("request body does not equal x-context-id"));
            }
            ctx.withhold(Withheld::BodyPartial);
        }
        // Without a body there is nothing to cross-check; confirm the id now.
        if h.end_of_stream {
            if let Some(id) = &state.id {
                out.set(HEADER, id.clone());
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_response_body(
        &self,
        ctx: &mut RequestCtx,
        state: &mut ContextState,
        body: &BodyPhase,
        out: &mut Mutations,
    ) -> HookResult {
        let Some(id) = state.id.clone() else {
            return Ok(Flow::Continue);
        };
        if state.response_body.len() + body.chunk.len() > MAX_RESPONSE_BODY {
            // Not cross-talk, just too big to read: the id is not confirmed.
            if state.response_body.capacity() > 0 || !state.response_body.is_empty() {
                state.response_body = BytesMut::new();
            }
            state.id = None;
            ctx.withhold(Withheld::BodyTooLarge);
            return Ok(Flow::Continue);
        }
        if ctx.reserve_body_bytes(body.chunk.len()).is_err() {
            // Over the stream's share or the server's budget: not read, not confirmed.
            state.response_body = BytesMut::new();
            state.id = None;
            ctx.withhold(Withheld::BodyTooLarge);
            return Ok(Flow::Continue);
        }
        if body.kind == BodyKind::Prefix && ctx.response_body() == BodyReceipt::Partial {
            // Only a prefix of the response: its `path` cannot be read for sure.
            state.id = None;
            ctx.withhold(Withheld::BodyPartial);
            return Ok(Flow::Continue);
        }
        state.response_body.extend_from_slice(&body.chunk);
        if !body.end_of_stream {
            return Ok(Flow::Continue);
        }
        let path = serde_json::from_slice::<serde_json::Value>(&state.response_body)
            .ok()
            .and_then(|v| v.get("path").and_then(|p| p.as_str()).map(str::to_string));
        Ok(match path {
            Some(p) if p == state.path => {
                out.set(HEADER, id);
                Flow::Continue
            }
            Some(_) => mismatch("response body path does not equal the request path"),
            None => mismatch("response body is not JSON with a `path` field"),
        })
    }
}
