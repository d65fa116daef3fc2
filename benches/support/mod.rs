// Each bench uses its part of the shared setup.
#![allow(dead_code)]

//! The stream both benches drive: a three-processor chain (trivial, timer, digest)
//! and a typical request/response header set.

use std::sync::Arc;

use extproc_gateway::metrics::Metrics;
use extproc_gateway::prelude::*;
use extproc_gateway::processors::{Digest, Timer, Trivial};
use extproc_gateway::router::{Route, RouteMatch, Router};

pub const REQUEST: &[(&str, &str)] = &[
    (":method", "GET"),
    (":path", "/items/42?full=1"),
    (":authority", "api.example.com"),
    (":scheme", "https"),
    ("x-request-id", "5b1c8a3e-9d0f-4f3a-8c7e-2a6b9d1e0f42"),
    ("user-agent", "bench/1.0"),
    ("accept", "application/json"),
    ("x-tenant-id", "acme"),
];

pub const RESPONSE: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/json")];

/// One catch-all route with the bench chain, observed by `metrics` when given.
pub fn router(metrics: Option<&Arc<Metrics>>) -> Router {
    let mut chain = Chain::builder();
    if let Some(m) = metrics {
        chain = chain.observe(m, "bench");
    }
    let chain = chain
        .processor(Trivial)
        .processor(Timer)
        .processor(Digest::default())
        .build()
        .expect("the bench chain builds");
    Router::new(vec![Route {
        name: Arc::from("bench"),
        matcher: RouteMatch::default(),
        chain,
        metrics: metrics.map(|m| m.route("bench")),
    }])
}
