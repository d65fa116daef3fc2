//! `extproc-gateway check-envoy` through the real binary: the project's own Envoy
//! configs are clean, and each config of `tests/fixtures/check_envoy/` (valid for
//! Envoy, so Envoy would run it without a word) gives exactly its finding: severity,
//! line, key words and exit code.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{envoy_bin, repo_files};

const FIXTURES: &str = "tests/fixtures/check_envoy";
const JWT: &str = "examples/jwt/gateway.yaml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One printed finding.
#[derive(Debug)]
struct Line {
    line: usize,
    severity: String,
    text: String,
}

/// What one run printed and returned.
#[derive(Debug)]
struct Run {
    code: i32,
    findings: Vec<Line>,
    stdout: String,
    stderr: String,
}

/// Runs `check-envoy ENVOY [--config CONFIG]` from the repository root.
fn check(envoy: &str, config: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_extproc-gateway"));
    cmd.current_dir(root())
        .env_remove("EXTPROC_CONFIG")
        .args(["check-envoy", envoy]);
    if let Some(c) = config {
        cmd.args(["--config", c]);
    }
    let out = cmd.output().expect("run extproc-gateway");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let prefix = format!("{envoy}:");
    let findings = stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (line, rest) = rest.split_once(": ")?;
            let (severity, text) = rest.split_once(": ")?;
            Some(Line {
                line: line.parse().ok()?,
                severity: severity.to_string(),
                text: text.to_string(),
            })
        })
        .collect();
    Run {
        code: out.status.code().unwrap_or(-1),
        findings,
        stdout,
        stderr,
    }
}

/// Asserts the exact findings (in output order) and the exit code.
fn expect(run: &Run, code: i32, wanted: &[(&str, usize, &[&str])]) {
    assert_eq!(run.code, code, "exit code\n{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.findings.len(),
        wanted.len(),
        "number of findings\n{}",
        run.stdout
    );
    for (got, (severity, line, words)) in run.findings.iter().zip(wanted) {
        assert_eq!(got.severity, *severity, "{got:?}\n{}", run.stdout);
        assert_eq!(got.line, *line, "{got:?}\n{}", run.stdout);
        for w in *words {
            assert!(got.text.contains(w), "`{w}` missing from {got:?}");
        }
        assert!(got.text.contains(". Fix: "), "no fix in {got:?}");
    }
    let errors = wanted.iter().filter(|w| w.0 == "error").count();
    let warnings = wanted.len() - errors;
    let summary = run.stdout.lines().last().unwrap_or_default();
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    assert!(
        summary.contains(&format!(
            "{}, {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        )),
        "summary: {summary}"
    );
}

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

fn clean(run: &Run) {
    expect(run, 0, &[]);
}

// ---- the project's own Envoy configs

#[test]
fn root_envoy_yaml_is_clean_with_the_embedded_default_config() {
    clean(&check("envoy.yaml", None));
}

#[test]
fn root_envoy_yaml_is_clean_with_the_jwt_example() {
    // examples/jwt/README.md runs the jwt gateway behind the root envoy.yaml, and its
    // `/public` prefix route needs normalised paths.
    clean(&check("envoy.yaml", Some(JWT)));
}

#[test]
fn docker_compose_runs_the_root_envoy_yaml() {
    // The compose stack mounts envoy.yaml unchanged (only the admin address is
    // overridden with --config-yaml), so the root file's check covers it.
    let compose = std::fs::read_to_string(root().join("docker-compose.yaml")).unwrap();
    assert!(
        compose.contains("./envoy.yaml:/etc/envoy/envoy.yaml"),
        "docker-compose.yaml no longer mounts envoy.yaml: check its Envoy config here"
    );
}

/// Renders a load-kit template as `loadkit.py render` does (every `@KEY@` filled).
fn render(template: &str, out: &Path, values: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(root().join(template)).unwrap();
    for (k, v) in values {
        text = text.replace(&format!("@{k}@"), v);
    }
    let left = regex::Regex::new("@[A-Z_]+@").unwrap();
    assert!(!left.is_match(&text), "{template}: a placeholder is left");
    std::fs::write(out, text).unwrap();
}

const PORTS: [(&str, &str); 4] = [
    ("ADMIN_PORT", "19901"),
    ("LISTEN_PORT", "10001"),
    ("GATEWAY_PORT", "50052"),
    ("UPSTREAM_PORT", "18080"),
];

#[test]
fn load_kit_envoy_configs_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = dir.path().join("gateway.yaml");
    let jwks = root().join("examples/jwt/jwks.json");
    render(
        "benches/load/gateway.yaml.tmpl",
        &gateway,
        &[
            ("JWKS_FILE", jwks.to_str().unwrap()),
            ("REQUEST_METRICS", "true"),
        ],
    );
    let gateway = gateway.to_str().unwrap().to_string();
    let checks = "[{timeout: 1s, interval: 2s, unhealthy_threshold: 2, healthy_threshold: 1, grpc_health_check: {service_name: envoy.service.ext_proc.v3.ExternalProcessor}}]";
    // The one-filter Envoys of the gateway: six processors with the override off and
    // on, and the empty chain.
    for (over, chain) in [("false", "all"), ("true", "all"), ("false", "none")] {
        let out = dir.path().join(format!("one-{over}-{chain}.yaml"));
        let mut values = PORTS.to_vec();
        values.extend([
            ("EXTPROC_PORT", "50052"),
            ("OVERRIDE", over),
            ("CHAIN", chain),
            ("HEALTH_CHECKS", checks),
        ]);
        render("benches/load/envoy-one-filter.yaml.tmpl", &out, &values);
        let run = check(out.to_str().unwrap(), Some(&gateway));
        if (over, chain) == ("false", "all") {
            // The SDK's modes skip trailers and the override is off: `echo` never
            // gets request trailers. Said, and harmless here (the kit sends none).
            expect(
                &run,
                0,
                &[("warning", 44, &["needs the request trailers (echo)"])],
            );
        } else if chain == "none" {
            // The empty chain is the kit's measure of the transport alone: Envoy sends
            // it what the floor gets, and the check says it is cost for nothing.
            let cost = |what: &'static str| ("warning", 44, vec![what, "no processor of it reads"]);
            let wanted = [
                cost("the request body (BUFFERED)"),
                cost("the response headers (SEND)"),
                cost("the response body (BUFFERED)"),
            ];
            let wanted: Vec<(&str, usize, &[&str])> = wanted
                .iter()
                .map(|(s, l, w)| (*s, *l, w.as_slice()))
                .collect();
            expect(&run, 0, &wanted);
        } else {
            clean(&run);
        }
        assert!(run.stdout.contains("1 ext_proc filter"), "{}", run.stdout);
        validate(&out);
    }
    // The floor's: not the gateway, so only Envoy's own validation applies.
    let out = dir.path().join("floor.yaml");
    let mut values = PORTS.to_vec();
    values.extend([
        ("EXTPROC_PORT", "50061"),
        ("OVERRIDE", "false"),
        ("CHAIN", "all"),
        ("HEALTH_CHECKS", "[]"),
    ]);
    render("benches/load/envoy-one-filter.yaml.tmpl", &out, &values);
    validate(&out);
    let out = dir.path().join("envoy-six-filters.yaml");
    render("benches/load/envoy-six-filters.yaml.tmpl", &out, &PORTS);
    let run = check(out.to_str().unwrap(), Some(&gateway));
    clean(&run);
    assert!(run.stdout.contains("6 ext_proc filters"), "{}", run.stdout);
    validate(&out);
    // The baseline has no ext_proc filter on purpose (Envoy alone): reported as such.
    let out = dir.path().join("baseline.yaml");
    render("benches/load/envoy-baseline.yaml.tmpl", &out, &PORTS);
    let run = check(out.to_str().unwrap(), Some(&gateway));
    expect(&run, 1, &[("error", 3, &["no ext_proc filter"])]);
}

/// Every Envoy config the project ships is one of those checked above: a new one
/// must be added here.
#[test]
fn every_shipped_envoy_config_is_checked() {
    let mut found = Vec::new();
    for rel in repo_files(&["tests/fixtures/check_envoy"]) {
        let is_config = [".yaml", ".yml", ".yaml.tmpl", ".json"]
            .iter()
            .any(|e| rel.ends_with(e));
        let text = std::fs::read_to_string(root().join(&rel)).unwrap_or_default();
        if is_config && text.contains("envoy.filters.http.ext_proc") {
            found.push(rel);
        }
    }
    found.sort();
    assert_eq!(
        found,
        [
            "benches/load/envoy-one-filter.yaml.tmpl",
            "benches/load/envoy-six-filters.yaml.tmpl",
            // an Istio EnvoyFilter: tests/deploy_kubernetes.rs puts its filter in a
            // bootstrap and checks it against the recipe's gateway config
            "deploy/kubernetes/istio/envoyfilter.yaml",
            "envoy.yaml",
            // checked by check9_the_http_service_example_is_clean_with_a_headers_only_http_gateway
            "examples/http_service/envoy.yaml",
        ]
    );
}

/// Every HttpConnectionManager the project ships normalises the path the way the
/// gateway's routes read it (README, "Path safety"), whatever its gateway routes are:
/// `check-envoy` asks for it only in front of path-matched routes.
#[test]
fn every_shipped_envoy_config_normalises_paths() {
    for file in [
        "benches/load/envoy-baseline.yaml.tmpl",
        "benches/load/envoy-one-filter.yaml.tmpl",
        "benches/load/envoy-six-filters.yaml.tmpl",
        "envoy.yaml",
        "examples/http_service/envoy.yaml",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let managers = text
            .matches("name: envoy.filters.network.http_connection_manager")
            .count();
        assert!(managers >= 1, "{file}: no HttpConnectionManager");
        for setting in [
            "normalize_path: true",
            "merge_slashes: true",
            "path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT",
        ] {
            let set = text.lines().filter(|l| l.trim() == setting).count();
            assert_eq!(
                set, managers,
                "{file}: `{setting}` on every HttpConnectionManager"
            );
        }
    }
}

/// Envoy's own validation: a fixture must be a config Envoy accepts, so the finding
/// is about something Envoy would run silently. Skipped without Envoy outside CI.
fn validate(file: &Path) {
    let Some(bin) = envoy_bin() else { return };
    let out = Command::new(bin)
        .args(["--mode", "validate", "-c"])
        .arg(file)
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "envoy rejects {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_envoy_fixture_is_valid_for_envoy() {
    let dir = root().join(FIXTURES);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let not_envoy = name.ends_with(".gateway.yaml")
            || name == "not-a-bootstrap.yaml"
            || name == "bad-yaml.yaml";
        if name.ends_with(".yaml") && !not_envoy {
            validate(&entry.path());
            n += 1;
        }
    }
    assert!(n >= 20, "only {n} fixtures");
}

// ---- the catalogue: one fixture per problem

#[test]
fn the_clean_fixture_is_clean() {
    clean(&check(&fixture("clean.yaml"), None));
    clean(&check(&fixture("clean.yaml"), Some(JWT)));
}

#[test]
fn check1_override_off_withholds_what_the_route_needs() {
    let run = check(&fixture("override-off.yaml"), None);
    expect(
        &run,
        1,
        &[
            (
                "error",
                37,
                &[
                    "`default`",
                    "response headers",
                    "response_header_mode is SKIP",
                    "allow_mode_override is off",
                    "Fix: set allow_mode_override: true",
                ],
            ),
            (
                "error",
                38,
                &[
                    "request body",
                    "digest, context_check, echo",
                    "does not send it",
                    "request_body_mode is NONE",
                    "or set request_body_mode: BUFFERED",
                ],
            ),
            (
                "error",
                39,
                &[
                    "response body",
                    "(context_check)",
                    "response_body_mode is NONE",
                ],
            ),
            (
                "warning",
                40,
                &["request trailers", "(echo)", "request_trailer_mode is SKIP"],
            ),
        ],
    );
}

#[test]
fn check1_override_off_sending_more_than_needed_costs_only() {
    let run = check(
        &fixture("override-off-sends-more.yaml"),
        Some(&fixture("headers-only.gateway.yaml")),
    );
    expect(
        &run,
        0,
        &[
            (
                "warning",
                35,
                &[
                    "sends the request body (BUFFERED)",
                    "`headers`",
                    "cost only",
                    "or set request_body_mode: NONE",
                ],
            ),
            (
                "warning",
                35,
                &[
                    "sends the response body (STREAMED)",
                    "cost only",
                    "or set response_body_mode: NONE",
                ],
            ),
        ],
    );
}

#[test]
fn check2_allowed_override_modes_without_the_gateways_mode() {
    let run = check(&fixture("allowed-override-modes.yaml"), None);
    let asked = "{response_header_mode: SEND, request_body_mode: BUFFERED, response_body_mode: BUFFERED, request_trailer_mode: SEND, response_trailer_mode: SEND}";
    expect(
        &run,
        1,
        &[
            (
                "error",
                36,
                &[
                    "request body",
                    asked,
                    "allowed_override_modes does not list",
                    "keeps request_body_mode: NONE",
                ],
            ),
            (
                "error",
                36,
                &["response body", "keeps response_body_mode: NONE"],
            ),
            ("warning", 36, &["request trailers"]),
        ],
    );
}

#[test]
fn check2_send_body_without_waiting_disables_mode_override() {
    let run = check(&fixture("send-body-without-waiting.yaml"), None);
    expect(
        &run,
        1,
        &[
            ("error", 36, &["request body", "send_body_without_waiting_for_header_response: true makes Envoy ignore mode_override"]),
            ("error", 36, &["response body"]),
            ("warning", 36, &["request trailers"]),
        ],
    );
}

#[test]
fn check2_full_duplex_cannot_be_overridden() {
    let run = check(&fixture("full-duplex.yaml"), None);
    expect(
        &run,
        1,
        &[
            (
                "error",
                39,
                &[
                    "request body whole",
                    "streams it (FULL_DUPLEX_STREAMED)",
                    "mode_override cannot change",
                ],
            ),
            (
                "error",
                39,
                &[
                    "response body",
                    "request_body_mode is FULL_DUPLEX_STREAMED, so Envoy ignores mode_override",
                ],
            ),
        ],
    );
}

#[test]
fn check2_grpc_body_mode_is_not_the_body() {
    let run = check(&fixture("grpc-body-mode.yaml"), None);
    expect(
        &run,
        1,
        &[(
            "error",
            39,
            &[
                "request body",
                "de-framed gRPC messages (GRPC)",
                "request_body_mode is GRPC",
            ],
        )],
    );
}

#[test]
fn check2_observability_mode_sends_no_buffered_body() {
    let run = check(&fixture("observability-mode.yaml"), None);
    expect(
        &run,
        1,
        &[
            (
                "error",
                36,
                &[
                    "request body",
                    "observability_mode: true sends only STREAMED or GRPC bodies",
                ],
            ),
            ("error", 36, &["response body"]),
            ("warning", 36, &["request trailers"]),
            ("warning", 36, &["ignore every answer", "`default`"]),
        ],
    );
}

#[test]
fn check3_buffered_bodies_over_the_default_limit_get_413() {
    let run = check(&fixture("buffered-default-limit.yaml"), None);
    expect(
        &run,
        0,
        &[
            (
                "warning",
                6,
                &[
                    "whole request body",
                    "1048576",
                    "per_connection_buffer_limit_bytes of listener `ingress`",
                    "413",
                    "body_mode: streamed",
                ],
            ),
            (
                "warning",
                6,
                &[
                    "whole response body",
                    "(the gateway asks for BUFFERED via mode_override; context_check)",
                    "500",
                ],
            ),
        ],
    );
}

#[test]
fn check3_buffered_partial_bodies_over_the_limit_are_a_prefix() {
    let run = check(
        &fixture("buffered-partial.yaml"),
        Some(&fixture("digest-streamed.gateway.yaml")),
    );
    expect(
        &run,
        0,
        &[(
            "warning",
            6,
            &[
                "BUFFERED_PARTIAL",
                "1048576",
                "partial prefix",
                "digest omits x-request-digest",
            ],
        )],
    );
}

#[test]
fn check3_buffer_limit_above_the_gateways_largest_message() {
    let run = check(&fixture("buffer-limit-above-max.yaml"), None);
    expect(
        &run,
        0,
        &[
            (
                "warning",
                8,
                &[
                    "134217728",
                    "server.max_message_bytes (4194304)",
                    "request body",
                ],
            ),
            ("warning", 8, &["response body"]),
        ],
    );
}

#[test]
fn check4_message_timeout_below_the_processor_timeout() {
    let run = check(
        &fixture("message-timeout.yaml"),
        Some(&fixture("processor-timeout.gateway.yaml")),
    );
    expect(
        &run,
        1,
        &[(
            "error",
            34,
            &[
                "message_timeout (500ms)",
                "server.processor_timeout (1s)",
                "Envoy gives up first",
                "message_timeout: 1.5s",
            ],
        )],
    );
    // The same config with no processor_timeout: nothing to compare.
    clean(&check(&fixture("message-timeout.yaml"), None));
    // Envoy's default (200ms) counts when the filter does not set it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("default-timeout.yaml");
    let text = std::fs::read_to_string(root().join(fixture("message-timeout.yaml")))
        .unwrap()
        .replace("              message_timeout: 0.5s\n", "");
    std::fs::write(&file, text).unwrap();
    let run = check(
        file.to_str().unwrap(),
        Some(&fixture("processor-timeout.gateway.yaml")),
    );
    expect(
        &run,
        1,
        &[("error", 29, &["message_timeout (200ms, Envoy's default)"])],
    );
}

#[test]
fn check5_failure_mode_allow_fails_open_on_authenticating_routes() {
    let run = check(&fixture("failure-mode-allow.yaml"), Some(JWT));
    expect(
        &run,
        1,
        &[(
            "error",
            33,
            &[
                "failure_mode_allow: true fails open",
                "unauthenticated",
                "`api` authenticates",
            ],
        )],
    );
    // Without an authenticating route, failing open is the operator's choice.
    clean(&check(&fixture("failure-mode-allow.yaml"), None));
}

#[test]
fn check6_observability_mode_cannot_block() {
    let run = check(&fixture("observability-mode.yaml"), Some(JWT));
    expect(
        &run,
        1,
        &[
            (
                "error",
                36,
                &["jwt_auth cannot block", "`api`", "unauthenticated"],
            ),
            ("warning", 36, &["ignore every answer", "`public`"]),
        ],
    );
}

#[test]
fn check6_disable_immediate_response_drops_the_401() {
    let run = check(&fixture("disable-immediate-response.yaml"), Some(JWT));
    expect(
        &run,
        1,
        &[("error", 36, &["drops jwt_auth's 401", "`api`"])],
    );
    let run = check(&fixture("disable-immediate-response.yaml"), None);
    expect(
        &run,
        0,
        &[(
            "warning",
            36,
            &["immediate responses of context_check, echo"],
        )],
    );
}

#[test]
fn check7_missing_cluster() {
    let run = check(&fixture("cluster-missing.yaml"), None);
    expect(
        &run,
        1,
        &[(
            "error",
            32,
            &[
                "cluster `ext_proc_gateway`",
                "does not define",
                "fails every ext_proc stream",
            ],
        )],
    );
}

#[test]
fn check7_cluster_name_that_is_no_authority() {
    let run = check(&fixture("cluster-name-as-authority.yaml"), None);
    expect(
        &run,
        1,
        &[(
            "error",
            33,
            &[
                ":authority `outbound|9002||extproc-gateway.extproc.svc.cluster.local`",
                "not a valid authority",
                "set envoy_grpc.authority",
            ],
        )],
    );
    // With the authority named, the same config is clean.
    let dir = tempfile::tempdir().unwrap();
    let fixed = dir.path().join("fixed.yaml");
    let text = std::fs::read_to_string(fixture("cluster-name-as-authority.yaml")).unwrap();
    let text = text.replace(
        "envoy_grpc: {cluster_name: \"outbound|9002||extproc-gateway.extproc.svc.cluster.local\"}",
        "envoy_grpc: {cluster_name: \"outbound|9002||extproc-gateway.extproc.svc.cluster.local\", authority: extproc-gateway.extproc.svc.cluster.local}",
    );
    std::fs::write(&fixed, text).unwrap();
    clean(&check(fixed.to_str().unwrap(), None));
}

#[test]
fn check7_cluster_without_http2() {
    let run = check(&fixture("cluster-http1.yaml"), None);
    expect(
        &run,
        1,
        &[
            (
                "error",
                47,
                &[
                    "`extproc_gateway` talks HTTP/1.1",
                    "gRPC needs HTTP/2",
                    "http2_protocol_options",
                ],
            ),
            ("warning", 47, &["no grpc_health_check"]),
        ],
    );
}

#[test]
fn check7_cluster_without_grpc_health_check() {
    let run = check(&fixture("cluster-no-health-check.yaml"), None);
    expect(
        &run,
        0,
        &[(
            "warning",
            47,
            &[
                "no grpc_health_check",
                "NOT_SERVING",
                "grpc_health_check: {service_name: envoy.service.ext_proc.v3.ExternalProcessor}",
            ],
        )],
    );
}

#[test]
fn check7_cluster_with_default_circuit_breakers() {
    let run = check(&fixture("cluster-default-circuit-breakers.yaml"), None);
    expect(
        &run,
        0,
        &[(
            "warning",
            47,
            &[
                "default circuit breakers",
                "1024 concurrent requests",
                "max_requests",
            ],
        )],
    );
}

#[test]
fn check8_path_routes_need_normalised_paths() {
    let run = check(&fixture("path-not-normalized.yaml"), Some(JWT));
    expect(
        &run,
        1,
        &[
            (
                "error",
                12,
                &[
                    "`public` matches on the path",
                    "path_prefix: /public",
                    "normalize_path: true and merge_slashes: true",
                    "`/public/../x`",
                ],
            ),
            (
                "warning",
                12,
                &[
                    "path_with_escaped_slashes_action is not set",
                    "UNESCAPE_AND_REDIRECT",
                ],
            ),
        ],
    );
    // No path-matched route (the embedded default): nothing to normalise for.
    clean(&check(&fixture("path-not-normalized.yaml"), None));
}

#[test]
fn check8_escaped_slashes_kept() {
    let run = check(&fixture("escaped-slashes.yaml"), Some(JWT));
    expect(
        &run,
        0,
        &[(
            "warning",
            17,
            &["path_with_escaped_slashes_action is KEEP_UNCHANGED", "%2F"],
        )],
    );
}

#[test]
fn check9_http_service_carries_headers_only() {
    let run = check(&fixture("http-service.yaml"), None);
    expect(
        &run,
        0,
        &[(
            "warning",
            31,
            &[
                "http_service",
                "headers only",
                "`default` would never get the bodies its chain needs",
            ],
        )],
    );
}

#[test]
fn check9_http_service_needs_the_gateways_http_listener() {
    let run = check(
        &fixture("http-service.yaml"),
        Some(&fixture("headers-only.gateway.yaml")),
    );
    expect(
        &run,
        0,
        &[(
            "warning",
            31,
            &["http_service", "server.http_addr", "sets none"],
        )],
    );
    assert!(!run.findings[0].text.contains("bodies"), "{}", run.stdout);
}

#[test]
fn check9_the_http_service_example_is_clean_with_a_headers_only_http_gateway() {
    clean(&check(
        "examples/http_service/envoy.yaml",
        Some(&fixture("headers-only-http.gateway.yaml")),
    ));
}

#[test]
fn check9_google_grpc_is_fine() {
    clean(&check(&fixture("google-grpc.yaml"), None));
}

#[test]
fn per_route_overrides_select_gateway_routes_by_metadata() {
    let run = check(
        &fixture("per-route.yaml"),
        Some(&fixture("per-route.gateway.yaml")),
    );
    expect(
        &run,
        1,
        &[(
            "error",
            53,
            &[
                "on Envoy route `upload` (ExtProcPerRoute)",
                "gateway route `bodies`",
                "(digest)",
                "request_body_mode is NONE",
            ],
        )],
    );
}

#[test]
fn metadata_that_matches_no_route_passes_requests_through() {
    let run = check(
        &fixture("unmatched-metadata.yaml"),
        Some(&fixture("metadata-only.gateway.yaml")),
    );
    expect(
        &run,
        0,
        &[(
            "warning",
            29,
            &["no gateway route matches", "x-chain: b", "unmatched"],
        )],
    );
}

#[test]
fn a_bootstrap_without_ext_proc_is_an_error() {
    let run = check(&fixture("no-ext-proc.yaml"), None);
    expect(&run, 1, &[("error", 4, &["no ext_proc filter"])]);
}

#[test]
fn a_gateway_config_is_not_a_bootstrap() {
    let run = check(&fixture("not-a-bootstrap.yaml"), None);
    expect(
        &run,
        1,
        &[(
            "error",
            2,
            &["not an Envoy bootstrap", "looks like a gateway config"],
        )],
    );
}

#[test]
fn bad_yaml_is_reported_with_its_line_and_exit_code_2() {
    let run = check(&fixture("bad-yaml.yaml"), None);
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.starts_with(&format!(
            "{}:5: error: not valid YAML",
            fixture("bad-yaml.yaml")
        )),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);

    let run = check(&fixture("does-not-exist.yaml"), None);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("cannot read"), "{}", run.stderr);

    // A bad gateway config: its own error, and nothing checked.
    let run = check("envoy.yaml", Some(&fixture("clean.yaml")));
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("unknown field `static_resources`"),
        "{}",
        run.stderr
    );
}
