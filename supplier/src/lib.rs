//! `silt-supplier`: the Silt storage node.
//!
//! [`Supplier::spawn`] opens the store, binds the mutual-TLS port and serves
//! every role on it: storage, mailboxes, health, and the identity server when
//! enabled. Metrics go to their own address; a background worker collects
//! staged fragments that no manifest claimed.
//!
//! Shutdown runs in a fixed order (see [`Supplier::shutdown`]).

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod grant;
pub mod metrics;
pub mod records;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::crypto::PrivateKey;
use common::id::{IdHost, NodeId};
use common::tls::TlsIdentity;
use proto::identity::v1::identity_server::IdentityServer;
use proto::mailbox::v1::mailbox_server::MailboxServer;
use proto::storage::v1::storage_server::StorageServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use crate::config::Config;
use crate::metrics::Metrics;
use crate::service::identity::IdentityService;
use crate::service::mailbox::{MailboxLimits, MailboxService};
use crate::service::storage::{NameCheck, StorageLimits, StorageService};
use crate::store::{Store, StoreError};

/// File name of the node's master key in the data directory.
pub const NODE_KEY_FILE: &str = "node.key";
const DB_DIR: &str = "db";

/// Why a supplier could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data directory has no node key.
    #[error("no node key at {0}: run `silt-supplier init` first")]
    NotInitialised(PathBuf),
    /// The data directory already has a node key.
    #[error("{0} already holds a node key; refusing to overwrite it")]
    AlreadyInitialised(PathBuf),
    /// The node key is unreadable.
    #[error("node key {path}: {reason}")]
    NodeKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] common::tls::TlsError),
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the database of the data directory `data` lives.
pub fn db_dir(data: &Path) -> PathBuf {
    data.join(DB_DIR)
}

/// Creates the data directory (mode 0700) and a new node key in it.
pub fn init_data_dir(data: &Path, key_bits: usize) -> Result<NodeId, Error> {
    let path = data.join(NODE_KEY_FILE);
    if path.exists() {
        return Err(Error::AlreadyInitialised(path));
    }
    common::atomic_file::create_private_dir(data).map_err(|source| Error::Io {
        context: format!("cannot create {}", data.display()),
        source,
    })?;
    let key = PrivateKey::generate(key_bits).map_err(|e| Error::NodeKey {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let pem = key.to_pkcs8_pem().map_err(|e| Error::NodeKey {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    common::atomic_file::write_new(
        &path,
        pem.as_bytes(),
        common::atomic_file::PRIVATE_FILE_MODE,
    )
    .map_err(|source| Error::Io {
        context: format!("cannot write {}", path.display()),
        source,
    })?;
    Ok(key.public_key().node_id())
}

fn load_node_key(data: &Path) -> Result<PrivateKey, Error> {
    let path = data.join(NODE_KEY_FILE);
    if !path.exists() {
        return Err(Error::NotInitialised(path));
    }
    let bad = |reason: String| Error::NodeKey {
        path: path.clone(),
        reason,
    };
    common::atomic_file::check_private(&path).map_err(|e| bad(e.to_string()))?;
    let pem =
        zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?);
    PrivateKey::from_pkcs8_pem(&pem).map_err(|e| bad(e.to_string()))
}

/// A running supplier.
#[derive(Debug)]
pub struct Supplier {
    node_id: NodeId,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    workers: Vec<JoinHandle<()>>,
    dht: Option<dht::DhtHandle>,
    grace: std::time::Duration,
}

impl Supplier {
    /// Opens the store and starts serving on `config.listen`.
    pub async fn spawn(config: Config) -> Result<Self, Error> {
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&config.grant_ttl) {
            return Err(Error::Config(format!(
                "grant_ttl must be between 1s and 1day, not {}",
                humantime::format_duration(config.grant_ttl)
            )));
        }
        let master = load_node_key(&config.data)?;
        let node_id = master.public_key().node_id();
        // One certificate serves the port and every outgoing connection.
        let tls = Arc::new(TlsIdentity::generate(&master)?);
        let dialer = net::Dialer::new(tls.clone());
        let db_dir = db_dir(&config.data);
        let min_free_disk = config.min_free_disk.as_u64();
        let store = tokio::task::spawn_blocking(move || Store::open_with(&db_dir, min_free_disk))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        warn_if_disk_too_small(&config, &store);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Io {
                context: format!("cannot listen on {}", config.listen),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Io {
            context: "no local address".into(),
            source,
        })?;

        let cancel = CancellationToken::new();
        let metrics = Metrics::default();
        let (bytes, fragments) = store.usage();
        metrics.set_usage(bytes, fragments);
        let mut workers = Vec::new();
        let metrics_addr = match config.metrics {
            Some(addr) => {
                let listener = metrics::bind(addr).await.map_err(|source| Error::Io {
                    context: format!("cannot listen for metrics on {addr}"),
                    source,
                })?;
                let bound = listener.local_addr().map_err(|source| Error::Io {
                    context: "no metrics address".into(),
                    source,
                })?;
                workers.push(metrics.clone().serve(listener, cancel.child_token()));
                info!(addr = %bound, "metrics listening");
                Some(bound)
            }
            None => None,
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        let own_host = if config.identity_server {
            Some(identity_host(&config, local_addr)?)
        } else {
            None
        };
        let storage = StorageService::new(
            store.clone(),
            node_id,
            StorageLimits {
                capacity: config.capacity.as_u64(),
                max_fragment_bytes: config.max_fragment.as_u64(),
                keep_versions: config.keep_versions,
                max_customers: config.max_customers,
                grant_ttl: config.grant_ttl,
                ..StorageLimits::default()
            },
            NameCheck {
                own_host: own_host.clone(),
                dialer: dialer.clone(),
            },
            metrics.clone(),
            cancel.child_token(),
        );
        health.set_serving::<StorageServer<StorageService>>().await;
        let mailbox = MailboxService::new(store.clone(), MailboxLimits::default(), metrics.clone());
        health.set_serving::<MailboxServer<MailboxService>>().await;
        let identity = if let Some(host) = own_host {
            info!(%host, "serving the identity server role");
            health
                .set_serving::<IdentityServer<IdentityService>>()
                .await;
            Some(IdentityServer::new(IdentityService::new(
                store.clone(),
                host,
            )))
        } else {
            None
        };
        // The DHT: a server-mode node whose records live in the store.
        let public = config
            .public_addr
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        let dht = dht::DhtNode::new(dht::Config::server(vec![public]), dialer)
            .with_store(Box::new(
                store
                    .run(move |store| {
                        records::StoredRecords::new(store.clone(), node_id.into(), MAX_DHT_RECORDS)
                    })
                    .await?,
            ))
            .with_signers(Arc::new(records::KnownSigners::new(&store)))
            .spawn()
            .map_err(|e| Error::Config(format!("dht: {e}")))?;
        if !config.bootstrap.is_empty() {
            let (handle, seeds) = (dht.clone(), config.bootstrap.clone());
            workers.push(tokio::spawn(async move {
                match handle.bootstrap(seeds).await {
                    Ok(answered) => info!(answered, "joined the DHT"),
                    Err(e) => {
                        warn!(error = %e, "cannot join the DHT yet; retrying in the background")
                    }
                }
            }));
        } else {
            info!("no DHT seeds: starting a new network");
        }
        let router = tonic::transport::Server::builder()
            .initial_stream_window_size(net::http2::SERVER_STREAM_WINDOW)
            .initial_connection_window_size(net::http2::SERVER_CONNECTION_WINDOW)
            .max_frame_size(net::http2::MAX_FRAME)
            .add_service(health_service)
            .add_service(dht::DhtService::new(dht.clone()).into_server())
            .add_service(StorageServer::new(storage).max_decoding_message_size(TRANSPORT_LIMIT))
            .add_service(MailboxServer::new(mailbox).max_decoding_message_size(TRANSPORT_LIMIT))
            .add_optional_service(identity.map(|s| s.max_decoding_message_size(TRANSPORT_LIMIT)));

        workers.push(spawn_reclaimer(store.clone(), cancel.child_token()));
        workers.push(spawn_collector(
            store.clone(),
            metrics,
            dht.clone(),
            config.staged_ttl,
            config.gc_interval,
            cancel.child_token(),
        ));
        let incoming = net::server::incoming(
            listener,
            Arc::new(tls.server_config()?),
            net::server::Limits::default(),
            cancel.child_token(),
        );
        let server = tokio::spawn(
            router.serve_with_incoming_shutdown(incoming, cancel.clone().cancelled_owned()),
        );
        info!(addr = %local_addr, node = %node_id, "supplier listening");
        Ok(Self {
            node_id,
            local_addr,
            metrics_addr,
            cancel,
            server: Some(server),
            workers,
            dht: Some(dht),
            grace: config.shutdown_grace,
        })
    }

    /// The DHT node; `None` after shutdown.
    pub fn dht(&self) -> Option<&dht::DhtHandle> {
        self.dht.as_ref()
    }

    /// The bound address of the metrics endpoint, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The node ID (SHA-256 of the node's master key).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The bound address of the mutual-TLS port.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the node. Idempotent.
    pub async fn shutdown(&mut self) {
        // 1. Stop accepting connections and ask open ones to finish.
        self.cancel.cancel();
        // 2. Let in-flight requests finish, up to the grace period.
        if let Some(mut server) = self.server.take() {
            match tokio::time::timeout(self.grace, &mut server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!(error = %e, "server ended with an error"),
                Ok(Err(e)) => warn!(error = %e, "server task failed"),
                Err(_) => {
                    warn!(grace = ?self.grace, "requests still running after the grace period; aborting them");
                    server.abort();
                    let _ = server.await;
                }
            }
        }
        // 3. Stop background workers (they watch the same token) and the DHT.
        if let Some(dht) = self.dht.take() {
            dht.shutdown().await;
        }
        for worker in self.workers.drain(..) {
            if tokio::time::timeout(self.grace, worker).await.is_err() {
                warn!("a background worker did not stop in time");
            }
        }
        // 4. The store closes when the last handle drops: services held the
        //    other handles and are gone with the server task. Writes were
        //    synced as they were acknowledged.
        info!(node = %self.node_id.fmt_short(), "supplier stopped");
    }
}

impl Drop for Supplier {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
        for worker in self.workers.drain(..) {
            worker.abort();
        }
    }
}

/// Most DHT records a supplier keeps.
const MAX_DHT_RECORDS: usize = 100_000;

/// What the transport accepts; `proto::codec` refuses anything over its
/// (slightly lower) limit with `RESOURCE_EXHAUSTED`.
const TRANSPORT_LIMIT: usize = proto::codec::TRANSPORT_MESSAGE_BYTES;

/// Deletes staged fragments older than `ttl` every `interval`, and keeps the
/// usage gauges fresh.
fn spawn_collector(
    store: Store,
    metrics: Metrics,
    dht: dht::DhtHandle,
    ttl: std::time::Duration,
    interval: std::time::Duration,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if let Ok(stats) = dht.stats().await {
                metrics.set_dht(&stats);
            }
            match store
                .run(|store| Ok((store.disk_free(), store.blob_bytes())))
                .await
            {
                Ok((free, files)) => {
                    if let Ok(free) = free {
                        metrics.disk_free_bytes.set(free);
                    }
                    if let Ok(files) = files {
                        metrics.fragment_file_bytes.set(files);
                    }
                }
                Err(e) => warn!(error = %e, "reading disk usage failed"),
            }
            let cutoff = common::unix_now() - i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
            match store.run(move |store| store.collect_staged(cutoff)).await {
                Ok((0, _)) => {}
                Ok((count, bytes)) => {
                    info!(
                        count,
                        bytes, "collected staged fragments no manifest claimed"
                    );
                    let (bytes, fragments) = store.usage();
                    metrics.set_usage(bytes, fragments);
                }
                Err(e) => warn!(error = %e, "collecting staged fragments failed"),
            }
        }
    })
}

/// How long the reclaimer waits for a burst of deletes (a directory removed
/// file by file) to end before it compacts, and the longest it waits while
/// deletes go on.
const RECLAIM_QUIET: std::time::Duration = std::time::Duration::from_secs(1);
const RECLAIM_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Gives the disk space of deleted fragments back (see [`Store::reclaim`])
/// once deletes have left enough of it, so that a full supplier whose
/// customers delete can take uploads again. A shutdown stops a running
/// pass.
fn spawn_reclaimer(store: Store, cancel: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = store.garbage_left() => {}
            }
            let deadline = tokio::time::Instant::now() + RECLAIM_MAX_WAIT;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(RECLAIM_QUIET) => break,
                    () = tokio::time::sleep_until(deadline) => break,
                    () = store.garbage_left() => {}
                }
            }
            let work = store.run(|store| {
                if store.reclaim_due() {
                    store.reclaim()
                } else {
                    Ok(0)
                }
            });
            tokio::pin!(work);
            let result = tokio::select! {
                result = &mut work => result,
                () = cancel.cancelled() => {
                    store.stop_background_work();
                    let _ = work.await;
                    return;
                }
            };
            match result {
                Ok(0) => {}
                Ok(bytes) => info!(
                    freed = %bytesize::ByteSize::b(bytes),
                    "gave the disk space of deleted fragments back"
                ),
                Err(e) => warn!(error = %e, "reclaiming the space of deleted fragments failed"),
            }
        }
    })
}

/// Warns when the disk cannot hold what the supplier offers: the offer is
/// the operator's promise, and customers find out only when uploads fail.
fn warn_if_disk_too_small(config: &Config, store: &Store) {
    let Ok(room) = store.room_above_reserve() else {
        return;
    };
    let (used, _) = store.usage();
    if config.capacity.as_u64().saturating_sub(used) > room {
        warn!(
            capacity = %config.capacity,
            stored = %bytesize::ByteSize::b(used),
            room = %bytesize::ByteSize::b(room),
            min_free_disk = %config.min_free_disk,
            "the disk has less room than the capacity offered: uploads will be refused once it fills"
        );
    }
}

fn identity_host(config: &Config, local_addr: SocketAddr) -> Result<IdHost, Error> {
    if let Some(host) = &config.identity_host {
        return host
            .parse()
            .map_err(|e| Error::Config(format!("identity_host: {e}")));
    }
    let addr = config
        .public_addr
        .clone()
        .unwrap_or_else(|| local_addr.to_string());
    IdHost::from_server_addr(&addr).map_err(|e| {
        Error::Config(format!(
            "cannot derive the identity host from {addr:?} ({e}); set identity_host or public_addr"
        ))
    })
}
