//! SIGHUP reloads the config file: new streams get the new chains, a stream opened
//! before keeps its route, and a bad file leaves the running config in place.

mod common;

use std::time::{Duration, Instant};

use common::*;
use extproc_gateway::proto::ext_proc::external_processor_client::ExternalProcessorClient;
use extproc_gateway::proto::ext_proc::{
    processing_request::Request as Req, processing_response::Response as Resp, HttpHeaders,
    ProcessingRequest, ProcessingResponse,
};
use extproc_gateway::testing::header_map;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

struct Stream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: Streaming<ProcessingResponse>,
}

impl Stream {
    async fn open(port: u16) -> Stream {
        let mut client = ExternalProcessorClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(4);
        let rx = client
            .process(ReceiverStream::new(rx))
            .await
            .expect("open")
            .into_inner();
        Stream { tx, rx }
    }

    async fn send(&mut self, req: Req) -> ProcessingResponse {
        self.tx
            .send(ProcessingRequest {
                request: Some(req),
                ..Default::default()
            })
            .await
            .expect("send");
        self.rx.message().await.expect("ok").expect("answer")
    }

    async fn request(&mut self) {
        self.send(Req::RequestHeaders(HttpHeaders {
            headers: Some(header_map(&[
                (":method", "GET"),
                (":path", "/"),
                ("x-request-id", "r"),
            ])),
            end_of_stream: true,
            ..Default::default()
        }))
        .await;
    }

    /// The applied-processors header on the response.
    async fn applied(&mut self) -> String {
        let answer = self
            .send(Req::ResponseHeaders(HttpHeaders {
                headers: Some(header_map(&[(":status", "200")])),
                end_of_stream: true,
                ..Default::default()
            }))
            .await;
        let Some(Resp::ResponseHeaders(h)) = answer.response else {
            panic!("wrong kind")
        };
        h.response
            .and_then(|c| c.header_mutation)
            .into_iter()
            .flat_map(|m| m.set_headers)
            .filter_map(|o| o.header)
            .find(|h| h.key == "x-ext-procs-applied")
            .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
            .unwrap_or_default()
    }
}

async fn routes_json(admin: u16) -> String {
    http_get(admin, "/routes").await.expect("routes").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_routes_for_new_streams_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.yaml");
    std::fs::write(
        &file,
        "routes:\n  - name: main\n    processors: [trivial]\n",
    )
    .unwrap();
    let path = file.to_string_lossy().into_owned();
    let gw = Gateway::start_args(&["--config", &path]).await;

    let mut before = Stream::open(gw.grpc_port).await;
    before.request().await;

    std::fs::write(
        &file,
        "routes:\n  - name: main\n    processors: [timer, trivial]\n",
    )
    .unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !routes_json(gw.admin_port).await.contains("timer") {
        assert!(
            Instant::now() < deadline,
            "routes never reloaded:\n{}",
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut after = Stream::open(gw.grpc_port).await;
    after.request().await;
    assert_eq!(after.applied().await, "timer,trivial");
    // The stream opened before the reload finishes on its own route.
    assert_eq!(before.applied().await, "trivial");
    let (_, config) = http_get(gw.admin_port, "/config").await.unwrap();
    assert!(config.contains("timer"), "{config}");

    // A broken file is refused; the running config stays.
    std::fs::write(
        &file,
        "routes:\n  - name: main\n    processors: [nonsense]\n",
    )
    .unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.proc.log_text().contains("config reload failed") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.proc.log_text().contains("unknown variant `nonsense`"));
    let mut still = Stream::open(gw.grpc_port).await;
    still.request().await;
    assert_eq!(still.applied().await, "timer,trivial");
    assert!(matches!(
        http_get(gw.admin_port, "/readyz").await,
        Some((200, _))
    ));
}
