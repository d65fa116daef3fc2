//! Memory of the gateway process under many concurrent streams that each send a large
//! body message: the figure behind "memory never grows past the body budget".
//!
//! Starts the release gateway binary with a config whose body budget is
//! `--budget-mib`, opens `--streams` ext_proc streams over `--connections` HTTP/2
//! connections, and on every stream sends request headers (a POST announcing the body)
//! and then one request-body message of `--body-bytes`, all at once. Every message
//! shares one buffer on this side, so the client's own memory stays small. It reports
//! the gateway's resident memory (VmRSS, and the peak VmHWM) before, with every stream
//! open after its body was answered or refused, and after all streams ended, with how
//! each stream ended.
//!
//!   cargo bench --bench stream_memory -- [--streams 10000] [--body-bytes 1048576]
//!       [--connections 10] [--budget-mib 512] [--mode streamed|buffered]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use extproc_gateway::proto::envoy::config::core::v3 as core;
use extproc_gateway::proto::envoy::extensions::filters::http::ext_proc::v3 as mode;
use extproc_gateway::proto::envoy::service::ext_proc::v3 as pb;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::sync::mpsc;

struct Args {
    streams: usize,
    body_bytes: usize,
    connections: usize,
    budget_mib: usize,
    buffered: bool,
}

fn args() -> Args {
    let mut a = Args {
        streams: 10_000,
        body_bytes: 1 << 20,
        connections: 10,
        budget_mib: 512,
        buffered: false,
    };
    let given: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` runs this once without `--bench`: a small run that
    // checks the bench still works, not a measurement.
    if !given.iter().any(|a| a.starts_with("--")) {
        a.streams = 40;
        a.body_bytes = 64 << 10;
        a.connections = 2;
    }
    let mut it = given.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<usize>().ok());
        match flag.as_str() {
            "--streams" => a.streams = value().unwrap_or(a.streams),
            "--body-bytes" => a.body_bytes = value().unwrap_or(a.body_bytes),
            "--connections" => a.connections = value().unwrap_or(a.connections).max(1),
            "--budget-mib" => a.budget_mib = value().unwrap_or(a.budget_mib),
            "--mode" => a.buffered = it.next().as_deref() == Some("buffered"),
            _ => {} // cargo bench passes `--bench`
        }
    }
    a
}

/// A gRPC frame: the 5-byte prefix and the encoded message.
fn frame(message: &pb::ProcessingRequest) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + encoded.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(&encoded);
    out.freeze()
}

fn headers_message(body_bytes: usize, buffered: bool) -> Bytes {
    let header = |k: &str, v: &str| core::HeaderValue {
        key: k.into(),
        raw_value: Bytes::copy_from_slice(v.as_bytes()),
        ..Default::default()
    };
    let body_mode = if buffered {
        mode::processing_mode::BodySendMode::Buffered
    } else {
        mode::processing_mode::BodySendMode::Streamed
    };
    frame(&pb::ProcessingRequest {
        request: Some(pb::processing_request::Request::RequestHeaders(
            pb::HttpHeaders {
                headers: Some(core::HeaderMap {
                    headers: vec![
                        header(":method", "POST"),
                        header(":path", "/upload"),
                        header(":authority", "bench"),
                        header(":scheme", "http"),
                        header("content-type", "application/octet-stream"),
                        header("content-length", &body_bytes.to_string()),
                    ],
                }),
                end_of_stream: false,
                ..Default::default()
            },
        )),
        protocol_config: Some(pb::ProtocolConfiguration {
            request_body_mode: body_mode as i32,
            response_body_mode: mode::processing_mode::BodySendMode::None as i32,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn body_message(body_bytes: usize) -> Bytes {
    frame(&pb::ProcessingRequest {
        request: Some(pb::processing_request::Request::RequestBody(pb::HttpBody {
            body: Bytes::from(vec![b'x'; body_bytes]),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    })
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Gateway {
    child: Child,
    grpc: String,
    admin: String,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway(budget_mib: usize) -> Gateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  grpc_addr: 127.0.0.1:0\n  admin_addr: 127.0.0.1:0\n  \
             max_buffered_bytes: {}\nroutes:\n  - name: default\n    processors: \
             [trivial, timer, digest, context_check, echo]\n",
            budget_mib << 20
        ),
    )
    .expect("write config");
    let addresses = dir.path().join("addresses.json");
    let child = Command::new(env!("CARGO_BIN_EXE_extproc-gateway"))
        .arg("--config")
        .arg(&config)
        .arg("--addresses-file")
        .arg(&addresses)
        .args(["--log", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the gateway");
    let deadline = Instant::now() + Duration::from_secs(30);
    let bound: serde_json::Value = loop {
        if let Some(v) = read_json(&addresses) {
            break v;
        }
        assert!(Instant::now() < deadline, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = |k: &str| bound[k].as_str().unwrap_or_default().to_string();
    Gateway {
        grpc: text("grpc"),
        admin: text("admin"),
        child,
        _dir: dir,
    }
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// How one stream ended up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Both messages answered; the stream stays open.
    Answered,
    /// An immediate response with this HTTP status.
    Immediate(u32),
    /// The stream ended with this gRPC status before the body was answered.
    Ended(String),
}

type Tx = mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>;
type Sender = hyper::client::conn::http2::SendRequest<
    StreamBody<
        tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, std::convert::Infallible>>,
    >,
>;

/// Opens one stream, sends both messages, reads answers until the body is answered
/// (or the stream ends); returns how it went and the sender that keeps it open.
async fn one_stream(
    sender: &mut Sender,
    authority: &str,
    headers: Bytes,
    body: Bytes,
) -> (Outcome, Option<Tx>) {
    let (tx, rx) = mpsc::channel(4);
    let request = http::Request::post(format!(
        "http://{authority}/envoy.service.ext_proc.v3.ExternalProcessor/Process"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let Ok(request) = request else {
        return (Outcome::Ended("bad request".into()), None);
    };
    let _ = tx.send(Ok(Frame::data(headers))).await;
    let _ = tx.send(Ok(Frame::data(body))).await;
    let response = match sender.send_request(request).await {
        Ok(r) => r,
        Err(e) => return (Outcome::Ended(format!("h2: {e}")), None),
    };
    let mut body = response.into_body();
    let mut buf = BytesMut::new();
    let mut answers = 0;
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let status = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("?");
                    return (Outcome::Ended(format!("grpc-status {status}")), None);
                }
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                while buf.len() >= 5 {
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    if buf.len() < 5 + len {
                        break;
                    }
                    buf.advance(5);
                    let message = buf.split_to(len);
                    let Ok(answer) = pb::ProcessingResponse::decode(message) else {
                        return (Outcome::Ended("undecodable answer".into()), None);
                    };
                    if let Some(pb::processing_response::Response::ImmediateResponse(i)) =
                        answer.response
                    {
                        let status = i.status.map(|s| s.code as u32).unwrap_or(0);
                        return (Outcome::Immediate(status), Some(tx));
                    }
                    answers += 1;
                    if answers == 2 {
                        // Keep reading in the background so the stream's end is seen.
                        tokio::spawn(async move { while body.frame().await.is_some() {} });
                        return (Outcome::Answered, Some(tx));
                    }
                }
            }
            Some(Err(e)) => return (Outcome::Ended(format!("h2: {e}")), None),
            None => return (Outcome::Ended("no trailers".into()), None),
        }
    }
}

async fn active_streams(admin: &str) -> Option<i64> {
    let stream = tokio::net::TcpStream::connect(admin).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let request = http::Request::get("/metrics")
        .header("host", admin)
        .body(http_body_util::Empty::<Bytes>::new())
        .ok()?;
    let body = send.send_request(request).await.ok()?.into_body();
    let text = String::from_utf8(body.collect().await.ok()?.to_bytes().to_vec()).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("extproc_active_streams "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[tokio::main]
async fn main() {
    let a = args();
    let gateway = start_gateway(a.budget_mib);
    let pid = gateway.child.id();
    let (rss_idle, _) = memory(pid);
    let headers = headers_message(a.body_bytes, a.buffered);
    let body = body_message(a.body_bytes);
    println!(
        "streams {} x body {} B over {} connections, budget {} MiB, {} mode; gateway pid {pid}",
        a.streams,
        a.body_bytes,
        a.connections,
        a.budget_mib,
        if a.buffered { "BUFFERED" } else { "STREAMED" }
    );

    let started = Instant::now();
    let per_connection = a.streams.div_ceil(a.connections);
    let mut tasks = Vec::new();
    for c in 0..a.connections {
        let n = per_connection.min(a.streams.saturating_sub(c * per_connection));
        let Ok(tcp) = tokio::net::TcpStream::connect(&gateway.grpc).await else {
            panic!("cannot connect to {}", gateway.grpc);
        };
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        for _ in 0..n {
            let mut sender = sender.clone();
            let (authority, headers, body) = (gateway.grpc.clone(), headers.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                one_stream(&mut sender, &authority, headers, body).await
            }));
        }
    }
    // Sample the gateway's memory while the bodies arrive.
    let sampler = {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let handle = tokio::spawn(async move {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(memory(pid).0);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        });
        (done, handle)
    };
    let mut outcomes: BTreeMap<Outcome, usize> = BTreeMap::new();
    let mut open = Vec::new();
    for t in tasks {
        if let Ok((outcome, tx)) = t.await {
            *outcomes.entry(outcome).or_default() += 1;
            open.extend(tx);
        }
    }
    let sent_in = started.elapsed();
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let sampled_peak = sampler.1.await.unwrap_or(0);
    let (rss_open, hwm) = memory(pid);
    let active_open = active_streams(&gateway.admin).await;
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut active_after = active_streams(&gateway.admin).await;
    while active_after != Some(0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        active_after = active_streams(&gateway.admin).await;
    }
    let (rss_after, _) = memory(pid);

    println!(
        "all bodies sent and answered in {:.2} s",
        sent_in.as_secs_f64()
    );
    for (outcome, n) in &outcomes {
        println!("  {n:>6} streams: {outcome:?}");
    }
    println!("gateway RSS idle before:                {}", mib(rss_idle));
    println!("gateway RSS peak (VmHWM):               {}", mib(hwm));
    println!(
        "gateway RSS peak sampled every 10 ms:   {}",
        mib(sampled_peak)
    );
    println!(
        "gateway RSS, streams open after bodies: {} ({:?} active streams)",
        mib(rss_open),
        active_open
    );
    println!(
        "gateway RSS after all streams ended:    {} ({:?} active streams)",
        mib(rss_after),
        active_after
    );
    println!(
        "peak over idle: {}; budget {} MiB",
        mib(hwm.saturating_sub(rss_idle)),
        a.budget_mib
    );
    // Figures of a run where streams went missing or stayed open measure a fault.
    let ended: usize = outcomes.values().sum();
    assert_eq!(ended, a.streams, "streams that never ended: {outcomes:?}");
    assert_eq!(active_after, Some(0), "streams left open in the gateway");
}
