//! The Kubernetes manifests under `deploy/kubernetes/`, checked offline: every
//! kustomization renders (kubectl's built-in kustomize) and every rendered object
//! validates strictly (core kinds against the Kubernetes schemas of PyPI's
//! kubernetes-validate, custom resources against the vendored CRD schemas); the
//! Deployment agrees with the gateway config it mounts; and each recipe's ext_proc
//! filter, translated as its controller translates it, passes `envoy --mode
//! validate` and `check-envoy` against the recipe's gateway config, then selects the
//! recipe's chain for real traffic through real Envoy.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use extproc_gateway::config::GatewayConfig;
use serde_json::{json, Value};

const RECIPES: [&str; 3] = ["istio", "kgateway", "envoy-gateway"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `kubectl kustomize deploy/kubernetes/<dir>`.
fn render(dir: &str) -> String {
    let (kubectl, _) = kube_tools();
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(root().join("deploy/kubernetes").join(dir))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 manifests")
}

/// The objects of a rendered stream (kustomize separates them with `---` lines).
fn objects(stream: &str) -> Vec<Value> {
    stream
        .split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_saphyr::from_str(d).unwrap_or_else(|e| panic!("not YAML: {e}\n{d}")))
        .collect()
}

/// Runs the validator on `stream`: whether it passed, and what it printed.
fn validate(stream: &str) -> (bool, String) {
    let (_, python_path) = kube_tools();
    let mut child = Command::new("python3")
        .arg(root().join("deploy/validate/validate-manifests.py"))
        .arg("-")
        .env("PYTHONPATH", python_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run validate-manifests.py");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(stream.as_bytes()).expect("write manifests");
    }
    let out = child.wait_with_output().expect("validator output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn to_stream(objs: &[Value]) -> String {
    objs.iter()
        .map(|o| serde_saphyr::to_string(o).expect("serialize object"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn find_mut<'a>(objs: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    objs.iter_mut()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn kinds(objs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = objs
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or("?"),
                o["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    k.sort();
    k
}

/// The gateway config a rendered ConfigMap carries, loaded as the gateway loads it.
fn mounted_config(objs: &[Value]) -> (String, GatewayConfig) {
    let text = find(objs, "ConfigMap", "extproc-gateway-config")["data"]["gateway.yaml"]
        .as_str()
        .expect("gateway.yaml in the ConfigMap")
        .to_string();
    let config = GatewayConfig::parse(&text, "gateway.yaml")
        .unwrap_or_else(|e| panic!("the mounted gateway.yaml does not load: {e}"));
    (text, config)
}

fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Kubernetes memory quantity in bytes (`Mi`, `Gi`, plain).
fn quantity_bytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("quantity {q}"));
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unit {other} in {q}"),
    }
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
}

#[test]
fn every_kustomization_renders_and_validates_offline() {
    let base_kinds = [
        "ConfigMap/extproc-gateway-config",
        "Deployment/extproc-gateway",
        "HorizontalPodAutoscaler/extproc-gateway",
        "Namespace/extproc",
        "NetworkPolicy/extproc-gateway",
        "PodDisruptionBudget/extproc-gateway",
        "Service/extproc-gateway",
        "Service/extproc-gateway-admin",
        "Service/extproc-gateway-headless",
        "ServiceAccount/extproc-gateway",
        "ServiceMonitor/extproc-gateway",
    ];
    let extra: [(&str, &[&str]); 4] = [
        ("base", &[]),
        (
            "istio",
            &[
                "DestinationRule/extproc-gateway",
                "EnvoyFilter/extproc-gateway-httpbin",
            ],
        ),
        (
            "kgateway",
            &[
                "BackendConfigPolicy/extproc-gateway",
                "GatewayExtension/extproc-gateway",
                "HTTPRoute/backend",
                "ReferenceGrant/extproc-gateway-from-kgateway",
                "TrafficPolicy/extproc-gateway",
            ],
        ),
        (
            "envoy-gateway",
            &[
                "EnvoyExtensionPolicy/extproc-gateway",
                "HTTPRoute/backend",
                "ReferenceGrant/extproc-gateway-from-envoy-gateway",
            ],
        ),
    ];
    for (dir, own) in extra {
        let stream = render(dir);
        let objs = objects(&stream);
        let mut want: Vec<String> = base_kinds
            .iter()
            .chain(own)
            .map(|s| s.to_string())
            .collect();
        want.sort();
        assert_eq!(kinds(&objs), want, "{dir} renders other objects");
        let (ok, report) = validate(&stream);
        assert!(ok, "{dir} does not validate:\n{report}");
        assert!(
            report.contains(&format!("{} objects, 0 failed", want.len())),
            "{dir}: {report}"
        );
    }
}

#[test]
fn the_validator_refuses_what_the_api_server_would() {
    type Break = fn(&mut [Value]);
    let cases: [(&str, &str, Break); 6] = [
        ("base", "Deployment extproc/extproc-gateway", |o| {
            find_mut(o, "Deployment", "extproc-gateway")["spec"]["template"]["spec"]
                ["containers"][0]["readinessProbe"]["periodSecond"] = json!(2);
        }),
        ("base", "ServiceMonitor extproc/extproc-gateway", |o| {
            find_mut(o, "ServiceMonitor", "extproc-gateway")["spec"]["endpoints"][0]
                ["scrapeTimout"] = json!("10s");
        }),
        ("base", "Service extproc/extproc-gateway", |o| {
            find_mut(o, "Service", "extproc-gateway")["spec"]["ports"][0]["port"] = json!("grpc");
        }),
        (
            "kgateway",
            "GatewayExtension default/extproc-gateway",
            |o| {
                find_mut(o, "GatewayExtension", "extproc-gateway")["spec"]["extProc"]
                    ["processingMode"]["requestBodyMode"] = json!("BUFERED");
            },
        ),
        (
            "envoy-gateway",
            "EnvoyExtensionPolicy default/extproc-gateway",
            |o| {
                find_mut(o, "EnvoyExtensionPolicy", "extproc-gateway")["spec"]["extProc"][0]
                    ["processingMode"]["allowModeOverrides"] = json!(true);
            },
        ),
        ("istio", "Gizmo default/x", |o| {
            o[0] = json!({"apiVersion": "example.com/v1", "kind": "Gizmo", "metadata": {"name": "x", "namespace": "default"}});
        }),
    ];
    for (dir, culprit, break_it) in cases {
        let mut objs = objects(&render(dir));
        break_it(&mut objs);
        let (ok, report) = validate(&to_stream(&objs));
        assert!(
            !ok,
            "{dir}: the validator passed a broken {culprit}:\n{report}"
        );
        let failed: Vec<&str> = report.lines().filter(|l| l.starts_with("FAIL")).collect();
        assert_eq!(failed.len(), 1, "{dir}: {report}");
        assert!(failed[0].contains(culprit), "{dir}: {report}");
    }
}

/// The Deployment, Services, probes, policies and budgets of every kustomization
/// agree with each other and with the gateway config they mount.
#[test]
fn the_deployment_agrees_with_the_config_it_mounts() {
    for dir in std::iter::once("base").chain(RECIPES) {
        let objs = objects(&render(dir));
        let (_, config) = mounted_config(&objs);
        let server = &config.server;
        let deploy = find(&objs, "Deployment", "extproc-gateway");
        let pod = &deploy["spec"]["template"]["spec"];
        let pod_labels = &deploy["spec"]["template"]["metadata"]["labels"];
        let container = &pod["containers"][0];
        let ctx = format!("{dir}:");

        // Drain: the kubelet's SIGKILL comes after drain_delay + shutdown_grace.
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace period");
        assert!(
            grace >= secs(server.drain_delay) + secs(server.shutdown_grace) + 5,
            "{ctx} terminationGracePeriodSeconds {grace} does not cover drain_delay + shutdown_grace"
        );
        assert!(
            !server.config_reload_interval.is_zero(),
            "{ctx} ConfigMap edits would need a signal"
        );

        // Hardening, and the Dockerfile's user.
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{ctx}");
        assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{ctx}");
        assert!(std::fs::read_to_string(root().join("Dockerfile"))
            .unwrap()
            .contains("USER 10001:10001"));
        let sc = &container["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{ctx}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{ctx}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{ctx}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{ctx}");

        // The config file is where --config says, mounted whole (no subPath, so the
        // kubelet updates it in place).
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let at = args
            .iter()
            .position(|a| *a == "--config")
            .expect("--config");
        let file = Path::new(args[at + 1]);
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "config")
            .expect("config mount");
        assert_eq!(
            Path::new(mount["mountPath"].as_str().unwrap()),
            file.parent().unwrap(),
            "{ctx}"
        );
        assert!(
            mount.get("subPath").is_none(),
            "{ctx} subPath mounts are never updated"
        );
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap();
        assert_eq!(
            volume["configMap"]["name"], "extproc-gateway-config",
            "{ctx}"
        );
        assert_eq!(file.file_name().unwrap(), "gateway.yaml", "{ctx}");

        // Ports: the container's are the config's; admin is off loopback for probes.
        let ports = container["ports"].as_array().unwrap();
        let port = |name: &str| {
            ports
                .iter()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("{ctx} no port {name}"))
        };
        assert_eq!(
            port("grpc"),
            port_of(&server.grpc_addr.to_string()),
            "{ctx}"
        );
        assert_eq!(port("admin"), u64::from(server.admin_addr.port()), "{ctx}");
        assert!(
            server.admin_addr.ip().is_unspecified(),
            "{ctx} probes cannot reach a loopback admin"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"],
            json!({"path": "/readyz", "port": "admin"}),
            "{ctx}"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"],
            json!({"path": "/healthz", "port": "admin"}),
            "{ctx}"
        );

        // Memory: the limit holds max_streams held streams (14 KiB each, BENCHMARKS.md),
        // the process (15 MiB) and the body budget.
        let limits = &container["resources"]["limits"];
        let need =
            server.max_streams as u64 * 14 * 1024 + (15 << 20) + server.max_buffered_bytes as u64;
        let limit = quantity_bytes(limits["memory"].as_str().expect("memory limit"));
        assert!(
            limit >= need,
            "{ctx} memory limit {limit} < {need} the config can hold"
        );
        assert!(
            container["resources"]["requests"]["cpu"].is_string(),
            "{ctx} the HPA needs a CPU request"
        );

        // Services select the pods; gRPC speaks h2c; the headless one is headless.
        for name in [
            "extproc-gateway",
            "extproc-gateway-headless",
            "extproc-gateway-admin",
        ] {
            let svc = find(&objs, "Service", name);
            assert!(
                labels_match(&svc["spec"]["selector"], pod_labels),
                "{ctx} {name} selects no pod"
            );
            for p in svc["spec"]["ports"].as_array().unwrap() {
                let target = p["targetPort"].as_str().expect("named targetPort");
                port(target);
                if target == "grpc" {
                    assert_eq!(p["appProtocol"], "kubernetes.io/h2c", "{ctx} {name}");
                }
            }
        }
        assert_eq!(
            find(&objs, "Service", "extproc-gateway-headless")["spec"]["clusterIP"],
            "None",
            "{ctx}"
        );

        // The HPA scales this Deployment on CPU, never below two; the PDB and the
        // NetworkPolicy select its pods, on ports it has.
        let hpa = &find(&objs, "HorizontalPodAutoscaler", "extproc-gateway")["spec"];
        assert_eq!(hpa["scaleTargetRef"]["name"], "extproc-gateway", "{ctx}");
        assert_eq!(hpa["metrics"][0]["resource"]["name"], "cpu", "{ctx}");
        assert!(hpa["minReplicas"].as_u64() >= Some(2), "{ctx}");
        let pdb = &find(&objs, "PodDisruptionBudget", "extproc-gateway")["spec"];
        assert!(
            labels_match(&pdb["selector"]["matchLabels"], pod_labels),
            "{ctx}"
        );
        let np = &find(&objs, "NetworkPolicy", "extproc-gateway")["spec"];
        assert!(
            labels_match(&np["podSelector"]["matchLabels"], pod_labels),
            "{ctx}"
        );
        let rules = np["ingress"].as_array().unwrap();
        let allowed: Vec<&str> = rules
            .iter()
            .flat_map(|r| r["ports"].as_array().unwrap())
            .filter_map(|p| p["port"].as_str())
            .collect();
        assert_eq!(allowed, ["grpc", "admin"], "{ctx}");
        assert!(
            rules
                .iter()
                .all(|r| !r["from"].as_array().unwrap().is_empty()),
            "{ctx} a rule open to all"
        );

        // Prometheus scrapes the admin Service's port.
        let sm = &find(&objs, "ServiceMonitor", "extproc-gateway")["spec"];
        let admin = find(&objs, "Service", "extproc-gateway-admin");
        assert!(
            labels_match(&sm["selector"]["matchLabels"], &admin["metadata"]["labels"]),
            "{ctx}"
        );
        assert_eq!(
            sm["endpoints"][0]["port"], admin["spec"]["ports"][0]["name"],
            "{ctx}"
        );
        assert_eq!(sm["endpoints"][0]["path"], "/metrics", "{ctx}");
    }
}

// ---- each recipe's filter, as its controller builds it, through real Envoy

/// What a recipe makes Envoy do: its ext_proc filter and the gateway cluster's name and
/// settings (everything but the endpoint), as the recipe's controller translates its
/// resources.
struct Translated {
    filter: Value,
    cluster: Value,
    /// Envoy's route name for the app (Envoy Gateway's naming; others use any).
    route_name: &'static str,
}

/// A Kubernetes duration (`1s`, `250ms`) as Envoy's JSON duration (seconds, `0.250s`).
fn duration(v: &Value) -> Value {
    let text = v.as_str().expect("duration");
    let d = humantime::parse_duration(text).unwrap_or_else(|e| panic!("duration {text}: {e}"));
    json!(format!("{}.{:09}s", d.as_secs(), d.subsec_nanos()))
}

fn http2_cluster(name: &str) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        }
    })
}

fn grpc_health_check(
    service: &Value,
    interval: &Value,
    timeout: &Value,
    unhealthy: &Value,
    healthy: &Value,
) -> Value {
    json!([{
        "timeout": duration(timeout),
        "interval": duration(interval),
        "unhealthy_threshold": unhealthy,
        "healthy_threshold": healthy,
        "grpc_health_check": {"service_name": service}
    }])
}

/// Outlier detection on local-origin failures (a refused connection ejects at once),
/// from Istio's and Envoy Gateway's fields, which share their names.
fn local_origin_outlier_detection(od: &Value) -> Value {
    json!({
        "split_external_local_origin_errors": od["splitExternalLocalOriginErrors"],
        "consecutive_local_origin_failure": od["consecutiveLocalOriginFailures"],
        "interval": duration(&od["interval"]),
        "base_ejection_time": duration(&od["baseEjectionTime"]),
        "max_ejection_percent": od["maxEjectionPercent"]
    })
}

/// Istio: the EnvoyFilter's patch value is the filter, verbatim; the cluster is the
/// Service's outbound cluster, tuned by the DestinationRule.
fn istio(objs: &[Value]) -> Translated {
    let ef = find(objs, "EnvoyFilter", "extproc-gateway-httpbin");
    let patch = &ef["spec"]["configPatches"][0];
    assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND");
    assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
    assert_eq!(
        patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
        "envoy.filters.http.router"
    );
    let filter = patch["patch"]["value"].clone();
    let cluster_name = filter["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
        .as_str()
        .expect("cluster_name")
        .to_string();
    // The Service and port the EnvoyFilter names are the ones rendered.
    let svc = find(objs, "Service", "extproc-gateway");
    assert_eq!(
        cluster_name,
        format!(
            "outbound|{}||extproc-gateway.{}.svc.cluster.local",
            svc["spec"]["ports"][0]["port"],
            svc["metadata"]["namespace"].as_str().unwrap()
        )
    );
    let dr = &find(objs, "DestinationRule", "extproc-gateway")["spec"];
    assert_eq!(dr["host"], "extproc-gateway.extproc.svc.cluster.local");
    let tp = &dr["trafficPolicy"];
    let od = &tp["outlierDetection"];
    let mut cluster = http2_cluster(&cluster_name);
    cluster["connect_timeout"] = duration(&tp["connectionPool"]["tcp"]["connectTimeout"]);
    cluster["lb_policy"] = tp["loadBalancer"]["simple"].clone();
    cluster["circuit_breakers"] = json!({"thresholds": [{
        "max_requests": tp["connectionPool"]["http"]["http2MaxRequests"],
        "max_pending_requests": tp["connectionPool"]["http"]["http2MaxRequests"]
    }]});
    cluster["outlier_detection"] = local_origin_outlier_detection(od);
    Translated {
        filter,
        cluster,
        route_name: "inbound|http|80",
    }
}

/// kgateway: GatewayExtension.extProc becomes the filter field by field
/// (processingMode's six modes as Envoy's, allowProcessingModeOverride as
/// allow_mode_override, failOpen as failure_mode_allow); the BackendConfigPolicy tunes
/// the Service's cluster.
fn kgateway(objs: &[Value]) -> Translated {
    let ext = &find(objs, "GatewayExtension", "extproc-gateway")["spec"]["extProc"];
    let tp = &find(objs, "TrafficPolicy", "extproc-gateway")["spec"];
    assert_eq!(tp["extProc"]["extensionRef"]["name"], "extproc-gateway");
    assert_eq!(tp["targetRefs"][0]["name"], "backend");
    let backend = &ext["grpcService"]["backendRef"];
    let svc = find(objs, "Service", backend["name"].as_str().unwrap());
    assert_eq!(backend["namespace"], svc["metadata"]["namespace"]);
    assert_eq!(backend["port"], svc["spec"]["ports"][0]["port"]);
    let mode = &ext["processingMode"];
    let snake = |k: &str| {
        k.chars().fold(String::new(), |mut s, c| {
            if c.is_ascii_uppercase() {
                s.push('_');
                s.push(c.to_ascii_lowercase());
            } else {
                s.push(c);
            }
            s
        })
    };
    let processing_mode: serde_json::Map<String, Value> = mode
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (snake(k), v.clone()))
        .collect();
    let filter = json!({
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": "extproc_gateway"},
                "timeout": duration(&ext["grpcService"]["requestTimeout"])
            },
            "failure_mode_allow": ext["failOpen"],
            "message_timeout": duration(&ext["messageTimeout"]),
            "max_message_timeout": duration(&ext["maxMessageTimeout"]),
            "allow_mode_override": ext["allowProcessingModeOverride"],
            "processing_mode": processing_mode
        }
    });
    let bcp = &find(objs, "BackendConfigPolicy", "extproc-gateway")["spec"];
    assert_eq!(bcp["targetRefs"][0]["name"], svc["metadata"]["name"]);
    let hc = &bcp["healthCheck"];
    let od = &bcp["outlierDetection"];
    let cb = &bcp["circuitBreakers"];
    let mut cluster = http2_cluster("extproc_gateway");
    assert!(bcp["loadBalancer"].get("leastRequest").is_some());
    cluster["lb_policy"] = json!("LEAST_REQUEST");
    cluster["connect_timeout"] = duration(&bcp["connectTimeout"]);
    cluster["health_checks"] = grpc_health_check(
        &hc["grpc"]["serviceName"],
        &hc["interval"],
        &hc["timeout"],
        &hc["unhealthyThreshold"],
        &hc["healthyThreshold"],
    );
    cluster["outlier_detection"] = json!({
        "consecutive_5xx": od["consecutive5xx"],
        "interval": duration(&od["interval"]),
        "base_ejection_time": duration(&od["baseEjectionTime"]),
        "max_ejection_percent": od["maxEjectionPercent"]
    });
    cluster["circuit_breakers"] = json!({"thresholds": [{
        "max_requests": cb["maxRequests"],
        "max_pending_requests": cb["maxPendingRequests"],
        "max_connections": cb["maxConnections"]
    }]});
    Translated {
        filter,
        cluster,
        route_name: "backend",
    }
}

/// Envoy Gateway: as its xDS translator (internal/xds/translator/extproc.go) builds
/// the filter: every mode SKIP/NONE unless asked, `request`/`response` present sends
/// their headers, `body` sets the body mode, attributes, failOpen, messageTimeout,
/// allowModeOverride; the gRPC timeout is its fixed 10 s. backendSettings tune the
/// cluster.
fn envoy_gateway(objs: &[Value]) -> Translated {
    let policy = &find(objs, "EnvoyExtensionPolicy", "extproc-gateway")["spec"];
    assert_eq!(policy["targetRefs"][0]["name"], "backend");
    let ext = &policy["extProc"][0];
    let backend = &ext["backendRefs"][0];
    let svc = find(objs, "Service", backend["name"].as_str().unwrap());
    assert_eq!(backend["namespace"], svc["metadata"]["namespace"]);
    assert_eq!(backend["port"], svc["spec"]["ports"][0]["port"]);
    let pm = &ext["processingMode"];
    let body = |v: &Value| match v.as_str() {
        None => "NONE",
        Some("Streamed") => "STREAMED",
        Some("Buffered") => "BUFFERED",
        Some("BufferedPartial") => "BUFFERED_PARTIAL",
        Some("FullDuplexStreamed") => "FULL_DUPLEX_STREAMED",
        Some(other) => panic!("body mode {other}"),
    };
    let sends = |v: &Value| if v.is_object() { "SEND" } else { "SKIP" };
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "extproc_gateway"}, "timeout": "10s"},
        "processing_mode": {
            "request_header_mode": sends(&pm["request"]),
            "response_header_mode": sends(&pm["response"]),
            "request_body_mode": body(&pm["request"]["body"]),
            "response_body_mode": body(&pm["response"]["body"]),
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP"
        },
        "failure_mode_allow": ext["failOpen"],
        "message_timeout": duration(&ext["messageTimeout"]),
        "allow_mode_override": pm["allowModeOverride"]
    });
    if let Some(a) = pm["request"].get("attributes") {
        config["request_attributes"] = a.clone();
    }
    // backendSettings.retry becomes the gRPC service's retry policy
    // (buildNonRouteRetryPolicy): triggers joined as retry_on, the back-off, the count.
    let retry = &ext["backendSettings"]["retry"];
    let triggers: Vec<&str> = retry["retryOn"]["triggers"]
        .as_array()
        .expect("retry triggers")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let back_off = &retry["perRetry"]["backOff"];
    config["grpc_service"]["retry_policy"] = json!({
        "retry_on": triggers.join(","),
        "num_retries": retry["numRetries"],
        "retry_back_off": {
            "base_interval": duration(&back_off["baseInterval"]),
            "max_interval": duration(&back_off["maxInterval"])
        }
    });
    let filter = json!({"name": "envoy.filters.http.ext_proc", "typed_config": config});
    let bs = &ext["backendSettings"];
    let active = &bs["healthCheck"]["active"];
    let passive = &bs["healthCheck"]["passive"];
    let cb = &bs["circuitBreaker"];
    assert_eq!(bs["loadBalancer"]["type"], "LeastRequest");
    assert_eq!(active["type"], "GRPC");
    let mut cluster = http2_cluster("extproc_gateway");
    cluster["lb_policy"] = json!("LEAST_REQUEST");
    cluster["connect_timeout"] = duration(&bs["timeout"]["tcp"]["connectTimeout"]);
    cluster["health_checks"] = grpc_health_check(
        &active["grpc"]["service"],
        &active["interval"],
        &active["timeout"],
        &active["unhealthyThreshold"],
        &active["healthyThreshold"],
    );
    cluster["outlier_detection"] = local_origin_outlier_detection(passive);
    cluster["circuit_breakers"] = json!({"thresholds": [{
        "max_requests": cb["maxParallelRequests"],
        "max_pending_requests": cb["maxPendingRequests"],
        "max_connections": cb["maxConnections"]
    }]});
    // Envoy Gateway's route name for rule 0, match 0 of HTTPRoute default/backend on
    // its first hostname (internal/gatewayapi: irRouteName plus the host, dots as
    // underscores).
    let route = find(objs, "HTTPRoute", "backend");
    let host = route["spec"]["hostnames"][0]
        .as_str()
        .unwrap()
        .replace('.', "_");
    assert_eq!(host, "www_example_com");
    Translated {
        filter,
        cluster,
        route_name: "httproute/default/backend/rule/0/match/0/www_example_com",
    }
}

/// A full Envoy bootstrap: listener `ingress` on a free port with the recipe's filter
/// before the router, one route named `route_name` to the upstream, the recipe's
/// gateway cluster at `gateway`.
fn bootstrap(t: &Translated, gateway: u16, upstream: u16) -> String {
    let mut cluster = t.cluster.clone();
    let name = cluster["name"].clone();
    cluster["load_assignment"] = json!({
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": gateway}}}}]}]
    });
    let config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "normalize_path": true,
                        "merge_slashes": true,
                        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
                        "route_config": {"name": "local", "virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"name": t.route_name, "match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "30s"}}]
                        }]},
                        "http_filters": [t.filter, {
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                        }]
                    }
                }]}]
            }],
            "clusters": [cluster, {
                "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}
            }]
        }
    });
    // JSON is YAML: Envoy and check-envoy read it as the .yaml it is written to.
    serde_json::to_string_pretty(&config).expect("bootstrap")
}

/// Runs `check-envoy` and `envoy --mode validate` on the bootstrap against the
/// recipe's gateway config: both must pass, check-envoy with no error.
fn check_offline(recipe: &str, bootstrap: &str, gateway_yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let envoy_file = dir.path().join("envoy.yaml");
    let gateway_file = dir.path().join("gateway.yaml");
    std::fs::write(&envoy_file, bootstrap).unwrap();
    std::fs::write(&gateway_file, gateway_yaml).unwrap();
    let envoy = envoy_bin().expect("envoy");
    let out = Command::new(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&envoy_file)
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "{recipe}: Envoy refuses the recipe's filter:\n{}{}\n{bootstrap}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_extproc-gateway"))
        .arg("check-envoy")
        .arg(&envoy_file)
        .arg("--config")
        .arg(&gateway_file)
        .output()
        .expect("run check-envoy");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{recipe}: check-envoy finds errors:\n{report}"
    );
    assert!(report.contains("0 errors"), "{recipe}: {report}");
}

/// The recipe's filter in front of real Envoy and the recipe's gateway config: the
/// request the recipe routes gets the chain; then, with what selects the chain changed
/// by `elsewhere` (which returns the Host to send), a request passes unchanged.
async fn run_recipe(
    recipe: &str,
    translate: fn(&[Value]) -> Translated,
    elsewhere: fn(&mut Translated) -> &'static str,
) {
    let objs = objects(&render(recipe));
    let (gateway_yaml, config) = mounted_config(&objs);
    let t = translate(&objs);
    check_offline(recipe, &bootstrap(&t, 50051, 8080), &gateway_yaml);

    let chain: Vec<String> = config.routes[0]
        .processors
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let gw = Gateway::start(&gateway_yaml).await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start_ingress(
        &envoy_bin().expect("envoy"),
        bootstrap(&t, gw.grpc_port, upstream.port),
    )
    .await;
    let client = client();

    let host = [("host", "www.example.com")];
    let resp = send(&client, envoy.port, "GET", "/get", &host, empty()).await;
    assert_eq!(
        resp.status,
        200,
        "{recipe}: {}\n{}",
        gw.proc.log_text(),
        envoy.proc.log_text()
    );
    let applied = resp
        .header("x-ext-procs-applied")
        .unwrap_or_default()
        .to_string();
    let get_chain: Vec<&str> = chain
        .iter()
        .map(String::as_str)
        .filter(|p| *p != "digest")
        .collect();
    assert_eq!(
        applied,
        get_chain.join(","),
        "{recipe}: GET ran another chain"
    );
    let resp = send(&client, envoy.port, "POST", "/post", &host, full("hello")).await;
    assert_eq!(resp.status, 200, "{recipe}");
    assert_eq!(
        resp.header("x-ext-procs-applied"),
        Some(chain.join(",").as_str()),
        "{recipe}: POST"
    );
    assert!(
        resp.header("x-request-digest").is_some(),
        "{recipe}: digest added no header"
    );
    assert_eq!(upstream.hits(), 2, "{recipe}");
    drop(envoy);

    let mut other = t;
    let host = elsewhere(&mut other);
    let envoy = Envoy::start_ingress(
        &envoy_bin().expect("envoy"),
        bootstrap(&other, gw.grpc_port, upstream.port),
    )
    .await;
    let resp = send(
        &client,
        envoy.port,
        "GET",
        "/get",
        &[("host", host)],
        empty(),
    )
    .await;
    assert_eq!(resp.status, 200, "{recipe}");
    assert_eq!(
        resp.header("x-ext-procs-applied"),
        None,
        "{recipe}: a chain ran for a request not selected"
    );
    assert_eq!(upstream.hits(), 3, "{recipe}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_istio_recipe_selects_its_chain_by_grpc_initial_metadata() {
    run_recipe("istio", istio, |t| {
        t.filter["typed_config"]["grpc_service"]["initial_metadata"][0]["value"] = json!("reviews");
        "www.example.com"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kgateway_recipe_selects_its_chain_by_authority() {
    run_recipe("kgateway", kgateway, |_| "shop.example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_envoy_gateway_recipe_selects_its_chain_by_route_name() {
    run_recipe("envoy-gateway", envoy_gateway, |t| {
        t.route_name = "httproute/default/shop/rule/0/match/0/www_example_com";
        "www.example.com"
    })
    .await;
}
