//! Transport security through real Envoy: TLS on the gRPC listener (Envoy's cluster
//! with an `UpstreamTlsContext`), certificate files reloaded while a stream is open,
//! mutual TLS with a good client certificate, none, and one from another CA, the
//! Unix-socket listener behind Envoy's `pipe` address, the admin token, bad files at
//! start, and the README's Security snippets validated by Envoy.
//!
//! Certificates are generated per test with `rcgen` (a throw-away CA, never written
//! outside the test's temporary directory). The gateway and Envoy bind port 0; their
//! ports are read back from the gateway's start-up log line and Envoy's admin.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The name the gateway's certificate is for, and what Envoy sends as SNI.
const SNI: &str = "gateway.test";

// ---- test PKI

/// A throw-away certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM, plus the certificate's DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `name` signed by this CA, for a server or a client.
    fn issue(&self, name: &str, server: bool) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// The files of one test: the CA Envoy trusts and the gateway verifies clients
/// with, the gateway's certificate, a client certificate of that CA, and one of
/// another CA.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    server: Leaf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("extproc-gateway test CA");
        let server = ca.issue(SNI, true);
        let client = ca.issue("envoy.test", false);
        let other = Ca::new("another test CA");
        let stranger = other.issue("envoy.test", false);
        let pki = Pki { dir, ca, server };
        pki.write("ca.crt", &pki.ca.pem());
        pki.write("server.crt", &pki.server.cert_pem);
        pki.write("server.key", &pki.server.key_pem);
        pki.write("client.crt", &client.cert_pem);
        pki.write("client.key", &client.key_pem);
        pki.write("other-client.crt", &stranger.cert_pem);
        pki.write("other-client.key", &stranger.key_pem);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).expect("write PEM");
    }

    /// Replaces `name` whole (write then rename), as a secret mount or cert-manager
    /// does, so no reader sees half a file.
    fn replace(&self, name: &str, text: &str) {
        let tmp = self.path(&format!(".{name}.new"));
        std::fs::write(&tmp, text).expect("write PEM");
        std::fs::rename(&tmp, self.path(name)).expect("rename PEM");
    }
}

// ---- the gateway on port 0

struct Gw {
    proc: Proc,
    /// The bound gRPC address as logged (`127.0.0.1:PORT` or `unix:/path`).
    grpc: String,
    admin: u16,
    _dir: tempfile::TempDir,
}

/// Removes ANSI colour sequences from a log.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The gRPC address and admin port from the start-up line of the gateway's log.
fn bound_from_log(log: &str) -> Option<(String, u16)> {
    let log = plain(log);
    let line = log
        .lines()
        .find(|l| l.contains("extproc-gateway serving"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
    };
    let grpc = field("grpc=")?;
    let admin = field("admin=")?.rsplit(':').next()?.parse().ok()?;
    Some((grpc, admin))
}

fn gateway_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_extproc-gateway"));
    for var in [
        "EXTPROC_CONFIG",
        "EXTPROC_GRPC_ADDR",
        "EXTPROC_ADMIN_ADDR",
        "EXTPROC_HTTP_ADDR",
        "EXTPROC_ADMIN_TOKEN",
        "EXTPROC_ADMIN_TOKEN_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("EXTPROC_LOG", "info");
    cmd
}

/// Starts the gateway binary with this config (its `grpc_addr` should bind port 0 or
/// a Unix socket) and the admin server on port 0; waits for `/readyz`.
async fn start_gateway(config: &str, env: &[(&str, &str)]) -> Gw {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, config).expect("write config");
    let mut cmd = gateway_command();
    cmd.arg("serve")
        .arg("--config")
        .arg(&file)
        .args(["--admin-addr", "127.0.0.1:0"])
        .envs(env.iter().copied());
    let mut proc = spawn("gateway", &mut cmd, dir.path());
    let mut bound = None;
    wait_until("gateway", &mut proc, async || {
        let Some((grpc, admin)) = bound_from_log(
            &std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default(),
        ) else {
            return false;
        };
        bound = Some((grpc, admin));
        matches!(http_get(admin, "/readyz").await, Some((200, _)))
    })
    .await;
    let (grpc, admin) = bound.expect("bound addresses");
    Gw {
        proc,
        grpc,
        admin,
        _dir: dir,
    }
}

impl Gw {
    fn grpc_port(&self) -> u16 {
        self.grpc
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("not a TCP address: {}", self.grpc))
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = http_get(self.admin, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        metric(&text, series).unwrap_or(0.0)
    }

    fn log(&self) -> String {
        plain(&self.proc.log_text())
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.proc.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn eventually(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

// ---- Envoy's side

/// The `extproc_gateway` cluster: HTTP/2 to `endpoint` (an Envoy address body such as
/// `socket_address: {...}` or `pipe: {path: ...}`), with `transport_socket` YAML (or
/// none), gRPC health checked when `health`.
fn gateway_cluster(endpoint: &str, transport_socket: &str, health: bool) -> String {
    let health = if health {
        r#"    health_checks:
    - timeout: 1s
      interval: 1s
      unhealthy_threshold: 2
      healthy_threshold: 1
      grpc_health_check: {service_name: envoy.service.ext_proc.v3.ExternalProcessor}
"#
    } else {
        ""
    };
    format!(
        r#"  - name: extproc_gateway
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
{health}{transport_socket}    load_assignment:
      cluster_name: extproc_gateway
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{{endpoint}}}}}
"#
    )
}

/// Envoy's TLS towards the gateway: the test CA as validation context, the SNI and
/// SAN the gateway's certificate is for, and a client certificate when given.
fn tls_socket(ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let client = match client {
        Some((cert, key)) => format!(
            "          tls_certificates:\n          - certificate_chain: {{filename: {}}}\n            private_key: {{filename: {}}}\n",
            cert.display(),
            key.display()
        ),
        None => String::new(),
    };
    format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {SNI}
        common_tls_context:
          alpn_protocols: [h2]
          validation_context:
            trusted_ca: {{filename: {ca}}}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{exact: {SNI}}}
{client}"#,
        ca = ca.display()
    )
}

fn tcp_endpoint(port: u16) -> String {
    format!("socket_address: {{address: 127.0.0.1, port_value: {port}}}")
}

/// Envoy on port 0 in front of `upstream`, reaching the gateway through `cluster`;
/// returns it with its listener's port.
async fn start_envoy(bin: &Path, cluster: &str, upstream: u16) -> (Envoy, u16) {
    let config = envoy_config_with_cluster(&EnvoySpec::default(), 0, 0, cluster, upstream);
    let envoy = Envoy::start_any_ports(bin, config).await;
    let port = envoy.listener_port("ingress").await;
    (envoy, port)
}

async fn stat(envoy: &Envoy, name: &str) -> u64 {
    envoy.stats().await.get(name).copied().unwrap_or(0)
}

/// The certificate the gateway presents to a new TLS connection (verified against
/// the test CA for [`SNI`]), or `None` when the handshake fails.
async fn served_certificate(port: u16, ca_pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.ok()?).ok()?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = rustls_pki_types::ServerName::try_from(SNI).ok()?;
    let tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .ok()?
    .ok()?;
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    Some(session.peer_certificates()?.first()?.to_vec())
}

fn gateway_tls_config(pki: &Pki, client_ca: bool) -> String {
    let client_ca = if client_ca {
        format!("\n    client_ca_file: {}", pki.path("ca.crt").display())
    } else {
        String::new()
    };
    format!(
        r#"
server:
  grpc_addr: 127.0.0.1:0
  tls:
    cert_file: {cert}
    key_file: {key}{client_ca}
    reload_interval: 200ms
routes:
  - name: slow
    match: {{path_prefix: /slow}}
    processors: [trivial, {{digest: {{body_mode: streamed}}}}]
  - name: default
    processors: [trivial]
"#,
        cert = pki.path("server.crt").display(),
        key = pki.path("server.key").display(),
    )
}

// ---- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_through_envoy_and_a_certificate_reload_keeps_open_streams() {
    let Some(bin) = envoy_bin() else { return };
    let pki = Pki::new();
    let gw = start_gateway(&gateway_tls_config(&pki, false), &[]).await;
    let port = gw.grpc_port();
    assert!(gw.log().contains("tls=on"), "{}", gw.log());
    assert_eq!(
        served_certificate(port, &pki.ca.pem()).await,
        Some(pki.server.der.clone())
    );

    // A plaintext HTTP/2 client gets no gRPC: its handshake fails and is counted.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("the gateway answers a plaintext client at once");
        // Nothing (closed) or a TLS alert record (0x15), never an HTTP/2 frame.
        if let Ok(n @ 1..) = n {
            assert_eq!(buf[0], 0x15, "not a TLS alert: {:?}", &buf[..n]);
        }
        eventually(
            "the refused handshake is counted",
            Duration::from_secs(5),
            async || gw.metric("extproc_tls_handshake_failures_total").await >= 1.0,
        )
        .await;
    }

    let upstream = Upstream::start().await;
    let cluster = gateway_cluster(
        &tcp_endpoint(port),
        &tls_socket(&pki.path("ca.crt"), None),
        true,
    );
    let (envoy, listen) = start_envoy(&bin, &cluster, upstream.port).await;
    let c = client();
    let r = send(
        &c,
        listen,
        "GET",
        "/a",
        &[("x-request-id", "tls-1")],
        empty(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-extra-request-id"), Some("tls-1"));
    assert_eq!(r.header("x-ext-procs-applied"), Some("trivial"));
    assert!(stat(&envoy, "cluster.extproc_gateway.ssl.handshake").await >= 1);
    let destroyed = stat(&envoy, "cluster.extproc_gateway.upstream_cx_destroy").await;

    // A request whose ext_proc stream stays open across the reload: its body arrives
    // in chunks over ~3 s.
    let chunks: Vec<Bytes> = (0..8).map(|i| Bytes::from(format!("chunk {i};"))).collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let slow = {
        let c = c.clone();
        tokio::spawn(async move {
            send(
                &c,
                listen,
                "POST",
                "/slow/upload",
                &[],
                chunked(chunks, Duration::from_millis(400)),
            )
            .await
        })
    };
    eventually(
        "the slow request's stream is open",
        Duration::from_secs(5),
        async || gw.metric("extproc_active_streams").await >= 1.0,
    )
    .await;

    // Rotate: a new certificate and key from the same CA.
    let renewed = pki.ca.issue(SNI, true);
    pki.replace("server.key", &renewed.key_pem);
    pki.replace("server.crt", &renewed.cert_pem);
    eventually(
        "new connections get the new certificate",
        Duration::from_secs(10),
        async || served_certificate(port, &pki.ca.pem()).await.as_ref() == Some(&renewed.der),
    )
    .await;
    assert!(
        gw.metric("extproc_active_streams").await >= 1.0,
        "the slow stream ended early"
    );
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let want = digest("unknown", "POST", "/slow/upload", &whole);
    assert_eq!(r.header("x-request-digest"), Some(want.as_str()));
    let r = send(&c, listen, "GET", "/b", &[], empty()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        stat(&envoy, "cluster.extproc_gateway.upstream_cx_destroy").await,
        destroyed,
        "a connection to the gateway was closed by the reload"
    );
    assert_eq!(
        gw.metric(r#"extproc_tls_reloads_total{result="loaded"}"#)
            .await,
        1.0
    );
    assert!(gw.log().contains("TLS files reloaded"), "{}", gw.log());

    // A bad file is logged with its name and the running certificate kept.
    pki.replace("server.crt", "not a certificate\n");
    eventually(
        "the bad file is counted",
        Duration::from_secs(10),
        async || {
            gw.metric(r#"extproc_tls_reloads_total{result="failed"}"#)
                .await
                >= 1.0
        },
    )
    .await;
    let log = gw.log();
    assert!(
        log.contains("TLS reload failed; keeping the running certificate")
            && log.contains(&pki.path("server.crt").display().to_string()),
        "{log}"
    );
    assert_eq!(
        served_certificate(port, &pki.ca.pem()).await,
        Some(renewed.der.clone())
    );
    let r = send(&c, listen, "GET", "/c", &[], empty()).await;
    assert_eq!(r.status, 200);
    assert_eq!(envoy.ext_proc_stat("streams_failed").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_a_client_of_the_ca_and_refuses_the_others_at_the_handshake() {
    let Some(bin) = envoy_bin() else { return };
    let pki = Pki::new();
    let gw = start_gateway(&gateway_tls_config(&pki, true), &[]).await;
    assert!(gw.log().contains("tls=mutual"), "{}", gw.log());
    let port = gw.grpc_port();
    let upstream = Upstream::start().await;
    let ca = pki.path("ca.crt");
    let c = client();

    // A client certificate of the CA: served.
    let (cert, key) = (pki.path("client.crt"), pki.path("client.key"));
    let cluster = gateway_cluster(
        &tcp_endpoint(port),
        &tls_socket(&ca, Some((&cert, &key))),
        true,
    );
    let (envoy, listen) = start_envoy(&bin, &cluster, upstream.port).await;
    let r = send(
        &c,
        listen,
        "GET",
        "/a",
        &[("x-request-id", "mtls-1")],
        empty(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-extra-request-id"), Some("mtls-1"));
    assert_eq!(gw.metric("extproc_tls_handshake_failures_total").await, 0.0);
    drop(envoy);
    let served = upstream.hits();

    // No client certificate, then one from another CA: the gateway refuses the
    // handshake, Envoy's ext_proc call fails and, failing closed, so does the request.
    let stranger = (pki.path("other-client.crt"), pki.path("other-client.key"));
    for (case, client_cert) in [
        ("no client certificate", None),
        ("a certificate of another CA", Some(&stranger)),
    ] {
        let before = gw.metric("extproc_tls_handshake_failures_total").await;
        let cluster = gateway_cluster(
            &tcp_endpoint(port),
            &tls_socket(&ca, client_cert.map(|(c, k)| (c.as_path(), k.as_path()))),
            false,
        );
        let (envoy, listen) = start_envoy(&bin, &cluster, upstream.port).await;
        let r = send(&c, listen, "GET", "/a", &[], empty()).await;
        assert_eq!(r.status, 500, "{case}: {r:?}");
        assert_eq!(r.header("x-ext-procs-applied"), None, "{case}");
        assert_eq!(upstream.hits(), served, "{case}: the upstream was called");
        assert!(
            envoy.ext_proc_stat("streams_failed").await >= 1,
            "{case}: Envoy's ext_proc stream did not fail"
        );
        assert!(
            stat(&envoy, "cluster.extproc_gateway.ssl.connection_error").await >= 1,
            "{case}: Envoy saw no TLS error"
        );
        eventually(
            &format!("{case}: the refusal is counted"),
            Duration::from_secs(5),
            async || gw.metric("extproc_tls_handshake_failures_total").await > before,
        )
        .await;
    }
    let log = gw.log();
    assert!(
        log.contains("TLS handshake refused on the gRPC listener"),
        "{log}"
    );
    // rustls' reasons: no certificate, and a certificate of an unknown issuer.
    assert!(log.contains("peer sent no certificates"), "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener_behind_envoys_pipe_address() {
    let Some(bin) = envoy_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gateway.sock");
    // A socket file left by a gateway that was killed: replaced at start.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let gw = start_gateway(
        &format!(
            "server:\n  grpc_addr: unix:{}\nroutes:\n  - name: default\n    processors: [trivial]\n",
            socket.display()
        ),
        &[],
    )
    .await;
    assert_eq!(gw.grpc, format!("unix:{}", socket.display()));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");

    let upstream = Upstream::start().await;
    let cluster = gateway_cluster(&format!("pipe: {{path: {}}}", socket.display()), "", true);
    let (envoy, listen) = start_envoy(&bin, &cluster, upstream.port).await;
    let c = client();
    for i in 0..5 {
        let id = format!("uds-{i}");
        let r = send(&c, listen, "GET", "/a", &[("x-request-id", &id)], empty()).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-extra-request-id"), Some(id.as_str()));
    }
    assert_eq!(envoy.ext_proc_stat("streams_failed").await, 0);

    // Shutdown removes the socket file.
    let mut gw = gw;
    gw.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = gw.proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the gateway did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}: {}", gw.log());
    assert!(!socket.exists(), "socket file left after shutdown");
}

/// TLS and the Unix socket together: Envoy's `pipe` endpoint with the TLS transport
/// socket, as the README says works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_on_the_unix_socket() {
    let Some(bin) = envoy_bin() else { return };
    let pki = Pki::new();
    let socket = pki.path("gateway.sock");
    let config = gateway_tls_config(&pki, true).replace(
        "grpc_addr: 127.0.0.1:0",
        &format!("grpc_addr: unix:{}", socket.display()),
    );
    let gw = start_gateway(&config, &[]).await;
    assert_eq!(gw.grpc, format!("unix:{}", socket.display()));
    assert!(gw.log().contains("tls=mutual"), "{}", gw.log());
    let upstream = Upstream::start().await;
    let (cert, key) = (pki.path("client.crt"), pki.path("client.key"));
    let cluster = gateway_cluster(
        &format!("pipe: {{path: {}}}", socket.display()),
        &tls_socket(&pki.path("ca.crt"), Some((&cert, &key))),
        true,
    );
    let (envoy, listen) = start_envoy(&bin, &cluster, upstream.port).await;
    let r = send(
        &client(),
        listen,
        "GET",
        "/a",
        &[("x-request-id", "uds-tls")],
        empty(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-extra-request-id"), Some("uds-tls"));
    assert!(stat(&envoy, "cluster.extproc_gateway.ssl.handshake").await >= 1);
    assert_eq!(gw.metric("extproc_tls_handshake_failures_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_config_routes_and_snapshot_but_not_probes_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "file-token-123\n").unwrap();
    let config = format!(
        "server:\n  grpc_addr: 127.0.0.1:0\n  admin_token_file: {}\nroutes:\n  - name: default\n    processors: [trivial]\n",
        token_file.display()
    );
    let c = client();
    let gw = start_gateway(&config, &[]).await;
    let get = async |port: u16, path: &str, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        send(&c, port, "GET", path, &headers, empty()).await
    };
    for path in ["/config", "/routes", "/api/snapshot"] {
        for wrong in [
            None,
            Some("file-token-12"),
            Some("file-token-1234"),
            Some(""),
        ] {
            let r = get(gw.admin, path, wrong).await;
            assert_eq!(r.status, 401, "{path} with {wrong:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some(r#"Bearer realm="extproc-gateway admin""#)
            );
        }
        let r = get(gw.admin, path, Some("file-token-123")).await;
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/dashboard",
        "/dashboard/app.js",
    ] {
        let r = get(gw.admin, path, None).await;
        assert_eq!(r.status, 200, "{path} must stay open");
    }
    let r = get(gw.admin, "/config", Some("file-token-123")).await;
    let shown = String::from_utf8_lossy(&r.body).into_owned();
    assert!(!shown.contains("file-token-123"), "{shown}");
    assert!(shown.contains("admin_token_file"), "{shown}");

    // The environment overrides the file, and an inline token never shows.
    let env_gw = start_gateway(&config, &[("EXTPROC_ADMIN_TOKEN", "env-token-456")]).await;
    assert_eq!(
        get(env_gw.admin, "/routes", Some("file-token-123"))
            .await
            .status,
        401
    );
    assert_eq!(
        get(env_gw.admin, "/routes", Some("env-token-456"))
            .await
            .status,
        200
    );
    let r = get(env_gw.admin, "/config", Some("env-token-456")).await;
    let shown = String::from_utf8_lossy(&r.body).into_owned();
    assert!(!shown.contains("env-token-456"), "{shown}");
    assert!(shown.contains("admin_token: <redacted>"), "{shown}");

    // Without a token everything is open, as before.
    let open = start_gateway("server:\n  grpc_addr: 127.0.0.1:0\nroutes: []\n", &[]).await;
    assert_eq!(get(open.admin, "/config", None).await.status, 200);
}

#[test]
fn bad_security_files_stop_the_start_naming_the_file() {
    let pki = Pki::new();
    let other = Ca::new("another test CA").issue(SNI, true);
    pki.write("other.key", &other.key_pem);
    let missing = pki.path("missing.pem");
    let tls = |cert: &Path, key: &Path, ca: Option<&Path>| {
        let ca = ca
            .map(|p| format!("\n    client_ca_file: {}", p.display()))
            .unwrap_or_default();
        format!(
            "server:\n  grpc_addr: 127.0.0.1:0\n  admin_addr: 127.0.0.1:0\n  tls:\n    cert_file: {}\n    key_file: {}{ca}\nroutes: []\n",
            cert.display(),
            key.display()
        )
    };
    let (cert, key) = (pki.path("server.crt"), pki.path("server.key"));
    let cases = [
        (tls(&missing, &key, None), "server.tls.cert_file", "missing.pem: cannot read"),
        (tls(&cert, &missing, None), "server.tls.key_file", "missing.pem: cannot read"),
        (tls(&key, &key, None), "server.tls.cert_file", "server.key: no CERTIFICATE block"),
        (tls(&cert, &cert, None), "server.tls.key_file", "server.crt: no PEM private key"),
        (tls(&cert, &pki.path("other.key"), None), "server.tls.key_file", "other.key: the key does not belong"),
        (tls(&cert, &key, Some(&missing)), "server.tls.client_ca_file", "missing.pem: cannot read"),
        (
            format!("server:\n  grpc_addr: 127.0.0.1:0\n  admin_addr: 127.0.0.1:0\n  admin_token_file: {}\nroutes: []\n", missing.display()),
            "server.admin_token_file",
            "missing.pem: cannot read",
        ),
    ];
    for (config, setting, reason) in cases {
        let file = pki.path("gateway.yaml");
        std::fs::write(&file, &config).unwrap();
        let out = gateway_command()
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {config}");
        assert!(
            stderr.contains(setting) && stderr.contains(reason),
            "{setting} / {reason}:\n{stderr}"
        );
    }
}

/// The README's Security section: its gateway snippets load, and its Envoy cluster
/// snippets pass `envoy --mode validate` (with the CA and client files generated here
/// in place of `/etc/envoy/tls/`); a broken one does not.
#[test]
fn readme_security_snippets_are_valid() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("\n## Security\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README section `Security`");
    let snippets: Vec<&str> = section
        .split("```yaml\n")
        .skip(1)
        .filter_map(|s| s.split("```").next())
        .collect();
    let gateway: Vec<&str> = snippets
        .iter()
        .copied()
        .filter(|s| s.starts_with("server:"))
        .collect();
    let clusters: Vec<&str> = snippets
        .iter()
        .copied()
        .filter(|s| s.starts_with("  - name: "))
        .collect();
    assert!(
        gateway.len() >= 3,
        "TLS, mTLS, UDS gateway snippets: {gateway:?}"
    );
    assert!(
        clusters.len() >= 2,
        "(m)TLS and UDS cluster snippets: {clusters:?}"
    );
    assert_eq!(
        gateway.len() + clusters.len(),
        snippets.len(),
        "a yaml snippet that is neither a gateway config nor an Envoy cluster"
    );
    for s in &gateway {
        extproc_gateway::config::GatewayConfig::parse(s, "README.md")
            .unwrap_or_else(|e| panic!("{e}:\n{s}"));
    }
    assert!(clusters
        .iter()
        .any(|c| c.contains("UpstreamTlsContext") && c.contains("tls_certificates")));
    assert!(clusters.iter().any(|c| c.contains("pipe:")));

    let Some(bin) = envoy_bin() else { return };
    let pki = Pki::new();
    let files = format!("{}/", pki.dir.path().display());
    let validate = |cluster: &str| {
        let config = format!(
            "static_resources:\n  clusters:\n{}",
            cluster.replace("/etc/envoy/tls/", &files)
        );
        let file = pki.path("envoy.yaml");
        std::fs::write(&file, &config).unwrap();
        let out = Command::new(&bin)
            .args(["--mode", "validate", "-c"])
            .arg(&file)
            .output()
            .expect("run envoy");
        (
            out.status.success(),
            format!(
                "{}{}\n{config}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for cluster in &clusters {
        let (ok, out) = validate(cluster);
        assert!(ok, "envoy rejects the README snippet:\n{out}");
    }
    // The mutual-TLS cluster without its client certificate is the plain TLS one.
    let mtls = clusters
        .iter()
        .find(|c| c.contains("tls_certificates"))
        .unwrap();
    let mut skipping = false;
    let plain_tls: String = mtls
        .lines()
        .filter(|l| {
            if l.contains("tls_certificates:") {
                skipping = true;
            }
            let keep = !skipping;
            if l.contains("private_key:") {
                skipping = false;
            }
            keep
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(plain_tls.contains("UpstreamTlsContext") && !plain_tls.contains("client.key"));
    let (ok, out) = validate(&plain_tls);
    assert!(
        ok,
        "envoy rejects the TLS cluster without a client certificate:\n{out}"
    );
    // The check can fail: a misspelt TLS context is refused.
    let tls = clusters
        .iter()
        .find(|c| c.contains("UpstreamTlsContext"))
        .unwrap();
    let (ok, out) = validate(&tls.replace("UpstreamTlsContext", "UpstreamTlsContextX"));
    assert!(!ok, "envoy accepted a broken cluster:\n{out}");
}
