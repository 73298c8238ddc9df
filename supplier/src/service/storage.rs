//! `silt.storage.v1.Storage`: contracts, share keys, proofs of possession,
//! fragments, manifests and update notifications.
//!
//! Every request that touches a location is authorized first
//! ([`StorageService::authorize`]): the owner, authenticated by mutual TLS,
//! may do everything; anyone else needs a live grant earned with a proof of
//! possession of the location's key, may read, write and subscribe, but never
//! delete; the `master` location is the owner's alone.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::audit;
use common::crypto::{PublicKey, Purpose};
use common::digest::{FragmentDigest, FragmentHash};
use common::envelope::Envelope;
use common::id::{Alias, IdHost, KeyId, NodeId, UserId};
use common::identity::{IdentityDocument, SignedIdentity};
use common::manifest::{Manifest, ObjectId, SignedManifest};
use net::PeerInfo;
use net::idserver::{self, IdServerError};
use prost::Message;
use prost::bytes::Bytes;
use proto::common::v1::Location;
use proto::storage::v1::storage_server::Storage;
use proto::storage::v1::{
    ChallengeRequest, ChallengeResponse, CommitManifestRequest, CommitManifestResponse,
    DeleteRequest, DeleteResponse, Event, EventKind, FragmentHeader, FragmentRef,
    GetFragmentRequest, GetFragmentResponse, HireRequest, HireResponse, InlineFragment,
    KeyRegistration, KeyRemoval, ListManifestsRequest, ListManifestsResponse, OfferRequest,
    OfferResponse, ProveRequest, ProveResponse, PutFragmentRequest, PutFragmentResponse,
    RegisterKeyRequest, RegisterKeyResponse, ReleaseRequest, ReleaseResponse, RemoveKeyRequest,
    RemoveKeyResponse, SubscribeRequest, get_fragment_response, put_fragment_request,
};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::grant::{GrantError, Grants};
use crate::metrics::Metrics;
use crate::store::{
    Carried, Commit, CommitRefusal, Contract, KeyRecord, Store, StoreError, keys, room_for_customer,
};

/// Most fragment bytes one commit may carry (`CommitManifestRequest.fragments`).
pub const MAX_INLINE_BYTES: u64 = 1 << 20;

/// Bounds and durations of the storage service.
#[derive(Debug, Clone)]
pub struct StorageLimits {
    /// Total bytes offered to customers.
    pub capacity: u64,
    /// Largest fragment accepted.
    pub max_fragment_bytes: u64,
    /// Versions of an object kept.
    pub keep_versions: usize,
    /// How long a grant from a proof lasts.
    pub grant_ttl: Duration,
    /// How long a challenge nonce lasts.
    pub nonce_ttl: Duration,
    /// Most open subscriptions.
    pub max_subscriptions: usize,
    /// Most customers holding contracts at once.
    pub max_customers: usize,
}

impl Default for StorageLimits {
    fn default() -> Self {
        Self {
            capacity: 10 << 30,
            max_fragment_bytes: 32 << 20,
            keep_versions: 3,
            grant_ttl: Duration::from_secs(300),
            nonce_ttl: Duration::from_secs(60),
            max_subscriptions: 4096,
            max_customers: 10_000,
        }
    }
}

/// Bytes per `GetFragment` chunk message: fragments of default blocks fit
/// in one, well under the message limit.
const READ_CHUNK: usize = 8 << 20;
const MAX_PAGE: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;
/// Manifest bytes in one `ListManifests` page, unless its one manifest is
/// larger: a customer accepts messages of up to 21 MiB, and a manifest may be
/// up to 16 MiB.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
const MAX_ENVELOPE: usize = 64 * 1024;
/// How long `Hire` waits for a user's identity server, connection included.
const NAME_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a member's name, once confirmed, is taken as confirmed.
const NAME_CONFIRMED_FOR: Duration = Duration::from_secs(10 * 60);
/// Most members' names remembered as confirmed.
const CONFIRMED_NAMES: usize = 1024;

/// An event for the subscribers of a location (identified by its key).
#[derive(Debug, Clone)]
pub struct LocationEvent {
    location: Vec<u8>,
    event: Event,
}

/// Why a request failed; mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Denied(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QuotaExceeded { .. }
            | StoreError::Full { .. }
            | StoreError::DiskFull { .. }
            | StoreError::NoMoreCustomers { .. } => Self::Exhausted(e.to_string()),
            StoreError::NoContract => {
                Self::Precondition("no contract with this supplier: hire it first".into())
            }
            other => Self::Store(other),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::BadRequest(m) => Status::invalid_argument(m),
            Error::Denied(m) => Status::permission_denied(m),
            Error::NotFound(m) => Status::not_found(m),
            Error::Conflict(m) => Status::already_exists(m),
            Error::Precondition(m) => Status::failed_precondition(m),
            Error::Exhausted(m) => Status::resource_exhausted(m),
            Error::Unavailable(m) => Status::unavailable(m),
            Error::Corrupt(m) => {
                tracing::error!(error = %m, "stored data is damaged");
                Status::data_loss("stored data is damaged")
            }
            Error::Store(inner) => {
                tracing::error!(error = %inner, "storage failure");
                if inner.to_string().contains("No space left") {
                    Status::resource_exhausted("supplier disk is full")
                } else {
                    Status::internal("storage failure")
                }
            }
        }
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::BadRequest(message.into())
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Delete,
}

/// A location resolved against the store.
#[derive(Debug)]
struct Resolved {
    key_id: KeyId,
    owner: NodeId,
    contract: Contract,
    key: Vec<u8>,
}

/// Where a supplier confirms that a user ID belongs to the key hiring it:
/// its own identity role for the names it hosts, the user's identity
/// server for the rest.
#[derive(Debug, Clone)]
pub struct NameCheck {
    /// The identity host this supplier serves names for, if it has the role.
    pub own_host: Option<IdHost>,
    /// For asking other identity servers.
    pub dialer: net::Dialer,
}

/// Serves `silt.storage.v1.Storage`.
#[derive(Debug, Clone)]
pub struct StorageService {
    store: Store,
    grants: Arc<Grants>,
    events: broadcast::Sender<LocationEvent>,
    subscriptions: Arc<Semaphore>,
    supplier_id: NodeId,
    limits: StorageLimits,
    names: NameCheck,
    /// Members' names confirmed with their identity servers, and when.
    confirmed: Arc<std::sync::Mutex<HashMap<(String, NodeId), Instant>>>,
    metrics: Metrics,
    cancel: CancellationToken,
}

impl StorageService {
    /// A service over `store` for the supplier `supplier_id`. Subscriptions
    /// end when `cancel` fires.
    pub fn new(
        store: Store,
        supplier_id: NodeId,
        limits: StorageLimits,
        names: NameCheck,
        metrics: Metrics,
        cancel: CancellationToken,
    ) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            grants: Arc::new(Grants::new(limits.nonce_ttl, limits.grant_ttl)),
            subscriptions: Arc::new(Semaphore::new(limits.max_subscriptions)),
            store,
            events,
            supplier_id,
            limits,
            names,
            confirmed: Arc::default(),
            metrics,
            cancel,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        Ok(self.store.run(work).await?)
    }

    /// Finds the owner's contract and the location's key bytes.
    async fn resolve(&self, location: Option<Location>) -> Result<Resolved, Error> {
        let location = location.ok_or_else(|| bad("missing location"))?;
        let owner: UserId = location.owner.parse().map_err(|e| bad(format!("{e}")))?;
        let alias: Alias = location.alias.parse().map_err(|e| bad(format!("{e}")))?;
        let key_id = KeyId::new(alias, owner);
        let user = key_id.owner().to_string();
        let found = self
            .run(move |store| {
                let Some(node) = store.customer(&user)? else {
                    return Ok(None);
                };
                Ok(store.contract(&node)?.map(|contract| (node, contract)))
            })
            .await?;
        let (owner, contract) = found.ok_or_else(|| {
            Error::Precondition(format!(
                "{} has no contract with this supplier",
                key_id.owner()
            ))
        })?;
        Ok(Resolved {
            key: keys::location(&owner, key_id.alias().as_str()),
            key_id,
            owner,
            contract,
        })
    }

    async fn share_key(&self, location: &[u8]) -> Result<Option<KeyRecord>, Error> {
        let location = location.to_vec();
        self.run(move |store| store.key(&location)).await
    }

    /// Checks that `peer` may do `access` on `location`.
    /// Checks that `peer` may do `access` in `location`. Returns `None` for
    /// the owner, and for a member the key epoch its grant was proved for.
    async fn authorize(
        &self,
        peer: &PeerInfo,
        location: &Resolved,
        access: Access,
    ) -> Result<Option<u64>, Error> {
        if peer.node_id == location.owner {
            return Ok(None);
        }
        if location.key_id.is_master() {
            return Err(Error::Denied(
                "the master location is readable only by its owner",
            ));
        }
        if access == Access::Delete {
            return Err(Error::Denied("only the owner may delete"));
        }
        let Some(record) = self.share_key(&location.key).await? else {
            return Err(Error::Denied("not authorized for this location"));
        };
        if self
            .grants
            .is_granted(peer.connection, &location.key, record.epoch, Instant::now())
        {
            Ok(Some(record.epoch))
        } else {
            Err(Error::Denied(
                "prove possession of the location's key first (Challenge, Prove)",
            ))
        }
    }

    /// The key manifests of `location` must be signed with, and its epoch.
    async fn location_key(&self, location: &Resolved) -> Result<(PublicKey, u64), Error> {
        if location.key_id.is_master() {
            let key = PublicKey::from_spki_der(&location.contract.master_key)
                .map_err(|e| Error::Corrupt(format!("contract key: {e}")))?;
            return Ok((key, 0));
        }
        let record = self.share_key(&location.key).await?.ok_or_else(|| {
            Error::Precondition(format!("no key {} is registered here", location.key_id))
        })?;
        let key = PublicKey::from_spki_der(&record.public_key)
            .map_err(|e| Error::Corrupt(format!("registered key: {e}")))?;
        Ok((key, record.epoch))
    }

    fn publish(&self, location: &Resolved, kind: EventKind, object_id: &[u8; 32], version: u64) {
        let event = Event {
            location: Some(Location {
                owner: location.key_id.owner().to_string(),
                alias: location.key_id.alias().to_string(),
            }),
            kind: kind.into(),
            object_id: object_id.to_vec(),
            version,
            at_unix: common::unix_now(),
        };
        // No subscribers is not an error.
        let _ = self.events.send(LocationEvent {
            location: location.key.clone(),
            event,
        });
    }

    fn refresh_usage(&self) {
        let (bytes, fragments) = self.store.usage();
        self.metrics.set_usage(bytes, fragments);
    }

    // Handlers. Each returns our Error; the trait impl maps it and counts it.

    async fn offer(&self, peer: &PeerInfo, _request: OfferRequest) -> Result<OfferResponse, Error> {
        let caller = peer.node_id;
        let contracts = self.run(|store| store.contracts()).await?;
        let own = contracts
            .iter()
            .find(|(node, _)| *node == caller)
            .map(|(_, c)| c.quota_bytes);
        // A supplier with all the customers it takes has nothing to offer a
        // new one.
        let room = room_for_customer(own.is_some(), contracts.len(), self.limits.max_customers);
        let promised: u64 = contracts.iter().map(|(_, c)| c.quota_bytes).sum();
        let (available, max_contract) = match room {
            // A hire by a customer replaces its contract, so its own quota
            // is there for it to take again (as `Store::hire_within` counts).
            Ok(()) => {
                let elsewhere = promised.saturating_sub(own.unwrap_or(0));
                (
                    self.limits.capacity.saturating_sub(promised),
                    self.limits.capacity.saturating_sub(elsewhere),
                )
            }
            Err(_) => (0, 0),
        };
        Ok(OfferResponse {
            available_bytes: available,
            max_contract_bytes: max_contract,
        })
    }

    async fn hire(&self, peer: &PeerInfo, request: HireRequest) -> Result<HireResponse, Error> {
        let identity =
            SignedIdentity::from_proto(request.identity.ok_or_else(|| bad("missing identity"))?)
                .map_err(|e| bad(e.to_string()))?;
        let document = identity.document();
        if document.node_id() != peer.node_id {
            return Err(Error::Denied("the identity document is not the caller's"));
        }
        if request.quota_bytes == 0 {
            return Err(bad("quota must be more than 0 bytes"));
        }
        let owner = peer.node_id;
        // A contract binds the name for DHT records and locations, so a new
        // one needs the identity server's word that the name is this key's.
        let max_customers = self.limits.max_customers;
        let existing = self
            .run(move |store| {
                // Before asking an identity server anything.
                let existing = store.contract(&owner)?;
                room_for_customer(existing.is_some(), store.customer_count()?, max_customers)?;
                Ok(existing)
            })
            .await?;
        if existing.is_none_or(|c| c.user_id != document.user_id.to_string()) {
            self.confirm_name(document).await?;
        }
        let user = document.user_id.to_string();
        let master = document.master_key.spki_der().to_vec();
        let capacity = self.limits.capacity;
        let quota = request.quota_bytes;
        let contract = self
            .run(move |store| {
                if let Some(node) = store.customer(&user)?
                    && node != owner
                {
                    return Ok(Err(()));
                }
                if let Some(existing) = store.contract(&owner)?
                    && existing.user_id != user
                {
                    return Ok(Err(()));
                }
                store
                    .hire_within(&owner, &user, &master, quota, capacity, max_customers)
                    .map(Ok)
            })
            .await?
            .map_err(|()| {
                Error::Conflict(
                    "this user id or key already has a contract under another name".into(),
                )
            })?;
        info!(customer = %document.user_id, quota, "contract");
        Ok(HireResponse {
            quota_bytes: contract.quota_bytes,
            used_bytes: contract.used_bytes,
        })
    }

    /// Checks with the user's identity server (or this supplier's own
    /// identity role) that `document`'s user ID is registered to its key.
    async fn confirm_name(&self, document: &IdentityDocument) -> Result<(), Error> {
        let user = document.user_id.clone();
        let registered = if self.names.own_host.as_ref() == Some(user.idhost()) {
            let key = user.to_string();
            match self.run(move |store| store.identity(&key)).await? {
                Some(bytes) => Some(
                    SignedIdentity::from_bytes(&bytes)
                        .map_err(|e| Error::Corrupt(format!("hosted identity of {user}: {e}")))?,
                ),
                None => None,
            }
        } else {
            let server = user.idhost().server_addr();
            // Within the customer's own deadline for the Hire call.
            let fetched = tokio::time::timeout(
                NAME_CHECK_TIMEOUT,
                idserver::fetch(&self.names.dialer, &server, &user),
            )
            .await
            .unwrap_or_else(|_| {
                Err(IdServerError::Unreachable {
                    server: server.clone(),
                    reason: "timed out".into(),
                })
            });
            match fetched {
                Ok(identity) => Some(identity),
                Err(IdServerError::NotFound { .. }) => None,
                Err(e @ IdServerError::Unreachable { .. }) => {
                    return Err(Error::Unavailable(format!(
                        "cannot confirm the name {user}: {e}"
                    )));
                }
                Err(e) => {
                    return Err(Error::Precondition(format!(
                        "cannot confirm the name {user}: {e}"
                    )));
                }
            }
        };
        match registered {
            None => Err(Error::Precondition(format!(
                "{user} is not registered on its identity server {}: publish the identity there first",
                user.idhost()
            ))),
            Some(identity) if identity.document().master_key != document.master_key => Err(
                Error::Denied("this user id is registered to another key on its identity server"),
            ),
            Some(_) => Ok(()),
        }
    }

    /// [`Self::confirm_name`] for a member writing to a share, remembered
    /// for a while so that every commit does not ask the identity server.
    /// A member who is a customer here under that name needs no asking.
    async fn confirm_member_name(&self, document: &IdentityDocument) -> Result<(), Error> {
        let key = (document.user_id.to_string(), document.node_id());
        let now = Instant::now();
        let remembered = self
            .confirmed()
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < NAME_CONFIRMED_FOR);
        if remembered {
            return Ok(());
        }
        let (user, node) = key.clone();
        let customer = self.run(move |store| store.customer(&user)).await? == Some(node);
        if !customer {
            self.confirm_name(document).await.map_err(|e| match e {
                // The member's identity server, not this supplier, is
                // unreachable: say so, rather than look unavailable.
                Error::Unavailable(reason) => Error::Precondition(reason),
                other => other,
            })?;
        }
        let mut confirmed = self.confirmed();
        if confirmed.len() >= CONFIRMED_NAMES {
            confirmed.retain(|_, at| now.duration_since(*at) < NAME_CONFIRMED_FOR);
        }
        if confirmed.len() >= CONFIRMED_NAMES
            && let Some(oldest) = confirmed
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(key, _)| key.clone())
        {
            confirmed.remove(&oldest);
        }
        confirmed.insert(key, now);
        Ok(())
    }

    fn confirmed(&self) -> std::sync::MutexGuard<'_, HashMap<(String, NodeId), Instant>> {
        // Each change leaves the map whole, so a poisoned lock is usable.
        self.confirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn release(&self, peer: &PeerInfo) -> Result<ReleaseResponse, Error> {
        let owner = peer.node_id;
        self.run(move |store| store.release(&owner)).await?;
        info!(customer = %owner.fmt_short(), "contract released");
        self.refresh_usage();
        Ok(ReleaseResponse {})
    }

    /// Opens a key registration or removal signed by the caller, who must own
    /// the location it names.
    async fn owner_signed<M: Message + Default>(
        &self,
        peer: &PeerInfo,
        envelope: Option<proto::common::v1::Envelope>,
        purpose: Purpose,
        key_id: impl FnOnce(&M) -> &str,
    ) -> Result<(M, Resolved), Error> {
        let envelope = Envelope::from_proto(
            envelope.ok_or_else(|| bad("missing envelope"))?,
            MAX_ENVELOPE,
        )
        .map_err(|e| bad(e.to_string()))?;
        let body: M = envelope
            .open_message(&peer.master_key, purpose)
            .map_err(|_| Error::Denied("not signed by the caller's master key"))?;
        let key_id: KeyId = key_id(&body).parse().map_err(|e| bad(format!("{e}")))?;
        if key_id.is_master() {
            return Err(bad(
                "the master key is not registered; it is the owner's identity",
            ));
        }
        let location = self
            .resolve(Some(Location {
                owner: key_id.owner().to_string(),
                alias: key_id.alias().to_string(),
            }))
            .await?;
        if location.owner != peer.node_id {
            return Err(Error::Denied("only the owner may register or remove keys"));
        }
        Ok((body, location))
    }

    async fn register_key(
        &self,
        peer: &PeerInfo,
        request: RegisterKeyRequest,
    ) -> Result<RegisterKeyResponse, Error> {
        let (registration, location) = self
            .owner_signed::<KeyRegistration>(
                peer,
                request.registration,
                Purpose::KeyRegister,
                |r| &r.key_id,
            )
            .await?;
        PublicKey::from_spki_der(&registration.public_key)
            .map_err(|e| bad(format!("share key: {e}")))?;
        let record = KeyRecord {
            public_key: registration.public_key,
            epoch: registration.epoch,
            registered_unix: common::unix_now(),
        };
        let key = location.key.clone();
        let changed = self
            .run(move |store| {
                let mut changed = false;
                let outcome = store.update_key(&key, |current| match current {
                    None => {
                        changed = true;
                        Ok(Some(record))
                    }
                    Some(current) if record.epoch > current.epoch => {
                        changed = true;
                        Ok(Some(record))
                    }
                    Some(current)
                        if record.epoch == current.epoch
                            && record.public_key == current.public_key =>
                    {
                        Ok(None)
                    }
                    Some(current) if record.epoch == current.epoch => {
                        Err(format!("epoch {} already has another key", current.epoch))
                    }
                    Some(current) => Err(format!(
                        "epoch {} is older than the registered epoch {}",
                        record.epoch, current.epoch
                    )),
                })?;
                Ok(outcome.map(|()| changed))
            })
            .await?
            .map_err(Error::Precondition)?;
        if changed {
            self.grants.revoke(&location.key);
            info!(key = %location.key_id, "share key registered");
        }
        Ok(RegisterKeyResponse {})
    }

    async fn remove_key(
        &self,
        peer: &PeerInfo,
        request: RemoveKeyRequest,
    ) -> Result<RemoveKeyResponse, Error> {
        let (_, location) = self
            .owner_signed::<KeyRemoval>(peer, request.removal, Purpose::KeyRemove, |r| &r.key_id)
            .await?;
        let key = location.key.clone();
        let removed = self.run(move |store| store.remove_key(&key)).await?;
        self.grants.revoke(&location.key);
        if !removed {
            return Err(Error::NotFound(format!(
                "no key {} is registered",
                location.key_id
            )));
        }
        info!(key = %location.key_id, "share key removed");
        Ok(RemoveKeyResponse {})
    }

    async fn challenge(
        &self,
        peer: &PeerInfo,
        request: ChallengeRequest,
    ) -> Result<ChallengeResponse, Error> {
        let location = self.resolve(request.location).await?;
        if location.key_id.is_master() {
            return Err(Error::Denied(
                "the master location is readable only by its owner",
            ));
        }
        let record = self
            .share_key(&location.key)
            .await?
            .ok_or(Error::Denied("not authorized for this location"))?;
        let nonce = self
            .grants
            .challenge(
                peer.connection,
                peer.node_id,
                location.key.clone(),
                location.key_id.clone(),
                record.epoch,
                Instant::now(),
            )
            .map_err(|e| Error::Exhausted(e.to_string()))?;
        Ok(ChallengeResponse {
            nonce: nonce.to_vec(),
            epoch: record.epoch,
            supplier_id: self.supplier_id.as_bytes().to_vec(),
        })
    }

    async fn prove(&self, peer: &PeerInfo, request: ProveRequest) -> Result<ProveResponse, Error> {
        let location = self.resolve(request.location).await?;
        let denied = |e: GrantError| {
            debug!(error = %e, "proof refused");
            Error::Denied("proof refused")
        };
        let pending = self
            .grants
            .take(
                &request.nonce,
                peer.connection,
                peer.node_id,
                &location.key,
                Instant::now(),
            )
            .map_err(denied)?;
        let record = self
            .share_key(&location.key)
            .await?
            .ok_or(Error::Denied("proof refused"))?;
        if request.epoch != pending.epoch || record.epoch != pending.epoch {
            return Err(Error::Denied("proof refused"));
        }
        let key = PublicKey::from_spki_der(&record.public_key)
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        let message = audit::supplier_proof(
            &self.supplier_id,
            &peer.node_id,
            &pending.key_id,
            pending.epoch,
            &request.nonce,
        );
        key.verify(Purpose::Audit, &message, &request.signature)
            .map_err(|_| Error::Denied("proof refused"))?;
        self.grants.grant(
            peer.connection,
            location.key.clone(),
            pending.epoch,
            Instant::now(),
        );
        debug!(peer = %peer.node_id.fmt_short(), key = %location.key_id, "proof accepted");
        Ok(ProveResponse {
            ttl_seconds: u32::try_from(self.grants.grant_ttl().as_secs()).unwrap_or(u32::MAX),
        })
    }

    /// Validates a fragment reference and authorizes it.
    async fn fragment_ref(
        &self,
        peer: &PeerInfo,
        fragment: Option<FragmentRef>,
        access: Access,
    ) -> Result<(Resolved, Vec<u8>), Error> {
        let fragment = fragment.ok_or_else(|| bad("missing fragment reference"))?;
        let object = ObjectId::from_slice(&fragment.object_id).map_err(|e| bad(e.to_string()))?;
        if fragment.version == 0 {
            return Err(bad("version must be at least 1"));
        }
        if fragment.position >= common::manifest::MAX_POSITIONS {
            return Err(bad("position out of range"));
        }
        let location = self.resolve(fragment.location).await?;
        self.authorize(peer, &location, access).await?;
        let key = keys::fragment(
            &location.key,
            &object.0,
            fragment.version,
            fragment.block,
            fragment.position,
        );
        Ok((location, key))
    }

    async fn put_fragment(
        &self,
        peer: &PeerInfo,
        mut stream: Streaming<PutFragmentRequest>,
    ) -> Result<PutFragmentResponse, Error> {
        let first = stream
            .message()
            .await
            .map_err(|s| bad(format!("reading the stream: {}", s.message())))?
            .ok_or_else(|| bad("empty stream"))?;
        let Some(put_fragment_request::Part::Header(header)) = first.part else {
            return Err(bad("the first message must be the header"));
        };
        let FragmentHeader {
            fragment,
            size,
            digest,
            hash,
        } = header;
        let expected = FragmentDigest {
            hash: FragmentHash::from_wire(hash).map_err(|e| bad(e.to_string()))?,
            value: digest
                .as_slice()
                .try_into()
                .map_err(|_| bad("the digest must be 32 bytes"))?,
        };
        if size > self.limits.max_fragment_bytes {
            return Err(Error::Exhausted(format!(
                "fragment of {size} bytes is larger than the {} allowed",
                self.limits.max_fragment_bytes
            )));
        }
        let (location, key) = self.fragment_ref(peer, fragment, Access::Write).await?;
        // Refuse before reading the payload if it cannot fit.
        if location.contract.used_bytes + size > location.contract.quota_bytes {
            return Err(StoreError::QuotaExceeded {
                used: location.contract.used_bytes,
                quota: location.contract.quota_bytes,
                needed: size,
            }
            .into());
        }
        let capacity = usize::try_from(size).map_err(|_| bad("fragment too large"))?;
        // Chunks are views of the receive buffer; a fragment of one chunk
        // (the usual case) is stored from it without a copy.
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut received = 0;
        let mut hasher = expected.hash.hasher();
        while let Some(message) = stream
            .message()
            .await
            .map_err(|s| bad(format!("reading the stream: {}", s.message())))?
        {
            let Some(put_fragment_request::Part::Chunk(chunk)) = message.part else {
                return Err(bad("only chunks may follow the header"));
            };
            received += chunk.len();
            if received > capacity {
                return Err(bad("more bytes than the header declared"));
            }
            hasher.update(&chunk);
            chunks.push(chunk);
        }
        if received != capacity {
            return Err(bad(format!(
                "got {received} bytes, the header declared {size}"
            )));
        }
        let payload = if chunks.len() == 1 {
            chunks.swap_remove(0)
        } else {
            Bytes::from(chunks.concat())
        };
        let actual = FragmentDigest {
            hash: expected.hash,
            value: hasher.finalize(),
        };
        if actual != expected {
            return Err(bad(format!(
                "fragment does not match its declared {} digest",
                expected.hash
            )));
        }
        let owner = location.owner;
        let capacity = self.limits.capacity;
        self.run(move |store| store.stage(&owner, &key, &payload, actual, capacity))
            .await?;
        Ok(PutFragmentResponse {
            digest: actual.value.to_vec(),
            size,
        })
    }

    async fn get_fragment(
        &self,
        peer: &PeerInfo,
        request: GetFragmentRequest,
    ) -> Result<Vec<GetFragmentResponse>, Error> {
        let reference = request.fragment.clone();
        let (_, key) = self
            .fragment_ref(peer, request.fragment, Access::Read)
            .await?;
        let fragment = self
            .run(move |store| store.fragment(&key))
            .await
            .map_err(|e| match e {
                Error::Store(StoreError::Damaged(m)) => Error::Corrupt(m),
                other => other,
            })?
            .ok_or_else(|| Error::NotFound("no such fragment".into()))?;
        let header = FragmentHeader {
            fragment: reference,
            size: fragment.payload.len() as u64,
            digest: fragment.digest.value.to_vec(),
            hash: fragment.digest.hash.to_wire(),
        };
        let mut parts = vec![GetFragmentResponse {
            part: Some(get_fragment_response::Part::Header(header)),
        }];
        let chunk = |bytes| GetFragmentResponse {
            part: Some(get_fragment_response::Part::Chunk(bytes)),
        };
        // Chunks are views of the payload read from the store, not copies.
        let payload = Bytes::from(fragment.payload);
        parts.extend(
            payload
                .chunks(READ_CHUNK)
                .map(|c| chunk(payload.slice_ref(c))),
        );
        Ok(parts)
    }

    /// Checks the fragments a commit carries against the (verified)
    /// manifest: each names a block of it once, has its fragment size, and
    /// hashes to its entry for `position`.
    fn inline_fragments(
        &self,
        location: &Resolved,
        manifest: &Manifest,
        position: u32,
        fragments: Vec<InlineFragment>,
    ) -> Result<Vec<Carried>, Error> {
        let total: u64 = fragments.iter().map(|f| f.data.len() as u64).sum();
        if let Some(large) = fragments
            .iter()
            .find(|f| f.data.len() as u64 > self.limits.max_fragment_bytes)
        {
            return Err(Error::Exhausted(format!(
                "fragment of {} bytes is larger than the {} allowed",
                large.data.len(),
                self.limits.max_fragment_bytes
            )));
        }
        if total > MAX_INLINE_BYTES {
            return Err(bad(format!(
                "a commit carries {total} bytes of fragments, more than the {MAX_INLINE_BYTES} \
                 allowed: upload them with PutFragment"
            )));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(fragments.len());
        for InlineFragment { block, data } in fragments {
            let entry = usize::try_from(block)
                .ok()
                .and_then(|b| manifest.blocks.get(b))
                .ok_or_else(|| bad(format!("the commit carries a fragment of block {block}, which the manifest does not have")))?;
            if !seen.insert(block) {
                return Err(bad(format!("the commit carries block {block} twice")));
            }
            let digest = FragmentDigest::of(manifest.fragment_hash, &data);
            if data.len() as u64 != entry.fragment_size
                || entry.digests.get(position as usize) != Some(&digest.value)
            {
                return Err(bad(format!(
                    "the fragment of block {block} the commit carries does not match the manifest"
                )));
            }
            let key = keys::fragment(
                &location.key,
                &manifest.object_id.0,
                manifest.version,
                block,
                position,
            );
            out.push(Carried {
                key,
                payload: data,
                digest,
            });
        }
        Ok(out)
    }

    async fn commit_manifest(
        &self,
        peer: &PeerInfo,
        request: CommitManifestRequest,
    ) -> Result<CommitManifestResponse, Error> {
        let location = self.resolve(request.location).await?;
        self.authorize(peer, &location, Access::Write).await?;
        let signed =
            SignedManifest::from_proto(request.manifest.ok_or_else(|| bad("missing manifest"))?)
                .map_err(|e| bad(e.to_string()))?;
        let (location_key, epoch) = self.location_key(&location).await?;
        let manifest = signed
            .verify_location(&location_key)
            .map_err(|e| bad(e.to_string()))?;
        if manifest.location != location.key_id {
            return Err(bad("the manifest is for another location"));
        }
        if manifest.epoch != epoch {
            return Err(Error::Precondition(format!(
                "the manifest is for key epoch {}, the location is at epoch {epoch}",
                manifest.epoch
            )));
        }
        let writer = SignedIdentity::from_proto(
            request
                .writer_identity
                .ok_or_else(|| bad("missing writer identity"))?,
        )
        .map_err(|e| bad(e.to_string()))?;
        if writer.document().user_id != manifest.writer
            || writer.document().node_id() != peer.node_id
        {
            return Err(Error::Denied("the manifest's writer is not the caller"));
        }
        signed
            .verify_writer(&writer.document().master_key)
            .map_err(|e| bad(e.to_string()))?;
        if request.position >= manifest.scheme.positions() {
            return Err(bad("position is outside the manifest's scheme"));
        }
        // The name the version is signed under must be the writer's own:
        // the owner's is its contract's, a member's its identity server's.
        if peer.node_id == location.owner {
            if manifest.writer.to_string() != location.contract.user_id {
                return Err(Error::Denied(
                    "the manifest's writer is not the name the owner hired under",
                ));
            }
        } else {
            self.confirm_member_name(writer.document()).await?;
        }
        let position = request.position;
        let inline = self.inline_fragments(&location, &manifest, position, request.fragments)?;
        let fragments = manifest
            .blocks
            .iter()
            .enumerate()
            .filter_map(|(block, entry)| {
                entry.digests.get(position as usize).map(|&value| {
                    let digest = FragmentDigest {
                        hash: manifest.fragment_hash,
                        value,
                    };
                    (block as u64, position, digest)
                })
            })
            .collect();
        let commit = Commit {
            owner: location.owner,
            location: location.key.clone(),
            object_id: manifest.object_id.0,
            version: manifest.version,
            manifest: signed.to_proto().encode_to_vec(),
            fragments,
            keep_versions: self.limits.keep_versions,
        };
        let capacity = self.limits.capacity;
        self.run(move |store| store.commit_carrying(&commit, &inline, capacity))
            .await?
            .map_err(|refusal: CommitRefusal| Error::Precondition(refusal.to_string()))?;
        debug!(location = %location.key_id, object = ?manifest.object_id, version = manifest.version, "committed");
        self.publish(
            &location,
            EventKind::Commit,
            &manifest.object_id.0,
            manifest.version,
        );
        self.refresh_usage();
        Ok(CommitManifestResponse {})
    }

    async fn list_manifests(
        &self,
        peer: &PeerInfo,
        request: ListManifestsRequest,
    ) -> Result<ListManifestsResponse, Error> {
        let location = self.resolve(request.location).await?;
        self.authorize(peer, &location, Access::Read).await?;
        let object = if request.object_id.is_empty() {
            None
        } else {
            Some(
                ObjectId::from_slice(&request.object_id)
                    .map_err(|e| bad(e.to_string()))?
                    .0,
            )
        };
        let after = if request.page_token.is_empty() {
            None
        } else if request.page_token.starts_with(&location.key) {
            Some(request.page_token)
        } else {
            return Err(bad("page token is not from this location"));
        };
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        } as usize;
        let key = location.key.clone();
        let page = self
            .run(move |store| {
                store.manifests(
                    &key,
                    object.as_ref(),
                    after.as_deref(),
                    limit,
                    MAX_PAGE_BYTES,
                )
            })
            .await?;
        let more = page.more;
        let last = page.last;
        let manifests = page
            .manifests
            .into_iter()
            .map(|bytes| {
                proto::storage::v1::SignedManifest::decode(bytes.as_slice())
                    .map_err(|e| Error::Corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ListManifestsResponse {
            manifests,
            next_page_token: if more {
                last.unwrap_or_default()
            } else {
                Vec::new()
            },
        })
    }

    async fn delete(
        &self,
        peer: &PeerInfo,
        request: DeleteRequest,
    ) -> Result<DeleteResponse, Error> {
        let location = self.resolve(request.location).await?;
        self.authorize(peer, &location, Access::Delete).await?;
        let object = ObjectId::from_slice(&request.object_id).map_err(|e| bad(e.to_string()))?;
        let version = (request.version != 0).then_some(request.version);
        let (owner, key) = (location.owner, location.key.clone());
        let removed = self
            .run(move |store| store.delete(&owner, &key, &object.0, version))
            .await?;
        if removed.versions.is_empty() {
            return Err(Error::NotFound("no such object or version".into()));
        }
        for version in &removed.versions {
            self.publish(&location, EventKind::Delete, &object.0, *version);
        }
        self.refresh_usage();
        Ok(DeleteResponse {})
    }

    async fn subscribe(
        &self,
        peer: &PeerInfo,
        request: SubscribeRequest,
    ) -> Result<ReceiverStream<Result<Event, Status>>, Error> {
        let location = self.resolve(request.location).await?;
        // A member hears events only while its grant lives: once the key
        // changes (a revocation) or the grant expires, the stream ends.
        let member = self
            .authorize(peer, &location, Access::Read)
            .await?
            .map(|epoch| (peer.connection, epoch));
        let grants = self.grants.clone();
        let permit = self
            .subscriptions
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::Exhausted("too many subscriptions".into()))?;
        let mut events = self.events.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let cancel = self.cancel.clone();
        let gauge = self.metrics.subscriptions.clone();
        gauge.inc();
        let key = location.key;
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tx.closed() => break,
                    received = events.recv() => match received {
                        Ok(event) if event.location == key => {
                            if let Some((connection, epoch)) = member
                                && !grants.holds(connection, &key, epoch, Instant::now())
                            {
                                let _ = tx.send(Err(Status::permission_denied(
                                    "access to this location ended (its key changed or the grant expired): prove possession again and subscribe again",
                                ))).await;
                                break;
                            }
                            if tx.send(Ok(event.event)).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            warn!(missed, "a subscriber fell behind; closing its stream");
                            let _ = tx.send(Err(Status::aborted("missed events; subscribe again and re-list"))).await;
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            gauge.dec();
        });
        Ok(ReceiverStream::new(rx))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;
type FragmentStream = Pin<Box<dyn Stream<Item = Result<GetFragmentResponse, Status>> + Send>>;

impl StorageService {
    fn finish<T>(&self, method: &str, result: Result<T, Error>) -> Result<Response<T>, Status> {
        let result = result.map(Response::new).map_err(Status::from);
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.metrics.request(method, code);
        if let Err(status) = &result {
            debug!(method, code = ?status.code(), message = status.message(), "request refused");
        }
        result
    }
}

#[tonic::async_trait]
impl Storage for StorageService {
    async fn offer(
        &self,
        request: Request<OfferRequest>,
    ) -> Result<Response<OfferResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish("Offer", self.offer(&peer, request.into_inner()).await)
    }

    async fn hire(&self, request: Request<HireRequest>) -> Result<Response<HireResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish("Hire", self.hire(&peer, request.into_inner()).await)
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish("Release", self.release(&peer).await)
    }

    async fn register_key(
        &self,
        request: Request<RegisterKeyRequest>,
    ) -> Result<Response<RegisterKeyResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish(
            "RegisterKey",
            self.register_key(&peer, request.into_inner()).await,
        )
    }

    async fn remove_key(
        &self,
        request: Request<RemoveKeyRequest>,
    ) -> Result<Response<RemoveKeyResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish(
            "RemoveKey",
            self.remove_key(&peer, request.into_inner()).await,
        )
    }

    async fn challenge(
        &self,
        request: Request<ChallengeRequest>,
    ) -> Result<Response<ChallengeResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish(
            "Challenge",
            self.challenge(&peer, request.into_inner()).await,
        )
    }

    async fn prove(
        &self,
        request: Request<ProveRequest>,
    ) -> Result<Response<ProveResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish("Prove", self.prove(&peer, request.into_inner()).await)
    }

    async fn put_fragment(
        &self,
        request: Request<Streaming<PutFragmentRequest>>,
    ) -> Result<Response<PutFragmentResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish(
            "PutFragment",
            self.put_fragment(&peer, request.into_inner()).await,
        )
    }

    type GetFragmentStream = FragmentStream;

    async fn get_fragment(
        &self,
        request: Request<GetFragmentRequest>,
    ) -> Result<Response<Self::GetFragmentStream>, Status> {
        let peer = net::peer(&request)?.clone();
        let parts = self
            .get_fragment(&peer, request.into_inner())
            .await
            .map(|parts| Box::pin(tokio_stream::iter(parts.into_iter().map(Ok))) as FragmentStream);
        self.finish("GetFragment", parts)
    }

    async fn commit_manifest(
        &self,
        request: Request<CommitManifestRequest>,
    ) -> Result<Response<CommitManifestResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish(
            "CommitManifest",
            self.commit_manifest(&peer, request.into_inner()).await,
        )
    }

    async fn list_manifests(
        &self,
        request: Request<ListManifestsRequest>,
    ) -> Result<Response<ListManifestsResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish(
            "ListManifests",
            self.list_manifests(&peer, request.into_inner()).await,
        )
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let peer = net::peer(&request)?.clone();
        self.finish("Delete", self.delete(&peer, request.into_inner()).await)
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = net::peer(&request)?.clone();
        let stream = self
            .subscribe(&peer, request.into_inner())
            .await
            .map(|s| Box::pin(s) as EventStream);
        self.finish("Subscribe", stream)
    }
}
