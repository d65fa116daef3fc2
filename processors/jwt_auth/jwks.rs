//! Verification keys for `jwt_auth`: loaded from a JWKS file, a PEM file, or a JWKS URL
//! fetched and refreshed in the background.
//!
//! A key remembers its family (RSA, EC curve, Ed25519, HMAC) so a token can only be
//! checked with an algorithm of that family: an RSA public key is never used as an
//! HMAC secret, the classic algorithm-confusion attack.
//!
//! A JWKS URL is a remote server: each fetch has one deadline for all of it (connect,
//! headers, body) and a size cap, whatever it brings that is not a usable JWKS leaves
//! the last good keys in force, its `Cache-Control: max-age` may shorten the refresh
//! within bounds, and a token naming a `kid` the keys lack (a rotation) triggers one
//! rate-limited refetch that the request waits for.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::body::Body as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::metrics::{FetchResult, JwksMetrics, UnknownKid};

/// What kind of key this is, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    /// RSA: RS256/384/512, PS256/384/512.
    Rsa,
    /// EC P-256: ES256.
    EcP256,
    /// EC P-384: ES384.
    EcP384,
    /// Ed25519: EdDSA.
    Ed25519,
    /// Shared secret: HS256/384/512.
    Hmac,
}

impl KeyFamily {
    /// Whether a token signed with `alg` may be verified with a key of this family.
    pub fn allows(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyFamily::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyFamily::EcP256 => alg == ES256,
            KeyFamily::EcP384 => alg == ES384,
            KeyFamily::Ed25519 => alg == EdDSA,
            KeyFamily::Hmac => matches!(alg, HS256 | HS384 | HS512),
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub struct Key {
    /// `kid` from the JWKS, used to pick the key a token names.
    pub kid: Option<String>,
    /// The key's family.
    pub family: KeyFamily,
    /// The algorithm the JWKS pins this key to, if any.
    pub alg: Option<Algorithm>,
    /// The key itself.
    pub key: DecodingKey,
}

/// The keys in force for one `jwt_auth` processor.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    /// SHA-256 of the JWKS document the keys came from: a refresh that brings the same
    /// document keeps the set in force (and the tokens verified with it).
    digest: Option<[u8; 32]>,
}

impl KeySet {
    /// Parses a JWKS document. Keys for encryption, of unsupported types or malformed
    /// are skipped (counted in one log line, never quoted); a set with no usable key is
    /// an error. One key a parser does not know (a new key type) does not make the
    /// whole document unusable.
    pub fn from_jwks(json: &[u8]) -> Result<KeySet, String> {
        /// The document's shape, keys still raw so each can fail on its own.
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document = serde_json::from_slice(json).map_err(|e| json_error(&e))?;
        let mut keys = Vec::new();
        let (mut unsupported, mut malformed) = (0usize, 0usize);
        for value in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                malformed += 1;
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => KeyFamily::EcP256,
                    EllipticCurve::P384 => KeyFamily::EcP384,
                    _ => {
                        unsupported += 1;
                        continue;
                    }
                },
                AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Ed25519,
                AlgorithmParameters::OctetKey(_) => KeyFamily::Hmac,
                _ => {
                    unsupported += 1;
                    continue;
                }
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                malformed += 1;
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::try_from(a).ok());
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                family,
                alg,
                key,
            });
        }
        if unsupported + malformed > 0 {
            // Counts only: a key's fields (and an error quoting them) stay out of logs.
            tracing::warn!(
                usable = keys.len(),
                unsupported,
                malformed,
                "skipping JWKS keys that cannot verify tokens"
            );
        }
        if keys.is_empty() {
            return Err("JWKS has no usable signing key".into());
        }
        Ok(KeySet {
            keys,
            digest: Some(Sha256::digest(json).into()),
        })
    }

    /// Parses one PEM public key (RSA, EC P-256/P-384 or Ed25519).
    pub fn from_pem(pem: &[u8]) -> Result<KeySet, String> {
        // Only a `PUBLIC KEY` block: a private key would parse too, then fail every
        // token as "invalid signature" without ever saying why.
        if SubjectPublicKeyInfoDer::from_pem_slice(pem).is_err() {
            return Err(
                "expected a `-----BEGIN PUBLIC KEY-----` PEM (RSA, EC P-256/P-384 or Ed25519)"
                    .into(),
            );
        }
        type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
        let attempts: [(KeyFamily, Parse); 3] = [
            (KeyFamily::Rsa, DecodingKey::from_rsa_pem),
            (KeyFamily::EcP256, DecodingKey::from_ec_pem),
            (KeyFamily::Ed25519, DecodingKey::from_ed_pem),
        ];
        for (family, parse) in attempts {
            if let Ok(key) = parse(pem) {
                let family = match family {
                    KeyFamily::EcP256 if ec_pem_is_p384(pem) => KeyFamily::EcP384,
                    f => f,
                };
                return Ok(KeySet {
                    keys: vec![Key {
                        kid: None,
                        family,
                        alg: None,
                        key,
                    }],
                    digest: None,
                });
            }
        }
        Err("not a PEM public key (RSA, EC P-256/P-384 or Ed25519)".into())
    }

    /// Keys that may verify a token with this `kid` and algorithm: the named key when
    /// the token names one, otherwise every key of a compatible family.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            let kid_ok = match (kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => true,
                (None, _) => true,
            };
            kid_ok && k.family.allows(alg) && k.alg.is_none_or(|a| a == alg)
        })
    }

    /// Whether a key of the set carries this `kid`. A token naming a kid no key
    /// carries was signed with a key published after these were fetched (a rotation),
    /// or is forged: either way worth one rate-limited look at the JWKS URL.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether any key is a shared secret.
    pub fn has_hmac(&self) -> bool {
        self.keys.iter().any(|k| k.family == KeyFamily::Hmac)
    }
}

/// Whether an EC public key PEM is on P-384, read from its SubjectPublicKeyInfo:
/// `SEQUENCE { SEQUENCE { id-ecPublicKey, namedCurve }, BIT STRING }` whose named
/// curve is secp384r1 (1.3.132.0.34); P-256 otherwise. Parsed rather than searched
/// for the OID's bytes, which could also occur inside the key itself.
fn ec_pem_is_p384(pem: &[u8]) -> bool {
    use simple_asn1::{oid, ASN1Block};
    let Ok(der) = SubjectPublicKeyInfoDer::from_pem_slice(pem) else {
        return false;
    };
    let Ok(blocks) = simple_asn1::from_der(der.as_ref()) else {
        return false;
    };
    let [ASN1Block::Sequence(_, spki)] = blocks.as_slice() else {
        return false;
    };
    let [ASN1Block::Sequence(_, algorithm), ASN1Block::BitString(..)] = spki.as_slice() else {
        return false;
    };
    matches!(
        algorithm.as_slice(),
        [ASN1Block::ObjectIdentifier(_, alg), ASN1Block::ObjectIdentifier(_, curve)]
            if *alg == oid!(1, 2, 840, 10045, 2, 1) && *curve == oid!(1, 3, 132, 0, 34)
    )
}

/// Where keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS file read at start.
    JwksFile(PathBuf),
    /// A PEM public key file read at start.
    PemFile(PathBuf),
    /// A JWKS URL fetched in the background, and again when a token names a `kid` the
    /// keys in force lack.
    JwksUrl(UrlSource),
}

/// A JWKS URL and the limits of fetching it: a URL is a remote server the gateway
/// must not wait on, trust with its memory, or hammer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlSource {
    /// `http://` or `https://` URL.
    pub url: http::Uri,
    /// Longest time between fetches, and the time used when the server's
    /// `Cache-Control` sets none.
    pub refresh: Duration,
    /// Extra CA certificates (PEM) trusted for this URL, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// One deadline for a whole fetch: connecting, TLS, the response headers and the
    /// whole body. A server that stalls anywhere is a failed fetch, not a stuck one.
    pub fetch_timeout: Duration,
    /// Largest document accepted; a larger one is a failed fetch (read no further).
    pub max_bytes: usize,
    /// Least time between two fetches made for tokens naming an unknown `kid` (anyone
    /// can send such a token), and the shortest refresh a server's `max-age` may ask
    /// for.
    pub min_refetch: Duration,
}

/// Default [`UrlSource::max_bytes`]: a JWKS of a few dozen keys is a few tens of KiB.
pub const DEFAULT_MAX_JWKS_BYTES: usize = 1024 * 1024;

/// `at` plus `by`, or far enough ahead when that overflows (`by` comes from config).
fn later(at: tokio::time::Instant, by: Duration) -> tokio::time::Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(at)
}

/// First retry after a failed fetch; doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Time past a fetch's deadline after which a fetch still marked under way is taken
/// for lost (its task ended without reporting, e.g. at runtime shutdown).
const SETTLE: Duration = Duration::from_millis(250);

/// The key set in force, swapped whole when a refresh succeeds; the last good set stays
/// when one fails.
#[derive(Default)]
pub struct KeyStore {
    current: RwLock<Option<Arc<KeySet>>>,
}

impl KeyStore {
    /// A store holding `set`.
    pub fn with(set: KeySet) -> Self {
        Self {
            current: RwLock::new(Some(Arc::new(set))),
        }
    }

    /// The keys in force (`None` until a URL's first fetch succeeds).
    pub fn get(&self) -> Option<Arc<KeySet>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the keys.
    pub fn set(&self, set: KeySet) {
        let new = Some(Arc::new(set));
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(p) => *p.into_inner() = new,
        }
    }

    /// Replaces the keys unless `set` was parsed from the same document as the keys in
    /// force, so a refresh that changes nothing keeps the tokens verified so far.
    /// Returns the keys in force afterwards, and whether they were replaced.
    pub fn update(&self, set: KeySet) -> (Arc<KeySet>, bool) {
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(current) = guard.as_ref() {
            if current.digest.is_some() && current.digest == set.digest {
                return (current.clone(), false);
            }
        }
        let new = Arc::new(set);
        *guard = Some(new.clone());
        (new, true)
    }

    fn seeded(seed: Option<Arc<KeySet>>) -> Self {
        Self {
            current: RwLock::new(seed),
        }
    }
}

/// The keys of one `jwt_auth` processor.
pub enum Keys {
    /// Read from a file at start, for good.
    Fixed(Arc<KeySet>),
    /// Fetched from a JWKS URL.
    Remote(Arc<RemoteKeys>),
}

impl Keys {
    /// The keys in force (`None` until a URL's first fetch succeeds).
    pub fn get(&self) -> Option<Arc<KeySet>> {
        match self {
            Keys::Fixed(set) => Some(set.clone()),
            Keys::Remote(remote) => remote.store.get(),
        }
    }

    /// The URL source, when the keys come from one.
    pub fn remote(&self) -> Option<&Arc<RemoteKeys>> {
        match self {
            Keys::Fixed(_) => None,
            Keys::Remote(remote) => Some(remote),
        }
    }

    /// Starts fetching a URL source in the background (when a Tokio runtime is
    /// running); nothing for a file. Separate from [`load`] so a config can be checked
    /// without a fetch.
    pub fn start(&self) {
        if let Keys::Remote(remote) = self {
            remote.start();
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Loads the keys of a file source now. A URL source starts with the last good keys a
/// processor still running holds for the same URL and CA file (a config reload serves
/// on without a gap, even while the URL is down), or with none; it fetches only once
/// [`Keys::start`] is called. `metrics` counts its fetches.
pub fn load(source: &KeySource, metrics: Option<JwksMetrics>) -> Result<Keys, String> {
    match source {
        KeySource::JwksFile(p) => KeySet::from_jwks(&read(p)?)
            .map(|s| Keys::Fixed(Arc::new(s)))
            .map_err(|e| format!("{}: {e}", p.display())),
        KeySource::PemFile(p) => KeySet::from_pem(&read(p)?)
            .map(|s| Keys::Fixed(Arc::new(s)))
            .map_err(|e| format!("{}: {e}", p.display())),
        KeySource::JwksUrl(source) => {
            let client = client(source.ca_file.as_deref())?;
            Ok(Keys::Remote(Arc::new(RemoteKeys {
                shown: shown_url(&source.url),
                store: KeyStore::seeded(last_good(source)),
                source: source.clone(),
                client,
                flight: Mutex::new(Flight::default()),
                metrics,
            })))
        }
    }
}

/// A URL as logged: without user info or query string, either of which may carry a
/// credential.
fn shown_url(url: &http::Uri) -> String {
    let mut shown = String::new();
    if let Some(scheme) = url.scheme_str() {
        shown.push_str(scheme);
        shown.push_str("://");
    }
    if let Some(authority) = url.authority() {
        let host = authority.as_str().rsplit('@').next().unwrap_or_default();
        shown.push_str(host);
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?REDACTED");
    }
    shown
}

/// Last good keys per URL and CA file, held weakly: whatever processor still holds
/// them (the one a reload replaces) keeps them alive, the map never does.
type LastGood = Vec<(http::Uri, Option<PathBuf>, Weak<KeySet>)>;

static LAST_GOOD: Mutex<LastGood> = Mutex::new(Vec::new());

fn last_good_map() -> std::sync::MutexGuard<'static, LastGood> {
    match LAST_GOOD.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn last_good(source: &UrlSource) -> Option<Arc<KeySet>> {
    last_good_map()
        .iter()
        .find(|(url, ca, _)| *url == source.url && *ca == source.ca_file)
        .and_then(|(_, _, keys)| keys.upgrade())
}

fn remember(source: &UrlSource, keys: &Arc<KeySet>) {
    let mut map = last_good_map();
    map.retain(|(url, ca, held)| {
        held.strong_count() > 0 && !(*url == source.url && *ca == source.ca_file)
    });
    map.push((
        source.url.clone(),
        source.ca_file.clone(),
        Arc::downgrade(keys),
    ));
}

/// A failed fetch: its metric label and a description that never quotes the body.
#[derive(Debug)]
struct FetchError {
    result: FetchResult,
    detail: String,
}

impl FetchError {
    fn new(result: FetchResult, detail: impl Into<String>) -> Self {
        Self {
            result,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// How a fetch ended, as the refresh schedule needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Keys in force; how long the server said they stay fresh, if it said.
    Loaded(Option<Duration>),
    /// Nothing usable arrived; the last good keys stay.
    Failed,
}

/// A fetch under way, for whoever waits on it.
#[derive(Clone)]
pub struct PendingFetch {
    done: watch::Receiver<Option<Outcome>>,
    deadline: tokio::time::Instant,
}

impl PendingFetch {
    /// Time left until the fetch's deadline: the longest a request waits for it.
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// Waits until the fetch ends (its deadline bounds it); the new keys, if any, are
    /// then in force.
    pub async fn wait(self) {
        self.outcome().await;
    }

    async fn outcome(mut self) -> Outcome {
        let ended = tokio::time::timeout_at(later(self.deadline, SETTLE), async {
            match self.done.wait_for(Option::is_some).await {
                Ok(outcome) => *outcome,
                Err(_) => None,
            }
        })
        .await;
        match ended {
            Ok(Some(outcome)) => outcome,
            _ => Outcome::Failed,
        }
    }

    /// Still worth waiting on: not reported, its task alive, its deadline not long
    /// past.
    fn live(&self) -> bool {
        self.done.borrow().is_none()
            && self.done.has_changed().is_ok()
            && tokio::time::Instant::now() < later(self.deadline, SETTLE)
    }
}

/// The fetch under way and the pacing of unknown-`kid` refetches.
#[derive(Default)]
struct Flight {
    current: Option<PendingFetch>,
    last_refetch: Option<Instant>,
}

/// Keys fetched from a JWKS URL: one fetch at a time (the background refresh and
/// unknown-`kid` refetches share it), each bounded by one deadline and a size cap;
/// the last good keys stay in force whatever a fetch brings.
pub struct RemoteKeys {
    source: UrlSource,
    shown: String,
    client: HttpsClient,
    store: KeyStore,
    flight: Mutex<Flight>,
    metrics: Option<JwksMetrics>,
}

impl RemoteKeys {
    /// The keys in force (`None` until the first fetch succeeds).
    pub fn get(&self) -> Option<Arc<KeySet>> {
        self.store.get()
    }

    /// For a token naming a `kid` the keys lack (a key rotated in since the last
    /// fetch): starts a fetch and returns it for the request to wait on. `None`, and
    /// the token is refused as it stands, when a fetch is already under way or the last
    /// refetch started less than `min_refetch` ago: anyone can mint such tokens, and
    /// they must not turn into load on the key server.
    pub fn refetch_for_unknown_kid(self: &Arc<Self>) -> Option<PendingFetch> {
        let mut flight = self.lock_flight();
        if flight.current.as_ref().is_some_and(PendingFetch::live) {
            self.count_unknown_kid(UnknownKid::InFlight);
            return None;
        }
        if flight
            .last_refetch
            .is_some_and(|t| t.elapsed() < self.source.min_refetch)
        {
            self.count_unknown_kid(UnknownKid::RateLimited);
            return None;
        }
        let pending = self.launch(&mut flight)?;
        flight.last_refetch = Some(Instant::now());
        self.count_unknown_kid(UnknownKid::Refetched);
        Some(pending)
    }

    fn lock_flight(&self) -> std::sync::MutexGuard<'_, Flight> {
        match self.flight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The fetch under way, or a new one.
    fn join_or_launch(self: &Arc<Self>) -> Option<PendingFetch> {
        let mut flight = self.lock_flight();
        if let Some(current) = flight.current.as_ref().filter(|c| c.live()) {
            return Some(current.clone());
        }
        self.launch(&mut flight)
    }

    /// Starts a fetch on its own task, so it completes (and its keys count) even when
    /// the request that asked for it is gone.
    fn launch(self: &Arc<Self>, flight: &mut Flight) -> Option<PendingFetch> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let deadline = later(tokio::time::Instant::now(), self.source.fetch_timeout);
        let (tx, rx) = watch::channel(None);
        let pending = PendingFetch { done: rx, deadline };
        flight.current = Some(pending.clone());
        let me = self.clone();
        handle.spawn(async move {
            let outcome = me.fetch_and_store(deadline).await;
            let mut flight = me.lock_flight();
            // Only this fetch's own mark: one taken for lost may have been replaced.
            if flight
                .current
                .as_ref()
                .is_some_and(|c| c.deadline == deadline)
            {
                flight.current = None;
            }
            drop(flight);
            tx.send_replace(Some(outcome));
        });
        Some(pending)
    }

    async fn fetch_and_store(&self, deadline: tokio::time::Instant) -> Outcome {
        let result = fetch_with(
            &self.client,
            &self.source.url,
            deadline,
            self.source.max_bytes,
        )
        .await;
        match result {
            Ok(fetched) => {
                self.count_fetch(FetchResult::Ok);
                let count = fetched.keys.len();
                let (keys, replaced) = self.store.update(fetched.keys);
                remember(&self.source, &keys);
                if replaced {
                    tracing::info!(url = %self.shown, keys = count, "JWKS loaded");
                } else {
                    tracing::debug!(url = %self.shown, keys = count, "JWKS unchanged");
                }
                Outcome::Loaded(fetched.fresh_for)
            }
            Err(e) => {
                self.count_fetch(e.result);
                let kept = self.store.get().map_or(0, |s| s.len());
                tracing::warn!(
                    url = %self.shown,
                    result = e.result.as_str(),
                    error = %e,
                    kept_keys = kept,
                    "JWKS fetch failed; keeping the last good keys"
                );
                Outcome::Failed
            }
        }
    }

    fn count_fetch(&self, result: FetchResult) {
        if let Some(m) = &self.metrics {
            m.fetched(result);
        }
    }

    fn count_unknown_kid(&self, outcome: UnknownKid) {
        if let Some(m) = &self.metrics {
            m.unknown_kid(outcome);
        }
    }

    /// Starts the background refresh (when a Tokio runtime is running): fetch now, then
    /// again when the keys go stale ([`next_refresh`]); after a failure sooner (1 s
    /// doubling up to `refresh`). Stops once the processor is dropped (a reload
    /// replaced it), before fetching again.
    fn start(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        handle.spawn(refresh_loop(weak));
    }
}

async fn refresh_loop(remote: Weak<RemoteKeys>) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(me) = remote.upgrade() else {
            return;
        };
        let (refresh, floor) = (me.source.refresh, me.source.min_refetch);
        let pending = me.join_or_launch();
        // Held only by the fetch itself while it runs, never across the sleep.
        drop(me);
        let outcome = match pending {
            Some(p) => p.outcome().await,
            None => Outcome::Failed,
        };
        let wait = match outcome {
            Outcome::Loaded(fresh_for) => {
                retry = FIRST_RETRY;
                next_refresh(fresh_for, refresh, floor)
            }
            Outcome::Failed => {
                let wait = retry.min(refresh);
                retry = retry.saturating_mul(2).min(refresh);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// When to fetch again after a good answer: the freshness the server gave
/// (`Cache-Control: max-age` less `Age`), kept between `floor` (the unknown-`kid`
/// refetch interval: a server cannot make the gateway fetch more often) and `refresh`
/// (the operator's interval: nor less often); `refresh` when the server gave none.
pub fn next_refresh(fresh_for: Option<Duration>, refresh: Duration, floor: Duration) -> Duration {
    match fresh_for {
        None => refresh,
        // max then min rather than clamp: a floor above `refresh` must not panic.
        Some(fresh) => fresh.max(floor).min(refresh),
    }
}

/// How long a response says it stays fresh: its `Cache-Control: max-age` less its
/// `Age`. `None` when it sets no `max-age`, or `no-store`/`no-cache` (then the refresh
/// interval applies), or when the value is unreadable. The first `max-age` counts
/// (RFC 9111 section 4.2.1).
pub fn freshness(headers: &http::HeaderMap) -> Option<Duration> {
    let mut max_age = None;
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for directive in text.split(',') {
            let (name, arg) = match directive.split_once('=') {
                Some((name, arg)) => (name.trim(), Some(arg.trim().trim_matches('"'))),
                None => (directive.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
                return None;
            }
            if name.eq_ignore_ascii_case("max-age") && max_age.is_none() {
                max_age = Some(arg.and_then(seconds));
            }
        }
    }
    let max_age = max_age.flatten()?;
    let age = headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| seconds(v.trim()))
        .unwrap_or(0);
    Some(Duration::from_secs(max_age.saturating_sub(age)))
}

/// Delta-seconds: digits only; too many digits reads as "practically forever"
/// (RFC 9111 section 1.2.2).
fn seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(u64::MAX))
}

/// A JSON error as a position and a kind: serde's own message can quote a value of the
/// document, and a JWKS value is key material.
fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Data => format!("not a JWKS document ({at})"),
        Category::Syntax | Category::Eof | Category::Io => format!("not JSON ({at})"),
    }
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let pem = read(path)?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: bad certificate: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable certificate: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no certificate found", path.display()));
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<bytes::Bytes>,
>;

fn client(ca_file: Option<&Path>) -> Result<HttpsClient, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(ca_file)?)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

/// Fetches and parses a JWKS document once, with the default limits (10 s, 1 MiB).
pub async fn fetch(url: &http::Uri, ca_file: Option<&Path>) -> Result<KeySet, String> {
    let client = client(ca_file)?;
    let deadline = later(tokio::time::Instant::now(), Duration::from_secs(10));
    fetch_with(&client, url, deadline, DEFAULT_MAX_JWKS_BYTES)
        .await
        .map(|f| f.keys)
        .map_err(|e| format!("{}: {e}", shown_url(url)))
}

/// A good answer.
struct Fetched {
    keys: KeySet,
    fresh_for: Option<Duration>,
}

/// One GET, all of it (connect, headers, body) before `deadline`, the body no larger
/// than `max_bytes`.
async fn fetch_with(
    client: &HttpsClient,
    url: &http::Uri,
    deadline: tokio::time::Instant,
    max_bytes: usize,
) -> Result<Fetched, FetchError> {
    let req = http::Request::get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| FetchError::new(FetchResult::Transport, format!("bad request: {e}")))?;
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| FetchError::new(FetchResult::Transport, error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::new(
                FetchResult::HttpStatus,
                format!("HTTP {status}"),
            ));
        }
        let fresh_for = freshness(resp.headers());
        let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX);
        let declared = resp.body().size_hint().lower();
        if declared > limit {
            return Err(FetchError::new(
                FetchResult::TooLarge,
                format!("{declared} bytes declared, over max_jwks_bytes ({max_bytes})"),
            ));
        }
        let body = Limited::new(resp.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    FetchError::new(
                        FetchResult::TooLarge,
                        format!("body over max_jwks_bytes ({max_bytes})"),
                    )
                } else {
                    FetchError::new(FetchResult::Transport, format!("reading the body: {e}"))
                }
            })?
            .to_bytes();
        let keys =
            KeySet::from_jwks(&body).map_err(|e| FetchError::new(FetchResult::Invalid, e))?;
        Ok(Fetched { keys, fresh_for })
    };
    tokio::time::timeout_at(deadline, work).await.map_err(|_| {
        FetchError::new(
            FetchResult::Timeout,
            "no complete answer before the fetch deadline (fetch_timeout)",
        )
    })?
}

/// An error and its causes on one line (the client's own message is only "client
/// error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_curve_of_an_ec_pem_is_read_from_its_key_info() {
        let pem = |alg| {
            rcgen::KeyPair::generate_for(alg)
                .unwrap()
                .public_key_pem()
                .into_bytes()
        };
        assert!(ec_pem_is_p384(&pem(&rcgen::PKCS_ECDSA_P384_SHA384)));
        assert!(!ec_pem_is_p384(&pem(&rcgen::PKCS_ECDSA_P256_SHA256)));
        assert!(!ec_pem_is_p384(&pem(&rcgen::PKCS_ED25519)));
        assert!(!ec_pem_is_p384(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        ));
    }

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn cache_control_max_age_is_read() {
        let s = Duration::from_secs;
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<Duration>);
        let cases: &[Case] = &[
            (&[], None),
            (&[("cache-control", "max-age=60")], Some(s(60))),
            (
                &[("cache-control", "public, Max-Age = \"120\"")],
                Some(s(120)),
            ),
            (&[("cache-control", "max-age=60, no-store")], None),
            (
                &[
                    ("cache-control", "no-cache"),
                    ("cache-control", "max-age=5"),
                ],
                None,
            ),
            (&[("cache-control", "max-age=abc")], None),
            (&[("cache-control", "max-age=-1")], None),
            (&[("cache-control", "max-age=")], None),
            (&[("cache-control", "max-age")], None),
            // The first occurrence counts.
            (&[("cache-control", "max-age=10, max-age=99")], Some(s(10))),
            (
                &[
                    ("cache-control", "max-age=10"),
                    ("cache-control", "max-age=99"),
                ],
                Some(s(10)),
            ),
            // Age already spent in a cache is taken off.
            (
                &[("cache-control", "max-age=60"), ("age", "45")],
                Some(s(15)),
            ),
            (
                &[("cache-control", "max-age=60"), ("age", "600")],
                Some(s(0)),
            ),
            (
                &[("cache-control", "max-age=60"), ("age", "junk")],
                Some(s(60)),
            ),
            (
                &[("cache-control", "max-age=99999999999999999999999999")],
                Some(s(u64::MAX)),
            ),
            (&[("cache-control", "s-maxage=60")], None),
        ];
        for (pairs, want) in cases {
            assert_eq!(freshness(&headers(pairs)), *want, "{pairs:?}");
        }
        // A value that is not visible ASCII is ignored, not an error.
        let mut map = http::HeaderMap::new();
        map.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_bytes(b"max-age=\xff").unwrap(),
        );
        assert_eq!(freshness(&map), None);
    }

    #[test]
    fn refresh_follows_max_age_within_bounds() {
        let s = Duration::from_secs;
        let (refresh, floor) = (s(300), s(30));
        assert_eq!(next_refresh(None, refresh, floor), refresh);
        assert_eq!(next_refresh(Some(s(60)), refresh, floor), s(60));
        assert_eq!(next_refresh(Some(s(0)), refresh, floor), floor);
        assert_eq!(next_refresh(Some(s(5)), refresh, floor), floor);
        assert_eq!(next_refresh(Some(s(86_400)), refresh, floor), refresh);
        assert_eq!(next_refresh(Some(s(u64::MAX)), refresh, floor), refresh);
        // A floor above the refresh interval: the refresh interval wins, no panic.
        assert_eq!(next_refresh(Some(s(0)), s(1), s(30)), s(1));
        assert_eq!(next_refresh(Some(s(60)), s(1), s(30)), s(1));
    }

    #[test]
    fn json_errors_never_quote_the_document() {
        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA";
        for doc in [
            format!(r#"{{"keys": "{secret}"}}"#),
            format!(r#"{{"keys": [{{"kty": "oct", "k": 5}}], "x": "{secret}"}}"#),
            format!(r#"["{secret}"]"#),
            format!(r#"{{"keys": [{secret}]}}"#),
            format!("{secret} not json"),
        ] {
            let e = KeySet::from_jwks(doc.as_bytes()).err().expect("refused");
            assert!(!e.contains(secret), "{e}");
            assert!(
                e.contains("not JSON") || e.contains("not a JWKS") || e.contains("no usable"),
                "{e}"
            );
        }
    }

    #[test]
    fn one_bad_key_does_not_spoil_the_document() {
        let good = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jwt/jwks.json"),
        )
        .unwrap();
        let mut doc: serde_json::Value = serde_json::from_slice(&good).unwrap();
        let keys = doc["keys"].as_array_mut().unwrap();
        keys.push(serde_json::json!({"kty": "AKP", "kid": "future-key", "pub": "abc"}));
        keys.push(serde_json::json!({"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}));
        keys.push(serde_json::json!("not a key"));
        let set = KeySet::from_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.has_kid("example-rsa") && set.has_kid("example-ec"));
        assert!(!set.has_kid("future-key") && !set.has_kid("broken"));
    }

    #[test]
    fn the_same_document_keeps_the_set_in_force() {
        let doc = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/jwt/jwks.json"),
        )
        .unwrap();
        let store = KeyStore::default();
        let (first, replaced) = store.update(KeySet::from_jwks(&doc).unwrap());
        assert!(replaced);
        let (again, replaced) = store.update(KeySet::from_jwks(&doc).unwrap());
        assert!(!replaced);
        assert!(Arc::ptr_eq(&first, &again));
        let mut other: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        other["keys"].as_array_mut().unwrap().pop();
        let (changed, replaced) =
            store.update(KeySet::from_jwks(other.to_string().as_bytes()).unwrap());
        assert!(replaced);
        assert_eq!(changed.len(), 1);
    }

    #[test]
    fn logged_urls_hide_credentials() {
        let url: http::Uri = "https://idp.example.com:8443/keys?api_key=s3cr3t"
            .parse()
            .unwrap();
        assert_eq!(
            shown_url(&url),
            "https://idp.example.com:8443/keys?REDACTED"
        );
        let url: http::Uri = "http://127.0.0.1/jwks.json".parse().unwrap();
        assert_eq!(shown_url(&url), "http://127.0.0.1/jwks.json");
        let url: http::Uri = "https://user:pw@[::1]:8443/k".parse().unwrap();
        assert_eq!(shown_url(&url), "https://[::1]:8443/k");
    }
}
