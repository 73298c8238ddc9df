//! The customer's own service (`silt daemon`), on the listen address its
//! identity document advertises, over the same mutual TLS as every node:
//!
//! - `Ping`, the online check a granting owner makes first;
//! - `AuditPrivateKey`: a signature over the auditor's nonce with our master
//!   key (anyone may ask), or with a share key we hold (only its owner may
//!   ask, so that nobody else learns who holds it);
//! - `AuditPublicKey`: a nonce-salted digest of our master key, or, for its
//!   owner, of a share key we hold;
//! - `Deliver`: a grant, sealed to us and signed by a share's owner, which
//!   puts the share's private key in our keystore.
//!
//! Every request but `Ping` is rate-limited per peer; those that cost an
//! RSA operation or a lookup for a peer we have not pinned also draw on a
//! budget shared by all such strangers.
//!
//! See `docs/design/sharing.md`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use common::audit;
use common::crypto::{PrivateKey, Purpose};
use common::envelope::Envelope;
use common::id::{KeyId, NodeId, UserId};
use common::keystore::{KeyKind, NewKey, Origin};
use common::sealed::{self, KIND_GRANT};
use common::tls::TlsIdentity;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
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
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::session::Session;

/// Largest sealed message accepted (a grant holds one private key and the
/// share's file names).
const MAX_MESSAGE: usize = 256 * 1024;
/// Nonces auditors may send.
const NONCE_BYTES: std::ops::RangeInclusive<usize> = 16..=64;
/// Longest label kept from a grant.
const MAX_LABEL_CHARS: usize = 200;
/// Most share keys one sender, and all senders together, may have given us.
const MAX_KEYS_PER_SENDER: usize = 100;
const MAX_RECEIVED_KEYS: usize = 1000;
/// How long shutdown waits for calls in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Requests that cost an RSA operation or a lookup of another user, from
/// all peers we have not pinned together: a sustained rate per second, and
/// a burst.
const GLOBAL_PER_SECOND: u32 = 5;
const GLOBAL_BURST: u32 = 30;
/// Requests of any kind but `Ping` from one peer (one master key): a
/// sustained rate per minute, and a burst.
const PEER_PER_MINUTE: u32 = 30;
const PEER_BURST: u32 = 10;
/// Peers remembered by the per-peer limit before the idle ones are dropped.
const PEERS_REMEMBERED: usize = 4096;

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
        let service = PeerServer::new(PeerService {
            session,
            limits: Limits::new(),
            backups: Arc::default(),
        })
        .max_decoding_message_size(MAX_MESSAGE + 4096);
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

    /// Stops accepting, gives calls in flight up to 10 s to finish, and
    /// returns.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => debug!(error = %e, "daemon server ended with an error"),
            Ok(Err(e)) => debug!(error = %e, "daemon server task failed"),
            Err(_) => {
                debug!("calls still in flight after the grace period; stopping them");
                self.server.abort();
            }
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

struct PeerService {
    session: Arc<Session>,
    limits: Limits,
    /// Held while a key backup runs.
    backups: Arc<tokio::sync::Mutex<()>>,
}

/// Rate limits on the requests that cost us an RSA operation or a lookup
/// of another user (RUSTSEC-2023-0071 asks that what remains be
/// rate-limited): one over all peers, and one per peer.
struct Limits {
    global: DefaultDirectRateLimiter,
    per_peer: DefaultKeyedRateLimiter<NodeId>,
}

impl Limits {
    fn new() -> Self {
        let nonzero = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Self {
            global: RateLimiter::direct(
                Quota::per_second(nonzero(GLOBAL_PER_SECOND)).allow_burst(nonzero(GLOBAL_BURST)),
            ),
            per_peer: RateLimiter::keyed(
                Quota::per_minute(nonzero(PEER_PER_MINUTE)).allow_burst(nonzero(PEER_BURST)),
            ),
        }
    }

    /// Admits one request from `peer`, or refuses it before any work is
    /// done.
    fn admit(&self, peer: &NodeId) -> Result<(), Status> {
        if self.per_peer.len() > PEERS_REMEMBERED {
            self.per_peer.retain_recent();
        }
        self.per_peer.check_key(peer).map_err(|_| exhausted())
    }

    /// Admits one costly request that a stranger (a peer not pinned under
    /// the name it speaks for) asks of us: all strangers share this budget,
    /// since anyone can make as many keys, and so peers, as they like.
    /// Users we pinned never wait on it.
    fn admit_stranger(&self) -> Result<(), Status> {
        self.global.check().map_err(|_| exhausted())
    }
}

fn exhausted() -> Status {
    Status::resource_exhausted("too many requests; try again later")
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

    /// Whether `peer` is `user`. With a pin for `user`, the pin says,
    /// without any network. Without one, and only if `lookup` allows, their
    /// identity server says, once the strangers' budget admits the lookup;
    /// nothing is pinned then, so a stranger's request pins nothing, and
    /// there is no DHT fallback (a self-certifying record could carry any
    /// key under a name we never pinned). The caller learns no details.
    async fn is_user(
        &self,
        user: &UserId,
        peer: &net::PeerInfo,
        lookup: bool,
    ) -> Result<bool, Status> {
        let unknown = || Status::failed_precondition(format!("cannot confirm the key of {user}"));
        let pinned = self.session.home().pins().get(user).map_err(|e| {
            debug!(%user, error = %e, "pins unreadable");
            unknown()
        })?;
        match pinned {
            Some(pin) => Ok(pin == peer.node_id),
            None if !lookup => Ok(false),
            None => {
                self.limits.admit_stranger()?;
                let identity = self.session.fetch_identity(user).await.map_err(|e| {
                    debug!(%user, error = %e, "identity not fetched");
                    unknown()
                })?;
                Ok(identity.document().master_key.node_id() == peer.node_id)
            }
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
        if !self.is_user(&sender, peer, true).await? {
            return Err(Status::permission_denied(
                "a grant is delivered by its sender only",
            ));
        }
        let sender_key = peer.master_key.clone();
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
        let der = Zeroizing::new(std::mem::take(&mut grant.private_key));
        let key_id: KeyId = grant
            .key_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("grant key ID: {e}")))?;
        if key_id.is_master() || key_id.owner() != &sender {
            return Err(Status::permission_denied(
                "a grant gives a share key of its sender's own",
            ));
        }
        let key = PrivateKey::from_pkcs8_der(&der)
            .map_err(|e| Status::invalid_argument(format!("grant key: {e}")))?;
        let keystore = self
            .session
            .home()
            .keystore()
            .map_err(|_| Status::internal("the keystore cannot be read"))?;
        // Whether we hold this key already, and whether its private part.
        let held = || match keystore.load_public(&key_id) {
            Ok((public, meta)) if public == *key.public_key() => {
                Some(Ok(meta.kind == KeyKind::Private))
            }
            Ok(_) => Some(Err(())),
            Err(_) => None,
        };
        match held() {
            // The same key again (an owner retrying): nothing to do.
            Some(Ok(true)) => {
                debug!(key = %key_id, "grant for a key held already");
                return Ok(());
            }
            // Its public part only: the private part completes it.
            Some(Ok(false)) => {}
            Some(Err(())) => {
                return Err(Status::already_exists(format!(
                    "another key {key_id} is here already"
                )));
            }
            None => {
                let listing = keystore
                    .list()
                    .map_err(|_| Status::internal("the keystore cannot be read"))?;
                let received: Vec<_> = listing
                    .keys
                    .iter()
                    .filter(|meta| matches!(meta.origin, Origin::ReceivedFrom(_)))
                    .collect();
                let from_sender = received
                    .iter()
                    .filter(|meta| meta.origin == Origin::ReceivedFrom(sender.clone()))
                    .count();
                if from_sender >= MAX_KEYS_PER_SENDER || received.len() >= MAX_RECEIVED_KEYS {
                    return Err(Status::resource_exhausted(format!(
                        "no more keys are taken ({from_sender} from {sender}, {} in all)",
                        received.len()
                    )));
                }
            }
        }
        let label: String = grant
            .label
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_LABEL_CHARS)
            .collect();
        let stored = keystore.add_private(
            NewKey {
                key_id: key_id.clone(),
                label,
                epoch: grant.epoch,
                origin: Origin::ReceivedFrom(sender.clone()),
            },
            &key,
            None,
        );
        match stored {
            Ok(_) => {}
            // Another delivery of the same grant got there first.
            Err(_) if held() == Some(Ok(true)) => {}
            Err(e) => return Err(Status::internal(format!("cannot store the key: {e}"))),
        }
        // Only now, for a sender whose grant we took, is its key pinned.
        if let Err(e) = self.session.home().pins().check(&sender, &sender_key) {
            debug!(%sender, error = %e, "sender not pinned");
        }
        info!(key = %key_id, from = %sender, files = grant.file_names.len(), "share received");
        self.back_up_keys();
        Ok(())
    }

    /// Stores a key backup that holds a key just received, in the
    /// background, if we have suppliers: the member's copy of a share key
    /// is then as safe as the owner's. One at a time, so that two grants do
    /// not race for the same backup version.
    fn back_up_keys(&self) {
        let session = match self.session.reopen() {
            Ok(session) => session,
            Err(e) => {
                warn!(error = %e, "no key backup after a grant");
                return;
            }
        };
        if session.own_suppliers().is_err() {
            debug!("no suppliers hired: no key backup after a grant");
            return;
        }
        let one_at_a_time = self.backups.clone();
        tokio::spawn(async move {
            let _turn = one_at_a_time.lock().await;
            match session
                .backup_keys(crate::keybackup::LeaveOut::Nothing)
                .await
            {
                Ok(done) => info!(version = done.version, keys = done.keys, "keys backed up"),
                Err(e) => {
                    warn!(error = %e, "the received key is not in your key backup; run `silt key backup`")
                }
            }
        });
    }

    /// The key an audit by `peer` names, once the audit may go ahead: its
    /// nonce is of a size we sign, the peer is within its rate, and, for a
    /// share key, the peer is its owner as we pinned them when their grant
    /// came (no network). Whether we hold a share key is for its owner to
    /// learn, nobody else. A master key is anyone's to audit, but only ours
    /// is here.
    async fn audited(
        &self,
        peer: &net::PeerInfo,
        key_id: &str,
        nonce: &[u8],
    ) -> Result<KeyId, Status> {
        if !NONCE_BYTES.contains(&nonce.len()) {
            return Err(Status::invalid_argument("the nonce must be 16 to 64 bytes"));
        }
        let key_id: KeyId = key_id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("key ID: {e}")))?;
        self.limits.admit(&peer.node_id)?;
        if key_id.is_master() {
            return if key_id.owner() == self.me() {
                Ok(key_id)
            } else {
                Err(Status::not_found("no such key here"))
            };
        }
        match self.is_user(key_id.owner(), peer, false).await {
            Ok(true) => Ok(key_id),
            _ => Err(Status::permission_denied("only a key's owner audits it")),
        }
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
        let key_id = self.audited(&peer, &request.key_id, &request.nonce).await?;
        // Anyone may have our master key sign: an RSA operation for a
        // stranger.
        if key_id.is_master() {
            self.limits.admit_stranger()?;
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
        let peer = net::peer(&request)?.clone();
        let request = request.into_inner();
        let key_id = self.audited(&peer, &request.key_id, &request.nonce).await?;
        let public = if key_id.is_master() {
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
        self.limits.admit(&peer.node_id)?;
        match self.deliver_grant(&peer, request.into_inner()).await {
            Ok(()) => Ok(Response::new(DeliverResponse {})),
            Err(status) => {
                debug!(peer = %peer.node_id.fmt_short(), %status, "delivery refused");
                Err(status)
            }
        }
    }
}
