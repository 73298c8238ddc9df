//! A loopback network of DHT nodes for the tests and the benchmark: each
//! server node is its own tonic server on `127.0.0.1:0` serving
//! [`DhtService`] over real mutual TLS, and each client node is a
//! [`DhtHandle`] with no server.
//!
//! Included with `#[path]` by `tests/network.rs` and `benches/lookup.rs`.

// Each includer uses a different part of the harness.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use common::crypto::PrivateKey;
use common::tls::TlsIdentity;
use dht::node::{Config, DhtHandle, DhtNode, SeedResolver};
use dht::signer::SignerResolver;
use dht::{Contact, DhtService};
use net::Dialer;
use net::server::{Limits, incoming};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Makes `count` 2048-bit master keys, on every core at once.
pub(crate) fn keys(count: usize) -> Vec<PrivateKey> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_thread = count.div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let n = per_thread.min(count.saturating_sub(t * per_thread));
                scope.spawn(move || {
                    (0..n)
                        .map(|_| PrivateKey::generate(2048).expect("key generation"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("key thread"))
            .collect()
    })
}

/// How a node is started.
#[derive(Clone)]
pub(crate) struct Setup {
    /// Changes the node's configuration (after its mode and endpoint are set).
    pub(crate) tune: Arc<dyn Fn(&mut Config) + Send + Sync>,
    /// The node's signer resolver.
    pub(crate) signers: Arc<dyn SignerResolver>,
    /// The node's seed resolver.
    pub(crate) seeds: SeedResolver,
}

impl Setup {
    pub(crate) fn new(
        tune: impl Fn(&mut Config) + Send + Sync + 'static,
        signers: Arc<dyn SignerResolver>,
    ) -> Self {
        Self {
            tune: Arc::new(tune),
            signers,
            seeds: SeedResolver::system(),
        }
    }

    pub(crate) fn with_seeds(mut self, seeds: SeedResolver) -> Self {
        self.seeds = seeds;
        self
    }

    fn start(&self, key: &PrivateKey, mut config: Config) -> Result<(DhtHandle, Arc<TlsIdentity>)> {
        (self.tune)(&mut config);
        let tls = Arc::new(TlsIdentity::generate(key).context("tls identity")?);
        let dialer = Dialer::new(tls.clone());
        let handle = DhtNode::new(config, dialer)
            .with_signers(self.signers.clone())
            .with_seed_resolver(self.seeds.clone())
            .spawn()
            .context("spawn dht node")?;
        Ok((handle, tls))
    }
}

/// A server node and its gRPC server.
pub(crate) struct ServerNode {
    pub(crate) handle: DhtHandle,
    pub(crate) addr: SocketAddr,
    cancel: CancellationToken,
    server: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl ServerNode {
    /// Binds `127.0.0.1:0`, starts the node with that address as its
    /// endpoint, and serves it.
    pub(crate) async fn spawn(key: &PrivateKey, setup: &Setup) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (handle, tls) = setup.start(key, Config::server(vec![addr.to_string()]))?;
        let cancel = CancellationToken::new();
        let stream = incoming(
            listener,
            Arc::new(tls.server_config()?),
            Limits::default(),
            cancel.clone(),
        );
        let router = tonic::transport::Server::builder()
            .add_service(DhtService::new(handle.clone()).into_server());
        let shutdown = cancel.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            if let Err(error) = router.serve_with_incoming_shutdown(stream, shutdown).await {
                tracing::warn!(%error, "test server failed");
            }
        });
        Ok(Self {
            handle,
            addr,
            cancel,
            server: std::sync::Mutex::new(Some(server)),
        })
    }

    /// The node's contact.
    pub(crate) fn contact(&self) -> Contact {
        self.handle
            .contact()
            .cloned()
            .expect("a server has a contact")
    }

    /// Stops serving, then stops the node. Idempotent.
    pub(crate) async fn stop(&self) {
        self.cancel.cancel();
        let server = self.server.lock().expect("lock").take();
        if let Some(server) = server {
            // Open connections are closed gracefully; give them a moment.
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                tracing::warn!(addr = %self.addr, "test server did not stop in time");
            }
        }
        self.handle.shutdown().await;
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.handle.is_stopped()
    }
}

impl Drop for ServerNode {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts a client node (no server).
pub(crate) fn client(key: &PrivateKey, setup: &Setup) -> Result<DhtHandle> {
    Ok(setup.start(key, Config::client())?.0)
}

/// Starts one server node per key: the first starts a new network, and the
/// others join in batches of `batch`, each through a node that joined
/// earlier.
pub(crate) async fn network(
    keys: &[PrivateKey],
    setup: &Setup,
    batch: usize,
) -> Result<Vec<ServerNode>> {
    let mut nodes = Vec::with_capacity(keys.len());
    for key in keys {
        nodes.push(ServerNode::spawn(key, setup).await?);
    }
    let Some(first) = nodes.first() else {
        return Ok(nodes);
    };
    first.handle.bootstrap(Vec::new()).await?;
    let mut joined = 1;
    while joined < nodes.len() {
        let end = (joined + batch.max(1)).min(nodes.len());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, node) in nodes.iter().enumerate().take(end).skip(joined) {
            let seed = nodes[i % joined].addr.to_string();
            let handle = node.handle.clone();
            tasks.spawn(async move { handle.bootstrap(vec![seed]).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined??;
        }
        joined = end;
    }
    Ok(nodes)
}

/// Waits until `check` holds, polling it, for at most `limit`.
pub(crate) async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {limit:?} waiting for {what}");
        }
        // Polling interval of the condition, not a synchronisation point.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Installs a test subscriber that honours `RUST_LOG`.
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
