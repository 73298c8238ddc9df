//! The customer's own service (`silt daemon`), on the listen address its
//! identity document advertises, over the same mutual TLS as every node:
//!
//! - `Ping`, the online check a granting owner makes first;
//! - `AuditPrivateKey`: a signature over the auditor's nonce with our master
//!   key (anyone may ask), or with a share key we hold (only its owner may
//!   ask, so that nobody else learns who holds it);
//! - `AuditPublicKey`: a nonce-salted digest of a key we hold;
//! - `Deliver`: a grant, sealed to us and signed by a share's owner, which
//!   puts the share's private key in our keystore.
//!
//! See `docs/design/sharing.md`.

use std::net::SocketAddr;
use std::sync::Arc;

use common::audit;
use common::crypto::{PrivateKey, Purpose};
use common::envelope::Envelope;
use common::id::{KeyId, UserId};
use common::keystore::{KeyKind, NewKey, Origin};
use common::sealed::{self, KIND_GRANT};
use common::tls::TlsIdentity;
use prost::Message;
use proto::peer::v1::peer_server::{Peer, PeerServer};
use proto::peer::v1::{
    AuditPrivateKeyRequest, AuditPrivateKeyResponse, AuditPublicKeyRequest, AuditPublicKeyResponse,
    DeliverRequest, DeliverResponse, PingRequest, PingResponse,
};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::session::Session;

/// Largest sealed message accepted (a grant holds one private key and the
/// share's file names).
const MAX_MESSAGE: usize = 256 * 1024;
/// Nonces auditors may send.
const NONCE_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

/// A running daemon.
#[derive(Debug)]
pub struct Daemon {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Daemon {
    /// Serves on `listener` for `session`'s user until [`Daemon::shutdown`].
    pub fn spawn(session: Arc<Session>, listener: TcpListener) -> Result<Self, DaemonError> {
        let local_addr = listener.local_addr().map_err(DaemonError::Io)?;
        let tls = TlsIdentity::generate(session.master()).map_err(DaemonError::Tls)?;
        let cancel = CancellationToken::new();
        let incoming = net::server::incoming(
            listener,
            Arc::new(tls.server_config().map_err(DaemonError::Tls)?),
            net::server::Limits::default(),
            cancel.child_token(),
        );
        let service =
            PeerServer::new(PeerService { session }).max_decoding_message_size(MAX_MESSAGE + 4096);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned()),
        );
        info!(addr = %local_addr, "daemon listening");
        Ok(Self {
            local_addr,
            cancel,
            server,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets calls in flight finish, and returns.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "daemon server ended with an error"),
            Err(e) => debug!(error = %e, "daemon server task failed"),
        }
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The listener failed.
    #[error("cannot listen: {0}")]
    Io(#[source] std::io::Error),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(common::tls::TlsError),
}

/// The key an audit names, once its nonce is of a size we sign.
fn audited(key_id: &str, nonce: &[u8]) -> Result<KeyId, Status> {
    if !NONCE_BYTES.contains(&nonce.len()) {
        return Err(Status::invalid_argument("the nonce must be 16 to 64 bytes"));
    }
    key_id
        .parse()
        .map_err(|e| Status::invalid_argument(format!("key ID: {e}")))
}

struct PeerService {
    session: Arc<Session>,
}

impl PeerService {
    fn me(&self) -> &UserId {
        self.session.user()
    }

    /// The key `key_id` names, if we hold its private part.
    fn private_key(&self, key_id: &KeyId) -> Result<Arc<PrivateKey>, Status> {
        if key_id.is_master() && key_id.owner() == self.me() {
            return Ok(self.session.master().clone());
        }
        let keystore = self
            .session
            .home()
            .keystore()
            .map_err(|_| Status::internal("the keystore cannot be read"))?;
        match keystore.load_private(key_id, None) {
            Ok((key, _)) => Ok(Arc::new(key)),
            Err(_) => Err(Status::not_found("no such private key here")),
        }
    }

    async fn deliver_grant(
        &self,
        peer: &net::PeerInfo,
        wire: DeliverRequest,
    ) -> Result<(), Status> {
        let envelope = Envelope::from_proto(
            wire.message
                .ok_or_else(|| Status::invalid_argument("missing message"))?,
            MAX_MESSAGE,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The claim only says whose key to check the signature with; the
        // connection must come from that same key.
        let sender = sealed::claimed_sender(&envelope)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let sender_key = self
            .session
            .master_key_of(&sender)
            .await
            .map_err(|e| Status::failed_precondition(format!("cannot check {sender}: {e}")))?;
        if sender_key.node_id() != peer.node_id {
            return Err(Status::permission_denied(
                "a grant is delivered by its sender only",
            ));
        }
        let plaintext = sealed::open(
            &envelope,
            &sender,
            &sender_key,
            self.me(),
            self.session.master(),
            KIND_GRANT,
            common::unix_now(),
        )
        .map_err(|e| Status::permission_denied(e.to_string()))?;
        let mut grant = proto::common::v1::Grant::decode(plaintext.as_slice())
            .map_err(|e| Status::invalid_argument(format!("malformed grant: {e}")))?;
        let key_id: KeyId = grant
            .key_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("grant key ID: {e}")))?;
        if key_id.is_master() || key_id.owner() != &sender {
            return Err(Status::permission_denied(
                "a grant gives a share key of its sender's own",
            ));
        }
        let key = PrivateKey::from_pkcs8_der(&grant.private_key);
        zeroize::Zeroize::zeroize(&mut grant.private_key);
        let key = key.map_err(|e| Status::invalid_argument(format!("grant key: {e}")))?;
        let keystore = self
            .session
            .home()
            .keystore()
            .map_err(|_| Status::internal("the keystore cannot be read"))?;
        if keystore.contains(&key_id) {
            let (held, meta) = keystore
                .load_public(&key_id)
                .map_err(|_| Status::internal("the keystore cannot be read"))?;
            if meta.kind == KeyKind::Private && held == *key.public_key() {
                debug!(key = %key_id, "grant for a key held already");
                return Ok(());
            }
            return Err(Status::already_exists(format!(
                "another key {key_id} is here already"
            )));
        }
        keystore
            .add_private(
                NewKey {
                    key_id: key_id.clone(),
                    label: grant.label,
                    epoch: grant.epoch,
                    origin: Origin::ReceivedFrom(sender.clone()),
                },
                &key,
                None,
            )
            .map_err(|e| Status::internal(format!("cannot store the key: {e}")))?;
        info!(key = %key_id, from = %sender, files = grant.file_names.len(), "share received");
        Ok(())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        Ok(Response::new(PingResponse {
            user_id: self.me().to_string(),
        }))
    }

    async fn audit_private_key(
        &self,
        request: Request<AuditPrivateKeyRequest>,
    ) -> Result<Response<AuditPrivateKeyResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        let request = request.into_inner();
        let key_id = audited(&request.key_id, &request.nonce)?;
        // Whether we hold a share key is for its owner to ask, nobody else.
        if !key_id.is_master() {
            let owner = self
                .session
                .master_key_of(key_id.owner())
                .await
                .map_err(|_| Status::permission_denied("only a key's owner audits it"))?;
            if owner.node_id() != peer.node_id {
                return Err(Status::permission_denied("only a key's owner audits it"));
            }
        } else if key_id.owner() != self.me() {
            return Err(Status::not_found("no such private key here"));
        }
        let key = self.private_key(&key_id)?;
        let message = audit::peer_proof(
            &peer.node_id,
            &self.session.master().public_key().node_id(),
            &key_id,
            &request.nonce,
        );
        let signature = key
            .sign(Purpose::Audit, &message)
            .map_err(|_| Status::internal("cannot sign"))?;
        Ok(Response::new(AuditPrivateKeyResponse { signature }))
    }

    async fn audit_public_key(
        &self,
        request: Request<AuditPublicKeyRequest>,
    ) -> Result<Response<AuditPublicKeyResponse>, Status> {
        let request = request.into_inner();
        let key_id = audited(&request.key_id, &request.nonce)?;
        let public = if key_id.is_master() && key_id.owner() == self.me() {
            self.session.master().public_key().clone()
        } else {
            self.session
                .home()
                .keystore()
                .map_err(|_| Status::internal("the keystore cannot be read"))?
                .load_public(&key_id)
                .map_err(|_| Status::not_found("no such key here"))?
                .0
        };
        let mut hasher = Sha256::new();
        hasher.update(&request.nonce);
        hasher.update(public.spki_der());
        Ok(Response::new(AuditPublicKeyResponse {
            digest: hasher.finalize().to_vec(),
        }))
    }

    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        match self.deliver_grant(&peer, request.into_inner()).await {
            Ok(()) => Ok(Response::new(DeliverResponse {})),
            Err(status) => {
                debug!(peer = %peer.node_id.fmt_short(), %status, "delivery refused");
                Err(status)
            }
        }
    }
}
