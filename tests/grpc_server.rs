//! The gateway binary spoken to directly over gRPC: bad input ends only its own stream
//! with a clear status, health is served on the ext_proc port, large messages fit, and
//! SIGTERM reports not ready, serves through the drain delay, then drains in-flight
//! streams.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use extproc_gateway::proto::ext_proc::external_processor_client::ExternalProcessorClient;
use extproc_gateway::proto::ext_proc::{
    processing_request::Request as Req, processing_response::Response as Resp, HttpBody,
    HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

const CONFIG: &str = r#"
routes:
  - name: digest
    match: {path_prefix: /digest}
    processors: [digest]
  - name: default
    processors: [trivial]
"#;

async fn connect(port: u16) -> ExternalProcessorClient<Channel> {
    ExternalProcessorClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect")
        .max_encoding_message_size(64 * 1024 * 1024)
        .max_decoding_message_size(64 * 1024 * 1024)
}

/// One open ext_proc stream.
struct Stream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: Streaming<ProcessingResponse>,
}

impl Stream {
    async fn open(client: &mut ExternalProcessorClient<Channel>) -> Stream {
        let (tx, rx) = mpsc::channel(8);
        let rx = client
            .process(ReceiverStream::new(rx))
            .await
            .expect("open stream")
            .into_inner();
        Stream { tx, rx }
    }

    async fn call(&mut self, req: Req) -> Result<Option<ProcessingResponse>, tonic::Status> {
        self.tx
            .send(ProcessingRequest {
                request: Some(req),
                ..Default::default()
            })
            .await
            .expect("send");
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("answer timed out")
    }
}

fn request_headers(path: &str, eos: bool) -> Req {
    Req::RequestHeaders(HttpHeaders {
        headers: Some(header_map(&[
            (":method", "POST"),
            (":path", path),
            ("x-request-id", "r1"),
        ])),
        end_of_stream: eos,
        ..Default::default()
    })
}

fn response_headers() -> Req {
    Req::ResponseHeaders(HttpHeaders {
        headers: Some(header_map(&[(":status", "200")])),
        end_of_stream: true,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_ends_only_its_own_stream_with_a_clear_status() {
    let gw = Gateway::start(CONFIG).await;
    let mut client = connect(gw.grpc_port).await;

    let mut good = Stream::open(&mut client).await;
    let first = good.call(request_headers("/x", true)).await.expect("ok");
    assert!(matches!(
        first.and_then(|r| r.response),
        Some(Resp::RequestHeaders(_))
    ));

    // Request headers twice: FAILED_PRECONDITION.
    let mut bad = Stream::open(&mut client).await;
    bad.call(request_headers("/x", false))
        .await
        .expect("first ok");
    let err = bad.call(request_headers("/x", false)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("request headers"),
        "{}",
        err.message()
    );

    // A message with no phase: INVALID_ARGUMENT.
    let mut empty = Stream::open(&mut client).await;
    empty
        .tx
        .send(ProcessingRequest::default())
        .await
        .expect("send");
    let err = empty.rx.message().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // End of stream sent twice is one of Envoy's benign quirks: answered with its own
    // kind. A body after the trailers is out of order: FAILED_PRECONDITION.
    let mut late = Stream::open(&mut client).await;
    late.call(request_headers("/digest", false))
        .await
        .expect("ok");
    let body = |eos| {
        Req::RequestBody(HttpBody {
            body: Bytes::from_static(b"abc"),
            end_of_stream: eos,
            ..Default::default()
        })
    };
    late.call(body(true)).await.expect("ok");
    let again = late
        .call(body(true))
        .await
        .expect("answered")
        .expect("answer");
    assert!(
        matches!(again.response, Some(Resp::RequestBody(_))),
        "{again:?}"
    );
    late.call(Req::RequestTrailers(HttpTrailers {
        trailers: Some(header_map(&[("x-t", "1")])),
    }))
    .await
    .expect("trailers after an ended body are answered");
    let err = late.call(body(false)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // The good stream, on the same connection, carries on.
    let answer = good
        .call(response_headers())
        .await
        .expect("ok")
        .expect("answer");
    let Some(Resp::ResponseHeaders(h)) = answer.response else {
        panic!("wrong kind: {answer:?}")
    };
    let set = h
        .response
        .and_then(|c| c.header_mutation)
        .expect("mutation");
    assert!(set.set_headers.iter().any(|o| o
        .header
        .as_ref()
        .is_some_and(|h| h.key == "x-extra-request-id" && &h.raw_value[..] == b"r1")));
    // And the process is still up.
    assert!(matches!(
        http_get(gw.admin_port, "/healthz").await,
        Some((200, _))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_gets_invalid_argument() {
    let gw = Gateway::start(CONFIG).await;
    let client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    // A gRPC frame whose payload is not a ProcessingRequest (field 2, wire type 7).
    let garbage = [0xffu8, 0xff, 0xff, 0x17, 0x00];
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(garbage.len() as u32).to_be_bytes());
    frame.extend_from_slice(&garbage);
    let req = hyper::Request::post(format!(
        "http://127.0.0.1:{}/envoy.service.ext_proc.v3.ExternalProcessor/Process",
        gw.grpc_port
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(full(frame))
    .expect("request");
    let resp = client.request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(
        trailers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("3"),
        "INVALID_ARGUMENT expected: {trailers:?}"
    );
    let message = trailers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(message.contains("malformed"), "{message}");
    assert!(matches!(
        http_get(gw.admin_port, "/healthz").await,
        Some((200, _))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_is_served_on_the_ext_proc_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let gw = Gateway::start(CONFIG).await;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", gw.grpc_port))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in ["", "envoy.service.ext_proc.v3.ExternalProcessor"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_bodies_far_above_four_mib_are_accepted_when_the_limit_is_raised() {
    // The default (4 MiB) fits Envoy's default buffer; an operator who raises Envoy's
    // buffer raises server.max_message_bytes with it.
    let gw = Gateway::start(&format!(
        "server: {{max_message_bytes: 33554432}}\n{CONFIG}"
    ))
    .await;
    let mut client = connect(gw.grpc_port).await;
    let mut s = Stream::open(&mut client).await;
    s.call(request_headers("/digest/big", false))
        .await
        .expect("ok");
    let body = Bytes::from(vec![7u8; 20 * 1024 * 1024]);
    let answer = s
        .call(Req::RequestBody(HttpBody {
            body: body.clone(),
            end_of_stream: true,
            ..Default::default()
        }))
        .await
        .expect("20 MiB body accepted")
        .expect("answer");
    let Some(Resp::RequestBody(b)) = answer.response else {
        panic!("wrong kind")
    };
    let digest_header = b
        .response
        .and_then(|c| c.header_mutation)
        .and_then(|m| m.set_headers.into_iter().find_map(|o| o.header))
        .expect("digest header");
    assert_eq!(digest_header.key, "x-request-digest");
    assert_eq!(
        std::str::from_utf8(&digest_header.raw_value).unwrap(),
        digest("unknown", "POST", "/digest/big", &body)
    );

    // Above the configured limit: a clear RESOURCE_EXHAUSTED / OUT_OF_RANGE status.
    let small = Gateway::start_with(CONFIG, &["--max-message-bytes", "1048576"]).await;
    let mut client = connect(small.grpc_port).await;
    let mut s = Stream::open(&mut client).await;
    s.call(request_headers("/digest/big", false))
        .await
        .expect("ok");
    let err = s
        .call(Req::RequestBody(HttpBody {
            body: Bytes::from(vec![1u8; 2 * 1024 * 1024]),
            end_of_stream: true,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
    assert!(matches!(
        http_get(small.admin_port, "/healthz").await,
        Some((200, _))
    ));
}

async fn health_status(port: u16) -> Option<i32> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "envoy.service.ext_proc.v3.ExternalProcessor".into(),
        })
        .await
        .ok()?;
    Some(reply.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_not_ready_serves_through_the_drain_delay_then_drains() {
    use tonic_health::pb::health_check_response::ServingStatus;
    const DELAY: Duration = Duration::from_secs(2);
    let mut gw =
        Gateway::start_with(CONFIG, &["--shutdown-grace", "20s", "--drain-delay", "2s"]).await;
    assert_eq!(
        health_status(gw.grpc_port).await,
        Some(ServingStatus::Serving as i32)
    );
    let mut client = connect(gw.grpc_port).await;
    let mut s = Stream::open(&mut client).await;
    s.call(request_headers("/x", true)).await.expect("ok");

    gw.signal("TERM");
    let signalled = Instant::now();
    // Not ready at once, through both the admin server and gRPC health.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some((503, _)) = http_get(gw.admin_port, "/readyz").await {
            break;
        }
        assert!(Instant::now() < deadline, "readyz never turned 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        health_status(gw.grpc_port).await,
        Some(ServingStatus::NotServing as i32)
    );
    // While the delay runs, a new connection and a new stream are still served:
    // whoever has not seen the health check yet loses nothing.
    assert!(
        signalled.elapsed() < DELAY,
        "the checks took the whole delay"
    );
    let mut late = connect(gw.grpc_port).await;
    let mut fresh = Stream::open(&mut late).await;
    let answer = fresh
        .call(request_headers("/late", true))
        .await
        .expect("served during the delay")
        .expect("answer");
    assert!(matches!(answer.response, Some(Resp::RequestHeaders(_))));
    // Then the listener closes (poll, it is asynchronous), not before the delay.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", gw.grpc_port))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "listener still accepting after the drain delay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        signalled.elapsed() >= DELAY,
        "the listener closed {:?} after the signal, before the drain delay",
        signalled.elapsed()
    );
    // Streams in flight, old and new, finish their exchanges.
    for stream in [&mut s, &mut fresh] {
        let answer = stream
            .call(response_headers())
            .await
            .expect("ok")
            .expect("answer");
        assert!(matches!(answer.response, Some(Resp::ResponseHeaders(_))));
    }
    drop((s, fresh, client, late));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = gw.proc.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_bounds_the_drain() {
    let mut gw = Gateway::start_with(
        CONFIG,
        &["--shutdown-grace", "300ms", "--drain-delay", "0s"],
    )
    .await;
    let mut client = connect(gw.grpc_port).await;
    let mut s = Stream::open(&mut client).await;
    s.call(request_headers("/x", true)).await.expect("ok");
    let start = Instant::now();
    gw.signal("TERM");
    // The stream is never finished; the grace period ends the process anyway.
    loop {
        if let Some(status) = gw.proc.child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "gateway outlived its grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(start.elapsed() >= Duration::from_millis(250));
}

// ---------------------------------------------------------------------------------
// Server limits: streams, idle streams, header lists
// ---------------------------------------------------------------------------------

async fn limits_metric(admin: u16, limit: &str) -> Option<f64> {
    let (_, m) = http_get(admin, "/metrics").await?;
    metric(
        &m,
        &format!(r#"extproc_limits_hit_total{{limit="{limit}"}}"#),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_and_a_closed_one_frees_its_place() {
    let gw =
        Gateway::start("server: {max_streams: 2}\nroutes: [{name: r, processors: [trivial]}]\n")
            .await;
    assert_eq!(limits_metric(gw.admin_port, "streams").await, Some(0.0));
    let mut client = connect(gw.grpc_port).await;
    let mut a = Stream::open(&mut client).await;
    a.call(request_headers("/a", true)).await.expect("a");
    let mut b = Stream::open(&mut client).await;
    b.call(request_headers("/b", true)).await.expect("b");
    let (_tx, rx) = mpsc::channel::<ProcessingRequest>(1);
    let err = client
        .process(ReceiverStream::new(rx))
        .await
        .expect_err("a third stream is refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("server.max_streams = 2"), "{err:?}");
    assert_eq!(limits_metric(gw.admin_port, "streams").await, Some(1.0));
    // Closing one frees its place (the gateway notices the stream's end).
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_tx, rx) = mpsc::channel::<ProcessingRequest>(1);
        match client.process(ReceiverStream::new(rx)).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                assert!(
                    Instant::now() < deadline,
                    "the closed stream's place never came back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_ended_with_deadline_exceeded() {
    let gw = Gateway::start(
        "server: {stream_idle_timeout: 300ms}\nroutes: [{name: r, processors: [trivial]}]\n",
    )
    .await;
    let mut client = connect(gw.grpc_port).await;
    let mut s = Stream::open(&mut client).await;
    s.call(request_headers("/a", false))
        .await
        .expect("answered");
    // Nothing more is sent: the gateway ends the stream on its own.
    let err = tokio::time::timeout(Duration::from_secs(10), s.rx.message())
        .await
        .expect("the stream ends within the deadline")
        .expect_err("ended with a status");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("stream_idle_timeout"), "{err:?}");
    assert_eq!(limits_metric(gw.admin_port, "idle").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_lists_over_the_limits_get_431_or_502() {
    let gw = Gateway::start(
        "server: {max_headers: 8, max_header_bytes: 1024}\nroutes: [{name: r, processors: [trivial]}]\n",
    )
    .await;
    let mut client = connect(gw.grpc_port).await;
    let headers = |n: usize, len: usize| -> Vec<(String, String)> {
        let mut h = vec![
            (":method".to_string(), "GET".to_string()),
            (":path".into(), "/".into()),
        ];
        h.extend((0..n).map(|i| (format!("x-{i}"), "v".repeat(len))));
        h
    };
    let as_req = |h: &[(String, String)]| {
        let pairs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Req::RequestHeaders(HttpHeaders {
            headers: Some(header_map(&pairs)),
            end_of_stream: true,
            ..Default::default()
        })
    };
    for (h, limit) in [
        (headers(10, 1), "header_count"),
        (headers(2, 800), "header_bytes"),
    ] {
        let mut s = Stream::open(&mut client).await;
        let answer = s
            .call(as_req(&h))
            .await
            .expect("answered")
            .expect("an answer");
        let Some(Resp::ImmediateResponse(i)) = answer.response else {
            panic!("not refused: {answer:?}")
        };
        assert_eq!(i.status.map(|s| s.code), Some(431), "{limit}");
        assert_eq!(
            limits_metric(gw.admin_port, limit).await,
            Some(1.0),
            "{limit}"
        );
    }
    // Within the limits, the response's headers are checked too: 502.
    let mut s = Stream::open(&mut client).await;
    s.call(request_headers("/ok", true)).await.expect("ok");
    let pairs: Vec<(String, String)> = (0..10).map(|i| (format!("x-{i}"), "v".into())).collect();
    let mut all: Vec<(&str, &str)> = vec![(":status", "200")];
    all.extend(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let answer = s
        .call(Req::ResponseHeaders(HttpHeaders {
            headers: Some(header_map(&all)),
            end_of_stream: true,
            ..Default::default()
        }))
        .await
        .expect("answered")
        .expect("an answer");
    let Some(Resp::ImmediateResponse(i)) = answer.response else {
        panic!("not refused: {answer:?}")
    };
    assert_eq!(i.status.map(|s| s.code), Some(502));
}

fn echo_headers(path: &str) -> Req {
    Req::RequestHeaders(HttpHeaders {
        headers: Some(header_map(&[
            (":method", "POST"),
            (":path", path),
            ("x-echo-only", "yes"),
        ])),
        end_of_stream: false,
        ..Default::default()
    })
}

fn chunk(n: usize, eos: bool) -> Req {
    Req::RequestBody(HttpBody {
        body: Bytes::from(vec![b'e'; n]),
        end_of_stream: eos,
        ..Default::default()
    })
}

fn immediate_status(answer: Option<ProcessingResponse>) -> Option<i32> {
    match answer?.response? {
        Resp::ImmediateResponse(i) => i.status.map(|s| s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_bodies_are_bounded_per_stream_and_across_streams() {
    let gw = Gateway::start(
        "server: {max_buffered_bytes: 100000, max_buffered_bytes_per_stream: 70000}\nroutes: [{name: r, processors: [echo]}]\n",
    )
    .await;
    let mut client = connect(gw.grpc_port).await;
    // One stream past its share: 413.
    let mut s = Stream::open(&mut client).await;
    s.call(echo_headers("/one")).await.expect("headers");
    assert_eq!(
        immediate_status(s.call(chunk(40_000, false)).await.expect("held")),
        None
    );
    assert_eq!(
        immediate_status(s.call(chunk(40_000, false)).await.expect("answered")),
        Some(413)
    );
    drop(s);
    // Two streams past the server's budget: the second gets 503, and once the first
    // is done the budget is back.
    let mut a = Stream::open(&mut client).await;
    a.call(echo_headers("/a")).await.expect("headers");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The earlier stream's bytes come back when the gateway sees it end.
        let (_, m) = http_get(gw.admin_port, "/metrics").await.expect("metrics");
        if metric(&m, "extproc_buffered_body_bytes") == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "bytes never given back:\n{m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        immediate_status(a.call(chunk(60_000, false)).await.expect("held")),
        None
    );
    let (_, m) = http_get(gw.admin_port, "/metrics").await.expect("metrics");
    assert_eq!(
        metric(&m, "extproc_buffered_body_bytes"),
        Some(60_000.0),
        "{m}"
    );
    let mut b = Stream::open(&mut client).await;
    b.call(echo_headers("/b")).await.expect("headers");
    assert_eq!(
        immediate_status(b.call(chunk(60_000, false)).await.expect("answered")),
        Some(503)
    );
    // The first finishes: echoed whole.
    assert_eq!(
        immediate_status(a.call(chunk(10, true)).await.expect("answered")),
        Some(200)
    );
    let (_, m) = http_get(gw.admin_port, "/metrics").await.expect("metrics");
    assert_eq!(
        metric(&m, r#"extproc_limits_hit_total{limit="stream_buffer"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, r#"extproc_limits_hit_total{limit="global_buffer"}"#),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_body_budget_cannot_hold_gets_503_and_is_not_kept() {
    // digest keeps nothing: only the message being received counts against the budget.
    let gw = Gateway::start(&format!("server: {{max_buffered_bytes: 100000}}\n{CONFIG}")).await;
    let mut client = connect(gw.grpc_port).await;
    let before = limits_metric(gw.admin_port, "global_buffer").await;
    // Over the budget: skipped as it arrives, the request answered with 503.
    let mut s = Stream::open(&mut client).await;
    s.call(request_headers("/digest/big", false))
        .await
        .expect("headers");
    assert_eq!(
        immediate_status(s.call(chunk(300_000, true)).await.expect("answered")),
        Some(503)
    );
    let after = limits_metric(gw.admin_port, "global_buffer").await;
    assert_eq!(
        after.unwrap_or(0.0) - before.unwrap_or(0.0),
        1.0,
        "{before:?} -> {after:?}"
    );
    // Within it, on a new stream: processed, and nothing stays held afterwards.
    let mut s = Stream::open(&mut client).await;
    s.call(request_headers("/digest/small", false))
        .await
        .expect("headers");
    let answer = s.call(chunk(60_000, true)).await.expect("answered");
    assert!(
        matches!(answer.and_then(|a| a.response), Some(Resp::RequestBody(_))),
        "a body within the budget is processed"
    );
    let (_, m) = http_get(gw.admin_port, "/metrics").await.expect("metrics");
    assert_eq!(metric(&m, "extproc_buffered_body_bytes"), Some(0.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metrics_off_keeps_only_the_process_wide_series() {
    for on in [true, false] {
        let gw = Gateway::start(&format!(
            "server: {{request_metrics: {on}}}\nroutes: [{{name: r, processors: [trivial]}}]\n"
        ))
        .await;
        let mut client = connect(gw.grpc_port).await;
        let mut s = Stream::open(&mut client).await;
        let answer = s.call(request_headers("/a", true)).await.expect("answer");
        assert!(
            matches!(
                answer.and_then(|a| a.response),
                Some(Resp::RequestHeaders(_))
            ),
            "request_metrics: {on}"
        );
        drop(s);
        let (_, m) = http_get(gw.admin_port, "/metrics").await.expect("metrics");
        // Process-wide counters stay either way.
        assert_eq!(
            metric(&m, r#"extproc_limits_hit_total{limit="streams"}"#),
            Some(0.0),
            "{m}"
        );
        let per_route = m
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(r#"route="r""#))
            .count();
        if on {
            assert!(per_route > 0, "no series of route r:\n{m}");
        } else {
            assert_eq!(
                per_route, 0,
                "series of route r with request_metrics off:\n{m}"
            );
        }
    }
}
