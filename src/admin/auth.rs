//! The admin token: a bearer token that guards the admin endpoints showing the
//! config, the routes and the dashboard's data. Probes (`/healthz`, `/readyz`) and
//! `/metrics` stay open: a kubelet or a load balancer probing health and a Prometheus
//! scraping metrics carry no token, and what they see (up or not, counters) does not
//! describe how the gateway is configured.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ServerConfig, REDACTED};

/// The expected token, kept only as its SHA-256 so that comparing is constant-time
/// in both its content and its length.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8; 32]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl AdminToken {
    /// A token from its text; surrounding whitespace (a file's newline) is ignored.
    /// `None` for an empty one.
    pub fn new(token: &str) -> Option<Self> {
        let token = token.trim();
        (!token.is_empty()).then(|| AdminToken(Arc::new(Sha256::digest(token).into())))
    }

    /// The token the server settings ask for (`admin_token`, or the content of
    /// `admin_token_file`), `None` when neither is set. Errors name the setting and
    /// the file.
    pub fn from_config(server: &ServerConfig) -> Result<Option<Self>, String> {
        if let Some(path) = &server.admin_token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "server.admin_token_file {}: cannot read: {e}",
                    path.display()
                )
            })?;
            return Self::new(&text).map(Some).ok_or_else(|| {
                format!(
                    "server.admin_token_file {}: the file is empty",
                    path.display()
                )
            });
        }
        match &server.admin_token {
            Some(t) => Self::new(t.expose())
                .map(Some)
                .ok_or_else(|| "server.admin_token: must not be empty".to_string()),
            None => Ok(None),
        }
    }

    /// Whether `candidate` is the token, compared in constant time.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate).into();
        digest.as_slice().ct_eq(self.0.as_slice()).into()
    }

    /// Whether a request's `Authorization` header carries the token as
    /// `Bearer <token>` (scheme in any case).
    pub fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let bytes = value.as_bytes();
        let Some((scheme, rest)) = bytes.split_first_chunk::<7>() else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer ") {
            return false;
        }
        self.matches(rest.trim_ascii())
    }
}

/// Axum middleware: the request goes on only with the token, else 401 with
/// `WWW-Authenticate: Bearer`.
pub async fn require_token(
    State(token): State<AdminToken>,
    request: Request,
    next: Next,
) -> Response {
    if token.allows(request.headers().get(header::AUTHORIZATION)) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [
            (
                header::WWW_AUTHENTICATE,
                r#"Bearer realm="extproc-gateway admin""#,
            ),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        ],
        "this endpoint needs the admin token: Authorization: Bearer <token>\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_is_checked_whole() {
        let t = AdminToken::new("s3cret\n").unwrap();
        let ok = |v: &str| t.allows(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(ok("Bearer s3cret"));
        assert!(ok("bearer s3cret"));
        assert!(ok("BEARER   s3cret "));
        for bad in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer ",
            "Basic s3cret",
            "s3cret",
            "Bearer",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        assert!(!t.allows(None));
        assert!(AdminToken::new(" \n").is_none());
        assert_eq!(format!("{t:?}"), REDACTED);
    }

    #[test]
    fn token_from_file_or_inline_with_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let mut server = ServerConfig {
            admin_token_file: Some(file.clone()),
            ..ServerConfig::default()
        };
        let t = AdminToken::from_config(&server).unwrap().unwrap();
        assert!(t.matches(b"from-file"));
        std::fs::write(&file, "\n").unwrap();
        let e = AdminToken::from_config(&server).unwrap_err();
        assert!(
            e.contains("admin_token_file") && e.contains("token: the file is empty"),
            "{e}"
        );
        server.admin_token_file = Some(dir.path().join("missing"));
        let e = AdminToken::from_config(&server).unwrap_err();
        assert!(e.contains("missing: cannot read"), "{e}");
        server.admin_token_file = None;
        server.admin_token = Some(crate::config::Secret::new("inline"));
        assert!(AdminToken::from_config(&server)
            .unwrap()
            .unwrap()
            .matches(b"inline"));
        server.admin_token = None;
        assert!(AdminToken::from_config(&server).unwrap().is_none());
    }
}
