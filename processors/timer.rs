//! `timer`: stamps when the request reached the gateway (`x-request-started`, RFC 3339
//! UTC with microseconds) on the upstream request, and on the response adds the same
//! stamp plus `x-duration-ns`, the nanoseconds from request headers to response.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

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

impl Processor for Timer {
    type State = TimerState;

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
    ) -> Flow {
        let stamp = rfc3339_micros(SystemTime::now());
        out.set(STARTED_HEADER, stamp.clone());
        state.started = Some((Instant::now(), stamp));
        Flow::Continue
    }

    async fn on_response_headers(
        &self,
        ctx: &mut RequestCtx,
        state: &mut TimerState,
        _: &HeadersPhase,
        out: &mut Mutations,
    ) -> Flow {
        // Without request headers (header mode SKIP) fall back to the stream's start.
        let (start, stamp) = match &state.started {
            Some((i, s)) => (*i, s.clone()),
            None => (ctx.started, rfc3339_micros(ctx.started_at)),
        };
        out.set(STARTED_HEADER, stamp);
        out.set("x-duration-ns", start.elapsed().as_nanos().to_string());
        Flow::Continue
    }
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC).
pub fn rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_micros(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 123_456_789);
        assert_eq!(rfc3339_micros(t), "2024-02-29T12:34:56.123456Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(rfc3339_micros(t), "2099-12-31T23:59:59.000000Z");
    }
}
