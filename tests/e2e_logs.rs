//! Structured logs through real Envoy: with `--log-format json` every line the gateway
//! writes is one JSON object, and with `access_log: true` each stream gets one line
//! naming its route, outcome, duration, the processors that ran, an immediate
//! response's status and why a body a processor needed was incomplete. (That a line
//! carries its stream's trace: e2e_observability.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const CONFIG: &str = r#"
access_log: true
routes:
  - name: api
    match: {path_prefix: /api}
    processors: [trivial, digest]
  - name: rest
    processors: [trivial, timer, echo]
"#;

/// Every line of the gateway's log as JSON (failing on one that is not).
fn json_lines(gw: &Gateway) -> Vec<Value> {
    gw.proc
        .log_text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn access_lines(gw: &Gateway) -> Vec<Value> {
    json_lines(gw)
        .into_iter()
        .filter(|l| l["target"] == "extproc_gateway::access")
        .collect()
}

/// Waits for `n` access lines (a stream's line is written when it ends, just after
/// the response reaches the client).
async fn wait_access(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = access_lines(gw);
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} access lines of {n}:\n{}",
            lines.len(),
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_and_one_access_line_per_stream() {
    let bin = envoy_bin().expect("envoy");
    let gw = Gateway::start_with(CONFIG, &["--log-format", "json"]).await;
    let upstream = Upstream::start().await;
    // Envoy that ignores the gateway's mode_override and sends no body: `digest`
    // needs the request body, which then never arrives.
    let config = envoy_config(&EnvoySpec::default(), 0, 0, gw.grpc_port, upstream.port)
        .replace("allow_mode_override: true", "allow_mode_override: false");
    let envoy = Envoy::start_ingress(&bin, config).await;
    let client = client();

    let ok = send(&client, envoy.port, "GET", "/rest/a", &[], empty()).await;
    assert_eq!(ok.status, 200);
    let lines = wait_access(&gw, 1).await;
    let first = &lines[0]["fields"];
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(lines[0]["message"], "stream");
    assert_eq!(first["route"], "rest");
    assert_eq!(first["outcome"], "completed");
    assert_eq!(
        first["processors"],
        ok.header("x-ext-procs-applied").unwrap_or("?")
    );
    assert!(
        first["duration_ms"]
            .as_f64()
            .is_some_and(|d| d > 0.0 && d < 10_000.0),
        "{first}"
    );
    assert!(
        first.get("status").is_none(),
        "no immediate response: {first}"
    );

    // A request without a body: `echo` answers it at its headers (the body `echo`
    // would want is never sent by this Envoy).
    let echoed = send(
        &client,
        envoy.port,
        "GET",
        "/rest/b",
        &[("x-echo-only", "yes")],
        empty(),
    )
    .await;
    assert_eq!(echoed.status, 200);
    assert!(echoed
        .header("x-ext-procs-applied")
        .is_some_and(|p| p.contains("echo")));
    let lines = wait_access(&gw, 2).await;
    let second = &lines[1]["fields"];
    assert_eq!(second["outcome"], "immediate_response", "{second}");
    assert_eq!(second["status"], 200, "{second}");

    let posted = send(&client, envoy.port, "POST", "/api/c", &[], full("hello")).await;
    assert_eq!(posted.status, 200);
    assert!(
        posted.header("x-request-digest").is_none(),
        "digest without the body"
    );
    let lines = wait_access(&gw, 3).await;
    let third = &lines[2]["fields"];
    assert_eq!(third["route"], "api", "{third}");
    assert_eq!(third["request_body"], "not_sent", "{third}");
    assert!(
        third["mismatches"].as_str().is_some_and(|m| !m.is_empty()),
        "the ignored override is named: {third}"
    );
    assert!(
        third.get("response_body").is_none(),
        "no processor read the response: {third}"
    );
    assert_eq!(upstream.hits(), 2);

    // Every line is JSON with the same keys; none of them is an access line twice.
    for line in json_lines(&gw) {
        for key in ["timestamp", "level", "target"] {
            assert!(line[key].is_string(), "{key} missing: {line}");
        }
        assert!(
            line["message"].is_string() || line["fields"].is_object(),
            "{line}"
        );
        // Without trace export no line claims a trace.
        assert!(line.get("trace_id").is_none(), "{line}");
    }
    assert_eq!(access_lines(&gw).len(), 3);
    drop(envoy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_off_by_default_and_a_reload_turns_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(
        &file,
        "routes:\n  - name: rest\n    processors: [trivial]\n",
    )
    .unwrap();
    let path = file.to_string_lossy().into_owned();
    let gw = Gateway::start_args(&["--config", &path, "--log-format", "json"]).await;
    let upstream = Upstream::start().await;
    let bin = envoy_bin().expect("envoy");
    let envoy = Envoy::start(&bin, &EnvoySpec::default(), gw.grpc_port, upstream.port).await;
    let client = client();
    assert_eq!(
        send(&client, envoy.port, "GET", "/a", &[], empty())
            .await
            .status,
        200
    );
    // The upstream answered, so the stream has ended or ends now; a line would be
    // written at its end: give it the time a line takes in the test above, then look.
    wait_until_upstream(&upstream, 1).await;
    assert!(access_lines(&gw).is_empty(), "an access line while off");

    std::fs::write(
        &file,
        "access_log: true\nroutes:\n  - name: rest\n    processors: [trivial]\n",
    )
    .unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.proc.log_text().contains("config reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload:\n{}",
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        send(&client, envoy.port, "GET", "/b", &[], empty())
            .await
            .status,
        200
    );
    let lines = wait_access(&gw, 1).await;
    assert_eq!(lines[0]["fields"]["route"], "rest");
    // The stream before the reload wrote none: exactly the one line.
    assert_eq!(access_lines(&gw).len(), 1);
}

async fn wait_until_upstream(upstream: &Upstream, hits: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.hits() < hits {
        assert!(
            Instant::now() < deadline,
            "the upstream got {} requests",
            upstream.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
