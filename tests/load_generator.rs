//! The bundled load generator (`benches/extproc-load`) against the gateway binary:
//! every exchange of the embedded default chain and of a `jwt_auth` chain is answered
//! phase by phase with the right kinds, under concurrency, with bodies whole or
//! streamed, Envoy's `allow_mode_override` on or off; and the generator reads the
//! gateway's CPU time.

mod common;

#[path = "fixtures/jwt/helpers.rs"]
mod jwt_helpers;

use std::time::Duration;

use common::*;
use extproc_load::{BodyMode, ExchangeSpec, LoadSpec, Stop};

fn exchange(mode: BodyMode, allow_mode_override: bool) -> ExchangeSpec {
    ExchangeSpec {
        method: "POST".into(),
        path: "/upload".into(),
        authority: "load.test".into(),
        headers: vec![("x-tenant-id".into(), "acme".into())],
        request_headers: true,
        response_headers: true,
        request_body_bytes: 3000,
        response_body_bytes: 1024,
        request_body_mode: mode,
        response_body_mode: mode,
        chunk_bytes: 1000,
        request_trailers: false,
        response_trailers: false,
        allow_mode_override,
        metadata: vec![],
        timeout: Duration::from_secs(10),
    }
}

fn load(gateway: &Gateway, exchange: ExchangeSpec) -> LoadSpec {
    LoadSpec {
        target: format!("http://127.0.0.1:{}", gateway.grpc_port),
        connections: 2,
        concurrency: 8,
        stop: Stop::Requests(200),
        rate: None,
        warmup: Duration::ZERO,
        progress: false,
        server_pid: Some(gateway.pid()),
        exchange,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_chain_answers_every_phase_in_order_under_load() {
    let gateway = Gateway::start_without_config().await;
    for mode in [BodyMode::Buffered, BodyMode::Streamed] {
        for allow in [false, true] {
            let report = extproc_load::run(&load(&gateway, exchange(mode, allow)))
                .await
                .unwrap();
            let label = format!("{mode:?} override={allow}");
            assert_eq!(report.errors, 0, "{label}\n{}", report.table());
            assert_eq!(report.completed, 200, "{label}\n{}", report.table());
            // Streamed: request headers, 3 chunks of the 3000-byte body, response
            // headers, 2 chunks of the 1024-byte one. With the override allowed, the
            // gateway asks for whole bodies (echo and context_check read them whole):
            // one message each.
            let want = match (mode, allow) {
                (BodyMode::Streamed, false) => 7.0,
                _ => 4.0,
            };
            assert_eq!(report.messages_per_exchange, want, "{label}");
            assert!(
                report.server_cpu_s.is_some_and(|s| s > 0.0),
                "{label}\n{}",
                report.table()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_chain_refuses_without_a_token_and_passes_with_one() {
    let config = format!(
        "routes:\n  - name: api\n    processors:\n      - jwt_auth: {{jwks_file: '{}', issuer: '{}', audiences: ['{}']}}\n      - trivial\n",
        jwt_helpers::example("jwks.json").display(),
        jwt_helpers::ISSUER,
        jwt_helpers::AUDIENCE
    );
    let gateway = Gateway::start(&config).await;
    let refused = extproc_load::run(&load(&gateway, exchange(BodyMode::Buffered, true)))
        .await
        .unwrap();
    assert_eq!(refused.errors, 0, "{}", refused.table());
    assert_eq!(
        refused.immediate.get(&401),
        Some(&200),
        "{}",
        refused.table()
    );
    let token = jwt_helpers::Signer::example_rsa().sign(&jwt_helpers::good_claims());
    let mut with_token = exchange(BodyMode::Buffered, true);
    with_token
        .headers
        .push(("authorization".into(), format!("Bearer {token}")));
    let passed = extproc_load::run(&load(&gateway, with_token))
        .await
        .unwrap();
    assert_eq!(passed.errors, 0, "{}", passed.table());
    assert_eq!(passed.completed, 200, "{}", passed.table());
    // jwt_auth and trivial need headers only: with the override allowed, the gateway
    // asks for no bodies.
    assert_eq!(passed.messages_per_exchange, 2.0, "{}", passed.table());
}
