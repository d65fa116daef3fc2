//! `jwt_auth`: verifies `authorization: Bearer <token>` before the request goes
//! upstream. A valid token's top-level claims are forwarded as `decoded-<claim>`
//! headers and Envoy re-picks the route, so routes can match on claims. Client-sent
//! claim headers are dropped first in every spelling Envoy or an upstream may treat as
//! the same name (`Decoded-Sub`, `decoded_sub`, `DECODED_sub`), so they cannot be
//! spoofed; the config refuses a later processor that could write them (see
//! the gateway's config check). Claim names and values that a header cannot carry are encoded
//! (non-string values and strings with a control character as compact JSON), never
//! emitted raw. A missing or
//! invalid token gets 401 with `www-authenticate` and a JSON reason that never repeats
//! the token or the key; the upstream is not called.

pub mod jwks;
pub mod metrics;

pub use self::metrics::{FetchResult, JwksMetrics, UnknownKid};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::sync::Weak;

use bytes::Bytes;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use self::jwks::{KeySet, KeySource, Keys, UrlSource};
use super::headers::is_header_name;
use crate::phase::{is_valid_header_name, is_valid_header_value};
use crate::prelude::*;

/// Largest claim header (name and value) forwarded; larger claims are left out, since
/// Envoy would refuse the whole mutation for one oversized header.
pub const MAX_CLAIM_HEADER: usize = 8 * 1024;

/// True when the header `name` falls under the claim header `prefix` in a spelling
/// Envoy or a common upstream may treat as the same name: ASCII case is ignored, and
/// `_` and `-` are alike (Envoy forwards underscores by default, and CGI, WSGI, Rack,
/// PHP and many frameworks map both to the same variable). `decoded_sub`,
/// `Decoded-Sub` and `DECODED_sub` are all under `decoded-`.
pub fn is_claim_header(name: &str, prefix: &str) -> bool {
    let fold = |b: u8| {
        if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    };
    name.len() >= prefix.len()
        && name
            .bytes()
            .zip(prefix.bytes())
            .all(|(n, p)| fold(n) == fold(p))
}

/// Settings of `jwt_auth`. Exactly one of `jwks_file`, `pem_file`, `jwks_url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// JWKS document on disk (read at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// One PEM public key on disk (read at start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem_file: Option<PathBuf>,
    /// JWKS URL (`http://` or `https://`), fetched in the background, and again for a
    /// token naming a `kid` the keys lack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again: the longest the gateway goes without
    /// looking, and the interval when the server's `Cache-Control` sets no `max-age`
    /// (a `max-age` may shorten it, down to `min_refetch_interval`).
    #[serde(default = "default_refresh", with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway_api::settings::duration_schema")]
    pub refresh_interval: Duration,
    /// Extra CA certificates (PEM) to trust for `jwks_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// One deadline for a whole `jwks_url` fetch (connect, TLS, headers and body), so a
    /// stalled server fails the fetch instead of holding it. It is also the longest a
    /// request with an unknown `kid` waits for its refetch: Envoy must be allowed to
    /// wait that long and a second more (`max_message_timeout` on the ext_proc filter).
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway_api::settings::duration_schema")]
    pub fetch_timeout: Duration,
    /// Largest JWKS document read from `jwks_url`; a larger one is a failed fetch and
    /// the last good keys stay.
    #[serde(default = "default_max_jwks_bytes")]
    pub max_jwks_bytes: usize,
    /// Least time between two refetches of `jwks_url` triggered by tokens naming a
    /// `kid` the keys lack (anyone can send such tokens), and the shortest refresh a
    /// server's `Cache-Control: max-age` can ask for.
    #[serde(default = "default_min_refetch", with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway_api::settings::duration_schema")]
    pub min_refetch_interval: Duration,
    /// Accepted algorithms. Default: the asymmetric ones. `HS256`/`HS384`/`HS512` must
    /// be listed explicitly and then verify only with `oct` keys of a JWKS.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Required `iss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one must be present); empty skips the check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    #[schemars(schema_with = "extproc_gateway_api::settings::duration_schema")]
    pub leeway: Duration,
    /// Reject tokens without `exp`.
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Prefix of the claim headers sent upstream.
    #[serde(default = "default_prefix")]
    pub claim_header_prefix: String,
    /// Tokens remembered after a successful verification (by SHA-256 of the token),
    /// so a client reusing its token skips the signature check until the token
    /// expires or the keys change; 0 turns the cache off.
    #[serde(default = "default_cache")]
    pub verified_cache: usize,
    /// Dynamic metadata namespace the verified claims are written to, as Envoy's own
    /// `jwt_authn` filter does, so RBAC rules and access logs written for it keep
    /// working (list it in the ext_proc filter's `metadata_options.receiving_namespaces`).
    #[serde(default = "default_metadata_namespace")]
    pub metadata_namespace: String,
    /// Key of the claims in that namespace (`jwt_authn`'s `payload_in_metadata`);
    /// empty turns the metadata off.
    #[serde(default = "default_payload_key")]
    pub payload_in_metadata: String,
}

/// The namespace Envoy's `jwt_authn` filter writes to.
pub const JWT_AUTHN_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

fn default_metadata_namespace() -> String {
    JWT_AUTHN_NAMESPACE.into()
}

fn default_payload_key() -> String {
    "payload".into()
}

fn default_cache() -> usize {
    4096
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}

/// Longest `fetch_timeout`: a request with an unknown `kid` may wait that long.
const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

fn default_fetch_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_max_jwks_bytes() -> usize {
    jwks::DEFAULT_MAX_JWKS_BYTES
}

fn default_min_refetch() -> Duration {
    Duration::from_secs(30)
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn yes() -> bool {
    true
}

fn default_prefix() -> String {
    "decoded-".into()
}

fn default_algorithms() -> Vec<String> {
    [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    use Algorithm::*;
    Ok(match name {
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        n if n.eq_ignore_ascii_case("none") => {
            return Err("algorithm `none` is never accepted".into())
        }
        other => return Err(format!("unknown algorithm `{other}`")),
    })
}

impl JwtSettings {
    /// Checks everything that needs no I/O (so errors carry the config line).
    pub fn validate(&self) -> Result<(), String> {
        self.source()?;
        let algs = self.parsed_algorithms()?;
        let symmetric = algs
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        if symmetric && self.pem_file.is_some() {
            return Err("HS* algorithms need a shared secret (an `oct` key in a JWKS), not a PEM public key".into());
        }
        if self.claim_header_prefix.is_empty() || !is_header_name(&self.claim_header_prefix) {
            return Err(format!(
                "claim_header_prefix `{}` is not a valid header name prefix",
                self.claim_header_prefix
            ));
        }
        if self.refresh_interval < Duration::from_secs(1) {
            return Err("refresh_interval must be at least 1s".into());
        }
        if self.fetch_timeout.is_zero() || self.fetch_timeout > MAX_FETCH_TIMEOUT {
            return Err(format!(
                "fetch_timeout must be longer than zero and at most {}",
                humantime::format_duration(MAX_FETCH_TIMEOUT)
            ));
        }
        if self.max_jwks_bytes == 0 {
            return Err("max_jwks_bytes must be at least 1".into());
        }
        if self.min_refetch_interval < Duration::from_secs(1) {
            return Err("min_refetch_interval must be at least 1s".into());
        }
        Ok(())
    }

    fn parsed_algorithms(&self) -> Result<Vec<Algorithm>, String> {
        if self.algorithms.is_empty() {
            return Err("algorithms must not be empty".into());
        }
        self.algorithms.iter().map(|a| algorithm(a)).collect()
    }

    fn source(&self) -> Result<KeySource, String> {
        match (&self.jwks_file, &self.pem_file, &self.jwks_url) {
            (Some(f), None, None) => Ok(KeySource::JwksFile(f.clone())),
            (None, Some(f), None) => Ok(KeySource::PemFile(f.clone())),
            (None, None, Some(u)) => {
                let url: http::Uri = u
                    .parse()
                    .map_err(|e| format!("jwks_url `{u}` is not a URL: {e}"))?;
                if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
                    return Err(format!("jwks_url `{u}` must be an http:// or https:// URL"));
                }
                Ok(KeySource::JwksUrl(UrlSource {
                    url,
                    refresh: self.refresh_interval,
                    ca_file: self.ca_file.clone(),
                    fetch_timeout: self.fetch_timeout,
                    max_bytes: self.max_jwks_bytes,
                    min_refetch: self.min_refetch_interval,
                }))
            }
            _ => Err("set exactly one of jwks_file, pem_file, jwks_url".into()),
        }
    }

    /// The settings with anything secret-bearing hidden (a URL's query string).
    pub fn redacted(&self) -> JwtSettings {
        let mut s = self.clone();
        if let Some(url) = &mut s.jwks_url {
            if let Some(i) = url.find('?') {
                url.truncate(i);
                url.push_str("?REDACTED");
            }
        }
        s
    }
}

/// See the module documentation.
pub struct JwtAuth {
    store: Keys,
    algorithms: Vec<Algorithm>,
    settings: JwtSettings,
    /// Tokens verified recently, by SHA-256 of the token; `None` when
    /// `verified_cache` is 0. A concurrent cache bounded to that many entries, which
    /// evicts the least useful entries one by one (S3-FIFO) rather than starting
    /// over when full; an entry is served only while its `exp` (plus leeway) has not
    /// passed and its key set is in force, and is dropped when found stale.
    verified: Option<quick_cache::sync::Cache<[u8; 32], Verified>>,
}

/// A token that passed verification: its claims, its expiry, and the key set that
/// verified it (a refreshed key set invalidates it).
#[derive(Clone)]
struct Verified {
    claims: Arc<Forwarded>,
    exp: Option<u64>,
    keys: Weak<KeySet>,
}

/// What a verified token forwards, worked out once per token: the cache keeps it, so
/// a cached token costs no claim formatting and no copy of its payload.
struct Forwarded {
    /// Claim headers, names and values valid and each pair within
    /// [`MAX_CLAIM_HEADER`].
    headers: Vec<(String, Bytes)>,
    /// The payload written as metadata (`payload_in_metadata`), when asked for.
    payload: Option<Arc<serde_json::Value>>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtAuth {
    /// Validates the settings, loads file keys now and starts the background refresh
    /// of a URL (when a Tokio runtime is running).
    pub fn new(settings: JwtSettings) -> Result<Self, String> {
        Self::observed(settings, None)
    }

    /// Like [`JwtAuth::new`], counting a URL's fetches in `metrics`.
    pub fn observed(settings: JwtSettings, metrics: Option<JwksMetrics>) -> Result<Self, String> {
        let auth = Self::build(settings, metrics)?;
        auth.store.start();
        Ok(auth)
    }

    /// Validates and loads like [`JwtAuth::new`] but fetches nothing, for a config
    /// that is only checked: a reload would otherwise fetch a URL once for the check
    /// and once more for the routes it serves.
    pub fn unstarted(settings: JwtSettings) -> Result<Self, String> {
        Self::build(settings, None)
    }

    fn build(settings: JwtSettings, metrics: Option<JwksMetrics>) -> Result<Self, String> {
        settings.validate()?;
        let store = jwks::load(&settings.source()?, metrics)?;
        let verified = (settings.verified_cache > 0)
            .then(|| quick_cache::sync::Cache::new(settings.verified_cache));
        Ok(Self {
            store,
            algorithms: settings.parsed_algorithms()?,
            settings,
            verified,
        })
    }

    /// Verifies a token, from the cache of verified tokens when it is there, still
    /// unexpired (with leeway) and verified by the key set in force.
    /// The claim headers and metadata of a token's claims.
    fn forwarded(&self, claims: serde_json::Map<String, serde_json::Value>) -> Forwarded {
        let prefix = &self.settings.claim_header_prefix;
        let mut headers = Vec::with_capacity(claims.len());
        for (claim, value) in claims.iter() {
            let name = claim_header(prefix, claim);
            let value = claim_value(value);
            if name.len() + value.len() > MAX_CLAIM_HEADER {
                tracing::debug!(
                    bytes = name.len() + value.len(),
                    "claim too large to forward"
                );
                continue;
            }
            headers.push((name, Bytes::from(value)));
        }
        let payload = (!self.settings.payload_in_metadata.is_empty())
            .then(|| Arc::new(serde_json::Value::Object(claims)));
        Forwarded { headers, payload }
    }

    fn verify_cached(&self, token: &str) -> Result<Arc<Forwarded>, Refusal> {
        let Some(cache) = &self.verified else {
            return self
                .verify(token, self.store.get())
                .map(|(claims, _)| Arc::new(self.forwarded(claims)));
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let keys = self.store.get();
        let now = now_secs();
        let leeway = self.settings.leeway.as_secs();
        if let Some(v) = cache.get(&digest) {
            let same_keys = match (&keys, v.keys.upgrade()) {
                (Some(current), Some(then)) => Arc::ptr_eq(current, &then),
                _ => false,
            };
            let unexpired = v.exp.is_none_or(|exp| exp.saturating_add(leeway) >= now);
            if same_keys && unexpired {
                return Ok(v.claims);
            }
            // Stale: never served again, whatever the verification below decides.
            cache.remove(&digest);
        }
        // The key set read for the cache check is the one verified against.
        let (claims, keys) = self.verify(token, keys)?;
        // Cached only with an expiry the cache can check itself (or none at all).
        let exp = match claims.get("exp") {
            None => Some(None),
            Some(e) => e.as_u64().map(Some),
        };
        let claims = Arc::new(self.forwarded(claims));
        let Some(exp) = exp else {
            return Ok(claims);
        };
        cache.insert(
            digest,
            Verified {
                claims: claims.clone(),
                exp,
                keys: Arc::downgrade(&keys),
            },
        );
        Ok(claims)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.settings.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        v.required_spec_claims.clear();
        if self.settings.require_exp {
            v.required_spec_claims.insert("exp".into());
        }
        // A configured check also requires the claim: a token without `iss` or `aud`
        // must not slip past a check that only runs when the claim is present.
        if let Some(iss) = &self.settings.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        if self.settings.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.settings.audiences);
            v.required_spec_claims.insert("aud".into());
        }
        v
    }

    /// Checks the signature and the claims; returns the claims and the key set used.
    fn verify(
        &self,
        token: &str,
        keys: Option<Arc<KeySet>>,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, Arc<KeySet>), Refusal> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Refusal::invalid("malformed token"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Refusal::invalid("algorithm not accepted"));
        }
        let Some(keys) = keys else {
            return Err(Refusal::Unavailable);
        };
        let validation = self.validation(header.alg);
        let mut tried = false;
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            tried = true;
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &key.key,
                &validation,
            ) {
                Ok(data) => return Ok((data.claims, keys.clone())),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(Refusal::invalid(reason(e.kind()))),
            }
        }
        if header.kid.as_deref().is_some_and(|kid| !keys.has_kid(kid)) {
            return Err(Refusal::UnknownKid);
        }
        Err(Refusal::invalid(if tried {
            "invalid signature"
        } else {
            "no key for this token"
        }))
    }

    /// Verifies a token. One naming a `kid` the keys lack (a key rotated in since the
    /// last fetch) makes a JWKS URL be fetched again, unless a fetch is under way or
    /// the last such refetch is younger than `min_refetch_interval` (then it is refused
    /// as it stands); this request waits for that fetch, at most `fetch_timeout`, and
    /// is checked against what it brought. Envoy is first asked to wait that long too
    /// (`override_message_timeout`, honoured only within the filter's
    /// `max_message_timeout`).
    async fn authenticate(
        &self,
        ctx: &mut RequestCtx,
        token: &str,
    ) -> Result<Arc<Forwarded>, Refusal> {
        let first = self.verify_cached(token);
        let (Err(Refusal::UnknownKid), Some(remote)) = (&first, self.store.remote()) else {
            return first;
        };
        let Some(fetch) = remote.refetch_for_unknown_kid() else {
            return first;
        };
        ctx.extend_message_timeout(fetch.remaining().saturating_add(ANSWER_MARGIN));
        fetch.wait().await;
        self.verify_cached(token)
    }
}

/// Time asked of Envoy beyond a refetch's deadline, to verify and answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

enum Refusal {
    Missing,
    Invalid(&'static str),
    /// The token names a `kid` no key in force carries: invalid, and for a JWKS URL
    /// a reason to look again.
    UnknownKid,
    Unavailable,
}

impl Refusal {
    fn invalid(reason: &'static str) -> Self {
        Refusal::Invalid(reason)
    }

    fn response(&self) -> ImmediateResponse {
        match self {
            // gRPC clients get UNAUTHENTICATED (16) / UNAVAILABLE (14).
            Refusal::Missing => ImmediateResponse::json_error(401, "missing bearer token")
                .header("www-authenticate", "Bearer")
                .grpc_status(16),
            Refusal::Invalid(reason) => ImmediateResponse::json_error(401, reason)
                .header("www-authenticate", "Bearer error=\"invalid_token\"")
                .grpc_status(16),
            Refusal::UnknownKid => Refusal::Invalid("no key for this token").response(),
            Refusal::Unavailable => {
                ImmediateResponse::json_error(503, "token signing keys are not available yet")
                    .header("retry-after", "1")
                    .grpc_status(14)
            }
        }
    }
}

fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidAudience => "audience not accepted",
        ErrorKind::InvalidIssuer => "issuer not accepted",
        ErrorKind::InvalidSignature => "invalid signature",
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not accepted",
        _ => "malformed token",
    }
}

/// `Bearer <token>`, scheme case-insensitive.
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A claim name as a header name: the prefix, then the claim lower-cased, each
/// character HTTP does not allow in a header name (anything but an ASCII token
/// character) replaced by `-`. Always a valid header name.
fn claim_header(prefix: &str, claim: &str) -> String {
    let mut name = String::with_capacity(prefix.len() + claim.len());
    name.extend(prefix.chars().map(|c| c.to_ascii_lowercase()));
    for c in claim.chars() {
        let c = c.to_ascii_lowercase();
        // One lower-case character, checked in place: no copy per character.
        let token = c.is_ascii() && is_valid_header_name(c.encode_utf8(&mut [0; 4]));
        name.push(if token { c } else { '-' });
    }
    name
}

/// A claim's header value. Strings go as they are when a header can carry them;
/// other JSON values, and strings with a control character, are compact JSON, whose
/// string escapes cover every control character but DEL (0x7f), which is escaped
/// here too (`\u007f`, still valid JSON). Always a valid header value.
fn claim_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) if is_valid_header_value(s.as_bytes()) => s.clone(),
        other => {
            let json = other.to_string();
            if json.contains('\u{7f}') {
                json.replace('\u{7f}', "\\u007f")
            } else {
                json
            }
        }
    }
}

impl ProcessorSettings for JwtSettings {
    type Processor = JwtAuth;

    fn build(&self, ctx: &BuildContext<'_>) -> Result<JwtAuth, String> {
        if !ctx.is_serving() {
            return JwtAuth::unstarted(self.clone());
        }
        let metrics = match ctx.metrics().filter(|_| self.jwks_url.is_some()) {
            Some(families) => Some(
                JwksMetrics::new(families, ctx.route())
                    .map_err(|e| format!("the JWKS counters: {e}"))?,
            ),
            None => None,
        };
        JwtAuth::observed(self.clone(), metrics)
    }

    fn validate(&self) -> Result<(), String> {
        JwtSettings::validate(self)
    }

    fn redacted(&self) -> Self {
        JwtSettings::redacted(self)
    }

    fn request_header_writes(&self) -> RequestHeaderWrites {
        // Writes only under its own prefix, having removed what was there.
        RequestHeaderWrites::Names(Vec::new())
    }

    fn claim_header_prefix(&self) -> Option<&str> {
        Some(&self.claim_header_prefix)
    }
}

impl Processor for JwtAuth {
    type State = ();

    fn new_state(&self) {}

    fn name(&self) -> &str {
        "jwt_auth"
    }

    fn needs(&self) -> PhaseNeeds {
        PhaseNeeds::REQUEST_HEADERS
    }

    async fn on_request_headers(
        &self,
        ctx: &mut RequestCtx,
        _: &mut (),
        h: &HeadersPhase,
        out: &mut Mutations,
    ) -> HookResult {
        let claims = match h.headers.get("authorization").and_then(|v| bearer(v)) {
            None => Err(Refusal::Missing),
            Some(token) => self.authenticate(ctx, token).await,
        };
        let forwarded = match claims {
            Ok(c) => c,
            Err(refusal) => return Ok(Flow::Respond(refusal.response())),
        };
        let prefix = &self.settings.claim_header_prefix;
        // No spoofing: whatever reached this point under the prefix, in any spelling
        // an upstream may read as a claim header, did not come from this token.
        for (name, _) in h.headers.iter() {
            if is_claim_header(name, prefix) {
                out.remove(name);
            }
        }
        for (name, value) in &forwarded.headers {
            if let Err(e) = out.try_set(name.clone(), value.clone()) {
                // Not reachable (both are built valid); never forward it half-checked.
                tracing::debug!(error = %e, "claim left out");
            }
        }
        if let Some(payload) = &forwarded.payload {
            out.set_metadata_shared(
                self.settings.metadata_namespace.clone(),
                self.settings.payload_in_metadata.clone(),
                payload.clone(),
            );
        }
        out.clear_route_cache();
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
    }

    #[test]
    fn claim_names_and_values_become_valid_headers() {
        assert_eq!(claim_header("decoded-", "Sub"), "decoded-sub");
        assert_eq!(
            claim_header("decoded-", "https://x/roles"),
            "decoded-https---x-roles"
        );
        assert_eq!(claim_value(&serde_json::json!("alice")), "alice");
        assert_eq!(claim_value(&serde_json::json!(["a", 1])), r#"["a",1]"#);
        assert_eq!(claim_value(&serde_json::json!(42)), "42");
        assert_eq!(claim_value(&serde_json::json!("a\nb")), r#""a\nb""#);
    }

    #[test]
    fn claim_headers_are_recognised_in_every_spelling() {
        for name in [
            "decoded-sub",
            "decoded_sub",
            "Decoded-Sub",
            "DECODED_sub",
            "decoded-",
            "decoded_",
            "dEcOdEd-x_y",
        ] {
            assert!(is_claim_header(name, "decoded-"), "{name}");
        }
        for name in [
            "decoded",
            "decodedsub",
            "x-decoded-sub",
            "",
            "decoded.sub",
            "décoded-",
        ] {
            assert!(!is_claim_header(name, "decoded-"), "{name}");
        }
        // The prefix itself may be spelled either way.
        assert!(is_claim_header("x-claim-sub", "X_Claim_"));
    }

    #[test]
    fn every_claim_becomes_a_valid_header() {
        use crate::phase::{is_valid_header_name, is_valid_header_value};
        assert_eq!(claim_header("Decoded-", "Ünï cødé"), "decoded--n--c-d-");
        assert_eq!(claim_header("decoded-", ""), "decoded-");
        assert_eq!(claim_value(&serde_json::json!("a\u{7f}b")), r#""a\u007fb""#);
        assert_eq!(
            claim_value(&serde_json::json!({"k\u{7f}": ["\u{1}", "\t"]})),
            r#"{"k\u007f":["\u0001","\t"]}"#
        );
        assert_eq!(claim_value(&serde_json::json!("tab\tok")), "tab\tok");
        for claim in [
            "sub",
            "ü",
            "a b",
            "\u{0}",
            "x\u{7f}",
            "https://x/y",
            "Ωmega",
        ] {
            assert!(
                is_valid_header_name(&claim_header("decoded-", claim)),
                "{claim:?}"
            );
        }
        for v in [
            serde_json::json!("\u{0}\r\n\u{7f}é"),
            serde_json::json!([1, "\u{7f}", {"\u{7f}": null}]),
            serde_json::json!(null),
        ] {
            assert!(is_valid_header_value(claim_value(&v).as_bytes()), "{v}");
        }
    }

    fn settings(yaml: &str) -> JwtSettings {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn settings_validation() {
        assert!(settings("jwks_file: k.json").validate().is_ok());
        let e = settings("{}").validate().unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e = settings("{jwks_file: a, pem_file: b}")
            .validate()
            .unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        let e = settings("{jwks_file: a, algorithms: [none]}")
            .validate()
            .unwrap_err();
        assert!(e.contains("never accepted"), "{e}");
        let e = settings("{pem_file: a, algorithms: [HS256]}")
            .validate()
            .unwrap_err();
        assert!(e.contains("shared secret"), "{e}");
        let e = settings("{jwks_url: 'ftp://x/y'}").validate().unwrap_err();
        assert!(e.contains("http"), "{e}");
        let e = settings("{jwks_file: a, algorithms: [RS999]}")
            .validate()
            .unwrap_err();
        assert!(e.contains("unknown algorithm"), "{e}");
    }

    #[test]
    fn redaction_hides_url_query() {
        let s = settings("jwks_url: 'https://idp/keys?token=secret'").redacted();
        assert_eq!(s.jwks_url.as_deref(), Some("https://idp/keys?REDACTED"));
    }
}
