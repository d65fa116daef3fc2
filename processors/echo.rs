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

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Echo;

/// Per-request state: the reply being assembled while the body arrives.
#[derive(Default)]
pub struct EchoState {
    reply: Option<(ImmediateResponse, BytesMut)>,
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

impl Processor for Echo {
    type State = EchoState;

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
            PhaseNeeds {
                request_trailers: true,
                ..self.needs()
            }
        } else {
            PhaseNeeds {
                request_headers: true,
                ..PhaseNeeds::NONE
            }
        }
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        state: &mut EchoState,
        h: &HeadersPhase,
        _: &mut Mutations,
    ) -> Flow {
        if !triggered(&h.headers) {
            return Flow::Continue;
        }
        let mut reply = ImmediateResponse::new(200).details("echo");
        for (name, value) in h.headers.iter() {
            if !name.starts_with(':') && !SKIPPED.contains(&name) {
                reply = reply.header(name, value.clone());
            }
        }
        if h.end_of_stream {
            return Flow::Respond(reply);
        }
        state.reply = Some((reply, BytesMut::new()));
        Flow::Continue
    }

    async fn on_request_body(
        &self,
        _: &mut RequestCtx,
        state: &mut EchoState,
        body: &BodyPhase,
        out: &mut Mutations,
    ) -> Flow {
        let Some((_, buf)) = state.reply.as_mut() else {
            return Flow::Continue;
        };
        if !body.end_of_stream {
            // Streamed mode: hold the chunk back from the upstream, which never
            // sees this request.
            buf.extend_from_slice(&body.chunk);
            out.clear_body();
            return Flow::Continue;
        }
        match state.reply.take() {
            Some((reply, mut buf)) => {
                let body: Bytes = if buf.is_empty() {
                    body.chunk.clone()
                } else {
                    buf.extend_from_slice(&body.chunk);
                    buf.freeze()
                };
                Flow::Respond(reply.body(body))
            }
            None => Flow::Continue,
        }
    }

    /// Trailers end a request whose body did not carry end_of_stream: answer now
    /// with what was gathered.
    async fn on_request_trailers(
        &self,
        _: &mut RequestCtx,
        state: &mut EchoState,
        _: &Headers,
        _: &mut Mutations,
    ) -> Flow {
        match state.reply.take() {
            Some((reply, buf)) => Flow::Respond(reply.body(buf.freeze())),
            None => Flow::Continue,
        }
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
