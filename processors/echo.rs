//! `echo`: when the request header `x-echo-only` is truthy (`t`, `true`, `y`, `yes`,
//! first letter in either case), answers 200 itself with the request's headers and
//! body; the upstream is never called. Otherwise the request passes through.

use bytes::{Bytes, BytesMut};

use crate::prelude::*;

/// The header that turns echo on for a request.
pub const TRIGGER: &str = "x-echo-only";

/// Headers not copied into the echo: pseudo headers, and framing headers Envoy sets
/// itself for the local reply.
const SKIPPED: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
];

/// Largest body echoed back (a streamed body is gathered in memory to answer).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Echo;

/// Per-request state: whether this request is echoed, and its body so far.
#[derive(Default)]
pub struct EchoState {
    body: Option<BytesMut>,
}

/// The truthy rule of `x-echo-only`.
pub fn is_truthy(value: &[u8]) -> bool {
    matches!(
        value,
        b"t" | b"T" | b"true" | b"True" | b"y" | b"Y" | b"yes" | b"Yes"
    )
}

fn triggered(headers: &Headers) -> bool {
    headers.get(TRIGGER).is_some_and(|v| is_truthy(v))
}

/// The reply: the request headers as they stand now (earlier processors' changes
/// included, as a later Envoy filter would see them) and the body.
fn reply(headers: &Headers, body: Bytes) -> Flow {
    let mut reply = ImmediateResponse::new(200).details("echo");
    for (name, value) in headers.iter() {
        if !name.starts_with(':') && !SKIPPED.contains(&name) {
            reply = reply.header(name, value.clone());
        }
    }
    Flow::Respond(reply.body(body))
}

/// Settings of `echo`: none (`- echo` or `- echo: {}`).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct EchoSettings {}

impl ProcessorSettings for EchoSettings {
    type Processor = Echo;

    fn build(&self, _: &BuildContext<'_>) -> Result<Echo, String> {
        Ok(Echo)
    }

    fn request_header_writes(&self) -> RequestHeaderWrites {
        // Its reply goes to the client; it writes nothing upstream.
        RequestHeaderWrites::Names(Vec::new())
    }
}

impl Processor for Echo {
    type State = EchoState;

    fn new_state(&self) -> EchoState {
        EchoState::default()
    }

    fn name(&self) -> &str {
        "echo"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds {
            request_headers: true,
            request_body: BodyNeed::Buffered,
            request_trailers: true,
            ..PhaseNeeds::NONE
        }
    }

    /// The body (and the trailers that may end it) are read only when this request
    /// asks for an echo.
    fn needs_for(&self, request: &HeadersPhase) -> PhaseNeeds {
        if triggered(&request.headers) {
            self.needs()
        } else {
            PhaseNeeds::REQUEST_HEADERS
        }
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        state: &mut EchoState,
        h: &HeadersPhase,
        _: &mut Mutations,
    ) -> HookResult {
        if !triggered(&h.headers) {
            return Ok(Flow::Continue);
        }
        if h.end_of_stream {
            return Ok(reply(&h.headers, Bytes::new()));
        }
        state.body = Some(BytesMut::new());
        Ok(Flow::Continue)
    }

    async fn on_request_body(
        &self,
        ctx: &mut RequestCtx,
        state: &mut EchoState,
        body: &BodyPhase,
        out: &mut Mutations,
    ) -> HookResult {
        let Some(buf) = state.body.as_mut() else {
            return Ok(Flow::Continue);
        };
        if body.kind == BodyKind::Prefix {
            // Only the first bytes of a body over Envoy's buffer limit reach the
            // gateway: a truncated body is never echoed as the request's body.
            state.body = None;
            ctx.withhold(Withheld::BodyPartial);
            return Ok(Flow::Respond(ImmediateResponse::json_error(
                413,
                "body too large to echo: Envoy sent only its first bytes (BUFFERED_PARTIAL)",
            )));
        }
        if buf.len() + body.chunk.len() > MAX_BODY {
            state.body = None;
            return Ok(Flow::Respond(ImmediateResponse::json_error(
                413,
                "body too large to echo",
            )));
        }
        match ctx.reserve_body_bytes(body.chunk.len()) {
            Ok(()) => {}
            Err(OverBudget::Stream) => {
                state.body = None;
                return Ok(Flow::Respond(ImmediateResponse::json_error(
                    413,
                    "body too large to echo (server.max_buffered_bytes_per_stream)",
                )));
            }
            Err(OverBudget::Global) => {
                state.body = None;
                return Ok(Flow::Respond(
                    ImmediateResponse::json_error(
                        503,
                        "the gateway holds as many bodies as it may; retry",
                    )
                    .header("retry-after", "1"),
                ));
            }
        }
        if !body.end_of_stream {
            // Streamed mode (or trailers follow): hold the chunk back from the
            // upstream, which never sees this request.
            buf.extend_from_slice(&body.chunk);
            out.clear_body();
            return Ok(Flow::Continue);
        }
        let whole: Bytes = if buf.is_empty() {
            body.chunk.clone()
        } else {
            buf.extend_from_slice(&body.chunk);
            std::mem::take(buf).freeze()
        };
        state.body = None;
        Ok(reply(ctx.request_headers(), whole))
    }

    /// Trailers end a request whose body did not carry end_of_stream: answer now
    /// with what was gathered.
    async fn on_request_trailers(
        &self,
        ctx: &mut RequestCtx,
        state: &mut EchoState,
        _: &Headers,
        _: &mut Mutations,
    ) -> HookResult {
        Ok(match state.body.take() {
            Some(buf) => reply(ctx.request_headers(), buf.freeze()),
            None => Flow::Continue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::is_truthy;

    #[test]
    fn truthy_rule() {
        for v in ["t", "T", "true", "True", "y", "Y", "yes", "Yes"] {
            assert!(is_truthy(v.as_bytes()), "{v}");
        }
        for v in ["", "1", "TRUE", "YES", "tRue", "no", "false", "f", "on"] {
            assert!(!is_truthy(v.as_bytes()), "{v}");
        }
    }
}
