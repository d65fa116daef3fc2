//! Fixed-count driver for instruction counting under callgrind (repeatable where
//! wall-clock benches are too noisy): runs N two-message streams through the bench's
//! three-processor chain, with or without metrics.
//!
//! benches/metrics_cost.sh runs it; by hand:
//! valgrind --tool=callgrind target/release/deps/instructions-* metrics 2000

mod support;

use extproc_gateway::metrics::Metrics;
use extproc_gateway::testing::Driver;
use support::{router, REQUEST, RESPONSE};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let runs: &[(bool, usize)] = match mode.as_str() {
        "metrics" => &[(true, n)],
        "no_metrics" => &[(false, n)],
        // `cargo test --benches` runs it without arguments: a few streams each way, to
        // check it still works.
        "" => &[(false, 10), (true, 10)],
        // `cargo bench` runs every bench target with `--bench`: nothing to do.
        _ => return,
    };
    for &(observed, n) in runs {
        streams(observed, n);
    }
}

fn streams(observed: bool, n: usize) {
    let metrics = Metrics::new();
    let router = router(observed.then_some(&metrics));
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
