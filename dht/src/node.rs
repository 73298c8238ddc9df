//! The DHT node: an actor that owns the routing table and the record store,
//! a cloneable [`DhtHandle`] to it, and the lookups, publishing and
//! bootstrap built on the sans-IO core.
//!
//! [`DhtNode`] gathers what a node needs (its [`Config`], a [`Dialer`]
//! holding its TLS identity, a [`RecordStore`], a [`SignerResolver`], a
//! [`SeedResolver`]) and [`DhtNode::spawn`] starts it:
//!
//! - the actor serializes every change to the routing table and the store,
//!   and never waits on the network: requests, lookups and background jobs
//!   run in tasks and report back through its bounded inbox;
//! - lookups run the [`crate::query::Query`] state machine, `α` requests at
//!   a time, each with a deadline, in the caller's task (so dropping the
//!   caller's future abandons the lookup);
//! - on timers the actor refreshes stale buckets, republishes the records
//!   it holds (see [`crate::republish`]), sweeps expired records and, while
//!   its table is empty, retries the bootstrap.
//!
//! The node reads the clock in one place per event and passes `now` down,
//! so the core stays deterministic.
//!
//! A server node also answers other nodes: wrap its handle in a
//! [`crate::service::DhtService`] and serve it on the node's mutual-TLS
//! port. A client node serves nothing.
//!
//! # Invariants
//!
//! - Only contacts proved by a handshake enter the routing table: nodes that
//!   answered a request we dialled with their ID, and inbound senders whose
//!   ID equals the caller's.
//! - Every record stored or returned has passed [`Record::verify`] with the
//!   signer of the user its key names.
//! - Channels are bounded, and so are lookups, requests, connections and
//!   background jobs; every request has a deadline.

pub(crate) mod actor;
mod config;
mod lookup;
mod network;
mod seed;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::envelope::Envelope;
use common::id::{NodeId, UserId};
use net::Dialer;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, info, info_span, warn};

use self::actor::{Actor, Message};
pub use self::config::{Config, Mode};
use self::network::Network;
pub use self::seed::SeedResolver;
use crate::contact::Contact;
use crate::distance::Key;
use crate::query::{Query, Versioned};
use crate::record::{
    DEFAULT_MAX_RECORDS, MemoryStore, Record, RecordKey, RecordKind, RecordStore, Standing, newest,
};
use crate::signer::{NoSigners, SignerCache, SignerResolver};

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// None of the seeds answered.
    #[error("no bootstrap seed answered ({tried} tried)")]
    Bootstrap {
        /// How many seeds were given.
        tried: usize,
    },
    /// The node is too busy to take the request now.
    #[error("the dht node is busy")]
    Busy,
    /// The settings cannot work.
    #[error("invalid dht configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: &'static str,
    },
    /// No node, this one included, took the record.
    #[error("no node stored record {key}")]
    NotStored {
        /// The record key.
        key: RecordKey,
    },
    /// The record was refused, or the record store failed.
    #[error(transparent)]
    Record(#[from] crate::Error),
    /// A seed could not be resolved.
    #[error("cannot resolve seed {seed:?}: {reason}")]
    Seed {
        /// The seed as given.
        seed: String,
        /// Why.
        reason: String,
    },
    /// The node has stopped.
    #[error("the dht node has stopped")]
    Shutdown,
    /// The owner's resolver could not say who signs `user`'s records, so
    /// they can be neither stored nor believed now.
    #[error("cannot check who signs the records of {user}: {reason}")]
    SignerUnavailable {
        /// The user the record key names.
        user: UserId,
        /// What the resolver reported.
        reason: String,
    },
}

/// What [`DhtHandle::put`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PutReport {
    /// Whether this node keeps a copy (server mode).
    pub local: bool,
    /// How many of the closest other nodes acknowledged the STORE.
    pub remote: usize,
}

/// A snapshot of a node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Contacts in the routing table (replacement caches not counted).
    pub contacts: usize,
    /// Live records held.
    pub records: usize,
    /// Lookups run since the node started.
    pub lookups: u64,
    /// Lookups that failed or reached no node.
    pub lookups_failed: u64,
    /// Time spent in lookups, in microseconds, summed.
    pub lookup_micros: u64,
}

/// Counts of the node's lookups, for operators.
#[derive(Debug, Default)]
pub(crate) struct LookupCounters {
    started: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    micros: std::sync::atomic::AtomicU64,
}

impl LookupCounters {
    pub(crate) fn record(&self, elapsed: std::time::Duration, ok: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.started.fetch_add(1, Relaxed);
        if !ok {
            self.failed.fetch_add(1, Relaxed);
        }
        self.micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    pub(crate) fn fill(&self, stats: &mut NodeStats) {
        use std::sync::atomic::Ordering::Relaxed;
        stats.lookups = self.started.load(Relaxed);
        stats.lookups_failed = self.failed.load(Relaxed);
        stats.lookup_micros = self.micros.load(Relaxed);
    }
}

/// Everything a node needs before it starts.
pub struct DhtNode {
    config: Config,
    dialer: Dialer,
    store: Box<dyn RecordStore + Send>,
    signers: Arc<dyn SignerResolver>,
    seeds: SeedResolver,
}

impl DhtNode {
    /// A node with `config` that dials (and is known) by the identity of
    /// `dialer`: its node ID is the dialer's. It starts with a
    /// [`MemoryStore`], [`NoSigners`] and the system's DNS configuration.
    pub fn new(config: Config, dialer: Dialer) -> Self {
        let local = dialer.node_id().into();
        Self {
            config,
            dialer,
            store: Box::new(MemoryStore::new(local, DEFAULT_MAX_RECORDS)),
            signers: Arc::new(NoSigners),
            seeds: SeedResolver::system(),
        }
    }

    /// Keeps records in `store` (a server's RocksDB-backed store, say). A
    /// client never stores anything.
    ///
    /// The node calls the store from its actor task; on a multi-threaded
    /// runtime each call runs under `block_in_place`, so a store may block
    /// briefly (a synced write).
    pub fn with_store(mut self, store: Box<dyn RecordStore + Send>) -> Self {
        self.store = store;
        self
    }

    /// Resolves the signers of users' records with `signers` first (see
    /// [`crate::signer`]).
    pub fn with_signers(mut self, signers: Arc<dyn SignerResolver>) -> Self {
        self.signers = signers;
        self
    }

    /// Resolves bootstrap seeds with `seeds`.
    pub fn with_seed_resolver(mut self, seeds: SeedResolver) -> Self {
        self.seeds = seeds;
        self
    }

    /// Starts the node on the current tokio runtime.
    ///
    /// The node runs until [`DhtHandle::shutdown`], or until the last
    /// handle (a [`crate::service::DhtService`] holds one) is dropped. It
    /// starts with an empty routing table: call [`DhtHandle::bootstrap`].
    pub fn spawn(self) -> Result<DhtHandle, NodeError> {
        let local = self.dialer.node_id();
        let contact = match &self.config.mode {
            Mode::Client => None,
            Mode::Server { endpoints } if endpoints.is_empty() => {
                return Err(NodeError::Config {
                    reason: "a server needs at least one endpoint",
                });
            }
            Mode::Server { endpoints } => Some(Contact::new(local, endpoints.clone()).map_err(
                |_| NodeError::Config {
                    reason: "the endpoints do not form a valid contact",
                },
            )?),
        };
        let config = self.config;
        let network = Network::new(
            self.dialer,
            contact.as_ref(),
            config.request_timeout,
            config.k.get(),
            config.max_requests,
            config.max_connections,
        );
        let (inbox, inbox_rx) = mpsc::channel(INBOX_CAPACITY);
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
        let cancel = CancellationToken::new();
        let stopped = CancellationToken::new();
        let span = info_span!("dht", node = %local.fmt_short());
        let shared = Arc::new(Shared {
            span: span.clone(),
            local,
            contact,
            network,
            inbox,
            inbound,
            signers: self.signers,
            signer_cache: Mutex::new(SignerCache::new(
                config.signer_cache_ttl,
                NEGATIVE_SIGNER_TTL,
                SIGNER_CACHE_CAPACITY,
            )),
            seeds: self.seeds,
            lookups: Semaphore::new(config.max_lookups.max(1)),
            resolutions: Semaphore::new(MAX_RESOLUTIONS),
            lookup_counters: LookupCounters::default(),
            cancel: cancel.clone(),
            stopped: stopped.clone(),
            config,
        });
        let actor = Actor::new(shared.clone(), self.store, inbox_rx, inbound_rx, now());
        tokio::spawn(
            async move {
                actor.run().await;
                stopped.cancel();
            }
            .instrument(span),
        );
        info!(parent: &shared.span, server = shared.config.is_server(), "dht node started");
        Ok(DhtHandle {
            shared,
            _guard: Arc::new(cancel.drop_guard()),
        })
    }
}

impl std::fmt::Debug for DhtNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtNode")
            .field("config", &self.config)
            .field("node", &self.dialer.node_id())
            .field("signers", &self.signers)
            .field("seeds", &self.seeds)
            .finish_non_exhaustive()
    }
}

/// A cloneable handle to a running node. The node stops when the last
/// handle is dropped, or at [`DhtHandle::shutdown`].
#[derive(Debug, Clone)]
pub struct DhtHandle {
    shared: Arc<Shared>,
    _guard: Arc<DropGuard>,
}

impl DhtHandle {
    /// The node ID, which is also the node's position in the keyspace.
    pub fn node_id(&self) -> NodeId {
        self.shared.local
    }

    /// The node's own contact (server mode only).
    pub fn contact(&self) -> Option<&Contact> {
        self.shared.contact.as_ref()
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Joins the network through `seeds` (`host:port`, `ip:port`, or a bare
    /// domain with `_silt._tcp` SRV records; see [`SeedResolver`]).
    ///
    /// Each seed is resolved through hickory and dialled without an
    /// expected ID; its node ID comes from the handshake, and it goes into
    /// the routing table. Then the node looks up its own ID, which fills the
    /// table with its neighbours and tells them about it. Returns how many
    /// seeds answered. With no seeds, or when the only seed that answers is
    /// this node, the node starts a new network and returns 0. The seeds
    /// are kept, and the bootstrap is retried while the table is empty.
    ///
    /// Cancel-safe: dropping the future abandons the bootstrap.
    pub async fn bootstrap(&self, seeds: Vec<String>) -> Result<usize, NodeError> {
        self.shared
            .request(Message::Seeds {
                seeds: seeds.clone(),
            })
            .await?;
        self.shared
            .bootstrap(&seeds)
            .instrument(self.shared.span.clone())
            .await
    }

    /// The `k` nodes closest to `target` that answered an iterative
    /// FIND_NODE, closest first.
    ///
    /// Cancel-safe: dropping the future abandons the lookup.
    pub async fn find_node(&self, target: Key) -> Result<Vec<Contact>, NodeError> {
        self.shared
            .find_node(target)
            .instrument(self.shared.span.clone())
            .await
    }

    /// The newest valid record of `key` in the network (this node's copy
    /// included): the highest sequence among the replies of an iterative
    /// FIND_VALUE, each verified with the signer the key's user resolves to
    /// (see [`crate::signer`]). Nodes that returned an older record are sent
    /// the newest in the background.
    ///
    /// A `suppliers/` key whose user cannot be resolved fails with
    /// [`crate::Error::SignerUnknown`].
    ///
    /// Cancel-safe: dropping the future abandons the lookup.
    pub async fn get(&self, key: &RecordKey) -> Result<Option<Record>, NodeError> {
        self.shared
            .get(key)
            .instrument(self.shared.span.clone())
            .await
    }

    /// Publishes a signed record (see [`Record::seal`]): validates it as a
    /// peer would, keeps a copy in server mode, and stores it on the `k`
    /// nodes closest to its key. Fails if the record is invalid, if this
    /// node's copy refuses it (a lower sequence, say), or if no node took it.
    ///
    /// Cancel-safe, though some nodes may already have stored the record.
    pub async fn put(&self, record: &Envelope) -> Result<PutReport, NodeError> {
        self.shared
            .put(record)
            .instrument(self.shared.span.clone())
            .await
    }

    /// The live record of `key` this node holds, without asking the network.
    ///
    /// Cancel-safe.
    pub async fn local_record(&self, key: &RecordKey) -> Result<Option<Record>, NodeError> {
        Ok(self
            .shared
            .ask(|reply| Message::Record {
                key: key.clone(),
                reply,
            })
            .await??)
    }

    /// Counts of the routing table and the store.
    ///
    /// Cancel-safe.
    pub async fn stats(&self) -> Result<NodeStats, NodeError> {
        self.shared.ask(|reply| Message::Stats { reply }).await
    }

    /// Stops the node and waits until its actor has ended (background jobs
    /// are aborted with it). Idempotent.
    ///
    /// Cancel-safe: once polled, the node stops even if the future is then
    /// dropped.
    pub async fn shutdown(&self) {
        self.shared.cancel.cancel();
        self.shared.stopped.cancelled().await;
    }

    /// Whether the node has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.is_cancelled()
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// What the handle, the service, lookups and background jobs share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The node's span: the actor's, and the parent of its lookups and
    /// requests.
    pub(crate) span: tracing::Span,
    pub(crate) local: NodeId,
    pub(crate) config: Config,
    pub(crate) contact: Option<Contact>,
    pub(crate) network: Network,
    /// Local work: the handle, lookups and jobs.
    inbox: mpsc::Sender<Message>,
    /// Remote work: the service. The actor takes local work first.
    inbound: mpsc::Sender<Message>,
    signers: Arc<dyn SignerResolver>,
    signer_cache: Mutex<SignerCache>,
    seeds: SeedResolver,
    lookups: Semaphore,
    resolutions: Semaphore,
    pub(crate) lookup_counters: LookupCounters,
    pub(crate) cancel: CancellationToken,
    stopped: CancellationToken,
}

impl Shared {
    /// Tells the actor something; lost if the node has stopped.
    pub(crate) async fn report(&self, message: Message) {
        let _ = self.inbox.send(message).await;
    }

    async fn request(&self, message: Message) -> Result<(), NodeError> {
        self.inbox
            .send(message)
            .await
            .map_err(|_| NodeError::Shutdown)
    }

    /// Asks the actor and waits for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Message,
    ) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.request(make(reply)).await?;
        answer.await.map_err(|_| NodeError::Shutdown)
    }

    /// Asks the actor on behalf of a remote node: waits at most one request
    /// timeout for room in the inbox.
    pub(crate) async fn ask_inbound<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Message,
    ) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        match tokio::time::timeout(self.config.request_timeout, self.inbound.send(make(reply)))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(NodeError::Shutdown),
            Err(_) => return Err(NodeError::Busy),
        }
        answer.await.map_err(|_| NodeError::Shutdown)
    }

    /// Tells the actor about a remote node's request, without waiting long.
    pub(crate) async fn report_inbound(&self, message: Message) -> Result<(), NodeError> {
        match tokio::time::timeout(self.config.request_timeout, self.inbound.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(NodeError::Shutdown),
            Err(_) => Err(NodeError::Busy),
        }
    }

    pub(crate) async fn bootstrap(&self, seeds: &[String]) -> Result<usize, NodeError> {
        let mut joined = 0;
        let mut found_self = false;
        for seed in seeds {
            let addrs =
                match tokio::time::timeout(self.config.request_timeout, self.seeds.resolve(seed))
                    .await
                {
                    Ok(Ok(addrs)) => addrs,
                    Ok(Err(error)) => {
                        warn!(%seed, %error, "bootstrap seed does not resolve");
                        continue;
                    }
                    Err(_) => {
                        warn!(%seed, "bootstrap seed did not resolve in time");
                        continue;
                    }
                };
            for addr in addrs {
                match self.network.hello(&addr).await {
                    Ok(contact) if contact.id() == self.local => {
                        found_self = true;
                        break;
                    }
                    Ok(contact) => {
                        debug!(%seed, %addr, peer = %contact.id().fmt_short(), "seed answered");
                        self.report(Message::Observed { contact }).await;
                        joined += 1;
                        break;
                    }
                    Err(error) => debug!(%seed, %addr, %error, "seed did not answer"),
                }
            }
        }
        if joined == 0 {
            if seeds.is_empty() || found_self {
                info!("no other node to join: starting a new network");
                return Ok(0);
            }
            warn!(seeds = seeds.len(), "no bootstrap seed answered");
            return Err(NodeError::Bootstrap { tried: seeds.len() });
        }
        let neighbours = self.find_node(Key::from(self.local)).await?;
        info!(
            seeds = joined,
            neighbours = neighbours.len(),
            "joined the dht"
        );
        Ok(joined)
    }

    pub(crate) async fn find_node(&self, target: Key) -> Result<Vec<Contact>, NodeError> {
        let _permit = self
            .lookups
            .acquire()
            .await
            .map_err(|_| NodeError::Shutdown)?;
        let seeds = self.closest(target).await?;
        let query = Query::find_node(target, self.local, seeds, self.config.query(), now());
        Ok(lookup::run(self, query, None).await?.closest)
    }

    async fn closest(&self, target: Key) -> Result<Vec<Contact>, NodeError> {
        self.ask(|reply| Message::Closest {
            target,
            sender: None,
            exclude: None,
            reply,
        })
        .await
    }

    async fn get(&self, key: &RecordKey) -> Result<Option<Record>, NodeError> {
        let expected = match key.kind() {
            RecordKind::Identity => self.pinned(key.user()).await?,
            RecordKind::Suppliers => match self.resolve_signer(key.user()).await? {
                Some(signer) => Some(signer),
                None => return Err(crate::Error::SignerUnknown { key: key.clone() }.into()),
            },
        };
        self.lookup_value(key, expected).await
    }

    /// FIND_VALUE for `key`, merged with this node's own copy.
    async fn lookup_value(
        &self,
        key: &RecordKey,
        expected: Option<NodeId>,
    ) -> Result<Option<Record>, NodeError> {
        let local = if self.config.is_server() {
            let held = self
                .ask(|reply| Message::Record {
                    key: key.clone(),
                    reply,
                })
                .await??;
            // Stored under the signer known then: check it against today's.
            held.filter(|record| {
                Record::verify_reply(key, record.to_proto(), common::unix_now(), expected).is_ok()
            })
        } else {
            None
        };
        let result = {
            let _permit = self
                .lookups
                .acquire()
                .await
                .map_err(|_| NodeError::Shutdown)?;
            let seeds = self.closest(key.position()).await?;
            let query =
                Query::find_value(key.clone(), self.local, seeds, self.config.query(), now());
            lookup::run(self, query, expected).await?
        };
        let network_sequence = result.value.as_ref().map(Versioned::sequence);
        let best = newest(local.into_iter().chain(result.value));
        if let Some(best) = &best {
            let mut stale = result.outdated;
            if network_sequence.is_some_and(|sequence| sequence < best.sequence()) {
                // Our own copy is newer than anything the network returned.
                stale.extend(result.holders);
            }
            if !stale.is_empty() {
                self.report(Message::Repair {
                    record: best.clone(),
                    peers: stale,
                })
                .await;
            }
        }
        Ok(best)
    }

    /// The node ID the owner's resolver gives for `user`, if any. A
    /// resolver that fails or does not answer in time is an error, never
    /// "no pin": the caller must not fall back to what the DHT says.
    async fn pinned(&self, user: &UserId) -> Result<Option<NodeId>, NodeError> {
        let unavailable = |reason: String| {
            warn!(%user, %reason, "cannot resolve the signer");
            NodeError::SignerUnavailable {
                user: user.clone(),
                reason,
            }
        };
        match tokio::time::timeout(self.config.request_timeout, self.signers.resolve(user)).await {
            Ok(Ok(signer)) => Ok(signer),
            Ok(Err(error)) => Err(unavailable(error.reason)),
            Err(_) => Err(unavailable(format!(
                "no answer within {:?}",
                self.config.request_timeout
            ))),
        }
    }

    /// The node ID of `user`'s master key: the resolver's, else (with
    /// [`Config::identity_fallback`]) the signer of the user's `identity/`
    /// record, cached.
    async fn resolve_signer(&self, user: &UserId) -> Result<Option<NodeId>, NodeError> {
        if let Some(signer) = self.pinned(user).await? {
            return Ok(Some(signer));
        }
        if !self.config.identity_fallback {
            return Ok(None);
        }
        if let Some(answer) = self.signer_cache().get(user, now()) {
            return Ok(answer);
        }
        let Ok(Ok(_permit)) =
            tokio::time::timeout(self.config.request_timeout, self.resolutions.acquire()).await
        else {
            debug!(%user, "too many signer resolutions at once");
            return Ok(None);
        };
        let key = RecordKey::identity(user.clone());
        let signer = self
            .lookup_value(&key, None)
            .await?
            .map(|record| record.signer());
        debug!(%user, found = signer.is_some(), "signer resolved from the dht");
        self.signer_cache().insert(user.clone(), signer, now());
        Ok(signer)
    }

    fn signer_cache(&self) -> MutexGuard<'_, SignerCache> {
        // The cache is consistent after every call, so a poisoned lock is
        // still usable.
        self.signer_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Validates a record from the wire as a STORE requires: the record
    /// rules, with the signer of the user its key names. Also says whether
    /// the owner vouches for that signer.
    pub(crate) async fn validate(
        &self,
        wire: proto::common::v1::Envelope,
    ) -> Result<(Record, Standing), NodeError> {
        let now_unix = common::unix_now();
        let record = match Record::verify(wire.clone(), now_unix, None) {
            // Only self-certifying `identity/` records pass without a
            // signer; the owner's pin still applies to them.
            Ok(record) => match self.pinned(record.key().user()).await? {
                Some(pin) if pin != record.signer() => {
                    return Err(crate::Error::WrongSigner {
                        key: record.key().clone(),
                        expected: pin,
                        found: record.signer(),
                    }
                    .into());
                }
                _ => record,
            },
            Err(crate::Error::SignerUnknown { key }) => {
                let Some(signer) = self.resolve_signer(key.user()).await? else {
                    return Err(crate::Error::SignerUnknown { key }.into());
                };
                Record::verify(wire, now_unix, Some(signer))?
            }
            Err(error) => return Err(error.into()),
        };
        let vouched = tokio::time::timeout(
            self.config.request_timeout,
            self.signers.vouches(record.key().user(), record.signer()),
        )
        .await
        .unwrap_or(false);
        let standing = if vouched {
            Standing::Vouched
        } else {
            Standing::Stranger
        };
        Ok((record, standing))
    }

    async fn put(&self, envelope: &Envelope) -> Result<PutReport, NodeError> {
        let (record, standing) = self.validate(envelope.to_proto()).await?;
        let local = if self.config.is_server() {
            self.ask(|reply| Message::Store {
                sender: None,
                record: record.clone(),
                standing,
                reply,
            })
            .await??;
            true
        } else {
            false
        };
        let remote = self.publish(&record).await?;
        debug!(key = %record.key(), local, remote, "record published");
        if !local && remote == 0 {
            return Err(NodeError::NotStored {
                key: record.key().clone(),
            });
        }
        Ok(PutReport { local, remote })
    }

    /// Stores `record` on the `k` nodes closest to its key; returns how many
    /// acknowledged.
    pub(crate) async fn publish(&self, record: &Record) -> Result<usize, NodeError> {
        let closest = self.find_node(record.key().position()).await?;
        Ok(self.store_at(record, closest).await)
    }

    /// Stores `record` on `peers` (at most `k`, never this node) at once;
    /// returns how many acknowledged.
    pub(crate) async fn store_at(&self, record: &Record, peers: Vec<Contact>) -> usize {
        let wire = record.to_proto();
        let mut stores = JoinSet::new();
        for peer in peers
            .into_iter()
            .filter(|peer| peer.id() != self.local)
            .take(self.config.k.get())
        {
            let network = self.network.clone();
            let wire = wire.clone();
            stores.spawn(
                async move {
                    let outcome = network.store(&peer, wire).await;
                    (peer, outcome)
                }
                .in_current_span(),
            );
        }
        let mut acks = 0;
        while let Some(joined) = stores.join_next().await {
            let Ok((peer, outcome)) = joined else {
                continue;
            };
            match outcome {
                Ok(()) => {
                    acks += 1;
                    self.report(Message::Observed { contact: peer }).await;
                }
                Err(error) => {
                    debug!(key = %record.key(), peer = %peer.id().fmt_short(), %error, "store failed");
                    if error.is_unreachable() {
                        self.report(Message::Failed { peer: peer.id() }).await;
                    }
                }
            }
        }
        acks
    }
}

/// The current time for the core's `now` parameters: tokio's clock, so
/// that paused-time tests move it.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Capacity of the local inbox.
const INBOX_CAPACITY: usize = 256;

/// Capacity of the inbox of remote requests.
const INBOUND_CAPACITY: usize = 256;

/// Signer lookups in the DHT at once; more wait up to a request timeout,
/// then count as unresolved.
const MAX_RESOLUTIONS: usize = 4;

/// Users whose signers are cached.
const SIGNER_CACHE_CAPACITY: usize = 1024;

/// How long "no identity record found" is believed.
const NEGATIVE_SIGNER_TTL: Duration = Duration::from_secs(30);
