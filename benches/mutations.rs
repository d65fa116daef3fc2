//! What a client's header edits cost the gateway per request-headers message, in
//! process: a new stream's first message through the state machine and a chain of
//! `instructions` then `trivial`.
//!
//! - `instructions_60k`: a 60 KiB `instructions` header, about 1,400 `addHeaders` and
//!   as many `removeHeaders` (the most Envoy forwards: its default header limit is
//!   60 KiB), the case that was quadratic before the mutation builder was indexed.
//!   The message goes in and the answer comes out as protobuf structs (decoded into
//!   the gateway's types, through the state machine, encoded back): what the gateway
//!   does, without the gRPC codec every ext_proc server runs;
//! - `instructions_60k_wire`: the same from protobuf bytes to protobuf bytes (plus
//!   prost's decode and encode of the 60 KiB message and its ~2,800-entry answer);
//! - `instructions_60k_worst` and `instructions_60k_worst_wire`: the most edits 60 KiB
//!   can hold, the shortest there are: distinct one- to three-character names (every
//!   token character), empty values, as many removals as additions (about 4,700 of
//!   each), so the per-edit costs dominate the per-byte ones;
//! - `instructions_small`: a typical request with a two-edit header, where the index
//!   must cost nothing.
//!
//! cargo bench --bench mutations
//! Instruction counts of one benchmark (no criterion), e.g.:
//! valgrind --tool=callgrind --toggle-collect='*measured*' target/release/deps/mutations-* \
//!     profile instructions_60k_worst_wire 10
//! benches/mutations_cost.sh compares it with an older revision (interleaved rounds).
//! It drives the exchange through `wire::decode` and `wire::encode`, so it builds only
//! on revisions that have them (the exchange took protobuf messages itself before);
//! for older revisions the script uses the last copy written for that API (647755a).

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, BatchSize, Criterion};
use extproc_gateway::prelude::*;
use extproc_gateway::processors::{HeaderInstructions, Trivial};
use extproc_gateway::proto::core::{HeaderMap, HeaderValue};
use extproc_gateway::proto::ext_proc::{
    processing_request, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use extproc_gateway::router::{Route, RouteMatch, Router};
use extproc_gateway::server::{Exchange, Handled};
use extproc_gateway::testing::Driver;
use extproc_gateway::wire;
use prost::Message;

/// Envoy's default `max_request_headers_kb`.
const LIMIT: usize = 60 * 1024;

/// `instructions(n)` as large as fits in 60 KiB, and its n (the size grows with n:
/// the largest n that fits, by bisection).
fn largest(instructions: fn(usize) -> String) -> (String, usize) {
    let (mut fits, mut over) = (0, 1);
    while instructions(over).len() <= LIMIT {
        (fits, over) = (over, over * 2);
    }
    while over - fits > 1 {
        let mid = (fits + over) / 2;
        if instructions(mid).len() <= LIMIT {
            fits = mid;
        } else {
            over = mid;
        }
    }
    (instructions(fits), fits)
}

/// `{"addHeaders": {"x-add-00000": "value-00000", ...}, "removeHeaders": ["x-remove-00000", ...]}`
/// with n of each.
fn instructions(n: usize) -> String {
    let add = (0..n).map(|i| (format!("x-add-{i:05}"), format!("value-{i:05}")));
    let remove = (0..n).map(|i| format!("x-remove-{i:05}"));
    json(add, remove)
}

/// n additions with empty values and n removals, of the 2n shortest distinct header
/// names (taken alternately, so both lists get the short ones).
fn shortest_instructions(n: usize) -> String {
    let names: Vec<String> = shortest_names().take(2 * n).collect();
    let add = names.iter().step_by(2).map(|k| (k.clone(), String::new()));
    let remove = names.iter().skip(1).step_by(2).cloned();
    json(add, remove)
}

/// Every header name (RFC 9110 token, lower case), shortest first.
fn shortest_names() -> impl Iterator<Item = String> {
    const TOKEN: &[u8] = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz";
    (1..).flat_map(|len: u32| {
        let count = TOKEN.len().pow(len);
        (0..count).map(move |mut i| {
            let mut name = String::with_capacity(len as usize);
            for _ in 0..len {
                name.push(char::from(TOKEN[i % TOKEN.len()]));
                i /= TOKEN.len();
            }
            name
        })
    })
}

/// The `instructions` JSON, the additions in the given order.
fn json(
    add: impl Iterator<Item = (String, String)>,
    remove: impl Iterator<Item = String>,
) -> String {
    let add: serde_json::Map<String, serde_json::Value> = add.map(|(k, v)| (k, v.into())).collect();
    let remove: Vec<String> = remove.collect();
    serde_json::json!({"addHeaders": add, "removeHeaders": remove}).to_string()
}

const BASE: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/items/42?full=1"),
    (":authority", "api.example.com"),
    (":scheme", "https"),
    ("x-request-id", "5b1c8a3e-9d0f-4f3a-8c7e-2a6b9d1e0f42"),
    ("user-agent", "bench/1.0"),
    ("accept", "application/json"),
    ("x-remove-00001", "present"),
    ("x-remove-00002", "present"),
];

/// A header map as current Envoy sends it (`raw_value` only).
fn header_map(headers: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: headers
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect(),
    }
}

/// The message as Envoy would send it (header values in `raw_value`).
fn request_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    ProcessingRequest {
        request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
            headers: Some(header_map(headers)),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

/// One message through a fresh stream: the answer as a protobuf struct.
async fn handle(exchange: &mut Exchange, message: ProcessingRequest) -> ProcessingResponse {
    let message = wire::decode(message).expect("a phase");
    match exchange.handle(message).await.expect("handled") {
        Handled::Reply(answer) => wire::encode(*answer),
        _ => panic!("one answer expected"),
    }
}

/// The same from protobuf bytes to protobuf bytes, as the gRPC codec sees it.
async fn handle_wire(exchange: &mut Exchange, bytes: &[u8]) -> Vec<u8> {
    let message = ProcessingRequest::decode(bytes).expect("a ProcessingRequest");
    handle(exchange, message).await.encode_to_vec()
}

/// One benchmark's input: the request-headers message, decoded and as bytes.
struct Case {
    name: &'static str,
    message: ProcessingRequest,
    wire: Vec<u8>,
    /// Whether the wire variant (`{name}_wire`) is benched too.
    with_wire: bool,
}

/// The runtime, the route and the checked inputs every benchmark shares.
struct Setup {
    rt: tokio::runtime::Runtime,
    router: Arc<Router>,
    cases: Vec<Case>,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let chain = Chain::builder()
        .processor(HeaderInstructions)
        .processor(Trivial)
        .build()
        .unwrap();
    let router = Arc::new(Router::new(vec![Route {
        name: Arc::from("bench"),
        matcher: RouteMatch::default(),
        chain: chain.clone(),
        metrics: None,
    }]));
    let (large, n) = largest(instructions);
    let (worst, w) = largest(shortest_instructions);
    let small = r#"{"addHeaders": {"x-tenant": "acme"}, "removeHeaders": ["x-remove-00001"]}"#;
    let mut cases = Vec::new();
    // Name, instructions, header writes and removals expected (`trivial` writes one
    // more), whether to bench the wire variant too.
    for (name, json, writes, removals, with_wire) in [
        ("instructions_60k", large.as_str(), n + 1, n, true),
        ("instructions_60k_worst", worst.as_str(), w + 1, w, true),
        ("instructions_small", small, 2, 1, false),
    ] {
        let mut headers = BASE.to_vec();
        headers.push(("instructions", json));
        // The answer is the one expected, on every revision compared.
        let answer = rt
            .block_on(Driver::new(chain.clone()).request_headers(&headers, true))
            .expect("answer");
        assert!(answer.immediate.is_none(), "{name}: refused");
        assert_eq!(answer.set.len(), writes, "{name}: header writes");
        assert_eq!(answer.removed.len(), removals, "{name}: header removals");
        let wire = request_headers(&headers);
        let message = ProcessingRequest::decode(&wire[..]).expect("a ProcessingRequest");
        cases.push(Case {
            name,
            message,
            wire,
            with_wire,
        });
    }
    Setup { rt, router, cases }
}

fn bench(c: &mut Criterion) {
    let Setup { rt, router, cases } = setup();
    let mut group = c.benchmark_group("mutations");
    for Case {
        name,
        message,
        wire,
        with_wire,
    } in &cases
    {
        group.bench_function(*name, |b| {
            b.iter_batched(
                || (Exchange::new(router.clone(), Vec::new()), message.clone()),
                |(mut exchange, message)| {
                    let answer = rt.block_on(handle(&mut exchange, message));
                    (exchange, answer)
                },
                BatchSize::SmallInput,
            )
        });
        if *with_wire {
            group.bench_function(format!("{name}_wire"), |b| {
                b.iter_batched(
                    || Exchange::new(router.clone(), Vec::new()),
                    |mut exchange| {
                        let answer = rt.block_on(handle_wire(&mut exchange, wire));
                        (exchange, answer)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

/// `mutations-* profile BENCH N`: BENCH (a benchmark's name) N times and nothing
/// else, for callgrind: `--toggle-collect='*measured*'` counts only what the
/// benchmark times (each answer is dropped outside, as criterion's batches do).
fn profile(bench: &str, n: usize) {
    let Setup { rt, router, cases } = setup();
    let (base, on_wire) = match bench.strip_suffix("_wire") {
        Some(base) => (base, true),
        None => (bench, false),
    };
    let Some(case) = cases.iter().find(|c| c.name == base) else {
        panic!("no benchmark {bench}");
    };
    for _ in 0..n {
        let exchange = Exchange::new(router.clone(), Vec::new());
        let message = case.message.clone();
        let answer = measured(&rt, exchange, message, on_wire.then_some(&case.wire[..]));
        drop(std::hint::black_box(answer));
    }
}

/// One iteration of a benchmark: from the message (or its bytes) to the answer.
#[inline(never)]
fn measured(
    rt: &tokio::runtime::Runtime,
    mut exchange: Exchange,
    message: ProcessingRequest,
    wire: Option<&[u8]>,
) -> (Exchange, Result<ProcessingResponse, Vec<u8>>) {
    let answer = match wire {
        Some(wire) => Err(rt.block_on(handle_wire(&mut exchange, wire))),
        None => Ok(rt.block_on(handle(&mut exchange, message))),
    };
    (exchange, answer)
}

criterion_group!(benches, bench);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, bench, n] = &args[..] {
        if mode == "profile" {
            profile(bench, n.parse().expect("a count"));
            return;
        }
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
