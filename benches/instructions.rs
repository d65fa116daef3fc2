//! Fixed-count driver for instruction counting under callgrind (repeatable where
//! wall-clock benches are too noisy):
//! - `metrics` / `no_metrics`: N two-message streams through the bench's
//!   three-processor chain, with or without metrics;
//! - `six`: N four-message exchanges of a 1 KiB POST through the load kit's six
//!   processors (trivial, timer, digest, jwt_auth with a cached token, context_check,
//!   echo), observed by metrics as the server does: where the gateway's time goes.
//!
//! benches/metrics_cost.sh and benches/chain_cost.sh run it; by hand:
//! valgrind --tool=callgrind target/release/deps/instructions-* six 2000

mod support;

use bytes::Bytes;
use extproc_gateway::config::GatewayConfig;
use extproc_gateway::metrics::Metrics;
use extproc_gateway::testing::Driver;
use support::{router, REQUEST, RESPONSE};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    match mode.as_str() {
        "metrics" => streams(true, n),
        "no_metrics" => streams(false, n),
        "six" => six(n),
        // `cargo test --benches` runs it without arguments: a few of each, to check
        // it still works.
        "" => {
            streams(false, 10);
            streams(true, 10);
            six(10);
        }
        // `cargo bench` runs every bench target with `--bench`: nothing to do.
        _ => {}
    }
}

fn six(n: usize) {
    // Logging as the server installs it (INFO and above, to stderr): the processors'
    // DEBUG spans are then disabled at their call sites, as when serving.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .try_init();
    let yaml = format!(
        "routes:\n  - name: all-six\n    processors: [trivial, timer, digest, {{jwt_auth: {{jwks_file: '{}'}}}}, context_check, echo]\n",
        support::example("jwt/jwks.json").display()
    );
    let metrics = Metrics::new();
    let router = GatewayConfig::parse(&yaml, "six.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
        .build_router_observed(Some(&metrics))
        .unwrap_or_else(|(at, e)| panic!("{at}: {e}"));
    let auth = format!("Bearer {}", support::token());
    let id = format!("ctx-1-{}", ".".repeat(1018));
    let body = Bytes::from(id.clone());
    let request = [
        (":method", "POST"),
        (":path", "/load/1"),
        (":authority", "127.0.0.1"),
        (":scheme", "http"),
        ("x-request-id", "5b1c8a3e-9d0f-4f3a-8c7e-2a6b9d1e0f42"),
        ("authorization", auth.as_str()),
        ("x-tenant-id", "acme"),
        ("x-context-id", id.as_str()),
        ("content-type", "text/plain"),
        ("content-length", "1024"),
    ];
    let echoed =
        Bytes::from_static(br#"{"method":"POST","path":"/load/1","headers":{},"body":"x"}"#);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for _ in 0..n {
            let mut d = Driver::with_router(router.clone());
            let answers = [
                d.request_headers(&request, false).await,
                d.request_body(body.clone(), true).await,
                d.response_headers(
                    &[(":status", "200"), ("content-type", "application/json")],
                    false,
                )
                .await,
                d.response_body(echoed.clone(), true).await,
            ];
            for answer in answers {
                let answer = answer.expect("an answer");
                assert!(answer.immediate.is_none(), "refused: {answer:?}");
            }
        }
    });
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
