//! Faults through real Envoy, under steady concurrent load: the gateway killed with
//! SIGKILL (with Envoy's `failure_mode_allow` false, then true) and restarted on the
//! same Unix socket, and SIGTERM at random moments with slow uploads in flight.
//!
//! The gateway listens on a Unix socket in the test's temporary directory and Envoy
//! reaches it through a `pipe` address, so a restarted gateway is found at the same
//! address with no port to race for. Timings are random; the seed is printed and
//! `FAULTS_SEED=<n>` replays it.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

/// Fast requests: `trivial` and `digest` (at request headers: a GET has no body).
/// Uploads: `trivial` and `digest` fed chunk by chunk, so the stream stays open for as
/// long as the client takes to send the body.
const GATEWAY: &str = r#"
routes:
  - name: upload
    match: {path_prefix: /upload}
    processors: [trivial, {digest: {body_mode: streamed}}]
  - name: default
    processors: [trivial, digest]
"#;

/// Envoy's `message_timeout` in the generated config.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);
/// No request may take longer than Envoy's message timeout plus this while the
/// gateway is down, dying or draining.
const MARGIN: Duration = Duration::from_secs(3);
/// Client tasks of steady load.
const LOAD_TASKS: usize = 6;

fn bound() -> Duration {
    MESSAGE_TIMEOUT + MARGIN
}

/// Envoy, the upstream, and the gateway (when running) on the Unix socket.
struct Stack {
    envoy: Envoy,
    _upstream: Upstream,
    socket: PathBuf,
    gateway: Option<Gateway>,
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(failure_mode_allow: bool, extra: &[&str]) -> Stack {
        let bin = envoy_bin().expect("envoy");
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("gateway.sock");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let gateway = start_gateway(&socket, &extra).await;
        let upstream = Upstream::start().await;
        let spec = EnvoySpec {
            filters: vec![Filter {
                failure_mode_allow,
                ..Filter::default()
            }],
            ..EnvoySpec::default()
        };
        let config = envoy_config_with_cluster(
            &spec,
            0,
            0,
            &gateway_pipe_cluster_yaml(&socket, true),
            upstream.port,
        );
        assert!(config.contains(&format!("failure_mode_allow: {failure_mode_allow}")));
        assert!(config.contains(&format!("message_timeout: {}s", MESSAGE_TIMEOUT.as_secs())));
        let envoy = Envoy::start_ingress(&bin, config).await;
        Stack {
            envoy,
            _upstream: upstream,
            socket,
            gateway: Some(gateway),
            extra,
            _dir: dir,
        }
    }

    fn gateway(&mut self) -> &mut Gateway {
        self.gateway.as_mut().expect("the gateway is running")
    }

    async fn restart(&mut self) {
        assert!(self.gateway.is_none(), "the old gateway still runs");
        self.gateway = Some(start_gateway(&self.socket, &self.extra).await);
    }

    /// Polls with fast requests until one is processed by the gateway again.
    async fn wait_until_back(&self, what: &str) -> Instant {
        let client = client();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        loop {
            n += 1;
            let id = format!("{what}-probe-{n}");
            if fast(&client, self.envoy.port, &id).await.seen == Seen::Processed {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no request processed 20 s after the restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn start_gateway(socket: &Path, extra: &[String]) -> Gateway {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    Gateway::start_on_socket(GATEWAY, socket, &extra).await
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// 200 from the upstream, every processor header right for this request.
    Processed,
    /// 200 from the upstream for this request, without the processors' headers (the
    /// filter skipped the gateway: `failure_mode_allow`).
    Bypassed,
    /// A 5xx from Envoy.
    Failed(u16),
    /// The connection to Envoy broke or the response did not finish in time.
    NoResponse,
    /// Anything else: another status, another request's echo, a wrong header value.
    Wrong,
}

#[derive(Debug, Clone)]
struct Outcome {
    id: String,
    started: Instant,
    ended: Instant,
    seen: Seen,
    detail: String,
}

impl Outcome {
    fn took(&self) -> Duration {
        self.ended - self.started
    }
}

/// Classifies a response to a request `id` sent to `path` with `body`.
fn classify(id: &str, method: &str, path: &str, body: &[u8], r: &Result<Resp, String>) -> Seen {
    let r = match r {
        Ok(r) => r,
        Err(_) => return Seen::NoResponse,
    };
    if r.status >= 500 {
        return Seen::Failed(r.status);
    }
    if r.status != 200 {
        return Seen::Wrong;
    }
    let Ok(echoed) = serde_json::from_slice::<extproc_gateway::upstream::Echoed>(&r.body) else {
        return Seen::Wrong;
    };
    if echoed.path != path
        || echoed.headers.get("x-request-id").map(String::as_str) != Some(id)
        || echoed.body.as_bytes() != body
    {
        return Seen::Wrong;
    }
    let want_digest = digest("unknown", method, path, body);
    // Each processor header is either absent or exactly this request's value.
    let checks = [
        (r.header("x-extra-request-id"), id),
        (
            echoed.headers.get("x-extra-request-id").map(String::as_str),
            id,
        ),
        (r.header("x-request-digest"), want_digest.as_str()),
    ];
    if checks
        .iter()
        .any(|(got, want)| got.is_some_and(|g| g != *want))
    {
        return Seen::Wrong;
    }
    if checks.iter().all(|(got, _)| got.is_some()) {
        Seen::Processed
    } else {
        Seen::Bypassed
    }
}

/// One fast GET with a unique id and path.
async fn fast(client: &HttpClient, port: u16, id: &str) -> Outcome {
    let path = format!("/fast/{id}");
    let started = Instant::now();
    let r = try_send(
        client,
        port,
        "GET",
        &path,
        &[("x-request-id", id)],
        empty(),
        bound() + Duration::from_secs(5),
    )
    .await;
    let ended = Instant::now();
    let seen = classify(id, "GET", &path, b"", &r);
    Outcome {
        id: id.to_string(),
        started,
        ended,
        seen,
        detail: detail(&r),
    }
}

fn detail(r: &Result<Resp, String>) -> String {
    match r {
        Ok(r) => format!(
            "{} {:?} {:.200}",
            r.status,
            r.headers,
            String::from_utf8_lossy(&r.body)
        ),
        Err(e) => e.clone(),
    }
}

/// Steady load: `LOAD_TASKS` clients sending fast requests back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, label: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(0));
        let tasks = (0..LOAD_TASKS)
            .map(|_| {
                let (stop, outcomes, next) = (stop.clone(), outcomes.clone(), next.clone());
                let label = label.to_string();
                tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("{label}-{}", next.fetch_add(1, Ordering::Relaxed));
                        let outcome = fast(&client, port, &id).await;
                        outcomes.lock().expect("outcomes").push(outcome);
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            tasks,
        }
    }

    fn count(&self) -> usize {
        self.outcomes.lock().expect("outcomes").len()
    }

    async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        let mut all = std::mem::take(&mut *self.outcomes.lock().expect("outcomes"));
        all.sort_by_key(|o| o.started);
        all
    }
}

/// Polls `check` until it holds; panics with `what` after `limit`.
async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn summary(outcomes: &[Outcome]) -> String {
    let mut counts = std::collections::BTreeMap::new();
    for o in outcomes {
        *counts.entry(format!("{:?}", o.seen)).or_insert(0) += 1;
    }
    let slowest = outcomes.iter().map(Outcome::took).max().unwrap_or_default();
    format!(
        "{} requests {counts:?}, slowest {slowest:?}",
        outcomes.len()
    )
}

/// Every request ended within the bound, and none got a wrong answer.
fn assert_bounded_and_never_wrong(outcomes: &[Outcome]) {
    for o in outcomes {
        assert!(
            o.took() <= bound(),
            "{} took {:?} (bound {:?}): {:?} {}",
            o.id,
            o.took(),
            bound(),
            o.seen,
            o.detail
        );
        assert_ne!(o.seen, Seen::Wrong, "{}: {}", o.id, o.detail);
    }
}

// ---- SIGKILL

/// Kill-and-restart cycles per test.
const KILLS: usize = 2;
/// How long the gateway stays down in each cycle.
const DOWN: Duration = Duration::from_millis(1500);
/// Concurrent requests checked after each restart.
const BATCH: usize = 32;

async fn sigkill_under_load(failure_mode_allow: bool) {
    let mut rng = Rng::seeded("FAULTS_SEED");
    let mut s = Stack::start(failure_mode_allow, &[]).await;
    s.wait_until_back("start").await;
    let load = Load::start(s.envoy.port, &format!("kill-allow-{failure_mode_allow}"));
    // Phases of each cycle: (killed, relaunched, back).
    let mut cycles = Vec::new();
    for cycle in 0..KILLS {
        let before = load.count();
        eventually(
            "load flows before the kill",
            Duration::from_secs(10),
            async || load.count() >= before + 20,
        )
        .await;
        // A random moment within the next half second.
        tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
        let mut gateway = s.gateway.take().expect("gateway");
        let killed = Instant::now();
        gateway.proc.child.kill().expect("SIGKILL");
        let status = gateway.wait_exit(Duration::from_secs(5)).await;
        assert!(status.is_some(), "the killed gateway did not go");
        drop(gateway);
        // The socket file the killed gateway left stays: Envoy's connects are refused.
        assert!(s.socket.exists(), "the killed gateway removed its socket");
        let before = load.count();
        tokio::time::sleep(DOWN).await;
        assert!(
            load.count() >= before + 10,
            "too few requests while the gateway was down"
        );
        let relaunched = Instant::now();
        s.restart().await;
        let back = s.wait_until_back(&format!("cycle-{cycle}")).await;
        eprintln!(
            "cycle {cycle}: down {:?}, back {:?} after the relaunch",
            relaunched - killed,
            back - relaunched
        );
        // A burst of concurrent requests on top of the load: every one processed.
        let client = client();
        let burst = futures_util::future::join_all((0..BATCH).map(|i| {
            let client = client.clone();
            let id = format!("after-{failure_mode_allow}-{cycle}-{i}");
            let port = s.envoy.port;
            async move { fast(&client, port, &id).await }
        }))
        .await;
        for o in &burst {
            assert_eq!(
                o.seen,
                Seen::Processed,
                "{} after the restart: {}",
                o.id,
                o.detail
            );
        }
        cycles.push((killed, relaunched, back));
    }
    // Load after the last restart, then stop.
    let before = load.count();
    eventually(
        "load flows after the restart",
        Duration::from_secs(10),
        async || load.count() >= before + 50,
    )
    .await;
    let outcomes = load.finish().await;
    eprintln!(
        "SIGKILL, failure_mode_allow {failure_mode_allow}: {}",
        summary(&outcomes)
    );
    assert_bounded_and_never_wrong(&outcomes);

    let mut down_window = 0;
    for o in &outcomes {
        // The phase the request lived in: up (before the first kill, or started after
        // the gateway was back), down (wholly between a kill and the relaunch), or
        // across a change.
        let up = cycles
            .iter()
            .all(|(killed, _, back)| o.ended < *killed || o.started > *back);
        let down = cycles
            .iter()
            .any(|(killed, relaunched, _)| o.started > *killed && o.ended < *relaunched);
        if up {
            assert_eq!(o.seen, Seen::Processed, "{} while up: {}", o.id, o.detail);
        } else if down {
            down_window += 1;
            let want = if failure_mode_allow {
                o.seen == Seen::Bypassed
            } else {
                matches!(o.seen, Seen::Failed(_))
            };
            assert!(want, "{} while down: {:?} {}", o.id, o.seen, o.detail);
        } else {
            // Across a kill or a restart: finished either way, but never a wrong
            // answer, and a 5xx only when failures are not allowed through.
            let fine = match o.seen {
                Seen::Processed => true,
                Seen::Bypassed => failure_mode_allow,
                Seen::Failed(_) => !failure_mode_allow,
                Seen::Wrong | Seen::NoResponse => false,
            };
            assert!(fine, "{} across a change: {:?} {}", o.id, o.seen, o.detail);
        }
    }
    assert!(
        down_window >= 10 * KILLS,
        "only {down_window} requests while the gateway was down"
    );
    // The restarted gateway ends idle.
    let admin = s.gateway().admin_port;
    metrics_when_idle(admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_fails_fast_then_recovers() {
    sigkill_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_with_failure_mode_allow_bypasses_then_recovers() {
    sigkill_under_load(true).await;
}

// ---- SIGTERM

/// SIGTERM trials, each at a random moment.
const TRIALS: usize = 12;
/// The gateway's `--shutdown-grace`.
const GRACE: Duration = Duration::from_secs(5);
/// Slow uploads in flight at each signal: upload `j` sends `CHUNKS` chunks
/// `(j + 1) * PAUSE` apart.
const UPLOADS: usize = 3;
const CHUNKS: usize = 6;
const PAUSE: Duration = Duration::from_millis(100);
/// The signal comes this long at most after the uploads' streams are open.
const MAX_DELAY_MS: u64 = 900;

/// A slow chunked upload; its response must be processed whatever happens meanwhile.
async fn upload(
    client: &HttpClient,
    port: u16,
    id: String,
    chunks: Vec<Bytes>,
    pause: Duration,
) -> Outcome {
    let path = format!("/upload/{id}");
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let started = Instant::now();
    let r = try_send(
        client,
        port,
        "POST",
        &path,
        &[("x-request-id", &id)],
        chunked(chunks, pause),
        Duration::from_secs(30),
    )
    .await;
    let ended = Instant::now();
    Outcome {
        seen: classify(&id, "POST", &path, &whole, &r),
        detail: detail(&r),
        id,
        started,
        ended,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_random_moments_drains_in_flight_uploads_within_the_grace() {
    let grace = format!("{}s", GRACE.as_secs());
    // The drain starts at the signal: no delay serving while reported not ready.
    let mut s = Stack::start(false, &["--shutdown-grace", &grace, "--drain-delay", "0s"]).await;
    let mut rng = Rng::seeded("FAULTS_SEED");
    let client = client();
    let mut exits = Vec::new();
    let mut in_flight_total = 0;
    for trial in 0..TRIALS {
        if s.gateway.is_none() {
            s.restart().await;
        }
        s.wait_until_back(&format!("trial-{trial}")).await;
        // The probes' streams close just after their responses: start from none open.
        metrics_when_idle(s.gateway().admin_port).await;
        let uploads: Vec<_> = (0..UPLOADS)
            .map(|j| {
                let id = format!("t{trial}-u{j}");
                let chunks = (0..CHUNKS)
                    .map(|_| {
                        let len = 1024 + rng.below(16 * 1024) as usize;
                        Bytes::from(rng.ascii(len))
                    })
                    .collect();
                let pause = PAUSE * (j as u32 + 1);
                let (client, port) = (client.clone(), s.envoy.port);
                tokio::spawn(async move { upload(&client, port, id, chunks, pause).await })
            })
            .collect();
        // Every upload's ext_proc stream is open in the gateway before the signal.
        let gw = s.gateway.as_ref().expect("gateway");
        eventually(
            &format!("trial {trial}: the uploads' streams open"),
            Duration::from_secs(5),
            async || {
                gw.active_streams()
                    .await
                    .is_some_and(|n| n >= UPLOADS as f64)
            },
        )
        .await;
        let load = Load::start(s.envoy.port, &format!("term-{trial}"));
        let delay = Duration::from_millis(rng.below(MAX_DELAY_MS));
        tokio::time::sleep(delay).await;
        let signalled = Instant::now();
        let mut gateway = s.gateway.take().expect("gateway");
        gateway.signal("TERM");
        let status = gateway.wait_exit(GRACE).await;
        let exited = signalled.elapsed();
        let status = status.unwrap_or_else(|| {
            panic!(
                "trial {trial}: the gateway did not exit within {GRACE:?}:\n{}",
                gateway.proc.log_text()
            )
        });
        assert!(
            status.success(),
            "trial {trial}: exit {status}:\n{}",
            gateway.proc.log_text()
        );
        assert!(!s.socket.exists(), "trial {trial}: socket file left behind");
        let mut in_flight = 0;
        for u in uploads {
            let o = u.await.expect("upload task");
            assert_eq!(
                o.seen,
                Seen::Processed,
                "trial {trial}: upload {} (signal after {delay:?}): {}",
                o.id,
                o.detail
            );
            if o.ended > signalled {
                in_flight += 1;
            }
        }
        assert!(
            in_flight >= 1,
            "trial {trial}: no upload was in flight at the signal"
        );
        in_flight_total += in_flight;
        let log = gateway.proc.log_text();
        assert!(
            !log.contains("grace period over"),
            "trial {trial}: streams cut at the end of the grace:\n{log}"
        );
        drop(gateway);
        let outcomes = load.finish().await;
        assert_bounded_and_never_wrong(&outcomes);
        for o in &outcomes {
            if o.ended < signalled {
                assert_eq!(
                    o.seen,
                    Seen::Processed,
                    "trial {trial}: {} before the signal: {}",
                    o.id,
                    o.detail
                );
            } else {
                assert!(
                    matches!(o.seen, Seen::Processed | Seen::Failed(_)),
                    "trial {trial}: {} after the signal: {:?} {}",
                    o.id,
                    o.seen,
                    o.detail
                );
            }
        }
        // Background requests the client had sent before the signal but that ended
        // after it: those whose stream was not yet open may be refused (the listener
        // is closed by then); reported, not asserted.
        let across: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.started < signalled && o.ended > signalled)
            .collect();
        let refused = across.iter().filter(|o| o.seen != Seen::Processed).count();
        eprintln!(
            "trial {trial}: signal {delay:?} after the uploads' streams opened, {in_flight} uploads in flight, exit after {exited:?}; background {}; in flight at the signal {}, of which refused {refused}",
            summary(&outcomes),
            across.len()
        );
        exits.push(exited);
    }
    eprintln!(
        "{TRIALS} trials: {in_flight_total} uploads drained, slowest exit {:?} (grace {GRACE:?})",
        exits.iter().max().unwrap_or(&Duration::ZERO)
    );
}
