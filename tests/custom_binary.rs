//! A user's gateway binary (`examples/custom_processor.rs`: the built-ins plus its own
//! `tenant_quota`, then the same command line) behaves like `extproc-gateway` for its
//! processor: `check-config` with line-precise errors, serving through real Envoy,
//! `/config`, `/routes`, metrics, and SIGHUP reload. The example's own `testing::Driver`
//! tests run here too.

mod common;

#[path = "../examples/custom_processor.rs"]
#[allow(dead_code)]
mod custom_processor;

use std::path::PathBuf;
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
