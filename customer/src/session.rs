//! A working session: the unlocked master key, our identity, a dialer, and
//! connections to our suppliers, opened on first use and checked against
//! their node IDs. In another user's share ([`Session::enter`]) the
//! connections go to the share owner's suppliers instead, and each proves
//! that we hold the share's key before it is used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::crypto::{PrivateKey, PublicKey, Purpose};
use common::envelope::Envelope;
use common::id::{KeyId, NodeId, UserId};
use common::identity::SignedIdentity;
use net::Dialer;
use prost::Message;
use proto::storage::v1::storage_client::StorageClient;
use proto::storage::v1::{
    ChallengeRequest, HireRequest, KeyRegistration, OfferRequest, ProveRequest, RegisterKeyRequest,
};
use tokio::sync::OnceCell;
use tonic::transport::Channel;

use crate::home::{Home, HomeError};
use crate::idserver::{self, IdServerError};
use crate::pipeline::LocationSecrets;
use crate::suppliers::{SupplierEntry, SupplierSet};

/// Deadline of one call to a supplier that moves no bulk data.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline for connecting to a supplier.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The home is not usable.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// No suppliers are hired.
    #[error(
        "no suppliers are hired yet: run `silt suppliers hire --supplier HOST:PORT ...` (in a home restored from a backup: `silt suppliers recover`)"
    )]
    NoSuppliers,
    /// The supplier list is damaged.
    #[error("cannot read the supplier list: {0}")]
    SupplierList(#[source] std::io::Error),
    /// A supplier could not be reached.
    #[error("supplier at position {position} ({addr}) is unreachable: {reason}")]
    Unreachable {
        /// Its position.
        position: u32,
        /// Its address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A supplier refused a request.
    #[error("supplier at position {position} refused: {message}")]
    Refused {
        /// Its position.
        position: u32,
        /// What it said.
        message: String,
    },
    /// The DHT could not be used.
    #[error("dht: {0}")]
    Dht(String),
    /// A supplier could not be hired.
    #[error("cannot hire {addr}: {reason}")]
    Hire {
        /// Its address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] common::tls::TlsError),
    /// The identity server failed.
    #[error(transparent)]
    IdServer(#[from] IdServerError),
    /// A key is unusable for this operation.
    #[error("{0}")]
    Key(String),
    /// Suppliers are hired already, so there is nothing to recover.
    #[error(
        "this home has its suppliers already ({0} positions, see `silt suppliers list`); recovering is for a restored home that has none"
    )]
    AlreadyHired(usize),
}

/// The keys of one location.
#[derive(Debug, Clone)]
pub struct LocationKeys {
    /// `alias$owner`.
    pub key_id: KeyId,
    /// The location's private key.
    pub private: Arc<PrivateKey>,
    /// Its public key.
    pub public: PublicKey,
    /// Key epoch.
    pub epoch: u64,
    /// The secrets derived from the private key: object IDs and file-key
    /// wrapping.
    pub secrets: Arc<LocationSecrets>,
}

/// An open session.
#[derive(Debug)]
pub struct Session {
    home: Home,
    user: UserId,
    master: Arc<PrivateKey>,
    identity: SignedIdentity,
    dialer: Dialer,
    /// The suppliers in use: ours, or, in another user's share, its owner's.
    suppliers: Option<SupplierSet>,
    channels: Vec<OnceCell<Channel>>,
    /// Set while we work in another user's share.
    member: Option<Membership>,
    block_size: usize,
    dht: OnceCell<dht::DhtHandle>,
}

/// Working in another user's share: its key, which every connection to the
/// owner's suppliers proves we hold, and when each position's proof lapses.
#[derive(Debug)]
struct Membership {
    keys: LocationKeys,
    /// Our own suppliers, in use again once we leave the share.
    own: Option<SupplierSet>,
    /// Per position: until when the proof on its connection holds; `None`
    /// before the first proof, and once renewing it failed.
    proved_until: Vec<Arc<tokio::sync::Mutex<Option<Instant>>>>,
    /// The tasks that renew the proofs while the connections are in use
    /// (a transfer holds its clients for as long as it runs); dropped, and
    /// so stopped, with the membership.
    renewals: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// Proves again on `channel` whenever the proof in `slot` is due, until
/// proving fails (the next [`Session::channel`] then proves, or reports
/// why it cannot).
async fn keep_proving(
    slot: Arc<tokio::sync::Mutex<Option<Instant>>>,
    channel: Channel,
    keys: LocationKeys,
    master: Arc<PrivateKey>,
    entry: SupplierEntry,
) {
    loop {
        let Some(due) = *slot.lock().await else {
            return;
        };
        tokio::time::sleep_until(due.into()).await;
        let mut until = slot.lock().await;
        // `Session::channel` may have proved meanwhile.
        if until.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        match prove(channel.clone(), &keys, &master, &entry).await {
            Ok(next) => *until = Some(next),
            Err(error) => {
                tracing::debug!(position = entry.position, %error, "the proof of the share key was not renewed");
                *until = None;
                return;
            }
        }
    }
}

impl Session {
    /// Opens a session with an unlocked master key.
    pub fn open(home: Home, master: PrivateKey) -> Result<Self, SessionError> {
        Self::open_shared(home, Arc::new(master))
    }

    /// A new session on the same home and key, which reads the home again:
    /// for a long-running process (the daemon) whose user may have hired
    /// suppliers since it started.
    pub fn reopen(&self) -> Result<Self, SessionError> {
        Self::open_shared(self.home.clone(), self.master.clone())
    }

    fn open_shared(home: Home, master: Arc<PrivateKey>) -> Result<Self, SessionError> {
        let config = home.config()?;
        let identity = home.identity()?;
        if identity.document().master_key != *master.public_key() {
            return Err(SessionError::Key(
                "the master key does not match the identity".into(),
            ));
        }
        let dialer = crate::dialer(&master)?.with_connect_timeout(CONNECT_TIMEOUT);
        let suppliers = SupplierSet::load(home.dir()).map_err(SessionError::SupplierList)?;
        let count = suppliers.as_ref().map_or(0, |s| s.suppliers.len());
        let channels = (0..count).map(|_| OnceCell::new()).collect();
        Ok(Self {
            home,
            user: config.user_id,
            master,
            identity,
            dialer,
            suppliers,
            channels,
            member: None,
            block_size: crate::pipeline::DEFAULT_BLOCK_SIZE,
            dht: OnceCell::new(),
        })
    }

    /// Plaintext bytes per block for new uploads.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Sets the block size of new uploads (within the pipeline's bounds).
    pub fn set_block_size(&mut self, block_size: usize) {
        self.block_size = block_size;
    }

    /// Our user ID.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// Our master key.
    pub fn master(&self) -> &Arc<PrivateKey> {
        &self.master
    }

    /// Our signed identity.
    pub fn identity(&self) -> &SignedIdentity {
        &self.identity
    }

    /// The home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// Our dialer, presenting our master key.
    pub(crate) fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The suppliers in use: the hired ones, or after [`Session::enter`] into
    /// another user's share, that owner's.
    pub fn suppliers(&self) -> Result<&SupplierSet, SessionError> {
        self.suppliers.as_ref().ok_or(SessionError::NoSuppliers)
    }

    /// Our own hired suppliers; an error while the session works in another
    /// user's share.
    pub fn own_suppliers(&self) -> Result<&SupplierSet, SessionError> {
        if let Some(member) = &self.member {
            return Err(SessionError::Key(format!(
                "this session works in {}, a share of {}; our own suppliers are not in use",
                member.keys.key_id,
                member.keys.key_id.owner()
            )));
        }
        self.suppliers()
    }

    /// The share of another user this session works in, if any.
    pub fn share(&self) -> Option<&KeyId> {
        self.member.as_ref().map(|m| &m.keys.key_id)
    }

    /// Uses `set` as our suppliers from now on (after hiring); leaves any
    /// share entered before.
    pub fn set_suppliers(&mut self, set: SupplierSet) {
        self.use_set(Some(set));
        self.member = None;
    }

    /// Puts `set` in use, with no connection open to it yet.
    fn use_set(&mut self, set: Option<SupplierSet>) {
        let count = set.as_ref().map_or(0, |s| s.suppliers.len());
        self.channels = (0..count).map(|_| OnceCell::new()).collect();
        self.suppliers = set;
    }

    /// Prepares to work in the location of `keys`. Our own locations need
    /// nothing. For a share of another user, whose private key we were
    /// given, the session switches to the owner's suppliers, taken from the
    /// owner's signed `suppliers/` record in the DHT; from then on each
    /// connection proves to its supplier that we hold the share's key
    /// (Challenge, Prove) before it is used. Entering one of our own
    /// locations afterwards switches back to our suppliers.
    pub async fn enter(&mut self, keys: &LocationKeys) -> Result<(), SessionError> {
        let owner = keys.key_id.owner();
        if owner == &self.user {
            if let Some(member) = self.member.take() {
                self.use_set(member.own);
            }
            return Ok(());
        }
        if keys.key_id.is_master() {
            return Err(SessionError::Key(format!(
                "{} is another user's master location, which only they can read",
                keys.key_id
            )));
        }
        let list = self.suppliers_of(owner).await?;
        let set = owner_set(owner, &list)?;
        let own = match self.member.take() {
            Some(member) => member.own,
            None => self.suppliers.take(),
        };
        self.member = Some(Membership {
            keys: keys.clone(),
            own,
            proved_until: (0..set.suppliers.len())
                .map(|_| Arc::new(tokio::sync::Mutex::new(None)))
                .collect(),
            renewals: std::sync::Mutex::default(),
        });
        self.use_set(Some(set));
        Ok(())
    }

    /// Publishes our identity if the identity server has not got this
    /// revision yet. Failure to reach it is reported, not fatal.
    pub async fn ensure_published(&self) -> Result<bool, SessionError> {
        let state = self.home.state()?;
        let revision = self.identity.document().revision;
        if state.published_revision.is_some_and(|r| r >= revision) {
            return Ok(false);
        }
        let server = self.home.config()?.id_server;
        let stored = idserver::publish(&self.dialer, &server, &self.identity).await?;
        let mut state = state;
        state.published_revision = Some(stored);
        self.home.set_state(&state)?;
        Ok(true)
    }

    /// The channel to the supplier at a position, connecting on first use.
    /// In another user's share it carries a proof that we hold the share's
    /// key, renewed in the background before it lapses.
    pub async fn channel(&self, position: u32) -> Result<Channel, SessionError> {
        let set = self.suppliers()?;
        let missing = || SessionError::Key(format!("no supplier at position {position}"));
        let entry = set.suppliers.get(position as usize).ok_or_else(missing)?;
        let cell = self.channels.get(position as usize).ok_or_else(missing)?;
        let channel = cell.get_or_try_init(|| self.dial(entry)).await?.clone();
        if let Some(member) = &self.member {
            let slot = member
                .proved_until
                .get(position as usize)
                .ok_or_else(missing)?;
            let mut until = slot.lock().await;
            let renewing = until.is_some();
            if until.is_none_or(|t| Instant::now() >= t) {
                *until = Some(prove(channel.clone(), &member.keys, &self.master, entry).await?);
                if !renewing && let Ok(mut renewals) = member.renewals.lock() {
                    renewals.spawn(keep_proving(
                        slot.clone(),
                        channel.clone(),
                        member.keys.clone(),
                        self.master.clone(),
                        entry.clone(),
                    ));
                }
            }
        }
        Ok(channel)
    }

    /// A new connection to the supplier of `entry`, which must prove its
    /// node ID. In another user's share it is never re-opened: a supplier
    /// keeps our proof of the share key per connection, so a new one would
    /// be refused; a supplier whose connection closed counts as unreachable
    /// for the rest of the session, as any other would.
    async fn dial(&self, entry: &SupplierEntry) -> Result<Channel, SessionError> {
        let connecting = if self.member.is_some() {
            self.dialer.connect_once(&entry.addr, entry.node_id).await
        } else {
            self.dialer.connect(&entry.addr, Some(entry.node_id)).await
        };
        connecting
            .map(|connection| connection.channel)
            .map_err(|e| SessionError::Unreachable {
                position: entry.position,
                addr: entry.addr.clone(),
                reason: e.to_string(),
            })
    }

    /// Sends one call to the supplier of every position in turn. Returns
    /// whether any of them did it, and why each that failed did;
    /// `NOT_FOUND` (nothing there to act on) counts as neither.
    pub(crate) async fn on_every_position(
        &self,
        call: impl AsyncFn(StorageClient<Channel>) -> Result<(), tonic::Status>,
    ) -> Result<(bool, Vec<String>), SessionError> {
        let count = self.suppliers()?.suppliers.len() as u32;
        let mut done = false;
        let mut failures = Vec::new();
        for position in 0..count {
            let client = match self.client(position).await {
                Ok(client) => client,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            match call(client).await {
                Ok(()) => done = true,
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => failures.push(
                    status_error(position, &self.supplier_addr(position), &status).to_string(),
                ),
            }
        }
        Ok((done, failures))
    }

    /// The storage client of a position, connecting on first use.
    pub async fn client(&self, position: u32) -> Result<StorageClient<Channel>, SessionError> {
        Ok(storage_client(self.channel(position).await?))
    }

    /// A new connection to `entry`, a supplier that may be outside the set
    /// (one about to take `entry.position`).
    pub async fn connect(
        &self,
        entry: &SupplierEntry,
    ) -> Result<StorageClient<Channel>, SessionError> {
        Ok(storage_client(self.dial(entry).await?))
    }

    /// The keys of a location we hold the private key of.
    pub fn location_keys(&self, key_id: &KeyId) -> Result<LocationKeys, SessionError> {
        let (private, epoch) = if key_id.is_master() && key_id.owner() == &self.user {
            (self.master.clone(), 0)
        } else if key_id.is_master() {
            return Err(SessionError::Key(format!(
                "{key_id} is another user's master location, which only they can read"
            )));
        } else {
            let (key, meta) = self
                .home
                .keystore()?
                .load_private(key_id, None)
                .map_err(|e| SessionError::Key(e.to_string()))?;
            (Arc::new(key), meta.epoch)
        };
        let secrets = LocationSecrets::derive(private.clone())
            .map_err(|e| SessionError::Key(e.to_string()))?;
        Ok(LocationKeys {
            key_id: key_id.clone(),
            public: private.public_key().clone(),
            private,
            epoch,
            secrets: Arc::new(secrets),
        })
    }

    /// Registers the public key of one of our own share locations with every
    /// supplier (idempotent), all at once. The master location needs none,
    /// and neither does a share of another user's: its owner registers it.
    ///
    /// Fails unless at least `k` suppliers took it, since fewer could not
    /// serve a member a single file; the positions that did not are
    /// returned (a later call catches them up).
    pub async fn register_location(
        &self,
        keys: &LocationKeys,
    ) -> Result<Vec<SessionError>, SessionError> {
        if keys.key_id.owner() != &self.user {
            return Ok(Vec::new());
        }
        let Some(registration) = self.key_registration(keys)? else {
            return Ok(Vec::new());
        };
        let set = self.own_suppliers()?;
        let registering = (0..set.suppliers.len() as u32).map(|position| {
            let registration = &registration;
            async move {
                let client = self.client(position).await?;
                register_key(
                    client,
                    registration,
                    position,
                    &self.supplier_addr(position),
                )
                .await
            }
        });
        let failed: Vec<SessionError> = futures_util::future::join_all(registering)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        let took = set.suppliers.len() - failed.len();
        if took < set.data as usize {
            let mut reasons = failed.iter().map(ToString::to_string).collect::<Vec<_>>();
            reasons.sort();
            return Err(SessionError::Key(format!(
                "the key of {} reached only {took} of {} suppliers, and {} are needed: {}",
                keys.key_id,
                set.suppliers.len(),
                set.data,
                reasons.join("; ")
            )));
        }
        Ok(failed)
    }

    /// The signed registration of one of our own locations' public key, or
    /// `None` for the master location, which needs none.
    pub(crate) fn key_registration(
        &self,
        keys: &LocationKeys,
    ) -> Result<Option<Envelope>, SessionError> {
        if keys.key_id.is_master() {
            return Ok(None);
        }
        if keys.key_id.owner() != &self.user {
            return Err(SessionError::Key(format!(
                "{} belongs to {}; only its owner registers it",
                keys.key_id,
                keys.key_id.owner()
            )));
        }
        let registration = KeyRegistration {
            key_id: keys.key_id.to_string(),
            public_key: keys.public.spki_der().to_vec(),
            epoch: keys.epoch,
            issued_unix: common::unix_now(),
        };
        Envelope::seal_message(&self.master, Purpose::KeyRegister, &registration)
            .map(Some)
            .map_err(|e| SessionError::Key(e.to_string()))
    }

    /// Hires the suppliers at `addrs` with `quota` bytes each, in position
    /// order, and returns their entries, after publishing our identity to our
    /// identity server if it lacks this revision (suppliers check the name
    /// there). The supplier set is not saved.
    pub async fn hire(
        &self,
        addrs: &[String],
        quota: u64,
    ) -> Result<Vec<SupplierEntry>, SessionError> {
        self.hire_except(addrs, quota, &[]).await
    }

    /// [`Session::hire`], refusing (before any contract is touched) a
    /// supplier that is one of `taken` already.
    pub async fn hire_except(
        &self,
        addrs: &[String],
        quota: u64,
        taken: &[SupplierEntry],
    ) -> Result<Vec<SupplierEntry>, SessionError> {
        // Suppliers confirm our name with our identity server before they
        // take us on, so it must hold our identity first.
        self.ensure_published().await?;
        let mut entries = Vec::with_capacity(addrs.len());
        for (position, addr) in addrs.iter().enumerate() {
            let hire_error = |reason: String| SessionError::Hire {
                addr: addr.clone(),
                reason,
            };
            let connection = self
                .dialer
                .connect(addr, None)
                .await
                .map_err(|e| hire_error(e.to_string()))?;
            let node_id = connection.peer.node_id;
            if entries.iter().any(|e: &SupplierEntry| e.node_id == node_id) {
                return Err(hire_error("the same supplier is listed twice".into()));
            }
            if let Some(held) = taken.iter().find(|e| e.node_id == node_id) {
                return Err(hire_error(format!(
                    "it is the supplier at position {} already; pick one outside the set",
                    held.position
                )));
            }
            let mut client = StorageClient::new(connection.channel);
            let mut offer = tonic::Request::new(OfferRequest {
                requested_bytes: quota,
            });
            offer.set_timeout(CALL_TIMEOUT);
            let offer = client
                .offer(offer)
                .await
                .map_err(|s| hire_error(s.message().to_owned()))?
                .into_inner();
            // An earlier contract of ours counts as ours to take again.
            if offer.max_contract_bytes < quota {
                return Err(hire_error(format!(
                    "it offers {} bytes, {quota} were asked for",
                    offer.max_contract_bytes
                )));
            }
            let mut hire = tonic::Request::new(HireRequest {
                identity: Some(self.identity.to_proto()),
                quota_bytes: quota,
            });
            hire.set_timeout(CALL_TIMEOUT);
            client
                .hire(hire)
                .await
                .map_err(|s| hire_error(s.message().to_owned()))?;
            entries.push(SupplierEntry {
                position: position as u32,
                addr: addr.clone(),
                node_id,
            });
        }
        Ok(entries)
    }

    /// The master public key of `user`: ours, or from their identity
    /// ([`Session::identity_of`]).
    pub async fn master_key_of(&self, user: &UserId) -> Result<PublicKey, SessionError> {
        if user == &self.user {
            return Ok(self.master.public_key().clone());
        }
        Ok(self.identity_of(user).await?.document().master_key.clone())
    }

    /// `user`'s identity: from their identity server, else (when it cannot
    /// be reached) from the DHT; either way checked against, or pinned as,
    /// their key.
    pub async fn identity_of(&self, user: &UserId) -> Result<SignedIdentity, SessionError> {
        match self.fetch_identity(user).await {
            Ok(identity) => {
                self.home
                    .pins()
                    .check(user, &identity.document().master_key)
                    .map_err(|e| SessionError::Key(e.to_string()))?;
                Ok(identity)
            }
            // The identity server is down: the DHT is the fallback.
            Err(IdServerError::Unreachable { .. }) => self.identity_from_dht(user).await,
            Err(e) => Err(e.into()),
        }
    }

    /// `user`'s identity from their identity server, verified but not
    /// checked against our pins.
    pub(crate) async fn fetch_identity(
        &self,
        user: &UserId,
    ) -> Result<SignedIdentity, IdServerError> {
        idserver::fetch(&self.dialer, &user.idhost().server_addr(), user).await
    }

    /// The address of the supplier at `position`, for messages.
    pub fn supplier_addr(&self, position: u32) -> String {
        self.suppliers
            .as_ref()
            .and_then(|set| set.suppliers.get(position as usize))
            .map_or_else(|| "not hired".to_owned(), |entry| entry.addr.clone())
    }

    /// The node ID of the supplier at `position`.
    pub fn supplier_id(&self, position: u32) -> Option<NodeId> {
        self.suppliers
            .as_ref()
            .and_then(|s| s.suppliers.get(position as usize))
            .map(|e| e.node_id)
    }
}

impl Session {
    /// A client-mode DHT node, joined through the configured seeds and our
    /// suppliers. Customers query the DHT but never store for others.
    pub async fn dht(&self) -> Result<&dht::DhtHandle, SessionError> {
        self.dht
            .get_or_try_init(|| async {
                let mut seeds = self.home.config()?.bootstrap;
                if let Some(set) = &self.suppliers {
                    seeds.extend(set.suppliers.iter().map(|s| s.addr.clone()));
                }
                if seeds.is_empty() {
                    return Err(SessionError::Dht(
                        "no seeds: set bootstrap in config.toml (silt init --bootstrap HOST:PORT)"
                            .into(),
                    ));
                }
                let signers = IdentitySigners {
                    dialer: self.dialer.clone(),
                    pins: self.home.pins(),
                    me: self.user.clone(),
                    my_node: self.master.public_key().node_id(),
                };
                let handle = dht::DhtNode::new(dht::Config::client(), self.dialer.clone())
                    .with_signers(Arc::new(signers))
                    .spawn()
                    .map_err(|e| SessionError::Dht(e.to_string()))?;
                handle
                    .bootstrap(seeds)
                    .await
                    .map_err(|e| SessionError::Dht(format!("cannot join: {e}")))?;
                Ok(handle)
            })
            .await
    }

    /// Finds `count` suppliers through the DHT: their node IDs and addresses.
    pub async fn find_suppliers(
        &self,
        count: usize,
    ) -> Result<Vec<(NodeId, String)>, SessionError> {
        self.find_suppliers_except(count, &[]).await
    }

    /// [`Session::find_suppliers`], leaving out the suppliers in `except`.
    pub async fn find_suppliers_except(
        &self,
        count: usize,
        except: &[NodeId],
    ) -> Result<Vec<(NodeId, String)>, SessionError> {
        let dht = self.dht().await?;
        let mut found: Vec<(NodeId, String)> = Vec::new();
        for _ in 0..8 {
            let target = dht::Key::from_array(rand::random());
            let contacts = dht
                .find_node(target)
                .await
                .map_err(|e| SessionError::Dht(e.to_string()))?;
            for contact in contacts {
                let Some(addr) = contact.endpoints().first() else {
                    continue;
                };
                if !found.iter().any(|(id, _)| *id == contact.id())
                    && !except.contains(&contact.id())
                {
                    found.push((contact.id(), addr.clone()));
                }
            }
            if found.len() >= count {
                break;
            }
        }
        if found.len() < count {
            return Err(SessionError::Dht(format!(
                "found {} suppliers, {count} were asked for",
                found.len()
            )));
        }
        found.truncate(count);
        Ok(found)
    }

    /// Publishes our `suppliers/` record: to the DHT, and to each of our
    /// suppliers, which keep it and republish it. Returns how many stored it.
    pub async fn publish_suppliers(&self) -> Result<usize, SessionError> {
        let set = self.own_suppliers()?;
        let list = proto::dht::v1::SupplierList {
            user_id: self.user.to_string(),
            data: set.data,
            parity: set.parity,
            suppliers: set
                .suppliers
                .iter()
                .map(|s| proto::dht::v1::NodeContact {
                    node_id: s.node_id.as_bytes().to_vec(),
                    endpoints: vec![s.addr.clone()],
                })
                .collect(),
        };
        let key = dht::record::RecordKey::suppliers(self.user.clone());
        let sequence = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let expires = common::unix_now() + RECORD_LIFETIME_SECS;
        let envelope =
            dht::record::Record::seal(&self.master, &key, sequence, expires, list.encode_to_vec())
                .map_err(|e| SessionError::Dht(e.to_string()))?;
        let mut stored = 0;
        for position in 0..set.suppliers.len() as u32 {
            let Ok(channel) = self.channel(position).await else {
                continue;
            };
            let mut dht_client = proto::dht::v1::dht_client::DhtClient::new(channel);
            let mut request = tonic::Request::new(proto::dht::v1::StoreRequest {
                sender: None,
                record: Some(envelope.to_proto()),
            });
            request.set_timeout(CALL_TIMEOUT);
            if dht_client.store(request).await.is_ok() {
                stored += 1;
            }
        }
        if let Ok(dht) = self.dht().await
            && let Ok(report) = dht.put(&envelope).await
        {
            stored += report.remote;
        }
        // Our identity goes along, for those who cannot reach our identity
        // server; failing that is not fatal.
        if let Err(e) = self.publish_identity_record().await {
            tracing::debug!(error = %e, "identity record not published");
        }
        if stored == 0 {
            return Err(SessionError::Dht("no node stored our supplier list".into()));
        }
        Ok(stored)
    }

    /// Publishes our identity document in the DHT as `identity/<user>`.
    pub async fn publish_identity_record(&self) -> Result<usize, SessionError> {
        let key = dht::record::RecordKey::identity(self.user.clone());
        let sequence = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let envelope = dht::record::Record::seal(
            &self.master,
            &key,
            sequence,
            common::unix_now() + RECORD_LIFETIME_SECS,
            self.identity.to_proto().encode_to_vec(),
        )
        .map_err(|e| SessionError::Dht(e.to_string()))?;
        let report = self
            .dht()
            .await?
            .put(&envelope)
            .await
            .map_err(|e| SessionError::Dht(e.to_string()))?;
        Ok(report.remote)
    }

    /// The identity of `user` from the DHT (when its identity server cannot
    /// be reached), checked against our pins.
    pub async fn identity_from_dht(&self, user: &UserId) -> Result<SignedIdentity, SessionError> {
        let record = self
            .dht()
            .await?
            .get(&dht::record::RecordKey::identity(user.clone()))
            .await
            .map_err(|e| SessionError::Dht(e.to_string()))?
            .ok_or_else(|| SessionError::Dht(format!("no identity for {user}")))?;
        let identity = record.identity().cloned().ok_or_else(|| {
            SessionError::Dht(format!("the identity record of {user} is malformed"))
        })?;
        self.home
            .pins()
            .check(user, &identity.document().master_key)
            .map_err(|e| SessionError::Key(e.to_string()))?;
        Ok(identity)
    }

    /// Finds our own suppliers again, from our `suppliers/` record in the
    /// DHT, which our master key signed (the DHT checks that before it
    /// returns the record): for a home restored from an identity backup,
    /// which has the key but not the list of where its data is. The set is
    /// saved to the home and put in use. Refused when suppliers are hired.
    pub async fn recover_suppliers(&mut self) -> Result<SupplierSet, SessionError> {
        if let Ok(set) = self.own_suppliers() {
            return Err(SessionError::AlreadyHired(set.suppliers.len()));
        }
        let user = self.user.clone();
        let list = self.suppliers_of(&user).await?;
        let set = owner_set(&user, &list)?;
        set.save(self.home.dir())
            .map_err(SessionError::SupplierList)?;
        self.set_suppliers(set.clone());
        Ok(set)
    }

    /// The suppliers of `user`, from the DHT, checked against their
    /// identity.
    pub async fn suppliers_of(
        &self,
        user: &UserId,
    ) -> Result<proto::dht::v1::SupplierList, SessionError> {
        let dht = self.dht().await?;
        let record = dht
            .get(&dht::record::RecordKey::suppliers(user.clone()))
            .await
            .map_err(|e| SessionError::Dht(e.to_string()))?
            .ok_or_else(|| SessionError::Dht(format!("no supplier list for {user}")))?;
        proto::dht::v1::SupplierList::decode(record.value())
            .map_err(|e| SessionError::Dht(format!("malformed supplier list: {e}")))
    }
}

/// How long a published supplier list lives: just under the DHT's 48 hours;
/// suppliers republish it meanwhile.
const RECORD_LIFETIME_SECS: i64 = 47 * 3600;

/// How long the DHT's signer resolver waits for an identity server.
const IDENTITY_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Finds who signs a user's records: our own key, else the key pinned for
/// them, else the key from their identity server (then pinned).
///
/// A pin always wins: a user we pinned is never resolved through their
/// identity server or the DHT's `identity/` records, so neither can swap
/// the key. A pin file that cannot be read is an error, not "no pin".
#[derive(Debug)]
struct IdentitySigners {
    dialer: Dialer,
    pins: common::identity::PinStore,
    me: UserId,
    my_node: NodeId,
}

impl dht::signer::SignerResolver for IdentitySigners {
    fn resolve<'a>(&'a self, user: &'a UserId) -> dht::signer::Resolving<'a> {
        Box::pin(async move {
            use dht::signer::Unresolved;
            if user == &self.me {
                return Ok(Some(self.my_node));
            }
            if let Some(pinned) = self
                .pins
                .get(user)
                .map_err(|e| Unresolved::new(e.to_string()))?
            {
                return Ok(Some(pinned));
            }
            // Well within the DHT node's request timeout, so that a server
            // that hangs leaves time for the fallback.
            let fetched = tokio::time::timeout(
                IDENTITY_LOOKUP_TIMEOUT,
                idserver::fetch(&self.dialer, &user.idhost().server_addr(), user),
            )
            .await
            .unwrap_or_else(|_| {
                Err(IdServerError::Unreachable {
                    server: user.idhost().server_addr(),
                    reason: format!("no answer within {IDENTITY_LOOKUP_TIMEOUT:?}"),
                })
            });
            match fetched {
                Ok(identity) => {
                    let key = &identity.document().master_key;
                    // Pins it; fails only if another lookup pinned another
                    // key meanwhile.
                    self.pins
                        .check(user, key)
                        .map_err(|e| Unresolved::new(e.to_string()))?;
                    Ok(Some(key.node_id()))
                }
                // Nothing pinned and no word from the identity server: the
                // DHT's `identity/` record is the fallback.
                Err(error) => {
                    tracing::debug!(%user, %error, "identity server gave no signer");
                    Ok(None)
                }
            }
        })
    }
}

/// A share owner's supplier list as a supplier set, checked: it is theirs,
/// its scheme is valid and names one supplier with an address per position.
fn owner_set(
    owner: &UserId,
    list: &proto::dht::v1::SupplierList,
) -> Result<SupplierSet, SessionError> {
    let bad = |reason: String| {
        SessionError::Dht(format!(
            "the supplier list of {owner} is unusable: {reason}"
        ))
    };
    if list.user_id != owner.to_string() {
        return Err(bad(format!("it names {}", list.user_id)));
    }
    let scheme = common::manifest::Scheme {
        data: list.data,
        parity: list.parity,
    };
    scheme.check().map_err(|e| {
        bad(match e {
            common::manifest::ManifestError::Invalid(reason) => {
                format!("scheme {scheme}: {reason}")
            }
            other => other.to_string(),
        })
    })?;
    if list.suppliers.len() != scheme.positions() as usize {
        return Err(bad(format!(
            "scheme {scheme} needs {} suppliers, it names {}",
            scheme.positions(),
            list.suppliers.len()
        )));
    }
    let suppliers = list
        .suppliers
        .iter()
        .zip(0u32..)
        .map(|(contact, position)| {
            let node_id = NodeId::from_slice(&contact.node_id)
                .map_err(|_| bad(format!("position {position} has a malformed node ID")))?;
            let addr = contact
                .endpoints
                .first()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| bad(format!("position {position} has no address")))?;
            Ok(SupplierEntry {
                position,
                addr: addr.clone(),
                node_id,
            })
        })
        .collect::<Result<_, SessionError>>()?;
    Ok(SupplierSet {
        data: scheme.data,
        parity: scheme.parity,
        suppliers,
    })
}

/// Proves to the supplier of `entry`, on `channel`, that we hold the key of
/// `keys`' location: signs its nonce, bound to its node ID and ours, with
/// the share's private key. Returns when to prove again: halfway through
/// the grant, so that a long transfer never meets a lapsed one.
async fn prove(
    channel: Channel,
    keys: &LocationKeys,
    master: &PrivateKey,
    entry: &SupplierEntry,
) -> Result<Instant, SessionError> {
    let started = Instant::now();
    let (position, addr) = (entry.position, entry.addr.as_str());
    let refused = |message: String| SessionError::Refused { position, message };
    let mut client = storage_client(channel);
    let location = crate::transfer::location_proto(keys);
    let mut request = tonic::Request::new(ChallengeRequest {
        location: Some(location.clone()),
    });
    request.set_timeout(CALL_TIMEOUT);
    let challenge = client
        .challenge(request)
        .await
        .map_err(|s| status_error(position, addr, &s))?
        .into_inner();
    // The TLS handshake proved the supplier's node ID; a nonce for another
    // would make our proof usable there.
    if challenge.supplier_id != entry.node_id.as_bytes() {
        return Err(refused(
            "its challenge names another node than the one we reached".into(),
        ));
    }
    if challenge.epoch != keys.epoch {
        return Err(refused(format!(
            "it wants the key of {} at epoch {}, and ours is epoch {}: ask {} for the current key",
            keys.key_id,
            challenge.epoch,
            keys.epoch,
            keys.key_id.owner()
        )));
    }
    let message = common::audit::supplier_proof(
        &entry.node_id,
        &master.public_key().node_id(),
        &keys.key_id,
        challenge.epoch,
        &challenge.nonce,
    );
    let signature = keys
        .private
        .sign(Purpose::Audit, &message)
        .map_err(|e| SessionError::Key(e.to_string()))?;
    let mut request = tonic::Request::new(ProveRequest {
        location: Some(location),
        epoch: challenge.epoch,
        nonce: challenge.nonce,
        signature,
    });
    request.set_timeout(CALL_TIMEOUT);
    let proved = client.prove(request).await.map_err(|s| {
        if s.code() == tonic::Code::PermissionDenied {
            refused(format!(
                "{}: our proof of {} was not accepted; the key we hold may not be the one {} registered",
                s.message(),
                keys.key_id,
                keys.key_id.owner()
            ))
        } else {
            status_error(position, addr, &s)
        }
    })?;
    let ttl = Duration::from_secs(u64::from(proved.into_inner().ttl_seconds));
    Ok(started + ttl / 2)
}

/// A storage client on `channel` that takes and sends messages as large as
/// the transport allows.
fn storage_client(channel: Channel) -> StorageClient<Channel> {
    StorageClient::new(channel)
        .max_decoding_message_size(proto::codec::TRANSPORT_MESSAGE_BYTES)
        .max_encoding_message_size(proto::codec::TRANSPORT_MESSAGE_BYTES)
}

/// Sends a signed key registration to one supplier.
pub(crate) async fn register_key(
    mut client: StorageClient<Channel>,
    registration: &Envelope,
    position: u32,
    addr: &str,
) -> Result<(), SessionError> {
    let mut request = tonic::Request::new(RegisterKeyRequest {
        registration: Some(registration.to_proto()),
    });
    request.set_timeout(CALL_TIMEOUT);
    client
        .register_key(request)
        .await
        .map_err(|s| status_error(position, addr, &s))?;
    Ok(())
}

/// Turns a supplier's status into an error that names its position and,
/// when it could not be reached, its address.
pub fn status_error(position: u32, addr: &str, status: &tonic::Status) -> SessionError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            SessionError::Unreachable {
                position,
                addr: addr.to_owned(),
                reason: status.message().to_owned(),
            }
        }
        _ => SessionError::Refused {
            position,
            message: status.message().to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use proto::dht::v1::{NodeContact, SupplierList};

    use super::*;

    fn list(user: &str, data: u32, parity: u32, count: usize) -> SupplierList {
        SupplierList {
            user_id: user.to_owned(),
            data,
            parity,
            suppliers: (0..count)
                .map(|i| NodeContact {
                    node_id: vec![i as u8; 32],
                    endpoints: vec![format!("supplier-{i}:7700")],
                })
                .collect(),
        }
    }

    #[test]
    fn an_owners_list_becomes_a_set_in_position_order() {
        let alice: UserId = "alice@id-a".parse().unwrap();
        let set = owner_set(&alice, &list("alice@id-a", 2, 1, 3)).unwrap();
        assert_eq!((set.data, set.parity), (2, 1));
        for (i, entry) in set.suppliers.iter().enumerate() {
            assert_eq!(entry.position, i as u32);
            assert_eq!(entry.addr, format!("supplier-{i}:7700"));
            assert_eq!(entry.node_id, NodeId::from_array([i as u8; 32]));
        }
    }

    #[test]
    fn a_list_that_cannot_be_used_is_refused_with_the_reason() {
        let alice: UserId = "alice@id-a".parse().unwrap();
        let mut short_id = list("alice@id-a", 1, 1, 2);
        short_id.suppliers[1].node_id.truncate(31);
        let mut no_addr = list("alice@id-a", 1, 1, 2);
        no_addr.suppliers[0].endpoints.clear();
        let mut empty_addr = list("alice@id-a", 1, 1, 2);
        empty_addr.suppliers[1].endpoints = vec![String::new()];
        for (bad, reason) in [
            (list("mallory@id-a", 1, 1, 2), "it names mallory@id-a"),
            (list("alice@id-a", 0, 2, 2), "at least one data fragment"),
            (list("alice@id-a", 60, 10, 70), "too many positions"),
            (list("alice@id-a", 2, 1, 2), "needs 3 suppliers, it names 2"),
            (short_id, "position 1 has a malformed node ID"),
            (no_addr, "position 0 has no address"),
            (empty_addr, "position 1 has no address"),
        ] {
            let err = owner_set(&alice, &bad).unwrap_err().to_string();
            assert!(
                err.contains("supplier list of alice@id-a is unusable") && err.contains(reason),
                "{reason}: {err}"
            );
        }
    }
}
