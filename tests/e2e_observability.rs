//! Metrics and traces after real traffic through Envoy: the Prometheus exposition
//! carries per-route, per-phase and per-processor series; an in-process OTLP receiver
//! gets the stream -> phase -> processor span tree under the request's traceparent.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

const CONFIG: &str = r#"
routes:
  - name: api
    match: {path_prefix: /api}
    processors: [trivial, digest, echo]
  - name: rest
    processors: [trivial, timer]
"#;

/// Sample value of a series in the Prometheus text exposition.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_cover_routes_phases_processors_and_outcomes() {
    let Some(bin) = envoy_bin() else { return };
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(CONFIG).await;
    let envoy = Envoy::start(
        &bin,
        &EnvoySpec::default(),
        gateway.grpc_port,
        upstream.port,
    )
    .await;
    let c = client();
    for i in 0..10 {
        let r = send(&c, envoy.port, "POST", &format!("/api/{i}"), &[], full("b")).await;
        assert_eq!(r.status, 200);
    }
    for _ in 0..3 {
        let r = send(
            &c,
            envoy.port,
            "GET",
            "/api/e",
            &[("x-echo-only", "yes")],
            empty(),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    for _ in 0..5 {
        let r = send(&c, envoy.port, "GET", "/other", &[], empty()).await;
        assert_eq!(r.status, 200);
    }
    // Streams end when Envoy closes them, just after the response.
    let m = metrics_when_idle(gateway.admin_port).await;

    let count = |name: &str, labels: &[(&str, &str)]| sample(&m, name, labels).unwrap_or(-1.0);
    // Per route and phase: api saw request headers, buffered bodies and response headers.
    assert_eq!(
        count(
            "extproc_message_duration_seconds_count",
            &[("route", "api"), ("phase", "request_headers")]
        ),
        13.0
    );
    assert_eq!(
        count(
            "extproc_message_duration_seconds_count",
            &[("route", "api"), ("phase", "request_body")]
        ),
        10.0
    );
    assert_eq!(
        count(
            "extproc_message_duration_seconds_count",
            &[("route", "rest"), ("phase", "response_headers")]
        ),
        5.0
    );
    // Per processor: digest read 10 bodies; timer never ran on api.
    assert_eq!(
        count(
            "extproc_processor_duration_seconds_count",
            &[
                ("route", "api"),
                ("processor", "digest"),
                ("phase", "request_body")
            ]
        ),
        10.0
    );
    assert_eq!(
        count(
            "extproc_processor_duration_seconds_count",
            &[
                ("route", "rest"),
                ("processor", "timer"),
                ("phase", "request_headers")
            ]
        ),
        5.0
    );
    // Outcomes and immediate responses.
    assert_eq!(
        count(
            "extproc_streams_total",
            &[("route", "api"), ("outcome", "completed")]
        ),
        10.0
    );
    assert_eq!(
        count(
            "extproc_streams_total",
            &[("route", "api"), ("outcome", "immediate_response")]
        ),
        3.0
    );
    assert_eq!(
        count(
            "extproc_immediate_responses_total",
            &[("route", "api"), ("processor", "echo"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        count(
            "extproc_stream_duration_seconds_count",
            &[("route", "rest")]
        ),
        5.0
    );
    assert_eq!(count("extproc_active_streams", &[]), 0.0);
    assert_eq!(count("extproc_build_info", &[]), 1.0);
    // Buckets resolve tens of microseconds.
    assert!(m.contains("le=\"0.00001\"") && m.contains("le=\"0.000025\""));
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            Value::BoolValue(b) => Some(b.to_string()),
            _ => None,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_the_requests_trace_as_stream_phase_processor_tree() {
    let Some(bin) = envoy_bin() else { return };
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp_port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("http://127.0.0.1:{otlp_port}");
    let gateway = Gateway::start_with_env(
        CONFIG,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "gateway-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
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

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    let r = send(
        &client(),
        envoy.port,
        "POST",
        "/api/traced",
        &[("traceparent", &traceparent), ("tracestate", "vendor=1")],
        full("body"),
    )
    .await;
    assert_eq!(r.status, 200);

    // Wait for the stream span (exported when the stream ends) and its children.
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans: Vec<Span> = receiver
            .spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .cloned()
            .collect();
        if spans.iter().any(|s| s.name == "ext_proc stream") && spans.len() >= 8 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans not received; got {:?}\n{}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
            gateway.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let by_id: HashMap<String, &Span> = spans.iter().map(|s| (hex(&s.span_id), s)).collect();

    let stream = spans
        .iter()
        .find(|s| s.name == "ext_proc stream")
        .expect("stream span");
    assert_eq!(
        hex(&stream.parent_span_id),
        parent_id,
        "parent is the caller's span"
    );
    assert_eq!(attr(stream, "route").as_deref(), Some("api"));
    assert_eq!(attr(stream, "outcome").as_deref(), Some("completed"));

    let phases: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("phase "))
        .collect();
    let phase_names: Vec<String> = phases.iter().filter_map(|s| attr(s, "phase")).collect();
    for want in ["request_headers", "request_body", "response_headers"] {
        assert!(phase_names.iter().any(|p| p == want), "{phase_names:?}");
    }
    for p in &phases {
        assert_eq!(
            hex(&p.parent_span_id),
            hex(&stream.span_id),
            "phase under stream"
        );
    }

    let processors: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name.starts_with("processor "))
        .collect();
    let digest_body = processors
        .iter()
        .find(|s| {
            attr(s, "processor").as_deref() == Some("digest")
                && attr(s, "phase").as_deref() == Some("request_body")
        })
        .expect("digest span at request body");
    assert_eq!(attr(digest_body, "outcome").as_deref(), Some("continue"));
    for p in &processors {
        let parent = by_id
            .get(&hex(&p.parent_span_id))
            .unwrap_or_else(|| panic!("processor span {} has no parent", p.name));
        assert!(parent.name.starts_with("phase "), "processor under a phase");
        assert_eq!(attr(parent, "phase"), attr(p, "phase"));
    }
    let names: Vec<String> = processors
        .iter()
        .filter_map(|s| attr(s, "processor"))
        .collect();
    for want in ["trivial", "digest", "echo"] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }
    server.abort();
}
