//! Path-safe routing through real Envoy: with the jwt example's routes (`/public` open,
//! everything else behind `jwt_auth`), no spelling of a path reaches the upstream
//! without a valid token while resolving to a protected path, behind an Envoy that
//! does not normalise paths and behind one that does.
//!
//! Requests are written byte for byte on a TCP connection (as `curl --path-as-is`
//! does), so the path Envoy receives is exactly the one in the catalogue.

mod common;

#[path = "fixtures/jwt/helpers.rs"]
mod jwt_helpers;

use std::time::Duration;

use common::*;
use jwt_helpers::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn gateway_config(policy: &str) -> String {
    format!(
        r#"
{policy}
routes:
  - name: public
    match: {{path_prefix: /public}}
    processors: [trivial]
  - name: api
    processors:
      - jwt_auth:
          jwks_file: '{jwks}'
          issuer: '{ISSUER}'
          audiences: ['{AUDIENCE}']
      - trivial
"#,
        jwks = example("jwks.json").display()
    )
}

/// A response read off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: status {} body {:?}", self.status, self.text()))
    }
}

/// `GET <target> HTTP/1.1` with `target` sent exactly as given.
async fn raw_get(port: u16, target: &[u8], headers: &[(&str, &str)]) -> Raw {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to Envoy");
        stream.write_all(&request).await.expect("write request");
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.expect("read response");
        out
    };
    let bytes = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("response timed out");
    parse(&bytes).unwrap_or_else(|| {
        panic!(
            "not an HTTP response to {:?}: {:?}",
            String::from_utf8_lossy(target),
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn parse(bytes: &[u8]) -> Option<Raw> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(bytes.get(..end)?).ok()?;
    let rest = bytes.get(end + 4..)?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Raw {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(rest.get(..line_end)?).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = rest.get(line_end + 2..)?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// What one path must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// 200 from the upstream on the public route (`trivial` only), which received
    /// this path.
    Public(&'static str),
    /// 401 from `jwt_auth`: the path resolves to a protected one.
    Unauthorized,
    /// 400 from the gateway, with this `reason`.
    Refused(&'static str),
    /// 400 from Envoy itself (its HTTP/1 parser refuses the request line).
    EnvoyRefuses,
    /// Envoy's redirect (`UNESCAPE_AND_REDIRECT`) to this location, which itself gets
    /// the second answer.
    Redirect(&'static str, &'static Want),
}

/// One path of the catalogue, what it must get behind an Envoy without path
/// normalisation and behind one with it.
struct Case {
    path: &'static [u8],
    raw_envoy: Want,
    normalizing_envoy: Want,
}

const UNAUTHORIZED: Want = Want::Unauthorized;

const fn case(path: &'static [u8], raw_envoy: Want, normalizing_envoy: Want) -> Case {
    Case {
        path,
        raw_envoy,
        normalizing_envoy,
    }
}

use Want::*;

/// The catalogue. Every path here that a lenient upstream could resolve to `/api/...`
/// must get a 401, a 400 or a redirect, never the upstream.
const CATALOGUE: &[Case] = &[
    // The six paths of the report.
    case(b"/public/../api/items", Unauthorized, Unauthorized),
    case(b"/public/%2e%2e/api/x", Unauthorized, Unauthorized),
    case(b"/public/%2E%2E/api/x", Unauthorized, Unauthorized),
    case(
        b"/public/..%2fapi/x",
        Refused("escaped_slash"),
        Redirect("/api/x", &UNAUTHORIZED),
    ),
    case(
        b"/public/..%5capi/x",
        Refused("escaped_slash"),
        Redirect("/api/x", &UNAUTHORIZED),
    ),
    case(b"/public/./../api/x", Unauthorized, Unauthorized),
    // More spellings.
    case(b"//public/../api", Unauthorized, Unauthorized),
    case(b"/public/%2e%2E/api", Unauthorized, Unauthorized),
    case(b"/public/.%2e/api", Unauthorized, Unauthorized),
    case(b"/public/%2e./api", Unauthorized, Unauthorized),
    // `..;` is a plain segment to RFC 3986, `..` to Tomcat, Jetty and Envoy's own
    // normalize_path (which sends `/api` on).
    case(
        b"/public/..;/api",
        Refused("ambiguous_segment"),
        Unauthorized,
    ),
    case(
        b"/public/.;/../api",
        Refused("ambiguous_segment"),
        Unauthorized,
    ),
    case(
        b"/public/%2e%2e;/api",
        Refused("ambiguous_segment"),
        Refused("ambiguous_segment"),
    ),
    case(b"/./public/../api", Unauthorized, Unauthorized),
    case(b"/public/../../api", Unauthorized, Unauthorized),
    case(b"/PUBLIC/../api", Unauthorized, Unauthorized),
    // Double encoding is decoded once: the segment is the text `%2e%2e`.
    case(
        b"/public/%252e%252e/api",
        Public("/public/%252e%252e/api"),
        Public("/public/%252e%252e/api"),
    ),
    case(
        b"/public/..%00/api",
        Refused("control_character"),
        EnvoyRefuses,
    ),
    case(
        b"/public%2f..%2fapi",
        Refused("escaped_slash"),
        Redirect("/api", &UNAUTHORIZED),
    ),
    case(
        b"/public/%2e%2e%2fapi",
        Refused("escaped_slash"),
        Redirect("/api", &UNAUTHORIZED),
    ),
    // `/public/api` to Envoy (dot segments, then slashes), `/api` to a server that
    // merges slashes first: refused unless Envoy has settled it.
    case(
        b"/public//../api",
        Refused("ambiguous_segment"),
        Public("/public/api"),
    ),
    // Envoy drops the `%zz` segment with the `..` after it.
    case(
        b"/public/%zz/../../api",
        Refused("invalid_percent_encoding"),
        Unauthorized,
    ),
    case(b"/public/x/..", Public("/public/x/.."), Public("/public/")),
    case(
        b"/public?x=/../api",
        Public("/public?x=/../api"),
        Public("/public?x=/../api"),
    ),
    // A raw backslash: Envoy's normalize_path reads it as `/`.
    case(b"/public/..\\api", Refused("backslash"), Unauthorized),
    case(b"/public#/../api", EnvoyRefuses, EnvoyRefuses),
    case(
        b"/public/info",
        Public("/public/info"),
        Public("/public/info"),
    ),
];

struct Stack {
    envoy: Envoy,
    gateway: Gateway,
    upstream: Upstream,
}

async fn stack(policy: &str, normalizing: bool) -> Option<Stack> {
    let bin = envoy_bin()?;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start_with_env(
        &gateway_config(policy),
        &[("EXTPROC_LOG", "info,extproc_gateway::router=debug")],
    )
    .await;
    let spec = EnvoySpec::default();
    let envoy = if normalizing {
        Envoy::start_normalizing(&bin, &spec, gateway.grpc_port, upstream.port).await
    } else {
        Envoy::start(&bin, &spec, gateway.grpc_port, upstream.port).await
    };
    Some(Stack {
        envoy,
        gateway,
        upstream,
    })
}

impl Stack {
    /// Sends `path` without a token and checks it gets `want`.
    async fn expect(&self, path: &[u8], want: Want) {
        let shown = String::from_utf8_lossy(path).into_owned();
        let hits = self.upstream.hits();
        let r = raw_get(self.envoy.port, path, &[("x-request-id", "rid-paths")]).await;
        let reached = self.upstream.hits() - hits;
        match want {
            Public(upstream_path) => {
                assert_eq!(r.status, 200, "{shown}: {}", r.text());
                assert_eq!(reached, 1, "{shown}");
                let echoed = r.json();
                assert_eq!(
                    echoed["path"], upstream_path,
                    "{shown}: what the upstream got"
                );
                assert_eq!(r.header("x-ext-procs-applied"), Some("trivial"), "{shown}");
            }
            Unauthorized => {
                assert_eq!(r.status, 401, "{shown}: {}", r.text());
                assert_eq!(reached, 0, "{shown} reached the upstream");
                assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{shown}");
                assert!(r.json()["error"].is_string(), "{shown}");
            }
            Refused(reason) => {
                assert_eq!(r.status, 400, "{shown}: {}", r.text());
                assert_eq!(reached, 0, "{shown} reached the upstream");
                assert_eq!(r.header("content-type"), Some("application/json"));
                let body = r.json();
                assert_eq!(body["reason"], reason, "{shown}: {body}");
                let error = body["error"].as_str().unwrap_or_default();
                assert!(error.starts_with("request path refused"), "{shown}: {body}");
                // Refused before any processor ran.
                assert_eq!(r.header("x-ext-procs-applied"), None, "{shown}");
                assert_eq!(r.header("x-extra-request-id"), None, "{shown}");
            }
            EnvoyRefuses => {
                assert_eq!(r.status, 400, "{shown}: {}", r.text());
                assert_eq!(reached, 0, "{shown} reached the upstream");
                assert!(!r.text().contains("request path refused"), "{shown}");
            }
            Redirect(location, then) => {
                assert!(
                    matches!(r.status, 301 | 307 | 308),
                    "{shown}: {} {}",
                    r.status,
                    r.text()
                );
                assert_eq!(reached, 0, "{shown} reached the upstream");
                assert_eq!(r.header("location"), Some(location), "{shown}");
                Box::pin(self.expect(location.as_bytes(), *then)).await;
            }
        }
    }

    async fn assert_clean(&self) {
        for stat in [
            "streams_failed",
            "spurious_msgs_received",
            "rejected_header_mutations",
            "message_timeouts",
            "failure_mode_allowed",
        ] {
            assert_eq!(self.envoy.ext_proc_stat(stat).await, 0, "ext_proc {stat}");
        }
    }

    async fn metrics(&self) -> String {
        http_get(self.gateway.admin_port, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

fn refusals(want: Want) -> Option<&'static str> {
    match want {
        Refused(reason) => Some(reason),
        Redirect(_, then) => refusals(*then),
        _ => None,
    }
}

async fn run_catalogue(s: &Stack, pick: impl Fn(&Case) -> Want) {
    for c in CATALOGUE {
        s.expect(c.path, pick(c)).await;
    }
    // Each refusal is counted by reason.
    let text = s.metrics().await;
    for reason in extproc_gateway::path::PathRefusal::ALL.map(|r| r.as_str()) {
        let want = CATALOGUE
            .iter()
            .filter(|c| refusals(pick(c)) == Some(reason))
            .count();
        let series = format!("extproc_paths_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &series), Some(want as f64), "{series}");
    }
    let log = s.gateway.proc.log_text();
    if CATALOGUE.iter().any(|c| refusals(pick(c)).is_some()) {
        assert!(log.contains("request path refused"), "{log}");
    }
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_envoy_that_does_not_normalise_paths() {
    let Some(s) = stack("", false).await else {
        return;
    };
    assert!(!s.envoy.config.contains("normalize_path"));
    run_catalogue(&s, |c| c.raw_envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_envoy_that_normalises_paths() {
    let Some(s) = stack("", true).await else {
        return;
    };
    for setting in PATH_NORMALIZATION {
        assert!(s.envoy.config.contains(setting), "{setting}");
    }
    run_catalogue(&s, |c| c.normalizing_envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_reaches_the_upstream_with_the_path_as_sent() {
    let Some(s) = stack("", false).await else {
        return;
    };
    let token = Signer::example_rsa().sign(&good_claims());
    let auth = format!("Bearer {token}");
    for (sent, route_ran) in [
        (&b"/api/items"[..], "jwt_auth,trivial"),
        (b"/public/../api/items", "jwt_auth,trivial"),
        (b"/public/%2e%2e/api/x", "jwt_auth,trivial"),
    ] {
        let hits = s.upstream.hits();
        let r = raw_get(s.envoy.port, sent, &[("authorization", &auth)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(s.upstream.hits(), hits + 1);
        assert_eq!(r.header("x-ext-procs-applied"), Some(route_ran));
        let echoed = r.json();
        // The gateway picks the route by the normalised path; the upstream gets the
        // path as sent (forward_normalized is off).
        assert_eq!(echoed["path"], String::from_utf8_lossy(sent).as_ref());
        assert_eq!(echoed["headers"]["decoded-sub"], "alice");
    }
    // A refused path is refused with a token too: the path decides, before jwt_auth.
    let r = raw_get(
        s.envoy.port,
        b"/public/..%2fapi",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_normalized_sends_the_upstream_the_path_routes_read() {
    let Some(s) = stack("path_policy: {forward_normalized: true}", false).await else {
        return;
    };
    for (sent, received) in [
        (&b"/public/x/.."[..], "/public/"),
        (b"/public/./a//b?q=/../x", "/public/a/b?q=/../x"),
        (b"//public/%7e%61", "/public/~a"),
        (b"/public/%252e%252e/api", "/public/%252e%252e/api"),
        (b"/public/info", "/public/info"),
    ] {
        let shown = String::from_utf8_lossy(sent).into_owned();
        let r = raw_get(s.envoy.port, sent, &[]).await;
        assert_eq!(r.status, 200, "{shown}: {}", r.text());
        assert_eq!(r.json()["path"], received, "{shown}");
    }
    let token = Signer::example_rsa().sign(&good_claims());
    let auth = format!("Bearer {token}");
    let r = raw_get(
        s.envoy.port,
        b"/public/../api/items",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/api/items");
    assert_eq!(r.header("x-ext-procs-applied"), Some("jwt_auth,trivial"));
    let hits = s.upstream.hits();
    let r = raw_get(s.envoy.port, b"/public/../api/items", &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(s.upstream.hits(), hits);
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_unchanged_leaves_escaped_slashes_to_the_upstream() {
    let policy = "path_policy: {path_with_escaped_slashes_action: KEEP_UNCHANGED}";
    let Some(s) = stack(policy, false).await else {
        return;
    };
    // `..%2Fapi` is one segment under /public: the operator said the upstream never
    // decodes it.
    let r = raw_get(s.envoy.port, b"/public/..%2fapi/x", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/public/..%2fapi/x");
    // Everything else is still refused or normalised.
    let r = raw_get(s.envoy.port, b"/public/..%00/api", &[]).await;
    assert_eq!(r.status, 400);
    let r = raw_get(s.envoy.port, b"/public/../api", &[]).await;
    assert_eq!(r.status, 401);
    let text = s.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"extproc_paths_refused_total{reason="escaped_slash"}"#
        ),
        Some(0.0)
    );
    s.assert_clean().await;
}
