//! Fixed-count driver for instruction counting under callgrind (repeatable where
//! wall-clock benches are too noisy): runs N two-message streams through the bench's
//! three-processor chain, with or without metrics.
//!
//! benches/metrics_cost.sh --instructions runs it; by hand:
//! valgrind --tool=callgrind target/release/deps/instructions-* metrics 2000

use std::sync::Arc;

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

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let metrics = Metrics::new();
    let observed = match mode.as_str() {
        "metrics" => true,
        "no_metrics" => false,
        // `cargo bench` runs every bench target with `--bench`: nothing to do.
        _ => return,
    };
    let mut chain = Chain::builder();
    if observed {
        chain = chain.observe(&metrics, "bench");
    }
    let chain = chain
        .processor(Trivial)
        .processor(Timer)
        .processor(Digest::default())
        .build();
    let router = Router::new(vec![Route {
        name: Arc::from("bench"),
        matcher: RouteMatch::default(),
        chain,
        metrics: observed.then(|| metrics.route("bench")),
    }]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for _ in 0..n {
            let mut d = Driver::with_router(router.clone());
            d.request_headers(REQUEST, true).await.expect("answer");
            d.response_headers(RESPONSE, true).await.expect("answer");
        }
    });
}
