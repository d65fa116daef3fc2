//! `instructions`: the client says which headers to add and remove on the upstream
//! request, as JSON in the `instructions` request header:
//! `{"addHeaders": {"k": "v"}, "removeHeaders": ["k"]}` (the kgateway sample server's
//! format). Malformed instructions get a 400 that says what is wrong, naming the
//! header when a name is not a header name or a value holds a control character.
//!
//! The client picks the names, so a route that runs `instructions` after `jwt_auth`
//! is refused at config load (it could overwrite the verified claim headers) unless
//! the route sets `allow_claim_overwrite: true`.

use std::borrow::Cow;

use bytes::BytesMut;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::prelude::*;

/// The request header carrying the instructions.
pub const HEADER: &str = "instructions";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Instructions<'a> {
    #[serde(default, borrow, deserialize_with = "in_order")]
    add_headers: Vec<(Text<'a>, Text<'a>)>,
    #[serde(default, borrow)]
    remove_headers: Vec<Text<'a>>,
}

/// A JSON string, borrowed from the header when it has no escapes: a large header
/// holds thousands, and each copy costs.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for Str<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }

        d.deserialize_str(Str(std::marker::PhantomData))
    }
}

/// `addHeaders` as the pairs the client wrote, in its order (a later duplicate name
/// wins, as its `set` comes later): no map is built, since the edits are applied one
/// by one anyway.
fn in_order<'de: 'a, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<(Text<'a>, Text<'a>)>, D::Error> {
    struct Pairs<'a>(std::marker::PhantomData<&'a ()>);

    impl<'de: 'a, 'a> Visitor<'de> for Pairs<'a> {
        type Value = Vec<(Text<'a>, Text<'a>)>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of header names to string values")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::new();
            while let Some(pair) = map.next_entry()? {
                pairs.push(pair);
            }
            Ok(pairs)
        }
    }

    d.deserialize_map(Pairs(std::marker::PhantomData))
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
        out.reserve(parsed.remove_headers.len() + parsed.add_headers.len());
        for name in parsed.remove_headers {
            if let Err(e) = out.try_remove(name.0) {
                return bad(format!("invalid instructions header: {e}"));
            }
        }
        // The values share one buffer: one copy of them all, none per header.
        let size = parsed.add_headers.iter().map(|(_, v)| v.0.len()).sum();
        let mut buffer = BytesMut::with_capacity(size);
        for (_, value) in &parsed.add_headers {
            buffer.extend_from_slice(value.0.as_bytes());
        }
        let mut values = buffer.freeze();
        for (name, value) in parsed.add_headers {
            let value = values.split_to(value.0.len());
            if let Err(e) = out.try_set(name.0, value) {
                return bad(format!("invalid instructions header: {e}"));
            }
        }
        Flow::Continue
    }
}
