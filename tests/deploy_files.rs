//! The deployment files checked offline: docker-compose.yaml, the Dockerfile, the
//! Prometheus config and Grafana provisioning agree with each other, with envoy.yaml
//! and with the gateway's defaults; the Envoy config with the compose file's admin
//! override passes real Envoy's validation; and every metric the Grafana dashboard
//! queries is one the gateway or Envoy actually exports after traffic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use extproc_gateway::config::GatewayConfig;
use extproc_gateway::proto::ext_proc::external_processor_client::ExternalProcessorClient;
use extproc_gateway::proto::ext_proc::ProcessingRequest;
// Compose and Envoy files read into JSON values: their keys are all strings.
use serde_json::Value;

const SERVICES: [&str; 6] = [
    "envoy",
    "gateway",
    "upstream",
    "prometheus",
    "grafana",
    "jaeger",
];
const DASHBOARD: &str = "dashboards/grafana/extproc-gateway.json";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// `v[k1][k2]...`, where a key that parses as a number indexes a sequence.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for k in path {
        cur = match k.parse::<usize>() {
            Ok(i) if cur.is_array() => &cur[i],
            _ => &cur[*k],
        };
        assert!(!cur.is_null(), "missing {path:?} (at {k})");
    }
    cur
}

fn text<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn port(v: &Value, path: &[&str]) -> u16 {
    at(v, path)
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("{path:?} is not a port"))
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(s) => s
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("not a scalar: {other:?}"),
            })
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Null => Vec::new(),
        other => panic!("not a list of strings: {other:?}"),
    }
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    at(compose, &["services", name])
}

/// A service's `environment`, as a map or a `K=V` list.
fn environment(svc: &Value) -> BTreeMap<String, String> {
    match &svc["environment"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("environment value {other:?}"),
                };
                (k.clone(), v)
            })
            .collect(),
        v => strings(v)
            .into_iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
    }
}

/// A service's bind mounts as (host path relative to the repo, container path).
fn mounts(svc: &Value) -> Vec<(String, String)> {
    strings(&svc["volumes"])
        .into_iter()
        .map(|m| {
            let mut parts = m.split(':');
            let host = parts.next().unwrap_or_default().to_string();
            let container = parts
                .next()
                .unwrap_or_else(|| panic!("volume {m:?} has no container path"))
                .to_string();
            (host, container)
        })
        .collect()
}

/// The container path a repo file or directory is mounted at.
fn mounted_at(svc: &Value, host: &str) -> String {
    mounts(svc)
        .into_iter()
        .find(|(h, _)| h.trim_start_matches("./") == host)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("{host} is not mounted: {:?}", mounts(svc)))
}

/// Published ports as (host, container).
fn published(svc: &Value) -> Vec<(u16, u16)> {
    strings(&svc["ports"])
        .into_iter()
        .map(|p| {
            let p = p.split('/').next().unwrap_or_default();
            let parts: Vec<&str> = p.split(':').collect();
            let n = |s: &str| {
                s.parse::<u16>()
                    .unwrap_or_else(|_| panic!("port {p:?} is not host:container"))
            };
            match parts.as_slice() {
                [c] => (n(c), n(c)),
                [h, c] | [_, h, c] => (n(h), n(c)),
                _ => panic!("port {p:?}"),
            }
        })
        .collect()
}

/// `host:port` or `http://host:port/...` split into host and port.
fn host_port(addr: &str) -> (String, u16) {
    let a = addr.split("://").last().unwrap_or(addr);
    let a = a.split('/').next().unwrap_or(a);
    let (h, p) = a
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{addr:?} has no port"));
    (
        h.to_string(),
        p.parse().unwrap_or_else(|_| panic!("{addr:?}: bad port")),
    )
}

/// The argument following `flag` (`--flag value` or `--flag=value`) in a command.
fn flag_value(cmd: &[String], flag: &str) -> Option<String> {
    cmd.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            cmd.get(i + 1).cloned()
        } else {
            a.strip_prefix(&format!("{flag}=")).map(str::to_string)
        }
    })
}

fn gateway_defaults() -> GatewayConfig {
    GatewayConfig::embedded().expect("embedded config")
}

/// Envoy's `--config-yaml` admin override from the compose file.
fn admin_override(compose: &Value) -> String {
    let cmd = strings(&service(compose, "envoy")["command"]);
    flag_value(&cmd, "--config-yaml").expect("envoy command has --config-yaml")
}

fn endpoint_of<'a>(envoy: &'a Value, cluster: &str) -> &'a Value {
    let clusters = at(envoy, &["static_resources", "clusters"])
        .as_array()
        .expect("clusters");
    let c = clusters
        .iter()
        .find(|c| c["name"].as_str() == Some(cluster))
        .unwrap_or_else(|| panic!("envoy.yaml has no cluster {cluster}"));
    at(
        c,
        &[
            "load_assignment",
            "endpoints",
            "0",
            "lb_endpoints",
            "0",
            "endpoint",
            "address",
            "socket_address",
        ],
    )
}

#[test]
fn compose_has_the_six_services_and_everything_it_mounts_or_builds_from_exists() {
    let compose = yaml("docker-compose.yaml");
    let names: BTreeSet<&str> = at(&compose, &["services"])
        .as_object()
        .expect("services")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, SERVICES.into_iter().collect(), "compose services");

    let mut checked = 0;
    for name in SERVICES {
        let svc = service(&compose, name);
        for (host, container) in mounts(svc) {
            assert!(
                host.starts_with("./"),
                "{name}: mount {host} should be a repo path"
            );
            assert!(
                root().join(&host).exists(),
                "{name}: mounts {host}, which does not exist"
            );
            assert!(container.starts_with('/'), "{name}: {container}");
            checked += 1;
        }
        let build = &svc["build"];
        if !build.is_null() {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.clone(), "Dockerfile".to_string()),
                m => (
                    text(m, &["context"]).to_string(),
                    m["dockerfile"].as_str().unwrap_or("Dockerfile").to_string(),
                ),
            };
            let dir = root().join(&context);
            assert!(dir.is_dir(), "{name}: build context {context} missing");
            assert!(
                dir.join(&dockerfile).is_file(),
                "{name}: {dockerfile} missing in {context}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} mounts and builds found");

    // The gateway and the upstream run the image the project's Dockerfile builds, in
    // Envoy's network namespace (envoy.yaml reaches them on 127.0.0.1).
    let gw = service(&compose, "gateway");
    let up = service(&compose, "upstream");
    assert!(!gw["build"].is_null(), "the gateway is built from the repo");
    assert_eq!(text(gw, &["image"]), text(up, &["image"]));
    for svc in [gw, up] {
        assert_eq!(text(svc, &["network_mode"]), "service:envoy");
        assert!(svc["ports"].is_null(), "ports go on the envoy service");
    }
    let env = environment(gw);
    assert_eq!(
        env.get("OTEL_SERVICE_NAME").map(String::as_str),
        Some("extproc-gateway")
    );
    let (otlp_host, otlp_port) = host_port(&env["OTEL_EXPORTER_OTLP_ENDPOINT"]);
    assert_eq!(otlp_host, "jaeger");
    assert_eq!(otlp_port, 4317, "OTLP over gRPC");
    let jaeger = service(&compose, "jaeger");
    let jaeger_ports: Vec<u16> = published(jaeger).into_iter().map(|(_, c)| c).collect();
    assert!(jaeger_ports.contains(&16686), "Jaeger UI: {jaeger_ports:?}");
    let jaeger_cmd = strings(&jaeger["command"]).join(" ");
    assert!(
        jaeger_cmd.contains(&format!("grpc.endpoint=0.0.0.0:{otlp_port}")),
        "Jaeger's OTLP gRPC receiver listens on all interfaces: {jaeger_cmd}"
    );
}

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(t);
                let (op, rest) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((op.to_ascii_uppercase(), rest.trim().to_string()));
                pending.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_is_multi_stage_locked_non_root_and_exposes_the_default_ports() {
    let ins = dockerfile();
    let froms: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {} FROM", froms.len());
    let build_stage = &ins[froms[0]..froms[froms.len() - 1]];
    let build = build_stage
        .iter()
        .find(|(op, args)| op == "RUN" && args.contains("cargo build"))
        .expect("a RUN with cargo build in a build stage");
    for flag in ["--release", "--locked"] {
        assert!(build.1.contains(flag), "cargo build without {flag}");
    }
    assert!(
        ins[froms[0]].1.starts_with("rust:"),
        "builder: {}",
        ins[froms[0]].1
    );

    let runtime = &ins[froms[froms.len() - 1]..];
    assert!(
        runtime[0].1.contains("slim"),
        "small runtime image: {}",
        runtime[0].1
    );
    assert!(runtime
        .iter()
        .any(|(op, args)| op == "COPY" && args.starts_with("--from=")));
    assert!(runtime
        .iter()
        .any(|(op, args)| op == "RUN" && args.contains("ca-certificates")));
    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, u)| u.clone())
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        !uid.is_empty() && uid != "root" && uid != "0",
        "runs as root: USER {user}"
    );
    let entry = runtime
        .iter()
        .find(|(op, _)| op == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert!(entry.1.contains("extproc-gateway"), "{}", entry.1);

    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, args)| args.split_whitespace())
        .map(|p| {
            p.split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("port")
        })
        .collect();
    let cfg = gateway_defaults();
    let grpc_port = cfg
        .server
        .grpc_addr
        .port()
        .expect("default gRPC address is TCP");
    let defaults: BTreeSet<u16> = [grpc_port, cfg.server.admin_addr.port()]
        .into_iter()
        .collect();
    assert_eq!(exposed, defaults, "EXPOSE vs the gateway's default ports");

    let ignore: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(|l| l.trim().trim_end_matches('/').to_string())
        .collect();
    for p in ["target", ".tools", ".git"] {
        assert!(ignore.contains(p), ".dockerignore lacks {p}");
    }
}

#[test]
fn envoy_image_is_the_version_the_tests_run() {
    let script = read("scripts/install-envoy.sh");
    let tested = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("ENVOY_VERSION="))
        .map(|v| v.trim_matches('"').to_string())
        .expect("ENVOY_VERSION in scripts/install-envoy.sh");
    let image = text(
        &yaml("docker-compose.yaml"),
        &["services", "envoy", "image"],
    )
    .to_string();
    let (repo, tag) = image.rsplit_once(':').expect("image has a tag");
    assert_eq!(repo, "envoyproxy/envoy", "official Envoy image");
    let major_minor = |v: &str| -> (u32, u32) {
        let mut it = v.trim_start_matches('v').split(['.', '-']);
        let mut n = || {
            it.next()
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("version {v:?}"))
        };
        (n(), n())
    };
    assert_eq!(
        major_minor(tag),
        major_minor(&tested),
        "compose runs Envoy {tag}, the tests {tested}"
    );
}

#[test]
fn ports_agree_across_envoy_yaml_compose_and_prometheus() {
    let compose = yaml("docker-compose.yaml");
    let envoy_yaml = yaml("envoy.yaml");
    let envoy_svc = service(&compose, "envoy");
    let cfg = gateway_defaults();

    // envoy.yaml's own ports.
    let admin = port(
        &envoy_yaml,
        &["admin", "address", "socket_address", "port_value"],
    );
    let listener = port(
        &envoy_yaml,
        &[
            "static_resources",
            "listeners",
            "0",
            "address",
            "socket_address",
            "port_value",
        ],
    );
    let ext_proc = endpoint_of(&envoy_yaml, "extproc_gateway");
    let upstream = endpoint_of(&envoy_yaml, "upstream");

    // Envoy is started on that file, with the admin opened to the compose network on
    // the same port.
    let cmd = strings(&envoy_svc["command"]);
    let config = flag_value(&cmd, "-c").expect("envoy -c");
    assert_eq!(config, mounted_at(envoy_svc, "envoy.yaml"));
    let over: Value = serde_saphyr::from_str(&admin_override(&compose)).expect("override YAML");
    assert_eq!(
        text(&over, &["admin", "address", "socket_address", "address"]),
        "0.0.0.0"
    );
    assert_eq!(
        port(&over, &["admin", "address", "socket_address", "port_value"]),
        admin
    );

    // Published on the envoy service: listener, Envoy admin, gateway admin.
    let ports = published(envoy_svc);
    let gw_env = environment(service(&compose, "gateway"));
    let gw_admin: std::net::SocketAddr = gw_env["EXTPROC_ADMIN_ADDR"].parse().expect("admin addr");
    assert!(gw_admin.ip().is_unspecified(), "gateway admin on 0.0.0.0");
    assert_eq!(gw_admin.port(), cfg.server.admin_addr.port());
    for p in [listener, admin, gw_admin.port()] {
        assert!(
            ports.contains(&(p, p)),
            "envoy publishes {p}:{p}: {ports:?}"
        );
    }

    // The gateway listens where envoy.yaml's ext_proc cluster points (same netns).
    let grpc: std::net::SocketAddr = gw_env
        .get("EXTPROC_GRPC_ADDR")
        .map(|a| a.parse().expect("grpc addr"))
        .or(cfg.server.grpc_addr.tcp())
        .expect("the gateway's gRPC address is TCP");
    assert_eq!(text(ext_proc, &["address"]), "127.0.0.1");
    assert_eq!(port(ext_proc, &["port_value"]), grpc.port());
    assert!(grpc.ip().is_unspecified() || grpc.ip().is_loopback());

    // The upstream listens where envoy.yaml's upstream cluster points.
    let up_cmd = strings(&service(&compose, "upstream")["command"]);
    assert_eq!(up_cmd.first().map(String::as_str), Some("echo-upstream"));
    let addr = flag_value(&up_cmd, "--addr").expect("echo-upstream --addr");
    assert_eq!(
        host_port(&addr),
        (
            text(upstream, &["address"]).to_string(),
            port(upstream, &["port_value"])
        )
    );

    // Prometheus scrapes both admins at the envoy service, with its mounted config.
    let prom_svc = service(&compose, "prometheus");
    let prom_file = flag_value(&strings(&prom_svc["command"]), "--config.file")
        .expect("prometheus --config.file");
    assert_eq!(
        prom_file,
        mounted_at(prom_svc, "dashboards/prometheus/prometheus.yml")
    );
    let prom = yaml("dashboards/prometheus/prometheus.yml");
    let jobs: BTreeMap<String, Vec<String>> = at(&prom, &["scrape_configs"])
        .as_array()
        .expect("scrape_configs")
        .iter()
        .map(|j| {
            let path = j["metrics_path"].as_str().unwrap_or("/metrics").to_string();
            let targets = at(j, &["static_configs"])
                .as_array()
                .expect("static_configs")
                .iter()
                .flat_map(|s| strings(&s["targets"]))
                .collect();
            (path, targets)
        })
        .collect();
    assert_eq!(
        jobs.get("/stats/prometheus"),
        Some(&vec![format!("envoy:{admin}")]),
        "Envoy's admin: {jobs:?}"
    );
    assert_eq!(
        jobs.get("/metrics"),
        Some(&vec![format!("envoy:{}", gw_admin.port())]),
        "the gateway's admin: {jobs:?}"
    );
    let prom_port = published(prom_svc)[0].1;
    let ds = yaml("dashboards/grafana/provisioning/datasources/prometheus.yaml");
    assert_eq!(
        host_port(text(&ds, &["datasources", "0", "url"])),
        ("prometheus".to_string(), prom_port)
    );
}

/// Every `datasource` object in the dashboard, wherever it sits.
fn datasources(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "datasource" && x.is_object() {
                    out.push(x.clone());
                }
                datasources(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| datasources(x, out)),
        _ => {}
    }
}

#[test]
fn grafana_provisioning_points_at_the_mounted_dashboard_and_its_datasource() {
    let compose = yaml("docker-compose.yaml");
    let grafana = service(&compose, "grafana");
    assert_eq!(
        mounted_at(grafana, "dashboards/grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let in_container = mounted_at(grafana, DASHBOARD);
    let provider = yaml("dashboards/grafana/provisioning/dashboards/dashboards.yaml");
    assert_eq!(text(&provider, &["providers", "0", "type"]), "file");
    let dir = text(&provider, &["providers", "0", "options", "path"]);
    assert_eq!(
        Path::new(&in_container).parent(),
        Some(Path::new(dir)),
        "the provider loads {dir}, the dashboard is mounted at {in_container}"
    );
    let env = environment(grafana);
    assert_eq!(
        env.get("GF_AUTH_ANONYMOUS_ENABLED").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        env.get("GF_AUTH_ANONYMOUS_ORG_ROLE").map(String::as_str),
        Some("Viewer")
    );
    if let Some(home) = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        assert_eq!(home, &in_container);
    }

    let ds = yaml("dashboards/grafana/provisioning/datasources/prometheus.yaml");
    assert_eq!(text(&ds, &["datasources", "0", "type"]), "prometheus");
    let uid = text(&ds, &["datasources", "0", "uid"]);
    let d = dashboard();
    let mut used = Vec::new();
    datasources(&d["panels"], &mut used);
    datasources(&d["templating"], &mut used);
    assert!(used.len() > 10, "panels and targets name their datasource");
    for x in &used {
        assert_eq!(x["type"], "prometheus", "{x}");
        assert_eq!(x["uid"], uid, "datasource {x} is not the provisioned one");
    }
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"route"),
        "templated route variable: {vars:?}"
    );
    let kinds: BTreeSet<&str> = d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["type"].as_str())
        .collect();
    for kind in ["timeseries", "heatmap", "stat"] {
        assert!(kinds.contains(kind), "no {kind} panel");
    }
}

#[test]
fn envoy_validates_envoy_yaml_with_the_compose_admin_override() {
    let Some(bin) = envoy_bin() else { return };
    let validate = |over: &str| {
        Command::new(&bin)
            .args(["--mode", "validate", "-c"])
            .arg(root().join("envoy.yaml"))
            .args(["--config-yaml", over])
            .output()
            .expect("run envoy")
    };
    let over = admin_override(&yaml("docker-compose.yaml"));
    let out = validate(&over);
    assert!(
        out.status.success(),
        "envoy rejects envoy.yaml + {over}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: a broken override is refused.
    let bad = validate("admin: {address: {socket_address: {address: 0.0.0.0, port_value: nope}}}");
    assert!(!bad.status.success(), "envoy accepted a bad override");
}

// ---- metric names of the dashboard vs. what is exported

/// PromQL words that are never metric names: binary operators, modifiers and
/// aggregation operators (which may be followed by `by (...)` before their parens).
const KEYWORDS: [&str; 26] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Metric names a PromQL expression selects: identifiers outside label matchers,
/// strings, range brackets and grouping lists, that are neither functions, keywords
/// nor `$variables`.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let mut grouping_next = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            i += 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if grouping_next => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                grouping_next = false;
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let call = chars.get(j) == Some(&'(');
                grouping_next = matches!(
                    word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                );
                if !grouping_next && !call && !KEYWORDS.contains(&word.as_str()) {
                    out.insert(word);
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers and durations (0.99, 5m, 1e-9).
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || (matches!(chars[i], '-' | '+') && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Metric names a Grafana variable query selects (`label_values(selector, label)`,
/// `query_result(expr)` or a bare PromQL expression).
fn variable_metrics(query: &str) -> BTreeSet<String> {
    let q = query.trim();
    if let Some(inner) = q
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return match inner.rsplit_once(',') {
            Some((selector, _label)) => promql_metrics(selector),
            None => BTreeSet::new(), // label_values(label): no metric
        };
    }
    if let Some(inner) = q
        .strip_prefix("query_result(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return promql_metrics(inner);
    }
    promql_metrics(q)
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                out.push(e.to_string());
            }
            for x in m.values() {
                collect_exprs(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

/// Every metric name the dashboard's panels and variables query.
fn dashboard_metrics() -> BTreeSet<String> {
    let d = dashboard();
    let mut exprs = Vec::new();
    collect_exprs(&d["panels"], &mut exprs);
    assert!(exprs.len() >= 20, "only {} queries", exprs.len());
    let mut names = BTreeSet::new();
    for e in &exprs {
        let m = promql_metrics(e);
        assert!(!m.is_empty(), "query selects no metric: {e}");
        names.extend(m);
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        let q = match &v["query"] {
            serde_json::Value::String(s) => s.clone(),
            o => o["query"].as_str().unwrap_or_default().to_string(),
        };
        names.extend(variable_metrics(&q));
    }
    names
}

#[test]
fn promql_metric_extraction_skips_functions_labels_ranges_and_variables() {
    let got = promql_metrics(
        r#"histogram_quantile(0.99, sum by (phase, le) (rate(extproc_message_duration_seconds_bucket{route=~"$route", phase!="x{y}"}[$__rate_interval])))"#,
    );
    assert_eq!(
        got,
        ["extproc_message_duration_seconds_bucket".to_string()].into()
    );
    let got = promql_metrics(
        "sum without (instance) (rate(a_total[5m] offset 1h)) / on (job) group_left (x) b + 1e-9 > bool c or max(d) by (le)",
    );
    assert_eq!(
        got,
        ["a_total", "b", "c", "d"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(
        variable_metrics(r#"label_values(extproc_streams_total{route=~"$route"}, route)"#),
        ["extproc_streams_total".to_string()].into()
    );
    assert!(variable_metrics("label_values(route)").is_empty());
}

/// Families (`# TYPE` name -> type) and sample names of a Prometheus exposition.
fn exposition(text: &str) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut families = BTreeMap::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(n), Some(t)) = (it.next(), it.next()) {
                families.insert(n.to_string(), t.to_string());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name = line
                .split(['{', ' '])
                .next()
                .unwrap_or_default()
                .to_string();
            samples.insert(name);
        }
    }
    (families, samples)
}

/// Whether `name`, as a PromQL selector, has series in this exposition: a counter or
/// gauge by its own name, a histogram only through `_bucket`, `_sum` or `_count`.
fn exported(name: &str, families: &BTreeMap<String, String>, samples: &BTreeSet<String>) -> bool {
    if !samples.contains(name) {
        return false;
    }
    match families.get(name).map(String::as_str) {
        Some("histogram") => false,
        Some(_) => true,
        None => ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| families.get(base).map(String::as_str) == Some("histogram"))
        }),
    }
}

#[test]
fn exposition_matching_is_strict_about_histograms() {
    let text =
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n# TYPE c counter\nc 2\n";
    let (f, s) = exposition(text);
    assert!(exported("h_bucket", &f, &s));
    assert!(exported("h_count", &f, &s));
    assert!(exported("c", &f, &s));
    assert!(
        !exported("h", &f, &s),
        "a histogram's base name has no series"
    );
    assert!(!exported("c_total", &f, &s));
    assert!(!exported("c_bucket", &f, &s));
}

const METRICS_GATEWAY: &str = r#"
routes:
  - name: api
    match: {path_prefix: /api}
    processors: [trivial, digest, echo]
  - name: rest
    processors: [trivial, timer]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_exported_by_the_gateway_or_envoy_after_traffic() {
    let names = dashboard_metrics();
    let Some(bin) = envoy_bin() else { return };
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(METRICS_GATEWAY).await;
    let envoy = Envoy::start(
        &bin,
        &EnvoySpec::default(),
        gateway.grpc_port,
        upstream.port,
    )
    .await;
    let c = client();
    for i in 0..5 {
        let r = send(&c, envoy.port, "POST", &format!("/api/{i}"), &[], full("b")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ext-procs-applied"), Some("trivial,digest,echo"));
    }
    let r = send(
        &c,
        envoy.port,
        "POST",
        "/api/echo",
        &[("x-echo-only", "yes")],
        full("hey"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.hits(), 5, "the echo answered itself");
    let r = send(&c, envoy.port, "GET", "/other", &[], empty()).await;
    assert_eq!(r.status, 200);

    // A malformed stream straight to the gateway: a gRPC stream error is counted.
    let mut grpc =
        ExternalProcessorClient::connect(format!("http://127.0.0.1:{}", gateway.grpc_port))
            .await
            .expect("connect");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut inbound = grpc
        .process(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open stream")
        .into_inner();
    tx.send(ProcessingRequest::default()).await.expect("send");
    let err = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await
        .expect("answer")
        .expect_err("a message with no phase is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    drop(tx);

    // Streams end when Envoy closes them, just after the response.
    let ours = metrics_when_idle(gateway.admin_port).await;
    let (status, theirs) = http_get(envoy.admin_port, "/stats/prometheus")
        .await
        .expect("envoy /stats/prometheus");
    assert_eq!(status, 200);
    let (our_families, our_samples) = exposition(&ours);
    let (envoy_families, envoy_samples) = exposition(&theirs);

    let mut missing = Vec::new();
    for name in &names {
        let ok = if name.starts_with("extproc_") {
            exported(name, &our_families, &our_samples)
        } else if name.starts_with("envoy_") {
            exported(name, &envoy_families, &envoy_samples)
        } else {
            false
        };
        if !ok {
            missing.push(name.clone());
        }
    }
    let envoy_ext_proc: Vec<&String> = envoy_families
        .keys()
        .filter(|n| n.contains("ext_proc"))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard metrics not exported: {missing:?}\nEnvoy's ext_proc families: {envoy_ext_proc:?}"
    );

    // The dashboard covers every metric the gateway exports (build info aside), and
    // Envoy's ext_proc stats beside them.
    let bases: BTreeSet<&str> = names
        .iter()
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
        })
        .collect();
    for family in our_families.keys() {
        if family != "extproc_build_info" {
            assert!(bases.contains(family.as_str()), "no panel shows {family}");
        }
    }
    assert!(
        our_families.len() >= 9,
        "gateway families: {:?}",
        our_families.keys()
    );
    let envoy_used: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("envoy_http_ext_proc_"))
        .collect();
    assert!(
        envoy_used.len() >= 5,
        "Envoy's ext_proc stats beside ours: {envoy_used:?}"
    );
}
