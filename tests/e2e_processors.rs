//! The six built-in processors through real Envoy on ONE filter, checked header by
//! header against REFERENCE behaviour; cross-talk under concurrency; and equivalence
//! with six ext_proc filters each running one processor.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::*;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "extproc-tests";

/// A valid RS256 token from the example key.
fn token(sub: &str) -> String {
    let pem = std::fs::read(root().join("examples/jwt/signing-rsa.pem")).expect("example key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("rsa key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("example-rsa".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "iat": now,
        "roles": ["reader", "writer"],
    });
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn jwt_settings() -> String {
    format!(
        "{{jwks_file: {}, issuer: '{ISSUER}', audiences: [{AUDIENCE}]}}",
        root().join("examples/jwt/jwks.json").display()
    )
}

/// One route with all six processors, plus one route per processor selected by gRPC
/// metadata (for the six-filter setup).
fn gateway_config() -> String {
    let jwt = jwt_settings();
    let mut routes = String::new();
    for name in [
        "trivial",
        "timer",
        "digest",
        "jwt_auth",
        "context_check",
        "echo",
    ] {
        let spec = if name == "jwt_auth" {
            format!("{{jwt_auth: {jwt}}}")
        } else {
            name.to_string()
        };
        routes.push_str(&format!(
            "  - name: only-{name}\n    match: {{grpc_metadata: {{x-processor: {name}}}}}\n    processors: [{spec}]\n"
        ));
    }
    format!(
        "routes:\n{routes}  - name: all-six\n    processors: [trivial, timer, digest, {{jwt_auth: {jwt}}}, context_check, echo]\n"
    )
}

fn one_filter() -> EnvoySpec {
    EnvoySpec::default()
}

fn six_filters() -> EnvoySpec {
    let names = [
        "trivial",
        "timer",
        "digest",
        "jwt_auth",
        "context_check",
        "echo",
    ];
    EnvoySpec {
        filters: names
            .iter()
            .map(|n| Filter {
                metadata: vec![("x-processor", n)],
                ..Filter::default()
            })
            .collect(),
        ..EnvoySpec::default()
    }
}

struct Stack {
    envoy: Envoy,
    _gateway: Gateway,
    upstream: Upstream,
    client: HttpClient,
}

impl Stack {
    async fn start(spec: EnvoySpec) -> Option<Stack> {
        let bin = envoy_bin()?;
        let upstream = Upstream::start().await;
        let gateway = Gateway::start(&gateway_config()).await;
        let envoy = Envoy::start(&bin, &spec, gateway.grpc_port, upstream.port).await;
        Some(Stack {
            envoy,
            _gateway: gateway,
            upstream,
            client: client(),
        })
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let body = if body.is_empty() {
            empty()
        } else {
            full(body.to_string())
        };
        send(&self.client, self.envoy.port, method, path, headers, body).await
    }

    async fn assert_clean(&self) {
        assert_eq!(self.envoy.ext_proc_stat("spurious_msgs_received").await, 0);
        assert_eq!(self.envoy.ext_proc_stat("streams_failed").await, 0);
        assert_eq!(
            self.envoy.ext_proc_stat("rejected_header_mutations").await,
            0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_processors_on_one_filter_give_every_reference_header() {
    let Some(s) = Stack::start(one_filter()).await else {
        return;
    };
    let auth = format!("Bearer {}", token("alice"));
    let r = s
        .send(
            "POST",
            "/orders/9?x=1",
            &[
                ("authorization", &auth),
                ("x-request-id", "req-1"),
                ("x-tenant-id", "acme"),
                ("x-context-id", "ctx-1"),
                ("decoded-sub", "admin"),
            ],
            "ctx-1",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let up = r.echoed();
    let h = |k: &str| up.headers.get(k).map(String::as_str);
    // trivial
    assert_eq!(h("x-extra-request-id"), Some("req-1"));
    assert_eq!(r.header("x-extra-request-id"), Some("req-1"));
    // timer
    let started = r.header("x-request-started").expect("started");
    assert_eq!(h("x-request-started"), Some(started));
    assert!(started.len() == 27 && started.ends_with('Z') && &started[10..11] == "T");
    assert!(r.header("x-duration-ns").unwrap().parse::<u64>().unwrap() > 0);
    // digest (recomputed)
    let want = digest("acme", "POST", "/orders/9?x=1", b"ctx-1");
    assert_eq!(h("x-request-digest"), Some(want.as_str()));
    assert_eq!(r.header("x-request-digest"), Some(want.as_str()));
    // jwt_auth: claims forwarded, the spoofed header dropped
    assert_eq!(h("decoded-sub"), Some("alice"));
    assert_eq!(h("decoded-iss"), Some(ISSUER));
    assert_eq!(h("decoded-roles"), Some(r#"["reader","writer"]"#));
    // context_check
    assert_eq!(h("x-context-id"), Some("ctx-1"));
    assert_eq!(r.header("x-context-id"), Some("ctx-1"));
    // the chain
    assert_eq!(
        r.header("x-ext-procs-applied"),
        Some("trivial,timer,digest,jwt_auth,context_check,echo")
    );
    assert_eq!(up.body, "ctx-1");
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_tamper_and_missing_token_through_one_filter() {
    let Some(s) = Stack::start(one_filter()).await else {
        return;
    };
    let auth = format!("Bearer {}", token("bob"));
    let hits = s.upstream.hits();
    // echo answers without the upstream.
    let r = s
        .send(
            "POST",
            "/e",
            &[
                ("authorization", &auth),
                ("x-echo-only", "True"),
                ("x-k", "v"),
            ],
            "echo body",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"echo body");
    assert_eq!(r.header("x-k"), Some("v"));
    assert_eq!(s.upstream.hits(), hits);
    // A tampered context body: 500 with a JSON reason, upstream never called.
    let r = s
        .send(
            "POST",
            "/c",
            &[("authorization", &auth), ("x-context-id", "abc")],
            "abd",
        )
        .await;
    assert_eq!(r.status, 500);
    let reason: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert!(reason["error"]
        .as_str()
        .unwrap()
        .contains("context mismatch"));
    assert_eq!(s.upstream.hits(), hits);
    // No token: 401 from jwt_auth, the chain stops there.
    let r = s.send("GET", "/x", &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        r.header("x-ext-procs-applied"),
        Some("trivial,timer,digest,jwt_auth")
    );
    assert_eq!(s.upstream.hits(), hits);
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cross_talk_over_two_thousand_requests_at_concurrency_64() {
    let Some(s) = Stack::start(one_filter()).await else {
        return;
    };
    let s = Arc::new(s);
    let auth = Arc::new(format!("Bearer {}", token("load")));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mismatches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..64 {
        let (s, auth, next, mismatches) =
            (s.clone(), auth.clone(), next.clone(), mismatches.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 2000 {
                    return;
                }
                let id = format!("ctx-{i}-{}", i * 7919);
                let path = format!("/item/{i}");
                let r = s
                    .send(
                        "POST",
                        &path,
                        &[("authorization", &auth), ("x-context-id", &id)],
                        &id,
                    )
                    .await;
                let ok = r.status == 200
                    && r.header("x-context-id") == Some(id.as_str())
                    && r.header("x-request-digest")
                        == Some(digest("unknown", "POST", &path, id.as_bytes()).as_str())
                    && {
                        let up = r.echoed();
                        up.path == path && up.body == id
                    };
                if !ok {
                    mismatches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(mismatches.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(s.upstream.hits() >= 2000);
    s.assert_clean().await;
}

/// Response headers that differ between runs by nature.
const VOLATILE: &[&str] = &[
    "date",
    "x-envoy-upstream-service-time",
    "x-request-started",
    "x-duration-ns",
    "x-ext-procs-applied",
    "content-length",
    // Each Envoy listens on its own port.
    "host",
    "x-envoy-expected-rq-timeout-ms",
];

fn comparable(headers: impl Iterator<Item = (String, String)>) -> BTreeMap<String, String> {
    headers
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
        .collect()
}

fn applied_set(r: &Resp) -> BTreeSet<String> {
    r.headers
        .get_all("x-ext-procs-applied")
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_filter_matches_six_filters() {
    let Some(one) = Stack::start(one_filter()).await else {
        return;
    };
    let Some(six) = Stack::start(six_filters()).await else {
        return;
    };
    let auth = format!("Bearer {}", token("carol"));
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", "/a", vec![("x-request-id", "eq-1")], ""),
        (
            "POST",
            "/b?q=2",
            vec![("x-request-id", "eq-2"), ("x-tenant-id", "t1")],
            "payload",
        ),
        (
            "POST",
            "/c",
            vec![("x-request-id", "eq-3"), ("x-context-id", "cid")],
            "cid",
        ),
        // The SDK drop-in case: a GET with an id and no body is not compared with a
        // body it never had; the response's path is still checked and the id returned.
        (
            "GET",
            "/ctx-get",
            vec![("x-request-id", "eq-6"), ("x-context-id", "ctx-42")],
            "",
        ),
        (
            "PUT",
            "/d",
            vec![("x-request-id", "eq-4"), ("decoded-sub", "mallory")],
            "x",
        ),
        (
            "POST",
            "/e",
            vec![("x-request-id", "eq-5"), ("x-echo-only", "yes")],
            "echoed",
        ),
    ];
    for (method, path, headers, body) in &cases {
        let mut headers = headers.clone();
        headers.push(("authorization", &auth));
        let a = one.send(method, path, &headers, body).await;
        let b = six.send(method, path, &headers, body).await;
        let what = format!("{method} {path}");
        assert_eq!(a.status, b.status, "{what}: status");
        if *path == "/ctx-get" {
            assert_eq!(
                a.status,
                200,
                "{what}: {:?}",
                String::from_utf8_lossy(&a.body)
            );
            assert_eq!(a.header("x-context-id"), Some("ctx-42"), "{what}");
        }
        assert_eq!(
            applied_set(&a),
            applied_set(&b),
            "{what}: processors applied"
        );
        let response = |r: &Resp| {
            comparable(
                r.headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())),
            )
        };
        assert_eq!(response(&a), response(&b), "{what}: response headers");
        if a.header("x-echo-only").is_none() && a.status == 200 {
            let (ua, ub) = (a.echoed(), b.echoed());
            assert_eq!(
                comparable(ua.headers.into_iter()),
                comparable(ub.headers.into_iter()),
                "{what}: upstream request headers"
            );
            assert_eq!(ua.body, ub.body, "{what}: upstream body");
        } else {
            assert_eq!(a.body, b.body, "{what}: body");
        }
    }
    one.assert_clean().await;
    six.assert_clean().await;
}
