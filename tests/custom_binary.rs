//! A user's gateway binary (`examples/custom_processor.rs`: the built-ins plus its own
//! `tenant_quota`, then the same command line) behaves like `extproc-gateway` for its
//! processor: `check-config` with line-precise errors, serving through real Envoy,
//! `/config`, `/routes`, metrics, and SIGHUP reload; and its failure policy
//! (`on_error`) holds through real Envoy in every body mode, override on and off. The
//! example's own `testing::Driver` tests run here too.

mod common;

#[path = "../examples/custom_processor.rs"]
#[allow(dead_code)]
mod custom_processor;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The example binary `cargo test` builds next to this test's own executable.
fn example_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile directory");
    let bin = debug.join("examples/custom_processor");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified());
    let source = std::fs::metadata(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/custom_processor.rs"
    ))
    .and_then(|m| m.modified());
    match (built, source) {
        (Ok(built), Ok(source)) if built >= source => bin,
        _ => panic!(
            "{} is missing or older than its source: `cargo test` builds the examples \
             (with `--test custom_binary` alone, run `cargo build --examples` first)",
            bin.display()
        ),
    }
}

fn config(policy_url: &str) -> String {
    format!(
        "routes:\n  - name: uploads\n    processors:\n      - tenant_quota: {{policy_url: '{policy_url}'}}\n      - trivial\n"
    )
}

/// The user's binary prints a schema with its own processor's settings in it, which
/// the example's config validates against and a misspelt setting does not.
#[test]
fn the_users_schema_includes_its_processor() {
    let out = Command::new(example_bin()).arg("schema").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let settings = &schema["definitions"]["TenantQuotaSettings"];
    assert_eq!(
        settings["required"],
        serde_json::json!(["policy_url"]),
        "{settings}"
    );
    assert_eq!(
        settings["properties"]["timeout"]["pattern"],
        extproc_gateway::registry::DURATION_PATTERN
    );
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/custom_processor/gateway.yaml"),
    )
    .unwrap();
    let good = config("http://127.0.0.1:9/");
    let bad = good.replace("policy_url", "policy_uri");
    let errors = schema_errors(&schema, &[shipped, good, bad]);
    assert!(errors[0].is_empty(), "{:#?}", errors[0]);
    assert!(errors[1].is_empty(), "{:#?}", errors[1]);
    assert!(
        !errors[2].is_empty(),
        "a misspelt tenant_quota setting validates"
    );
}

#[test]
fn check_config_knows_the_registered_processor_and_its_settings() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, config("http://127.0.0.1:9/")).unwrap();
    let out = Command::new(example_bin())
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("route uploads"), "{stdout}");
    assert!(stdout.contains("[tenant_quota, trivial]"), "{stdout}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        config("http://127.0.0.1:9/").replace("policy_url", "policy_uri"),
    )
    .unwrap();
    let out = Command::new(example_bin())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("unknown field `policy_uri`"), "{stderr}");

    // The stock binary does not know it, and says which processors it does know.
    let out = Command::new(env!("CARGO_BIN_EXE_extproc-gateway"))
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown processor `tenant_quota`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_users_binary_serves_reloads_and_reports_its_processor() {
    let Some(envoy_bin) = envoy_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(
        &file,
        config(&custom_processor::tests::policy_service(16).await),
    )
    .unwrap();
    let gateway =
        Gateway::start_binary(&example_bin(), &["--config", file.to_str().unwrap()]).await;
    let upstream = Upstream::start().await;
    let spec = EnvoySpec {
        filters: vec![Filter {
            request_body_mode: "STREAMED",
            ..Filter::default()
        }],
        ..EnvoySpec::default()
    };
    let envoy = Envoy::start(&envoy_bin, &spec, gateway.grpc_port, upstream.port).await;
    let client = client();
    let post = |tenant: &'static str, body: &'static str| {
        let client = client.clone();
        let port = envoy.port;
        async move {
            send(
                &client,
                port,
                "POST",
                "/upload",
                &[("x-tenant-id", tenant)],
                full(body),
            )
            .await
        }
    };

    let ok = post("acme", "0123456789").await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(ok.header("x-tenant-bytes"), Some("10"));
    assert_eq!(
        ok.header("x-ext-procs-applied"),
        Some("tenant_quota,trivial")
    );
    assert_eq!(post("nobody", "x").await.status, 403);
    assert_eq!(post("acme", "01234567890123456789").await.status, 413);

    let (_, shown) = http_get(gateway.admin_port, "/config")
        .await
        .expect("/config");
    assert!(shown.contains("tenant_quota"), "{shown}");
    assert!(shown.contains("policy_url"), "{shown}");
    let (_, routes) = http_get(gateway.admin_port, "/routes")
        .await
        .expect("/routes");
    assert!(routes.contains("tenant_quota"), "{routes}");
    let metrics = metrics_when_idle(gateway.admin_port).await;
    assert!(
        metrics.contains(r#"extproc_immediate_responses_total{processor="tenant_quota",route="uploads",status="413"} 1"#),
        "{metrics}"
    );

    // SIGHUP: the same file, a policy service with a smaller quota.
    std::fs::write(
        &file,
        config(&custom_processor::tests::policy_service(4).await),
    )
    .unwrap();
    gateway.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post("acme", "0123456789").await;
        if r.status == 413 {
            break;
        }
        assert_eq!(r.status, 200);
        assert!(
            Instant::now() < deadline,
            "the reload never took effect:\n{}",
            gateway.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gateway.proc.log_text().contains("config reloaded"));
}

/// The body modes Envoy implements, each with `allow_mode_override` on and off.
const BODY_MODES: [&str; 5] = [
    "NONE",
    "STREAMED",
    "BUFFERED",
    "BUFFERED_PARTIAL",
    "FULL_DUPLEX_STREAMED",
];

/// `on_error` through real Envoy in every body mode, override on and off: a
/// processor whose dependency is broken refuses the request with 503 naming it under
/// `fail_closed` (the upstream never called), and under `fail_open` is skipped for the
/// rest of the request while the chain after it runs and the body reaches the
/// upstream whole. Both outcomes are counted, and Envoy sees no failed stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_failure_policy_holds_in_every_body_mode_through_envoy() {
    let Some(envoy_bin) = envoy_bin() else { return };
    // Up but broken for this tenant: a 500, which `tenant_quota` turns into
    // `ProcessorError::unavailable`.
    let policy = custom_processor::tests::policy_service(16).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(
        &file,
        format!(
            r#"server:
  envoy_buffer_limit_bytes: 65536
routes:
  - name: open
    match: {{grpc_metadata: {{x-chain: open}}}}
    processors:
      - tenant_quota: {{policy_url: '{policy}'}}
        on_error: fail_open
      - trivial
      - digest
  - name: closed
    processors:
      - tenant_quota: {{policy_url: '{policy}'}}
        on_error: fail_closed
      - trivial
"#
        ),
    )
    .unwrap();
    let gateway =
        Gateway::start_binary(&example_bin(), &["--config", file.to_str().unwrap()]).await;
    let upstream = Upstream::start().await;
    let mut cases = Vec::new();
    // The closed listeners first: the upstream must not have been called once they
    // are done.
    for route in ["closed", "open"] {
        for mode in BODY_MODES {
            for allow_override in [true, false] {
                cases.push((mode, allow_override, route));
            }
        }
    }
    let listeners: String = cases
        .iter()
        .enumerate()
        .map(|(i, (mode, allow_override, route))| {
            matrix_listener_yaml(&MatrixListener {
                name: &format!("p{i}"),
                mode,
                allow_override: *allow_override,
                observability: false,
                early: false,
                chain: route,
                buffer_limit: 65536,
            })
        })
        .collect();
    let config = matrix_envoy_config(&listeners, gateway.grpc_port, upstream.port);
    let envoy = Envoy::start_any_ports(&envoy_bin, config).await;
    let client = client();
    let small = bytes::Bytes::from(vec![b's'; 4096]);
    let large = bytes::Bytes::from(
        (0..1024 * 1024)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut failures = Vec::new();
    let mut sent = [0u64; 2];
    for (i, (mode, allow_override, route)) in cases.iter().enumerate() {
        let port = envoy.listener_port(&format!("p{i}")).await;
        let closed = *route == "closed";
        if !closed && sent[1] == 0 && upstream.hits() != 0 {
            failures.push(format!(
                "the upstream was called {} times through fail_closed",
                upstream.hits()
            ));
        }
        for (name, method, body) in [
            ("GET", "GET", bytes::Bytes::new()),
            ("small POST", "POST", small.clone()),
            ("1 MiB POST", "POST", large.clone()),
        ] {
            let label = format!("{mode} override={allow_override} {route}: {name}");
            let path = format!("/p{i}");
            let headers = [("x-tenant-id", "broken")];
            let resp = send(&client, port, method, &path, &headers, full(body.clone())).await;
            sent[usize::from(!closed)] += 1;
            // Envoy buffers a BUFFERED body while the headers' answer is pending, and
            // refuses it with 413 once over its limit, whichever answer comes.
            let envoy_refuses = *mode == "BUFFERED" && body.len() > 65536;
            if envoy_refuses && resp.status == 413 {
                continue;
            }
            let shown = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]);
            if closed {
                if resp.status != 503 || !shown.contains("tenant_quota") {
                    failures.push(format!("{label}: {} {shown}", resp.status));
                }
                continue;
            }
            if envoy_refuses || resp.status != 200 {
                failures.push(format!("{label}: {} {shown}", resp.status));
                continue;
            }
            let echoed = resp.echoed();
            if echoed.body.as_bytes() != body.as_ref() {
                failures.push(format!(
                    "{label}: the upstream got {} bytes of {}",
                    echoed.body.len(),
                    body.len()
                ));
            }
            let applied = resp.header("x-ext-procs-applied").unwrap_or("");
            if !applied.starts_with("trivial") || applied.contains("tenant_quota") {
                failures.push(format!("{label}: applied {applied:?}"));
            }
            if resp.header("x-tenant-bytes").is_some() {
                failures.push(format!("{label}: the failed processor ran on"));
            }
            if let Some(d) = resp.header("x-request-digest") {
                if d != digest("broken", method, &path, &body) {
                    failures.push(format!("{label}: WRONG digest {d}"));
                }
            }
        }
    }
    let stats = envoy.stats().await;
    for (i, (mode, allow_override, route)) in cases.iter().enumerate() {
        let prefix = format!("http.p{i}.ext_proc.");
        for stat in [
            "spurious_msgs_received",
            "streams_failed",
            "message_timeouts",
        ] {
            let v: u64 = stats
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix) && k.ends_with(stat))
                .map(|(_, v)| *v)
                .sum();
            if v != 0 {
                failures.push(format!(
                    "{mode} override={allow_override} {route}: envoy {stat} = {v}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}\n--- gateway log ---\n{}",
        failures.len(),
        failures.join("\n"),
        gateway.proc.log_text()
    );

    // Every request reached the processor's hook, which failed; a request Envoy
    // refused for its buffer (BUFFERED, 1 MiB) may end before the hook does.
    let refused_at_most = 2;
    let series = |name: &str, labels: &str| format!("{name}{{{labels}}}");
    let errors = |route: &str| {
        series(
            "extproc_processor_errors_total",
            &format!(r#"kind="error",processor="tenant_quota",route="{route}""#),
        )
    };
    let skipped = series(
        "extproc_processor_skipped_total",
        r#"processor="tenant_quota",reason="failed_open",route="open""#,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics_when_idle(gateway.admin_port).await;
        let closed_errors = metric(&text, &errors("closed")).unwrap_or(0.0) as u64;
        let open_errors = metric(&text, &errors("open")).unwrap_or(0.0) as u64;
        let open_skipped = metric(&text, &skipped).unwrap_or(0.0) as u64;
        let counted = |n: u64, of: u64| n <= of && n + refused_at_most >= of;
        if counted(closed_errors, sent[0])
            && counted(open_errors, sent[1])
            && open_skipped == open_errors
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counted closed errors {closed_errors} of {}, open errors {open_errors} and \
             skipped {open_skipped} of {}:\n{text}",
            sent[0],
            sent[1]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
