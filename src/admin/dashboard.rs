//! The built-in dashboard: one HTML page, its script and its stylesheet, compiled into
//! the binary. The page polls `/api/snapshot` and computes rates and latency
//! percentiles in the browser, so it needs nothing but the gateway (no CDN, no
//! Prometheus, no network access).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");
// uPlot (MIT), vendored from npm: see dashboard/vendor/README.md.
const UPLOT_JS: &str = include_str!("dashboard/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("dashboard/vendor/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("dashboard/vendor/uPlot.LICENSE");

/// The dashboard's assets: path, content type, body.
const ASSETS: [(&str, &str, &str); 6] = [
    ("/dashboard", "text/html; charset=utf-8", INDEX_HTML),
    (
        "/dashboard/app.js",
        "text/javascript; charset=utf-8",
        APP_JS,
    ),
    ("/dashboard/style.css", "text/css; charset=utf-8", STYLE_CSS),
    (
        "/dashboard/vendor/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        UPLOT_JS,
    ),
    (
        "/dashboard/vendor/uPlot.min.css",
        "text/css; charset=utf-8",
        UPLOT_CSS,
    ),
    (
        "/dashboard/vendor/uPlot.LICENSE",
        "text/plain; charset=utf-8",
        UPLOT_LICENSE,
    ),
];

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// `GET /dashboard` (also `/dashboard/`) and its assets.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new().route(
        "/dashboard/",
        get(|| async { asset(ASSETS[0].1, ASSETS[0].2) }),
    );
    for (path, content_type, body) in ASSETS {
        router = router.route(path, get(move || async move { asset(content_type, body) }));
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str) -> (StatusCode, String, String, String) {
        let resp = router::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let status = resp.status();
        let (ct, cc) = (header(header::CONTENT_TYPE), header(header::CACHE_CONTROL));
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ct, cc, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn assets_are_served_with_their_content_types_and_no_cache() {
        for (path, ct, body) in [
            ("/dashboard", "text/html", INDEX_HTML),
            ("/dashboard/", "text/html", INDEX_HTML),
            ("/dashboard/app.js", "text/javascript", APP_JS),
            ("/dashboard/style.css", "text/css", STYLE_CSS),
            (
                "/dashboard/vendor/uPlot.iife.min.js",
                "text/javascript",
                UPLOT_JS,
            ),
            ("/dashboard/vendor/uPlot.min.css", "text/css", UPLOT_CSS),
            (
                "/dashboard/vendor/uPlot.LICENSE",
                "text/plain",
                UPLOT_LICENSE,
            ),
        ] {
            let (status, content_type, cache, served) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(content_type.starts_with(ct), "{path}: {content_type}");
            assert_eq!(cache, "no-cache", "{path}");
            assert_eq!(served, body, "{path}");
        }
        let (_, _, _, html) = get("/dashboard").await;
        assert!(html.contains(r#"src="/dashboard/app.js""#));
        assert!(html.contains(r#"href="/dashboard/style.css""#));
        assert!(html.contains(r#"src="/dashboard/vendor/uPlot.iife.min.js""#));
        assert!(html.contains(r#"href="/dashboard/vendor/uPlot.min.css""#));
        assert!(UPLOT_LICENSE.starts_with("The MIT License"));
    }

    #[test]
    fn assets_reference_no_outside_host() {
        for (path, _, body) in ASSETS {
            // uPlot's build names its home page in a banner comment, and nothing else.
            let body = body
                .strip_prefix("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
                .unwrap_or(body);
            for bad in ["http://", "https://", "\"//", "'//", "(//", "@import"] {
                assert!(!body.contains(bad), "{path} contains {bad:?}");
            }
        }
        for bad in [
            "fetch(",
            "XMLHttpRequest",
            "import(",
            "WebSocket",
            "sendBeacon",
        ] {
            assert!(!UPLOT_JS.contains(bad), "uPlot calls {bad}");
        }
        // The page fetches only the gateway's own endpoints.
        for (i, _) in APP_JS.match_indices("fetch(") {
            assert!(
                APP_JS[i..].starts_with("fetch(path"),
                "unexpected fetch in app.js"
            );
        }
    }
}
