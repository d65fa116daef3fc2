// Each bench uses its part of the shared setup.
#![allow(dead_code)]

//! What the benches share: the stream the chain benches drive (a three-processor
//! chain of trivial, timer and digest, and a typical request/response header set),
//! the example files, and a token the example JWKS verifies.

use std::path::PathBuf;
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

/// A file under `examples/` of the repository.
pub fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
}

/// An RS256 token for `sub: bench`, valid for an hour, signed with the example key
/// that `examples/jwt/jwks.json` holds (kid `example-rsa`).
pub fn token() -> String {
    let pem = std::fs::read(example("jwt/signing-rsa.pem")).expect("key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("rsa");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("example-rsa".into());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let claims = serde_json::json!({"sub": "bench", "exp": exp});
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}
