//! A small HTTP upstream that answers every request with a JSON echo of what reached
//! it: `{"method", "path", "headers": {name: value}, "body"}`. It shows what the
//! gateway changed on the way to the upstream, for tests, demos and load tests.
//!
//! The binary serves it as `extproc-gateway echo-upstream` (the docker-compose demo's
//! upstream), so it is part of the library proper rather than of the `testing`
//! feature.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Uri};
use axum::Json;
use tokio::net::TcpListener;

/// What the upstream saw, as it answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Echoed {
    /// Request method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers; repeated names joined with `,`.
    pub headers: BTreeMap<String, String>,
    /// Body as UTF-8 (lossy).
    pub body: String,
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Json<Echoed> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    Json(Echoed {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| uri.path().to_string()),
        headers: map,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Serves the echo on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    serve_counting(listener, Arc::new(AtomicU64::new(0))).await
}

/// Like [`serve`], counting the requests that reached the upstream (tests use it to
/// prove an immediate response kept a request away from the upstream).
pub async fn serve_counting(listener: TcpListener, hits: Arc<AtomicU64>) -> std::io::Result<()> {
    let app = axum::Router::new()
        .fallback(move |method, uri, headers, body| {
            hits.fetch_add(1, Ordering::Relaxed);
            echo(method, uri, headers, body)
        })
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024));
    axum::serve(listener, app).await
}
