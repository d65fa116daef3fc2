//! What a client's header edits cost the gateway per request-headers message, in
//! process: a new stream's first message through the state machine and a chain of
//! `instructions` then `trivial`.
//!
//! - `instructions_60k`: a 60 KiB `instructions` header, about 1,400 `addHeaders` and
//!   as many `removeHeaders` (the most Envoy forwards: its default header limit is
//!   60 KiB), the case that was quadratic before the mutation builder was indexed.
//!   The message goes in and the answer comes out as protobuf structs: what the
//!   gateway does, without the gRPC codec every ext_proc server runs;
//! - `instructions_60k_wire`: the same from protobuf bytes to protobuf bytes (plus
//!   prost's decode and encode of the 60 KiB message and its ~2,800-entry answer);
//! - `instructions_small`: a typical request with a two-edit header, where the index
//!   must cost nothing.
//!
//! cargo bench --bench mutations
//! benches/mutations_cost.sh compares it with an older revision (interleaved rounds).
//! Uses only API that predates the indexed builder, so the same file runs on both.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use extproc_gateway::prelude::*;
use extproc_gateway::processors::{HeaderInstructions, Trivial};
use extproc_gateway::proto::ext_proc::{processing_request, HttpHeaders, ProcessingRequest};
use extproc_gateway::router::{Route, RouteMatch, Router};
use extproc_gateway::server::{Exchange, Handled};
use extproc_gateway::testing::{header_map, Driver};
use prost::Message;

/// Envoy's default `max_request_headers_kb`.
const LIMIT: usize = 60 * 1024;

/// `{"addHeaders": {"x-add-00000": "value-00000", ...}, "removeHeaders": ["x-remove-00000", ...]}`
/// as large as fits in 60 KiB, with as many removals as additions.
fn large_instructions() -> (String, usize) {
    // The size grows with n: find the largest n that fits by bisection.
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

fn instructions(n: usize) -> String {
    let add: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| (format!("x-add-{i:05}"), format!("value-{i:05}").into()))
        .collect();
    let remove: Vec<String> = (0..n).map(|i| format!("x-remove-{i:05}")).collect();
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
async fn handle(exchange: &mut Exchange, message: ProcessingRequest) -> Handled {
    exchange.handle(message).await.expect("handled")
}

/// The same from protobuf bytes to protobuf bytes, as the gRPC codec sees it.
async fn handle_wire(exchange: &mut Exchange, wire: &[u8]) -> Vec<u8> {
    let message = ProcessingRequest::decode(wire).expect("a ProcessingRequest");
    match handle(exchange, message).await {
        Handled::Reply(answer) => answer.encode_to_vec(),
        _ => panic!("one answer expected"),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let chain = Chain::builder()
        .processor(HeaderInstructions)
        .processor(Trivial)
        .build();
    let router = Arc::new(Router::new(vec![Route {
        name: Arc::from("bench"),
        matcher: RouteMatch::default(),
        chain: chain.clone(),
        metrics: None,
    }]));
    let (large, n) = large_instructions();
    let small = r#"{"addHeaders": {"x-tenant": "acme"}, "removeHeaders": ["x-remove-00001"]}"#;
    let mut group = c.benchmark_group("mutations");
    for (name, json, writes) in [
        ("instructions_60k", large.as_str(), n + 1),
        ("instructions_small", small, 2),
    ] {
        let mut headers = BASE.to_vec();
        headers.push(("instructions", json));
        // The answer is the one expected, on every revision compared.
        let answer = rt
            .block_on(Driver::new(chain.clone()).request_headers(&headers, true))
            .expect("answer");
        assert!(answer.immediate.is_none(), "{name}: refused");
        assert_eq!(answer.set.len(), writes, "{name}: header writes");
        let wire = request_headers(&headers);
        let message = ProcessingRequest::decode(&wire[..]).expect("a ProcessingRequest");
        group.bench_function(name, |b| {
            b.iter_batched(
                || (Exchange::new(router.clone(), Vec::new()), message.clone()),
                |(mut exchange, message)| {
                    let answer = rt.block_on(handle(&mut exchange, message));
                    (exchange, answer)
                },
                BatchSize::SmallInput,
            )
        });
        if name == "instructions_60k" {
            group.bench_function("instructions_60k_wire", |b| {
                b.iter_batched(
                    || Exchange::new(router.clone(), Vec::new()),
                    |mut exchange| {
                        let answer = rt.block_on(handle_wire(&mut exchange, &wire));
                        (exchange, answer)
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
