//! TLS of the gRPC listener: rustls (ring provider) built from PEM files, and those
//! files polled for new content while serving.
//!
//! Each accepted connection takes the server config in force at that moment, so a
//! reload changes what new handshakes present and verify while established
//! connections (and the streams on them) carry on with the session they negotiated.
//! A file that does not load is reported, naming it, and the running config kept: at
//! start that stops the gateway, on a reload it is logged and counted.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;
use crate::metrics::Metrics;

/// The TLS server config new connections use; replaced whole on a reload. An
/// `ArcSwap`: each accepted connection loads it without a lock to contend on.
#[derive(Clone)]
pub(crate) struct TlsHandle(Arc<ArcSwap<ServerConfig>>);

impl TlsHandle {
    fn new(config: Arc<ServerConfig>) -> Self {
        Self(Arc::new(ArcSwap::new(config)))
    }

    /// An acceptor with the config in force now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.0.load_full())
    }

    fn replace(&self, config: Arc<ServerConfig>) {
        self.0.store(config);
    }
}

/// The raw bytes of the configured files, read once per load or poll.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(config: &TlsConfig) -> Result<Files, String> {
        Ok(Files {
            cert: read(&config.cert_file, "cert_file")?,
            key: read(&config.key_file, "key_file")?,
            client_ca: match &config.client_ca_file {
                Some(p) => Some(read(p, "client_ca_file")?),
                None => None,
            },
        })
    }

    /// Identifies the content, to tell a changed file from an unchanged one.
    fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            match part {
                Some(bytes) => {
                    h.update((bytes.len() as u64).to_be_bytes());
                    h.update(bytes);
                }
                None => h.update(u64::MAX.to_be_bytes()),
            }
        }
        h.finalize().into()
    }
}

fn read(path: &Path, field: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path)
        .map_err(|e| format!("server.tls.{field} {}: cannot read: {e}", path.display()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(
    bytes: &[u8],
    path: &Path,
    field: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("server.tls.{field} {}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls.{field} {}: no CERTIFICATE block in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds the rustls server config from the files' bytes; every error names the file
/// (and the setting) it is about.
fn build(config: &TlsConfig, files: &Files) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let cert_path = config.cert_file.display();
    let key_path = config.key_file.display();
    let chain = certificates(&files.cert, &config.cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
        format!("server.tls.key_file {key_path}: no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("server.tls.key_file {key_path}: unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "server.tls.key_file {key_path}: the key does not belong to the first certificate of server.tls.cert_file {cert_path}"
            ))
        }
        // The key cannot tell its public half: nothing to compare, the handshake will.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(format!(
                "server.tls.cert_file {cert_path}: unusable certificate: {e}"
            ))
        }
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server.tls: {e}"))?;
    let builder = match (&config.client_ca_file, &files.client_ca) {
        (Some(path), Some(bytes)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(bytes, path, "client_ca_file")? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "server.tls.client_ca_file {}: unusable CA certificate: {e}",
                        path.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("server.tls.client_ca_file {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    // gRPC is HTTP/2 only; a client that offers ALPN must offer h2.
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(server))
}

/// TLS loaded from `config`'s files, with what the reload poll needs.
pub(crate) struct Tls {
    pub(crate) handle: TlsHandle,
    config: TlsConfig,
    fingerprint: [u8; 32],
}

impl Tls {
    /// Reads and checks the files; errors name the file and what is wrong with it.
    pub(crate) fn load(config: &TlsConfig) -> Result<Tls, String> {
        let files = Files::read(config)?;
        let server = build(config, &files)?;
        Ok(Tls {
            handle: TlsHandle::new(server),
            config: config.clone(),
            fingerprint: files.fingerprint(),
        })
    }

    /// Polls the files every `reload_interval` (never when it is zero) until the task
    /// is aborted. New content is loaded whole and swapped in; content that does not
    /// load is logged once (until it changes again) and the running config kept.
    pub(crate) async fn watch(self, metrics: Arc<Metrics>) {
        let interval = self.config.reload_interval;
        if interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = self.fingerprint;
        let mut last_error: Option<String> = None;
        loop {
            tick.tick().await;
            let config = self.config.clone();
            let polled = tokio::task::spawn_blocking(move || poll(&config, seen)).await;
            let outcome = match polled {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(error = %e, "TLS file poll failed");
                    continue;
                }
            };
            match outcome {
                Poll::Unchanged => {}
                Poll::Loaded(server, fingerprint) => {
                    seen = fingerprint;
                    last_error = None;
                    self.handle.replace(server);
                    metrics.tls_reload(true);
                    tracing::info!(cert_file = %self.config.cert_file.display(), "TLS files reloaded; new connections use them");
                }
                Poll::Failed(error, fingerprint) => {
                    if let Some(f) = fingerprint {
                        seen = f;
                    }
                    if last_error.as_deref() != Some(error.as_str()) {
                        metrics.tls_reload(false);
                        tracing::error!(%error, "TLS reload failed; keeping the running certificate");
                        last_error = Some(error);
                    }
                }
            }
        }
    }
}

enum Poll {
    Unchanged,
    Loaded(Arc<ServerConfig>, [u8; 32]),
    /// What is wrong, and the content's fingerprint when the files could be read
    /// (so the same bad content is not tried again).
    Failed(String, Option<[u8; 32]>),
}

fn poll(config: &TlsConfig, seen: [u8; 32]) -> Poll {
    let files = match Files::read(config) {
        Ok(f) => f,
        Err(e) => return Poll::Failed(e, None),
    };
    let fingerprint = files.fingerprint();
    if fingerprint == seen {
        return Poll::Unchanged;
    }
    match build(config, &files) {
        Ok(server) => Poll::Loaded(server, fingerprint),
        Err(e) => Poll::Failed(e, Some(fingerprint)),
    }
}

/// How long a client may take to complete the TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn config(cert: &Path, key: &Path, ca: Option<&Path>) -> TlsConfig {
        TlsConfig {
            cert_file: cert.to_path_buf(),
            key_file: key.to_path_buf(),
            client_ca_file: ca.map(Path::to_path_buf),
            reload_interval: Duration::from_secs(5),
        }
    }

    /// A self-signed certificate and its key, generated for the test.
    fn self_signed(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    fn error(cfg: &TlsConfig) -> String {
        match Tls::load(cfg) {
            Ok(_) => panic!("loaded"),
            Err(e) => e,
        }
    }

    #[test]
    fn good_files_load_with_and_without_client_ca() {
        let (cert_a, key_a) = self_signed("a.test");
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "a.crt", &cert_a);
        let key = write(dir.path(), "a.key", &key_a);
        assert!(Tls::load(&config(&cert, &key, None)).is_ok());
        assert!(Tls::load(&config(&cert, &key, Some(&cert))).is_ok());
    }

    #[test]
    fn bad_files_are_named_with_the_reason() {
        let (cert_a, key_a) = self_signed("a.test");
        let (_, key_b) = self_signed("b.test");
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "a.crt", &cert_a);
        let key = write(dir.path(), "a.key", &key_a);
        let other_key = write(dir.path(), "b.key", &key_b);
        let garbage = write(dir.path(), "garbage.pem", "hello\n");
        let missing = dir.path().join("missing.pem");

        let e = error(&config(&missing, &key, None));
        assert!(
            e.starts_with("server.tls.cert_file ") && e.contains("missing.pem: cannot read"),
            "{e}"
        );
        let e = error(&config(&cert, &missing, None));
        assert!(
            e.starts_with("server.tls.key_file ") && e.contains("missing.pem"),
            "{e}"
        );
        let e = error(&config(&garbage, &key, None));
        assert!(e.contains("garbage.pem: no CERTIFICATE block"), "{e}");
        let e = error(&config(&cert, &garbage, None));
        assert!(
            e.contains("server.tls.key_file") && e.contains("garbage.pem: no PEM private key"),
            "{e}"
        );
        let e = error(&config(&cert, &other_key, None));
        assert!(
            e.contains("b.key: the key does not belong") && e.contains("a.crt"),
            "{e}"
        );
        let e = error(&config(&cert, &key, Some(&garbage)));
        assert!(
            e.starts_with("server.tls.client_ca_file ") && e.contains("garbage.pem"),
            "{e}"
        );
        // A key where the certificate should be.
        let e = error(&config(&key, &key, None));
        assert!(
            e.contains("server.tls.cert_file") && e.contains("a.key"),
            "{e}"
        );
    }

    #[test]
    fn poll_tells_unchanged_new_and_bad_content() {
        let (cert_a, key_a) = self_signed("a.test");
        let (_, key_b) = self_signed("b.test");
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "a.crt", &cert_a);
        let key = write(dir.path(), "a.key", &key_a);
        let cfg = config(&cert, &key, None);
        let tls = Tls::load(&cfg).unwrap();
        assert!(matches!(poll(&cfg, tls.fingerprint), Poll::Unchanged));
        std::fs::write(&key, &key_b).unwrap();
        let Poll::Failed(e, Some(bad)) = poll(&cfg, tls.fingerprint) else {
            panic!("mismatched key loaded")
        };
        assert!(e.contains("does not belong"), "{e}");
        std::fs::write(&key, &key_a).unwrap();
        assert!(matches!(poll(&cfg, bad), Poll::Loaded(..)));
        std::fs::remove_file(&key).unwrap();
        assert!(matches!(poll(&cfg, tls.fingerprint), Poll::Failed(_, None)));
    }
}
