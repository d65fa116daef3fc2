//! The generator against the floor and against servers that misbehave on purpose:
//! every answer is checked, mode overrides are honoured only when allowed, chunks and
//! metadata arrive as configured, and the open loop charges a slow server for the
//! requests that queued behind it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_response, HeadersResponse, ImmediateResponse, ProcessingRequest, ProcessingResponse,
};
use extproc_load::exchange::kind_in;
use extproc_load::floor::answer;
use extproc_load::{BodyMode, ExchangeSpec, LoadSpec, Stop};
use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// How a test server departs from the floor.
#[derive(Clone, Copy)]
enum Twist {
    /// None: the floor.
    Floor,
    /// Answers a request body as if it were response headers.
    WrongKind,
    /// Answers request headers with 403.
    Immediate,
    /// Asks at request headers for no bodies and no response headers.
    Override,
    /// Takes this long over each message.
    Slow(Duration),
}

#[derive(Clone)]
struct Server {
    twist: Twist,
    /// Initial metadata of every stream seen; kinds of every message seen.
    seen: Arc<Mutex<(Vec<String>, Vec<&'static str>)>>,
}

#[tonic::async_trait]
impl ExternalProcessor for Server {
    type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let tenant = request
            .metadata()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.seen.lock().unwrap().0.push(tenant);
        let twist = self.twist;
        let seen = self.seen.clone();
        let answers = request.into_inner().then(move |message| {
            let seen = seen.clone();
            async move {
                let message = message?;
                let k = message.request.as_ref().map_or("none", kind_in);
                seen.lock().unwrap().1.push(k);
                use processing_response::Response as Out;
                match (twist, k) {
                    (Twist::WrongKind, "request_body") => Ok(ProcessingResponse {
                        response: Some(Out::ResponseHeaders(HeadersResponse::default())),
                        ..ProcessingResponse::default()
                    }),
                    (Twist::Immediate, "request_headers") => Ok(ProcessingResponse {
                        response: Some(Out::ImmediateResponse(ImmediateResponse {
                            status: Some(HttpStatus { code: 403 }),
                            ..ImmediateResponse::default()
                        })),
                        ..ProcessingResponse::default()
                    }),
                    (Twist::Override, "request_headers") => {
                        let mut r = answer(message)?;
                        r.mode_override = Some(ProcessingMode {
                            response_header_mode: HeaderSendMode::Skip as i32,
                            request_body_mode: BodySendMode::None as i32,
                            response_body_mode: BodySendMode::None as i32,
                            ..ProcessingMode::default()
                        });
                        Ok(r)
                    }
                    (Twist::Slow(d), _) => {
                        tokio::time::sleep(d).await;
                        answer(message)
                    }
                    _ => answer(message),
                }
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

async fn start(twist: Twist) -> (String, Server) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server {
        twist,
        seen: Arc::default(),
    };
    let service = ExternalProcessorServer::new(server.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), server)
}

fn exchange() -> ExchangeSpec {
    ExchangeSpec {
        method: "POST".into(),
        path: "/".into(),
        authority: "load.test".into(),
        headers: vec![],
        request_headers: true,
        response_headers: true,
        request_body_bytes: 1024,
        response_body_bytes: 1024,
        request_body_mode: BodyMode::Buffered,
        response_body_mode: BodyMode::Buffered,
        chunk_bytes: 16384,
        request_trailers: false,
        response_trailers: false,
        allow_mode_override: false,
        metadata: vec![],
        timeout: Duration::from_secs(5),
    }
}

fn load(target: String, requests: u64, concurrency: usize, exchange: ExchangeSpec) -> LoadSpec {
    LoadSpec {
        target,
        connections: 2,
        concurrency,
        stop: Stop::Requests(requests),
        rate: None,
        warmup: Duration::ZERO,
        progress: false,
        server_pid: None,
        exchange,
    }
}

#[tokio::test]
async fn the_floor_completes_every_exchange_phase_by_phase() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(extproc_load::floor::serve(listener));
    let mut spec = load(target, 300, 8, exchange());
    spec.server_pid = Some(std::process::id());
    let report = extproc_load::run(&spec).await.unwrap();
    assert_eq!(report.errors, 0, "{}", report.table());
    assert_eq!(report.exchanges, 300);
    assert_eq!(report.completed, 300);
    assert_eq!(report.messages_per_exchange, 4.0);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.p99);
    // The server here is this process: its CPU time is counted.
    assert!(
        report.server_cpu_s.is_some_and(|s| s > 0.0),
        "{}",
        report.table()
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["completed"], 300);
    assert_eq!(json["spec"]["exchange"]["request_body_bytes"], 1024);
}

#[tokio::test]
async fn an_answer_of_the_wrong_kind_is_an_error() {
    let (target, _) = start(Twist::WrongKind).await;
    let report = extproc_load::run(&load(target, 20, 2, exchange()))
        .await
        .unwrap();
    assert_eq!(report.errors, 20, "{}", report.table());
    assert_eq!(report.completed, 0);
    assert_eq!(
        report
            .error_kinds
            .get("sent request_body, answered response_headers"),
        Some(&20),
        "{:?}",
        report.error_kinds
    );
}

#[tokio::test]
async fn immediate_responses_end_the_exchange_and_are_counted_by_status() {
    let (target, server) = start(Twist::Immediate).await;
    let report = extproc_load::run(&load(target, 10, 1, exchange()))
        .await
        .unwrap();
    assert_eq!(report.errors, 0, "{}", report.table());
    assert_eq!(report.immediate.get(&403), Some(&10));
    assert_eq!(report.messages_per_exchange, 1.0);
    let kinds = server.seen.lock().unwrap().1.clone();
    assert!(kinds.iter().all(|k| *k == "request_headers"), "{kinds:?}");
}

#[tokio::test]
async fn a_mode_override_is_honoured_only_when_allowed() {
    let (target, _) = start(Twist::Override).await;
    let ignored = extproc_load::run(&load(target.clone(), 10, 1, exchange()))
        .await
        .unwrap();
    assert_eq!(ignored.errors, 0, "{}", ignored.table());
    assert_eq!(ignored.messages_per_exchange, 4.0);
    let mut allowed = exchange();
    allowed.allow_mode_override = true;
    let honoured = extproc_load::run(&load(target, 10, 1, allowed))
        .await
        .unwrap();
    assert_eq!(honoured.errors, 0, "{}", honoured.table());
    assert_eq!(honoured.completed, 10);
    assert_eq!(honoured.messages_per_exchange, 1.0);
}

#[tokio::test]
async fn streamed_bodies_go_in_chunks_with_trailers_and_metadata_reaches_the_server() {
    let (target, server) = start(Twist::Floor).await;
    let mut spec = exchange();
    spec.request_body_bytes = 10 * 1024 + 1;
    spec.response_body_bytes = 0;
    spec.request_body_mode = BodyMode::Streamed;
    spec.chunk_bytes = 1024;
    spec.request_trailers = true;
    spec.metadata = vec![("x-tenant".into(), "acme".into())];
    let report = extproc_load::run(&load(target, 3, 1, spec)).await.unwrap();
    assert_eq!(report.errors, 0, "{}", report.table());
    // Headers, 11 chunks, trailers; response headers (no response body).
    assert_eq!(report.messages_per_exchange, 14.0);
    let (tenants, kinds) = server.seen.lock().unwrap().clone();
    assert_eq!(tenants, ["acme", "acme", "acme"]);
    assert_eq!(kinds.iter().filter(|k| **k == "request_body").count(), 33);
    assert_eq!(
        kinds.iter().filter(|k| **k == "request_trailers").count(),
        3
    );
}

#[tokio::test]
async fn the_open_loop_charges_a_slow_server_for_the_queue_behind_it() {
    // Two messages of 20 ms each: 40 ms per exchange, 25 per second at most on one
    // worker. Asked for 100 per second, the 30th should have started at 0.29 s but
    // starts near 1.2 s: its latency holds the wait.
    let (target, _) = start(Twist::Slow(Duration::from_millis(20))).await;
    let mut headers_only = exchange();
    headers_only.request_body_bytes = 0;
    headers_only.response_body_bytes = 0;
    let closed = extproc_load::run(&load(target.clone(), 30, 1, headers_only.clone()))
        .await
        .unwrap();
    let mut open = load(target, 30, 1, headers_only);
    open.rate = Some(100.0);
    let open = extproc_load::run(&open).await.unwrap();
    assert_eq!(closed.errors + open.errors, 0);
    assert!(closed.latency_ms.max < 200.0, "{}", closed.table());
    assert!(
        open.latency_ms.max > 500.0 && open.latency_ms.p50 > 2.0 * closed.latency_ms.p50,
        "closed:\n{}open:\n{}",
        closed.table(),
        open.table()
    );
}

#[tokio::test]
async fn a_server_that_is_not_there_is_a_clear_error() {
    // Port 0 can never be connected to.
    let err = extproc_load::run(&load("http://127.0.0.1:0".into(), 1, 1, exchange()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("connecting to http://127.0.0.1:0"), "{err}");
    let err = extproc_load::run(&load("not a target".into(), 1, 1, exchange()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("target not a target"), "{err}");
}

#[tokio::test]
async fn streams_are_held_open_between_phases_and_memory_is_read() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(extproc_load::floor::serve(listener));
    let spec = extproc_load::hold::HoldSpec {
        target,
        connections: 2,
        streams: 300,
        // The server is this process.
        server_pid: std::process::id(),
        exchange: exchange(),
    };
    let report = extproc_load::hold::run(&spec).await.unwrap();
    assert_eq!(report.held, 300, "{}", report.table());
    assert!(report.errors.is_empty(), "{}", report.table());
    assert!(
        report.rss_before_kib > 0 && report.rss_held_kib > 0,
        "{}",
        report.table()
    );
    // A server that is not there cannot be read.
    let mut gone = spec.clone();
    gone.server_pid = u32::MAX;
    let err = extproc_load::hold::run(&gone)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("/proc/"), "{err}");
}
