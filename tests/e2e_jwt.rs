//! `jwt_auth` through real Envoy: accepted tokens reach the upstream with their claims
//! as `decoded-*` headers (client-sent ones dropped), refused ones get Envoy's 401 with
//! `www-authenticate` and a JSON reason and never reach the upstream, and Envoy's
//! ext_proc stats stay clean.

mod common;

#[path = "fixtures/jwt/helpers.rs"]
mod jwt_helpers;

use common::*;
use jwt_helpers::*;
use serde_json::{json, Value};

/// The example's route (keys from examples/jwt/jwks.json, issuer, audience, then
/// `trivial`), a public route without `jwt_auth`, and a route that lets the client
/// edit headers (`instructions`) before `jwt_auth` checks the token.
fn gateway_config() -> String {
    format!(
        r#"
routes:
  - name: public
    match: {{path_prefix: /public}}
    processors: [trivial]
  - name: tools
    match: {{path_prefix: /tools}}
    processors:
      - instructions
      - jwt_auth:
          jwks_file: '{jwks}'
          issuer: '{ISSUER}'
          audiences: ['{AUDIENCE}']
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

struct Stack {
    envoy: Envoy,
    _gateway: Gateway,
    upstream: Upstream,
    client: HttpClient,
}

async fn stack() -> Option<Stack> {
    let bin = envoy_bin()?;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&gateway_config()).await;
    let envoy = Envoy::start(
        &bin,
        &EnvoySpec::default(),
        gateway.grpc_port,
        upstream.port,
    )
    .await;
    Some(Stack {
        envoy,
        _gateway: gateway,
        upstream,
        client: client(),
    })
}

impl Stack {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        send(&self.client, self.envoy.port, "GET", path, headers, empty()).await
    }

    async fn get_with_token(&self, token: &str, extra: &[(&str, &str)]) -> Resp {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        self.get("/api/items", &headers).await
    }

    async fn assert_clean(&self) {
        assert_eq!(self.envoy.ext_proc_stat("spurious_msgs_received").await, 0);
        assert_eq!(self.envoy.ext_proc_stat("streams_failed").await, 0);
        assert_eq!(
            self.envoy.ext_proc_stat("rejected_header_mutations").await,
            0
        );
        assert_eq!(self.envoy.ext_proc_stat("message_timeouts").await, 0);
    }
}

/// Envoy's 401 for a refused token, without a call to the upstream.
async fn assert_refused(s: &Stack, r: &Resp, hits_before: u64, token: Option<&str>) -> String {
    assert_eq!(
        r.status,
        401,
        "{:?}: {}",
        token,
        String::from_utf8_lossy(&r.body)
    );
    let challenge = r.header("www-authenticate").expect("www-authenticate");
    match token {
        Some(_) => assert_eq!(challenge, r#"Bearer error="invalid_token""#),
        None => assert_eq!(challenge, "Bearer"),
    }
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&r.body)));
    let reason = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error reason: {body}"))
        .to_string();
    let text = String::from_utf8_lossy(&r.body);
    for secret in secrets(token.unwrap_or("")) {
        if !secret.is_empty() {
            assert!(!text.contains(&secret), "the 401 leaks {secret:?}: {text}");
        }
    }
    assert_eq!(
        s.upstream.hits(),
        hits_before,
        "a refused request reached the upstream"
    );
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_reach_the_upstream_with_their_claims() {
    let Some(s) = stack().await else { return };
    let now = now();
    let claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
        "roles": ["reader", "writer"],
        "email_verified": true,
    });
    let token = Signer::example_rsa().sign(&claims);
    let hits = s.upstream.hits();
    let r = s
        .get_with_token(&token, &[("x-request-id", "rid-e2e")])
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.upstream.hits(), hits + 1);
    let echoed = r.echoed();
    let h = |name: &str| echoed.headers.get(name).map(String::as_str);
    assert_eq!(h("decoded-sub"), Some("alice"));
    assert_eq!(h("decoded-iss"), Some(ISSUER));
    assert_eq!(h("decoded-aud"), Some(AUDIENCE));
    assert_eq!(h("decoded-exp"), Some((now + 600).to_string().as_str()));
    assert_eq!(h("decoded-iat"), Some(now.to_string().as_str()));
    assert_eq!(h("decoded-roles"), Some(r#"["reader","writer"]"#));
    assert_eq!(h("decoded-email_verified"), Some("true"));
    // trivial ran after jwt_auth.
    assert_eq!(h("x-extra-request-id"), Some("rid-e2e"));
    assert_eq!(r.header("x-extra-request-id"), Some("rid-e2e"));
    assert_eq!(r.header("x-ext-procs-applied"), Some("jwt_auth,trivial"));

    // ES256 too.
    let token = Signer::example_ec().sign(&claims_with(json!({"sub": "bob"})));
    let r = s.get_with_token(&token, &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.echoed().headers.get("decoded-sub").map(String::as_str),
        Some("bob")
    );

    // The public route needs no token and gets no claim headers.
    let r = s.get("/public/info", &[("decoded-sub", "mallory")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ext-procs-applied"), Some("trivial"));
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sent_claim_headers_are_dropped() {
    let Some(s) = stack().await else { return };
    let token = Signer::example_rsa().sign(&good_claims());
    let r = s
        .get_with_token(
            &token,
            &[
                ("decoded-sub", "admin"),
                ("decoded-role", "superuser"),
                ("Decoded-Iss", "https://evil.example.com"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echoed = r.echoed();
    assert_eq!(
        echoed.headers.get("decoded-sub").map(String::as_str),
        Some("alice"),
        "the upstream must see the token's sub, not the client's"
    );
    assert_eq!(
        echoed.headers.get("decoded-iss").map(String::as_str),
        Some(ISSUER)
    );
    assert_eq!(
        echoed.headers.get("decoded-role"),
        None,
        "a spoofed claim header reached the upstream"
    );
    let spoofed: Vec<_> = echoed
        .headers
        .iter()
        .filter(|(_, v)| v.contains("admin") || v.contains("superuser") || v.contains("evil"))
        .collect();
    assert!(spoofed.is_empty(), "{spoofed:?}");
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_headers_spelled_differently_are_dropped_too() {
    // Envoy forwards `decoded_sub` by default (headers_with_underscores_action:
    // ALLOW), and many upstreams read it as `decoded-sub`: only the verified value
    // may reach the upstream, in any spelling.
    let Some(s) = stack().await else { return };
    let token = Signer::example_rsa().sign(&good_claims());
    let r = s
        .get_with_token(
            &token,
            &[
                ("decoded_sub", "mallory"),
                ("Decoded-Sub", "mallory"),
                ("DECODED_role", "mallory"),
                ("decoded_", "mallory"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echoed = r.echoed();
    assert_eq!(
        echoed.headers.get("decoded-sub").map(String::as_str),
        Some("alice"),
        "{:?}",
        echoed.headers
    );
    let claimish: Vec<_> = echoed
        .headers
        .iter()
        .filter(|(n, _)| n.replace('_', "-").starts_with("decoded-"))
        .collect();
    assert!(
        claimish.iter().all(|(_, v)| !v.contains("mallory")),
        "a spoofed claim header reached the upstream: {claimish:?}"
    );
    assert!(!echoed.headers.contains_key("decoded_sub"));
    assert!(!echoed.headers.contains_key("decoded_role"));
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_header_edits_cannot_forge_claims_or_break_the_request() {
    let Some(s) = stack().await else { return };
    let token = Signer::example_rsa().sign(&good_claims());
    let auth = format!("Bearer {token}");
    // instructions runs before jwt_auth: what it writes under the prefix is dropped.
    let edits =
        r#"{"addHeaders": {"decoded_sub": "mallory", "decoded-role": "admin", "x-edit": "ok"}}"#;
    let r = s
        .get(
            "/tools/x",
            &[("authorization", &auth), ("instructions", edits)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echoed = r.echoed();
    assert_eq!(
        echoed.headers.get("decoded-sub").map(String::as_str),
        Some("alice")
    );
    assert_eq!(echoed.headers.get("x-edit").map(String::as_str), Some("ok"));
    assert!(!echoed.headers.contains_key("decoded_sub"));
    assert!(!echoed.headers.contains_key("decoded-role"));

    // A value Envoy would refuse is the client's error: 400 naming the header, and
    // Envoy never sees (nor rejects) a mutation.
    let hits = s.upstream.hits();
    let bad = r#"{"addHeaders": {"x-edit": "a\u0001b"}}"#;
    let r = s
        .get(
            "/tools/x",
            &[("authorization", &auth), ("instructions", bad)],
        )
        .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    let reason = body["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("value of `x-edit` contains a control character"),
        "{reason}"
    );
    assert_eq!(s.upstream.hits(), hits);
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_get_401_and_never_reach_the_upstream() {
    let Some(s) = stack().await else { return };
    // A good request first, so the upstream counter is known to move when it should.
    let good = Signer::example_rsa().sign(&good_claims());
    let before = s.upstream.hits();
    assert_eq!(s.get_with_token(&good, &[]).await.status, 200);
    assert_eq!(s.upstream.hits(), before + 1);

    let hits = s.upstream.hits();
    let r = s.get("/api/items", &[]).await;
    let reason = assert_refused(&s, &r, hits, None).await;
    assert!(reason.contains("missing"), "{reason}");
    let r = s
        .get("/api/items", &[("authorization", &format!("Basic {good}"))])
        .await;
    assert_refused(&s, &r, hits, None).await;

    let cases = [
        (
            "expired",
            Signer::example_rsa().sign(&claims_with(
                json!({"exp": now() - 3600, "iat": now() - 7200}),
            )),
            "expired",
        ),
        (
            "wrong signature",
            Signer::impostor_rsa().sign(&good_claims()),
            "signature",
        ),
        (
            "wrong audience",
            Signer::example_ec().sign(&claims_with(json!({"aud": "another-api"}))),
            "audience",
        ),
        (
            "wrong issuer",
            Signer::example_rsa().sign(&claims_with(json!({"iss": "https://evil.example.com"}))),
            "issuer",
        ),
        // `alg: none` is no algorithm jsonwebtoken knows: the header does not parse.
        ("alg none", alg_none(&good_claims()), "malformed token"),
        (
            "tampered payload",
            tampered(&good, &claims_with(json!({"sub": "admin"}))),
            "signature",
        ),
        ("garbage", "garbage".to_string(), "malformed token"),
    ];
    for (what, token, want) in &cases {
        let r = s.get_with_token(token, &[]).await;
        let reason = assert_refused(&s, &r, hits, Some(token)).await;
        assert!(reason.contains(want), "{what}: {reason}");
    }
    assert_eq!(s.upstream.hits(), hits);
    s.assert_clean().await;
}

/// A JWKS endpoint on loopback: the first fetch gets `first` at once, every later one
/// gets `later` after `delay`. Counts the fetches.
async fn slow_jwks(
    first: String,
    later: String,
    delay: std::time::Duration,
) -> (
    u16,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let (first, later) = (first.clone(), later.clone());
            async move {
                let body = if n == 0 {
                    first
                } else {
                    tokio::time::sleep(delay).await;
                    later
                };
                ([("content-type", "application/json")], body)
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, fetches, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_while_envoy_waits() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let Some(bin) = envoy_bin() else { return };
    // After the first fetch the endpoint publishes the rotated key too, and answers
    // in 700 ms: longer than Envoy's message_timeout (200 ms) below.
    let mut rotated_in: Value = serde_json::from_slice(&read(example("jwks.json"))).unwrap();
    let rotated: Value = serde_json::from_slice(&read(fixture("rotated-jwks.json"))).unwrap();
    let added = rotated["keys"].as_array().unwrap().clone();
    rotated_in["keys"].as_array_mut().unwrap().extend(added);
    let first = String::from_utf8(read(example("jwks.json"))).unwrap();
    let (jwks_port, fetches, jwks_task) =
        slow_jwks(first, rotated_in.to_string(), Duration::from_millis(700)).await;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&format!(
        r#"
routes:
  - name: api
    processors:
      - jwt_auth:
          jwks_url: 'http://127.0.0.1:{jwks_port}/jwks.json'
          refresh_interval: 1h
          fetch_timeout: 3s
          issuer: '{ISSUER}'
          audiences: ['{AUDIENCE}']
      - trivial
"#
    ))
    .await;
    // Envoy waits 200 ms per message, and accepts extensions up to 5 s: at least
    // fetch_timeout plus the gateway's 1 s margin (a longer ask would be ignored).
    let config = envoy_config(
        &EnvoySpec::default(),
        0,
        0,
        gateway.grpc_port,
        upstream.port,
    )
    .replace(
        "message_timeout: 2s\n",
        "message_timeout: 0.2s\n              max_message_timeout: 5s\n",
    );
    assert!(config.contains("max_message_timeout: 5s"), "{config}");
    let envoy = Envoy::start_any_ports(&bin, config).await;
    let port = envoy.listener_port("ingress").await;
    let c = client();
    let get = async |token: &str| {
        let auth = format!("Bearer {token}");
        send(
            &c,
            port,
            "GET",
            "/api/items",
            &[("authorization", auth.as_str())],
            empty(),
        )
        .await
    };

    // The example keys are loaded (first fetch).
    let rsa = Signer::example_rsa().sign(&good_claims());
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&rsa).await.status != 200 {
        assert!(Instant::now() < deadline, "{}", gateway.proc.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // The first request with the new kid passes: the gateway asked Envoy to wait for
    // its refetch.
    let token = Signer::rotated_rsa().sign(&good_claims());
    let r = get(&token).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.echoed().headers.get("decoded-sub").map(String::as_str),
        Some("alice")
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    assert_eq!(
        envoy
            .ext_proc_stat("override_message_timeout_received")
            .await,
        1
    );
    assert_eq!(
        envoy
            .ext_proc_stat("override_message_timeout_ignored")
            .await,
        0
    );
    assert_eq!(envoy.ext_proc_stat("message_timeouts").await, 0);
    assert_eq!(envoy.ext_proc_stat("spurious_msgs_received").await, 0);
    jwks_task.abort();
}
