//! A gateway with a processor of your own, in front of the built-ins.
//!
//! `RequireTenant` refuses requests without `x-tenant-id` (400) and tags the others
//! with the tenant's tier; `trivial` and `timer` follow. Run it, then point Envoy at
//! 127.0.0.1:50051 (see envoy.yaml):
//!
//!     cargo run --example custom_processor
//!
//! Metrics and the dashboard are on http://127.0.0.1:9180/dashboard as usual.

use std::sync::Arc;

use extproc_gateway::config::GatewayConfig;
use extproc_gateway::metrics::Metrics;
use extproc_gateway::prelude::*;
use extproc_gateway::processors::{Timer, Trivial};
use extproc_gateway::router::{Route, RouteMatch, Router};
use extproc_gateway::server;

/// Refuses requests without a tenant; tells the upstream which tier the tenant is on.
pub struct RequireTenant {
    premium: Vec<String>,
}

impl Processor for RequireTenant {
    type State = ();

    fn new_state(&self) {}

    fn name(&self) -> &str {
        "require_tenant"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::REQUEST_HEADERS
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        _: &mut (),
        h: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        let Some(tenant) = h.headers.get_str("x-tenant-id").filter(|t| !t.is_empty()) else {
            return Ok(Flow::Respond(ImmediateResponse::json_error(
                400,
                "x-tenant-id is required",
            )));
        };
        let tier = if self.premium.iter().any(|p| p == tenant) {
            "premium"
        } else {
            "standard"
        };
        out.set("x-tenant-tier", tier);
        Ok(Flow::Continue)
    }
}

/// The routes: every request through RequireTenant, trivial and timer.
pub fn routes(metrics: &Arc<Metrics>) -> Router {
    let chain = Chain::builder()
        .observe(metrics, "tenants")
        .processor(RequireTenant {
            premium: vec!["acme".into()],
        })
        .processor(Trivial)
        .processor(Timer)
        .build()
        .unwrap();
    Router::new(vec![Route {
        name: Arc::from("tenants"),
        matcher: RouteMatch::default(),
        chain,
        metrics: Some(metrics.route("tenants")),
    }])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = extproc_gateway::telemetry::init("info");
    // Server settings (addresses, limits) from the embedded default; routes from code.
    let mut config = GatewayConfig::embedded()?;
    config.routes.clear();
    let metrics = Metrics::new();
    let router = routes(&metrics);
    server::serve_routes(
        config,
        router,
        metrics,
        server::shutdown_signal(),
        |bound| println!("serving ext_proc on {} (admin {})", bound.grpc, bound.admin),
    )
    .await
}
