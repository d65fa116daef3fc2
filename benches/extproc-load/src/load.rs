//! The load loop: workers that each run one exchange at a time, closed loop (the next
//! as soon as the last ends) or open loop at a fixed rate, where each exchange is
//! timed from when it should have started, so a server that stalls is charged for the
//! requests that queued behind the stall (coordinated omission corrected).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

use crate::exchange::{exchange, Ending, ExchangeSpec};
use crate::report::{cpu_seconds_of, own_cpu_seconds, Report};

/// When a run ends.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// After this long (in-flight exchanges finish).
    Duration(#[serde(with = "secs")] Duration),
    /// After this many exchanges.
    Requests(u64),
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// A whole run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadSpec {
    /// The ext_proc server, e.g. `http://127.0.0.1:50051`.
    pub target: String,
    /// HTTP/2 connections, shared round-robin by the workers (Envoy opens one per
    /// worker thread).
    pub connections: usize,
    /// Exchanges in flight at most.
    pub concurrency: usize,
    /// When to stop.
    pub stop: Stop,
    /// Exchanges per second in total (open loop); closed loop when absent.
    pub rate: Option<f64>,
    /// A closed-loop run first, not recorded, for this long.
    #[serde(with = "secs")]
    pub warmup: Duration,
    /// A progress line on stderr every second.
    #[serde(skip)]
    pub progress: bool,
    /// The server's process, for its CPU time during the run.
    pub server_pid: Option<u32>,
    /// What each exchange sends.
    pub exchange: ExchangeSpec,
}

/// What each worker counts; merged at the end.
pub(crate) struct Tally {
    pub latency: Histogram<u64>,
    pub completed: u64,
    pub immediate: BTreeMap<u32, u64>,
    pub failures: BTreeMap<String, u64>,
    pub messages: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            // 1 µs .. 1 h in nanoseconds, 3 significant digits.
            latency: Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3)
                .unwrap_or_else(|e| unreachable!("static histogram bounds: {e}")),
            completed: 0,
            immediate: BTreeMap::new(),
            failures: BTreeMap::new(),
            messages: 0,
        }
    }

    fn merge(&mut self, other: Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.completed += other.completed;
        for (k, v) in other.immediate {
            *self.immediate.entry(k).or_default() += v;
        }
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.messages += other.messages;
    }
}

/// Counters the progress line reads while workers run.
struct Live {
    ended: AtomicU64,
    failed: AtomicU64,
    /// The last second's latencies; only kept when a progress line reads them, so a
    /// quiet run takes no lock per exchange.
    window: Option<Mutex<Histogram<u64>>>,
}

pub(crate) async fn connect(
    target: &str,
    n: usize,
) -> anyhow::Result<Vec<ExternalProcessorClient<Channel>>> {
    let endpoint = Endpoint::from_shared(target.to_string())
        .map_err(|e| anyhow::anyhow!("target {target}: {e}"))?
        .tcp_nodelay(true);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {target}: {e}"))?;
        clients.push(ExternalProcessorClient::new(channel).max_decoding_message_size(64 << 20));
    }
    Ok(clients)
}

/// One phase of a run (the warm-up or the measured one): spawns the workers and
/// waits for them.
async fn phase(
    clients: &[ExternalProcessorClient<Channel>],
    spec: &LoadSpec,
    stop: Stop,
    rate: Option<f64>,
    live: &Arc<Live>,
) -> Tally {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::with_capacity(spec.concurrency);
    for w in 0..spec.concurrency.max(1) {
        let client = clients[w % clients.len()].clone();
        let exchange_spec = spec.exchange.clone();
        let next = next.clone();
        let live = live.clone();
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if let Stop::Requests(n) = stop {
                    if i >= n {
                        break;
                    }
                }
                let intended = match rate {
                    Some(r) => start + Duration::from_secs_f64(i as f64 / r),
                    None => Instant::now(),
                };
                if let Stop::Duration(d) = stop {
                    if intended.max(Instant::now()) >= start + d {
                        break;
                    }
                }
                tokio::time::sleep_until(intended.into()).await;
                let result = exchange(&client, &exchange_spec).await;
                let nanos = u64::try_from(intended.elapsed().as_nanos()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(nanos);
                if let Some(window) = &live.window {
                    window
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .saturating_record(nanos);
                }
                live.ended.fetch_add(1, Ordering::Relaxed);
                match result {
                    Ok(done) => {
                        tally.messages += u64::from(done.messages);
                        match done.ending {
                            Ending::Completed => tally.completed += 1,
                            Ending::Immediate(status) => {
                                *tally.immediate.entry(status).or_default() += 1
                            }
                        }
                    }
                    Err(failure) => {
                        live.failed.fetch_add(1, Ordering::Relaxed);
                        *tally.failures.entry(failure.to_string()).or_default() += 1;
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::new();
    for worker in workers {
        match worker.await {
            Ok(tally) => total.merge(tally),
            Err(e) => {
                *total
                    .failures
                    .entry(format!("worker failed: {e}"))
                    .or_default() += 1
            }
        }
    }
    total
}

/// Prints a progress line every second until `done`.
fn progress(live: Arc<Live>, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        while !done.load(Ordering::Relaxed) {
            tick.tick().await;
            let ended = live.ended.load(Ordering::Relaxed);
            let failed = live.failed.load(Ordering::Relaxed);
            let (p50, p99) = match &live.window {
                Some(window) => {
                    let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
                    let p = (
                        window.value_at_quantile(0.5),
                        window.value_at_quantile(0.99),
                    );
                    window.reset();
                    p
                }
                None => (0, 0),
            };
            let line = format!(
                "{:>4.0} s  {ended:>9} exchanges  {:>8} /s  {failed} errors  p50 {:.3} ms  p99 {:.3} ms",
                started.elapsed().as_secs_f64(),
                ended - last,
                p50 as f64 / 1e6,
                p99 as f64 / 1e6,
            );
            last = ended;
            let mut err = std::io::stderr();
            let _ = if tty {
                write!(err, "\r{line}   ")
            } else {
                writeln!(err, "{line}")
            };
            let _ = err.flush();
        }
        if tty {
            let _ = writeln!(std::io::stderr());
        }
    })
}

/// Runs the load `spec` describes and reports it.
pub async fn run(spec: &LoadSpec) -> anyhow::Result<Report> {
    anyhow::ensure!(spec.concurrency > 0, "concurrency must be at least 1");
    if let Some(r) = spec.rate {
        anyhow::ensure!(
            r.is_finite() && r > 0.0,
            "the rate must be a positive number"
        );
    }
    let clients = connect(&spec.target, spec.connections).await?;
    let live = Arc::new(Live {
        ended: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        window: spec.progress.then(|| Mutex::new(Tally::new().latency)),
    });
    if !spec.warmup.is_zero() {
        phase(&clients, spec, Stop::Duration(spec.warmup), None, &live).await;
        live.ended.store(0, Ordering::Relaxed);
        live.failed.store(0, Ordering::Relaxed);
    }
    let done = Arc::new(AtomicBool::new(false));
    let ticker = spec.progress.then(|| progress(live.clone(), done.clone()));
    let server_before = spec.server_pid.map(cpu_seconds_of).transpose()?;
    let own_before = own_cpu_seconds();
    let started = Instant::now();
    let tally = phase(&clients, spec, spec.stop, spec.rate, &live).await;
    let elapsed = started.elapsed();
    let own = own_cpu_seconds() - own_before;
    let server = match (spec.server_pid, server_before) {
        (Some(pid), Some(before)) => Some(cpu_seconds_of(pid)? - before),
        _ => None,
    };
    done.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        let _ = t.await;
    }
    Ok(Report::new(spec, tally, elapsed, server, own))
}
