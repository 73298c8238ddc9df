//! Bootstrap seeds to socket addresses, through hickory-resolver.
//!
//! A seed is one of:
//!
//! - `ip:port` or `[v6]:port`: used as it is;
//! - `host:port`: the host's A and AAAA records (the hosts file first);
//! - a bare domain: the targets of its `_silt._tcp.<domain>` SRV records,
//!   lowest priority and highest weight first, each resolved to addresses,
//!   then the domain itself at the default port 7700;
//! - a bare IP address: that address at port 7700.
//!
//! The result is a list of `ip:port` strings that the dialer uses as they
//! are, so only this module ever resolves a seed, and a test can point it at
//! a DNS server of its own with [`SeedResolver::with_config`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use common::id::DEFAULT_PORT;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use tokio::sync::OnceCell;
use tracing::debug;

use crate::node::NodeError;

/// The most addresses taken from one seed.
const MAX_ADDRESSES: usize = 16;

/// The most SRV targets followed for one domain.
const MAX_SRV_TARGETS: usize = 8;

/// Resolves bootstrap seeds.
#[derive(Clone)]
pub struct SeedResolver {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: the system configuration (`/etc/resolv.conf`).
    config: Option<(ResolverConfig, ResolverOpts)>,
    resolver: OnceCell<TokioResolver>,
}

impl SeedResolver {
    /// A resolver with the system's configuration, built on first use.
    pub fn system() -> Self {
        Self::build(None)
    }

    /// A resolver that asks the name servers of `config`, e.g. a test's own
    /// DNS server on a loopback port. The hosts file is still read first.
    pub fn with_config(config: ResolverConfig, options: ResolverOpts) -> Self {
        Self::build(Some((config, options)))
    }

    fn build(config: Option<(ResolverConfig, ResolverOpts)>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                resolver: OnceCell::new(),
            }),
        }
    }

    /// The addresses of `seed`, as `ip:port` strings, at most 16.
    ///
    /// Cancel-safe.
    pub async fn resolve(&self, seed: &str) -> Result<Vec<String>, NodeError> {
        let error = |reason: String| NodeError::Seed {
            seed: seed.to_owned(),
            reason,
        };
        let seed = seed.trim();
        if seed.is_empty() {
            return Err(error("empty seed".into()));
        }
        if let Ok(addr) = seed.parse::<SocketAddr>() {
            return Ok(vec![addr.to_string()]);
        }
        if let Ok(ip) = seed.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, DEFAULT_PORT).to_string()]);
        }
        let mut addrs = Vec::new();
        if seed.contains(':') {
            let (host, port) =
                net::resolve::split_host_port(seed).map_err(|e| error(e.to_string()))?;
            self.push_host(host, port, &mut addrs)
                .await
                .map_err(error)?;
        } else {
            let srv_error = self.push_srv(seed, &mut addrs).await.err();
            let host_error = self.push_host(seed, DEFAULT_PORT, &mut addrs).await.err();
            if addrs.is_empty() {
                let reason = match (srv_error, host_error) {
                    (Some(srv), Some(host)) => format!("no SRV record ({srv}) and {host}"),
                    (Some(reason), None) | (None, Some(reason)) => reason,
                    (None, None) => "no addresses".into(),
                };
                return Err(error(reason));
            }
        }
        if addrs.is_empty() {
            return Err(error("no addresses".into()));
        }
        Ok(addrs)
    }

    /// Appends the targets of `_silt._tcp.<domain>`.
    async fn push_srv(&self, domain: &str, addrs: &mut Vec<String>) -> Result<(), String> {
        let resolver = self.resolver().await?;
        let name = format!("_silt._tcp.{}", domain.trim_end_matches('.'));
        let lookup = resolver
            .srv_lookup(name.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let mut targets: Vec<(u16, u16, String, u16)> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => {
                    Some((srv.priority, srv.weight, srv.target.to_string(), srv.port))
                }
                _ => None,
            })
            .filter(|(_, _, target, port)| *port != 0 && target != ".")
            .collect();
        targets.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        debug!(%name, targets = targets.len(), "seed srv records");
        for (_, _, target, port) in targets.into_iter().take(MAX_SRV_TARGETS) {
            if let Err(reason) = self.push_host(&target, port, addrs).await {
                debug!(%target, %reason, "srv target did not resolve");
            }
        }
        Ok(())
    }

    /// Appends the addresses of `host` at `port`.
    async fn push_host(
        &self,
        host: &str,
        port: u16,
        addrs: &mut Vec<String>,
    ) -> Result<(), String> {
        let resolver = self.resolver().await?;
        let lookup = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
        for ip in lookup.iter() {
            let addr = SocketAddr::new(ip, port).to_string();
            if addrs.len() < MAX_ADDRESSES && !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Ok(())
    }

    async fn resolver(&self) -> Result<&TokioResolver, String> {
        self.inner
            .resolver
            .get_or_try_init(|| async {
                let builder = match &self.inner.config {
                    None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?,
                    Some((config, options)) => TokioResolver::builder_with_config(
                        config.clone(),
                        TokioRuntimeProvider::default(),
                    )
                    .with_options(options.clone()),
                };
                builder
                    .build()
                    .map_err(|e| format!("no usable resolver configuration: {e}"))
            })
            .await
    }
}

impl Default for SeedResolver {
    fn default() -> Self {
        Self::system()
    }
}

impl fmt::Debug for SeedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedResolver")
            .field("system", &self.inner.config.is_none())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_addresses_need_no_dns() {
        let seeds = SeedResolver::system();
        assert_eq!(
            seeds.resolve("127.0.0.1:7701").await.unwrap(),
            vec!["127.0.0.1:7701"]
        );
        assert_eq!(
            seeds.resolve("[::1]:7701").await.unwrap(),
            vec!["[::1]:7701"]
        );
        assert_eq!(
            seeds.resolve("10.0.0.1").await.unwrap(),
            vec!["10.0.0.1:7700"]
        );
    }

    #[tokio::test]
    async fn bad_seeds_are_refused_with_their_name() {
        let seeds = SeedResolver::system();
        for bad in ["", "host:0", "host:x", ":7700"] {
            let err = seeds.resolve(bad).await.unwrap_err();
            assert!(matches!(err, NodeError::Seed { .. }), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn localhost_comes_from_the_hosts_file() {
        let seeds = SeedResolver::system();
        let addrs = seeds.resolve("localhost:7702").await.unwrap();
        assert!(!addrs.is_empty());
        for addr in addrs {
            let addr: SocketAddr = addr.parse().unwrap();
            assert!(addr.ip().is_loopback() && addr.port() == 7702, "{addr}");
        }
    }
}
