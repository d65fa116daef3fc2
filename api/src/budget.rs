//! How many body bytes the gateway holds in memory: per stream, and across all streams.
//! Processors that gather a body (`echo`, `context_check`, a held full-duplex body)
//! reserve its bytes first; past the stream's share the answer is 413, past the global
//! budget 503, and memory never grows past what the operator allowed. Reservations are
//! given back when the stream ends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The budget shared by every stream of one server.
pub struct BodyBudget {
    limit: usize,
    per_stream: usize,
    used: AtomicUsize,
    on_refusal: Option<Box<dyn Fn(OverBudget) + Send + Sync>>,
}

impl std::fmt::Debug for BodyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyBudget")
            .field("limit", &self.limit)
            .field("per_stream", &self.per_stream)
            .field("used", &self.used())
            .finish()
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBudget {
    /// The stream already holds its share (`server.max_buffered_bytes_per_stream`):
    /// the body is too large for this gateway (413).
    Stream,
    /// All streams together hold the whole budget (`server.max_buffered_bytes`): try
    /// again later (503).
    Global,
}

impl BodyBudget {
    /// `limit` bytes across streams, at most `per_stream` for one stream.
    pub fn new(limit: usize, per_stream: usize) -> Arc<Self> {
        Self::counted(limit, per_stream, None)
    }

    /// Like [`BodyBudget::new`], calling `on_refusal` for every refused reservation
    /// (the server counts them in a metric).
    pub fn counted(
        limit: usize,
        per_stream: usize,
        on_refusal: Option<Box<dyn Fn(OverBudget) + Send + Sync>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            limit,
            per_stream,
            used: AtomicUsize::new(0),
            on_refusal,
        })
    }

    fn refused(&self, why: OverBudget) -> OverBudget {
        if let Some(f) = &self.on_refusal {
            f(why);
        }
        why
    }

    /// Bytes held now by all streams.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }
}

/// Bytes held for a message still arriving (see `server::inbound`): drawn from the
/// global budget only, since the message's size is already capped by
/// `server.max_message_bytes`. Given back when dropped.
#[derive(Debug)]
pub struct Hold {
    budget: Arc<BodyBudget>,
    held: usize,
}

impl BodyBudget {
    /// Holds `n` bytes of the global budget until the returned [`Hold`] is dropped.
    pub fn hold(self: &Arc<Self>, n: usize) -> Result<Hold, OverBudget> {
        if !self.take(n) {
            return Err(self.refused(OverBudget::Global));
        }
        Ok(Hold {
            budget: self.clone(),
            held: n,
        })
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

/// One stream's reservations, given back when dropped (with the stream's context).
#[derive(Debug)]
pub struct StreamBudget {
    budget: Arc<BodyBudget>,
    held: usize,
}

impl StreamBudget {
    /// A stream's share of `budget`.
    pub fn new(budget: Arc<BodyBudget>) -> Self {
        Self { budget, held: 0 }
    }

    /// Reserves `n` more bytes for this stream.
    pub fn reserve(&mut self, n: usize) -> Result<(), OverBudget> {
        let total = match self.held.checked_add(n) {
            Some(t) if t <= self.budget.per_stream => t,
            _ => return Err(self.budget.refused(OverBudget::Stream)),
        };
        if !self.budget.take(n) {
            return Err(self.budget.refused(OverBudget::Global));
        }
        self.held = total;
        Ok(())
    }

    /// Gives back `n` bytes before the stream ends (a body answered and let go).
    pub fn release(&mut self, n: usize) {
        let n = n.min(self.held);
        self.held -= n;
        self.budget.give(n);
    }
}

impl Drop for StreamBudget {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_stream_and_global_limits_and_release_on_drop() {
        let budget = BodyBudget::new(100, 60);
        let mut a = StreamBudget::new(budget.clone());
        let mut b = StreamBudget::new(budget.clone());
        assert_eq!(a.reserve(50), Ok(()));
        assert_eq!(a.reserve(20), Err(OverBudget::Stream));
        assert_eq!(b.reserve(55), Err(OverBudget::Global));
        assert_eq!(b.reserve(40), Ok(()));
        assert_eq!(budget.used(), 90);
        drop(a);
        assert_eq!(budget.used(), 40);
        b.release(10);
        assert_eq!(budget.used(), 30);
        assert_eq!(b.reserve(usize::MAX), Err(OverBudget::Stream));
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_hold_draws_on_the_global_budget_only_and_gives_back_on_drop() {
        let budget = BodyBudget::new(100, 10);
        let held = budget.hold(80);
        assert!(held.is_ok());
        assert_eq!(budget.used(), 80);
        assert!(matches!(budget.hold(30), Err(OverBudget::Global)));
        drop(held);
        assert_eq!(budget.used(), 0);
    }
}
