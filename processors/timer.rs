//! `timer`: stamps when the request reached the gateway (`x-request-started`, RFC 3339
//! UTC with microseconds) on the upstream request, and on the response adds the same
//! stamp plus `x-duration-ns`, the nanoseconds from request headers to response.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::prelude::*;

/// The stamp of when the request reached the gateway (upstream and response).
pub const STARTED_HEADER: &str = "x-request-started";

/// See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Timer;

/// Per-request state: when request headers arrived.
#[derive(Debug, Default)]
pub struct TimerState {
    started: Option<(Instant, String)>,
}

/// Settings of `timer`: none (`- timer` or `- timer: {}`).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct TimerSettings {}

impl ProcessorSettings for TimerSettings {
    type Processor = Timer;

    fn build(&self, _: &BuildContext<'_>) -> Result<Timer, String> {
        Ok(Timer)
    }

    fn request_header_writes(&self) -> RequestHeaderWrites {
        RequestHeaderWrites::Names(vec![STARTED_HEADER.to_string()])
    }
}

impl Processor for Timer {
    type State = TimerState;

    fn new_state(&self) -> TimerState {
        TimerState::default()
    }

    fn name(&self) -> &str {
        "timer"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::HEADERS
    }

    async fn on_request_headers(
        &self,
        _: &mut RequestCtx,
        state: &mut TimerState,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        let stamp = rfc3339_micros(SystemTime::now());
        out.set(STARTED_HEADER, stamp.clone());
        state.started = Some((Instant::now(), stamp));
        Ok(Flow::Continue)
    }

    async fn on_response_headers(
        &self,
        ctx: &mut RequestCtx,
        state: &mut TimerState,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        // Without request headers (header mode SKIP) fall back to the stream's start.
        let (start, stamp) = match &state.started {
            Some((i, s)) => (*i, s.clone()),
            None => (ctx.started, rfc3339_micros(ctx.started_at)),
        };
        out.set(STARTED_HEADER, stamp);
        out.set("x-duration-ns", start.elapsed().as_nanos().to_string());
        Ok(Flow::Continue)
    }
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), with humantime. The
/// clock is clamped to what RFC 3339 with four-digit years can write (1970 through
/// 9999): humantime panics before the epoch and fails past 9999, and a badly set
/// clock must not take the request down.
pub fn rfc3339_micros(t: SystemTime) -> String {
    // 9999-12-31T23:59:59.999999Z
    let last = UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_000);
    humantime::format_rfc3339_micros(t.clamp(UNIX_EPOCH, last)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 123_456_789);
        assert_eq!(rfc3339_micros(t), "2024-02-29T12:34:56.123456Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(rfc3339_micros(t), "2099-12-31T23:59:59.000000Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(rfc3339_micros(before), "1970-01-01T00:00:00.000000Z");
        let after = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339_micros(after), "9999-12-31T23:59:59.999999Z");
    }
}
