//! `jwt_auth` in process, through `testing::Driver`: accepted tokens and the claim
//! headers they produce, every kind of refusal (and that refusals never leak the token
//! or a key), leeway and `require_exp`, the three key sources (JWKS file, PEM file,
//! JWKS URL over HTTP and HTTPS with a private CA, with refresh, failure and rotation),
//! a JWKS URL's limits (one fetch deadline, a size cap, bad answers keeping the last
//! good keys, unknown-kid refetches and their rate limit, `Cache-Control`), and the
//! config-level errors and redaction.

mod common;
#[path = "fixtures/jwt/helpers.rs"]
mod jwt_helpers;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use extproc_gateway::config::GatewayConfig;
use extproc_gateway::metrics::Metrics;
use extproc_gateway::phase::{is_valid_header_name, is_valid_header_value};
use extproc_gateway::prelude::*;
use extproc_gateway::processors::{JwtAuth, JwtSettings, Trivial};
use extproc_gateway::registry::{BuildContext, ProcessorSpec};
use extproc_gateway::testing::{Answer, Driver, Immediate};
use jwt_helpers::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------
// Helpers

/// Settings from YAML (paths inside must be absolute).
fn settings(yaml: &str) -> JwtSettings {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("bad settings {yaml}: {e}"))
}

/// The example's settings: example JWKS, issuer and audience.
fn example_settings() -> JwtSettings {
    settings(&format!(
        "{{jwks_file: '{}', issuer: '{ISSUER}', audiences: ['{AUDIENCE}']}}",
        example("jwks.json").display()
    ))
}

/// `jwt_auth` followed by `trivial`, as the example config chains them.
fn chain(settings: JwtSettings) -> Chain {
    let auth = JwtAuth::new(settings).expect("jwt_auth builds");
    Chain::builder()
        .processor(auth)
        .processor(Trivial)
        .build()
        .unwrap()
}

/// Sends request headers (plus `extra`) through a fresh stream of `chain`.
async fn send(chain: &Chain, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![
        (":method", "GET"),
        (":path", "/api/items"),
        (":authority", "api.example.com"),
        (":scheme", "http"),
        ("x-request-id", "rid-1"),
    ];
    headers.extend_from_slice(extra);
    Driver::new(chain.clone())
        .request_headers(&headers, true)
        .await
        .expect("the exchange answers")
}

/// Sends `authorization: Bearer <token>`.
async fn send_token(chain: &Chain, token: &str) -> Answer {
    let auth = format!("Bearer {token}");
    send(chain, &[("authorization", &auth)]).await
}

/// The answer let the request through: no immediate response, the chain went on.
fn assert_accepted(a: &Answer) {
    assert!(
        a.immediate.is_none(),
        "token refused: {:?}",
        a.immediate
            .as_ref()
            .map(|i| String::from_utf8_lossy(&i.body))
    );
    assert!(a.clear_route_cache, "clear_route_cache must be set");
    assert_eq!(
        a.header("x-extra-request-id"),
        Some("rid-1"),
        "trivial ran after jwt_auth"
    );
}

/// The JSON `{"error": reason}` body of a refusal, checked for shape and leaks.
fn error_reason(i: &Immediate, token: Option<&str>) -> String {
    assert_eq!(i.header("content-type"), Some("application/json"));
    let body = String::from_utf8(i.body.to_vec()).expect("UTF-8 body");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let obj = v.as_object().expect("a JSON object");
    assert_eq!(obj.len(), 1, "only `error`: {body}");
    let reason = obj["error"]
        .as_str()
        .expect("error is a string")
        .to_string();
    assert!(!reason.is_empty());
    for secret in secrets(token.unwrap_or("")) {
        if secret.is_empty() {
            continue;
        }
        assert!(
            !body.contains(&secret),
            "the refusal body leaks {secret:?}: {body}"
        );
        for (name, value) in &i.headers {
            assert!(!value.contains(&secret), "header {name} leaks {secret:?}");
        }
    }
    reason
}

/// A 401 `invalid_token` refusal; returns the reason.
fn assert_invalid(a: &Answer, token: &str) -> String {
    let i = a
        .immediate
        .as_ref()
        .unwrap_or_else(|| panic!("token accepted, a 401 was expected: {:?}", a.set));
    assert_eq!(i.status, 401, "{:?}", String::from_utf8_lossy(&i.body));
    assert_eq!(
        i.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
    assert!(
        a.set.is_empty() && a.removed.is_empty(),
        "nothing goes upstream"
    );
    error_reason(i, Some(token))
}

/// A 401 for a missing token (`www-authenticate: Bearer`, no `error=`).
fn assert_missing(a: &Answer) {
    let i = a.immediate.as_ref().expect("a 401 was expected");
    assert_eq!(i.status, 401);
    assert_eq!(i.header("www-authenticate"), Some("Bearer"));
    let reason = error_reason(i, None);
    assert!(reason.contains("missing"), "{reason}");
}

/// A 503: keys not loaded yet.
fn assert_unavailable(a: &Answer) {
    let i = a.immediate.as_ref().expect("a 503 was expected");
    assert_eq!(i.status, 503, "{:?}", String::from_utf8_lossy(&i.body));
    assert_eq!(i.header("retry-after"), Some("1"));
    error_reason(i, None);
}

// ---------------------------------------------------------------------------------
// Accepted tokens and claim headers

#[tokio::test]
async fn valid_rs256_token_forwards_every_claim_as_a_header() {
    let chain = chain(example_settings());
    let now = now();
    let claims = json!({
        "iss": ISSUER,
        "aud": [AUDIENCE, "another-api"],
        "sub": "alice",
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600,
        "admin": true,
        "level": 3.5,
        "roles": ["reader", "writer"],
        "ctx": {"tenant": "acme", "n": 1},
        "nothing": null,
        "Org_Name": "Acme Corp",
    });
    let token = Signer::example_rsa().sign(&claims);
    let a = send_token(&chain, &token).await;
    assert_accepted(&a);
    let expect = [
        ("decoded-iss", ISSUER.to_string()),
        ("decoded-aud", format!(r#"["{AUDIENCE}","another-api"]"#)),
        ("decoded-sub", "alice".to_string()),
        ("decoded-iat", now.to_string()),
        ("decoded-nbf", (now - 5).to_string()),
        ("decoded-exp", (now + 600).to_string()),
        ("decoded-admin", "true".to_string()),
        ("decoded-level", "3.5".to_string()),
        ("decoded-roles", r#"["reader","writer"]"#.to_string()),
        ("decoded-nothing", "null".to_string()),
        ("decoded-org_name", "Acme Corp".to_string()),
    ];
    for (name, value) in &expect {
        assert_eq!(
            a.header(name),
            Some(value.as_str()),
            "{name} in {:?}",
            a.set
        );
    }
    // Objects: compact JSON (key order is the JSON library's).
    let ctx = a.header("decoded-ctx").expect("decoded-ctx");
    assert!(
        !ctx.contains(' ') && !ctx.contains('\n'),
        "not compact: {ctx}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(ctx).unwrap(),
        json!({"tenant": "acme", "n": 1})
    );
    let decoded: Vec<&str> = a
        .set
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.starts_with("decoded-"))
        .collect();
    assert_eq!(
        decoded.len(),
        expect.len() + 1,
        "one header per claim: {decoded:?}"
    );
    assert!(a.removed.is_empty(), "{:?}", a.removed);
}

#[tokio::test]
async fn valid_es256_token_passes() {
    let chain = chain(example_settings());
    let token = Signer::example_ec().sign(&claims_with(json!({"sub": "bob"})));
    let a = send_token(&chain, &token).await;
    assert_accepted(&a);
    assert_eq!(a.header("decoded-sub"), Some("bob"));
    assert_eq!(a.header("decoded-aud"), Some(AUDIENCE));
}

#[tokio::test]
async fn bearer_scheme_is_case_insensitive() {
    let chain = chain(example_settings());
    let token = Signer::example_rsa().sign(&good_claims());
    let a = send(&chain, &[("authorization", &format!("bearer   {token} "))]).await;
    assert_accepted(&a);
}

#[tokio::test]
async fn client_sent_decoded_headers_are_removed() {
    let chain = chain(example_settings());
    let token = Signer::example_rsa().sign(&good_claims());
    let auth = format!("Bearer {token}");
    let a = send(
        &chain,
        &[
            ("authorization", &auth),
            ("decoded-sub", "admin"),
            ("decoded-role", "root"),
            ("decoded-", "empty-suffix"),
            ("x-decoded-keep", "not a claim header"),
        ],
    )
    .await;
    assert_accepted(&a);
    for spoofed in ["decoded-sub", "decoded-role", "decoded-"] {
        assert!(
            a.removed.iter().any(|r| r == spoofed),
            "{spoofed} not in removed {:?}",
            a.removed
        );
    }
    assert!(
        !a.removed.iter().any(|r| r == "x-decoded-keep"),
        "{:?}",
        a.removed
    );
    // The token's own value replaces the spoofed one; the spoofed extra is not re-set.
    assert_eq!(a.header("decoded-sub"), Some("alice"));
    assert_eq!(a.header("decoded-role"), None);
}

#[tokio::test]
async fn client_sent_claim_headers_are_removed_in_every_spelling() {
    // Envoy forwards underscores by default, and many upstreams read `_` and `-`
    // (and any case) as the same header: every such spelling is a spoofing attempt.
    let chain = chain(example_settings());
    let token = Signer::example_rsa().sign(&good_claims());
    let auth = format!("Bearer {token}");
    let spoofed = [
        "decoded_sub",
        "Decoded-Sub",
        "DECODED_sub",
        "decoded_role",
        "Decoded_",
    ];
    let mut headers: Vec<(&str, &str)> = vec![("authorization", &auth)];
    headers.extend(spoofed.iter().map(|n| (*n, "mallory")));
    headers.push(("x-decoded_keep", "not a claim header"));
    let a = send(&chain, &headers).await;
    assert_accepted(&a);
    for name in spoofed {
        let lower = name.to_ascii_lowercase();
        assert!(
            a.removed.contains(&lower),
            "{name} not in removed {:?}",
            a.removed
        );
    }
    assert!(!a.removed.iter().any(|r| r == "x-decoded_keep"));
    assert_eq!(a.header("decoded-sub"), Some("alice"));
    assert!(
        a.set.iter().all(|(_, v)| v != "mallory"),
        "a spoofed value is written: {:?}",
        a.set
    );
    let upstream = upstream_view(&headers, &a);
    let claimish: Vec<_> = upstream
        .iter()
        .filter(|(n, _)| {
            n.replace('_', "-")
                .to_ascii_lowercase()
                .starts_with("decoded-")
        })
        .collect();
    assert!(
        claimish.iter().all(|(_, v)| v != "mallory"),
        "the upstream would see {claimish:?}"
    );
}

#[tokio::test]
async fn claim_headers_written_by_an_earlier_processor_are_removed_too() {
    // `instructions` before `jwt_auth` is allowed: whatever it wrote under the prefix
    // is on the request when jwt_auth strips it.
    let chain = Chain::builder()
        .processor(extproc_gateway::processors::HeaderInstructions)
        .processor(JwtAuth::new(example_settings()).unwrap())
        .build()
        .unwrap();
    let token = Signer::example_rsa().sign(&good_claims());
    let auth = format!("Bearer {token}");
    let instructions = r#"{"addHeaders": {"decoded_sub": "mallory", "Decoded-Role": "root"}}"#;
    let headers = [
        (":method", "GET"),
        (":path", "/"),
        ("authorization", auth.as_str()),
        ("instructions", instructions),
    ];
    let a = Driver::new(chain)
        .request_headers(&headers, true)
        .await
        .unwrap();
    assert!(a.immediate.is_none(), "{:?}", a.immediate);
    assert_eq!(a.header("decoded-sub"), Some("alice"));
    assert_eq!(a.header("decoded_sub"), None);
    assert_eq!(a.header("decoded-role"), None);
    assert!(
        a.removed.contains(&"decoded_sub".to_string()),
        "{:?}",
        a.removed
    );
    assert!(a.set.iter().all(|(_, v)| v != "mallory" && v != "root"));
}

#[tokio::test]
async fn claims_a_header_cannot_carry_are_encoded() {
    let chain = chain(example_settings());
    let claims = claims_with(json!({
        "ctl": "line\r\nInjected: yes",
        "del": "a\u{7f}b",
        "tab": "a\tb",
        "Ünicode name": "é",
        "nested": {"k\u{7f}": ["\u{0}"]},
    }));
    let token = Signer::example_rsa().sign(&claims);
    let a = send_token(&chain, &token).await;
    assert_accepted(&a);
    assert_eq!(a.header("decoded-ctl"), Some(r#""line\r\nInjected: yes""#));
    assert_eq!(a.header("decoded-del"), Some(r#""a\u007fb""#));
    assert_eq!(a.header("decoded-tab"), Some("a\tb"));
    assert_eq!(a.header("decoded--nicode-name"), Some("é"));
    assert_eq!(
        a.header("decoded-nested"),
        Some(r#"{"k\u007f":["\u0000"]}"#)
    );
    for option in raw_writes(&a) {
        assert!(is_valid_header_name(&option.0), "{option:?}");
        assert!(is_valid_header_value(&option.1), "{option:?}");
    }
}

/// The header writes of an answer, with their raw bytes.
fn raw_writes(a: &Answer) -> Vec<(String, Vec<u8>)> {
    use extproc_gateway::proto::ext_proc::processing_response::Response;
    use extproc_gateway::proto::ext_proc::ProcessingResponse;
    use prost::Message as _;
    let raw = ProcessingResponse::decode(&a.encoded()[..]).expect("a ProcessingResponse");
    let Some(Response::RequestHeaders(h)) = &raw.response else {
        return Vec::new();
    };
    h.response
        .iter()
        .filter_map(|c| c.header_mutation.as_ref())
        .flat_map(|m| m.set_headers.iter())
        .filter_map(|o| o.header.as_ref())
        .map(|h| (h.key.clone(), h.raw_value.to_vec()))
        .collect()
}

/// The request headers as Envoy would forward them after this answer: removals
/// first, then the writes.
fn upstream_view(sent: &[(&str, &str)], a: &Answer) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = sent
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .filter(|(n, _)| !a.removed.contains(n))
        .collect();
    for (n, v) in &a.set {
        headers.retain(|(m, _)| m != n);
        headers.push((n.clone(), v.clone()));
    }
    headers
}

#[tokio::test]
async fn claim_header_prefix_is_configurable() {
    let mut s = example_settings();
    s.claim_header_prefix = "x-claim-".into();
    let chain = chain(s);
    let token = Signer::example_rsa().sign(&good_claims());
    let auth = format!("Bearer {token}");
    let a = send(
        &chain,
        &[("authorization", &auth), ("x-claim-sub", "admin")],
    )
    .await;
    assert_accepted(&a);
    assert_eq!(a.header("x-claim-sub"), Some("alice"));
    assert_eq!(a.header("decoded-sub"), None);
    assert!(a.removed.iter().any(|r| r == "x-claim-sub"));
}

// ---------------------------------------------------------------------------------
// Missing tokens

#[tokio::test]
async fn missing_or_non_bearer_authorization_is_a_missing_token() {
    let chain = chain(example_settings());
    assert_missing(&send(&chain, &[]).await);
    let token = Signer::example_rsa().sign(&good_claims());
    for value in [
        format!("Basic {token}"),
        format!("Token {token}"),
        token.clone(),
        "Bearer".into(),
        "Bearer    ".into(),
        String::new(),
    ] {
        let a = send(&chain, &[("authorization", &value)]).await;
        assert_missing(&a);
        assert!(a.set.is_empty(), "{value:?}: {:?}", a.set);
    }
}

// ---------------------------------------------------------------------------------
// Invalid tokens

#[tokio::test]
async fn expired_token_is_refused() {
    let chain = chain(example_settings());
    let token = Signer::example_rsa().sign(&claims_with(
        json!({"exp": now() - 3600, "iat": now() - 7200}),
    ));
    let reason = assert_invalid(&send_token(&chain, &token).await, &token);
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn token_not_yet_valid_is_refused() {
    let chain = chain(example_settings());
    let token = Signer::example_rsa().sign(&claims_with(json!({"nbf": now() + 3600})));
    let reason = assert_invalid(&send_token(&chain, &token).await, &token);
    assert!(reason.contains("not yet valid"), "{reason}");
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let chain = chain(example_settings());
    for claims in [
        claims_with(json!({"iss": "https://evil.example.com"})),
        claims_with(json!({"iss": "https://issuer.example.com/"})),
    ] {
        let token = Signer::example_rsa().sign(&claims);
        assert_invalid(&send_token(&chain, &token).await, &token);
    }
    let token =
        Signer::example_rsa().sign(&claims_with(json!({"iss": "https://evil.example.com"})));
    let reason = assert_invalid(&send_token(&chain, &token).await, &token);
    assert!(reason.contains("issuer"), "{reason}");
}

#[tokio::test]

async fn token_without_iss_is_refused_when_an_issuer_is_configured() {
    let chain = chain(example_settings());
    let token = Signer::example_rsa().sign(&claims_with(json!({"iss": null})));
    assert_invalid(&send_token(&chain, &token).await, &token);
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let chain = chain(example_settings());
    for claims in [
        claims_with(json!({"aud": "someone-else"})),
        claims_with(json!({"aud": ["someone-else", "another"]})),
        claims_with(json!({"aud": []})),
    ] {
        let token = Signer::example_ec().sign(&claims);
        let reason = assert_invalid(&send_token(&chain, &token).await, &token);
        assert!(reason.contains("audience"), "{reason}");
    }
    // Any one accepted audience among several is enough.
    let token = Signer::example_ec().sign(&claims_with(json!({"aud": ["other", AUDIENCE]})));
    assert_accepted(&send_token(&chain, &token).await);
}

#[tokio::test]

async fn token_without_aud_is_refused_when_audiences_are_configured() {
    let chain = chain(example_settings());
    let token = Signer::example_ec().sign(&claims_with(json!({"aud": null})));
    assert_invalid(&send_token(&chain, &token).await, &token);
}

#[tokio::test]
async fn no_issuer_or_audience_configured_skips_those_checks() {
    let chain = chain(settings(&format!(
        "jwks_file: '{}'",
        example("jwks.json").display()
    )));
    let token = Signer::example_rsa().sign(&claims_with(
        json!({"iss": "https://anyone.example.com", "aud": "anything"}),
    ));
    assert_accepted(&send_token(&chain, &token).await);
}

#[tokio::test]
async fn wrong_signature_is_refused() {
    let chain = chain(example_settings());
    // Another RSA key claiming the kid of the trusted one.
    let token = Signer::impostor_rsa().sign(&good_claims());
    let reason = assert_invalid(&send_token(&chain, &token).await, &token);
    assert!(reason.contains("signature"), "{reason}");
    // The same without a kid: every RSA key is tried, none verifies.
    let token = Signer::impostor_rsa().kid(None).sign(&good_claims());
    let reason = assert_invalid(&send_token(&chain, &token).await, &token);
    assert!(reason.contains("signature"), "{reason}");
    // A genuine token whose payload was changed after signing.
    let genuine = Signer::example_rsa().sign(&good_claims());
    assert_accepted(&send_token(&chain, &genuine).await);
    let token = tampered(&genuine, &claims_with(json!({"sub": "admin"})));
    let reason = assert_invalid(&send_token(&chain, &token).await, &token);
    assert!(reason.contains("signature"), "{reason}");
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let chain = chain(example_settings());
    let token = Signer::example_rsa()
        .kid(Some("not-in-the-jwks"))
        .sign(&good_claims());
    let reason = assert_invalid(&send_token(&chain, &token).await, &token);
    assert!(reason.contains("no key"), "{reason}");
    // A kid naming a key of the wrong family (the EC key for an RS256 token).
    let token = Signer::example_rsa()
        .kid(Some("example-ec"))
        .sign(&good_claims());
    assert_invalid(&send_token(&chain, &token).await, &token);
}

#[tokio::test]
async fn alg_none_is_refused() {
    let chain = chain(example_settings());
    let token = alg_none(&good_claims());
    assert_invalid(&send_token(&chain, &token).await, &token);
    // The unsigned payload of a genuine token, with the header swapped to none.
    let genuine = Signer::example_rsa().sign(&good_claims());
    let parts: Vec<&str> = genuine.split('.').collect();
    for header in [
        r#"{"alg":"none","typ":"JWT","kid":"example-rsa"}"#,
        r#"{"alg":"None","typ":"JWT"}"#,
        r#"{"alg":"NONE"}"#,
    ] {
        let token = format!("{}.{}.", b64url(header.as_bytes()), parts[1]);
        assert_invalid(&send_token(&chain, &token).await, &token);
        let token = format!("{}.{}.{}", b64url(header.as_bytes()), parts[1], parts[2]);
        assert_invalid(&send_token(&chain, &token).await, &token);
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    // The classic algorithm confusion: the attacker signs HS256 with the server's
    // published RSA public key as the HMAC secret.
    let public_pem = read(fixture("example-rsa.pub.pem"));
    let mut s = example_settings();
    s.algorithms = vec!["RS256".into(), "ES256".into(), "HS256".into()];
    let chain = chain(s);
    for kid in [Some("example-rsa"), None] {
        let token = Signer::hmac(&public_pem, kid).sign(&good_claims());
        assert_invalid(&send_token(&chain, &token).await, &token);
    }
    // The same with the JWKS `n`/`e` text and the DER as secrets.
    let jwks: Value = serde_json::from_slice(&read(example("jwks.json"))).unwrap();
    let n = jwks["keys"][0]["n"].as_str().unwrap().to_string();
    let token = Signer::hmac(n.as_bytes(), Some("example-rsa")).sign(&good_claims());
    assert_invalid(&send_token(&chain, &token).await, &token);

    // With an `oct` key in the same JWKS, the RSA key is still never an HMAC secret.
    let mut s = example_settings();
    s.jwks_file = Some(fixture("rsa-and-hmac-jwks.json"));
    s.algorithms = vec!["RS256".into(), "HS256".into()];
    let chain = self::chain(s);
    for kid in [Some("example-rsa"), None, Some("example-hmac")] {
        let token = Signer::hmac(&public_pem, kid).sign(&good_claims());
        assert_invalid(&send_token(&chain, &token).await, &token);
    }
    // ... while a token signed with the real shared secret passes, so HS256 works.
    let token = Signer::hmac(HMAC_SECRET, Some("example-hmac")).sign(&good_claims());
    assert_accepted(&send_token(&chain, &token).await);
    let token = Signer::example_rsa().sign(&good_claims());
    assert_accepted(&send_token(&chain, &token).await);
}

#[tokio::test]
async fn hs256_is_refused_unless_listed() {
    let mut s = example_settings();
    s.jwks_file = Some(fixture("hmac-jwks.json"));
    let chain = chain(s);
    let token = Signer::hmac(HMAC_SECRET, Some("example-hmac")).sign(&good_claims());
    let reason = assert_invalid(&send_token(&chain, &token).await, &token);
    assert!(reason.contains("algorithm"), "{reason}");
}

#[tokio::test]
async fn algorithm_not_in_the_allowed_list_is_refused() {
    let mut s = example_settings();
    s.algorithms = vec!["ES256".into()];
    let chain = chain(s);
    let token = Signer::example_rsa().sign(&good_claims());
    let reason = assert_invalid(&send_token(&chain, &token).await, &token);
    assert!(reason.contains("algorithm"), "{reason}");
    // The listed one still passes.
    let token = Signer::example_ec().sign(&good_claims());
    assert_accepted(&send_token(&chain, &token).await);
}

#[tokio::test]
async fn garbage_tokens_are_refused() {
    let chain = chain(example_settings());
    let genuine = Signer::example_rsa().sign(&good_claims());
    let parts: Vec<&str> = genuine.split('.').collect();
    for token in [
        "garbage".to_string(),
        "a.b.c".to_string(),
        "not-base64!.@@@.###".to_string(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{}..{}", parts[0], parts[2]),
        format!("{}.{}.{}.{}", parts[0], parts[1], parts[2], parts[2]),
        format!("{}.{}", b64url(b"[1,2,3]"), parts[1]),
        format!("{}.{}.{}", b64url(b"{}"), parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], b64url(b"not json at all"), parts[2]),
    ] {
        let reason = assert_invalid(&send_token(&chain, &token).await, &token);
        assert!(!reason.is_empty());
    }
}

// ---------------------------------------------------------------------------------
// Leeway and require_exp

#[tokio::test]
async fn leeway_covers_a_recently_expired_token() {
    let token = Signer::example_rsa().sign(&claims_with(json!({"exp": now() - 10})));
    let mut s = example_settings();
    s.leeway = Duration::from_secs(30);
    assert_accepted(&send_token(&chain(s.clone()), &token).await);
    s.leeway = Duration::ZERO;
    let reason = assert_invalid(&send_token(&chain(s), &token).await, &token);
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn leeway_covers_a_token_valid_very_soon() {
    let token = Signer::example_rsa().sign(&claims_with(json!({"nbf": now() + 10})));
    let mut s = example_settings();
    s.leeway = Duration::from_secs(30);
    assert_accepted(&send_token(&chain(s.clone()), &token).await);
    s.leeway = Duration::ZERO;
    let reason = assert_invalid(&send_token(&chain(s), &token).await, &token);
    assert!(reason.contains("not yet valid"), "{reason}");
}

#[tokio::test]
async fn default_leeway_is_30s() {
    let s = example_settings();
    assert_eq!(s.leeway, Duration::from_secs(30));
    let chain = chain(s);
    let token = Signer::example_rsa().sign(&claims_with(json!({"exp": now() - 10})));
    assert_accepted(&send_token(&chain, &token).await);
    let token = Signer::example_rsa().sign(&claims_with(json!({"exp": now() - 60})));
    assert_invalid(&send_token(&chain, &token).await, &token);
}

#[tokio::test]
async fn require_exp_rejects_a_token_without_exp_by_default() {
    let s = example_settings();
    assert!(s.require_exp);
    let token = Signer::example_rsa().sign(&claims_with(json!({"exp": null})));
    let reason = assert_invalid(&send_token(&chain(s.clone()), &token).await, &token);
    assert!(reason.contains("claim"), "{reason}");
    let mut s = s;
    s.require_exp = false;
    assert_accepted(&send_token(&chain(s), &token).await);
}

// ---------------------------------------------------------------------------------
// PEM file source

fn pem_settings(file: &Path, algorithms: &[&str]) -> JwtSettings {
    let mut s = settings(&format!(
        "{{pem_file: '{}', issuer: '{ISSUER}', audiences: ['{AUDIENCE}']}}",
        file.display()
    ));
    if !algorithms.is_empty() {
        s.algorithms = algorithms.iter().map(|a| a.to_string()).collect();
    }
    s
}

#[tokio::test]
async fn pem_file_rsa_key_verifies_rs256() {
    let chain = chain(pem_settings(&fixture("example-rsa.pub.pem"), &[]));
    // A PEM key has no kid: tokens with or without one are checked against it.
    for signer in [Signer::example_rsa(), Signer::example_rsa().kid(None)] {
        let token = signer.sign(&good_claims());
        assert_accepted(&send_token(&chain, &token).await);
    }
    let token = Signer::impostor_rsa().sign(&good_claims());
    assert_invalid(&send_token(&chain, &token).await, &token);
    let token = Signer::example_ec().sign(&good_claims());
    assert_invalid(&send_token(&chain, &token).await, &token);
}

#[tokio::test]
async fn pem_file_ec_p256_key_verifies_es256() {
    let chain = chain(pem_settings(&fixture("example-ec.pub.pem"), &[]));
    let token = Signer::example_ec().kid(None).sign(&good_claims());
    assert_accepted(&send_token(&chain, &token).await);
    let token = Signer::example_rsa().sign(&good_claims());
    assert_invalid(&send_token(&chain, &token).await, &token);
    let token = Signer::p384().sign(&good_claims());
    assert_invalid(&send_token(&chain, &token).await, &token);
}

#[tokio::test]
async fn pem_file_ec_p384_key_verifies_es384() {
    let chain = chain(pem_settings(&fixture("p384.pub.pem"), &[]));
    let token = Signer::p384().sign(&good_claims());
    let a = send_token(&chain, &token).await;
    assert_accepted(&a);
    assert_eq!(a.header("decoded-sub"), Some("alice"));
    let token = Signer::example_ec().sign(&good_claims());
    assert_invalid(&send_token(&chain, &token).await, &token);
}

#[tokio::test]
async fn pem_file_ed25519_key_verifies_eddsa() {
    let chain = chain(pem_settings(&fixture("ed25519.pub.pem"), &[]));
    let token = Signer::ed25519().sign(&good_claims());
    let a = send_token(&chain, &token).await;
    assert_accepted(&a);
    assert_eq!(a.header("decoded-iss"), Some(ISSUER));
    let token = Signer::example_rsa().sign(&good_claims());
    assert_invalid(&send_token(&chain, &token).await, &token);
    // EdDSA must be allowed to be accepted.
    let chain = self::chain(pem_settings(&fixture("ed25519.pub.pem"), &["ES256"]));
    let token = Signer::ed25519().sign(&good_claims());
    assert_invalid(&send_token(&chain, &token).await, &token);
}

#[test]
fn bad_key_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    let e = JwtAuth::new(pem_settings(&junk, &[]))
        .err()
        .expect("junk PEM refused");
    assert!(e.contains("junk.pem"), "{e}");
    // A private EC key is not a public key.
    let e = JwtAuth::new(pem_settings(&example("signing-ec.pem"), &[]))
        .err()
        .expect("private EC key refused");
    assert!(e.contains("signing-ec.pem"), "{e}");
    assert!(!e.contains("PRIVATE"), "{e}");
    let bad_jwks = dir.path().join("bad.json");
    std::fs::write(&bad_jwks, r#"{"keys": []}"#).unwrap();
    let mut s = example_settings();
    s.jwks_file = Some(bad_jwks);
    let e = JwtAuth::new(s).err().expect("empty JWKS refused");
    assert!(e.contains("no usable signing key"), "{e}");
}

#[test]

fn rsa_private_key_as_pem_file_is_refused_at_start() {
    let e = JwtAuth::new(pem_settings(&example("signing-rsa.pem"), &[]))
        .err()
        .expect("private RSA key refused at start");
    assert!(e.contains("signing-rsa.pem"), "{e}");
}

// ---------------------------------------------------------------------------------
// JWKS URL source

/// How the JWKS endpoint answers.
#[derive(Clone)]
enum Reply {
    /// This status and body, plus these headers.
    Answer(u16, String, Vec<(&'static str, String)>),
    /// Accepts the request and never answers.
    Hang,
    /// Sends 200 and its headers and the first bytes of a body, then nothing more.
    StallBody,
    /// 200 with this body sent in 1 KiB chunks, without a `content-length`.
    Chunked(String),
}

/// A JWKS endpoint whose answer the test changes while it runs; it can also hold
/// answers back until the test releases them.
struct JwksServer {
    port: u16,
    reply: Arc<Mutex<Reply>>,
    fetches: Arc<AtomicUsize>,
    hold: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(status: u16, body: String) -> JwksServer {
        Self::start_with(Reply::Answer(status, body, Vec::new())).await
    }

    async fn start_with(reply: Reply) -> JwksServer {
        use axum::body::Body;
        use axum::response::Response;
        use futures_util::StreamExt;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let reply = Arc::new(Mutex::new(reply));
        let fetches = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(tokio::sync::watch::channel(false).0);
        let (r, f, h) = (reply.clone(), fetches.clone(), hold.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let reply = r.lock().unwrap().clone();
                f.fetch_add(1, Ordering::SeqCst);
                let mut held = h.subscribe();
                async move {
                    let _ = held.wait_for(|hold| !*hold).await;
                    let json = |status: u16| {
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                    };
                    match reply {
                        Reply::Answer(status, body, headers) => {
                            let mut resp = json(status);
                            for (name, value) in headers {
                                resp = resp.header(name, value);
                            }
                            resp.body(Body::from(body)).unwrap()
                        }
                        Reply::Hang => std::future::pending().await,
                        Reply::StallBody => {
                            let start = futures_util::stream::iter([Ok::<_, std::io::Error>(
                                bytes::Bytes::from_static(b"{\"keys\": ["),
                            )]);
                            json(200)
                                .body(Body::from_stream(
                                    start.chain(futures_util::stream::pending()),
                                ))
                                .unwrap()
                        }
                        Reply::Chunked(body) => {
                            let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = body
                                .into_bytes()
                                .chunks(1024)
                                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                                .collect();
                            json(200)
                                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                                .unwrap()
                        }
                    }
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            port,
            reply,
            fetches,
            hold,
            task,
        }
    }

    fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/.well-known/jwks.json?tenant=acme",
            self.port
        )
    }

    fn answer(&self, status: u16, body: String) {
        self.reply(Reply::Answer(status, body, Vec::new()));
    }

    fn reply(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Requests that reached the endpoint (counted before any hold or hang).
    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Holds answers back (`true`) or lets them, and any held, go (`false`).
    fn hold(&self, hold: bool) {
        self.hold.send_replace(hold);
    }

    /// Waits until at least `n` requests reached the endpoint.
    async fn wait_fetches(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.fetches() < n {
            assert!(
                Instant::now() < deadline,
                "{} fetches after {within:?}, {n} expected",
                self.fetches()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn jwks_text(path: std::path::PathBuf) -> String {
    String::from_utf8(read(path)).unwrap()
}

/// Sends `token` until `done` holds for the answer, or panics after `within`.
async fn poll(chain: &Chain, token: &str, within: Duration, done: impl Fn(&Answer) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let a = send_token(chain, token).await;
        if done(&a) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still not as expected after {within:?}: {:?}",
            a.immediate
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn accepted(a: &Answer) -> bool {
    a.immediate.is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_fetched_kept_on_failure_and_rotated() {
    // The endpoint fails at first, so the processor has no keys yet.
    let server = JwksServer::start(500, "oops".into()).await;
    let mut s = settings(&format!(
        "{{jwks_url: '{}', refresh_interval: 1s, issuer: '{ISSUER}', audiences: ['{AUDIENCE}']}}",
        server.url()
    ));
    s.leeway = Duration::from_secs(5);
    let chain = chain(s);
    let rsa = Signer::example_rsa().sign(&good_claims());
    let ec = Signer::example_ec().sign(&good_claims());
    let rotated = Signer::rotated_rsa().sign(&good_claims());

    // Before any key is loaded: 503, whatever the token.
    assert_unavailable(&send_token(&chain, &rsa).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.fetches() == 0 {
        assert!(Instant::now() < deadline, "the JWKS URL is never fetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_unavailable(&send_token(&chain, &rsa).await);
    // A missing token is still a 401, keys or not.
    assert_missing(&send(&chain, &[]).await);

    // The endpoint recovers: the retry (1s) loads the keys.
    server.answer(200, jwks_text(example("jwks.json")));
    poll(&chain, &rsa, Duration::from_secs(5), accepted).await;
    assert_accepted(&send_token(&chain, &ec).await);
    let bad = Signer::impostor_rsa().sign(&good_claims());
    assert_invalid(&send_token(&chain, &bad).await, &bad);
    assert_invalid(&send_token(&chain, &rotated).await, &rotated);

    // The endpoint fails again: the last good keys stay in force.
    server.answer(500, "down".into());
    let failed_from = server.fetches();
    let deadline = Instant::now() + Duration::from_secs(6);
    while server.fetches() < failed_from + 2 {
        assert!(
            Instant::now() < deadline,
            "no refresh attempts while failing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_accepted(&send_token(&chain, &rsa).await);
    assert_accepted(&send_token(&chain, &ec).await);
    // An unusable document is a failure too.
    server.answer(200, r#"{"keys": []}"#.into());
    let from = server.fetches();
    let deadline = Instant::now() + Duration::from_secs(6);
    while server.fetches() < from + 1 {
        assert!(Instant::now() < deadline, "no refresh attempt");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_accepted(&send_token(&chain, &rsa).await);

    // Key rotation: the new key's tokens pass within a few seconds, the old key's fail.
    server.answer(200, jwks_text(fixture("rotated-jwks.json")));
    poll(&chain, &rotated, Duration::from_secs(6), accepted).await;
    let reason = assert_invalid(&send_token(&chain, &rsa).await, &rsa);
    assert!(reason.contains("no key"), "{reason}");
    assert_invalid(&send_token(&chain, &ec).await, &ec);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_first_fetch_is_asynchronous() {
    let server = JwksServer::start(200, jwks_text(example("jwks.json"))).await;
    let chain = chain(settings(&format!("jwks_url: '{}'", server.url())));
    let token = Signer::example_ec().sign(&good_claims());
    // The first answers may be 503 (keys not there yet), then the token passes.
    poll(&chain, &token, Duration::from_secs(5), |a| {
        if let Some(i) = &a.immediate {
            assert_eq!(i.status, 503, "only 503 before the first fetch");
        }
        accepted(a)
    })
    .await;
    assert!(server.fetches() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_refresh_stops_when_the_processor_is_dropped() {
    let server = JwksServer::start(500, "down".into()).await;
    let s = settings(&format!(
        "{{jwks_url: '{}', refresh_interval: 1s}}",
        server.url()
    ));
    let chain = chain(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.fetches() == 0 {
        assert!(Instant::now() < deadline, "never fetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(chain);
    // At most one attempt already in its sleep may still run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_drop = server.fetches();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(server.fetches(), after_drop, "fetching goes on after drop");
}

// ---------------------------------------------------------------------------------
// JWKS URL hardening: deadlines, size cap, bad answers, unknown kids, Cache-Control

const FETCHES: &str = "extproc_jwks_fetches_total";
const UNKNOWN_KID: &str = "extproc_jwks_unknown_kid_total";

/// `jwt_auth` (then `trivial`) built the way a config builds it, on route `api` of a
/// fresh registry, so its JWKS counters can be read.
fn observed_chain(settings: JwtSettings) -> (Chain, Arc<Metrics>) {
    let metrics = Metrics::new();
    let chain = ProcessorSpec::new("jwt_auth", settings)
        .add_to(
            Chain::builder().observe(&metrics, "api"),
            &BuildContext::serving("api", Some(metrics.families())),
        )
        .expect("jwt_auth builds")
        .processor(Trivial)
        .build()
        .unwrap();
    (chain, metrics)
}

/// The value of counter `name` with `label` (e.g. `result="timeout"`) on route `api`.
fn counter(metrics: &Metrics, name: &str, label: &str) -> u64 {
    let text = metrics.render();
    text.lines()
        .find(|l| {
            l.starts_with(&format!("{name}{{")) && l.contains(label) && l.contains(r#"route="api""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} with {label} in\n{text}"))
}

/// Waits until counter `name` with `label` reaches `at_least`.
async fn wait_counter(metrics: &Metrics, name: &str, label: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(metrics, name, label) < at_least {
        assert!(
            Instant::now() < deadline,
            "{name} {label} still below {at_least}:\n{}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Settings for `server`'s URL with the example's issuer and audience, plus `extra`
/// (`, key: value` pairs).
fn url_settings(server: &JwksServer, extra: &str) -> JwtSettings {
    settings(&format!(
        "{{jwks_url: '{}', issuer: '{ISSUER}', audiences: ['{AUDIENCE}']{extra}}}",
        server.url()
    ))
}

/// The example keys and the rotated one in one document: a rotation under way.
fn rotated_in_jwks() -> String {
    let mut doc: Value = serde_json::from_slice(&read(example("jwks.json"))).unwrap();
    let rotated: Value = serde_json::from_slice(&read(fixture("rotated-jwks.json"))).unwrap();
    let added = rotated["keys"].as_array().unwrap().clone();
    doc["keys"].as_array_mut().unwrap().extend(added);
    doc.to_string()
}

/// A running chain with the example keys loaded from `server`.
async fn loaded(server: &JwksServer, extra: &str) -> (Chain, Arc<Metrics>) {
    let (chain, metrics) = observed_chain(url_settings(server, extra));
    let rsa = Signer::example_rsa().sign(&good_claims());
    poll(&chain, &rsa, Duration::from_secs(5), accepted).await;
    (chain, metrics)
}

/// The example tokens still pass and the rotated one does not: the last good keys
/// (the example's) are in force.
async fn assert_example_keys_in_force(chain: &Chain) {
    for signer in [Signer::example_rsa(), Signer::example_ec()] {
        assert_accepted(&send_token(chain, &signer.sign(&good_claims())).await);
    }
    let rotated = Signer::rotated_rsa().sign(&good_claims());
    assert_invalid(&send_token(chain, &rotated).await, &rotated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_for_the_first_token_that_names_it() {
    let server = JwksServer::start(200, jwks_text(example("jwks.json"))).await;
    // The background refresh is an hour away: only the unknown kid can fetch.
    let (chain, metrics) = loaded(&server, ", refresh_interval: 1h").await;
    assert_eq!(server.fetches(), 1);

    server.answer(200, rotated_in_jwks());
    let rotated = Signer::rotated_rsa().sign(&good_claims());
    let a = send_token(&chain, &rotated).await;
    assert_accepted(&a);
    assert_eq!(a.header("decoded-sub"), Some("alice"));
    assert_eq!(server.fetches(), 2, "one refetch, waited for");
    assert_eq!(counter(&metrics, UNKNOWN_KID, r#"outcome="refetched""#), 1);
    assert_eq!(counter(&metrics, FETCHES, r#"result="ok""#), 2);
    // The keys still published keep working.
    assert_accepted(&send_token(&chain, &Signer::example_rsa().sign(&good_claims())).await);

    // Another unknown kid right away is refused as it stands: 401, no fetch.
    let stranger = Signer::example_rsa()
        .kid(Some("never-published"))
        .sign(&good_claims());
    let reason = assert_invalid(&send_token(&chain, &stranger).await, &stranger);
    assert!(reason.contains("no key"), "{reason}");
    assert_eq!(
        counter(&metrics, UNKNOWN_KID, r#"outcome="rate_limited""#),
        1
    );
    assert_eq!(server.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetches_are_rate_limited() {
    let server = JwksServer::start(200, jwks_text(example("jwks.json"))).await;
    let (chain, metrics) =
        loaded(&server, ", refresh_interval: 1h, min_refetch_interval: 1s").await;
    let rotated = Signer::rotated_rsa().sign(&good_claims());

    // Not published yet: the refetch brings nothing new, the token is refused.
    let reason = assert_invalid(&send_token(&chain, &rotated).await, &rotated);
    assert!(reason.contains("no key"), "{reason}");
    assert_eq!(server.fetches(), 2);
    assert_eq!(counter(&metrics, UNKNOWN_KID, r#"outcome="refetched""#), 1);
    // At once again: refused without a fetch.
    assert_invalid(&send_token(&chain, &rotated).await, &rotated);
    assert_eq!(server.fetches(), 2);
    assert!(counter(&metrics, UNKNOWN_KID, r#"outcome="rate_limited""#) >= 1);

    // Published now: once min_refetch_interval has passed, a refetch brings it. Until
    // then every answer is a 401, never a 5xx.
    server.answer(200, rotated_in_jwks());
    poll(&chain, &rotated, Duration::from_secs(5), |a| {
        if let Some(i) = &a.immediate {
            assert_eq!(i.status, 401, "{:?}", String::from_utf8_lossy(&i.body));
        }
        accepted(a)
    })
    .await;
    assert_eq!(counter(&metrics, UNKNOWN_KID, r#"outcome="refetched""#), 2);
    assert_eq!(server.fetches(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_refetch_runs_other_unknown_kids_get_401_and_no_second_fetch() {
    let server = JwksServer::start(200, jwks_text(example("jwks.json"))).await;
    let (chain, metrics) = loaded(&server, ", refresh_interval: 1h").await;
    let rotated = Signer::rotated_rsa().sign(&good_claims());

    server.answer(200, rotated_in_jwks());
    server.hold(true);
    let first = tokio::spawn({
        let (chain, token) = (chain.clone(), rotated.clone());
        async move { send_token(&chain, &token).await }
    });
    // The first request's refetch is at the server, held.
    server.wait_fetches(2, Duration::from_secs(5)).await;
    let reason = assert_invalid(&send_token(&chain, &rotated).await, &rotated);
    assert!(reason.contains("no key"), "{reason}");
    assert_eq!(counter(&metrics, UNKNOWN_KID, r#"outcome="in_flight""#), 1);

    server.hold(false);
    let a = first.await.expect("the first request completes");
    assert_accepted(&a);
    assert_eq!(server.fetches(), 2, "one fetch for both requests");
    assert_accepted(&send_token(&chain, &rotated).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refetch_that_hangs_is_bounded_by_fetch_timeout() {
    let server = JwksServer::start(200, jwks_text(example("jwks.json"))).await;
    let (chain, metrics) = loaded(&server, ", refresh_interval: 1h, fetch_timeout: 500ms").await;
    let rotated = Signer::rotated_rsa().sign(&good_claims());

    server.reply(Reply::Hang);
    let started = Instant::now();
    let a = send_token(&chain, &rotated).await;
    let took = started.elapsed();
    assert_invalid(&a, &rotated);
    assert!(
        took >= Duration::from_millis(400),
        "did not wait for the refetch: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "waited past the deadline: {took:?}"
    );
    wait_counter(&metrics, FETCHES, r#"result="timeout""#, 1).await;
    assert_example_keys_in_force(&chain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deadline_covers_the_response_headers_and_the_body() {
    let server = JwksServer::start(200, jwks_text(example("jwks.json"))).await;
    let (chain, metrics) = loaded(&server, ", refresh_interval: 1s, fetch_timeout: 300ms").await;
    // Accepts and never answers; then answers headers and stalls the body. Each is a
    // timed-out fetch, and the keys stay.
    for reply in [Reply::Hang, Reply::StallBody] {
        let before = counter(&metrics, FETCHES, r#"result="timeout""#);
        server.reply(reply);
        wait_counter(&metrics, FETCHES, r#"result="timeout""#, before + 1).await;
        assert_example_keys_in_force(&chain).await;
    }
    // A stalled fetch leaves nothing stuck: the next good answer is taken.
    server.answer(200, jwks_text(fixture("rotated-jwks.json")));
    let rotated = Signer::rotated_rsa().sign(&good_claims());
    poll(&chain, &rotated, Duration::from_secs(6), accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_jwks_is_refused_and_the_last_good_keys_kept() {
    let server = JwksServer::start(200, jwks_text(example("jwks.json"))).await;
    let (chain, metrics) = loaded(&server, ", refresh_interval: 1s, max_jwks_bytes: 4096").await;
    // Valid JSON (a JWKS with the rotated key and trailing whitespace), only too large:
    // with a content-length, and streamed without one.
    let padded = format!(
        "{}{}",
        jwks_text(fixture("rotated-jwks.json")),
        " ".repeat(8192)
    );
    for reply in [
        Reply::Answer(200, padded.clone(), Vec::new()),
        Reply::Chunked(padded.clone()),
    ] {
        let before = counter(&metrics, FETCHES, r#"result="too_large""#);
        server.reply(reply);
        wait_counter(&metrics, FETCHES, r#"result="too_large""#, before + 1).await;
        assert_example_keys_in_force(&chain).await;
    }
    // The same document under the cap is taken.
    server.answer(200, jwks_text(fixture("rotated-jwks.json")));
    let rotated = Signer::rotated_rsa().sign(&good_claims());
    poll(&chain, &rotated, Duration::from_secs(6), accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_errors_from_the_jwks_url_keep_the_last_good_keys() {
    let server = JwksServer::start(200, jwks_text(example("jwks.json"))).await;
    let (chain, metrics) = loaded(&server, ", refresh_interval: 1s").await;
    let rotated_doc = jwks_text(fixture("rotated-jwks.json"));
    let cases: Vec<(&str, u16, String, &str)> = vec![
        ("not JSON", 200, "<html>maintenance</html>".into(), "invalid"),
        ("empty body", 200, String::new(), "invalid"),
        ("JSON, not a JWKS", 200, r#"{"issuer": "x", "n": 1}"#.into(), "invalid"),
        ("keys not a list", 200, r#"{"keys": {"kty": "RSA"}}"#.into(), "invalid"),
        (
            "keys that do not parse",
            200,
            r#"{"keys": [1, "two", {"kty": "RSA", "kid": "example-rsa", "n": "***", "e": "AQAB"}, {"kty": "EC", "crv": "P-256"}]}"#.into(),
            "invalid",
        ),
        ("no keys", 200, r#"{"keys": []}"#.into(), "invalid"),
        // An error status is a failure whatever its body holds.
        ("500 with a JWKS body", 500, rotated_doc.clone(), "http_status"),
        ("404", 404, "not found".into(), "http_status"),
    ];
    for (what, status, body, result) in cases {
        let label = format!(r#"result="{result}""#);
        let before = counter(&metrics, FETCHES, &label);
        server.answer(status, body);
        wait_counter(&metrics, FETCHES, &label, before + 1).await;
        // Whatever the next fetch is doing, the keys in force are the example's.
        for signer in [Signer::example_rsa(), Signer::example_ec()] {
            let a = send_token(&chain, &signer.sign(&good_claims())).await;
            assert!(a.immediate.is_none(), "{what}: keys lost");
        }
    }
    assert_example_keys_in_force(&chain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_max_age_shortens_the_refresh_down_to_min_refetch_interval() {
    // The refresh interval is an hour; the server says its answer is fresh for 0 s,
    // so the floor, min_refetch_interval (1s), paces the fetches.
    let server = JwksServer::start_with(Reply::Answer(
        200,
        jwks_text(example("jwks.json")),
        vec![("cache-control", "public, max-age=0".into())],
    ))
    .await;
    let started = Instant::now();
    let (_chain, _metrics) =
        loaded(&server, ", refresh_interval: 1h, min_refetch_interval: 1s").await;
    server.wait_fetches(3, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "3 fetches in {took:?}: max-age=0 must not go below min_refetch_interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_max_age_cannot_stretch_the_refresh_interval() {
    let server = JwksServer::start_with(Reply::Answer(
        200,
        jwks_text(example("jwks.json")),
        vec![("cache-control", "max-age=86400".into())],
    ))
    .await;
    let (_chain, _metrics) = loaded(&server, ", refresh_interval: 1s").await;
    server.wait_fetches(3, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_processor_for_the_same_url_starts_with_the_last_good_keys() {
    // As after a config reload: the replacement serves at once, even with the URL down.
    let server = JwksServer::start(200, jwks_text(example("jwks.json"))).await;
    let (first, _m) = loaded(&server, ", refresh_interval: 1h").await;
    server.answer(500, "down".into());
    let (second, _m2) = observed_chain(url_settings(&server, ", refresh_interval: 1h"));
    assert_example_keys_in_force(&second).await;
    drop(first);
    assert_example_keys_in_force(&second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fetches_are_logged_at_warn_without_key_material() {
    // Values a careless error message would quote: in the wrong place of the document,
    // in an error page, and a credential in the URL's query.
    const SECRET: &str = "c2VjcmV0LWtleS1tYXRlcmlhbA";
    let server = JwksServer::start(200, format!(r#"{{"keys": "{SECRET}"}}"#)).await;
    let url = format!("{}&api_key=QUERY-{SECRET}", server.url());
    let gw = common::Gateway::start(&format!(
        "routes:\n  - name: api\n    processors:\n      - jwt_auth: {{jwks_url: '{url}', refresh_interval: 1s}}\n"
    ))
    .await;
    let wait_log = async |what: &str, times: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw.proc.log_text().matches(what).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {what:?} logged:\n{}",
                gw.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_log("not a JWKS document", 1).await;
    server.answer(500, format!("<html>{SECRET}</html>"));
    wait_log("HTTP 500", 1).await;
    server.answer(
        200,
        format!(r#"{{"keys": [{{"kty": "RSA", "kid": "k", "n": "{SECRET}!", "e": 7}}]}}"#),
    );
    wait_log("no usable signing key", 1).await;
    let log = gw.proc.log_text();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("JWKS fetch failed"))
        .collect();
    assert!(failures.len() >= 3, "{log}");
    for line in &failures {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("?REDACTED"), "{line}");
    }
    assert!(
        !log.contains(SECRET),
        "the log leaks key material or the query:\n{log}"
    );
}

#[test]
fn jwks_url_limits_have_defaults_and_show_in_the_config() {
    let s = settings("jwks_url: 'https://idp.example.com/keys'");
    assert_eq!(s.fetch_timeout, Duration::from_secs(5));
    assert_eq!(s.max_jwks_bytes, 1024 * 1024);
    assert_eq!(s.min_refetch_interval, Duration::from_secs(30));
    let yaml = "routes:\n  - name: api\n    processors:\n      - jwt_auth:\n          jwks_url: 'https://idp.example.com/keys'\n          fetch_timeout: 2s\n          max_jwks_bytes: 65536\n          min_refetch_interval: 1m\n";
    let shown = GatewayConfig::parse(yaml, "t.yaml")
        .unwrap()
        .to_redacted_yaml();
    for want in [
        "fetch_timeout: 2s",
        "max_jwks_bytes: 65536",
        "min_refetch_interval: 1m",
    ] {
        assert!(shown.contains(want), "{want} in {shown}");
    }
    GatewayConfig::parse(&shown, "shown.yaml").expect("the shown config loads");
}

// ---------------------------------------------------------------------------------
// JWKS URL over HTTPS with a private CA

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed to run this test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed certificate for 127.0.0.1 (`cert.pem`, key `key.pem`) in `dir`.
fn self_signed(dir: &Path) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "keyUsage=digitalSignature",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
        dir,
    );
}

/// A minimal HTTPS server (rustls, one thread per connection) answering every request
/// with `body`; counts TLS connections accepted (handshakes attempted).
struct HttpsServer {
    port: u16,
    connections: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

impl HttpsServer {
    fn start(cert: &Path, key: &Path, body: String) -> HttpsServer {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (c, s) = (connections.clone(), served.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (config, body, served) = (config.clone(), body.clone(), s.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let Ok(conn) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    if tls.write_all(response.as_bytes()).is_ok() {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        HttpsServer {
            port,
            connections,
            served,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_jwks_url_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path());
    let server = HttpsServer::start(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
        jwks_text(example("jwks.json")),
    );
    let url = format!("https://127.0.0.1:{}/jwks.json", server.port);
    let token = Signer::example_rsa().sign(&good_claims());

    // Trusted through ca_file: keys load and tokens pass.
    let trusted = chain(settings(&format!(
        "{{jwks_url: '{url}', ca_file: '{}'}}",
        dir.path().join("cert.pem").display()
    )));
    poll(&trusted, &token, Duration::from_secs(5), accepted).await;
    assert!(server.served.load(Ordering::SeqCst) >= 1);
    let served = server.served.load(Ordering::SeqCst);

    // Without ca_file the certificate is not trusted: no keys, ever.
    let connections = server.connections.load(Ordering::SeqCst);
    let untrusted = chain(settings(&format!(
        "{{jwks_url: '{url}', refresh_interval: 1s}}"
    )));
    let deadline = Instant::now() + Duration::from_secs(5);
    // Wait for two attempts (the first and a retry) to have reached the server.
    while server.connections.load(Ordering::SeqCst) < connections + 2 {
        assert!(Instant::now() < deadline, "the HTTPS URL is never fetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_unavailable(&send_token(&untrusted, &token).await);
    assert_eq!(
        server.served.load(Ordering::SeqCst),
        served,
        "no JWKS was served over an untrusted connection"
    );
    // The trusted processor is unaffected.
    assert_accepted(&send_token(&trusted, &token).await);
}

#[test]
fn ca_file_must_hold_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "nothing here").unwrap();
    let s = settings(&format!(
        "{{jwks_url: 'https://127.0.0.1:1/jwks.json', ca_file: '{}'}}",
        ca.display()
    ));
    let e = JwtAuth::new(s).err().expect("bad ca_file refused");
    assert!(e.contains("ca.pem"), "{e}");
    let s = settings(&format!(
        "{{jwks_url: 'https://127.0.0.1:1/jwks.json', ca_file: '{}'}}",
        dir.path().join("absent.pem").display()
    ));
    let e = JwtAuth::new(s).err().expect("missing ca_file refused");
    assert!(e.contains("absent.pem"), "{e}");
}

// ---------------------------------------------------------------------------------
// Config-level checks

#[test]
fn missing_jwks_file_is_a_config_error_naming_the_processor() {
    let yaml = "routes:\n  - name: api\n    processors:\n      - jwt_auth: {jwks_file: /nonexistent/dir/jwks.json}\n      - trivial\n";
    let e = GatewayConfig::parse(yaml, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.yaml: "), "{e}");
    assert!(e.contains("routes[0].processors[0] (jwt_auth)"), "{e}");
    assert!(e.contains("/nonexistent/dir/jwks.json"), "{e}");
}

#[test]
fn algorithm_none_is_a_config_error_with_the_line() {
    let yaml = "routes:\n  - name: api\n    processors:\n      - trivial\n      - jwt_auth:\n          jwks_file: examples/jwt/jwks.json\n          algorithms: [none]\n";
    let e = GatewayConfig::parse(yaml, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.yaml: line "), "{e}");
    let line: usize = e["t.yaml: line ".len()..]
        .split(' ')
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no line number in {e}"));
    assert!(
        (5..=7).contains(&line),
        "line {line} is not in the jwt_auth entry (lines 5-7): {e}"
    );
    assert!(e.contains("never accepted"), "{e}");
}

#[test]
fn other_bad_settings_are_config_errors() {
    let cases = [
        ("{jwks_file: a.json, pem_file: b.pem}", "exactly one"),
        ("{}", "exactly one"),
        (
            "{jwks_file: a.json, algorithms: [RS1]}",
            "unknown algorithm",
        ),
        ("{jwks_file: a.json, algorithms: []}", "must not be empty"),
        ("{pem_file: a.pem, algorithms: [HS256]}", "shared secret"),
        ("{jwks_url: 'ftp://idp/keys'}", "http"),
        (
            "{jwks_url: 'https://idp/keys', refresh_interval: 100ms}",
            "at least 1s",
        ),
        (
            "{jwks_file: a.json, claim_header_prefix: 'bad prefix'}",
            "claim_header_prefix",
        ),
        (
            "{jwks_url: 'https://idp/keys', fetch_timeout: 0s}",
            "fetch_timeout",
        ),
        (
            "{jwks_url: 'https://idp/keys', fetch_timeout: 10m}",
            "at most 1m",
        ),
        (
            "{jwks_url: 'https://idp/keys', max_jwks_bytes: 0}",
            "max_jwks_bytes",
        ),
        (
            "{jwks_url: 'https://idp/keys', min_refetch_interval: 100ms}",
            "min_refetch_interval",
        ),
        ("{jwks_file: a.json, colour: red}", "unknown field `colour`"),
    ];
    for (settings, want) in cases {
        let yaml =
            format!("routes:\n  - name: api\n    processors:\n      - jwt_auth: {settings}\n");
        let e = GatewayConfig::parse(&yaml, "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{settings}: {e}");
        assert!(e.starts_with("t.yaml: line 4"), "{settings}: {e}");
    }
    let e = GatewayConfig::parse(
        "routes:\n  - name: api\n    processors: [jwt_auth]\n",
        "t.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("set exactly one of jwks_file, pem_file, jwks_url"),
        "{e}"
    );
}

#[test]
fn redacted_config_hides_the_jwks_url_query() {
    let yaml = "routes:\n  - name: api\n    processors:\n      - jwt_auth:\n          jwks_url: 'https://idp.example.com/keys?api_key=s3cr3t-value&x=1'\n          issuer: https://issuer.example.com\n";
    let config = GatewayConfig::parse(yaml, "t.yaml").unwrap();
    let shown = config.to_redacted_yaml();
    assert!(!shown.contains("s3cr3t-value"), "{shown}");
    assert!(!shown.contains("api_key"), "{shown}");
    assert!(
        shown.contains("https://idp.example.com/keys?REDACTED"),
        "{shown}"
    );
    assert!(shown.contains("https://issuer.example.com"), "{shown}");
    // A URL without a query is shown as it is.
    let yaml = "routes:\n  - name: api\n    processors:\n      - jwt_auth: {jwks_url: 'https://idp.example.com/keys'}\n";
    let shown = GatewayConfig::parse(yaml, "t.yaml")
        .unwrap()
        .to_redacted_yaml();
    assert!(shown.contains("https://idp.example.com/keys"), "{shown}");
    assert!(!shown.contains("redacted"), "{shown}");
}

#[test]

fn redacted_config_is_a_loadable_config() {
    let yaml = "routes:\n  - name: api\n    processors:\n      - jwt_auth:\n          jwks_url: 'https://idp.example.com/keys?api_key=s3cr3t'\n      - trivial\n";
    let shown = GatewayConfig::parse(yaml, "t.yaml")
        .unwrap()
        .to_redacted_yaml();
    let again =
        GatewayConfig::parse(&shown, "redacted.yaml").unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert_eq!(again.routes[0].processors.len(), 2);
}

// ---------------------------------------------------------------------------------
// The example

#[tokio::test]
async fn example_config_accepts_example_tokens() {
    // Integration tests run from the package root, where the example's relative
    // `jwks_file` path resolves.
    let config = GatewayConfig::load(&example("gateway.yaml")).expect("example config");
    let router = config.build_router().expect("router");
    let run = |path: &'static str, auth: Option<String>| {
        let router = router.clone();
        async move {
            let mut h = vec![
                (":method", "GET"),
                (":path", path),
                ("x-request-id", "rid-1"),
            ];
            let auth = auth.map(|t| format!("Bearer {t}"));
            if let Some(a) = &auth {
                h.push(("authorization", a));
            }
            Driver::with_router(router)
                .request_headers(&h, true)
                .await
                .unwrap()
        }
    };
    for signer in [Signer::example_rsa(), Signer::example_ec()] {
        let a = run("/api", Some(signer.sign(&good_claims()))).await;
        assert_accepted(&a);
        assert_eq!(a.header("decoded-sub"), Some("alice"));
    }
    assert_missing(&run("/api", None).await);
    let a = run("/public/x", None).await;
    assert!(a.immediate.is_none());
    assert_eq!(a.header("x-extra-request-id"), Some("rid-1"));
    let bad = Signer::example_rsa().sign(&claims_with(json!({"aud": "other"})));
    assert_invalid(&run("/api", Some(bad.clone())).await, &bad);
}

#[tokio::test]
async fn example_mint_script_tokens_pass() {
    let chain = chain(example_settings());
    for alg in ["RS256", "ES256"] {
        let out = match Command::new("python3")
            .arg(example("mint.py"))
            .args(["--alg", alg, "--sub", "carol", "--claim", "roles=[\"ops\"]"])
            .output()
        {
            Ok(out) => out,
            // A missing python3 fails the test, never skips it.
            Err(e) => panic!("python3 is required to run examples/jwt/mint.py: {e}"),
        };
        assert!(
            out.status.success(),
            "mint.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let a = send_token(&chain, &token).await;
        assert_accepted(&a);
        assert_eq!(a.header("decoded-sub"), Some("carol"));
        assert_eq!(a.header("decoded-roles"), Some(r#"["ops"]"#));
    }
}

#[test]
fn example_jwks_matches_the_published_signing_keys() {
    let jwks: Value = serde_json::from_slice(&read(example("jwks.json"))).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["kid"], "example-rsa");
    assert_eq!(keys[0]["alg"], "RS256");
    assert_eq!(keys[0]["kty"], "RSA");
    assert_eq!(keys[1]["kid"], "example-ec");
    assert_eq!(keys[1]["alg"], "ES256");
    assert_eq!(keys[1]["crv"], "P-256");
    for key in keys {
        assert!(key.get("d").is_none(), "a private part in the public JWKS");
    }
    // Each key verifies tokens of its private half (decoded straight from the JWK).
    for (i, signer) in [Signer::example_rsa(), Signer::example_ec()]
        .into_iter()
        .enumerate()
    {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(keys[i].clone()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let token = signer.sign(&good_claims());
        let mut v = jsonwebtoken::Validation::new(signer.alg);
        v.set_audience(&[AUDIENCE]);
        jsonwebtoken::decode::<Value>(&token, &key, &v).expect("example key pair matches");
    }
}

#[tokio::test]
async fn a_cached_token_still_expires() {
    let mut s = example_settings();
    s.leeway = Duration::from_secs(0);
    let chain = chain(s);
    let token = Signer::example_rsa().sign(&claims_with(json!({"exp": now() + 2})));
    // Verified, then served from the cache of verified tokens.
    assert_accepted(&send_token(&chain, &token).await);
    assert_accepted(&send_token(&chain, &token).await);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let reason = assert_invalid(&send_token(&chain, &token).await, &token);
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn the_cache_can_be_turned_off_and_changes_nothing_observable() {
    for cache in [0usize, 1, 4096] {
        let mut s = example_settings();
        s.verified_cache = cache;
        let chain = chain(s);
        let alice = Signer::example_rsa().sign(&good_claims());
        let bob = Signer::example_rsa().sign(&claims_with(json!({"sub": "bob"})));
        for _ in 0..3 {
            let a = send_token(&chain, &alice).await;
            assert_eq!(a.header("decoded-sub"), Some("alice"), "cache {cache}");
            let b = send_token(&chain, &bob).await;
            assert_eq!(b.header("decoded-sub"), Some("bob"), "cache {cache}");
        }
        let bad = Signer::impostor_rsa().sign(&good_claims());
        assert_invalid(&send_token(&chain, &bad).await, &bad);
    }
}
