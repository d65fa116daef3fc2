//! What one gateway gives to Envoy's streams at most, so a flood of streams, an idle
//! stream or an oversized header list is answered clearly instead of growing memory:
//! concurrent streams (in total here, per connection through HTTP/2's
//! SETTINGS_MAX_CONCURRENT_STREAMS), how long a stream may sit idle, and how many
//! headers (and header bytes) one message may carry. Each refusal is counted in
//! `extproc_limits_hit_total{limit}`.
//!
//! The server enforces them; they live below it because [`Limit`] is also the
//! vocabulary of a metric, and metrics must not import the server.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::phase::{Headers, Phase};

/// The limits one server applies.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Streams open at once across all connections.
    pub max_streams: usize,
    /// A stream with no message from Envoy for this long is ended
    /// (`DEADLINE_EXCEEDED`); `None` waits forever.
    pub idle_timeout: Option<Duration>,
    /// Headers (or trailers) one message may carry.
    pub max_headers: usize,
    /// Bytes of names and values one message's headers may carry.
    pub max_header_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_streams: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            max_headers: 256,
            max_header_bytes: 96 * 1024,
        }
    }
}

/// One limit, a label value of `extproc_limits_hit_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Too many streams open at once.
    Streams,
    /// A stream sat idle past the idle timeout.
    Idle,
    /// A message carried too many headers.
    HeaderCount,
    /// A message's headers were too large.
    HeaderBytes,
    /// A stream would hold more body bytes than its share.
    StreamBuffer,
    /// All streams together would hold more body bytes than the server's budget.
    GlobalBuffer,
}

impl Limit {
    /// Every limit, for zero-initialised metrics.
    pub const ALL: [Limit; 6] = [
        Limit::Streams,
        Limit::Idle,
        Limit::HeaderCount,
        Limit::HeaderBytes,
        Limit::StreamBuffer,
        Limit::GlobalBuffer,
    ];

    /// Stable snake_case name (a metric label value).
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Streams => "streams",
            Limit::Idle => "idle",
            Limit::HeaderCount => "header_count",
            Limit::HeaderBytes => "header_bytes",
            Limit::StreamBuffer => "stream_buffer",
            Limit::GlobalBuffer => "global_buffer",
        }
    }
}

/// Hands out one permit per open stream.
#[derive(Debug, Clone)]
pub struct StreamSlots(Arc<Semaphore>);

impl StreamSlots {
    /// Room for `max` streams at once.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))))
    }

    /// A permit held for the stream's life, or `None` when all are taken.
    pub fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// Which header limit a phase's headers break, if any.
pub fn headers_over(phase: &Phase, limits: &StreamLimits) -> Option<Limit> {
    let headers: &Headers = match phase {
        Phase::RequestHeaders(h) | Phase::ResponseHeaders(h) => &h.headers,
        Phase::RequestTrailers(t) | Phase::ResponseTrailers(t) => t,
        Phase::RequestBody(_) | Phase::ResponseBody(_) => return None,
    };
    if headers.len() > limits.max_headers {
        return Some(Limit::HeaderCount);
    }
    let bytes: usize = headers.iter().map(|(n, v)| n.len() + v.len()).sum();
    (bytes > limits.max_header_bytes).then_some(Limit::HeaderBytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::HeadersPhase;

    fn headers(n: usize, value_len: usize) -> Phase {
        Phase::RequestHeaders(HeadersPhase {
            headers: (0..n)
                .map(|i| (format!("x-{i}"), "v".repeat(value_len)))
                .collect(),
            end_of_stream: true,
        })
    }

    #[test]
    fn header_limits() {
        let limits = StreamLimits {
            max_headers: 3,
            max_header_bytes: 100,
            ..StreamLimits::default()
        };
        assert_eq!(headers_over(&headers(3, 10), &limits), None);
        assert_eq!(
            headers_over(&headers(4, 1), &limits),
            Some(Limit::HeaderCount)
        );
        assert_eq!(
            headers_over(&headers(2, 60), &limits),
            Some(Limit::HeaderBytes)
        );
    }

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = StreamSlots::new(2);
        let a = slots.try_take().expect("first");
        let _b = slots.try_take().expect("second");
        assert!(slots.try_take().is_none());
        drop(a);
        assert!(slots.try_take().is_some());
    }
}
