//! Micro-benchmarks of the parts one message goes through, in process:
//! - `phase/*`: the embedded default chain, one phase message at a time (the earlier
//!   phases are sent outside the measurement);
//! - `processor/*`: each built-in alone on a route, through a whole POST exchange
//!   (request headers and a 1 KiB body, response headers and a 1 KiB body);
//! - `wire/*`: the protobuf boundary, decoding a request-headers message and encoding
//!   an answer with three header writes;
//! - `metrics/*`: observing one message, and rendering `/metrics` for ten routes.
//!
//!   cargo bench --bench phases
//!
//! The test command runs every benchmark here once (`cargo test --benches`), so none
//! of them can rot.

mod support;

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use extproc_gateway::config::GatewayConfig;
use extproc_gateway::metrics::Metrics;
use extproc_gateway::modes::{BodyMode, BodyModes};
use extproc_gateway::prelude::*;
use extproc_gateway::proto::{core, ext_proc};
use extproc_gateway::router::Router;
use extproc_gateway::testing::Driver;
use extproc_gateway::wire::{self, Outbound};
use support::{REQUEST, RESPONSE};

const POST: &[(&str, &str)] = &[
    (":method", "POST"),
    (":path", "/items"),
    (":authority", "api.example.com"),
    (":scheme", "https"),
    ("x-request-id", "5b1c8a3e-9d0f-4f3a-8c7e-2a6b9d1e0f42"),
    ("content-type", "application/json"),
    ("content-length", "1024"),
    ("x-tenant-id", "acme"),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn body() -> Bytes {
    Bytes::from(vec![b'x'; 1024])
}

/// The phases of a POST exchange, in order.
#[derive(Clone, Copy)]
enum Step {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
}

const STEPS: [(Step, &str); 4] = [
    (Step::RequestHeaders, "request_headers"),
    (Step::RequestBody, "request_body"),
    (Step::ResponseHeaders, "response_headers"),
    (Step::ResponseBody, "response_body"),
];

async fn send(d: &mut Driver, step: Step, headers: &[(&str, &str)]) {
    let answer = match step {
        Step::RequestHeaders => d.request_headers(headers, false).await,
        Step::RequestBody => d.request_body(body(), true).await,
        Step::ResponseHeaders => d.response_headers(RESPONSE, false).await,
        Step::ResponseBody => d.response_body(body(), true).await,
    };
    let answer = answer.expect("an answer");
    assert!(answer.immediate.is_none(), "refused: {answer:?}");
}

fn router(yaml: &str) -> Router {
    GatewayConfig::parse(yaml, "bench.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
        .build_router()
        .unwrap_or_else(|(at, e)| panic!("{at}: {e}"))
}

fn phases(c: &mut Criterion) {
    let rt = runtime();
    let router = GatewayConfig::embedded()
        .expect("the embedded config")
        .build_router()
        .expect("its router");
    let mut group = c.benchmark_group("phase");
    for (i, (step, name)) in STEPS.iter().enumerate() {
        group.bench_function(*name, |b| {
            b.iter_batched(
                || {
                    let mut d = Driver::with_router(router.clone());
                    rt.block_on(async {
                        for (earlier, _) in &STEPS[..i] {
                            send(&mut d, *earlier, POST).await;
                        }
                    });
                    d
                },
                |mut d| {
                    rt.block_on(send(&mut d, *step, POST));
                    d
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn processors(c: &mut Criterion) {
    let rt = runtime();
    let jwks = support::example("jwt/jwks.json");
    let auth = format!("Bearer {}", support::token());
    let mut with_token: Vec<(&str, &str)> = POST.to_vec();
    with_token.push(("authorization", &auth));
    let cases = [
        ("trivial", "trivial".to_string()),
        ("timer", "timer".to_string()),
        ("digest", "digest".to_string()),
        ("context_check", "context_check".to_string()),
        ("echo", "echo".to_string()),
        (
            "headers",
            "'headers': {request: {set: {x-a: b}}, response: {set: {x-b: c}}}".to_string(),
        ),
        ("instructions", "instructions".to_string()),
        (
            "jwt_auth",
            format!("jwt_auth: {{jwks_file: '{}'}}", jwks.display()),
        ),
    ];
    let mut group = c.benchmark_group("processor");
    for (name, entry) in cases {
        let router = router(&format!(
            "routes:\n  - name: bench\n    processors:\n      - {entry}\n"
        ));
        let headers: &[(&str, &str)] = if name == "jwt_auth" {
            &with_token
        } else {
            POST
        };
        group.bench_function(name, |b| {
            b.iter_batched(
                || Driver::with_router(router.clone()),
                |mut d| {
                    rt.block_on(async {
                        for (step, _) in STEPS {
                            send(&mut d, step, headers).await;
                        }
                    });
                    d
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn boundary(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    let message = ext_proc::ProcessingRequest {
        request: Some(ext_proc::processing_request::Request::RequestHeaders(
            ext_proc::HttpHeaders {
                headers: Some(core::HeaderMap {
                    headers: REQUEST
                        .iter()
                        .map(|(k, v)| core::HeaderValue {
                            key: (*k).to_string(),
                            raw_value: Bytes::copy_from_slice(v.as_bytes()),
                            ..Default::default()
                        })
                        .collect(),
                }),
                end_of_stream: true,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    group.bench_function("decode_request_headers", |b| {
        b.iter_batched(
            || message.clone(),
            |m| wire::decode(m).expect("decodes"),
            BatchSize::SmallInput,
        )
    });
    let phase = Phase::RequestHeaders(HeadersPhase {
        headers: REQUEST.iter().copied().collect(),
        end_of_stream: true,
    });
    let modes = BodyModes {
        request: BodyMode::None,
        response: BodyMode::None,
    };
    group.bench_function("encode_three_header_writes", |b| {
        b.iter_batched(
            || {
                let mut m = Mutations::new();
                m.set("x-ext-proc-trivial", "5b1c8a3e-9d0f-4f3a-8c7e-2a6b9d1e0f42");
                m.set("x-request-start", "2026-11-26T04:00:00.000000Z");
                m.remove("x-internal");
                Outbound::answer(&phase, Flow::Continue, m, modes, None)
            },
            wire::encode,
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn metrics(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("metrics");
    let route = metrics.route("bench");
    group.bench_function("observe_message", |b| {
        b.iter(|| route.message(PhaseKind::RequestHeaders, Duration::from_micros(20)))
    });
    let processor = metrics.processor("bench", "trivial");
    group.bench_function("observe_hook", |b| {
        b.iter(|| processor.hook(PhaseKind::RequestHeaders, Duration::from_micros(3)))
    });
    for r in 0..10 {
        let route = metrics.route(&format!("route{r}"));
        for name in [
            "trivial",
            "timer",
            "digest",
            "context_check",
            "echo",
            "jwt_auth",
        ] {
            let p = metrics.processor(&format!("route{r}"), name);
            for kind in PhaseKind::ALL {
                p.hook(kind, Duration::from_micros(5));
                route.message(kind, Duration::from_micros(20));
            }
        }
    }
    group.bench_function("render_ten_routes", |b| b.iter(|| metrics.render()));
    group.finish();
}

criterion_group!(benches, phases, processors, boundary, metrics);
criterion_main!(benches);
