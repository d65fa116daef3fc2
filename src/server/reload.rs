//! Config reload on SIGHUP: the new routes are built whole, then swapped in with one
//! pointer write; open streams keep the routes they started with.

use std::sync::Arc;

use super::Reload;
use crate::live::{ConfigHandle, RouterHandle};
use crate::metrics::Metrics;

/// Applies one reload: load, build, swap; on any error keep what runs.
pub fn apply(
    reload: &Reload,
    served: &ConfigHandle,
    routes: &RouterHandle,
    metrics: &Arc<Metrics>,
) {
    let config = match reload() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; keeping the running config");
            return;
        }
    };
    // Server settings, request metrics included, stay as started.
    let observed = served.current().server.request_metrics.then_some(metrics);
    let router = match config.build_router_observed(observed) {
        Ok(r) => r,
        Err((field, msg)) => {
            tracing::error!(field = %field, error = %msg, "config reload failed; keeping the running config");
            return;
        }
    };
    if config.server != served.current().server {
        tracing::warn!("server settings changed; they take effect on restart");
    }
    let count = router.routes().len();
    routes.replace(router);
    served.replace(config);
    tracing::info!(routes = count, "config reloaded");
}

/// Reloads on every SIGHUP until the task is aborted.
pub async fn on_sighup(
    reload: Reload,
    served: ConfigHandle,
    routes: RouterHandle,
    metrics: Arc<Metrics>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP; config reload disabled");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading config");
            apply(&reload, &served, &routes, &metrics);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reload, served, routes, metrics);
    }
}
