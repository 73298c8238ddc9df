//! Settings of a DHT node: its mode, Kademlia's parameters, timeouts,
//! intervals and bounds.

use std::num::NonZeroUsize;
use std::time::Duration;

use crate::kbucket::{self, DEFAULT_K};
use crate::query::{self, DEFAULT_ALPHA};

/// Whether a node serves the DHT or only asks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A customer: it looks things up and publishes, but it stores nothing,
    /// serves nothing, and is never added to a routing table. Its requests
    /// carry no sender.
    Client,
    /// A supplier: it serves `Dht` requests, holds and republishes records,
    /// and goes into other nodes' routing tables.
    Server {
        /// Where other nodes reach this one, `host:port` (at most
        /// [`crate::contact::MAX_ENDPOINTS`]); sent as the sender of every
        /// request.
        endpoints: Vec<String>,
    },
}

/// Settings of a [`crate::node::DhtNode`].
///
/// Build one with [`Config::server`] or [`Config::client`] and change the
/// fields you need. Every bound below is taken as at least 1.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Server or client mode.
    pub mode: Mode,
    /// Bucket size and replication factor: Kademlia's `k` (20; a small
    /// network may lower it).
    pub k: NonZeroUsize,
    /// Requests in flight per lookup: Kademlia's `α` (3).
    pub alpha: NonZeroUsize,
    /// Deadline of one request to one node, dialling included (10 s).
    pub request_timeout: Duration,
    /// Deadline of one whole lookup (60 s).
    pub lookup_timeout: Duration,
    /// A bucket that saw no traffic for this long is refreshed with a lookup
    /// of a random key in its range (1 h).
    pub refresh_interval: Duration,
    /// How often each held record is sent again to the nodes closest to its
    /// key (1 h); a STORE received for a key restarts its timer.
    pub republish_interval: Duration,
    /// How often expired records are swept out of the store (5 min). Expired
    /// records are never served in between.
    pub expire_interval: Duration,
    /// How often bootstrap is retried while the routing table is empty and
    /// seeds are known (30 s).
    pub bootstrap_retry: Duration,
    /// Lookups running at once, from all callers (16); more wait.
    pub max_lookups: usize,
    /// Outgoing requests in flight at once (64); more wait.
    pub max_requests: usize,
    /// Open connections to other nodes kept for reuse (64); the least
    /// recently used is closed first.
    pub max_connections: usize,
    /// Background jobs (republishing, bucket refreshes, repairs) at once (4).
    pub max_jobs: usize,
    /// Failed requests in a row after which a contact leaves the routing
    /// table (2); one from its bucket's replacement cache takes its place.
    pub max_failures: u32,
    /// Whether the signer of a `suppliers/` record may be taken from the
    /// user's `identity/` record when the [`crate::signer::SignerResolver`]
    /// does not know the user (true). See [`crate::signer`].
    pub identity_fallback: bool,
    /// How long a signer learned from the DHT is believed (10 min).
    pub signer_cache_ttl: Duration,
}

impl Config {
    /// A server (supplier) reachable at `endpoints`, with the defaults.
    pub fn server(endpoints: Vec<String>) -> Self {
        Self::with_mode(Mode::Server { endpoints })
    }

    /// A client (customer), with the defaults.
    pub fn client() -> Self {
        Self::with_mode(Mode::Client)
    }

    fn with_mode(mode: Mode) -> Self {
        Self {
            mode,
            k: DEFAULT_K,
            alpha: DEFAULT_ALPHA,
            request_timeout: Duration::from_secs(10),
            lookup_timeout: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(60 * 60),
            republish_interval: Duration::from_secs(60 * 60),
            expire_interval: Duration::from_secs(5 * 60),
            bootstrap_retry: Duration::from_secs(30),
            max_lookups: 16,
            max_requests: 64,
            max_connections: 64,
            max_jobs: 4,
            max_failures: 2,
            identity_fallback: true,
            signer_cache_ttl: Duration::from_secs(10 * 60),
        }
    }

    /// Whether this is a server.
    pub fn is_server(&self) -> bool {
        matches!(self.mode, Mode::Server { .. })
    }

    /// The routing table's settings.
    pub(crate) fn kbucket(&self) -> kbucket::Config {
        let mut config = kbucket::Config::with_k(self.k);
        config.refresh_interval = self.refresh_interval;
        // A liveness check is one request.
        config.ping_timeout = self.request_timeout.saturating_mul(2);
        config
    }

    /// The lookups' settings.
    pub(crate) fn query(&self) -> query::Config {
        let mut config = query::Config::with_k(self.k);
        config.alpha = self.alpha;
        config.request_timeout = self.request_timeout;
        config.max_duration = self.lookup_timeout;
        config
    }

    /// How often the node looks at its timers: often enough for the
    /// shortest interval, between 50 ms and 10 s.
    pub(crate) fn tick(&self) -> Duration {
        let shortest = self
            .refresh_interval
            .min(self.republish_interval)
            .min(self.expire_interval)
            .min(self.bootstrap_retry);
        (shortest / 8).clamp(Duration::from_millis(50), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let config = Config::server(vec!["sup-1:7700".into()]);
        assert!(config.is_server());
        assert_eq!(config.k.get(), 20);
        assert_eq!(config.alpha.get(), 3);
        assert_eq!(config.republish_interval, Duration::from_secs(3600));
        assert_eq!(config.tick(), Duration::from_millis(3750));
        assert!(!Config::client().is_server());
        let query = config.query();
        assert_eq!(query.k.get(), 20);
        assert_eq!(query.request_timeout, Duration::from_secs(10));
        assert_eq!(config.kbucket().replacement_cache, 20);
    }

    #[test]
    fn short_intervals_tick_faster() {
        let mut config = Config::client();
        config.republish_interval = Duration::from_secs(2);
        assert_eq!(config.tick(), Duration::from_millis(250));
        config.expire_interval = Duration::from_millis(1);
        assert_eq!(config.tick(), Duration::from_millis(50));
    }
}
