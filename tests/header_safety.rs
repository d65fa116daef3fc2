//! No header a client sends, and no `instructions` JSON or token claim it crafts, makes
//! a built-in processor panic or the gateway emit a header Envoy would reject: every
//! built-in, alone and chained, driven through `testing::Driver` with arbitrary header
//! names and values (any bytes, multi-byte UTF-8, empty, very long), arbitrary
//! instructions and arbitrary claims in a correctly signed token. Every answer must be
//! the response its message expects (or an immediate response), and every header it
//! sets or removes must be valid: a lower-case RFC 9110 token name, a value without
//! control characters but HTAB (checked here by rules of the test's own, not by the
//! gateway's functions).

#[path = "fixtures/jwt/helpers.rs"]
mod jwt_helpers;

use std::cell::Cell;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use extproc_gateway::modes::BodyMode;
use extproc_gateway::prelude::*;
use extproc_gateway::processors::{
    ContextCheck, Digest, Echo, HeaderEdits, HeaderInstructions, HeadersSettings, JwtAuth,
    JwtSettings, StaticHeaders, Timer, Trivial,
};
use extproc_gateway::proto::core::{HeaderMap, HeaderValue};
use extproc_gateway::proto::ext_proc::{
    processing_request, processing_response, HeaderMutation, HttpBody, HttpHeaders,
    ProcessingRequest, ProcessingResponse,
};
use extproc_gateway::testing::{Answer, Driver};
use jwt_helpers::*;
use proptest::prelude::*;
use prost::Message as _;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------
// The chains under test: each built-in alone, and all of them in one chain.

fn jwt_auth() -> JwtAuth {
    let settings: JwtSettings = serde_saphyr::from_str(&format!(
        "{{jwks_file: '{}', algorithms: [HS256], require_exp: false}}",
        fixture("hmac-jwks.json").display()
    ))
    .expect("settings");
    JwtAuth::new(settings).expect("jwt_auth builds")
}

fn static_headers() -> StaticHeaders {
    let edits = |side: &str| HeaderEdits {
        set: [(format!("x-{side}-set"), "v\tw".to_string())].into(),
        append: [("x-list".to_string(), side.to_string())].into(),
        remove: vec!["x-remove".into(), "decoded-sub".into()],
    };
    StaticHeaders::new(HeadersSettings {
        request: edits("request"),
        response: edits("response"),
    })
    .expect("valid static headers")
}

fn chains() -> &'static [(&'static str, Chain)] {
    static CHAINS: OnceLock<Vec<(&'static str, Chain)>> = OnceLock::new();
    CHAINS.get_or_init(|| {
        vec![
            (
                "trivial",
                Chain::builder().processor(Trivial).build().unwrap(),
            ),
            ("timer", Chain::builder().processor(Timer).build().unwrap()),
            (
                "digest",
                Chain::builder()
                    .processor(Digest::default())
                    .build()
                    .unwrap(),
            ),
            (
                "jwt_auth",
                Chain::builder().processor(jwt_auth()).build().unwrap(),
            ),
            (
                "context_check",
                Chain::builder().processor(ContextCheck).build().unwrap(),
            ),
            ("echo", Chain::builder().processor(Echo).build().unwrap()),
            (
                "headers",
                Chain::builder()
                    .processor(static_headers())
                    .build()
                    .unwrap(),
            ),
            (
                "instructions",
                Chain::builder()
                    .processor(HeaderInstructions)
                    .build()
                    .unwrap(),
            ),
            (
                "all, authenticated",
                Chain::builder()
                    .processor(HeaderInstructions)
                    .processor(jwt_auth())
                    .processor(Trivial)
                    .processor(Timer)
                    .processor(Digest::default())
                    .processor(ContextCheck)
                    .processor(static_headers())
                    .processor(Echo)
                    .build()
                    .unwrap(),
            ),
            (
                "all but jwt_auth",
                Chain::builder()
                    .processor(Trivial)
                    .processor(Timer)
                    .processor(HeaderInstructions)
                    .processor(Digest::default())
                    .processor(ContextCheck)
                    .processor(static_headers())
                    .processor(Echo)
                    .build()
                    .unwrap(),
            ),
        ]
    })
}

// ---------------------------------------------------------------------------------
// What a client can send.

/// Header names: the ones the processors read, claim headers in odd spellings, and
/// anything at all (control characters, multi-byte UTF-8, empty, very long).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "x-request-id", "x-context-id", "x-echo-only", "instructions", "x-tenant-id",
            "authorization", "decoded-sub", "decoded_sub", "Decoded-Sub", "DECODED_x",
            "x-ext-procs-applied", "x-request-digest", "content-length", "X-Mixed", "",
            ":path", ":authority", "host",
        ])
        .prop_map(String::from),
        3 => any::<String>(),
        2 => "[a-zA-Z0-9_:.-]{0,24}",
        1 => prop::collection::vec(any::<char>(), 1000..5000).prop_map(String::from_iter),
    ]
}

/// Header values: any bytes, UTF-8, the echo trigger, empty, very long.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..48),
        3 => any::<String>().prop_map(String::into_bytes),
        2 => prop::sample::select(vec!["yes", "True", "", "\t", " x ", "a\u{7f}", "é"])
            .prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 4000..40000),
    ]
}

/// JSON strings a client might put in `instructions` or a token.
fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<String>(),
        2 => "[a-zA-Z0-9_ :.-]{0,16}",
        1 => prop::sample::select(vec!["decoded-sub", "decoded_sub", ":path", "x-a", ""])
            .prop_map(String::from),
        1 => prop::collection::vec(any::<char>(), 500..3000).prop_map(String::from_iter),
    ]
}

/// The `instructions` header: well-formed JSON of arbitrary edits, JSON of the wrong
/// shape, or any bytes.
fn instructions() -> impl Strategy<Value = Vec<u8>> {
    let edits = (
        prop::collection::btree_map(json_text(), json_text(), 0..8),
        prop::collection::vec(json_text(), 0..8),
    )
        .prop_map(|(add, remove)| {
            json!({"addHeaders": add, "removeHeaders": remove})
                .to_string()
                .into_bytes()
        });
    prop_oneof![
        4 => edits,
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        json_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(json_text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One request as a client shapes it.
#[derive(Debug, Clone)]
struct Case {
    chain: usize,
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    instructions: Option<Vec<u8>>,
    /// Claims of a correctly signed token, when the request carries one.
    claims: Option<serde_json::Map<String, Value>>,
    request_body: Option<Vec<u8>>,
    response_headers: Vec<(String, Vec<u8>)>,
    response_body: Option<Vec<u8>>,
}

fn case() -> impl Strategy<Value = Case> {
    let chains = chains().len();
    (
        (
            0..chains,
            prop_oneof![
                Just("GET".to_string()),
                Just("POST".to_string()),
                any::<String>()
            ],
            any::<String>(),
            prop::collection::vec((name(), value()), 0..10),
        ),
        (
            prop::option::weighted(0.6, instructions()),
            prop::option::weighted(
                0.6,
                prop::collection::btree_map(json_text(), json_value(), 0..8),
            ),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
            prop::collection::vec((name(), value()), 0..6),
            prop::option::of(prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                any::<String>().prop_map(|p| json!({ "path": p }).to_string().into_bytes()),
            ]),
        ),
    )
        .prop_map(
            |(
                (chain, method, path, headers),
                (instructions, claims, request_body, response_headers, response_body),
            )| Case {
                chain,
                method,
                path,
                headers,
                instructions,
                claims: claims.map(|c| c.into_iter().collect()),
                request_body,
                response_headers,
                response_body,
            },
        )
}

// ---------------------------------------------------------------------------------
// Envoy's side, and what every answer must be.

fn header_map(headers: &[(String, Vec<u8>)]) -> HeaderMap {
    HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.clone(),
                value: String::new(),
                raw_value: Bytes::copy_from_slice(v),
            })
            .collect(),
    }
}

fn message(request: processing_request::Request) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

/// The rule, written out again here so the test does not grade the gateway with its
/// own function: a lower-case RFC 9110 token.
fn is_valid_header_name(name: &str) -> bool {
    const TOKEN: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~";
    !name.is_empty() && name.bytes().all(|b| TOKEN.contains(&b))
}

/// No control character but HTAB: nothing below 0x20 except 0x09, no 0x7f.
fn is_valid_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
}

fn check_mutation(m: &HeaderMutation, at: &str) -> Result<(), TestCaseError> {
    for option in &m.set_headers {
        let h = option
            .header
            .as_ref()
            .ok_or_else(|| TestCaseError::fail(format!("{at}: a set without a header")))?;
        prop_assert!(
            is_valid_header_name(&h.key),
            "{at}: invalid header name {:?}",
            h.key
        );
        prop_assert!(
            is_valid_header_value(&h.raw_value),
            "{at}: invalid value of {}: {:?}",
            h.key,
            h.raw_value
        );
        prop_assert!(h.value.is_empty(), "{at}: `value` set beside `raw_value`");
    }
    for name in &m.remove_headers {
        prop_assert!(is_valid_header_name(name), "{at}: invalid removal {name:?}");
    }
    Ok(())
}

/// The answer is of the message's kind (or an immediate response), and every header
/// it sets or removes is valid. Returns whether the exchange is over.
fn check_answer(answer: &Answer, expected: &str) -> Result<bool, TestCaseError> {
    use processing_response::Response as R;
    let answer = ProcessingResponse::decode(&answer.encoded()[..])
        .map_err(|e| TestCaseError::fail(format!("{expected}: undecodable answer: {e}")))?;
    let response = answer
        .response
        .as_ref()
        .ok_or_else(|| TestCaseError::fail(format!("{expected}: empty answer")))?;
    let (kind, common, trailers) = match response {
        R::ImmediateResponse(i) => {
            let status = i.status.as_ref().map(|s| s.code).unwrap_or_default();
            prop_assert!((200..600).contains(&status), "status {status}");
            prop_assert!(
                !i.details.contains(char::is_whitespace),
                "details with whitespace: {:?}",
                i.details
            );
            if let Some(m) = &i.headers {
                check_mutation(m, "immediate response")?;
            }
            return Ok(true);
        }
        R::RequestHeaders(h) => ("request_headers", h.response.as_ref(), None),
        R::ResponseHeaders(h) => ("response_headers", h.response.as_ref(), None),
        R::RequestBody(b) => ("request_body", b.response.as_ref(), None),
        R::ResponseBody(b) => ("response_body", b.response.as_ref(), None),
        R::RequestTrailers(t) => ("request_trailers", None, t.header_mutation.as_ref()),
        R::ResponseTrailers(t) => ("response_trailers", None, t.header_mutation.as_ref()),
        R::StreamedImmediateResponse(_) => {
            return Err(TestCaseError::fail(format!(
                "{expected}: a streamed immediate response, which the gateway never sends"
            )))
        }
    };
    prop_assert_eq!(kind, expected);
    if let Some(m) = common.and_then(|c| c.header_mutation.as_ref()).or(trailers) {
        check_mutation(m, kind)?;
    }
    Ok(false)
}

thread_local! {
    /// Panics on this thread (processors' panics are caught and answered with 500,
    /// so the answer alone would not show them).
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

fn count_panics() {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let previous = Arc::new(std::panic::take_hook());
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
}

async fn exchange(case: &Case) -> Result<(), TestCaseError> {
    let (name, chain) = &chains()[case.chain];
    let mut d = Driver::new(chain.clone());
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), case.method.clone().into_bytes()),
        (":path".into(), case.path.clone().into_bytes()),
        (":authority".into(), b"example.com".to_vec()),
        (":scheme".into(), b"http".to_vec()),
    ];
    headers.extend(case.headers.iter().cloned());
    if let Some(i) = &case.instructions {
        headers.push(("instructions".into(), i.clone()));
    }
    if let Some(claims) = &case.claims {
        let token =
            Signer::hmac(HMAC_SECRET, Some("example-hmac")).sign(&Value::Object(claims.clone()));
        headers.push((
            "authorization".into(),
            format!("Bearer {token}").into_bytes(),
        ));
    }
    let ended = case.request_body.is_none();
    let answer = d
        .send(message(processing_request::Request::RequestHeaders(
            HttpHeaders {
                headers: Some(header_map(&headers)),
                end_of_stream: ended,
                ..Default::default()
            },
        )))
        .await
        .map_err(|e| TestCaseError::fail(format!("{name}: request headers refused: {e}")))?
        .ok_or_else(|| TestCaseError::fail(format!("{name}: no answer to request headers")))?;
    if check_answer(&answer, "request_headers")? {
        return Ok(());
    }
    // Envoy sends what the gateway asked for (allow_mode_override: true).
    let mode = answer.mode_override;
    let sent = |body: fn(&extproc_gateway::modes::ModeOverride) -> BodyMode| {
        mode.as_ref().is_some_and(|m| body(m) != BodyMode::None)
    };
    if let (Some(body), true) = (&case.request_body, sent(|m| m.request_body)) {
        let answer = d
            .send(message(processing_request::Request::RequestBody(
                HttpBody {
                    body: Bytes::copy_from_slice(body),
                    end_of_stream: true,
                    ..Default::default()
                },
            )))
            .await
            .map_err(|e| TestCaseError::fail(format!("{name}: request body refused: {e}")))?
            .ok_or_else(|| TestCaseError::fail(format!("{name}: no answer to request body")))?;
        if check_answer(&answer, "request_body")? {
            return Ok(());
        }
    }
    // response_header_mode SKIP: Envoy sends no response headers.
    if mode.is_some_and(|m| !m.response_headers) {
        return Ok(());
    }
    let mut response: Vec<(String, Vec<u8>)> = vec![(":status".into(), b"200".to_vec())];
    response.extend(case.response_headers.iter().cloned());
    let answer = d
        .send(message(processing_request::Request::ResponseHeaders(
            HttpHeaders {
                headers: Some(header_map(&response)),
                end_of_stream: case.response_body.is_none(),
                ..Default::default()
            },
        )))
        .await
        .map_err(|e| TestCaseError::fail(format!("{name}: response headers refused: {e}")))?
        .ok_or_else(|| TestCaseError::fail(format!("{name}: no answer to response headers")))?;
    if check_answer(&answer, "response_headers")? {
        return Ok(());
    }
    if let (Some(body), true) = (&case.response_body, sent(|m| m.response_body)) {
        let answer = d
            .send(message(processing_request::Request::ResponseBody(
                HttpBody {
                    body: Bytes::copy_from_slice(body),
                    end_of_stream: true,
                    ..Default::default()
                },
            )))
            .await
            .map_err(|e| TestCaseError::fail(format!("{name}: response body refused: {e}")))?
            .ok_or_else(|| TestCaseError::fail(format!("{name}: no answer to response body")))?;
        check_answer(&answer, "response_body")?;
    }
    Ok(())
}

proptest! {
    // Enough cases to reach every chain with every kind of input many times, few
    // enough to finish in seconds in a debug build; PROPTEST_CASES runs longer.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1200),
    ))]

    #[test]
    fn no_client_input_makes_a_processor_panic_or_emit_an_invalid_header(case in case()) {
        count_panics();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let before = PANICS.with(Cell::get);
        runtime.block_on(exchange(&case))?;
        let panics = PANICS.with(Cell::get) - before;
        prop_assert_eq!(panics, 0, "a processor panicked on chain {}", chains()[case.chain].0);
    }
}

/// A fixed example of each hazard, so a regression shows by name, not only as a
/// shrunk random case.
#[tokio::test]
async fn known_hazards_are_answered_validly() {
    let claims: serde_json::Map<String, Value> = json!({
        "sub": "a\r\nx-injected: 1",
        "del\u{7f}": "\u{7f}",
        "": "empty name",
        "Ünïcödé": ["\u{0}"],
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    let hazards = Case {
        chain: 8,
        method: "GET".into(),
        path: "/p\u{1}".into(),
        headers: vec![
            ("x-echo-only".into(), b"yes".to_vec()),
            ("x-request-id".into(), b"id\x7f".to_vec()),
            ("x-context-id".into(), vec![0xff, 0x00]),
            ("decoded_sub".into(), b"mallory".to_vec()),
            ("bad name".into(), b"v".to_vec()),
            ("x-long".into(), vec![b'a'; 60_000]),
        ],
        instructions: Some(
            br#"{"addHeaders": {"x-ok": "1"}, "removeHeaders": ["decoded_sub"]}"#.to_vec(),
        ),
        claims: Some(claims),
        request_body: None,
        response_headers: vec![("x-ext-procs-applied".into(), b"up\x01stream".to_vec())],
        response_body: None,
    };
    for chain in 0..chains().len() {
        let case = Case {
            chain,
            ..hazards.clone()
        };
        exchange(&case)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", chains()[chain].0));
    }
}
