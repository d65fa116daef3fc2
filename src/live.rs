//! What the running gateway serves right now, shared between the servers that act on
//! it and the admin server that reports it: the config and routes a reload replaces,
//! and whether the gateway is ready for traffic.
//!
//! These handles live below both `server` and `admin` so that neither has to import
//! the other to share them: the server creates and updates them, the admin server only
//! reads them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::GatewayConfig;
use crate::router::Router;

/// The config in force, as `/config` shows it; replaced on reload (an `ArcSwap`:
/// readers never wait on a reload, nor a reload on them).
#[derive(Clone)]
pub struct ConfigHandle(Arc<ArcSwap<GatewayConfig>>);

impl ConfigHandle {
    /// Holds `config`.
    pub fn new(config: GatewayConfig) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(config)))
    }

    /// The config in force.
    pub fn current(&self) -> Arc<GatewayConfig> {
        self.0.load_full()
    }

    /// Only a reload replaces the config, and only after its routes were built: the
    /// two are swapped together so `/config` never shows a config that is not served.
    pub(crate) fn replace(&self, config: GatewayConfig) {
        self.0.store(Arc::new(config));
    }
}

/// The routes in force. A reload swaps the inner `Arc`; streams already open keep the
/// router they started with. An `ArcSwap`: every new stream loads it, so the load
/// takes no lock that streams (or a reload) would contend on.
#[derive(Clone)]
pub struct RouterHandle(Arc<ArcSwap<Router>>);

impl RouterHandle {
    /// Serves `router` until replaced.
    pub fn new(router: Router) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(router)))
    }

    /// The router new streams use.
    pub fn current(&self) -> Arc<Router> {
        self.0.load_full()
    }

    /// Replaces the router for new streams.
    pub fn replace(&self, router: Router) {
        self.0.store(Arc::new(router));
    }
}

/// Whether the gateway should receive traffic: set once the gRPC listener serves,
/// cleared when draining. Read by `/readyz` and the HTTP listener's `/healthz`, so a
/// load balancer stops sending before the listeners close.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
