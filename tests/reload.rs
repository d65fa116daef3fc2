//! SIGHUP reloads the config file: new streams get the new chains, a stream opened
//! before keeps its route, a bad file leaves the running config in place, and a
//! reload fetches a `jwt_auth` JWKS URL once. With `server.config_reload_interval` a
//! changed file is reloaded with no signal, as a Kubernetes ConfigMap is updated.

mod common;

#[path = "fixtures/jwt/helpers.rs"]
mod jwt_helpers;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use extproc_gateway::proto::ext_proc::external_processor_client::ExternalProcessorClient;
use extproc_gateway::proto::ext_proc::{
    processing_request::Request as Req, processing_response::Response as Resp, HttpHeaders,
    ProcessingRequest, ProcessingResponse,
};
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
        self.request_with(&[]).await;
    }

    /// Request headers plus `extra`; the answer.
    async fn request_with(&mut self, extra: &[(&str, &str)]) -> ProcessingResponse {
        let mut headers = vec![(":method", "GET"), (":path", "/"), ("x-request-id", "r")];
        headers.extend_from_slice(extra);
        self.send(Req::RequestHeaders(HttpHeaders {
            headers: Some(header_map(&headers)),
            end_of_stream: true,
            ..Default::default()
        }))
        .await
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
    assert!(gw.proc.log_text().contains("unknown processor `nonsense`"));
    let mut still = Stream::open(gw.grpc_port).await;
    still.request().await;
    assert_eq!(still.applied().await, "timer,trivial");
    assert!(matches!(
        http_get(gw.admin_port, "/readyz").await,
        Some((200, _))
    ));
}

/// `extproc_config_reloads_total{result}` from `/metrics`.
async fn reloads(admin: u16, result: &str) -> u64 {
    let (_, text) = http_get(admin, "/metrics").await.expect("metrics");
    let series = format!("extproc_config_reloads_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

/// Polls until `check` holds, failing with the gateway's log after 10 s.
async fn until<F: AsyncFn() -> bool>(gw: &Gateway, what: &str, check: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} never happened:\n{}",
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks, over `watch` (several reload intervals), that the count of reloads with
/// `result` stays `count`: what must not trigger a reload has had its chances.
async fn stays(admin: u16, result: &str, count: u64, watch: Duration, why: &str) {
    let end = Instant::now() + watch;
    while Instant::now() < end {
        assert_eq!(reloads(admin, result).await, count, "{why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `content` the way the kubelet updates a mounted ConfigMap: into a new
/// timestamped directory, then `..data` is swapped to it with a rename, and the file
/// the gateway reads is a symlink through `..data`.
fn configmap_update(dir: &std::path::Path, version: u32, content: &str) {
    let data = dir.join(format!("..2026_11_26_{version:02}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("gateway.yaml"), content).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(data.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("gateway.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/gateway.yaml", &link).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_configmap_is_reloaded_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let main = |chain: &str| format!("routes:\n  - name: main\n    processors: [{chain}]\n");
    configmap_update(dir.path(), 1, &main("trivial"));
    let path = dir
        .path()
        .join("gateway.yaml")
        .to_string_lossy()
        .into_owned();
    let gw = Gateway::start_args(&["--config", &path, "--config-reload-interval", "100ms"]).await;
    let admin = gw.admin_port;
    let watch = Duration::from_millis(600);
    stays(
        admin,
        "loaded",
        0,
        watch,
        "the same file read again reloaded",
    )
    .await;

    // The same config in other words (a comment, flow style) is not a change; a new
    // chain is.
    configmap_update(
        dir.path(),
        2,
        "# edited\nroutes:\n- {name: main, processors: [trivial]}\n",
    );
    stays(admin, "loaded", 0, watch, "a comment reloaded the config").await;
    configmap_update(dir.path(), 3, &main("timer, trivial"));
    until(&gw, "the reload of the new chain", async || {
        routes_json(admin).await.contains("timer")
    })
    .await;
    assert_eq!(reloads(admin, "loaded").await, 1);
    let mut after = Stream::open(gw.grpc_port).await;
    after.request().await;
    assert_eq!(after.applied().await, "timer,trivial");

    // A broken file is refused once, logged, and the running config served; it is not
    // tried again every tick while it stays the same.
    configmap_update(dir.path(), 4, &main("nonsense"));
    until(&gw, "the failed reload", async || {
        reloads(admin, "failed").await == 1
    })
    .await;
    assert!(gw.proc.log_text().contains("unknown processor `nonsense`"));
    stays(admin, "failed", 1, watch, "a bad file counted twice").await;
    let mut still = Stream::open(gw.grpc_port).await;
    still.request().await;
    assert_eq!(still.applied().await, "timer,trivial");

    // Mended, it loads.
    configmap_update(dir.path(), 5, &main("timer"));
    until(&gw, "the reload of the mended file", async || {
        reloads(admin, "loaded").await == 2
    })
    .await;
    let mut mended = Stream::open(gw.grpc_port).await;
    mended.request().await;
    assert_eq!(mended.applied().await, "timer");
}

/// A JWKS endpoint on loopback serving the example keys, counting the fetches that
/// reach it.
async fn jwks_server() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = String::from_utf8(jwt_helpers::read(jwt_helpers::example("jwks.json"))).unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = fetches.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, fetches, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_fetches_the_jwks_url_once() {
    let (jwks_port, fetches, jwks_task) = jwks_server().await;
    let config = |chain: &str| {
        format!(
            "routes:\n  - name: api\n    processors:\n      - jwt_auth: {{jwks_url: 'http://127.0.0.1:{jwks_port}/jwks.json', refresh_interval: 1h}}\n{chain}"
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.yaml");
    std::fs::write(&file, config("      - trivial\n")).unwrap();
    let path = file.to_string_lossy().into_owned();
    let gw = Gateway::start_args(&["--config", &path]).await;
    let token = jwt_helpers::Signer::example_rsa().sign(&jwt_helpers::good_claims());
    let auth = format!("Bearer {token}");

    // Waits until a token passes on a new stream (the keys are loaded); the applied
    // processors of that stream.
    let accepted = async |gw: &Gateway| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = Stream::open(gw.grpc_port).await;
            let answer = s.request_with(&[("authorization", &auth)]).await;
            if matches!(answer.response, Some(Resp::RequestHeaders(_))) {
                return s.applied().await;
            }
            assert!(
                Instant::now() < deadline,
                "the token is never accepted:\n{}",
                gw.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(accepted(&gw).await, "jwt_auth,trivial");
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch at start");

    std::fs::write(&file, config("      - timer\n      - trivial\n")).unwrap();
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
    // The new chain serves with keys at once (it starts with the keys the chain it
    // replaces holds) ...
    assert_eq!(accepted(&gw).await, "jwt_auth,timer,trivial");
    // ... and fetches the URL itself, once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fetches.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the reload never fetched:\n{}",
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every fetch of a reload starts when the signal is handled, so a second one would
    // arrive within moments: a quiet second shows there is none.
    let quiet_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet_until {
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            2,
            "a reload fetched the JWKS URL more than once:\n{}",
            gw.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    jwks_task.abort();
}
