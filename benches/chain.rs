//! What the gateway costs per ext_proc message, in process (no network): one
//! request-headers message and one response-headers message through the state
//! machine, the chain and the protobuf encoding, for a three-processor chain with and
//! without metrics (handles resolved at chain build, as the server does).
//!
//! cargo bench --bench chain

mod support;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use extproc_gateway::metrics::Metrics;
use extproc_gateway::testing::Driver;
use support::{router, REQUEST, RESPONSE};

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
