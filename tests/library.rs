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

/// Routes built in code, served in process on free ports (the library's entry point).
struct Served {
    bound: server::Bound,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    async fn start(router: Router, metrics: Arc<Metrics>) -> Served {
        let mut config = GatewayConfig::embedded().expect("default config");
        config.routes.clear();
        config.server.grpc_addr = "127.0.0.1:0".parse().unwrap();
        config.server.admin_addr = "127.0.0.1:0".parse().unwrap();
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve_routes(
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
        Served { bound, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("join").expect("served");
    }
}

/// Refuses requests without a tenant; counts requests per stream in typed state.
struct RequireTenant;

#[derive(Default)]
struct Seen {
    phases: u32,
}

impl Processor for RequireTenant {
    type State = Seen;

    fn new_state(&self) -> Seen {
        Seen::default()
    }

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
    ) -> HookResult {
        seen.phases += 1;
        Ok(match h.headers.get_str("x-tenant-id") {
            Some(t) if !t.is_empty() => {
                out.set("x-tenant-checked", t.to_string());
                Flow::Continue
            }
            _ => Flow::Respond(ImmediateResponse::json_error(
                400,
                "x-tenant-id is required",
            )),
        })
    }

    async fn on_response_headers(
        &self,
        _: &mut RequestCtx,
        seen: &mut Seen,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        seen.phases += 1;
        out.set("x-phases-seen", seen.phases.to_string());
        Ok(Flow::Continue)
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
        .build()
        .unwrap();
    let router = Router::new(vec![Route {
        name: Arc::from("custom"),
        matcher: RouteMatch::default(),
        chain,
        metrics: Some(metrics.route("custom")),
    }]);
    let served = Served::start(router, metrics).await;
    let bound = served.bound.clone();
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(
        &bin,
        &EnvoySpec::default(),
        bound.grpc.port().expect("a TCP gRPC address"),
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
    served.stop().await;
}

/// Takes longer than Envoy's `message_timeout` on request headers; when told to,
/// first asks Envoy to wait longer (`override_message_timeout`).
struct Slow {
    extend: bool,
}

impl Processor for Slow {
    type State = ();

    fn new_state(&self) {}

    fn name(&self) -> &str {
        "slow"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::REQUEST_HEADERS
    }

    async fn on_request_headers(
        &self,
        ctx: &mut RequestCtx,
        _: &mut (),
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        if self.extend {
            let sent = ctx.extend_message_timeout(std::time::Duration::from_secs(3));
            out.set("x-extension-sent", sent.to_string());
        }
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        Ok(Flow::Continue)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_can_extend_envoys_message_timeout() {
    let Some(bin) = envoy_bin() else { return };
    let metrics = Metrics::new();
    let route = |name: &str, extend: bool, header: Option<&str>| Route {
        name: Arc::from(name),
        matcher: RouteMatch {
            headers: header
                .map(|h| {
                    vec![(
                        h.to_string(),
                        extproc_gateway::router::ValueMatch::Present(true),
                    )]
                })
                .unwrap_or_default(),
            ..RouteMatch::default()
        },
        chain: Chain::builder()
            .observe(&metrics, name)
            .processor(Slow { extend })
            .build()
            .unwrap(),
        metrics: Some(metrics.route(name)),
    };
    let router = Router::new(vec![
        route("extends", true, Some("x-extend")),
        route("waits", false, None),
    ]);
    let served = Served::start(router, metrics).await;
    let bound = served.bound.clone();
    let upstream = Upstream::start().await;
    // Envoy waits 200 ms for an answer, and accepts extensions up to 5 s. Its
    // listener and admin bind port 0.
    let config = envoy_config(
        &EnvoySpec::default(),
        0,
        0,
        bound.grpc.port().expect("a TCP gRPC address"),
        upstream.port,
    )
    .replace(
        "message_timeout: 2s\n",
        "message_timeout: 0.2s\n              max_message_timeout: 5s\n",
    );
    assert!(config.contains("max_message_timeout: 5s"), "{config}");
    let envoy = Envoy::start_any_ports(&bin, config).await;
    let port = envoy.listener_port("ingress").await;
    let c = client();

    // Without an extension Envoy gives up after 200 ms.
    let r = send(&c, port, "GET", "/slow", &[], empty()).await;
    assert_ne!(r.status, 200, "{r:?}");
    assert!(envoy.ext_proc_stat("message_timeouts").await >= 1);

    // With one, it waits for the 700 ms answer.
    let r = send(&c, port, "GET", "/slow", &[("x-extend", "1")], empty()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.echoed()
            .headers
            .get("x-extension-sent")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(
        envoy
            .ext_proc_stat("override_message_timeout_received")
            .await,
        1
    );
    assert_eq!(
        envoy
            .ext_proc_stat("override_message_timeout_ignored")
            .await,
        0
    );
    assert_eq!(envoy.ext_proc_stat("spurious_msgs_received").await, 0);
    served.stop().await;
}
