//! The ext_proc gRPC server (with gRPC health on the same port), the optional
//! ext_proc-over-HTTP listener (Envoy's `http_service`) through the same routes, the
//! admin server beside them, and graceful shutdown. The gRPC listener is TCP or a Unix
//! socket, optionally with (mutual) TLS whose files are reloaded when they change.

mod exchange;
mod flows;
mod grpc;
mod http_service;
mod inbound;
mod listener;
mod reload;
mod service;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

pub use exchange::ExchangeError;
// The per-stream state machine works on the protobuf boundary's types (`wire`), which
// are not part of the API: public only for the project's own tests and benches.
pub use crate::wire::JsonError;
#[doc(hidden)]
pub use exchange::{Exchange, Handled};
pub use http_service::{HttpService, HttpSettings, STREAM_ID_HEADER};
pub use service::ExtProcService;

use crate::config::{GatewayConfig, ListenAddr};
use crate::limits;
use crate::live::{ConfigHandle, Readiness, RouterHandle};
use crate::metrics::Metrics;
use grpc::ExtProcGrpc;

/// Addresses the gateway actually bound (port 0 in config picks a free one).
#[derive(Debug, Clone)]
pub struct Bound {
    /// ext_proc + gRPC health: a TCP address, or the Unix socket's path.
    pub grpc: ListenAddr,
    /// Admin HTTP.
    pub admin: SocketAddr,
    /// ext_proc over HTTP, when `server.http_addr` is set.
    pub http: Option<SocketAddr>,
}

/// Runs the gateway until `shutdown` resolves, then drains: readiness and gRPC health
/// turn to not-serving, new streams are still served for `server.drain_delay` (so
/// health checks take the gateway out of rotation first), then the listener stops
/// accepting (HTTP/2 GOAWAY on open connections) and in-flight streams get
/// `server.shutdown_grace` to finish. `on_bound` is told the bound addresses.
pub async fn serve(
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
    on_bound: impl FnOnce(Bound) + Send,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let router = config
        .build_router_served(&metrics)
        .map_err(|(field, msg)| anyhow::anyhow!("{field}: {msg}"))?;
    run(config, router, metrics, None, shutdown, on_bound).await
}

/// Where a reload gets the new config (e.g. the file again, with the same overrides).
pub type Reload = Box<dyn Fn() -> Result<GatewayConfig, String> + Send + Sync>;

/// Like [`serve`], and on SIGHUP calls `reload` and swaps in the new routes: chains are
/// built once for the new config, streams already open finish on the routes they
/// started with, new streams get the new ones. A config that fails to load or build
/// is logged and the running one kept. Server settings (addresses, limits) take effect
/// only on restart.
pub async fn serve_with_reload(
    config: GatewayConfig,
    reload: Reload,
    shutdown: impl std::future::Future<Output = ()> + Send,
    on_bound: impl FnOnce(Bound) + Send,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let router = config
        .build_router_served(&metrics)
        .map_err(|(field, msg)| anyhow::anyhow!("{field}: {msg}"))?;
    run(config, router, metrics, Some(reload), shutdown, on_bound).await
}

/// Like [`serve`], for routes built in code (chains with your own processors): the
/// config supplies the server settings (addresses, limits, grace) and is what `/config`
/// shows. Build the chains with [`ChainBuilder::observe`](crate::chain::ChainBuilder::observe)
/// on `metrics` (and give each [`Route`](crate::router::Route) `metrics.route(name)`) to
/// see them in `/metrics` and the dashboard.
pub async fn serve_routes(
    config: GatewayConfig,
    router: crate::router::Router,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send,
    on_bound: impl FnOnce(Bound) + Send,
) -> anyhow::Result<()> {
    run(config, router, metrics, None, shutdown, on_bound).await
}

async fn run(
    config: GatewayConfig,
    router: crate::router::Router,
    metrics: Arc<Metrics>,
    reload: Option<Reload>,
    shutdown: impl std::future::Future<Output = ()> + Send,
    on_bound: impl FnOnce(Bound) + Send,
) -> anyhow::Result<()> {
    let routes = RouterHandle::new(router);
    let readiness = Readiness::default();

    // Files named in the config are read before anything listens, so a bad one stops
    // the start with its name instead of a half-working gateway.
    let (tls, admin_token) = load_files(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config_tls = config.server.tls.clone();

    let grpc_listener =
        listener::GrpcListener::bind(&config.server.grpc_addr, config.server.grpc_socket_mode)
            .await?;
    let admin_listener = TcpListener::bind(config.server.admin_addr)
        .await
        .with_context(|| format!("cannot listen for admin on {}", config.server.admin_addr))?;
    let http_listener = match config.server.http_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for ext_proc over HTTP on {addr}"))?,
        ),
        None => None,
    };
    let bound = Bound {
        grpc: grpc_listener.local_addr()?,
        admin: admin_listener.local_addr()?,
        http: match &http_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        },
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ExtProcGrpc>().await;
    let limit = config.server.max_message_bytes;
    let stream_limits = limits::StreamLimits {
        max_streams: config.server.max_streams,
        idle_timeout: (!config.server.stream_idle_timeout.is_zero())
            .then_some(config.server.stream_idle_timeout),
        max_headers: config.server.max_headers,
        max_header_bytes: config.server.max_header_bytes,
    };
    let refusals = metrics.clone();
    let budget = crate::budget::BodyBudget::counted(
        config.server.max_buffered_bytes,
        config.server.max_buffered_bytes_per_stream,
        Some(Box::new(move |why| {
            refusals.limit_hit(match why {
                crate::budget::OverBudget::Stream => limits::Limit::StreamBuffer,
                crate::budget::OverBudget::Global => limits::Limit::GlobalBuffer,
            })
        })),
    );
    metrics.watch_budget(budget.clone());
    let ext_proc = ExtProcGrpc::new(
        ExtProcService::new(routes.clone(), metrics.clone())
            .with_limits(stream_limits)
            .with_budget(budget),
        limit,
    );
    let per_connection = config.server.max_streams_per_connection;

    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let grace = config.server.shutdown_grace;
    let drain_delay = config.server.drain_delay;
    let http = match http_listener {
        Some(listener) => {
            let service = HttpService::new(
                routes.clone(),
                metrics.clone(),
                readiness.clone(),
                HttpSettings {
                    max_body_bytes: limit,
                    exchange_ttl: config.server.http_exchange_ttl,
                    max_exchanges: config.server.http_max_exchanges,
                },
            )
            .context("cannot start ext_proc over HTTP")?;
            Some(tokio::spawn(http_service::serve(
                listener,
                service,
                wait_for(drain_rx.clone()),
            )))
        }
        None => None,
    };
    let served = ConfigHandle::new(config);
    let tls_handle = tls.as_ref().map(|t| t.handle.clone());
    let tls_watch = tls.map(|t| tokio::spawn(t.watch(metrics.clone())));
    let reload_interval = served.current().server.config_reload_interval;
    let reloaders = reload.map(|reload| {
        let reloader = reload::Reloader {
            reload: Arc::new(reload),
            served: served.clone(),
            routes: routes.clone(),
            metrics: metrics.clone(),
        };
        [
            tokio::spawn(reloader.clone().on_sighup()),
            tokio::spawn(reloader.on_change(reload_interval)),
        ]
    });
    let admin_state =
        crate::admin::AdminState::new(served, routes, readiness.clone(), metrics.clone())
            .with_token(admin_token);
    // The admin server outlives the drain so `/readyz` can report it.
    let admin = tokio::spawn(crate::admin::serve(
        admin_listener,
        admin_state,
        std::future::pending(),
    ));

    let (incoming, accept) =
        listener::incoming(grpc_listener, tls_handle, metrics, drain_rx.clone());
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(Some(per_connection))
            .add_service(health_service)
            .add_service(ext_proc)
            .serve_with_incoming_shutdown(incoming, wait_for(drain_rx)),
    );
    readiness.set(true);
    tracing::info!(
        grpc = %bound.grpc,
        tls = %tls_mode(&config_tls),
        admin = %bound.admin,
        http = ?bound.http,
        "extproc-gateway serving"
    );
    on_bound(bound);

    shutdown.await;
    readiness.set(false);
    health.set_not_serving::<ExtProcGrpc>().await;
    if !drain_delay.is_zero() {
        // Health checks see NOT_SERVING and take the gateway out of rotation while it
        // still serves whatever is sent meanwhile: no request meets a closed port.
        tracing::info!(delay = ?drain_delay, "not ready; still serving new streams until the drain");
        tokio::time::sleep(drain_delay).await;
    }
    tracing::info!(grace = ?grace, "draining: no new streams, waiting for in-flight ones");
    let _ = drain_tx.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    // The accept task stops at once: the port closes and a socket file goes.
    match tokio::time::timeout_at(deadline, accept).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC accept task failed"),
        Err(_) => tracing::warn!("gRPC accept task still running after the grace period"),
    }
    match tokio::time::timeout_at(deadline, grpc).await {
        Ok(Ok(result)) => result.context("gRPC server failed")?,
        Ok(Err(join)) => return Err(anyhow::anyhow!("gRPC server task failed: {join}")),
        Err(_) => tracing::warn!("grace period over; closing remaining streams"),
    }
    if let Some(http) = http {
        let abort = http.abort_handle();
        match tokio::time::timeout_at(deadline, http).await {
            Ok(Ok(result)) => result.context("ext_proc HTTP server failed")?,
            Ok(Err(join)) => {
                return Err(anyhow::anyhow!("ext_proc HTTP server task failed: {join}"))
            }
            Err(_) => {
                tracing::warn!("grace period over; closing remaining HTTP requests");
                abort.abort();
            }
        }
    }
    admin.abort();
    for task in reloaders.into_iter().flatten() {
        task.abort();
    }
    if let Some(w) = tls_watch {
        w.abort();
    }
    Ok(())
}

/// The files `config` names (TLS certificate, key and client CA; the admin token),
/// read and parsed as serving does.
fn load_files(
    config: &GatewayConfig,
) -> Result<(Option<tls::Tls>, Option<crate::admin::AdminToken>), String> {
    let tls = match &config.server.tls {
        Some(t) => Some(tls::Tls::load(t)?),
        None => None,
    };
    let admin_token = crate::admin::AdminToken::from_config(&config.server)?;
    Ok((tls, admin_token))
}

/// Reads the files `config` names exactly as serving would, so `check-config` finds a
/// missing, unreadable or malformed certificate, key, client CA or admin token before
/// a deploy does. The error names the setting and the file.
pub fn check_files(config: &GatewayConfig) -> Result<(), String> {
    load_files(config).map(|_| ())
}

/// How the gRPC listener secures connections, for the start-up log line.
fn tls_mode(tls: &Option<crate::config::TlsConfig>) -> &'static str {
    match tls {
        None => "off",
        Some(t) if t.client_ca_file.is_some() => "mutual",
        Some(_) => "on",
    }
}

async fn wait_for(mut drain: tokio::sync::watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
