//! What the gateway costs per ext_proc message, in process (no network): one
//! request-headers message and one response-headers message through the state
//! machine, the chain and the protobuf encoding, for a three-processor chain with and
//! without metrics (handles resolved at chain build, as the server does).
//!
//! cargo bench --bench chain

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use extproc_gateway::metrics::Metrics;
use extproc_gateway::prelude::*;
use extproc_gateway::processors::{Digest, Timer, Trivial};
use extproc_gateway::router::{Route, RouteMatch, Router};
use extproc_gateway::testing::Driver;

const REQUEST: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/items/42?full=1"),
    (":authority", "api.example.com"),
    (":scheme", "https"),
    ("x-request-id", "5b1c8a3e-9d0f-4f3a-8c7e-2a6b9d1e0f42"),
    ("user-agent", "bench/1.0"),
    ("accept", "application/json"),
    ("x-tenant-id", "acme"),
];
const RESPONSE: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/json")];

fn router(metrics: Option<&Arc<Metrics>>) -> Router {
    let mut chain = Chain::builder();
    if let Some(m) = metrics {
        chain = chain.observe(m, "bench");
    }
    let chain = chain
        .processor(Trivial)
        .processor(Timer)
        .processor(Digest::default())
        .build();
    Router::new(vec![Route {
        name: Arc::from("bench"),
        matcher: RouteMatch::default(),
        chain,
        metrics: metrics.map(|m| m.route("bench")),
    }])
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let metrics = Metrics::new();
    let plain = router(None);
    let observed = router(Some(&metrics));
    let mut group = c.benchmark_group("two_messages");
    for (name, router) in [("no_metrics", &plain), ("metrics", &observed)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || Driver::with_router(router.clone()),
                |mut d| {
                    rt.block_on(async {
                        d.request_headers(REQUEST, true).await.expect("answer");
                        d.response_headers(RESPONSE, true).await.expect("answer");
                    });
                    d
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
