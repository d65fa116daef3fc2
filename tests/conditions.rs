//! `when:` on a processor entry: a CEL condition compiled at load (a bad one is a
//! config error with its line), decided once per request; false means the processor
//! neither runs nor asks Envoy for its phases, and a condition that cannot be
//! evaluated goes through the entry's `on_error`.

mod common;

use common::*;
use extproc_gateway::config::GatewayConfig;
use extproc_gateway::testing::Driver;

fn driver(processors: &str) -> Driver {
    let yaml = format!("routes:\n  - name: api\n    processors:\n{processors}");
    let config = GatewayConfig::parse(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    Driver::with_router(config.build_router().expect("builds"))
}

fn request(
    method: &'static str,
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut h = vec![
        (":method", method),
        (":path", "/a?b=1"),
        ("x-request-id", "r1"),
    ];
    h.extend_from_slice(extra);
    h
}

#[tokio::test]
async fn a_false_condition_leaves_the_processor_out_of_every_phase() {
    let processors =
        "      - trivial:\n        when: request.method != \"OPTIONS\"\n      - timer\n";
    let mut envoy = driver(processors);
    let answer = envoy
        .request_headers(&request("GET", &[]), true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-extra-request-id"), Some("r1"));

    let mut envoy = driver(processors);
    let answer = envoy
        .request_headers(&request("OPTIONS", &[]), true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-extra-request-id"), None);
    assert!(
        answer.header("x-request-started").is_some(),
        "timer still runs"
    );
    let response = envoy
        .response_headers(&[(":status", "200")], true)
        .await
        .unwrap();
    assert_eq!(response.header("x-extra-request-id"), None);
    assert_eq!(response.header("x-ext-procs-applied"), Some("timer"));
}

#[tokio::test]
async fn conditions_read_headers_as_the_processor_sees_them_and_route_attributes() {
    // `headers` (before it) sets x-tenant-id; the condition sees that write.
    let processors = "      - headers: {request: {set: {x-tenant-id: acme}}}\n      - trivial:\n        when: request.headers[\"x-tenant-id\"] == \"acme\" && route == \"api\" && request.url_path == \"/a\"\n";
    let mut envoy = driver(processors);
    let answer = envoy
        .request_headers(&request("GET", &[]), true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-extra-request-id"), Some("r1"));
}

#[tokio::test]
async fn a_condition_that_cannot_be_evaluated_goes_through_on_error() {
    // The header is absent: `request.headers["x-tenant-id"]` is an error, not false.
    let closed = "      - trivial:\n        when: request.headers[\"x-tenant-id\"] == \"acme\"\n";
    let answer = driver(closed)
        .request_headers(&request("GET", &[]), true)
        .await
        .unwrap();
    let immediate = answer.immediate.expect("fail_closed answers");
    assert_eq!(immediate.status, 500);
    assert!(
        String::from_utf8_lossy(&immediate.body).contains("condition of processor trivial failed")
    );

    let open = format!("{closed}        on_error: fail_open\n      - timer\n");
    let answer = driver(&open)
        .request_headers(&request("GET", &[]), true)
        .await
        .unwrap();
    assert!(answer.immediate.is_none());
    assert_eq!(answer.header("x-extra-request-id"), None);
    assert!(answer.header("x-request-started").is_some());

    // Written to test for absence, the same condition is simply false.
    let careful = "      - trivial:\n        when: request.headers[?\"x-tenant-id\"].orValue(\"\") == \"acme\"\n";
    let answer = driver(careful)
        .request_headers(&request("GET", &[]), true)
        .await
        .unwrap();
    assert!(answer.immediate.is_none());
    assert_eq!(answer.header("x-extra-request-id"), None);
    let answer = driver(careful)
        .request_headers(&request("GET", &[("x-tenant-id", "acme")]), true)
        .await
        .unwrap();
    assert_eq!(answer.header("x-extra-request-id"), Some("r1"));
}

#[test]
fn a_bad_condition_is_a_config_error_with_its_line() {
    let yaml = "routes:\n  - name: api\n    processors:\n      - trivial\n      - timer:\n        when: request.method ==\n";
    let e = GatewayConfig::parse(yaml, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.yaml: line 6"), "{e}");
    assert!(e.contains("invalid condition"), "{e}");

    let yaml = "routes:\n  - name: api\n    processors:\n      - timer:\n        when: reqest.method == \"GET\"\n";
    let e = GatewayConfig::parse(yaml, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 5"), "{e}");
    assert!(e.contains("unknown variable reqest"), "{e}");
}

#[test]
fn a_rendered_condition_loads_again() {
    let yaml = "routes:\n  - name: api\n    processors:\n      - digest: {body_mode: streamed}\n        when: '\"x\" in request.headers'\n        on_error: fail_open\n";
    let config = GatewayConfig::parse(yaml, "t.yaml").unwrap();
    let shown = config.to_redacted_yaml();
    assert!(shown.contains("when:"), "{shown}");
    let again =
        GatewayConfig::parse(&shown, "shown.yaml").unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert_eq!(again.routes[0].processors, config.routes[0].processors);
    assert_eq!(
        again.routes[0].processors[0].when().map(|w| w.source()),
        Some("\"x\" in request.headers")
    );
}

/// Through real Envoy (body mode NONE, `allow_mode_override: true`): `digest` wants
/// the whole body, but only for tenant acme. Other requests never make Envoy send it.
#[tokio::test]
async fn through_envoy_a_false_condition_asks_for_no_body() {
    let Some(bin) = envoy_bin() else { return };
    let gateway = Gateway::start(
        "routes:\n  - name: uploads\n    processors:\n      - digest:\n        when: request.headers[?\"x-tenant-id\"].orValue(\"\") == \"acme\"\n      - trivial\n",
    )
    .await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(
        &bin,
        &EnvoySpec::default(),
        gateway.grpc_port,
        upstream.port,
    )
    .await;
    let client = client();
    let body_messages = async || {
        let text = metrics_when_idle(gateway.admin_port).await;
        metric(
            &text,
            r#"extproc_message_duration_seconds_count{phase="request_body",route="uploads"}"#,
        )
        .unwrap_or(0.0)
    };

    let other = send(
        &client,
        envoy.port,
        "POST",
        "/u",
        &[("x-tenant-id", "globex")],
        full("hello"),
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("x-request-digest"), None);
    assert_eq!(other.header("x-ext-procs-applied"), Some("trivial"));
    assert_eq!(other.echoed().body, "hello", "the upstream got the body");
    assert_eq!(
        body_messages().await,
        0.0,
        "Envoy was not asked for the body"
    );

    let acme = send(
        &client,
        envoy.port,
        "POST",
        "/u",
        &[("x-tenant-id", "acme")],
        full("hello"),
    )
    .await;
    assert_eq!(acme.status, 200);
    assert!(
        acme.header("x-request-digest").is_some(),
        "{:?}",
        acme.headers
    );
    assert_eq!(acme.header("x-ext-procs-applied"), Some("digest,trivial"));
    assert_eq!(body_messages().await, 1.0);
}

#[test]
fn routes_and_check_config_show_each_entrys_condition_and_policy() {
    let yaml = "routes:\n  - name: api\n    processors:\n      - trivial\n      - digest:\n        when: request.method == \"POST\"\n        on_error: fail_open\n";
    let config = GatewayConfig::parse(yaml, "t.yaml").unwrap();
    let router = config.build_router().unwrap();
    let summary = router.routes()[0].summary();
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(
        json["chain"],
        serde_json::json!([
            {"processor": "trivial", "on_error": "fail_closed",
             "phases": ["request_headers", "response_headers"]},
            {"processor": "digest", "when": "request.method == \"POST\"", "on_error": "fail_open",
             "phases": ["request_headers", "request_body (buffered)", "response_headers"]},
        ])
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_extproc-gateway"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .contains("[trivial, digest (when: request.method == \"POST\"; on_error: fail_open)]"),
        "{stdout}"
    );
}
