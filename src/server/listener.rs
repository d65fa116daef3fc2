//! The gRPC listener: TCP or a Unix-domain socket, plaintext or TLS, turned into the
//! stream of connections tonic serves.
//!
//! Accepting and the TLS handshakes run in a task of their own: each handshake is a
//! task bounded by [`HANDSHAKE_TIMEOUT`](super::tls::HANDSHAKE_TIMEOUT), so a slow or
//! refused client never holds up the others, and only connections that completed it
//! reach tonic. The task stops when draining starts: the port closes, the socket file
//! is removed, and connections already handed over drain as usual.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::tls::{TlsHandle, HANDSHAKE_TIMEOUT};
use crate::config::{ListenAddr, SocketMode};
use crate::metrics::Metrics;

/// A byte stream tonic can serve: TCP, Unix, or either inside TLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// One accepted connection, handed to tonic. Its connect info is tonic's own TCP
/// one (addresses unset on a Unix socket), so `Request::remote_addr` keeps working.
pub(crate) struct GrpcConn {
    io: Box<dyn Io>,
    info: TcpConnectInfo,
}

impl Connected for GrpcConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The Unix socket file this process created; removed on drop unless something else
/// has replaced it since (same device and inode).
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the gRPC socket file");
                }
            }
            _ => {}
        }
    }
}

/// A bound gRPC listener.
pub(crate) enum GrpcListener {
    /// On a TCP port.
    Tcp(TcpListener),
    /// On a Unix socket, whose file goes with it.
    Unix(UnixListener, SocketFile),
}

impl GrpcListener {
    /// Binds `addr`. A Unix socket file left by a process that is gone is replaced;
    /// one a live process still serves, or a path that is not a socket, is an error.
    /// The new socket file gets `mode`.
    pub(crate) async fn bind(addr: &ListenAddr, mode: SocketMode) -> anyhow::Result<Self> {
        match addr {
            ListenAddr::Tcp(a) => TcpListener::bind(a)
                .await
                .map(GrpcListener::Tcp)
                .with_context(|| format!("cannot listen for gRPC on {a}")),
            ListenAddr::Unix(path) => bind_unix(path, mode)
                .with_context(|| format!("cannot listen for gRPC on unix:{}", path.display())),
        }
    }

    /// The address actually bound (the port chosen for port 0).
    pub(crate) fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            GrpcListener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            GrpcListener::Unix(_, file) => Ok(ListenAddr::Unix(file.path.clone())),
        }
    }

    async fn accept(&self) -> io::Result<(Box<dyn Io>, TcpConnectInfo)> {
        match self {
            GrpcListener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let info = TcpConnectInfo {
                    local_addr: stream.local_addr().ok(),
                    remote_addr: Some(peer),
                };
                Ok((Box::new(stream), info))
            }
            GrpcListener::Unix(l, _) => {
                let (stream, _) = l.accept().await?;
                let info = TcpConnectInfo {
                    local_addr: None,
                    remote_addr: None,
                };
                Ok((Box::new(stream), info))
            }
        }
    }
}

fn bind_unix(path: &Path, mode: SocketMode) -> anyhow::Result<GrpcListener> {
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.0))
        .with_context(|| format!("cannot set mode {mode} on the socket file"))?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok(GrpcListener::Unix(
        listener,
        SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

/// Makes room for a new socket at `path`: nothing there is fine; a socket nobody
/// answers on (left by a process that was killed) is removed; anything else stays
/// and is an error.
fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => anyhow::bail!(
            "another process is serving on {}; stop it or choose another path",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale gRPC socket file");
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot tell whether {} is still in use: {e}",
            path.display()
        )),
    }
}

/// The connections tonic serves, ended when the accept task stops.
pub(crate) type Incoming = tokio_stream::wrappers::ReceiverStream<Result<GrpcConn, io::Error>>;

/// Starts accepting on `listener` (with TLS handshakes when `tls` is set) until
/// `drain` turns true. Returns the connections and the task, which ends (dropping the
/// listener and removing a socket file) once draining starts.
pub(crate) fn incoming(
    listener: GrpcListener,
    tls: Option<TlsHandle>,
    metrics: Arc<Metrics>,
    drain: watch::Receiver<bool>,
) -> (Incoming, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(accept_loop(listener, tls, metrics, tx, drain));
    (tokio_stream::wrappers::ReceiverStream::new(rx), task)
}

async fn accept_loop(
    listener: GrpcListener,
    tls: Option<TlsHandle>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Result<GrpcConn, io::Error>>,
    mut drain: watch::Receiver<bool>,
) {
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = drain.wait_for(|d| *d) => break,
            _ = tx.closed() => break,
            accepted = listener.accept() => accepted,
        };
        let (io, info) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // E.g. out of file descriptors: wait a little rather than spin.
                tracing::warn!(error = %e, "cannot accept a gRPC connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match &tls {
            None => {
                let conn = GrpcConn { io, info };
                // tonic stops taking connections once draining starts: never wait on
                // it past that.
                tokio::select! {
                    sent = tx.send(Ok(conn)) => if sent.is_err() { break },
                    _ = drain.wait_for(|d| *d) => break,
                }
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let tx = tx.clone();
                let metrics = metrics.clone();
                handshakes.spawn(async move {
                    let peer = info
                        .remote_addr
                        .map_or_else(|| "unix socket".to_string(), |p| p.to_string());
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(stream)) => {
                            let conn = GrpcConn {
                                io: Box::new(stream),
                                info,
                            };
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Ok(Err(e)) => {
                            metrics.tls_handshake_failed();
                            tracing::warn!(peer = %peer, error = %e, "TLS handshake refused on the gRPC listener");
                        }
                        Err(_) => {
                            metrics.tls_handshake_failed();
                            tracing::warn!(peer = %peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out on the gRPC listener");
                        }
                    }
                });
            }
        }
    }
    // Handshakes still under way when draining starts are dropped with their sockets.
    handshakes.abort_all();
    drop(listener);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn unix_socket_gets_its_mode_replaces_a_stale_file_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.sock");
        // A stale socket: bound, then its listener gone (the process was killed).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let addr = ListenAddr::Unix(path.clone());
        let listener = GrpcListener::bind(&addr, SocketMode(0o600)).await.unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(listener.local_addr().unwrap(), addr);
        // A second gateway on the same path is refused while the first serves.
        let e = GrpcListener::bind(&addr, SocketMode::default())
            .await
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("another process is serving"),
            "{e:#}"
        );
        drop(listener);
        assert!(!path.exists(), "socket file left behind");
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.sock");
        std::fs::write(&path, "data").unwrap();
        let e = GrpcListener::bind(&ListenAddr::Unix(path.clone()), SocketMode::default())
            .await
            .err()
            .unwrap();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("gw.sock") && msg.contains("is not a socket"),
            "{msg}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
        let missing = dir.path().join("no-such-dir/gw.sock");
        let e = GrpcListener::bind(&ListenAddr::Unix(missing), SocketMode::default())
            .await
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("no-such-dir/gw.sock"), "{e:#}");
    }

    #[tokio::test]
    async fn a_replaced_socket_file_is_not_removed_by_the_old_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.sock");
        let listener = GrpcListener::bind(&ListenAddr::Unix(path.clone()), SocketMode::default())
            .await
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(listener);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
    }
}
