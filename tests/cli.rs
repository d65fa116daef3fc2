//! The `extproc-gateway` command line: config checking, the embedded default, and
//! settings from file, environment and flags in that order of precedence.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn gateway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_extproc-gateway"));
    for var in [
        "EXTPROC_CONFIG",
        "EXTPROC_GRPC_ADDR",
        "EXTPROC_ADMIN_ADDR",
        "EXTPROC_HTTP_ADDR",
        "EXTPROC_MAX_MESSAGE_BYTES",
        "EXTPROC_SHUTDOWN_GRACE",
        "EXTPROC_ADDRESSES_FILE",
        "EXTPROC_ADMIN_TOKEN",
        "EXTPROC_ADMIN_TOKEN_FILE",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn check_config_prints_routes_of_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("good.yaml");
    std::fs::write(
        &file,
        "routes:\n  - name: api\n    match: {path_prefix: /api, methods: [POST]}\n    processors: [trivial, digest]\n  - name: rest\n    processors: [timer]\n",
    )
    .unwrap();
    let out = gateway().arg("check-config").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("route api: path prefix /api and method in [POST] -> [trivial, digest]"),
        "{stdout}"
    );
    assert!(stdout.contains("request_body (buffered)"), "{stdout}");
    assert!(
        stdout.contains("route rest: any request -> [timer]"),
        "{stdout}"
    );
}

#[test]
fn bad_config_is_rejected_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "routes:\n  - name: api\n    processors:\n      - trivial\n      - digest: {bodymode: streamed}\n",
    )
    .unwrap();
    for args in [vec!["check-config"], vec!["serve", "--config"]] {
        let out = gateway()
            .args(&args)
            .arg(&file)
            .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted a bad config");
        assert!(stderr.contains("bad.yaml: line 5 column"), "{stderr}");
        assert!(stderr.contains("unknown field `bodymode`"), "{stderr}");
    }
    // A semantic error names the field.
    std::fs::write(
        &file,
        "routes:\n  - name: a\n    match: {path_regex: '[z-a]'}\n    processors: []\n",
    )
    .unwrap();
    let out = gateway().arg("check-config").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("routes[0].match.path_regex: invalid regex"),
        "{stderr}"
    );
    // A missing file says so.
    let out = gateway()
        .args(["--config", "/nonexistent/x.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.yaml: file: cannot read"));
}

#[test]
fn print_config_is_the_embedded_default_and_valid() {
    let out = gateway().arg("print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, extproc_gateway::config::DEFAULT_YAML);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default.yaml");
    std::fs::write(&file, &text).unwrap();
    let out = gateway().arg("check-config").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains(
            "route default: any request -> [trivial, timer, digest, context_check, echo]"
        ),
        "{stdout}"
    );
}

/// A gateway process started with `--addresses-file`, killed on drop whatever the
/// test's outcome.
struct Running {
    child: std::process::Child,
    addresses: serde_json::Value,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Starts `cmd` and waits until it has bound its listeners and is ready.
    async fn start(mut cmd: Command) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("addresses.json");
        let child = cmd.arg("--addresses-file").arg(&file).spawn().unwrap();
        let mut running = Running {
            child,
            addresses: serde_json::Value::Null,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                running.addresses = v;
                if let Some((200, _)) = http_get_at(running.addr("admin").unwrap(), "/readyz").await
                {
                    return running;
                }
            }
            if let Ok(Some(status)) = running.child.try_wait() {
                panic!("gateway exited with {status}");
            }
            assert!(std::time::Instant::now() < deadline, "gateway not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A bound address (`grpc`, `admin`, `http`).
    fn addr(&self, key: &str) -> Option<std::net::SocketAddr> {
        self.addresses[key].as_str()?.parse().ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// Each source names another loopback address (port 0): the address the gateway
// bound tells which source won, with no port picked in advance.
const FILE_IP: &str = "127.0.0.2";
const ENV_IP: &str = "127.0.0.3";
const FLAG_IP: &str = "127.0.0.4";

fn ip(addr: Option<std::net::SocketAddr>) -> String {
    addr.map(|a| a.ip().to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_file_and_flags_override_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        format!("server:\n  grpc_addr: 127.0.0.1:0\n  admin_addr: {FILE_IP}:0\nroutes: []\n"),
    )
    .unwrap();

    // File only.
    let mut cmd = gateway();
    cmd.arg("--config").arg(&file);
    let g = Running::start(cmd).await;
    assert_eq!(ip(g.addr("admin")), FILE_IP);
    drop(g);

    // Environment beats the file.
    let mut cmd = gateway();
    cmd.env("EXTPROC_CONFIG", &file)
        .env("EXTPROC_ADMIN_ADDR", format!("{ENV_IP}:0"));
    let g = Running::start(cmd).await;
    assert_eq!(ip(g.addr("admin")), ENV_IP);
    drop(g);

    // The flag beats the environment.
    let mut cmd = gateway();
    cmd.env("EXTPROC_CONFIG", &file)
        .env("EXTPROC_ADMIN_ADDR", format!("{ENV_IP}:0"))
        .args(["--admin-addr", &format!("{FLAG_IP}:0")]);
    let g = Running::start(cmd).await;
    let admin = g.addr("admin").unwrap();
    assert_eq!(admin.ip().to_string(), FLAG_IP);
    // The admin server reports the effective routes and config.
    let (_, routes) = http_get_at(admin, "/routes").await.unwrap();
    assert_eq!(routes, "[]");
    let (_, config) = http_get_at(admin, "/config").await.unwrap();
    assert!(
        config.contains(&format!("admin_addr: {FLAG_IP}:0")),
        "{config}"
    );
}

#[test]
fn a_port_in_use_is_a_clear_start_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = gateway()
        .args(["--grpc-addr", &format!("127.0.0.1:{port}")])
        .args(["--admin-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen for gRPC on 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_is_off_by_default_and_set_by_file_env_or_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("h.yaml");
    let base = "server:\n  grpc_addr: 127.0.0.1:0\n  admin_addr: 127.0.0.1:0\n";
    let healthy = |addr: std::net::SocketAddr| async move {
        for _ in 0..200 {
            if let Some((200, body)) = http_get_at(addr, "/healthz").await {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no ext_proc HTTP listener on {addr}");
    };

    // Off by default: /config does not mention it, and nothing is bound.
    std::fs::write(&file, format!("{base}routes: []\n")).unwrap();
    let mut cmd = gateway();
    cmd.arg("--config").arg(&file);
    let g = Running::start(cmd).await;
    assert_eq!(g.addr("http"), None);
    let (_, config) = http_get_at(g.addr("admin").unwrap(), "/config")
        .await
        .unwrap();
    assert!(!config.contains("http_addr"), "{config}");
    assert!(config.contains("http_exchange_ttl: 1m"), "{config}");
    drop(g);

    // From the file.
    std::fs::write(
        &file,
        format!("{base}  http_addr: {FILE_IP}:0\nroutes: []\n"),
    )
    .unwrap();
    let mut cmd = gateway();
    cmd.arg("--config").arg(&file);
    let g = Running::start(cmd).await;
    let http = g.addr("http").unwrap();
    assert_eq!(http.ip().to_string(), FILE_IP);
    assert_eq!(healthy(http).await, "ok\n");
    drop(g);

    // The environment beats the file, the flag beats the environment.
    let mut cmd = gateway();
    cmd.arg("--config")
        .arg(&file)
        .env("EXTPROC_HTTP_ADDR", format!("{ENV_IP}:0"));
    let g = Running::start(cmd).await;
    assert_eq!(ip(g.addr("http")), ENV_IP);
    healthy(g.addr("http").unwrap()).await;
    drop(g);
    let mut cmd = gateway();
    cmd.arg("--config")
        .arg(&file)
        .env("EXTPROC_HTTP_ADDR", format!("{ENV_IP}:0"))
        .args(["--http-addr", &format!("{FLAG_IP}:0")]);
    let g = Running::start(cmd).await;
    assert_eq!(ip(g.addr("http")), FLAG_IP);
    healthy(g.addr("http").unwrap()).await;
    let (_, config) = http_get_at(g.addr("admin").unwrap(), "/config")
        .await
        .unwrap();
    assert!(
        config.contains(&format!("http_addr: {FLAG_IP}:0")),
        "{config}"
    );
}

#[test]
fn bad_http_limits_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    for (yaml, field) in [
        (
            "server: {http_exchange_ttl: 0s}\n",
            "server.http_exchange_ttl",
        ),
        (
            "server: {http_max_exchanges: 0}\n",
            "server.http_max_exchanges",
        ),
    ] {
        std::fs::write(&file, yaml).unwrap();
        let out = gateway().arg("check-config").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml} accepted");
        assert!(
            stderr.contains(&format!("bad.yaml: {field}: must")),
            "{stderr}"
        );
    }
}

#[test]
fn a_processor_that_could_overwrite_verified_claims_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("claims.yaml");
    let jwks = format!("{}/examples/jwt/jwks.json", env!("CARGO_MANIFEST_DIR"));
    let config = |allow: &str| {
        format!(
            "routes:\n  - name: api\n{allow}    processors:\n      - jwt_auth: {{jwks_file: '{jwks}'}}\n      - trivial\n      - instructions\n"
        )
    };
    std::fs::write(&file, config("")).unwrap();
    for args in [vec!["check-config"], vec!["serve", "--config"]] {
        let out = gateway()
            .args(&args)
            .arg(&file)
            .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted: {stderr}");
        assert!(
            stderr.contains("claims.yaml: routes[0].processors[2] (instructions): route `api`: `instructions` (processors[2]) runs after `jwt_auth` (processors[0])"),
            "{stderr}"
        );
        assert!(stderr.contains("forge claims"), "{stderr}");
        assert!(stderr.contains("allow_claim_overwrite: true"), "{stderr}");
    }
    // Allowed explicitly: it loads, with a warning naming the route and processors.
    std::fs::write(&file, config("    allow_claim_overwrite: true\n")).unwrap();
    let out = gateway().arg("check-config").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("route api:"), "{stdout}");
    assert!(stderr.contains("WARN"), "{stderr}");
    assert!(
        stderr.contains("allowed by allow_claim_overwrite: true"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`instructions` (processors[2])"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("allowed by allow_claim_overwrite").count(),
        1,
        "warned once per load: {stderr}"
    );
}

#[test]
fn check_config_reads_the_tls_and_admin_token_files_as_serving_would() {
    let dir = tempfile::tempdir().unwrap();
    let routes = "routes: [{name: a, processors: [trivial]}]\n";
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "").unwrap();
    let cases = [
        (
            "server:\n  tls: {cert_file: /nonexistent/c.pem, key_file: /nonexistent/k.pem}\n"
                .to_string(),
            "server.tls.cert_file /nonexistent/c.pem: cannot read",
        ),
        (
            format!(
                "server:\n  tls: {{cert_file: {g}, key_file: {g}}}\n",
                g = garbage.display()
            ),
            "server.tls.cert_file",
        ),
        (
            "server:\n  admin_token_file: /nonexistent/token\n".to_string(),
            "server.admin_token_file /nonexistent/token: cannot read",
        ),
        (
            format!("server:\n  admin_token_file: {}\n", empty.display()),
            "the file is empty",
        ),
    ];
    for (i, (server, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("c{i}.yaml"));
        std::fs::write(&file, format!("{server}{routes}")).unwrap();
        let out = gateway().arg("check-config").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "case {i} passed: {server}");
        assert!(stderr.contains(expected), "case {i}: {stderr}");
    }
    // The same files, readable and valid, pass.
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let file = dir.path().join("good.yaml");
    std::fs::write(
        &file,
        format!("server:\n  admin_token_file: {}\n{routes}", token.display()),
    )
    .unwrap();
    let out = gateway().arg("check-config").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
