//! The gateway as a library: a processor written here, chained with built-ins, served
//! in process with `server::serve_routes` and driven through real Envoy.

mod common;

use std::sync::Arc;

use common::*;
use extproc_gateway::config::GatewayConfig;
use extproc_gateway::metrics::Metrics;
use extproc_gateway::prelude::*;
use extproc_gateway::processors::Trivial;
use extproc_gateway::router::{Route, RouteMatch, Router};
use extproc_gateway::server;

/// Refuses requests without a tenant; counts requests per stream in typed state.
struct RequireTenant;

#[derive(Default)]
struct Seen {
    phases: u32,
}

impl Processor for RequireTenant {
    type State = Seen;

    fn name(&self) -> &str {
        "require_tenant"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::HEADERS
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        seen: &mut Seen,
        h: &HeadersPhase,
        out: &mut Mutations,
    ) -> Flow {
        seen.phases += 1;
        match h.headers.get_str("x-tenant-id") {
            Some(t) if !t.is_empty() => {
                out.set("x-tenant-checked", t.to_string());
                Flow::Continue
            }
            _ => Flow::Respond(ImmediateResponse::json_error(
                400,
                "x-tenant-id is required",
            )),
        }
    }

    async fn on_response_headers(
        &self,
        _: &mut RequestCtx,
        seen: &mut Seen,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> Flow {
        seen.phases += 1;
        out.set("x-phases-seen", seen.phases.to_string());
        Flow::Continue
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_of_your_own_served_through_envoy() {
    let Some(bin) = envoy_bin() else { return };
    let metrics = Metrics::new();
    let chain = Chain::builder()
        .observe(&metrics, "custom")
        .processor(RequireTenant)
        .processor(Trivial)
        .build();
    let router = Router::new(vec![Route {
        name: Arc::from("custom"),
        matcher: RouteMatch::default(),
        chain,
        metrics: Some(metrics.route("custom")),
    }]);
    let mut config = GatewayConfig::embedded().expect("default config");
    config.routes.clear();
    config.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.server.admin_addr = "127.0.0.1:0".parse().unwrap();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve_routes(
        config,
        router,
        metrics,
        async {
            let _ = stop_rx.await;
        },
        move |b| {
            let _ = bound_tx.send(b);
        },
    ));
    let bound = bound_rx.await.expect("bound");
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(
        &bin,
        &EnvoySpec::default(),
        bound.grpc.port(),
        upstream.port,
    )
    .await;
    let c = client();

    let r = send(
        &c,
        envoy.port,
        "GET",
        "/x",
        &[("x-tenant-id", "acme"), ("x-request-id", "r9")],
        empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    let up = r.echoed();
    assert_eq!(
        up.headers.get("x-tenant-checked").map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        up.headers.get("x-extra-request-id").map(String::as_str),
        Some("r9")
    );
    assert_eq!(
        r.header("x-phases-seen"),
        Some("2"),
        "typed state kept across phases"
    );
    assert_eq!(
        r.header("x-ext-procs-applied"),
        Some("require_tenant,trivial")
    );

    let hits = upstream.hits();
    let r = send(&c, envoy.port, "GET", "/x", &[], empty()).await;
    assert_eq!(r.status, 400);
    assert_eq!(upstream.hits(), hits);
    assert_eq!(r.header("x-ext-procs-applied"), Some("require_tenant"));

    let (_, m) = http_get(bound.admin.port(), "/metrics")
        .await
        .expect("metrics");
    assert!(m.contains(
        r#"extproc_immediate_responses_total{processor="require_tenant",route="custom",status="400"} 1"#
    ), "{m}");
    let _ = stop_tx.send(());
    server.await.expect("join").expect("served");
}
