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

/// A gateway exporting traces to an in-process OTLP receiver, behind real Envoy.
struct Traced {
    receiver: Receiver,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    gateway: Gateway,
    _upstream: Upstream,
    envoy: Envoy,
}

impl Traced {
    async fn start(bin: &std::path::Path, env: &[(&str, &str)]) -> Traced {
        Self::start_with(bin, CONFIG, env).await
    }

    async fn start_with(bin: &std::path::Path, config: &str, env: &[(&str, &str)]) -> Traced {
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
        let mut vars = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "gateway-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ];
        vars.extend_from_slice(env);
        let gateway = Gateway::start_with_env(config, &vars).await;
        let upstream = Upstream::start().await;
        let envoy =
            Envoy::start(bin, &EnvoySpec::default(), gateway.grpc_port, upstream.port).await;
        Traced {
            receiver,
            server,
            gateway,
            _upstream: upstream,
            envoy,
        }
    }

    /// Spans received so far of one trace (hex id).
    fn spans_of(&self, trace_id: &str) -> Vec<Span> {
        self.receiver
            .spans
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .cloned()
            .collect()
    }

    /// Waits for the stream span of a trace (exported when the stream ends) and at
    /// least `at_least` spans of it in all.
    async fn wait_for(&self, trace_id: &str, at_least: usize) -> Vec<Span> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans_of(trace_id);
            if spans.iter().any(|s| s.name == "ext_proc stream") && spans.len() >= at_least {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "spans not received; got {:?}\n{}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
                self.gateway.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn post(&self, path: &str, traceparent: Option<&str>) -> u16 {
        let headers: Vec<(&str, &str)> = traceparent
            .map(|t| vec![("traceparent", t), ("tracestate", "vendor=1")])
            .unwrap_or_default();
        send(
            &client(),
            self.envoy.port,
            "POST",
            path,
            &headers,
            full("body"),
        )
        .await
        .status
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_the_requests_trace_as_stream_phase_processor_tree() {
    let Some(bin) = envoy_bin() else { return };
    let traced = Traced::start(&bin, &[("EXTPROC_TRACE_PROCESSORS", "true")]).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    assert_eq!(traced.post("/api/traced", Some(&traceparent)).await, 200);
    let spans = traced.wait_for(trace_id, 8).await;
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
    traced.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_spans_are_opt_in_and_an_unsampled_stream_exports_nothing() {
    let Some(bin) = envoy_bin() else { return };
    for processors in [false, true] {
        // The default sampler: a stream under an unsampled parent is left out, while a
        // span with no parent would be sampled (so a message or processor span
        // wrongly started without its stream's would show as a trace of its own).
        let env: &[(&str, &str)] = if processors {
            &[("EXTPROC_TRACE_PROCESSORS", "true")]
        } else {
            &[]
        };
        let traced = Traced::start(&bin, env).await;
        let first = "5bf92f3577b34da6a3ce929d0e0e4736";
        let unsampled = "7bf92f3577b34da6a3ce929d0e0e4736";
        let last = "6bf92f3577b34da6a3ce929d0e0e4736";
        for (trace, flags) in [(first, "01"), (unsampled, "00"), (last, "01")] {
            let parent = format!("00-{trace}-00f067aa0ba902b7-{flags}");
            assert_eq!(traced.post("/api/a", Some(&parent)).await, 200);
        }
        let spans = traced.wait_for(first, 4).await;
        traced.wait_for(last, 4).await;
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names.iter().filter(|n| **n == "ext_proc stream").count(),
            1,
            "{names:?}"
        );
        assert!(names.contains(&"phase request_body"), "{names:?}");
        assert_eq!(
            names.iter().any(|n| n.starts_with("processor ")),
            processors,
            "processor spans with EXTPROC_TRACE_PROCESSORS {processors}: {names:?}"
        );
        // Spans are exported in the order they end: whatever the stream in between
        // gave has arrived by now, and there is none of it.
        let all = traced.receiver.spans.lock().expect("lock").clone();
        let traces: std::collections::BTreeSet<String> =
            all.iter().map(|s| hex(&s.trace_id)).collect();
        assert_eq!(
            traces,
            [first.to_string(), last.to_string()].into_iter().collect(),
            "spans outside the sampled traces: {:?}",
            all.iter()
                .map(|s| (hex(&s.trace_id), &s.name))
                .collect::<Vec<_>>()
        );
        traced.server.abort();
    }
}

/// With `--log-format json`, a stream's access line carries the trace and span ids of
/// its exported stream span (under the request's traceparent), so a log line leads to
/// its trace; a stream the sampler leaves out claims no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_log_line_names_the_trace_and_span_of_its_stream() {
    let bin = envoy_bin().expect("envoy");
    let config = format!("access_log: true\n{CONFIG}");
    let traced = Traced::start_with(
        &bin,
        &config,
        &[
            ("EXTPROC_LOG_FORMAT", "json"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ],
    )
    .await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let sampled = format!("00-{trace_id}-b7ad6b7169203331-01");
    assert_eq!(traced.post("/api/logged", Some(&sampled)).await, 200);
    let spans = traced.wait_for(trace_id, 1).await;
    let stream = spans
        .iter()
        .find(|s| s.name == "ext_proc stream")
        .expect("stream span");
    // The parent says "not sampled": that stream is neither exported nor claimed.
    let unsampled = "00-11111111111111111111111111111111-2222222222222222-00";
    assert_eq!(traced.post("/api/quiet", Some(unsampled)).await, 200);

    let deadline = Instant::now() + Duration::from_secs(10);
    let access = loop {
        let lines: Vec<serde_json::Value> = traced
            .gateway
            .proc
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l: &serde_json::Value| l["target"] == "extproc_gateway::access")
            .collect();
        if lines.len() >= 2 {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            traced.gateway.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logged = &access[0];
    assert_eq!(logged["trace_id"], trace_id, "{logged}");
    assert_eq!(logged["span_id"], hex(&stream.span_id), "{logged}");
    assert_eq!(logged["fields"]["route"], "api", "{logged}");
    let quiet = &access[1];
    assert_eq!(quiet["fields"]["route"], "api");
    assert!(
        quiet.get("trace_id").is_none(),
        "an unsampled stream claims a trace: {quiet}"
    );
}
