//! Property tests that try to break the stream state machine: arbitrary sequences of
//! Envoy's messages (any phase in any order, any end_of_stream, any configured body
//! mode, observability on or off, repeated and empty chunks, odd headers) through the
//! in-process driver with the whole default chain, and arbitrary bytes through message
//! decoding. Whatever arrives, the gateway never panics or hangs: each message gets
//! answers of its own kind (or an immediate response), or the stream ends with a clear
//! error, and nothing follows an immediate response.
//!
//! A bounded run (6,000 sequences, about 20 s in a debug build) is part of the test command; set
//! `PROPTEST_CASES` for a longer one.

use std::time::Duration;

use bytes::Bytes;
use extproc_gateway::config::GatewayConfig;
use extproc_gateway::phase::PhaseKind;
use extproc_gateway::proto::core::{HeaderMap, HeaderValue};
use extproc_gateway::proto::ext_proc::{
    processing_request::Request, HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest,
    ProtocolConfiguration,
};
use extproc_gateway::server::ExchangeError;
use extproc_gateway::testing::Driver;
use proptest::prelude::*;

/// One message Envoy could send, before it is turned into protobuf.
#[derive(Debug, Clone)]
enum Msg {
    RequestHeaders(Vec<(String, Vec<u8>)>, bool),
    RequestBody(Vec<u8>, bool),
    RequestTrailers(Vec<(String, Vec<u8>)>),
    ResponseHeaders(Vec<(String, Vec<u8>)>, bool),
    ResponseBody(Vec<u8>, bool),
    ResponseTrailers(Vec<(String, Vec<u8>)>),
    Empty,
}

impl Msg {
    fn kind(&self) -> Option<PhaseKind> {
        Some(match self {
            Msg::RequestHeaders(..) => PhaseKind::RequestHeaders,
            Msg::RequestBody(..) => PhaseKind::RequestBody,
            Msg::RequestTrailers(..) => PhaseKind::RequestTrailers,
            Msg::ResponseHeaders(..) => PhaseKind::ResponseHeaders,
            Msg::ResponseBody(..) => PhaseKind::ResponseBody,
            Msg::ResponseTrailers(..) => PhaseKind::ResponseTrailers,
            Msg::Empty => return None,
        })
    }
}

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

fn to_request(m: &Msg) -> Option<Request> {
    let headers = |h: &[(String, Vec<u8>)], eos: bool| HttpHeaders {
        headers: Some(header_map(h)),
        end_of_stream: eos,
        ..Default::default()
    };
    let body = |b: &[u8], eos: bool| HttpBody {
        body: Bytes::copy_from_slice(b),
        end_of_stream: eos,
        ..Default::default()
    };
    Some(match m {
        Msg::RequestHeaders(h, eos) => Request::RequestHeaders(headers(h, *eos)),
        Msg::RequestBody(b, eos) => Request::RequestBody(body(b, *eos)),
        Msg::RequestTrailers(t) => Request::RequestTrailers(HttpTrailers {
            trailers: Some(header_map(t)),
        }),
        Msg::ResponseHeaders(h, eos) => Request::ResponseHeaders(headers(h, *eos)),
        Msg::ResponseBody(b, eos) => Request::ResponseBody(body(b, *eos)),
        Msg::ResponseTrailers(t) => Request::ResponseTrailers(HttpTrailers {
            trailers: Some(header_map(t)),
        }),
        Msg::Empty => return None,
    })
}

/// Header names and values the processors look at, plus anything at all.
fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = prop_oneof![
        Just(":method".to_string()),
        Just(":path".to_string()),
        Just(":status".to_string()),
        Just("x-echo-only".to_string()),
        Just("x-context-id".to_string()),
        Just("x-tenant-id".to_string()),
        Just("content-length".to_string()),
        Just("instructions".to_string()),
        "[a-zA-Z0-9_:-]{0,12}",
        ".{0,8}",
    ];
    let value = prop_oneof![
        Just(b"yes".to_vec()),
        Just(b"GET".to_vec()),
        Just(b"/a/../b".to_vec()),
        Just(b"{\"path\":\"/\"}".to_vec()),
        Just(b"5".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..24),
    ];
    (name, value)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"ctx-1".to_vec()),
        Just(b"{\"path\":\"/p\"}".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

fn msg() -> impl Strategy<Value = Msg> {
    let headers = || proptest::collection::vec(header(), 0..6);
    prop_oneof![
        3 => (headers(), any::<bool>()).prop_map(|(h, e)| Msg::RequestHeaders(h, e)),
        3 => (body(), any::<bool>()).prop_map(|(b, e)| Msg::RequestBody(b, e)),
        1 => headers().prop_map(Msg::RequestTrailers),
        3 => (headers(), any::<bool>()).prop_map(|(h, e)| Msg::ResponseHeaders(h, e)),
        3 => (body(), any::<bool>()).prop_map(|(b, e)| Msg::ResponseBody(b, e)),
        1 => headers().prop_map(Msg::ResponseTrailers),
        1 => Just(Msg::Empty),
    ]
}

/// A plausible start (request headers) most of the time, then anything.
fn sequence() -> impl Strategy<Value = (Vec<Msg>, Option<(i32, i32, bool)>, bool)> {
    let start = (proptest::collection::vec(header(), 0..6), any::<bool>())
        .prop_map(|(h, e)| Msg::RequestHeaders(h, e));
    (
        start,
        proptest::collection::vec(msg(), 0..12),
        proptest::option::of((0..6i32, 0..6i32, any::<bool>())),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(first, rest, protocol, observability)| {
            let mut all = vec![first];
            all.extend(rest);
            (all, protocol, observability)
        })
}

fn router() -> extproc_gateway::router::Router {
    let config = GatewayConfig::embedded().expect("default config");
    config.build_router().expect("router")
}

async fn run(
    msgs: Vec<Msg>,
    protocol: Option<(i32, i32, bool)>,
    observability: bool,
) -> Result<(), TestCaseError> {
    let mut driver = Driver::with_router(router());
    for (i, m) in msgs.iter().enumerate() {
        let message = ProcessingRequest {
            request: to_request(m),
            observability_mode: observability,
            protocol_config: protocol.filter(|_| i == 0).map(|(rq, rs, early)| {
                ProtocolConfiguration {
                    request_body_mode: rq,
                    response_body_mode: rs,
                    send_body_without_waiting_for_header_response: early,
                }
            }),
            ..Default::default()
        };
        let answers =
            match tokio::time::timeout(Duration::from_secs(5), driver.send_all(message)).await {
                Err(_) => return Err(TestCaseError::fail(format!("message {i} hung: {m:?}"))),
                // The stream ends with a clear error: nothing more is sent on it.
                Ok(Err(ExchangeError::InvalidArgument(_) | ExchangeError::OutOfOrder(_))) => {
                    return Ok(())
                }
                Ok(Ok(answers)) => answers,
            };
        if observability {
            prop_assert!(answers.is_empty(), "observability answered: {answers:?}");
        }
        for a in &answers {
            match (&a.immediate, a.kind) {
                (Some(imm), _) => prop_assert!((100..600).contains(&imm.status), "{a:?}"),
                (None, Some(kind)) => {
                    // Own kind, or (a held full-duplex exchange) request headers and
                    // bodies released in order ahead of it.
                    prop_assert!(
                        Some(kind) == m.kind()
                            || matches!(kind, PhaseKind::RequestHeaders | PhaseKind::RequestBody),
                        "answer {kind:?} to {m:?}"
                    );
                }
                (None, None) => prop_assert!(false, "an answer of no kind: {a:?}"),
            }
            for (name, value) in &a.set {
                prop_assert!(!name.is_empty(), "empty header name written");
                prop_assert!(
                    !value.contains(['\r', '\n', '\0']),
                    "header {name} written with CR/LF/NUL"
                );
            }
        }
        if driver.is_finished() {
            return Ok(());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(6000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_message_sequence_gets_valid_answers_or_a_clear_end(
        (msgs, protocol, observability) in sequence()
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        rt.block_on(run(msgs, protocol, observability))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        use prost::Message;
        if let Ok(message) = ProcessingRequest::decode(bytes.as_slice()) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut driver = Driver::with_router(router());
            let _ = rt.block_on(driver.send_all(message));
        }
    }
}
