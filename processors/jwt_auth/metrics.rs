//! The counters of a `jwt_auth` JWKS URL: fetch failures are otherwise only a log
//! line while the last good keys quietly age.

use extproc_gateway_api::metrics::MetricFamilies;
use extproc_gateway_api::prometheus::{self, IntCounter};

/// How one JWKS fetch ended (label `result` of `extproc_jwks_fetches_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchResult {
    /// A usable JWKS arrived (new or the same as before).
    Ok,
    /// No complete answer before the fetch deadline (connect, headers or body).
    Timeout,
    /// The body is larger than `max_jwks_bytes`.
    TooLarge,
    /// The server answered with a status other than 2xx.
    HttpStatus,
    /// Connecting, TLS or HTTP failed.
    Transport,
    /// The body is not JSON, not a JWKS, or holds no usable key.
    Invalid,
}

impl FetchResult {
    /// Every value, for exporting each series at 0 from the start.
    pub const ALL: [FetchResult; 6] = [
        FetchResult::Ok,
        FetchResult::Timeout,
        FetchResult::TooLarge,
        FetchResult::HttpStatus,
        FetchResult::Transport,
        FetchResult::Invalid,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchResult::Ok => "ok",
            FetchResult::Timeout => "timeout",
            FetchResult::TooLarge => "too_large",
            FetchResult::HttpStatus => "http_status",
            FetchResult::Transport => "transport",
            FetchResult::Invalid => "invalid",
        }
    }
}

/// What became of a token naming a `kid` the keys lack (label `outcome` of
/// `extproc_jwks_unknown_kid_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKid {
    /// It started a fetch and waited for it.
    Refetched,
    /// A fetch was already under way: refused without waiting.
    InFlight,
    /// The last refetch started less than `min_refetch_interval` ago: refused.
    RateLimited,
}

impl UnknownKid {
    /// Every value, for exporting each series at 0 from the start.
    pub const ALL: [UnknownKid; 3] = [
        UnknownKid::Refetched,
        UnknownKid::InFlight,
        UnknownKid::RateLimited,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UnknownKid::Refetched => "refetched",
            UnknownKid::InFlight => "in_flight",
            UnknownKid::RateLimited => "rate_limited",
        }
    }
}

/// Pre-resolved counters of one route's JWKS URL, so a fetch costs no label lookup.
#[derive(Clone)]
pub struct JwksMetrics {
    fetches: [IntCounter; FetchResult::ALL.len()],
    unknown_kid: [IntCounter; UnknownKid::ALL.len()],
}

impl JwksMetrics {
    /// The counters of the JWKS URL of a `jwt_auth` on `route`, every series at 0 from
    /// now; the families are registered the first time any route asks.
    pub fn new(families: &MetricFamilies, route: &str) -> Result<Self, prometheus::Error> {
        let fetches = families.counter_vec(
            "extproc_jwks_fetches_total",
            "Fetches of a jwt_auth jwks_url, by route and result (ok, timeout, too_large, http_status, transport, invalid); on failure the last good keys stay",
            &["route", "result"],
        )?;
        let unknown_kid = families.counter_vec(
            "extproc_jwks_unknown_kid_total",
            "Tokens naming a kid the jwt_auth keys lack, by route and outcome (refetched, in_flight, rate_limited)",
            &["route", "outcome"],
        )?;
        Ok(Self {
            fetches: FetchResult::ALL.map(|r| fetches.with_label_values(&[route, r.as_str()])),
            unknown_kid: UnknownKid::ALL
                .map(|o| unknown_kid.with_label_values(&[route, o.as_str()])),
        })
    }

    /// Counts one fetch.
    pub fn fetched(&self, result: FetchResult) {
        let i = FetchResult::ALL
            .iter()
            .position(|r| *r == result)
            .unwrap_or(0);
        self.fetches[i].inc();
    }

    /// Counts one token naming an unknown `kid`.
    pub fn unknown_kid(&self, outcome: UnknownKid) {
        let i = UnknownKid::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.unknown_kid[i].inc();
    }
}
