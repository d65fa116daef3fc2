//! The admin HTTP server (axum): liveness, readiness, Prometheus metrics, the
//! effective config, the routes and the built-in dashboard, on an address of its own
//! (loopback by default) so it is never exposed on the port Envoy talks to. With an
//! admin token set, what describes the gateway (`/config`, `/routes`, `/api/snapshot`)
//! needs it; probes and `/metrics` do not (see [`auth`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use axum::{Json, Router as AxumRouter};
use tokio::net::TcpListener;

use crate::live::{ConfigHandle, Readiness, RouterHandle};
use crate::metrics::{Metrics, Snapshot};
use crate::router::RouteSummary;

pub mod auth;
mod dashboard;

pub use auth::AdminToken;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    config: ConfigHandle,
    routes: RouterHandle,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    token: Option<AdminToken>,
}

impl AdminState {
    /// State over the served config, routes and metrics.
    pub fn new(
        config: ConfigHandle,
        routes: RouterHandle,
        readiness: Readiness,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            routes,
            readiness,
            metrics,
            token: None,
        }
    }

    /// Requires `token` on `/config`, `/routes` and `/api/snapshot`.
    pub fn with_token(mut self, token: Option<AdminToken>) -> Self {
        self.token = token;
        self
    }
}

/// The admin routes. The dashboard's page and assets are open (they hold no data;
/// the page sends the token with its own requests).
pub fn app(state: AdminState) -> AxumRouter {
    let mut guarded = AxumRouter::new()
        .route("/api/snapshot", get(snapshot))
        .route("/routes", get(routes))
        .route("/config", get(config));
    if let Some(token) = state.token.clone() {
        guarded = guarded.route_layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        ));
    }
    AxumRouter::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .route("/admin", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .merge(dashboard::router())
        .with_state(state)
}

/// Serves the admin routes until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "extproc-gateway admin\n\n/dashboard     live latency, rates and errors per route, phase and processor\n/metrics       Prometheus metrics\n/api/snapshot  the dashboard's data (JSON)\n/healthz       alive\n/readyz        ready to serve (503 while starting or draining)\n/routes        routes, their match and chain\n/config        effective config (secrets redacted)\n\nWith an admin token set, /api/snapshot, /routes and /config need\n`Authorization: Bearer <token>`; the dashboard asks for it.\n",
    )
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn snapshot(State(s): State<AdminState>) -> Json<Snapshot> {
    Json(s.metrics.snapshot())
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.readiness.get() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn routes(State(s): State<AdminState>) -> Json<Vec<RouteSummary>> {
    Json(
        s.routes
            .current()
            .routes()
            .iter()
            .map(|r| r.summary())
            .collect(),
    )
}

async fn config(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        s.config.current().to_redacted_yaml(),
    )
}
