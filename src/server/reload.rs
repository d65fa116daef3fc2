//! Config reload, on SIGHUP and (with `server.config_reload_interval`) when the file
//! changes: the new routes are built whole, then swapped in with one pointer write;
//! open streams keep the routes they started with.

use std::sync::Arc;
use std::time::Duration;

use super::Reload;
use crate::config::GatewayConfig;
use crate::live::{ConfigHandle, RouterHandle};
use crate::metrics::Metrics;

/// What a reload needs: where the config comes from, and what it replaces.
#[derive(Clone)]
pub struct Reloader {
    pub reload: Arc<Reload>,
    pub served: ConfigHandle,
    pub routes: RouterHandle,
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// Applies one reload: load, build, swap; on any error keep what runs.
    pub fn apply(&self) {
        match (self.reload)() {
            Ok(config) => {
                self.install(config);
            }
            Err(e) => {
                self.metrics.config_reload(false);
                tracing::error!(error = %e, "config reload failed; keeping the running config");
            }
        }
    }

    /// Builds `config`'s routes and swaps them in; on a build error keeps what runs
    /// and says so (false).
    fn install(&self, config: GatewayConfig) -> bool {
        // Server settings, request metrics included, stay as started.
        let observed = self
            .served
            .current()
            .server
            .request_metrics
            .then_some(&self.metrics);
        let router = match config.build_router_observed(observed) {
            Ok(r) => r,
            Err((field, msg)) => {
                self.metrics.config_reload(false);
                tracing::error!(field = %field, error = %msg, "config reload failed; keeping the running config");
                return false;
            }
        };
        if config.server != self.served.current().server {
            tracing::warn!("server settings changed; they take effect on restart");
        }
        let count = router.routes().len();
        self.routes.replace(router);
        self.served.replace(config);
        self.metrics.config_reload(true);
        tracing::info!(routes = count, "config reloaded");
        true
    }

    /// Reloads on every SIGHUP until the task is aborted.
    pub async fn on_sighup(self) {
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
                self.apply();
            }
        }
        #[cfg(not(unix))]
        {
            let _ = self;
        }
    }

    /// Every `interval`, loads the config again and reloads when it differs from the
    /// one served (compared as the config it parses to, so comments, formatting and a
    /// Kubernetes ConfigMap's symlink swap with the same content change nothing). A
    /// config that fails is logged and counted once, until what is read changes again.
    pub async fn on_change(self, interval: Duration) {
        if interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        let mut rejected: Option<Vec<u8>> = None;
        loop {
            tick.tick().await;
            match (self.reload)() {
                Ok(config) => {
                    last_error = None;
                    let seen = fingerprint(&config);
                    if seen == fingerprint(&self.served.current()) || seen == rejected {
                        continue;
                    }
                    tracing::info!("config file changed: reloading config");
                    rejected = if self.install(config) { None } else { seen };
                }
                Err(error) => {
                    rejected = None;
                    if last_error.as_deref() != Some(error.as_str()) {
                        self.metrics.config_reload(false);
                        tracing::error!(%error, "config reload failed; keeping the running config");
                        last_error = Some(error);
                    }
                }
            }
        }
    }
}

/// The config as data, for telling a changed file from the same one read again
/// (`None` only if it cannot be serialized, which then counts as a change).
fn fingerprint(config: &GatewayConfig) -> Option<Vec<u8>> {
    serde_json::to_vec(config).ok()
}
