//! Dialling other nodes: resolve, TCP, TLS 1.3 with our certificate, and
//! a check that the peer is the node we meant to reach.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::id::NodeId;
use common::tls::{PeerIdentity, TlsIdentity};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use crate::NetError;
use crate::resolve::Resolver;

/// Deadline for TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens mutual-TLS gRPC channels to other nodes.
#[derive(Debug, Clone)]
pub struct Dialer {
    identity: Arc<TlsIdentity>,
    resolver: Resolver,
    connect_timeout: Duration,
}

/// An open channel and who is at the other end.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The gRPC channel. It reconnects on failure, re-checking the peer.
    pub channel: Channel,
    /// The peer proved in the first handshake.
    pub peer: PeerIdentity,
}

impl Dialer {
    /// A dialer presenting `identity`.
    pub fn new(identity: Arc<TlsIdentity>) -> Self {
        Self {
            identity,
            resolver: Resolver::default(),
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// Sets the deadline for connect plus handshake.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Our node ID.
    pub fn node_id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// Connects to `addr` (`host:port`). With `expected`, any other node is
    /// refused during the handshake; without, whoever answers is reported in
    /// [`Connection::peer`].
    ///
    /// Cancel-safe: dropping the future abandons the attempt.
    pub async fn connect(
        &self,
        addr: &str,
        expected: Option<NodeId>,
    ) -> Result<Connection, NetError> {
        self.open(addr, expected, true).await
    }

    /// [`Dialer::connect`] to the node `expected`, on one connection only:
    /// once it closes, the channel fails every call (`UNAVAILABLE`) rather
    /// than open another. For state a peer keeps per connection, such as a
    /// proof of a share key, which a new connection would silently lack.
    ///
    /// Cancel-safe: dropping the future abandons the attempt.
    pub async fn connect_once(&self, addr: &str, expected: NodeId) -> Result<Connection, NetError> {
        self.open(addr, Some(expected), false).await
    }

    async fn open(
        &self,
        addr: &str,
        expected: Option<NodeId>,
        reconnect: bool,
    ) -> Result<Connection, NetError> {
        let addrs = self.resolver.resolve(addr).await?;
        let config = Arc::new(self.identity.client_config(expected)?);
        let connector = TlsConnector::from(config);
        let seen: Arc<Mutex<Option<PeerIdentity>>> = Arc::default();
        let timeout = self.connect_timeout;
        let slot = seen.clone();
        let connected = Arc::new(AtomicBool::new(false));
        let dial = tower::service_fn(move |_uri: http::Uri| {
            let addrs = addrs.clone();
            let connector = connector.clone();
            let slot = slot.clone();
            let connected = connected.clone();
            async move {
                if !reconnect && connected.load(Ordering::Acquire) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "the connection closed, and what was set up on it would not carry over to a new one",
                    ));
                }
                let attempt = async {
                    let tcp = connect_any(&addrs).await?;
                    let _ = tcp.set_nodelay(true);
                    // Verifiers ignore the name: the node ID is the identity.
                    let name = ServerName::try_from("silt").map_err(std::io::Error::other)?;
                    let tls = connector.connect(name, tcp).await?;
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .ok_or_else(|| std::io::Error::other("peer sent no certificate"))
                        .and_then(|cert| {
                            common::tls::verify_certificate(cert, common::unix_now())
                                .map_err(std::io::Error::other)
                        })?;
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(peer);
                    }
                    connected.store(true, Ordering::Release);
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                };
                tokio::time::timeout(timeout, attempt).await.map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })?
            }
        });
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| NetError::Address {
                addr: addr.to_owned(),
                reason: "not a valid host:port",
            })?
            .connect_timeout(timeout)
            .initial_stream_window_size(crate::http2::CLIENT_STREAM_WINDOW)
            .initial_connection_window_size(crate::http2::CLIENT_CONNECTION_WINDOW)
            .max_frame_size(crate::http2::MAX_FRAME)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel =
            endpoint
                .connect_with_connector(dial)
                .await
                .map_err(|e| NetError::Connect {
                    addr: addr.to_owned(),
                    reason: crate::error_chain(&e),
                })?;
        let peer = seen
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .ok_or_else(|| NetError::Connect {
                addr: addr.to_owned(),
                reason: "handshake finished without a peer identity".into(),
            })?;
        Ok(Connection { channel, peer })
    }
}

async fn connect_any(addrs: &[std::net::SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
}
