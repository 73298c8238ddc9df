//! The accept loop: TCP, then the TLS 1.3 handshake with client certificates
//! required, then a stream tonic serves.
//!
//! Handshakes run in their own tasks with a deadline, so a slow or silent
//! client never holds up the accept loop. The number of open connections is
//! bounded; a connection over the bound is closed at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::peer::{ConnectionId, PeerInfo};

/// Bounds on what the accept loop takes on.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most open connections; more are closed on accept.
    pub max_connections: usize,
    /// Deadline for a TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A TLS connection whose peer has been authenticated.
#[derive(Debug)]
pub struct PeerStream {
    inner: TlsStream<TcpStream>,
    info: PeerInfo,
    _permit: OwnedSemaphorePermit,
}

impl PeerStream {
    /// The authenticated peer.
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts connections on `listener` until `cancel` fires, and yields those
/// whose handshake succeeded, for `serve_with_incoming_shutdown`.
///
/// The stream ends when `cancel` fires; failed handshakes are logged at
/// debug level and dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    limits: Limits,
    cancel: CancellationToken,
) -> ReceiverStream<Result<PeerStream, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let next_id = Arc::new(AtomicU64::new(1));
    tokio::spawn(async move {
        loop {
            let (tcp, remote_addr) = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = tx.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Typically EMFILE; back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                debug!(%remote_addr, "connection limit reached; closing");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let connection = ConnectionId(next_id.fetch_add(1, Ordering::Relaxed));
            let timeout = limits.handshake_timeout;
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp));
                let tls = tokio::select! {
                    () = cancel.cancelled() => return,
                    result = handshake => match result {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            debug!(%remote_addr, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%remote_addr, "tls handshake timed out");
                            return;
                        }
                    },
                };
                let info = match authenticated_peer(&tls, remote_addr, connection) {
                    Ok(info) => info,
                    Err(e) => {
                        debug!(%remote_addr, error = %e, "peer identity refused");
                        return;
                    }
                };
                debug!(%remote_addr, peer = %info.node_id.fmt_short(), "peer connected");
                let stream = PeerStream {
                    inner: tls,
                    info,
                    _permit: permit,
                };
                let _ = tx.send(Ok(stream)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Re-derives the peer identity from the certificate the verifier accepted.
fn authenticated_peer(
    tls: &TlsStream<TcpStream>,
    remote_addr: std::net::SocketAddr,
    connection: ConnectionId,
) -> Result<PeerInfo, common::tls::TlsError> {
    let (_, conn) = tls.get_ref();
    let cert = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(common::tls::TlsError::BadCertificate(
            "no client certificate",
        ))?;
    let peer = common::tls::verify_certificate(cert, common::unix_now())?;
    Ok(PeerInfo {
        node_id: peer.node_id,
        master_key: peer.master_key,
        remote_addr,
        connection,
    })
}
