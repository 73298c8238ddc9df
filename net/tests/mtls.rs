//! Two in-process tonic endpoints over real loopback mutual TLS.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::crypto::PrivateKey;
use common::tls::{TlsIdentity, danger};
use net::Dialer;
use net::server::{Limits, incoming};
use proto::peer::v1::peer_client::PeerClient;
use proto::peer::v1::peer_server::{Peer, PeerServer};
use proto::peer::v1::{
    AuditPrivateKeyRequest, AuditPrivateKeyResponse, AuditPublicKeyRequest, AuditPublicKeyResponse,
    DeliverRequest, DeliverResponse, PingRequest, PingResponse,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

static SERVER: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());
static CLIENT: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());
static OTHER: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());

/// Answers pings with the caller's node ID, as the server saw it.
struct EchoPeer;

#[tonic::async_trait]
impl Peer for EchoPeer {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let peer = net::peer(&request)?;
        Ok(Response::new(PingResponse {
            user_id: peer.node_id.to_string(),
        }))
    }

    async fn audit_private_key(
        &self,
        _: Request<AuditPrivateKeyRequest>,
    ) -> Result<Response<AuditPrivateKeyResponse>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn audit_public_key(
        &self,
        _: Request<AuditPublicKeyRequest>,
    ) -> Result<Response<AuditPublicKeyResponse>, Status> {
        Err(Status::unimplemented("test"))
    }

    async fn deliver(
        &self,
        _: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
}

struct TestServer {
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn serve(identity: TlsIdentity) -> TestServer {
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), identity)
}

fn serve_on(listener: TcpListener, identity: TlsIdentity) -> TestServer {
    let addr = listener.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let config = Arc::new(identity.server_config().unwrap());
    let stream = incoming(listener, config, Limits::default(), cancel.clone());
    let shutdown = cancel.clone().cancelled_owned();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(PeerServer::new(EchoPeer))
            .serve_with_incoming_shutdown(stream, shutdown)
            .await
            .unwrap();
    });
    TestServer { addr, cancel }
}

async fn ping(
    dialer: &Dialer,
    addr: SocketAddr,
    expected: Option<common::id::NodeId>,
) -> Result<String, String> {
    let connection = dialer
        .connect(&addr.to_string(), expected)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = PeerClient::new(connection.channel);
    let mut request = Request::new(PingRequest {});
    request.set_timeout(Duration::from_secs(5));
    client
        .ping(request)
        .await
        .map(|r| r.into_inner().user_id)
        .map_err(|e| e.to_string())
}

fn dialer(identity: TlsIdentity) -> Dialer {
    Dialer::new(Arc::new(identity)).with_connect_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn handshake_authenticates_both_sides() {
    let server = serve(TlsIdentity::generate(&SERVER).unwrap()).await;
    let client = dialer(TlsIdentity::generate(&CLIENT).unwrap());
    let server_id = SERVER.public_key().node_id();

    // The client learns who answered, and the server sees the client's ID.
    let connection = client
        .connect(&server.addr.to_string(), None)
        .await
        .unwrap();
    assert_eq!(connection.peer.node_id, server_id);
    let seen = ping(&client, server.addr, Some(server_id)).await.unwrap();
    assert_eq!(seen, CLIENT.public_key().node_id().to_string());
}

#[tokio::test]
async fn a_client_expecting_another_node_refuses_the_connection() {
    let server = serve(TlsIdentity::generate(&SERVER).unwrap()).await;
    let client = dialer(TlsIdentity::generate(&CLIENT).unwrap());
    let err = ping(&client, server.addr, Some(OTHER.public_key().node_id()))
        .await
        .unwrap_err();
    assert!(err.contains("expected"), "{err}");
}

#[tokio::test]
async fn forged_client_certificates_are_refused() {
    let server = serve(TlsIdentity::generate(&SERVER).unwrap()).await;
    let server_id = Some(SERVER.public_key().node_id());
    for forged in [
        danger::identity_claiming(CLIENT.public_key(), &OTHER),
        danger::identity_with_corrupt_binding(&CLIENT),
        danger::identity_without_binding(&CLIENT),
    ] {
        let client = dialer(forged);
        assert!(ping(&client, server.addr, server_id).await.is_err());
    }
    // The server is still healthy for honest clients.
    let honest = dialer(TlsIdentity::generate(&CLIENT).unwrap());
    ping(&honest, server.addr, server_id).await.unwrap();
}

#[tokio::test]
async fn forged_server_certificates_are_refused() {
    let client = dialer(TlsIdentity::generate(&CLIENT).unwrap());
    for forged in [
        danger::identity_claiming(SERVER.public_key(), &OTHER),
        danger::identity_with_corrupt_binding(&SERVER),
        danger::identity_without_binding(&SERVER),
    ] {
        let server = serve(forged).await;
        let err = ping(&client, server.addr, None).await.unwrap_err();
        assert!(err.contains("certificate"), "{err}");
    }
}

#[tokio::test]
async fn plaintext_and_certificate_less_clients_cannot_talk() {
    let server = serve(TlsIdentity::generate(&SERVER).unwrap()).await;

    // Plain HTTP/2 gRPC.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let err = PeerClient::new(channel)
        .ping(PingRequest {})
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);

    // TLS 1.3 without a client certificate.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("silt").unwrap();
    let result = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        Ok(n)
    };
    let outcome = tokio::time::timeout(Duration::from_secs(5), result)
        .await
        .unwrap();
    assert!(
        outcome.is_err(),
        "server answered a client without a certificate"
    );
}

#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One ping on `channel`.
async fn call(channel: &tonic::transport::Channel) -> Result<(), Status> {
    let mut request = Request::new(PingRequest {});
    request.set_timeout(Duration::from_secs(5));
    PeerClient::new(channel.clone())
        .ping(request)
        .await
        .map(drop)
}

/// Waits (up to 10 s) until `call` on `channel` gives `Ok` (`want`) or an
/// error (`!want`).
async fn until(channel: &tonic::transport::Channel, want: bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while call(channel).await.is_ok() != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the channel never became {}",
            if want { "usable" } else { "unusable" }
        )
    });
}

#[tokio::test]
async fn a_one_connection_channel_is_not_reopened_when_its_peer_comes_back() {
    let server = serve(TlsIdentity::generate(&SERVER).unwrap()).await;
    let addr = server.addr;
    let server_id = SERVER.public_key().node_id();
    let client = dialer(TlsIdentity::generate(&CLIENT).unwrap());
    let lasting = client
        .connect(&addr.to_string(), Some(server_id))
        .await
        .unwrap()
        .channel;
    let once = client
        .connect_once(&addr.to_string(), server_id)
        .await
        .unwrap()
        .channel;
    call(&lasting).await.unwrap();
    call(&once).await.unwrap();

    // The peer goes away and comes back on the same address.
    drop(server);
    until(&once, false).await;
    let listener = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the old listener never let go of its address");
    let _server = serve_on(listener, TlsIdentity::generate(&SERVER).unwrap());

    // The ordinary channel reconnects; the one-connection channel stays
    // closed, whatever the peer would accept.
    until(&lasting, true).await;
    let status = call(&once).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
}
