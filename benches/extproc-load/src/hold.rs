//! Memory of idle streams: many streams held open between phases (request headers
//! answered, the body not sent yet), as Envoy holds them while upstreams are slow,
//! and what the server's resident memory grows by per stream.

use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use crate::exchange::{hold, ExchangeSpec, Held};
use crate::load::connect;

/// A hold run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HoldSpec {
    /// The ext_proc server.
    pub target: String,
    /// HTTP/2 connections the streams are spread over (servers cap streams per
    /// connection: tonic's default is 200, the gateway's 1,000).
    pub connections: usize,
    /// Streams to hold.
    pub streams: usize,
    /// The server's process, whose memory is read.
    pub server_pid: u32,
    /// The request headers each stream sends.
    pub exchange: ExchangeSpec,
}

/// What holding the streams cost the server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HoldReport {
    /// What was run.
    pub spec: HoldSpec,
    /// Streams held (request headers answered).
    pub held: usize,
    /// Streams that could not be held, by reason.
    pub errors: std::collections::BTreeMap<String, usize>,
    /// The server's resident memory before, KiB.
    pub rss_before_kib: u64,
    /// With every stream held, KiB.
    pub rss_held_kib: u64,
    /// After the streams were closed, KiB.
    pub rss_after_kib: u64,
    /// (held - before) / streams held, KiB.
    pub kib_per_stream: f64,
    /// Seconds it took to open them all.
    pub open_s: f64,
}

impl HoldReport {
    /// The lines printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = format!(
            "target {}: {} of {} streams held over {} connections in {:.2} s\n\
             server RSS before {} KiB, held {} KiB, after closing {} KiB: {:.2} KiB per held stream\n",
            self.spec.target,
            self.held,
            self.spec.streams,
            self.spec.connections,
            self.open_s,
            self.rss_before_kib,
            self.rss_held_kib,
            self.rss_after_kib,
            self.kib_per_stream,
        );
        for (reason, n) in &self.errors {
            out.push_str(&format!("error: {reason}: {n}\n"));
        }
        out
    }
}

/// Resident memory of process `pid`, KiB (VmRSS).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("the server's memory (/proc/{pid}/status): {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status: no VmRSS"))
}

/// Resident memory once it has stopped moving (allocators return memory lazily).
async fn settled_rss(pid: u32) -> anyhow::Result<u64> {
    let mut last = rss_kib(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kib(pid)?;
        if now.abs_diff(last) < 64 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Opens `spec.streams` streams, holds them while the server's memory is read, then
/// closes them.
pub async fn run(spec: &HoldSpec) -> anyhow::Result<HoldReport> {
    anyhow::ensure!(spec.streams > 0, "hold at least one stream");
    let clients = connect(&spec.target, spec.connections).await?;
    let before = settled_rss(spec.server_pid).await?;
    let started = Instant::now();
    let opened: Vec<Result<Held, String>> = stream::iter(0..spec.streams)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let exchange = spec.exchange.clone();
            async move { hold(&client, &exchange).await.map_err(|f| f.to_string()) }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    let open_s = started.elapsed().as_secs_f64();
    let mut errors = std::collections::BTreeMap::new();
    let mut held = Vec::with_capacity(opened.len());
    for result in opened {
        match result {
            Ok(h) => held.push(h),
            Err(e) => *errors.entry(e).or_default() += 1,
        }
    }
    let with_held = settled_rss(spec.server_pid).await?;
    let count = held.len();
    drop(held);
    // Give the server the close frames before reading it again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = settled_rss(spec.server_pid).await?;
    Ok(HoldReport {
        spec: spec.clone(),
        held: count,
        errors,
        rss_before_kib: before,
        rss_held_kib: with_held,
        rss_after_kib: after,
        kib_per_stream: if count > 0 {
            with_held.saturating_sub(before) as f64 / count as f64
        } else {
            0.0
        },
        open_s,
    })
}
