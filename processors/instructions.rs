//! `instructions`: the client says which headers to add and remove on the upstream
//! request, as JSON in the `instructions` request header:
//! `{"addHeaders": {"k": "v"}, "removeHeaders": ["k"]}` (the kgateway sample server's
//! format). Malformed instructions get a 400 that says what is wrong.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::headers::{is_header_name, is_header_value};
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
        for name in parsed
            .add_headers
            .keys()
            .chain(parsed.remove_headers.iter())
        {
            if !is_header_name(name) {
                return bad(format!(
                    "invalid instructions header: `{name}` is not a header name"
                ));
            }
        }
        if let Some((name, _)) = parsed.add_headers.iter().find(|(_, v)| !is_header_value(v)) {
            return bad(format!(
                "invalid instructions header: value of `{name}` contains a control character"
            ));
        }
        for name in parsed.remove_headers {
            out.remove(name);
        }
        for (name, value) in parsed.add_headers {
            out.set(name, value);
        }
        Flow::Continue
    }
}
