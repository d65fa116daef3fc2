//! The exchange through the in-process `Driver`: how mutations of several processors
//! merge, how an immediate response (or a panic) stops the chain, the
//! `x-ext-procs-applied` stamp, per-processor state, observability mode, message order,
//! body modes (BUFFERED / STREAMED / FULL_DUPLEX_STREAMED), `mode_override`, and the
//! built-in processors, all with the public API only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use extproc_gateway::modes::BodyMode;
use extproc_gateway::prelude::*;
use extproc_gateway::processors::digest::DigestBodyMode;
use extproc_gateway::processors::*;
use extproc_gateway::proto::core::header_value_option::HeaderAppendAction;
use extproc_gateway::proto::core::{HeaderMap, HeaderValue, HeaderValueOption};
use extproc_gateway::proto::ext_proc::{
    body_mutation, processing_request::Request, processing_response::Response as R, HttpBody,
    HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse, ProtocolConfiguration,
    StreamedBodyResponse,
};
use extproc_gateway::server::ExchangeError;
use extproc_gateway::testing::{Answer, Driver};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------------
// Test processors and helpers
// ---------------------------------------------------------------------------------

/// Shared record of which processor ran in which phase ("name:phase").
type Log = Arc<Mutex<Vec<String>>>;

/// What a custom processor does in a phase.
type Hook = Arc<dyn Fn(&Phase, &mut Mutations) -> Flow + Send + Sync>;

fn new_log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// A processor that records every call into a shared log, then runs a closure.
struct Custom {
    name: &'static str,
    needs: PhaseNeeds,
    log: Log,
    hook: Hook,
}

impl Custom {
    fn new(
        name: &'static str,
        needs: PhaseNeeds,
        log: &Log,
        hook: impl Fn(&Phase, &mut Mutations) -> Flow + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            needs,
            log: log.clone(),
            hook: Arc::new(hook),
        }
    }

    /// Records only.
    fn recorder(name: &'static str, needs: PhaseNeeds, log: &Log) -> Self {
        Self::new(name, needs, log, |_, _| Flow::Continue)
    }

    /// Runs the closure for a declared phase; an undeclared one is left unhandled,
    /// so the chain builder's check of hooks against `needs()` agrees.
    fn run(&self, phase: Phase, out: &mut Mutations) -> HookResult {
        if !self.needs.wants(phase.kind()) {
            return unhandled();
        }
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{}", self.name, phase.kind()));
        Ok((self.hook)(&phase, out))
    }
}

impl Processor for Custom {
    type State = ();

    fn new_state(&self) {}

    fn name(&self) -> &str {
        self.name
    }

    fn needs(&self) -> PhaseNeeds {
        self.needs
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        h: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        self.run(Phase::RequestHeaders(h.clone()), out)
    }

    async fn on_request_body(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        b: &BodyPhase,
        out: &mut Mutations,
    ) -> HookResult {
        self.run(Phase::RequestBody(b.clone()), out)
    }

    async fn on_request_trailers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        t: &Headers,
        out: &mut Mutations,
    ) -> HookResult {
        self.run(Phase::RequestTrailers(t.clone()), out)
    }

    async fn on_response_headers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        h: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        self.run(Phase::ResponseHeaders(h.clone()), out)
    }

    async fn on_response_body(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        b: &BodyPhase,
        out: &mut Mutations,
    ) -> HookResult {
        self.run(Phase::ResponseBody(b.clone()), out)
    }

    async fn on_response_trailers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        t: &Headers,
        out: &mut Mutations,
    ) -> HookResult {
        self.run(Phase::ResponseTrailers(t.clone()), out)
    }
}

/// Counts the phases it saw in its typed per-request state and writes the count to
/// its own header.
struct Counter {
    name: &'static str,
    header: &'static str,
    needs: PhaseNeeds,
}

impl Counter {
    fn bump(&self, kind: PhaseKind, state: &mut u32, out: &mut Mutations) -> HookResult {
        if !self.needs.wants(kind) {
            return unhandled();
        }
        *state += 1;
        out.set(self.header, state.to_string());
        Ok(Flow::Continue)
    }
}

impl Processor for Counter {
    type State = u32;

    fn new_state(&self) -> u32 {
        u32::default()
    }

    fn name(&self) -> &str {
        self.name
    }

    fn needs(&self) -> PhaseNeeds {
        self.needs
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        state: &mut u32,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        self.bump(PhaseKind::RequestHeaders, state, out)
    }

    async fn on_request_body(
        &self,
        _: &mut RequestCtx,
        state: &mut u32,
        _: &BodyPhase,
        out: &mut Mutations,
    ) -> HookResult {
        self.bump(PhaseKind::RequestBody, state, out)
    }

    async fn on_response_headers(
        &self,
        _: &mut RequestCtx,
        state: &mut u32,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        self.bump(PhaseKind::ResponseHeaders, state, out)
    }
}

const ALL_PHASES: PhaseNeeds = PhaseNeeds {
    request_headers: true,
    request_body: BodyNeed::Streamed,
    request_trailers: true,
    response_headers: true,
    response_body: BodyNeed::Streamed,
    response_trailers: true,
};

const REQUEST_HEADERS_ONLY: PhaseNeeds = PhaseNeeds {
    request_headers: true,
    ..PhaseNeeds::NONE
};

const GET: [(&str, &str); 3] = [
    (":method", "GET"),
    (":path", "/"),
    ("x-request-id", "rid-1"),
];

/// A header value as current Envoy sends it (`raw_value` only).
fn hv(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.to_string(),
        value: String::new(),
        raw_value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// A header value as Envoy before 1.27 sent it (deprecated `value` only).
fn legacy_hv(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.to_string(),
        value: value.to_string(),
        raw_value: Bytes::new(),
    }
}

fn map(headers: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: headers.iter().map(|(k, v)| hv(k, v)).collect(),
    }
}

fn message(request: Request) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

fn req_headers(headers: &[(&str, &str)], end_of_stream: bool) -> Request {
    Request::RequestHeaders(HttpHeaders {
        headers: Some(map(headers)),
        end_of_stream,
        ..Default::default()
    })
}

fn resp_headers(headers: &[(&str, &str)], end_of_stream: bool) -> Request {
    Request::ResponseHeaders(HttpHeaders {
        headers: Some(map(headers)),
        end_of_stream,
        ..Default::default()
    })
}

fn req_body(chunk: &'static str, end_of_stream: bool) -> Request {
    Request::RequestBody(HttpBody {
        body: Bytes::from_static(chunk.as_bytes()),
        end_of_stream,
        ..Default::default()
    })
}

fn resp_body(chunk: &'static str, end_of_stream: bool) -> Request {
    Request::ResponseBody(HttpBody {
        body: Bytes::from_static(chunk.as_bytes()),
        end_of_stream,
        ..Default::default()
    })
}

fn req_trailers(trailers: &[(&str, &str)]) -> Request {
    Request::RequestTrailers(HttpTrailers {
        trailers: Some(map(trailers)),
    })
}

fn resp_trailers(trailers: &[(&str, &str)]) -> Request {
    Request::ResponseTrailers(HttpTrailers {
        trailers: Some(map(trailers)),
    })
}

/// The first message of a stream, carrying the filter's body modes.
fn with_protocol(request: Request, request_mode: i32, response_mode: i32) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: request_mode,
            response_body_mode: response_mode,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every value written for `name`, in order.
fn values<'a>(answer: &'a Answer, name: &str) -> Vec<&'a str> {
    answer
        .set
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The answer as Envoy receives it: the protobuf message, decoded from its bytes.
fn raw(answer: &Answer) -> ProcessingResponse {
    ProcessingResponse::decode(&answer.encoded()[..]).expect("a ProcessingResponse")
}

/// The raw header options of any answer (immediate responses included).
fn raw_set_headers(answer: &Answer) -> Vec<HeaderValueOption> {
    let raw = raw(answer);
    let mutation = match &raw.response {
        Some(R::RequestHeaders(h)) | Some(R::ResponseHeaders(h)) => {
            h.response.as_ref().and_then(|c| c.header_mutation.as_ref())
        }
        Some(R::RequestBody(b)) | Some(R::ResponseBody(b)) => {
            b.response.as_ref().and_then(|c| c.header_mutation.as_ref())
        }
        Some(R::RequestTrailers(t)) | Some(R::ResponseTrailers(t)) => t.header_mutation.as_ref(),
        Some(R::ImmediateResponse(i)) => i.headers.as_ref(),
        _ => None,
    };
    mutation.map(|m| m.set_headers.clone()).unwrap_or_default()
}

fn append_action(answer: &Answer, name: &str) -> Vec<i32> {
    raw_set_headers(answer)
        .iter()
        .filter(|o| o.header.as_ref().is_some_and(|h| h.key == name))
        .map(|o| o.append_action)
        .collect()
}

/// The full-duplex body carried by a body answer.
fn streamed(answer: &Answer) -> Option<StreamedBodyResponse> {
    let raw = raw(answer);
    let common = match &raw.response {
        Some(R::RequestBody(b)) | Some(R::ResponseBody(b)) => b.response.as_ref()?,
        _ => return None,
    };
    match common.body_mutation.as_ref()?.mutation.as_ref()? {
        body_mutation::Mutation::StreamedResponse(s) => Some(s.clone()),
        _ => None,
    }
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

fn expected_digest(tenant: &str, method: &str, path: &str, body: &str) -> String {
    sha256_hex(&[
        tenant.as_bytes(),
        method.as_bytes(),
        path.as_bytes(),
        body.as_bytes(),
    ])
}

const FDX: i32 = 4; // BodySendMode::FULL_DUPLEX_STREAMED

// ---------------------------------------------------------------------------------
// 1. Merging mutations of several processors in one phase
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn mutations_of_several_processors_merge_in_chain_order() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Custom::new("a", REQUEST_HEADERS_ONLY, &log, |_, out| {
            out.set("x-a", "1");
            out.append("x-list", "a");
            out.set("x-gone", "from-a");
            out.append("x-gone-too", "from-a");
            out.append("x-dup", "v");
            out.set("x-keep", "k");
            Flow::Continue
        }))
        .processor(Custom::new("b", REQUEST_HEADERS_ONLY, &log, |_, out| {
            out.set("X-A", "2");
            out.remove("x-gone");
            out.remove("X-Gone-Too");
            out.append("x-list", "b");
            out.append("x-dup", "v");
            out.remove("x-original");
            Flow::Continue
        }))
        .processor(Custom::new("c", REQUEST_HEADERS_ONLY, &log, |_, out| {
            out.set("x-a", "3");
            out.append("x-list", "c");
            out.add_if_absent("x-keep", "other");
            out.remove("x-original");
            Flow::Continue
        }))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    let answer = envoy
        .request_headers(
            &[(":method", "GET"), (":path", "/"), ("x-original", "o")],
            true,
        )
        .await
        .unwrap();

    assert_eq!(
        entries(&log),
        [
            "a:request_headers",
            "b:request_headers",
            "c:request_headers"
        ]
    );
    assert_eq!(answer.kind, Some(PhaseKind::RequestHeaders));
    // A later set wins and is sent once, as an overwrite.
    assert_eq!(values(&answer, "x-a"), ["3"]);
    assert_eq!(
        append_action(&answer, "x-a"),
        [HeaderAppendAction::OverwriteIfExistsOrAdd as i32]
    );
    // Appends accumulate in chain order, as appends.
    assert_eq!(values(&answer, "x-list"), ["a", "b", "c"]);
    assert!(append_action(&answer, "x-list")
        .iter()
        .all(|a| *a == HeaderAppendAction::AppendIfExistsOrAdd as i32));
    // The same append by two processors is sent once.
    assert_eq!(values(&answer, "x-dup"), ["v"]);
    // A later remove cancels an earlier set or append, and is sent as a removal.
    assert!(values(&answer, "x-gone").is_empty());
    assert!(values(&answer, "x-gone-too").is_empty());
    // add_if_absent after an earlier set does nothing.
    assert_eq!(values(&answer, "x-keep"), ["k"]);
    // Removals are listed once each, lower case.
    let mut removed = answer.removed.clone();
    removed.sort();
    assert_eq!(removed, ["x-gone", "x-gone-too", "x-original"]);
    // Nothing is sent twice.
    let mut pairs = answer.set.clone();
    let before = pairs.len();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), before, "duplicated writes: {:?}", answer.set);
}

#[tokio::test]
async fn set_after_an_earlier_remove_survives() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Custom::new("a", REQUEST_HEADERS_ONLY, &log, |_, out| {
            out.remove("x-h");
            Flow::Continue
        }))
        .processor(Custom::new("b", REQUEST_HEADERS_ONLY, &log, |_, out| {
            out.set("x-h", "new");
            Flow::Continue
        }))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    let answer = envoy
        .request_headers(&[(":method", "GET"), (":path", "/"), ("x-h", "old")], true)
        .await
        .unwrap();
    assert_eq!(values(&answer, "x-h"), ["new"]);
    assert_eq!(answer.removed, ["x-h"]);
}

// ---------------------------------------------------------------------------------
// 2. An immediate response stops the chain
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn immediate_response_stops_the_chain_and_lists_only_processors_that_ran() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Custom::new("first", PhaseNeeds::HEADERS, &log, |_, out| {
            out.set("x-first", "1");
            Flow::Continue
        }))
        .processor(Custom::new(
            "stopper",
            PhaseNeeds::HEADERS,
            &log,
            |phase, _| match phase {
                Phase::RequestHeaders(_) => Flow::Respond(
                    ImmediateResponse::json_error(403, "go away").header("x-stopper", "yes"),
                ),
                _ => Flow::Continue,
            },
        ))
        .processor(Custom::new("after", PhaseNeeds::HEADERS, &log, |_, out| {
            out.set("x-after", "1");
            Flow::Continue
        }))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    assert!(!envoy.is_finished());
    let answer = envoy.request_headers(&GET, true).await.unwrap();

    assert_eq!(answer.kind, None, "an immediate response has no phase kind");
    let immediate = answer.immediate.expect("immediate response");
    assert_eq!(immediate.status, 403);
    assert_eq!(&immediate.body[..], br#"{"error":"go away"}"#);
    assert_eq!(immediate.header("x-stopper"), Some("yes"));
    assert_eq!(immediate.header("x-after"), None);
    assert_eq!(
        immediate.header("x-ext-procs-applied"),
        Some("first,stopper")
    );
    assert_eq!(
        immediate
            .headers
            .iter()
            .filter(|(n, _)| n == "x-ext-procs-applied")
            .count(),
        1
    );
    assert_eq!(
        entries(&log),
        ["first:request_headers", "stopper:request_headers"]
    );
    assert!(envoy.is_finished());
}

#[tokio::test]
async fn immediate_response_in_a_later_phase_skips_later_processors_for_that_phase() {
    let log = new_log();
    let needs = PhaseNeeds {
        request_body: BodyNeed::Buffered,
        ..PhaseNeeds::HEADERS
    };
    let chain = Chain::builder()
        .processor(Custom::recorder("first", needs, &log))
        .processor(Custom::new(
            "stopper",
            needs,
            &log,
            |phase, _| match phase {
                Phase::RequestBody(_) => Flow::Respond(ImmediateResponse::new(413)),
                _ => Flow::Continue,
            },
        ))
        .processor(Custom::new("after", needs, &log, |_, out| {
            out.set("x-after", "1");
            Flow::Continue
        }))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    let headers = envoy.request_headers(&GET, false).await.unwrap();
    assert_eq!(headers.header("x-after"), Some("1"));
    assert!(!envoy.is_finished());
    let answer = envoy.request_body("big", true).await.unwrap();
    let immediate = answer.immediate.expect("immediate response");
    assert_eq!(immediate.status, 413);
    assert_eq!(immediate.header("x-after"), None);
    assert_eq!(
        entries(&log),
        [
            "first:request_headers",
            "stopper:request_headers",
            "after:request_headers",
            "first:request_body",
            "stopper:request_body",
        ]
    );
    assert!(envoy.is_finished());
}

// ---------------------------------------------------------------------------------
// 3. x-ext-procs-applied on response headers
// ---------------------------------------------------------------------------------

fn applied_chain(builder: ChainBuilder, log: &Log) -> Chain {
    builder
        .processor(Trivial)
        .processor(Timer)
        // Runs at request headers only: still listed on the response.
        .processor(Custom::recorder("req-only", REQUEST_HEADERS_ONLY, log))
        // Wants request trailers, which never come: not listed.
        .processor(Custom::recorder(
            "never",
            PhaseNeeds {
                request_trailers: true,
                ..PhaseNeeds::NONE
            },
            log,
        ))
        .build()
        .unwrap()
}

#[tokio::test]
async fn applied_header_lists_processors_that_ran_in_chain_order() {
    let log = new_log();
    let mut envoy = Driver::new(applied_chain(Chain::builder(), &log));
    envoy.request_headers(&GET, true).await.unwrap();
    let answer = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(
        values(&answer, "x-ext-procs-applied"),
        ["trivial,timer,req-only"]
    );
    assert_eq!(
        append_action(&answer, "x-ext-procs-applied"),
        [HeaderAppendAction::OverwriteIfExistsOrAdd as i32]
    );
    assert!(!entries(&log).iter().any(|e| e.starts_with("never")));
}

#[tokio::test]
async fn applied_header_is_appended_to_an_existing_value() {
    let log = new_log();
    let mut envoy = Driver::new(applied_chain(Chain::builder(), &log));
    envoy.request_headers(&GET, true).await.unwrap();
    let answer = envoy
        .response_headers(&[(":status", "200"), ("x-ext-procs-applied", "a,b")], true)
        .await
        .unwrap();
    assert_eq!(
        values(&answer, "x-ext-procs-applied"),
        ["a,b,trivial,timer,req-only"]
    );
}

#[tokio::test]
async fn applied_header_can_be_renamed() {
    let log = new_log();
    let builder = Chain::builder().applied_header(Some("X-Chain-Ran".to_string()));
    let mut envoy = Driver::new(applied_chain(builder, &log));
    envoy.request_headers(&GET, true).await.unwrap();
    let answer = envoy
        .response_headers(&[(":status", "200"), ("x-chain-ran", "up")], true)
        .await
        .unwrap();
    assert_eq!(
        values(&answer, "x-chain-ran"),
        ["up,trivial,timer,req-only"]
    );
    assert!(values(&answer, "x-ext-procs-applied").is_empty());
}

#[tokio::test]
async fn applied_header_can_be_turned_off() {
    let log = new_log();
    let builder = Chain::builder().applied_header(None);
    let mut envoy = Driver::new(applied_chain(builder, &log));
    envoy.request_headers(&GET, true).await.unwrap();
    let answer = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert!(values(&answer, "x-ext-procs-applied").is_empty());
    assert!(answer.set.iter().all(|(_, v)| !v.contains("req-only")));
    // Trivial still writes its header.
    assert_eq!(answer.header("x-extra-request-id"), Some("rid-1"));
}

#[tokio::test]
async fn applied_header_alone_decides_whether_response_headers_are_asked_for() {
    let log = new_log();
    let on = Chain::builder()
        .processor(Custom::recorder("req-only", REQUEST_HEADERS_ONLY, &log))
        .build()
        .unwrap();
    let off = Chain::builder()
        .applied_header(None)
        .processor(Custom::recorder("req-only", REQUEST_HEADERS_ONLY, &log))
        .build()
        .unwrap();
    let sent = |a: Answer| a.mode_override.expect("mode_override").response_headers;
    let mut envoy = Driver::new(on);
    assert!(sent(envoy.request_headers(&GET, true).await.unwrap()));
    let mut envoy = Driver::new(off);
    assert!(!sent(envoy.request_headers(&GET, true).await.unwrap()));
}

// ---------------------------------------------------------------------------------
// 4. A panicking processor
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_panicking_processor_gives_500_and_leaves_other_streams_alone() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Trivial)
        .processor(Custom::new(
            "boom",
            PhaseNeeds::HEADERS,
            &log,
            |phase, out| {
                if let Phase::RequestHeaders(h) = phase {
                    if h.headers.get("x-boom").is_some() {
                        panic!("boom asked for");
                    }
                }
                out.set("x-boom-ok", "1");
                Flow::Continue
            },
        ))
        .processor(Custom::recorder("after", PhaseNeeds::HEADERS, &log))
        .build()
        .unwrap();

    let mut first = Driver::new(chain.clone());
    let answer = first
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/"),
                ("x-request-id", "r1"),
                ("x-boom", "1"),
            ],
            true,
        )
        .await
        .unwrap();
    let immediate = answer.immediate.expect("immediate response");
    assert_eq!(immediate.status, 500);
    let body: serde_json::Value = serde_json::from_slice(&immediate.body).unwrap();
    assert_eq!(body, serde_json::json!({"error": "processor boom failed"}));
    assert_eq!(immediate.header("content-type"), Some("application/json"));
    assert_eq!(
        immediate.header("x-ext-procs-applied"),
        Some("trivial,boom")
    );
    assert!(first.is_finished());
    assert_eq!(entries(&log), ["boom:request_headers"]);

    // The same chain serves the next stream normally.
    let mut second = Driver::new(chain);
    let answer = second
        .request_headers(
            &[(":method", "GET"), (":path", "/"), ("x-request-id", "r2")],
            true,
        )
        .await
        .unwrap();
    assert!(answer.immediate.is_none());
    assert_eq!(answer.header("x-extra-request-id"), Some("r2"));
    assert_eq!(answer.header("x-boom-ok"), Some("1"));
    let answer = second
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(
        answer.header("x-ext-procs-applied"),
        Some("trivial,boom,after")
    );
    assert!(!second.is_finished());
    assert_eq!(
        entries(&log),
        [
            "boom:request_headers",
            "boom:request_headers",
            "after:request_headers",
            "boom:response_headers",
            "after:response_headers",
        ]
    );
}

#[tokio::test]
async fn a_panic_in_a_later_phase_answers_500_at_that_phase() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Custom::new(
            "late-boom",
            PhaseNeeds::HEADERS,
            &log,
            |phase, _| {
                if phase.kind() == PhaseKind::ResponseHeaders {
                    panic!("late");
                }
                Flow::Continue
            },
        ))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    let answer = envoy.request_headers(&GET, true).await.unwrap();
    assert_eq!(answer.kind, Some(PhaseKind::RequestHeaders));
    let answer = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    let immediate = answer.immediate.expect("immediate response");
    assert_eq!(immediate.status, 500);
    assert!(String::from_utf8_lossy(&immediate.body).contains("late-boom"));
    assert!(envoy.is_finished());
}

// ---------------------------------------------------------------------------------
// 5. Typed per-processor state
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn typed_state_persists_across_phases_and_is_separate_per_stream() {
    let chain = Chain::builder()
        .processor(Counter {
            name: "c1",
            header: "x-c1",
            needs: PhaseNeeds {
                request_body: BodyNeed::Streamed,
                ..PhaseNeeds::HEADERS
            },
        })
        // Same state type at another position: its own state.
        .processor(Counter {
            name: "c2",
            header: "x-c2",
            needs: PhaseNeeds {
                response_headers: true,
                ..PhaseNeeds::NONE
            },
        })
        .build()
        .unwrap();
    let mut one = Driver::new(chain.clone());
    let mut two = Driver::new(chain);

    assert_eq!(
        one.request_headers(&GET, false)
            .await
            .unwrap()
            .header("x-c1"),
        Some("1")
    );
    assert_eq!(
        one.request_body("a", false).await.unwrap().header("x-c1"),
        Some("2")
    );
    // A second stream on the same chain starts from a fresh state.
    assert_eq!(
        two.request_headers(&GET, true)
            .await
            .unwrap()
            .header("x-c1"),
        Some("1")
    );
    assert_eq!(
        one.request_body("b", true).await.unwrap().header("x-c1"),
        Some("3")
    );
    let answer = one
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-c1"), Some("4"));
    assert_eq!(answer.header("x-c2"), Some("1"));
    let answer = two
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-c1"), Some("2"));
    assert_eq!(answer.header("x-c2"), Some("1"));
}

// ---------------------------------------------------------------------------------
// 6. Observability mode
// ---------------------------------------------------------------------------------

fn observed(request: Request) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        observability_mode: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn observability_mode_sends_nothing_but_processors_still_run() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Custom::new("rec", ALL_PHASES, &log, |_, out| {
            out.set("x-rec", "1");
            Flow::Continue
        }))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain).observability_mode(true);
    let messages = [
        req_headers(&GET, false),
        req_body("a", false),
        req_body("b", false),
        req_trailers(&[("x-t", "1")]),
        resp_headers(&[(":status", "200")], false),
        resp_body("c", false),
        resp_trailers(&[("x-t", "2")]),
    ];
    for m in messages {
        let got = envoy.send(observed(m)).await;
        assert!(matches!(got, Ok(None)), "{got:?}");
    }
    assert_eq!(
        entries(&log),
        [
            "rec:request_headers",
            "rec:request_body",
            "rec:request_body",
            "rec:request_trailers",
            "rec:response_headers",
            "rec:response_body",
            "rec:response_trailers",
        ]
    );
    assert!(!envoy.is_finished());
}

#[tokio::test]
async fn observability_mode_after_an_immediate_response_runs_nothing_more() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Custom::new(
            "stop",
            PhaseNeeds::HEADERS,
            &log,
            |phase, _| match phase.kind() {
                PhaseKind::RequestHeaders => Flow::Respond(ImmediateResponse::new(401)),
                _ => Flow::Continue,
            },
        ))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain).observability_mode(true);
    let got = envoy.send(observed(req_headers(&GET, true))).await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    // Envoy keeps the stream open in observability mode.
    assert!(!envoy.is_finished());
    let got = envoy
        .send(observed(resp_headers(&[(":status", "200")], true)))
        .await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_eq!(entries(&log), ["stop:request_headers"]);
}

// ---------------------------------------------------------------------------------
// 7. Out-of-order and malformed input
// ---------------------------------------------------------------------------------

fn trivial_chain() -> Chain {
    Chain::builder().processor(Trivial).build().unwrap()
}

#[tokio::test]
async fn request_headers_twice_is_out_of_order() {
    let mut envoy = Driver::new(trivial_chain());
    envoy.request_headers(&GET, false).await.unwrap();
    let err = envoy.request_headers(&GET, false).await.unwrap_err();
    assert!(matches!(err, ExchangeError::OutOfOrder(_)), "{err:?}");
}

#[tokio::test]
async fn response_headers_twice_is_out_of_order() {
    let mut envoy = Driver::new(trivial_chain());
    envoy.request_headers(&GET, true).await.unwrap();
    envoy
        .response_headers(&[(":status", "200")], false)
        .await
        .unwrap();
    let err = envoy
        .response_headers(&[(":status", "200")], false)
        .await
        .unwrap_err();
    assert!(matches!(err, ExchangeError::OutOfOrder(_)), "{err:?}");
}

#[tokio::test]
async fn end_of_stream_sent_twice_is_answered_and_not_hashed_again() {
    let chain = Chain::builder()
        .processor(Digest::default())
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    envoy.request_headers(&GET, false).await.unwrap();
    let first = envoy.request_body("all", true).await.unwrap();
    let digest = values(&first, "x-request-digest");
    assert_eq!(
        digest,
        vec![expected_digest("unknown", "GET", "/", "all").as_str()]
    );
    let again = envoy.request_body("", true).await.unwrap();
    assert_eq!(
        again.kind,
        Some(PhaseKind::RequestBody),
        "answered with its own kind"
    );
    assert!(values(&again, "x-request-digest").is_empty());
    let resp = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(
        values(&resp, "x-request-digest"),
        digest,
        "the body was hashed once"
    );
}

#[tokio::test]
async fn request_body_after_trailers_is_out_of_order() {
    let mut envoy = Driver::new(
        Chain::builder()
            .processor(Digest::default())
            .build()
            .unwrap(),
    );
    envoy.request_headers(&GET, false).await.unwrap();
    envoy.request_trailers(&[("x-t", "1")]).await.unwrap();
    let err = envoy.request_body("late", false).await.unwrap_err();
    assert!(matches!(err, ExchangeError::OutOfOrder(_)), "{err:?}");
}

#[tokio::test]
async fn request_trailers_twice_is_out_of_order() {
    let mut envoy = Driver::new(trivial_chain());
    envoy.request_headers(&GET, false).await.unwrap();
    envoy.request_trailers(&[("x-t", "1")]).await.unwrap();
    let err = envoy.request_trailers(&[("x-t", "2")]).await.unwrap_err();
    assert!(matches!(err, ExchangeError::OutOfOrder(_)), "{err:?}");
}

#[tokio::test]
async fn an_empty_message_is_invalid() {
    let mut envoy = Driver::new(trivial_chain());
    let err = envoy.send(ProcessingRequest::default()).await.unwrap_err();
    assert!(matches!(err, ExchangeError::InvalidArgument(_)), "{err:?}");
    // Also mid-stream.
    let mut envoy = Driver::new(trivial_chain());
    envoy.request_headers(&GET, false).await.unwrap();
    let err = envoy.send(ProcessingRequest::default()).await.unwrap_err();
    assert!(matches!(err, ExchangeError::InvalidArgument(_)), "{err:?}");
}

// ---------------------------------------------------------------------------------
// 8. FULL_DUPLEX_STREAMED
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn full_duplex_echoes_each_chunk_and_ignores_chunks_after_end_of_stream() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Trivial)
        .processor(Custom::recorder(
            "rec",
            PhaseNeeds {
                request_body: BodyNeed::Streamed,
                ..PhaseNeeds::HEADERS
            },
            &log,
        ))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    let answer = envoy
        .send(with_protocol(req_headers(&GET, false), FDX, 0))
        .await
        .unwrap()
        .expect("answer");
    let mode = answer.mode_override.expect("mode_override");
    assert_eq!(mode.request_body, BodyMode::FullDuplexStreamed);

    let answer = envoy.request_body("hello ", false).await.unwrap();
    assert_eq!(answer.kind, Some(PhaseKind::RequestBody));
    assert_eq!(answer.body.as_deref(), Some(&b"hello "[..]));
    let s = streamed(&answer).expect("streamed_response");
    assert_eq!(&s.body[..], b"hello ");
    assert!(!s.end_of_stream);
    assert!(values(&answer, "content-length").is_empty());

    let answer = envoy.request_body("world", true).await.unwrap();
    assert_eq!(answer.body.as_deref(), Some(&b"world"[..]));
    let s = streamed(&answer).expect("streamed_response");
    assert_eq!(&s.body[..], b"world");
    assert!(s.end_of_stream);

    // Envoy may repeat a chunk after end_of_stream: ignored, not an error.
    let got = envoy.send(message(req_body("again", true))).await;
    assert!(matches!(got, Ok(None)), "{got:?}");
    assert_eq!(
        entries(&log)
            .iter()
            .filter(|e| *e == "rec:request_body")
            .count(),
        2
    );
    assert!(!envoy.is_finished());
    // The stream goes on normally.
    let answer = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-ext-procs-applied"), Some("trivial,rec"));
}

#[tokio::test]
async fn full_duplex_is_kept_even_when_no_processor_reads_the_body() {
    let mut envoy = Driver::new(trivial_chain());
    let answer = envoy
        .send(with_protocol(req_headers(&GET, false), FDX, FDX))
        .await
        .unwrap()
        .expect("answer");
    let mode = answer.mode_override.expect("mode_override");
    assert_eq!(mode.request_body, BodyMode::FullDuplexStreamed);
    assert_eq!(mode.response_body, BodyMode::FullDuplexStreamed);
    let answer = envoy.request_body("x", true).await.unwrap();
    assert_eq!(answer.body.as_deref(), Some(&b"x"[..]));
    assert!(streamed(&answer).expect("streamed").end_of_stream);
    envoy
        .response_headers(&[(":status", "200")], false)
        .await
        .unwrap();
    let answer = envoy.response_body("resp", false).await.unwrap();
    assert_eq!(answer.kind, Some(PhaseKind::ResponseBody));
    assert_eq!(answer.body.as_deref(), Some(&b"resp"[..]));
    assert!(!streamed(&answer).expect("streamed").end_of_stream);
}

#[tokio::test]
async fn full_duplex_carries_a_replaced_chunk() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Custom::new(
            "upper",
            PhaseNeeds {
                request_body: BodyNeed::Streamed,
                ..PhaseNeeds::HEADERS
            },
            &log,
            |phase, out| {
                if let Phase::RequestBody(b) = phase {
                    out.replace_body(b.chunk.to_ascii_uppercase());
                }
                Flow::Continue
            },
        ))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    envoy
        .send(with_protocol(req_headers(&GET, false), FDX, 0))
        .await
        .unwrap();
    let answer = envoy.request_body("abc", true).await.unwrap();
    let s = streamed(&answer).expect("streamed");
    assert_eq!(&s.body[..], b"ABC");
    assert!(s.end_of_stream);
}

// ---------------------------------------------------------------------------------
// 9. Body replacement and content-length
// ---------------------------------------------------------------------------------

fn replacer(need: BodyNeed, log: &Log) -> Custom {
    Custom::new(
        "replacer",
        PhaseNeeds {
            request_body: need,
            ..PhaseNeeds::HEADERS
        },
        log,
        |phase, out| {
            if let Phase::RequestBody(b) = phase {
                if b.end_of_stream {
                    out.replace_body("a much longer body");
                    // A wrong value written by a processor must not reach Envoy.
                    out.set("content-length", "3");
                }
            }
            Flow::Continue
        },
    )
}

#[tokio::test]
async fn buffered_body_replacement_sets_content_length() {
    let log = new_log();
    let mut envoy = Driver::new(
        Chain::builder()
            .processor(replacer(BodyNeed::Buffered, &log))
            .build()
            .unwrap(),
    );
    let answer = envoy
        .request_headers(
            &[(":method", "POST"), (":path", "/"), ("content-length", "3")],
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        answer.mode_override.unwrap().request_body,
        BodyMode::Buffered
    );
    let answer = envoy.request_body("abc", true).await.unwrap();
    assert_eq!(answer.body.as_deref(), Some(&b"a much longer body"[..]));
    assert_eq!(values(&answer, "content-length"), ["18"]);
}

#[tokio::test]
async fn buffered_body_clear_sets_content_length_zero() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Custom::new(
            "clear",
            PhaseNeeds {
                request_body: BodyNeed::Buffered,
                ..PhaseNeeds::HEADERS
            },
            &log,
            |phase, out| {
                if phase.kind() == PhaseKind::RequestBody {
                    out.clear_body();
                }
                Flow::Continue
            },
        ))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    envoy.request_headers(&GET, false).await.unwrap();
    let answer = envoy.request_body("abc", true).await.unwrap();
    assert!(answer.body_cleared);
    assert_eq!(values(&answer, "content-length"), ["0"]);
}

#[tokio::test]
async fn streamed_body_replacement_leaves_content_length_alone() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Custom::new(
            "replacer",
            PhaseNeeds {
                request_body: BodyNeed::Streamed,
                ..PhaseNeeds::HEADERS
            },
            &log,
            |phase, out| {
                if phase.kind() == PhaseKind::RequestBody {
                    out.replace_body("a much longer body");
                }
                Flow::Continue
            },
        ))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    let answer = envoy
        .request_headers(&[(":method", "POST"), (":path", "/")], false)
        .await
        .unwrap();
    assert_eq!(
        answer.mode_override.unwrap().request_body,
        BodyMode::Streamed
    );
    let answer = envoy.request_body("abc", true).await.unwrap();
    assert_eq!(answer.body.as_deref(), Some(&b"a much longer body"[..]));
    assert!(values(&answer, "content-length").is_empty());
}

// ---------------------------------------------------------------------------------
// 10. mode_override
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn mode_override_for_a_headers_only_chain() {
    let mut envoy = Driver::new(trivial_chain());
    let answer = envoy.request_headers(&GET, false).await.unwrap();
    let mode = answer.mode_override.expect("mode_override");
    assert!(mode.response_headers);
    assert_eq!(mode.request_body, BodyMode::None);
    assert_eq!(mode.response_body, BodyMode::None);
    assert!(!mode.request_trailers);
    assert!(!mode.response_trailers);
    // On the wire: SEND (1) for the request headers, SKIP (2) rather than DEFAULT for
    // what is not needed.
    let wire = raw(&answer).mode_override.expect("mode_override");
    assert_eq!(wire.request_header_mode, 1);
    assert_eq!(wire.response_header_mode, 1);
    assert_eq!(wire.request_trailer_mode, 2);
    assert_eq!(wire.response_trailer_mode, 2);
    let answer = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert!(answer.mode_override.is_none());
    assert!(raw(&answer).mode_override.is_none());
}

#[tokio::test]
async fn mode_override_follows_the_digest_body_mode() {
    let mut envoy = Driver::new(
        Chain::builder()
            .processor(Digest::default())
            .build()
            .unwrap(),
    );
    let mode = envoy
        .request_headers(&GET, false)
        .await
        .unwrap()
        .mode_override
        .expect("mode_override");
    assert_eq!(mode.request_body, BodyMode::Buffered);
    assert_eq!(mode.response_body, BodyMode::None);
    let answer = envoy.request_body("b", true).await.unwrap();
    assert!(raw(&answer).mode_override.is_none());
    let answer = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert!(raw(&answer).mode_override.is_none());

    let streamed = Digest::new(DigestSettings {
        body_mode: DigestBodyMode::Streamed,
    });
    let mut envoy = Driver::new(Chain::builder().processor(streamed).build().unwrap());
    let mode = envoy
        .request_headers(&GET, false)
        .await
        .unwrap()
        .mode_override
        .expect("mode_override");
    assert_eq!(mode.request_body, BodyMode::Streamed);
    let answer = envoy.request_body("b", false).await.unwrap();
    assert!(raw(&answer).mode_override.is_none());
}

#[tokio::test]
async fn mode_override_asks_for_trailers_when_needed() {
    let log = new_log();
    let mut envoy = Driver::new(
        Chain::builder()
            .processor(Custom::recorder("all", ALL_PHASES, &log))
            .build()
            .unwrap(),
    );
    let mode = envoy
        .request_headers(&GET, false)
        .await
        .unwrap()
        .mode_override
        .expect("mode_override");
    assert!(mode.request_trailers);
    assert!(mode.response_trailers);
    assert_eq!(mode.request_body, BodyMode::Streamed);
    assert_eq!(mode.response_body, BodyMode::Streamed);
}

// ---------------------------------------------------------------------------------
// 11. One answer of the matching kind per message
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn every_message_gets_one_answer_of_its_own_kind() {
    let log = new_log();
    let mut envoy = Driver::new(
        Chain::builder()
            .processor(Custom::recorder("all", ALL_PHASES, &log))
            .build()
            .unwrap(),
    );
    let steps = [
        (req_headers(&GET, false), PhaseKind::RequestHeaders),
        (req_body("one", false), PhaseKind::RequestBody),
        (req_body("two", false), PhaseKind::RequestBody),
        (req_trailers(&[("x-t", "1")]), PhaseKind::RequestTrailers),
        (
            resp_headers(&[(":status", "200")], false),
            PhaseKind::ResponseHeaders,
        ),
        (resp_body("resp", false), PhaseKind::ResponseBody),
        (resp_trailers(&[("x-t", "2")]), PhaseKind::ResponseTrailers),
    ];
    for (request, kind) in steps {
        let answer = envoy
            .send(message(request))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no answer to {kind}"));
        assert_eq!(answer.kind, Some(kind));
        assert!(answer.immediate.is_none());
        assert_eq!(
            answer.mode_override.is_some(),
            kind == PhaseKind::RequestHeaders
        );
    }
    assert_eq!(entries(&log).len(), 7);
    assert!(!envoy.is_finished());
}

// ---------------------------------------------------------------------------------
// 12. Built-in processors
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn trivial_copies_the_request_id_both_ways() {
    let mut envoy = Driver::new(trivial_chain());
    let answer = envoy.request_headers(&GET, true).await.unwrap();
    assert_eq!(values(&answer, "x-extra-request-id"), ["rid-1"]);
    let answer = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(values(&answer, "x-extra-request-id"), ["rid-1"]);
    assert_eq!(answer.header("x-ext-procs-applied"), Some("trivial"));
}

#[tokio::test]
async fn trivial_without_a_request_id_writes_nothing() {
    let mut envoy = Driver::new(trivial_chain());
    let answer = envoy
        .request_headers(&[(":method", "GET"), (":path", "/")], true)
        .await
        .unwrap();
    assert!(answer.set.is_empty());
}

#[tokio::test]
async fn timer_stamps_the_start_and_the_duration() {
    let stamp_re = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$").unwrap();
    let mut envoy = Driver::new(Chain::builder().processor(Timer).build().unwrap());
    let answer = envoy.request_headers(&GET, true).await.unwrap();
    let started = answer
        .header("x-request-started")
        .expect("x-request-started")
        .to_string();
    assert!(stamp_re.is_match(&started), "{started}");
    let year: u32 = started[..4].parse().unwrap();
    assert!((2024..3000).contains(&year), "{started}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let answer = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-request-started"), Some(started.as_str()));
    let ns: u128 = answer
        .header("x-duration-ns")
        .expect("x-duration-ns")
        .parse()
        .expect("integer nanoseconds");
    assert!(ns >= 5_000_000, "{ns}");
    assert!(ns < 60_000_000_000, "{ns}");
}

#[tokio::test]
async fn digest_of_a_buffered_body() {
    let mut envoy = Driver::new(
        Chain::builder()
            .processor(Digest::default())
            .build()
            .unwrap(),
    );
    let headers = [
        (":method", "POST"),
        (":path", "/items?x=1"),
        ("x-tenant-id", "acme"),
    ];
    let answer = envoy.request_headers(&headers, false).await.unwrap();
    assert!(answer.header("x-request-digest").is_none());
    let answer = envoy.request_body("hello world", true).await.unwrap();
    let want = expected_digest("acme", "POST", "/items?x=1", "hello world");
    assert_eq!(values(&answer, "x-request-digest"), [want.as_str()]);
    let answer = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-request-digest"), Some(want.as_str()));
}

#[tokio::test]
async fn digest_tenant_is_unknown_when_absent_or_empty() {
    for headers in [
        vec![(":method", "PUT"), (":path", "/t")],
        vec![(":method", "PUT"), (":path", "/t"), ("x-tenant-id", "")],
    ] {
        let mut envoy = Driver::new(
            Chain::builder()
                .processor(Digest::default())
                .build()
                .unwrap(),
        );
        envoy.request_headers(&headers, false).await.unwrap();
        let answer = envoy.request_body("data", true).await.unwrap();
        let want = expected_digest("unknown", "PUT", "/t", "data");
        assert_eq!(answer.header("x-request-digest"), Some(want.as_str()));
    }
}

#[tokio::test]
async fn digest_of_streamed_chunks_equals_digest_of_the_whole_body() {
    let headers = [(":method", "POST"), (":path", "/s"), ("x-tenant-id", "t1")];

    let mut buffered = Driver::new(
        Chain::builder()
            .processor(Digest::default())
            .build()
            .unwrap(),
    );
    buffered.request_headers(&headers, false).await.unwrap();
    let whole = buffered
        .request_body("alpha-beta-gamma", true)
        .await
        .unwrap()
        .header("x-request-digest")
        .expect("digest")
        .to_string();

    let digest = Digest::new(DigestSettings {
        body_mode: DigestBodyMode::Streamed,
    });
    let mut streamed = Driver::new(Chain::builder().processor(digest).build().unwrap());
    streamed.request_headers(&headers, false).await.unwrap();
    for chunk in ["alpha", "-beta"] {
        let answer = streamed.request_body(chunk, false).await.unwrap();
        assert!(answer.header("x-request-digest").is_none());
    }
    let answer = streamed.request_body("-gamma", true).await.unwrap();
    assert_eq!(answer.header("x-request-digest"), Some(whole.as_str()));
    assert_eq!(
        whole,
        expected_digest("t1", "POST", "/s", "alpha-beta-gamma")
    );
    let answer = streamed
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-request-digest"), Some(whole.as_str()));
}

#[tokio::test]
async fn digest_is_sent_with_the_headers_when_there_is_no_body() {
    let mut envoy = Driver::new(
        Chain::builder()
            .processor(Digest::default())
            .build()
            .unwrap(),
    );
    let answer = envoy
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/nobody"),
                ("x-tenant-id", "z"),
            ],
            true,
        )
        .await
        .unwrap();
    let want = expected_digest("z", "GET", "/nobody", "");
    assert_eq!(answer.header("x-request-digest"), Some(want.as_str()));
    let answer = envoy
        .response_headers(&[(":status", "204")], true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-request-digest"), Some(want.as_str()));
}

fn echo_request(trigger: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "POST"),
        (":path", "/echo"),
        (":authority", "example.com"),
        ("x-echo-only", trigger),
        ("x-foo", "bar"),
        ("content-length", "5"),
    ]
}

#[tokio::test]
async fn echo_answers_truthy_requests_with_headers_and_body() {
    for trigger in ["t", "T", "true", "True", "y", "Y", "yes", "Yes"] {
        let mut envoy = Driver::new(Chain::builder().processor(Echo).build().unwrap());
        let answer = envoy
            .request_headers(&echo_request(trigger), false)
            .await
            .unwrap();
        assert_eq!(answer.kind, Some(PhaseKind::RequestHeaders), "{trigger}");
        assert!(!envoy.is_finished());
        let answer = envoy.request_body("hello", true).await.unwrap();
        let immediate = answer.immediate.expect("echo reply");
        assert_eq!(immediate.status, 200, "{trigger}");
        assert_eq!(&immediate.body[..], b"hello", "{trigger}");
        assert_eq!(immediate.header("x-foo"), Some("bar"));
        assert_eq!(immediate.header("x-echo-only"), Some(trigger));
        assert!(
            immediate.headers.iter().all(|(n, _)| !n.starts_with(':')),
            "{:?}",
            immediate.headers
        );
        assert_eq!(immediate.header("content-length"), None);
        assert_eq!(immediate.header("x-ext-procs-applied"), Some("echo"));
        assert!(envoy.is_finished(), "{trigger}");
    }
}

#[tokio::test]
async fn echo_without_a_body_answers_at_request_headers() {
    let mut envoy = Driver::new(Chain::builder().processor(Echo).build().unwrap());
    let answer = envoy
        .request_headers(&echo_request("yes"), true)
        .await
        .unwrap();
    let immediate = answer.immediate.expect("echo reply");
    assert_eq!(immediate.status, 200);
    assert!(immediate.body.is_empty());
    assert_eq!(immediate.header("x-foo"), Some("bar"));
    assert!(envoy.is_finished());
}

#[tokio::test]
async fn echo_lets_other_values_pass_through() {
    for trigger in ["TRUE", "1", "no"] {
        let mut envoy = Driver::new(
            Chain::builder()
                .processor(Trivial)
                .processor(Echo)
                .build()
                .unwrap(),
        );
        let answer = envoy
            .request_headers(&echo_request(trigger), false)
            .await
            .unwrap();
        assert!(answer.immediate.is_none(), "{trigger}");
        let answer = envoy.request_body("hello", true).await.unwrap();
        assert!(answer.immediate.is_none(), "{trigger}");
        assert_eq!(answer.kind, Some(PhaseKind::RequestBody));
        assert!(answer.body.is_none() && !answer.body_cleared);
        assert!(!envoy.is_finished(), "{trigger}");
        let answer = envoy
            .response_headers(&[(":status", "200")], true)
            .await
            .unwrap();
        assert_eq!(answer.header("x-ext-procs-applied"), Some("trivial,echo"));
    }
}

#[tokio::test]
async fn echo_with_the_whole_default_chain_stops_before_later_processors() {
    // The gateway's default route: trivial, timer, digest, echo.
    let chain = Chain::builder()
        .processor(Trivial)
        .processor(Timer)
        .processor(Digest::default())
        .processor(Echo)
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    envoy
        .request_headers(&echo_request("y"), false)
        .await
        .unwrap();
    let answer = envoy.request_body("hello", true).await.unwrap();
    let immediate = answer.immediate.expect("echo reply");
    assert_eq!(&immediate.body[..], b"hello");
    assert_eq!(
        immediate.header("x-ext-procs-applied"),
        Some("trivial,timer,digest,echo")
    );
}

// ---------------------------------------------------------------------------------
// 13. Deprecated `value` in, `raw_value` only out
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn legacy_value_is_read_and_answers_write_only_raw_value() {
    let log = new_log();
    let chain = Chain::builder()
        .processor(Trivial)
        .processor(Timer)
        .processor(Digest::default())
        .processor(Custom::new(
            "copy",
            REQUEST_HEADERS_ONLY,
            &log,
            |phase, out| {
                if let Phase::RequestHeaders(h) = phase {
                    for name in ["x-both", "x-tenant-id"] {
                        if let Some(v) = h.headers.get(name) {
                            out.set(format!("{name}-seen"), v.clone());
                        }
                    }
                }
                Flow::Continue
            },
        ))
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    let legacy = ProcessingRequest {
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![
                    legacy_hv(":method", "GET"),
                    legacy_hv(":path", "/legacy"),
                    legacy_hv("x-request-id", "legacy-id"),
                    legacy_hv("x-tenant-id", "old-envoy"),
                    // Both set: raw_value wins.
                    HeaderValue {
                        key: "x-both".to_string(),
                        value: "from-value".to_string(),
                        raw_value: Bytes::from_static(b"from-raw"),
                    },
                ],
            }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    };
    let answer = envoy.send(legacy).await.unwrap().expect("answer");
    assert_eq!(answer.header("x-extra-request-id"), Some("legacy-id"));
    let want = expected_digest("old-envoy", "GET", "/legacy", "");
    assert_eq!(answer.header("x-request-digest"), Some(want.as_str()));
    assert_eq!(answer.header("x-tenant-id-seen"), Some("old-envoy"));
    assert_eq!(answer.header("x-both-seen"), Some("from-raw"));
    let options = raw_set_headers(&answer);
    assert_eq!(options.len(), 5, "{options:?}");
    for o in &options {
        let h = o.header.as_ref().expect("header");
        assert!(h.value.is_empty(), "{h:?}");
        assert!(!h.raw_value.is_empty(), "{h:?}");
    }

    let legacy_response = ProcessingRequest {
        request: Some(Request::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![
                    legacy_hv(":status", "200"),
                    legacy_hv("x-ext-procs-applied", "edge"),
                ],
            }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    };
    let answer = envoy.send(legacy_response).await.unwrap().expect("answer");
    assert_eq!(
        answer.header("x-ext-procs-applied"),
        Some("edge,trivial,timer,digest,copy")
    );
    let options = raw_set_headers(&answer);
    assert!(!options.is_empty());
    for o in &options {
        let h = o.header.as_ref().expect("header");
        assert!(h.value.is_empty(), "{h:?}");
    }
}

#[tokio::test]
async fn immediate_response_headers_write_only_raw_value() {
    let mut envoy = Driver::new(Chain::builder().processor(Echo).build().unwrap());
    let answer = envoy
        .request_headers(&echo_request("t"), true)
        .await
        .unwrap();
    let options = raw_set_headers(&answer);
    assert!(!options.is_empty());
    for o in &options {
        let h = o.header.as_ref().expect("header");
        assert!(h.value.is_empty(), "{h:?}");
    }
}

#[tokio::test]
async fn echo_answers_a_request_whose_body_ends_with_trailers() {
    // In BUFFERED mode Envoy sends the whole body with end_of_stream=false when
    // trailers follow, then the trailers (only if the trailer mode is SEND).
    let mut envoy = Driver::new(Chain::builder().processor(Echo).build().unwrap());
    let answer = envoy
        .request_headers(&echo_request("t"), false)
        .await
        .unwrap();
    let mode = answer.mode_override.expect("mode_override");
    assert!(
        mode.request_trailers,
        "echo must ask for request trailers to learn that the body ended"
    );
    envoy.request_body("hello", false).await.unwrap();
    let answer = envoy.request_trailers(&[("x-t", "1")]).await.unwrap();
    let immediate = answer
        .immediate
        .expect("echo reply at the end of the request");
    assert_eq!(immediate.status, 200);
    assert_eq!(&immediate.body[..], b"hello");
    assert!(envoy.is_finished());
}

#[tokio::test]
async fn body_or_trailers_after_end_of_stream_headers_is_out_of_order() {
    let chain = || {
        Chain::builder()
            .processor(Digest::default())
            .build()
            .unwrap()
    };
    let mut envoy = Driver::new(chain());
    envoy.request_headers(&GET, true).await.unwrap();
    let err = envoy.request_body("x", true).await.unwrap_err();
    assert!(matches!(err, ExchangeError::OutOfOrder(_)), "{err:?}");

    let mut envoy = Driver::new(chain());
    envoy.request_headers(&GET, true).await.unwrap();
    let err = envoy.request_trailers(&[("x-t", "1")]).await.unwrap_err();
    assert!(matches!(err, ExchangeError::OutOfOrder(_)), "{err:?}");
}

#[tokio::test]
async fn chains_longer_than_64_processors_list_every_processor() {
    let mut builder = Chain::builder();
    for _ in 0..70 {
        builder = builder.processor(Trivial);
    }
    let mut d = Driver::new(builder.build().unwrap());
    d.request_headers(&[(":path", "/"), ("x-request-id", "r")], true)
        .await
        .unwrap();
    let a = d
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    let applied = a.header("x-ext-procs-applied").unwrap();
    assert_eq!(applied.split(',').count(), 70);
}

// ---------------------------------------------------------------------------------
// Effective body modes: what Envoy really sends, learnt from protocol_config and from
// what arrives (the override is never assumed to have taken effect)
// ---------------------------------------------------------------------------------

const NONE: i32 = 0;
const STREAMED: i32 = 1;
const BUFFERED: i32 = 2;
const PARTIAL: i32 = 3;

/// What a body message came with: its kind, end_of_stream and the receipt then.
type Seen = Arc<Mutex<Vec<(BodyKind, bool, BodyReceipt)>>>;

/// Records the kind and receipt each body message came with.
struct Witness(Seen);

impl Processor for Witness {
    type State = ();

    fn new_state(&self) {}
    fn name(&self) -> &str {
        "witness"
    }
    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds {
            request_body: BodyNeed::Buffered,
            ..PhaseNeeds::HEADERS
        }
    }
    async fn on_request_body(
        &self,
        ctx: &mut RequestCtx,
        _: &mut (),
        b: &BodyPhase,
        _: &mut Mutations,
    ) -> HookResult {
        self.0
            .lock()
            .unwrap()
            .push((b.kind, b.end_of_stream, ctx.request_body()));
        Ok(Flow::Continue)
    }
}

fn digest_and_witness() -> (Chain, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let chain = Chain::builder()
        .processor(Witness(seen.clone()))
        .processor(Digest::default())
        .build()
        .unwrap();
    (chain, seen)
}

#[tokio::test]
async fn partial_is_never_upgraded_and_a_lone_chunk_before_trailers_is_not_presented_as_whole() {
    let (chain, seen) = digest_and_witness();
    let mut envoy = Driver::new(chain);
    let a = envoy
        .send(with_protocol(req_headers(&GET, false), PARTIAL, NONE))
        .await
        .unwrap()
        .unwrap();
    let mode = a.mode_override.expect("mode_override");
    assert_eq!(
        mode.request_body,
        BodyMode::Streamed,
        "PARTIAL is asked as STREAMED, never BUFFERED"
    );
    assert!(mode.request_trailers, "trailers end a streamed body");
    // One chunk without end_of_stream: a STREAMED chunk, or a PARTIAL prefix if Envoy
    // kept its mode. Trailers follow either way.
    envoy.send(message(req_body("first", false))).await.unwrap();
    envoy
        .send(message(req_trailers(&[("t", "1")])))
        .await
        .unwrap();
    let resp = envoy
        .send(message(resp_headers(&[(":status", "200")], true)))
        .await
        .unwrap()
        .unwrap();
    assert!(
        values(&resp, "x-request-digest").is_empty(),
        "no digest of what may be a prefix"
    );
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[(BodyKind::Prefix, false, BodyReceipt::Pending)]
    );
}

#[tokio::test]
async fn a_second_chunk_proves_streamed_and_the_digest_covers_every_chunk() {
    let (chain, seen) = digest_and_witness();
    let mut envoy = Driver::new(chain);
    envoy
        .send(with_protocol(req_headers(&GET, false), PARTIAL, NONE))
        .await
        .unwrap();
    envoy.send(message(req_body("ab", false))).await.unwrap();
    envoy.send(message(req_body("cd", false))).await.unwrap();
    envoy
        .send(message(req_trailers(&[("t", "1")])))
        .await
        .unwrap();
    let resp = envoy
        .send(message(resp_headers(&[(":status", "200")], true)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        values(&resp, "x-request-digest"),
        vec![expected_digest("unknown", "GET", "/", "abcd").as_str()]
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen[1], (BodyKind::Chunk, false, BodyReceipt::Pending));
}

#[tokio::test]
async fn a_buffered_body_followed_by_trailers_is_whole_without_end_of_stream() {
    // Envoy sends a BUFFERED body with end_of_stream=false when trailers follow.
    let (chain, seen) = digest_and_witness();
    let mut envoy = Driver::new(chain);
    envoy
        .send(with_protocol(req_headers(&GET, false), BUFFERED, NONE))
        .await
        .unwrap();
    let a = envoy
        .send(message(req_body("whole", false)))
        .await
        .unwrap()
        .unwrap();
    let want = expected_digest("unknown", "GET", "/", "whole");
    assert_eq!(
        values(&a, "x-request-digest"),
        vec![want.as_str()],
        "digest with the held headers"
    );
    // The trailers after a body the gateway took as ended are answered, not refused.
    let t = envoy
        .send(message(req_trailers(&[("t", "1")])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.kind, Some(PhaseKind::RequestTrailers));
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[(BodyKind::Whole, true, BodyReceipt::Complete)]
    );
}

#[tokio::test]
async fn a_body_envoy_does_not_send_gets_no_digest_and_is_counted() {
    let metrics = extproc_gateway::metrics::Metrics::new();
    let chain = Chain::builder()
        .observe(&metrics, "r")
        .processor(Digest::default())
        .build()
        .unwrap();
    let router = extproc_gateway::router::Router::new(vec![extproc_gateway::router::Route {
        name: Arc::from("r"),
        matcher: Default::default(),
        chain,
        metrics: Some(metrics.route("r")),
    }]);
    let mut envoy = Driver::with_router(router);
    let a = envoy
        .send(with_protocol(req_headers(&GET, false), NONE, NONE))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.mode_override.unwrap().request_body, BodyMode::Buffered);
    // allow_mode_override off: Envoy sends no body, the response comes next.
    let resp = envoy
        .send(message(resp_headers(&[(":status", "200")], true)))
        .await
        .unwrap()
        .unwrap();
    assert!(values(&resp, "x-request-digest").is_empty(), "{resp:?}");
    let text = metrics.render();
    assert!(
        text.contains(
            r#"extproc_mode_mismatches_total{reason="request_body_not_sent",route="r"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"extproc_results_withheld_total{processor="digest",reason="body_not_sent",route="r"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn echo_refuses_a_partial_prefix_instead_of_echoing_it() {
    let mut envoy = Driver::new(Chain::builder().processor(Echo).build().unwrap());
    // send_body_without_waiting_for_header_response: Envoy ignores every override,
    // so PARTIAL stays and a body without end_of_stream is a prefix.
    let mut first = with_protocol(req_headers(&echo_request("yes"), false), PARTIAL, NONE);
    if let Some(p) = first.protocol_config.as_mut() {
        p.send_body_without_waiting_for_header_response = true;
    }
    envoy.send(first).await.unwrap();
    let a = envoy
        .send(message(req_body("only the first bytes", false)))
        .await
        .unwrap()
        .unwrap();
    let immediate = a.immediate.expect("a refusal, not an echo");
    assert_eq!(immediate.status, 413);
}

#[tokio::test]
async fn full_duplex_holds_the_headers_answer_until_the_body_is_read() {
    let chain = Chain::builder()
        .processor(Digest::default())
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    let held = envoy
        .send_all(with_protocol(req_headers(&GET, false), FDX, FDX))
        .await
        .unwrap();
    assert!(held.is_empty(), "headers' answer held: {held:?}");
    assert!(envoy
        .send_all(message(req_body("ab", false)))
        .await
        .unwrap()
        .is_empty());
    let released = envoy.send_all(message(req_body("cd", true))).await.unwrap();
    assert_eq!(released.len(), 3, "headers, then both chunks, in order");
    assert_eq!(released[0].kind, Some(PhaseKind::RequestHeaders));
    let want = expected_digest("unknown", "GET", "/", "abcd");
    assert_eq!(
        values(&released[0], "x-request-digest"),
        vec![want.as_str()]
    );
    let chunks: Vec<_> = released[1..]
        .iter()
        .map(|a| streamed(a).expect("streamed_response"))
        .collect();
    assert_eq!(&chunks[0].body[..], b"ab");
    assert!(!chunks[0].end_of_stream);
    assert_eq!(&chunks[1].body[..], b"cd");
    assert!(chunks[1].end_of_stream);
    assert!(values(&released[1], "x-request-digest").is_empty());
}

#[tokio::test]
async fn empty_chunks_are_answered_and_hash_nothing() {
    let chain = Chain::builder()
        .processor(Digest::default())
        .build()
        .unwrap();
    let mut envoy = Driver::new(chain);
    envoy
        .send(with_protocol(req_headers(&GET, false), STREAMED, NONE))
        .await
        .unwrap();
    for (chunk, eos) in [
        ("", false),
        ("ab", false),
        ("", false),
        ("cd", false),
        ("", true),
    ] {
        let a = envoy
            .send(message(Request::RequestBody(HttpBody {
                body: Bytes::from_static(chunk.as_bytes()),
                end_of_stream: eos,
                ..Default::default()
            })))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.kind, Some(PhaseKind::RequestBody));
    }
    let resp = envoy
        .send(message(resp_headers(&[(":status", "200")], true)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        values(&resp, "x-request-digest"),
        vec![expected_digest("unknown", "GET", "/", "abcd").as_str()]
    );
}
