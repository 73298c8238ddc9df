//! Address resolution through hickory-resolver: `host:port`, where the host
//! is an IP address or a DNS name (docker-compose service names, real hosts;
//! the hosts file is honoured).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use tokio::sync::OnceCell;

use crate::NetError;

/// A shared resolver, built on first use from the system configuration.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    inner: Arc<OnceCell<TokioResolver>>,
}

impl Resolver {
    /// Splits `host:port` (`[v6]:port` for IPv6 literals) and resolves the host.
    pub async fn resolve(&self, addr: &str) -> Result<Vec<SocketAddr>, NetError> {
        let (host, port) = split_host_port(addr)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let resolver = self
            .inner
            .get_or_try_init(|| async {
                TokioResolver::builder_tokio()
                    .and_then(|builder| builder.build())
                    .map_err(|e| NetError::Resolve {
                        host: host.to_owned(),
                        reason: format!("no usable resolver configuration: {e}"),
                    })
            })
            .await?;
        let lookup = resolver
            .lookup_ip(host)
            .await
            .map_err(|e| NetError::Resolve {
                host: host.to_owned(),
                reason: e.to_string(),
            })?;
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(NetError::Resolve {
                host: host.to_owned(),
                reason: "no addresses".into(),
            });
        }
        Ok(addrs)
    }
}

/// Splits `host:port`; the port is required.
pub fn split_host_port(addr: &str) -> Result<(&str, u16), NetError> {
    let bad = |reason| NetError::Address {
        addr: addr.to_owned(),
        reason,
    };
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| bad("expected [v6-address]:port"))?;
        (host, port)
    } else {
        addr.rsplit_once(':')
            .ok_or_else(|| bad("expected host:port"))?
    };
    if host.is_empty() {
        return Err(bad("host is empty"));
    }
    let port: u16 = port.parse().map_err(|_| bad("port must be 1-65535"))?;
    if port == 0 {
        return Err(bad("port must be 1-65535"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_pairs_split() {
        assert_eq!(split_host_port("id-a:7700").unwrap(), ("id-a", 7700));
        assert_eq!(split_host_port("[::1]:80").unwrap(), ("::1", 80));
        for bad in ["id-a", ":7700", "id-a:0", "id-a:x", "id-a:70000", "[::1]"] {
            assert!(split_host_port(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn ip_addresses_need_no_dns_and_localhost_comes_from_the_hosts_file() {
        let resolver = Resolver::default();
        let addrs = resolver.resolve("127.0.0.1:7700").await.unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:7700".parse().unwrap()]);
        let addrs = resolver.resolve("localhost:7700").await.unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7700),
            "{addrs:?}"
        );
    }
}
