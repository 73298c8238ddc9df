//! Who may sign a user's records: the [`SignerResolver`] a node is given,
//! and the bounded cache of what the node learned.
//!
//! A `suppliers/<user>` record is valid only if the user's master key signed
//! it, and nothing in the record ties its signing key to the user (see
//! [`crate::record`]). A node therefore needs the user's node ID, taken from
//! a resolved identity, before it may store or return such a record. A node
//! asks, in this order:
//!
//! 1. the [`SignerResolver`] its owner gave it: pins, the identity server,
//!    or a supplier's own contracts ([`NoSigners`] knows no one, and
//!    [`StaticSigners`] is a fixed table);
//! 2. its [`SignerCache`] of earlier answers from the DHT;
//! 3. unless [`crate::node::Config::identity_fallback`] is off, the
//!    `identity/<user>` record: the one it holds, else one looked up in the
//!    DHT.
//!
//! The third step is the design's "DHT as fallback" for identities. An
//! `identity/` record is self-certifying, so it proves only that whoever
//! published the record first holds the key inside it: a squatter who beats
//! the real user to it is believed until the record expires (see the known
//! limits in `docs/design/dht.md`). The resolver's answer, when it has one,
//! always wins, and it is also checked against the key inside `identity/`
//! records as a pin.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::id::{NodeId, UserId};

/// The answer of a [`SignerResolver`], on its way.
pub type Resolving<'a> =
    Pin<Box<dyn Future<Output = Result<Option<NodeId>, Unresolved>> + Send + 'a>>;

/// A resolver could not tell whether it knows a user's signer (its
/// database failed, say), so nothing signed in that user's name may be
/// believed for now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unresolved {
    /// Why, for the log and for the caller.
    pub reason: String,
}

impl Unresolved {
    /// A failure for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Resolves a user to the node ID of their master key.
///
/// Implementations should answer quickly and bound their own network calls
/// (the node also wraps each call in its request timeout). `Ok(None)` means
/// "nobody here knows this user", after which the node may fall back to
/// `identity/` records in the DHT. An error means "there may be a pin, but
/// it cannot be read now": the node then refuses to store or return the
/// user's records rather than fall back, because a fallback would skip the
/// pin. A timeout counts as such an error.
pub trait SignerResolver: Send + Sync + fmt::Debug {
    /// The node ID of `user`'s master key, if known.
    ///
    /// Must be cancel-safe: the node drops the future when its timeout
    /// passes.
    fn resolve<'a>(&'a self, user: &'a UserId) -> Resolving<'a>;

    /// Whether the node's owner vouches for `signer` as `user`'s key, so
    /// that the user's records always have room in the node's store (see
    /// [`crate::record::Occupancy`]). Vouch only for users a stranger cannot
    /// become for free: a supplier vouches for its customers, not for every
    /// name it hosts. By default, whether [`SignerResolver::resolve`] gives
    /// `signer`.
    ///
    /// Must be cancel-safe, like `resolve`; an error should answer `false`.
    fn vouches<'a>(
        &'a self,
        user: &'a UserId,
        signer: NodeId,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(
            async move { matches!(self.resolve(user).await, Ok(Some(found)) if found == signer) },
        )
    }
}

/// A resolver that knows no one: signers come only from the DHT's
/// `identity/` records.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSigners;

impl SignerResolver for NoSigners {
    fn resolve<'a>(&'a self, _user: &'a UserId) -> Resolving<'a> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// A fixed table of users and their node IDs, for pins and tests.
#[derive(Debug, Default, Clone)]
pub struct StaticSigners {
    signers: HashMap<UserId, NodeId>,
}

impl StaticSigners {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `user`'s node ID.
    pub fn insert(&mut self, user: UserId, node: NodeId) {
        self.signers.insert(user, node);
    }

    /// The table with `user`'s node ID added.
    pub fn with(mut self, user: UserId, node: NodeId) -> Self {
        self.insert(user, node);
        self
    }
}

impl SignerResolver for StaticSigners {
    fn resolve<'a>(&'a self, user: &'a UserId) -> Resolving<'a> {
        Box::pin(std::future::ready(Ok(self.signers.get(user).copied())))
    }
}

/// What the node learned about signers from the DHT: positive answers for
/// `ttl`, negative ones ("no identity record found") for a shorter
/// `negative_ttl`, at most `capacity` users. Reads no clock.
#[derive(Debug)]
pub struct SignerCache {
    entries: HashMap<UserId, Entry>,
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    signer: Option<NodeId>,
    until: Instant,
}

impl SignerCache {
    /// An empty cache.
    pub fn new(ttl: Duration, negative_ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ttl: ttl.min(MAX_TTL),
            negative_ttl: negative_ttl.min(MAX_TTL),
            capacity,
        }
    }

    /// `Some(answer)` if `user` was looked up recently: `Some(Some(id))` for
    /// a known signer, `Some(None)` for one recently not found.
    pub fn get(&self, user: &UserId, now: Instant) -> Option<Option<NodeId>> {
        self.entries
            .get(user)
            .filter(|entry| now < entry.until)
            .map(|entry| entry.signer)
    }

    /// Records an answer. When full, expired entries go first, then the one
    /// closest to expiry.
    pub fn insert(&mut self, user: UserId, signer: Option<NodeId>, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let ttl = if signer.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        if !self.entries.contains_key(&user) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, entry| now < entry.until);
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.until)
                    .map(|(user, _)| user.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        let until = now.checked_add(ttl).unwrap_or(now);
        self.entries.insert(user, Entry { signer, until });
    }

    /// How many users are cached, stale entries included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The cap on cache lifetimes, so that adding them to an `Instant` cannot
/// overflow.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        format!("{name}@id-a").parse().unwrap()
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn static_signers_answer_from_their_table() {
        let signers = StaticSigners::new().with(user("alice"), NodeId::from_array([1; 32]));
        assert_eq!(
            signers.resolve(&user("alice")).await,
            Ok(Some(NodeId::from_array([1; 32])))
        );
        assert_eq!(signers.resolve(&user("bob")).await, Ok(None));
        assert_eq!(NoSigners.resolve(&user("alice")).await, Ok(None));
    }

    #[test]
    fn answers_expire_negative_ones_sooner() {
        let now = Instant::now();
        let mut cache = SignerCache::new(10 * MINUTE, MINUTE, 8);
        let id = NodeId::from_array([7; 32]);
        cache.insert(user("alice"), Some(id), now);
        cache.insert(user("bob"), None, now);
        assert_eq!(cache.get(&user("alice"), now), Some(Some(id)));
        assert_eq!(cache.get(&user("bob"), now), Some(None));
        assert_eq!(cache.get(&user("carol"), now), None);
        let later = now + 2 * MINUTE;
        assert_eq!(cache.get(&user("alice"), later), Some(Some(id)));
        assert_eq!(cache.get(&user("bob"), later), None);
        assert_eq!(cache.get(&user("alice"), now + 10 * MINUTE), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let now = Instant::now();
        let mut cache = SignerCache::new(10 * MINUTE, MINUTE, 2);
        let names = ["alice", "bob", "carol", "dave"];
        for (i, name) in names.iter().enumerate() {
            let at = now + Duration::from_secs(i as u64);
            cache.insert(user(name), Some(NodeId::from_array([i as u8; 32])), at);
            assert!(cache.len() <= 2);
        }
        // The entries closest to expiry were dropped.
        assert_eq!(cache.get(&user("alice"), now), None);
        assert!(cache.get(&user("dave"), now).is_some());
        let mut empty = SignerCache::new(MINUTE, MINUTE, 0);
        empty.insert(user("alice"), None, now);
        assert!(empty.is_empty());
    }
}
