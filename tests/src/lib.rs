//! The in-process multi-node harness: suppliers that form one DHT on
//! loopback over real mutual TLS, each with its own temporary directory, and
//! customers with their own homes. Every wait has a deadline; dropping a
//! [`TestNet`] stops everything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use customer::daemon::Daemon;
use customer::home::{Home, InitOptions};
use customer::session::Session;
use supplier::{Config, Supplier};
use tempfile::TempDir;

/// How long the harness waits for anything.
pub const WAIT: Duration = Duration::from_secs(30);

/// Settings every supplier of a [`TestNet`] gets, beyond
/// [`Config::for_tests`].
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a member's proof of a share key holds.
    pub grant_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            grant_ttl: Config::default().grant_ttl,
        }
    }
}

/// A network of suppliers; the first also serves identities.
#[derive(Debug)]
pub struct TestNet {
    suppliers: Vec<Option<Supplier>>,
    addrs: Vec<SocketAddr>,
    dirs: Vec<TempDir>,
    homes: TempDir,
    options: Options,
}

impl TestNet {
    /// Starts `n` suppliers; the first starts the DHT and the others join
    /// it. Returns once the first knows every other one.
    pub async fn spawn(n: usize) -> Result<Self> {
        Self::spawn_with(n, Options::default()).await
    }

    /// [`TestNet::spawn`] with `options`.
    pub async fn spawn_with(n: usize, options: Options) -> Result<Self> {
        let mut suppliers = Vec::new();
        let mut addrs: Vec<SocketAddr> = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir()?;
            supplier::init_data_dir(dir.path(), 2048)?;
            let mut config = Config::for_tests(dir.path());
            config.grant_ttl = options.grant_ttl;
            if let Some(first) = addrs.first() {
                config.bootstrap = vec![first.to_string()];
            }
            config.identity_server = i == 0;
            let node = Supplier::spawn(config).await?;
            addrs.push(node.local_addr());
            suppliers.push(Some(node));
            dirs.push(dir);
        }
        let net = Self {
            suppliers,
            addrs,
            dirs,
            homes: tempfile::tempdir()?,
            options,
        };
        net.wait_joined().await?;
        Ok(net)
    }

    async fn wait_joined(&self) -> Result<()> {
        let Some(Some(first)) = self.suppliers.first() else {
            bail!("no suppliers");
        };
        let dht = first
            .dht()
            .context("the first supplier has no DHT")?
            .clone();
        let want = self.suppliers.len() - 1;
        tokio::time::timeout(WAIT, async {
            while dht.stats().await.map(|s| s.contacts).unwrap_or(0) < want {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .context("the suppliers never formed one DHT")
    }

    /// The address of supplier `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// Every supplier address.
    pub fn addrs(&self) -> Vec<String> {
        self.addrs.iter().map(ToString::to_string).collect()
    }

    /// A customer named `name` with the first supplier as identity server
    /// and DHT seed; its identity is published. It runs no daemon (its
    /// identity advertises 127.0.0.1:7700, where none listens).
    pub async fn customer(&self, name: &str) -> Result<Session> {
        self.customer_at(name, "127.0.0.1:7700".parse()?).await
    }

    /// [`TestNet::customer`] with its daemon running, on a port bound
    /// before its identity was made, so that the identity advertises it.
    /// The daemon has a session of its own on the same home.
    pub async fn customer_with_daemon(&self, name: &str) -> Result<(Session, Daemon)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let session = self.customer_at(name, listener.local_addr()?).await?;
        let home = session.home().clone();
        let own = Session::open(home.clone(), home.master_key(None)?)?;
        let daemon = Daemon::spawn(Arc::new(own), listener)?;
        Ok((session, daemon))
    }

    async fn customer_at(&self, name: &str, listen: SocketAddr) -> Result<Session> {
        let seed = self.addrs[0];
        let home = Home::new(self.homes.path().join(name));
        home.init(
            &InitOptions {
                user_id: format!("{name}@127.0.0.1_{}", seed.port()).parse()?,
                id_server: seed.to_string(),
                bootstrap: vec![seed.to_string()],
                listen,
            },
            2048,
            None,
        )?;
        let session = Session::open(home.clone(), home.master_key(None)?)?;
        session.ensure_published().await?;
        Ok(session)
    }

    /// Stops supplier `i` (gracefully).
    pub async fn stop(&mut self, i: usize) {
        if let Some(mut node) = self.suppliers[i].take() {
            node.shutdown().await;
        }
    }

    /// Starts supplier `i` again on its old address, with its data.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        let mut config = Config::for_tests(self.dirs[i].path());
        config.grant_ttl = self.options.grant_ttl;
        config.listen = self.addrs[i];
        config.identity_server = i == 0;
        if i > 0 {
            config.bootstrap = vec![self.addrs[0].to_string()];
        }
        self.suppliers[i] = Some(Supplier::spawn(config).await?);
        Ok(())
    }
}
