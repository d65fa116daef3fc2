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

/// The instructions read in one pass when they are plain: the expected object with
/// no escape in any string, nothing but strings where strings go, each field at most
/// once. A large header holds thousands of strings, and serde_json's cost per string
/// is several times this scan's. Anything else gives `None`, and serde_json reads the
/// header (with its own error messages): both accept the same headers and read the
/// same edits from them.
fn plain(text: &str) -> Option<Instructions<'_>> {
    let mut scan = Scan { text, at: 0 };
    scan.expect(b'{')?;
    let (mut add, mut remove) = (None, None);
    if !scan.next_is(b'}') {
        loop {
            let field = scan.string()?;
            scan.expect(b':')?;
            match field {
                "addHeaders" if add.is_none() => add = Some(scan.pairs()?),
                "removeHeaders" if remove.is_none() => remove = Some(scan.strings()?),
                _ => return None,
            }
            if !scan.next_is(b',') {
                scan.expect(b'}')?;
                break;
            }
        }
    }
    scan.space();
    (scan.at == text.len()).then(|| Instructions {
        add_headers: add.unwrap_or_default(),
        remove_headers: remove.unwrap_or_default(),
    })
}

/// A position in the JSON text of [`plain`]; every read is checked (`None` past the
/// end or on anything unexpected).
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips JSON whitespace.
    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Consumes `byte` (after whitespace) when it comes next.
    fn next_is(&mut self, byte: u8) -> bool {
        self.space();
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.next_is(byte).then_some(())
    }

    /// A string with no escape and no control character, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => return None,
                b if b < 0x20 => return None,
                _ => self.at += 1,
            }
        }
        // Both ends are at a `"`, so on character boundaries.
        let text = self.text.get(start..self.at)?;
        self.at += 1;
        Some(text)
    }

    /// `{"name": "value", ...}`, in order.
    fn pairs(&mut self) -> Option<Vec<(Text<'a>, Text<'a>)>> {
        self.expect(b'{')?;
        let mut pairs = Vec::new();
        if self.next_is(b'}') {
            return Some(pairs);
        }
        loop {
            let name = Text(Cow::Borrowed(self.string()?));
            self.expect(b':')?;
            pairs.push((name, Text(Cow::Borrowed(self.string()?))));
            if !self.next_is(b',') {
                self.expect(b'}')?;
                return Some(pairs);
            }
        }
    }

    /// `["name", ...]`, in order.
    fn strings(&mut self) -> Option<Vec<Text<'a>>> {
        self.expect(b'[')?;
        let mut strings = Vec::new();
        if self.next_is(b']') {
            return Some(strings);
        }
        loop {
            strings.push(Text(Cow::Borrowed(self.string()?)));
            if !self.next_is(b',') {
                self.expect(b']')?;
                return Some(strings);
            }
        }
    }
}

/// The instructions of the header, or serde_json's error.
fn parse(raw: &[u8]) -> Result<Instructions<'_>, serde_json::Error> {
    match std::str::from_utf8(raw) {
        Ok(text) => match plain(text) {
            Some(parsed) => Ok(parsed),
            None => serde_json::from_str(text),
        },
        // Not UTF-8: the error it always got.
        Err(_) => serde_json::from_slice(raw),
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct HeaderInstructions;

fn bad(reason: String) -> Flow {
    Flow::Respond(ImmediateResponse::json_error(400, &reason).details("bad_instructions"))
}

/// Settings of `instructions`: none (`- instructions` or `- instructions: {}`).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct InstructionsSettings {}

impl ProcessorSettings for InstructionsSettings {
    type Processor = HeaderInstructions;

    fn build(&self, _: &BuildContext<'_>) -> Result<HeaderInstructions, String> {
        Ok(HeaderInstructions)
    }

    fn request_header_writes(&self) -> RequestHeaderWrites {
        RequestHeaderWrites::ClientChosen
    }
}

impl Processor for HeaderInstructions {
    type State = ();

    fn new_state(&self) {}

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
    ) -> HookResult {
        let Some(raw) = h.headers.get(HEADER) else {
            return Ok(Flow::Continue);
        };
        let parsed = match parse(raw) {
            Ok(i) => i,
            Err(e) => return Ok(bad(format!("invalid instructions header: {e}"))),
        };
        // Every write is checked where it is made (the mutation builder): a name that
        // is not a header name, or a value Envoy would refuse, is the client's error,
        // and nothing of the instructions is applied.
        out.reserve(parsed.remove_headers.len() + parsed.add_headers.len());
        out.reserve_removals(parsed.remove_headers.len());
        for name in parsed.remove_headers {
            if let Err(e) = out.try_remove(name.0) {
                return Ok(bad(format!("invalid instructions header: {e}")));
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
                return Ok(bad(format!("invalid instructions header: {e}")));
            }
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The edits read from a header, comparable.
    fn edits(i: &Instructions) -> (Vec<(String, String)>, Vec<String>) {
        let add = i
            .add_headers
            .iter()
            .map(|(k, v)| (k.0.to_string(), v.0.to_string()))
            .collect();
        let remove = i.remove_headers.iter().map(|k| k.0.to_string()).collect();
        (add, remove)
    }

    /// Whatever the one-pass reading accepts, serde_json accepts and reads the same.
    fn agrees(text: &str) -> Result<bool, proptest::test_runner::TestCaseError> {
        let Some(fast) = plain(text) else {
            return Ok(false);
        };
        let slow: Result<Instructions, _> = serde_json::from_str(text);
        proptest::prop_assert!(slow.is_ok(), "{text:?}: {:?}", slow.err());
        if let Ok(slow) = slow {
            proptest::prop_assert_eq!(edits(&fast), edits(&slow), "{:?}", text);
        }
        Ok(true)
    }

    #[test]
    fn plain_instructions_are_read_in_one_pass() {
        for text in [
            r#"{}"#,
            r#" { "addHeaders" : { "a" : "1" , "b":"" } , "removeHeaders" : [ "c" , "d" ] } "#,
            "{\"removeHeaders\":[],\r\n\t\"addHeaders\":{}}",
            r#"{"addHeaders": {"x": "1", "x": "2"}}"#,
            r#"{"addHeaders": {"X-Up": "é ok"}}"#,
        ] {
            assert!(matches!(agrees(text), Ok(true)), "{text}");
        }
        // Escapes, other types, unknown or repeated fields and malformed JSON are
        // left to serde_json.
        for text in [
            r#"{"addHeaders": {"a\n": "1"}}"#,
            r#"{"addHeaders": {"a": 1}}"#,
            r#"{"addHeaders": null}"#,
            r#"{"other": []}"#,
            r#"{"removeHeaders": [], "removeHeaders": []}"#,
            r#"{"removeHeaders": ["a",]}"#,
            r#"{"removeHeaders": ["a"]} x"#,
            "{\"removeHeaders\": [\"a\u{1}\"]}",
            r#"[[], []]"#,
            r#"{"removeHeaders": ["a"]"#,
            "",
        ] {
            assert!(plain(text).is_none(), "{text}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(512))]

        /// Arbitrary texts made of JSON's pieces: the one-pass reading never reads
        /// anything serde_json would not, nor reads it differently.
        #[test]
        fn plain_reading_agrees_with_serde_json(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("{"), proptest::strategy::Just("}"),
                    proptest::strategy::Just("["), proptest::strategy::Just("]"),
                    proptest::strategy::Just(":"), proptest::strategy::Just(","),
                    proptest::strategy::Just(" "), proptest::strategy::Just("\n"),
                    proptest::strategy::Just("\"addHeaders\""),
                    proptest::strategy::Just("\"removeHeaders\""),
                    proptest::strategy::Just("\"x-a\""), proptest::strategy::Just("\"\""),
                    proptest::strategy::Just("\"v\\\"\""), proptest::strategy::Just("1"),
                    proptest::strategy::Just("null"), proptest::strategy::Just("\"é\""),
                ],
                0..24,
            ),
            adds in proptest::collection::vec(("[a-zA-Z0-9 ._-]{0,4}", "[ -~é]{0,4}"), 0..6),
            removes in proptest::collection::vec("[a-zA-Z0-9 ._-]{0,4}", 0..6),
        ) {
            agrees(&pieces.concat())?;
            // Well-formed instructions (serde_json writes escapes where needed).
            let add: serde_json::Map<String, serde_json::Value> =
                adds.into_iter().map(|(k, v)| (k, v.into())).collect();
            let text = serde_json::json!({"addHeaders": add, "removeHeaders": removes}).to_string();
            let read = agrees(&text)?;
            proptest::prop_assert!(read || text.contains('\\'), "{:?}", text);
        }
    }
}
