//! What a run measured: a table for people and JSON for scripts (the load kit reads
//! it), and the CPU time of the server under test and of the generator itself.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::load::{LoadSpec, Tally};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// What was run.
    pub spec: LoadSpec,
    /// Seconds the measured phase took.
    pub elapsed_s: f64,
    /// Exchanges that ended (completed, immediate or failed).
    pub exchanges: u64,
    /// Exchanges answered phase by phase to the end.
    pub completed: u64,
    /// Exchanges the server ended with an immediate response, by HTTP status.
    pub immediate: BTreeMap<u32, u64>,
    /// Failed exchanges.
    pub errors: u64,
    /// Failed exchanges by reason.
    pub error_kinds: BTreeMap<String, u64>,
    /// Exchanges per second.
    pub rate: f64,
    /// Exchange latency, from when each should have started.
    pub latency_ms: Latency,
    /// Messages sent per exchange (each answered).
    pub messages_per_exchange: f64,
    /// CPU seconds the server's process used during the run.
    pub server_cpu_s: Option<f64>,
    /// Server CPU microseconds per exchange.
    pub server_cpu_us_per_exchange: Option<f64>,
    /// Exchanges per CPU-second of the server: what the server does with a core.
    pub exchanges_per_server_cpu_s: Option<f64>,
    /// CPU seconds the generator used (a generator near its own limit measures itself).
    pub generator_cpu_s: f64,
}

impl Report {
    pub(crate) fn new(
        spec: &LoadSpec,
        tally: Tally,
        elapsed: Duration,
        server_cpu_s: Option<f64>,
        generator_cpu_s: f64,
    ) -> Self {
        let exchanges = tally.latency.len();
        let ms = |q: f64| tally.latency.value_at_quantile(q) as f64 / 1e6;
        let errors: u64 = tally.failures.values().sum();
        let per = |x: f64| (exchanges > 0).then(|| x / exchanges as f64);
        Report {
            spec: spec.clone(),
            elapsed_s: elapsed.as_secs_f64(),
            exchanges,
            completed: tally.completed,
            immediate: tally.immediate,
            errors,
            error_kinds: tally.failures,
            rate: exchanges as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: Latency {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                max: tally.latency.max() as f64 / 1e6,
                mean: tally.latency.mean() / 1e6,
            },
            messages_per_exchange: per(tally.messages as f64).unwrap_or(0.0),
            server_cpu_s,
            server_cpu_us_per_exchange: server_cpu_s.and_then(|s| per(s * 1e6)),
            exchanges_per_server_cpu_s: server_cpu_s
                .filter(|s| *s > 0.0)
                .map(|s| exchanges as f64 / s),
            generator_cpu_s,
        }
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let l = &self.latency_ms;
        let mut out = String::new();
        out.push_str(&format!(
            "target {}  concurrency {}  connections {}  {}\n",
            self.spec.target,
            self.spec.concurrency,
            self.spec.connections,
            match self.spec.rate {
                Some(r) => format!("open loop at {r} /s"),
                None => "closed loop".to_string(),
            }
        ));
        out.push_str(&format!(
            "{:>10} {:>10} {:>10} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}\n",
            "exchanges",
            "completed",
            "immediate",
            "errors",
            "per s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "msgs/exch"
        ));
        out.push_str(&format!(
            "{:>10} {:>10} {:>10} {:>8} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.2}\n",
            self.exchanges,
            self.completed,
            self.immediate.values().sum::<u64>(),
            self.errors,
            self.rate,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.messages_per_exchange
        ));
        if let (Some(cpu), Some(us), Some(per_s)) = (
            self.server_cpu_s,
            self.server_cpu_us_per_exchange,
            self.exchanges_per_server_cpu_s,
        ) {
            out.push_str(&format!(
                "server CPU {cpu:.2} s: {us:.1} µs per exchange, {per_s:.0} exchanges per CPU-second\n"
            ));
        }
        out.push_str(&format!("generator CPU {:.2} s\n", self.generator_cpu_s));
        for (status, n) in &self.immediate {
            out.push_str(&format!("immediate {status}: {n}\n"));
        }
        for (kind, n) in &self.error_kinds {
            out.push_str(&format!("error: {kind}: {n}\n"));
        }
        out
    }
}

/// CPU seconds (user + system, all threads) process `pid` has used so far.
pub fn cpu_seconds_of(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("the server's CPU time (/proc/{pid}/stat): {e}"))?;
    // The command name may hold spaces and parentheses: fields count from its end.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: no command field"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; after the command, 12 and 13.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64)
            .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: field {} unreadable", i + 3))
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// CPU seconds this process has used so far.
pub fn own_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: getrusage returned 0, so the struct is initialised.
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
