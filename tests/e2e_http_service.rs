//! ext_proc over HTTP through real Envoy 1.40: the filter configured with
//! `http_service` POSTs each message as JSON to the gateway's HTTP listener, which
//! runs the same routes and chains as gRPC. The per-request state (timer's start,
//! the processors that ran) must follow one HTTP request from its request-headers POST
//! to its response-headers POST, also with many requests in flight.

mod common;

#[path = "fixtures/jwt/helpers.rs"]
mod jwt_helpers;

use std::time::Duration;

use common::*;
use jwt_helpers::*;

const PATH: &str = "/ext_proc";

struct Stack {
    envoy: Envoy,
    gateway: Gateway,
    upstream: Upstream,
    client: HttpClient,
}

/// Envoy with `http_service` in front of the upstream, and the gateway started with
/// `args` plus `--http-addr` (no `--config`: the embedded default), or with `yaml`.
async fn stack(yaml: Option<&str>) -> Option<Stack> {
    let bin = envoy_bin()?;
    let upstream = Upstream::start().await;
    let http_addr = "127.0.0.1:0";
    let gateway = match yaml {
        Some(yaml) => Gateway::start_with(yaml, &["--http-addr", http_addr]).await,
        None => Gateway::start_args(&["--http-addr", http_addr]).await,
    };
    let http_port = gateway.http_port.expect("http listener");
    let config = envoy_http_service_config(0, 0, http_port, upstream.port, PATH);
    let envoy = Envoy::start_ingress(&bin, config).await;
    Some(Stack {
        envoy,
        gateway,
        upstream,
        client: client(),
    })
}

impl Stack {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        send(&self.client, self.envoy.port, "GET", path, headers, empty()).await
    }

    async fn gateway_metrics(&self) -> String {
        http_get(self.gateway.admin_port, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Envoy saw no failed, spurious, rejected or timed-out exchange, every message
    /// it sent got an answer, and the gateway answered every POST with 200.
    async fn assert_clean(&self) {
        for stat in [
            "spurious_msgs_received",
            "streams_failed",
            "rejected_header_mutations",
            "message_timeouts",
            "http_not_ok_resp_received",
            "failure_mode_allowed",
        ] {
            assert_eq!(self.envoy.ext_proc_stat(stat).await, 0, "ext_proc.{stat}");
        }
        let sent = self.envoy.ext_proc_stat("stream_msgs_sent").await;
        assert!(sent > 0, "Envoy sent nothing to the gateway");
        assert_eq!(
            self.envoy.ext_proc_stat("stream_msgs_received").await,
            sent,
            "every message Envoy sent got its answer"
        );
        let m = self.gateway_metrics().await;
        let ok = metric(&m, r#"extproc_http_requests_total{result="ok"}"#);
        assert_eq!(
            ok,
            Some(sent as f64),
            "the gateway's count of answered POSTs"
        );
        for result in ["malformed", "too_large", "rejected", "internal"] {
            let series = format!(r#"extproc_http_requests_total{{result="{result}"}}"#);
            assert_eq!(metric(&m, &series), Some(0.0), "{series}");
        }
    }
}

fn is_rfc3339_micros(v: &str) -> bool {
    // 2026-11-24T04:00:28.123456Z
    v.len() == 27 && v.ends_with('Z') && v.as_bytes().get(10) == Some(&b'T')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_chain_runs_over_http_with_state_carried_to_the_response() {
    let Some(s) = stack(None).await else { return };
    let before = s.upstream.hits();
    let r = s
        .get(
            "/hello/world?x=1",
            &[("x-request-id", "rid-http-1"), ("x-probe", "p")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.upstream.hits(), before + 1);

    // What the upstream received: request-header mutations of every processor.
    let echoed = r.echoed();
    let up = |name: &str| echoed.headers.get(name).map(String::as_str);
    assert_eq!(up("x-probe"), Some("p"));
    assert_eq!(up("x-extra-request-id"), Some("rid-http-1"));
    let want_digest = digest("unknown", "GET", "/hello/world?x=1", b"");
    assert_eq!(up("x-request-digest"), Some(want_digest.as_str()));
    let started = up("x-request-started").expect("x-request-started upstream");
    assert!(is_rfc3339_micros(started), "{started}");
    assert_eq!(up("x-context-id"), Some(""));

    // What the client received: response-header mutations, computed from the state the
    // request-headers POST left (a fresh state would have no start time or digest).
    assert_eq!(r.header("x-extra-request-id"), Some("rid-http-1"));
    assert_eq!(r.header("x-request-started"), Some(started));
    assert_eq!(r.header("x-request-digest"), Some(want_digest.as_str()));
    let ns: u64 = r
        .header("x-duration-ns")
        .expect("x-duration-ns")
        .parse()
        .expect("integer ns");
    assert!(ns > 0 && ns < 30_000_000_000, "{ns}");
    assert_eq!(
        r.header("x-ext-procs-applied"),
        Some("trivial,timer,digest,context_check,echo")
    );

    // Two POSTs for the request: request headers, then response headers.
    assert_eq!(s.envoy.ext_proc_stat("stream_msgs_sent").await, 2);
    // No gRPC stream is involved.
    assert_eq!(s.envoy.ext_proc_stat("streams_started").await, 0);
    s.assert_clean().await;
    let m = s.gateway_metrics().await;
    assert_eq!(
        metric(&m, r#"extproc_http_exchanges_total{event="resumed"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(metric(&m, "extproc_http_exchanges_held"), Some(0.0));
    assert_eq!(
        metric(
            &m,
            r#"extproc_streams_total{outcome="completed",route="default"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

/// A body cannot travel over HTTP: the gateway never asks for one (Envoy would hang
/// the request), and `digest` withholds its header rather than hash a body it never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_is_never_asked_for_and_digest_withholds() {
    let Some(s) = stack(None).await else { return };
    let r = send(
        &s.client,
        s.envoy.port,
        "POST",
        "/upload",
        &[("x-request-id", "b-1")],
        full("a body the gateway never sees"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echoed = r.echoed();
    assert_eq!(echoed.body, "a body the gateway never sees");
    assert_eq!(echoed.headers.get("x-request-digest"), None);
    assert_eq!(r.header("x-request-digest"), None);
    // The rest of the chain still ran, with its state carried to the response.
    assert_eq!(r.header("x-extra-request-id"), Some("b-1"));
    assert_eq!(
        r.header("x-request-started"),
        echoed.headers.get("x-request-started").map(String::as_str)
    );
    assert_eq!(
        r.header("x-ext-procs-applied"),
        Some("trivial,timer,digest,context_check,echo")
    );
    // Request headers and response headers only: no body POST.
    assert_eq!(s.envoy.ext_proc_stat("stream_msgs_sent").await, 2);
    s.assert_clean().await;
    let m = s.gateway_metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"extproc_results_withheld_total{processor="digest",reason="body_not_sent",route="default"}"#
        ),
        Some(1.0),
        "{m}"
    );
    // Over HTTP bodies are never asked for: not a mode mismatch.
    for reason in ["request_body_not_sent", "override_ignored"] {
        assert_eq!(
            metric(
                &m,
                &format!(r#"extproc_mode_mismatches_total{{reason="{reason}",route="default"}}"#)
            ),
            Some(0.0),
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_keep_their_own_state() {
    let Some(s) = stack(None).await else { return };
    let n = 24;
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = s.client.clone();
        let port = s.envoy.port;
        tasks.push(tokio::spawn(async move {
            let rid = format!("rid-{i}");
            let path = format!("/c/{i}");
            let r = send(
                &client,
                port,
                "GET",
                &path,
                &[("x-request-id", &rid), ("x-tenant-id", &format!("t{i}"))],
                empty(),
            )
            .await;
            (i, rid, path, r)
        }));
    }
    for t in tasks {
        let (i, rid, path, r) = t.await.expect("task");
        assert_eq!(r.status, 200, "{i}");
        let echoed = r.echoed();
        assert_eq!(r.header("x-extra-request-id"), Some(rid.as_str()), "{i}");
        let want = digest(&format!("t{i}"), "GET", &path, b"");
        assert_eq!(r.header("x-request-digest"), Some(want.as_str()), "{i}");
        assert_eq!(
            r.header("x-request-started"),
            echoed.headers.get("x-request-started").map(String::as_str),
            "{i}: the response's start time is the one its own request got"
        );
    }
    assert_eq!(s.envoy.ext_proc_stat("stream_msgs_sent").await, 2 * n);
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_answers_without_the_upstream() {
    let Some(s) = stack(None).await else { return };
    let before = s.upstream.hits();
    let r = s
        .get(
            "/e",
            &[
                ("x-echo-only", "true"),
                ("x-k", "v"),
                ("x-request-id", "e-1"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-k"), Some("v"));
    // trivial ran before echo answered: its upstream-bound header is in the echo.
    assert_eq!(r.header("x-extra-request-id"), Some("e-1"));
    assert!(r.body.is_empty(), "{:?}", r.body);
    assert_eq!(s.upstream.hits(), before, "echo must not call the upstream");
    // The immediate response ended the exchange: no response-headers POST.
    assert_eq!(s.envoy.ext_proc_stat("stream_msgs_sent").await, 1);
    assert_eq!(s.envoy.ext_proc_stat("immediate_responses_sent").await, 1);
    s.assert_clean().await;
    let m = s.gateway_metrics().await;
    assert_eq!(metric(&m, "extproc_http_exchanges_held"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_auth_refuses_a_missing_token_before_the_upstream() {
    let yaml = format!(
        r#"
routes:
  - name: api
    processors:
      - jwt_auth:
          jwks_file: '{jwks}'
          issuer: '{ISSUER}'
          audiences: ['{AUDIENCE}']
      - trivial
"#,
        jwks = example("jwks.json").display()
    );
    let Some(s) = stack(Some(&yaml)).await else {
        return;
    };
    let before = s.upstream.hits();
    let r = s.get("/api/items", &[]).await;
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let reason: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON reason");
    assert!(reason["error"].is_string(), "{reason}");
    assert_eq!(
        s.upstream.hits(),
        before,
        "a refused request reached the upstream"
    );

    // A valid token passes with its claims, and trivial runs after jwt_auth.
    let token = Signer::example_rsa().sign(&good_claims());
    let auth = format!("Bearer {token}");
    let r = s
        .get(
            "/api/items",
            &[("authorization", &auth), ("decoded-sub", "mallory")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.upstream.hits(), before + 1);
    let echoed = r.echoed();
    assert_eq!(
        echoed.headers.get("decoded-sub").map(String::as_str),
        Some("alice")
    );
    assert_eq!(r.header("x-ext-procs-applied"), Some("jwt_auth,trivial"));
    s.assert_clean().await;
}

/// POSTs straight to the gateway's HTTP listener, as a broken or hostile client would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_posts_get_clear_json_errors_and_are_counted() {
    let gateway = Gateway::start_with(
        "server: {max_message_bytes: 4096}\nroutes: [{name: all, processors: [trivial]}]\n",
        &["--http-addr", "127.0.0.1:0"],
    )
    .await;
    let http_port = gateway.http_port.expect("http listener");
    let c = client();
    let post = |body: Body, id: Option<&'static str>| {
        let c = c.clone();
        async move {
            let mut req = hyper::Request::post(format!("http://127.0.0.1:{http_port}{PATH}"))
                .header("content-type", "application/json");
            if let Some(id) = id {
                req = req.header("x-request-id", id);
            }
            let resp = c.request(req.body(body).unwrap()).await.expect("answer");
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("").to_string());
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "{status}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&body)
                )
            });
            (status, ctype, json)
        }
    };

    let (status, ctype, json) = post(full("{\"request_headers\": "), Some("1")).await;
    assert_eq!(status, 400, "{json}");
    assert_eq!(ctype.as_deref(), Some("application/json"));
    assert_eq!(json["result"], "malformed");
    let error = json["error"].as_str().unwrap();
    assert!(
        error.starts_with("malformed ProcessingRequest JSON"),
        "{error}"
    );
    assert!(error.contains("line 1"), "{error}");

    let (status, _, json) =
        post(full(r#"{"request_headers":{"end_of_stream":"yes"}}"#), None).await;
    assert_eq!(status, 400, "{json}");

    // Too large for server.max_message_bytes.
    let big = format!(
        r#"{{"attributes":{{"x":{{"pad":"{}"}}}}}}"#,
        "a".repeat(5000)
    );
    let (status, _, json) = post(full(big), Some("2")).await;
    assert_eq!(status, 413, "{json}");
    assert_eq!(json["result"], "too_large");

    // Well-formed JSON, but no phase at all: the exchange refuses it.
    let (status, _, json) = post(full("{}"), Some("3")).await;
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["result"], "rejected");

    // Request headers then response headers of one request: the second POST resumes
    // the state of the first.
    let resp_headers =
        r#"{"response_headers":{"headers":{"headers":[{"key":":status","raw_value":"MjAw"}]}}}"#;
    let req_headers = r#"{"request_headers":{"headers":{"headers":[{"key":":path","raw_value":"Lw=="},{"key":":method","raw_value":"R0VU"}]},"end_of_stream":true}}"#;
    let (status, _, json) = post(full(req_headers), Some("4")).await;
    assert_eq!(status, 200, "{json}");
    assert!(json["request_headers"].is_object(), "{json}");
    let (status, _, json) = post(full(resp_headers), Some("4")).await;
    assert_eq!(status, 200, "{json}");
    let set = json["response_headers"]["response"]["header_mutation"]["set_headers"]
        .as_array()
        .unwrap_or_else(|| panic!("no header mutation: {json}"));
    assert!(
        set.iter()
            .any(|h| h["header"]["key"] == "x-ext-procs-applied"
                && h["header"]["raw_value"] == "dHJpdmlhbA=="),
        "{json}"
    );
    // A request body after request headers that ended the request: out of order.
    let (status, _, json) = post(full(req_headers), Some("5")).await;
    assert_eq!(status, 200, "{json}");
    let body = r#"{"request_body":{"body":"eA==","end_of_stream":true}}"#;
    let (status, _, json) = post(full(body), Some("5")).await;
    assert_eq!(status, 409, "{json}");
    assert_eq!(json["result"], "rejected");
    assert!(
        json["error"].as_str().unwrap().contains("end_of_stream"),
        "{json}"
    );

    // Without Envoy's stream id a POST is answered alone.
    let (status, _, json) = post(full(req_headers), None).await;
    assert_eq!(status, 200, "{json}");

    // GET is for /healthz only.
    let (status, body) = http_get(http_port, PATH).await.expect("answer");
    assert_eq!(status, 405, "{body}");
    assert_eq!(
        http_get(http_port, "/healthz").await.map(|r| r.0),
        Some(200)
    );

    let m = http_get(gateway.admin_port, "/metrics").await.unwrap().1;
    let count = |result: &str| {
        metric(
            &m,
            &format!(r#"extproc_http_requests_total{{result="{result}"}}"#),
        )
    };
    assert_eq!(count("malformed"), Some(2.0), "{m}");
    assert_eq!(count("too_large"), Some(1.0));
    assert_eq!(count("rejected"), Some(2.0));
    assert_eq!(count("not_allowed"), Some(1.0));
    assert_eq!(count("ok"), Some(4.0));
    // The same kinds of protocol violation as over gRPC.
    let violations = |kind: &str| {
        metric(
            &m,
            &format!(r#"extproc_protocol_violations_total{{kind="{kind}"}}"#),
        )
    };
    assert_eq!(violations("malformed"), Some(2.0), "{m}");
    assert_eq!(violations("oversized"), Some(1.0));
    assert_eq!(violations("empty_message"), Some(1.0));
    assert_eq!(violations("out_of_order"), Some(1.0));
    assert_eq!(
        metric(&m, r#"extproc_http_exchanges_total{event="uncorrelated"}"#),
        Some(1.0),
        "{m}"
    );
    // POST 4's response headers and POST 5's body found the state their request
    // headers left.
    assert_eq!(
        metric(&m, r#"extproc_http_exchanges_total{event="resumed"}"#),
        Some(2.0),
        "{m}"
    );
    // The gateway is still serving.
    assert_eq!(
        http_get(gateway.admin_port, "/readyz").await.map(|r| r.0),
        Some(200)
    );
}

/// SIGHUP swaps the chains for HTTP requests too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_to_the_http_listener() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.yaml");
    std::fs::write(&file, "routes: [{name: r, processors: [trivial]}]\n").unwrap();
    let Some(bin) = envoy_bin() else { return };
    let upstream = Upstream::start().await;
    let gateway = Gateway::start_args(&[
        "--config",
        file.to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
    ])
    .await;
    let http_port = gateway.http_port.expect("http listener");
    let config = envoy_http_service_config(0, 0, http_port, upstream.port, PATH);
    let envoy = Envoy::start_ingress(&bin, config).await;
    let c = client();
    let r = send(&c, envoy.port, "GET", "/a", &[], empty()).await;
    assert_eq!(r.header("x-ext-procs-applied"), Some("trivial"));

    std::fs::write(&file, "routes: [{name: r, processors: [trivial, timer]}]\n").unwrap();
    gateway.signal("HUP");
    let mut applied = String::new();
    for _ in 0..100 {
        let r = send(&c, envoy.port, "GET", "/a", &[], empty()).await;
        applied = r.header("x-ext-procs-applied").unwrap_or("").to_string();
        if applied == "trivial,timer" {
            assert!(r.header("x-duration-ns").is_some());
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the reloaded chain never served HTTP requests: {applied}");
}

/// The README's snippets are parts of `examples/http_service/envoy.yaml`, which Envoy
/// accepts; and Envoy refuses the same filter asked to send a body.
#[test]
fn the_documented_envoy_config_is_valid() {
    let Some(bin) = envoy_bin() else { return };
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("examples/http_service/envoy.yaml");
    let text = std::fs::read_to_string(&example).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("## ext_proc over HTTP")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README section `ext_proc over HTTP`");
    let snippets: Vec<&str> = section
        .split("```yaml\n")
        .skip(1)
        .filter_map(|s| s.split("```").next())
        .collect();
    assert_eq!(snippets.len(), 2, "filter and cluster snippets");
    for snippet in snippets {
        assert!(
            text.contains(snippet),
            "not in {}:\n{snippet}",
            example.display()
        );
    }
    let validate = |path: &std::path::Path| {
        std::process::Command::new(&bin)
            .args(["--mode", "validate", "-c"])
            .arg(path)
            .output()
            .expect("run envoy")
    };
    let out = validate(&example);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        text.replace("request_body_mode: NONE", "request_body_mode: BUFFERED"),
    )
    .unwrap();
    let out = validate(&bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("configured with http_service"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
