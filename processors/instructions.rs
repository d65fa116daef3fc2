//! `instructions`: the client says which headers to add and remove on the upstream
//! request, as JSON in the `instructions` request header:
//! `{"addHeaders": {"k": "v"}, "removeHeaders": ["k"]}` (the kgateway sample server's
//! format). Malformed instructions get a 400 that says what is wrong, naming the
//! header when a name is not a header name or a value holds a control character.
//!
//! The client picks the names, so a route that runs `instructions` after `jwt_auth`
//! is refused at config load (it could overwrite the verified claim headers) unless
//! the route sets `allow_claim_overwrite: true`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::prelude::*;

/// The request header carrying the instructions.
pub const HEADER: &str = "instructions";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Instructions {
    #[serde(default)]
    add_headers: BTreeMap<String, String>,
    #[serde(default)]
    remove_headers: Vec<String>,
}

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct HeaderInstructions;

fn bad(reason: String) -> Flow {
    Flow::Respond(ImmediateResponse::json_error(400, &reason).details("bad_instructions"))
}

impl Processor for HeaderInstructions {
    type State = ();

    fn name(&self) -> &str {
        "instructions"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::REQUEST_HEADERS
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        h: &HeadersPhase,
        out: &mut Mutations,
    ) -> Flow {
        let Some(raw) = h.headers.get(HEADER) else {
            return Flow::Continue;
        };
        let parsed: Instructions = match serde_json::from_slice(raw) {
            Ok(i) => i,
            Err(e) => return bad(format!("invalid instructions header: {e}")),
        };
        // Every write is checked where it is made (the mutation builder): a name that
        // is not a header name, or a value Envoy would refuse, is the client's error,
        // and nothing of the instructions is applied.
        for name in parsed.remove_headers {
            if let Err(e) = out.try_remove(name) {
                return bad(format!("invalid instructions header: {e}"));
            }
        }
        for (name, value) in parsed.add_headers {
            if let Err(e) = out.try_set(name, value) {
                return bad(format!("invalid instructions header: {e}"));
            }
        }
        Flow::Continue
    }
}
