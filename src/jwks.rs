//! Verification keys for `jwt_auth`: loaded from a JWKS file, a PEM file, or a JWKS URL
//! fetched and refreshed in the background.
//!
//! A key remembers its family (RSA, EC curve, Ed25519, HMAC) so a token can only be
//! checked with an algorithm of that family: an RSA public key is never used as an
//! HMAC secret, the classic algorithm-confusion attack.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, SubjectPublicKeyInfoDer};

/// Largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

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
}

impl KeySet {
    /// Parses a JWKS document. Keys for encryption, of unsupported types or malformed
    /// are skipped (and logged); a set with no usable key is an error.
    pub fn from_jwks(json: &[u8]) -> Result<KeySet, String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
                AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                    EllipticCurve::P256 => KeyFamily::EcP256,
                    EllipticCurve::P384 => KeyFamily::EcP384,
                    _ => {
                        tracing::warn!(index = i, "skipping JWKS key on an unsupported curve");
                        continue;
                    }
                },
                AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Ed25519,
                AlgorithmParameters::OctetKey(_) => KeyFamily::Hmac,
                _ => {
                    tracing::warn!(index = i, "skipping JWKS key of an unsupported type");
                    continue;
                }
            };
            let key = match DecodingKey::from_jwk(jwk) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(index = i, error = %e, "skipping malformed JWKS key");
                    continue;
                }
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
        if keys.is_empty() {
            return Err("JWKS has no usable signing key".into());
        }
        Ok(KeySet { keys })
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

/// Whether an EC public key PEM is on P-384: its DER names the curve's OID
/// (1.3.132.0.34); P-256 otherwise.
fn ec_pem_is_p384(pem: &[u8]) -> bool {
    SubjectPublicKeyInfoDer::from_pem_slice(pem).is_ok_and(|der| {
        der.as_ref()
            .windows(7)
            .any(|w| w == [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22])
    })
}

/// Where keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS file read at start.
    JwksFile(PathBuf),
    /// A PEM public key file read at start.
    PemFile(PathBuf),
    /// A JWKS URL fetched in the background every `refresh`.
    JwksUrl {
        /// `http://` or `https://` URL.
        url: http::Uri,
        /// Time between fetches.
        refresh: Duration,
        /// Extra CA certificates (PEM) trusted for this URL, beside the system's.
        ca_file: Option<PathBuf>,
    },
}

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
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Loads the keys of a file source now; a URL source starts empty and is filled by
/// [`spawn_refresh`].
pub fn load(source: &KeySource) -> Result<KeyStore, String> {
    match source {
        KeySource::JwksFile(p) => KeySet::from_jwks(&read(p)?)
            .map(KeyStore::with)
            .map_err(|e| format!("{}: {e}", p.display())),
        KeySource::PemFile(p) => KeySet::from_pem(&read(p)?)
            .map(KeyStore::with)
            .map_err(|e| format!("{}: {e}", p.display())),
        KeySource::JwksUrl { ca_file, .. } => {
            if let Some(ca) = ca_file {
                tls_config(Some(ca))?;
            }
            Ok(KeyStore::default())
        }
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

/// Fetches and parses a JWKS document once.
pub async fn fetch(url: &http::Uri, ca_file: Option<&Path>) -> Result<KeySet, String> {
    let client = client(ca_file)?;
    fetch_with(&client, url).await
}

async fn fetch_with(client: &HttpsClient, url: &http::Uri) -> Result<KeySet, String> {
    let req = http::Request::get(url.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    KeySet::from_jwks(&body).map_err(|e| format!("{url}: {e}"))
}

/// Keeps `store` filled from `url`: fetches now, then every `refresh`; after a failure
/// retries sooner (1 s doubling up to the refresh interval) and keeps the last good
/// keys. Stops when the store is dropped (a config reload replaced it).
pub fn spawn_refresh(
    store: Weak<KeyStore>,
    url: http::Uri,
    refresh: Duration,
    ca_file: Option<PathBuf>,
) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let client = match client(ca_file.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%url, error = %e, "JWKS client setup failed");
                return;
            }
        };
        let mut retry = Duration::from_secs(1);
        loop {
            let result = fetch_with(&client, &url).await;
            let Some(store) = store.upgrade() else {
                return;
            };
            let wait = match result {
                Ok(set) => {
                    tracing::info!(%url, keys = set.len(), "JWKS loaded");
                    store.set(set);
                    retry = Duration::from_secs(1);
                    refresh
                }
                Err(e) => {
                    let kept = store.get().map(|s| s.len()).unwrap_or(0);
                    tracing::warn!(%url, error = %e, kept_keys = kept, "JWKS refresh failed; keeping the last good keys");
                    let wait = retry.min(refresh);
                    retry = (retry * 2).min(refresh);
                    wait
                }
            };
            drop(store);
            tokio::time::sleep(wait).await;
        }
    });
}
