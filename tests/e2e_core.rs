//! The core gateway through real Envoy: header mutations both ways, per-route chains
//! (by path, Envoy route name and gRPC metadata), mode_override, STREAMED / BUFFERED /
//! FULL_DUPLEX_STREAMED bodies, observability mode, immediate responses, concurrency,
//! and what Envoy's own ext_proc stats say about it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;

const GATEWAY: &str = r#"
server:
  max_message_bytes: 33554432
routes:
  - name: headers-only
    match: {path_prefix: /trivial}
    processors: [trivial]
  - name: by-envoy-route
    match: {route_name: envoy-echo}
    processors: [echo]
  - name: by-metadata
    match: {grpc_metadata: {x-chain: digest-only}}
    processors: [digest]
  - name: streamed
    match: {path_prefix: /streamed}
    processors: [trivial, {digest: {body_mode: streamed}}]
  - name: default
    processors: [trivial, timer, digest, echo]
"#;

fn spec() -> EnvoySpec {
    EnvoySpec {
        filters: vec![Filter::default()],
        routes: vec![
            EnvoyRoute {
                name: "envoy-echo",
                prefix: "/echo-route",
                metadata: vec![],
            },
            EnvoyRoute {
                name: "meta",
                prefix: "/meta",
                metadata: vec![("x-chain", "digest-only")],
            },
            EnvoyRoute {
                name: "default",
                prefix: "/",
                metadata: vec![],
            },
        ],
    }
}

struct Stack {
    envoy: Envoy,
    _gateway: Gateway,
    upstream: Upstream,
    client: HttpClient,
}

async fn stack(spec: EnvoySpec) -> Option<Stack> {
    let bin = envoy_bin()?;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(GATEWAY).await;
    let envoy = Envoy::start(&bin, &spec, gateway.grpc_port, upstream.port).await;
    Some(Stack {
        envoy,
        _gateway: gateway,
        upstream,
        client: client(),
    })
}

impl Stack {
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Body) -> Resp {
        send(&self.client, self.envoy.port, method, path, headers, body).await
    }

    async fn assert_clean(&self) {
        assert_eq!(self.envoy.ext_proc_stat("spurious_msgs_received").await, 0);
        assert_eq!(self.envoy.ext_proc_stat("streams_failed").await, 0);
        assert_eq!(
            self.envoy.ext_proc_stat("rejected_header_mutations").await,
            0
        );
        assert_eq!(self.envoy.ext_proc_stat("message_timeouts").await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_mutations_reach_upstream_and_client_and_mode_override_skips_bodies() {
    let Some(s) = stack(spec()).await else { return };
    let before = s.envoy.ext_proc_stat("stream_msgs_sent").await;
    let r = s
        .send(
            "POST",
            "/trivial/a",
            &[("x-request-id", "rid-1"), ("content-type", "text/plain")],
            full("a body the trivial chain never reads"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r);
    let echoed = r.echoed();
    assert_eq!(
        echoed.headers.get("x-extra-request-id").map(String::as_str),
        Some("rid-1")
    );
    assert_eq!(echoed.body, "a body the trivial chain never reads");
    assert_eq!(r.header("x-extra-request-id"), Some("rid-1"));
    assert_eq!(r.header("x-ext-procs-applied"), Some("trivial"));
    // Only request headers and response headers: mode_override turned the body off.
    let sent = s.envoy.ext_proc_stat("stream_msgs_sent").await - before;
    assert_eq!(
        sent, 2,
        "messages sent to the gateway for a headers-only chain"
    );
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_body_header_mutation_reaches_upstream() {
    let Some(s) = stack(spec()).await else { return };
    let before = s.envoy.ext_proc_stat("stream_msgs_sent").await;
    let body = "x".repeat(100_000);
    let r = s
        .send(
            "PUT",
            "/items/7?x=1",
            &[("x-tenant-id", "acme")],
            full(body.clone()),
        )
        .await;
    assert_eq!(r.status, 200);
    let want = digest("acme", "PUT", "/items/7?x=1", body.as_bytes());
    let echoed = r.echoed();
    assert_eq!(echoed.body.len(), body.len());
    assert_eq!(echoed.headers.get("x-request-digest"), Some(&want));
    assert_eq!(r.header("x-request-digest"), Some(want.as_str()));
    assert_eq!(
        r.header("x-ext-procs-applied"),
        Some("trivial,timer,digest,echo")
    );
    let started = r.header("x-request-started").expect("x-request-started");
    assert_eq!(
        echoed.headers.get("x-request-started").map(String::as_str),
        Some(started)
    );
    assert!(started.ends_with('Z') && started.len() == 27, "{started}");
    let ns: u64 = r
        .header("x-duration-ns")
        .expect("duration")
        .parse()
        .expect("integer");
    assert!(ns > 0);
    // Request headers, one buffered body message, response headers.
    let sent = s.envoy.ext_proc_stat("stream_msgs_sent").await - before;
    assert_eq!(sent, 3);
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_is_hashed_chunk_by_chunk() {
    let Some(s) = stack(spec()).await else { return };
    let before = s.envoy.ext_proc_stat("stream_msgs_sent").await;
    let chunks: Vec<Bytes> = (0..8u8)
        .map(|i| Bytes::from(vec![b'a' + i; 64 * 1024]))
        .collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let r = s
        .send(
            "POST",
            "/streamed/upload",
            &[],
            chunked(chunks, Duration::from_millis(30)),
        )
        .await;
    assert_eq!(r.status, 200);
    let echoed = r.echoed();
    assert_eq!(
        echoed.body.as_bytes(),
        &whole[..],
        "body intact through STREAMED mode"
    );
    let want = digest("unknown", "POST", "/streamed/upload", &whole);
    assert_eq!(r.header("x-request-digest"), Some(want.as_str()));
    // Streamed: headers left before the body was read, so no digest upstream.
    assert_eq!(echoed.headers.get("x-request-digest"), None);
    let sent = s.envoy.ext_proc_stat("stream_msgs_sent").await - before;
    assert!(
        sent > 3,
        "expected several body messages, got {sent} messages in all"
    );
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_select_chains_by_envoy_route_name_and_grpc_metadata() {
    let Some(s) = stack(spec()).await else { return };
    // Envoy route "envoy-echo" -> gateway route by-envoy-route -> echo only.
    let hits = s.upstream.hits();
    let r = s
        .send(
            "POST",
            "/echo-route/x",
            &[("x-echo-only", "Yes"), ("x-custom", "v")],
            full("echo me"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"echo me");
    assert_eq!(r.header("x-custom"), Some("v"));
    assert_eq!(r.header("x-ext-procs-applied"), Some("echo"));
    assert_eq!(s.upstream.hits(), hits, "the upstream must not be called");

    // Envoy route "meta" sends grpc_initial_metadata x-chain: digest-only.
    let r = s.send("GET", "/meta/y", &[], empty()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ext-procs-applied"), Some("digest"));
    assert_eq!(
        r.header("x-request-digest"),
        Some(digest("unknown", "GET", "/meta/y", b"").as_str())
    );
    assert_eq!(r.header("x-extra-request-id"), None);
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_response_reaches_client_without_upstream() {
    let Some(s) = stack(spec()).await else { return };
    let hits = s.upstream.hits();
    // No body: answered at request headers.
    let r = s
        .send(
            "GET",
            "/anything",
            &[("x-echo-only", "true"), ("x-a", "1")],
            empty(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("x-a"), Some("1"));
    // The chain stopped at echo, the last processor; every earlier one ran.
    assert_eq!(
        r.header("x-ext-procs-applied"),
        Some("trivial,timer,digest,echo")
    );
    // With a body: answered at the (buffered) request body.
    let r = s
        .send(
            "POST",
            "/anything",
            &[("x-echo-only", "t")],
            full("payload"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"payload");
    assert_eq!(s.upstream.hits(), hits);
    // Not truthy: passes through.
    let r = s
        .send("GET", "/anything", &[("x-echo-only", "TRUE")], empty())
        .await;
    assert_eq!(r.echoed().path, "/anything");
    assert_eq!(s.upstream.hits(), hits + 1);
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_all_succeed() {
    let Some(s) = stack(spec()).await else { return };
    let s = std::sync::Arc::new(s);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let path = format!("/c/{i}");
            let body = format!("body-{i}");
            let r = s
                .send("POST", &path, &[("x-tenant-id", "t")], full(body.clone()))
                .await;
            assert_eq!(r.status, 200, "request {i}");
            let want = digest("t", "POST", &path, body.as_bytes());
            assert_eq!(
                r.header("x-request-digest"),
                Some(want.as_str()),
                "request {i}"
            );
            assert_eq!(r.echoed().body, body, "request {i}");
        }));
    }
    for t in tasks {
        t.await.expect("request task");
    }
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_streamed_bodies_round_trip() {
    let spec = EnvoySpec {
        filters: vec![Filter {
            request_body_mode: "FULL_DUPLEX_STREAMED",
            request_trailer_mode: "SEND",
            ..Filter::default()
        }],
        routes: vec![EnvoyRoute {
            name: "default",
            prefix: "/",
            metadata: vec![],
        }],
    };
    let Some(s) = stack(spec).await else { return };
    let chunks: Vec<Bytes> = (0..6u8)
        .map(|i| Bytes::from(vec![b'k' + i; 100 * 1024]))
        .collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let r = s
        .send(
            "POST",
            "/duplex",
            &[],
            chunked(chunks, Duration::from_millis(20)),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let echoed = r.echoed();
    assert_eq!(echoed.body.len(), whole.len());
    assert_eq!(echoed.body.as_bytes(), &whole[..]);
    assert_eq!(
        r.header("x-request-digest"),
        Some(digest("unknown", "POST", "/duplex", &whole).as_str())
    );
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observability_mode_gets_no_answers_and_traffic_flows() {
    let spec = EnvoySpec {
        filters: vec![Filter {
            observability_mode: true,
            ..Filter::default()
        }],
        ..EnvoySpec::default()
    };
    let Some(s) = stack(spec).await else { return };
    for i in 0..5 {
        let r = s
            .send(
                "GET",
                &format!("/trivial/{i}"),
                &[("x-request-id", "obs")],
                empty(),
            )
            .await;
        assert_eq!(r.status, 200);
        // Nothing the gateway would have written is applied: it sent nothing back.
        assert_eq!(r.echoed().headers.get("x-extra-request-id"), None);
        assert_eq!(r.header("x-ext-procs-applied"), None);
    }
    assert!(s.envoy.ext_proc_stat("stream_msgs_sent").await >= 5);
    assert_eq!(s.envoy.ext_proc_stat("streams_failed").await, 0);
    assert_eq!(s.envoy.ext_proc_stat("spurious_msgs_received").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_without_request_headers_still_works() {
    let spec = EnvoySpec {
        filters: vec![Filter {
            request_header_mode: "SKIP",
            response_attributes: true,
            ..Filter::default()
        }],
        ..EnvoySpec::default()
    };
    let Some(s) = stack(spec).await else { return };
    let r = s
        .send(
            "GET",
            "/trivial/skip",
            &[("x-request-id", "rid-skip")],
            empty(),
        )
        .await;
    assert_eq!(r.status, 200);
    // The route was chosen from Envoy's request.path attribute (sent with the response
    // headers via response_attributes), and the request id from request.id.
    assert_eq!(r.header("x-ext-procs-applied"), Some("trivial"));
    assert_eq!(r.header("x-extra-request-id"), Some("rid-skip"));
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_envoy_yaml_validates() {
    let Some(bin) = envoy_bin() else { return };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(bin)
        .args(["--mode", "validate", "-c"])
        .arg(root.join("envoy.yaml"))
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(root.join("envoy.yaml")).expect("envoy.yaml");
    assert!(text.contains("allow_mode_override: true"));
    assert!(text.contains("envoy.filters.http.ext_proc"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_envoy_yaml_with_embedded_default_config_serves_traffic() {
    let Some(bin) = envoy_bin() else { return };
    let upstream = Upstream::start().await;
    // No config file: the embedded default, as the README's run command serves it.
    let gateway = Gateway::start_without_config().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("envoy.yaml")).expect("envoy.yaml");
    let config = text
        .replace("port_value: 10000", "port_value: 0")
        .replace("port_value: 9901", "port_value: 0")
        .replace(
            "port_value: 50051",
            &format!("port_value: {}", gateway.grpc_port),
        )
        .replace(
            "port_value: 8080",
            &format!("port_value: {}", upstream.port),
        )
        .replace("address: 0.0.0.0", "address: 127.0.0.1");
    let envoy = Envoy::start_ingress(&bin, config).await;
    let c = client();
    let r = send(
        &c,
        envoy.port,
        "POST",
        "/hello",
        &[("x-request-id", "r-42")],
        full("hi"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-ext-procs-applied"),
        Some("trivial,timer,digest,context_check,echo")
    );
    assert_eq!(r.header("x-extra-request-id"), Some("r-42"));
    let want = digest("unknown", "POST", "/hello", b"hi");
    assert_eq!(r.header("x-request-digest"), Some(want.as_str()));
    assert_eq!(r.echoed().headers.get("x-request-digest"), Some(&want));
    assert_eq!(envoy.ext_proc_stat("streams_failed").await, 0);
    assert_eq!(envoy.ext_proc_stat("spurious_msgs_received").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_partial_is_switched_to_streamed_for_a_whole_body_reader() {
    let spec = EnvoySpec {
        filters: vec![Filter {
            request_body_mode: "BUFFERED_PARTIAL",
            ..Filter::default()
        }],
        ..EnvoySpec::default()
    };
    let Some(s) = stack(spec).await else { return };
    let before = s.envoy.ext_proc_stat("stream_msgs_sent").await;
    let chunks: Vec<Bytes> = (0..4u8)
        .map(|i| Bytes::from(vec![b'p' + i; 16 * 1024]))
        .collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let r = s
        .send(
            "POST",
            "/streamed/partial",
            &[],
            chunked(chunks, Duration::from_millis(20)),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed().body.as_bytes(), &whole[..]);
    assert_eq!(
        r.header("x-request-digest"),
        Some(digest("unknown", "POST", "/streamed/partial", &whole).as_str())
    );
    // The gateway never asks BUFFERED where the filter says BUFFERED_PARTIAL (a body
    // over the limit would get 413): it asks STREAMED, so the body comes chunk by
    // chunk (more than headers + one body + response headers) and is hashed whole.
    let sent = s.envoy.ext_proc_stat("stream_msgs_sent").await - before;
    assert!(sent > 3, "{sent} messages: the body was not streamed");
    s.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_header_limits_gets_431_through_envoy() {
    let Some(bin) = envoy_bin() else { return };
    let upstream = Upstream::start().await;
    let gateway =
        Gateway::start("server: {max_headers: 30}\nroutes: [{name: r, processors: [trivial]}]\n")
            .await;
    let envoy = Envoy::start(
        &bin,
        &EnvoySpec::default(),
        gateway.grpc_port,
        upstream.port,
    )
    .await;
    let c = client();
    let names: Vec<String> = (0..40).map(|i| format!("x-many-{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let hits = upstream.hits();
    let r = send(&c, envoy.port, "GET", "/many", &many, empty()).await;
    assert_eq!(r.status, 431, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("request headers exceed"));
    assert_eq!(upstream.hits(), hits, "the upstream never saw it");
    let r = send(&c, envoy.port, "GET", "/few", &many[..5], empty()).await;
    assert_eq!(r.status, 200);
    assert_eq!(envoy.ext_proc_stat("streams_failed").await, 0);
    assert_eq!(envoy.ext_proc_stat("spurious_msgs_received").await, 0);
}
