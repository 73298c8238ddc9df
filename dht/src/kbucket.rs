//! The Kademlia routing table: 256 buckets of at most `k` contacts, each
//! with a bounded replacement cache.
//!
//! The table does no IO and reads no clock: every method that cares about
//! time takes `now`. It never holds the local node.
//!
//! Within a bucket, contacts are kept least-recently-seen first. Seeing a
//! contact again moves it to the back. When a bucket is full, a new contact
//! goes to the bucket's replacement cache and [`RoutingTable::insert`] returns
//! [`InsertOutcome::Ping`], asking the caller to check whether the
//! least-recently-seen contact is still alive (Kademlia prefers old, proven
//! contacts over new ones). The caller reports the answer with
//! [`RoutingTable::on_ping_success`], which keeps the old contact, or
//! [`RoutingTable::on_ping_failure`], which evicts it and promotes the most
//! recently seen replacement. Only one liveness check per bucket is asked for
//! at a time; if the caller never reports one, another is asked for once
//! [`Config::ping_timeout`] has passed.
//!
//! # Invariants
//!
//! - No bucket holds more than `k` contacts, and no replacement cache more
//!   than [`Config::replacement_cache`].
//! - Every contact sits in the bucket its distance to the local node names.
//! - A node ID appears at most once in the whole table, caches included.
//! - The local node is never in the table.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use common::id::NodeId;

use crate::contact::Contact;
use crate::distance::{Key, NUM_BUCKETS};

/// Routing table settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The most contacts per bucket: Kademlia's `k`.
    pub k: NonZeroUsize,
    /// The most contacts waiting in each bucket's replacement cache.
    pub replacement_cache: usize,
    /// A bucket untouched for this long is reported by
    /// [`RoutingTable::stale_buckets`].
    pub refresh_interval: Duration,
    /// How long to wait for a liveness check to be reported before asking
    /// for another one in the same bucket.
    pub ping_timeout: Duration,
}

impl Config {
    /// The defaults with another `k` (a small network may lower it); the
    /// replacement cache is as large as the bucket.
    pub fn with_k(k: NonZeroUsize) -> Self {
        Self {
            k,
            replacement_cache: k.get(),
            ..Self::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            k: DEFAULT_K,
            replacement_cache: DEFAULT_K.get(),
            refresh_interval: Duration::from_secs(60 * 60),
            ping_timeout: Duration::from_secs(30),
        }
    }
}

/// Kademlia's default bucket size.
pub const DEFAULT_K: NonZeroUsize = match NonZeroUsize::new(20) {
    Some(k) => k,
    // Evaluated at compile time: a zero here would not build.
    None => panic!("k must not be zero"),
};

/// What [`RoutingTable::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The bucket is full and a liveness check is already under way; the
    /// contact waits in the replacement cache.
    Cached,
    /// The contact was added at the back of its bucket.
    Inserted,
    /// The contact is the local node, which is never inserted.
    Local,
    /// The bucket is full. The contact waits in the replacement cache, and
    /// the caller should ping `stale` (the least-recently-seen contact of the
    /// bucket) and report the result with [`RoutingTable::on_ping_success`]
    /// or [`RoutingTable::on_ping_failure`].
    Ping {
        /// The contact to check.
        stale: Contact,
    },
    /// The contact was already in its bucket; it moved to the back and its
    /// endpoints were updated.
    Updated,
}

/// A Kademlia routing table.
#[derive(Debug)]
pub struct RoutingTable {
    local: NodeId,
    local_key: Key,
    config: Config,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// An empty table for the node `local`. `now` counts as the last refresh
    /// of every bucket.
    pub fn new(local: NodeId, config: Config, now: Instant) -> Self {
        Self {
            local,
            local_key: Key::from(local),
            config,
            buckets: (0..NUM_BUCKETS).map(|_| Bucket::new(now)).collect(),
        }
    }

    /// The local node.
    pub fn local(&self) -> NodeId {
        self.local
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The bucket a key falls in, or `None` for the local node's own key.
    pub fn bucket_index(&self, key: &Key) -> Option<usize> {
        self.local_key.distance(key).bucket_index()
    }

    /// Records that `contact` was seen (it sent us a request or answered
    /// one). See [`InsertOutcome`] for what may happen.
    pub fn insert(&mut self, contact: Contact, now: Instant) -> InsertOutcome {
        let Some(index) = self.bucket_index(&contact.key()) else {
            return InsertOutcome::Local;
        };
        let k = self.config.k.get();
        let cache_cap = self.config.replacement_cache;
        let ping_timeout = self.config.ping_timeout;
        let bucket = &mut self.buckets[index];
        bucket.refreshed = now;

        if let Some(pos) = bucket.position(&contact.id()) {
            // Present: move to the back (most recently seen).
            if let Some(mut entry) = bucket.nodes.remove(pos) {
                entry.contact = contact;
                entry.last_seen = now;
                bucket.nodes.push_back(entry);
            }
            return InsertOutcome::Updated;
        }
        if bucket.nodes.len() < k {
            bucket.remove_replacement(&contact.id());
            bucket.nodes.push_back(Entry {
                contact,
                last_seen: now,
            });
            return InsertOutcome::Inserted;
        }

        // Full: cache the newcomer (most recent at the back, oldest dropped).
        bucket.remove_replacement(&contact.id());
        if cache_cap > 0 {
            if bucket.replacements.len() >= cache_cap {
                bucket.replacements.pop_front();
            }
            bucket.replacements.push_back(contact);
        }
        let check_running = bucket
            .ping
            .as_ref()
            .is_some_and(|ping| now.saturating_duration_since(ping.since) < ping_timeout);
        if check_running {
            return InsertOutcome::Cached;
        }
        match bucket.nodes.front() {
            Some(stale) => {
                let stale = stale.contact.clone();
                bucket.ping = Some(PendingPing {
                    node: stale.id(),
                    since: now,
                });
                InsertOutcome::Ping { stale }
            }
            // Unreachable with k >= 1 and a full bucket; nothing to check.
            None => InsertOutcome::Cached,
        }
    }

    /// Reports that `id` answered a liveness check (or any request): it
    /// moves to the back of its bucket. Returns whether it is in the table.
    pub fn on_ping_success(&mut self, id: &NodeId, now: Instant) -> bool {
        let Some(index) = self.bucket_index(&Key::from(id)) else {
            return false;
        };
        let bucket = &mut self.buckets[index];
        if bucket.ping.as_ref().is_some_and(|ping| ping.node == *id) {
            bucket.ping = None;
        }
        let Some(pos) = bucket.position(id) else {
            return false;
        };
        bucket.refreshed = now;
        if let Some(mut entry) = bucket.nodes.remove(pos) {
            entry.last_seen = now;
            bucket.nodes.push_back(entry);
        }
        true
    }

    /// Reports that `id` failed a liveness check: it is evicted and the most
    /// recently seen contact of the bucket's replacement cache, if any, takes
    /// its place. Returns the promoted contact.
    ///
    /// A driver may also call this when a node fails requests repeatedly.
    /// A failed node that is only in the replacement cache is dropped from it.
    pub fn on_ping_failure(&mut self, id: &NodeId, now: Instant) -> Option<Contact> {
        let index = self.bucket_index(&Key::from(id))?;
        let k = self.config.k.get();
        let bucket = &mut self.buckets[index];
        if bucket.ping.as_ref().is_some_and(|ping| ping.node == *id) {
            bucket.ping = None;
        }
        let Some(pos) = bucket.position(id) else {
            bucket.remove_replacement(id);
            return None;
        };
        bucket.nodes.remove(pos);
        if bucket.nodes.len() >= k {
            return None;
        }
        let promoted = bucket.replacements.pop_back()?;
        bucket.nodes.push_back(Entry {
            contact: promoted.clone(),
            last_seen: now,
        });
        Some(promoted)
    }

    /// Whether `id` is in a bucket (replacement caches do not count).
    pub fn contains(&self, id: &NodeId) -> bool {
        self.contact(id).is_some()
    }

    /// The contact of `id`, if it is in a bucket.
    pub fn contact(&self, id: &NodeId) -> Option<&Contact> {
        let bucket = &self.buckets[self.bucket_index(&Key::from(id))?];
        bucket
            .position(id)
            .and_then(|pos| bucket.nodes.get(pos))
            .map(|entry| &entry.contact)
    }

    /// How many contacts the buckets hold (replacement caches not counted).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    /// Whether the buckets are all empty.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|b| b.nodes.is_empty())
    }

    /// Every contact in the buckets, from bucket 0 up.
    pub fn iter(&self) -> impl Iterator<Item = &Contact> {
        self.buckets
            .iter()
            .flat_map(|b| b.nodes.iter().map(|entry| &entry.contact))
    }

    /// The contacts of bucket `index`, least recently seen first (empty for
    /// an index out of range).
    pub fn bucket(&self, index: usize) -> impl Iterator<Item = &Contact> {
        self.buckets
            .get(index)
            .into_iter()
            .flat_map(|b| b.nodes.iter().map(|entry| &entry.contact))
    }

    /// The replacement cache of bucket `index`, most recently seen last.
    pub fn replacements(&self, index: usize) -> impl Iterator<Item = &Contact> {
        self.buckets
            .get(index)
            .into_iter()
            .flat_map(|b| b.replacements.iter())
    }

    /// The `count` contacts closest to `target`, closest first.
    pub fn closest(&self, target: &Key, count: usize) -> Vec<Contact> {
        let mut all: Vec<(crate::distance::Distance, &Contact)> = self
            .iter()
            .map(|contact| (target.distance(&contact.key()), contact))
            .collect();
        if count < all.len() {
            all.select_nth_unstable_by_key(count, |(distance, _)| *distance);
            all.truncate(count);
        }
        all.sort_unstable_by_key(|(distance, _)| *distance);
        all.into_iter()
            .map(|(_, contact)| contact.clone())
            .collect()
    }

    /// The buckets to refresh: those untouched for
    /// [`Config::refresh_interval`], from the lowest non-empty bucket up.
    ///
    /// Buckets below the lowest non-empty one cover the space nearer to us
    /// than any known node; a lookup of our own ID (which a driver does when
    /// it joins) covers them all at once, so they are not reported. An empty
    /// table reports nothing: it needs a bootstrap, not a refresh.
    pub fn stale_buckets(&self, now: Instant) -> Vec<usize> {
        let Some(lowest) = self.buckets.iter().position(|b| !b.nodes.is_empty()) else {
            return Vec::new();
        };
        (lowest..NUM_BUCKETS)
            .filter(|&i| {
                now.saturating_duration_since(self.buckets[i].refreshed)
                    >= self.config.refresh_interval
            })
            .collect()
    }

    /// Records that bucket `index` was refreshed, typically after a lookup
    /// of a key in its range.
    pub fn mark_refreshed(&mut self, index: usize, now: Instant) {
        if let Some(bucket) = self.buckets.get_mut(index) {
            bucket.refreshed = now;
        }
    }

    /// A lookup target in bucket `index`, with its free bits from `random`.
    pub fn refresh_target(&self, index: usize, random: [u8; 32]) -> Option<Key> {
        self.local_key.in_bucket(index, random)
    }
}

#[derive(Debug)]
struct Bucket {
    /// Least recently seen first.
    nodes: VecDeque<Entry>,
    /// Most recently seen last.
    replacements: VecDeque<Contact>,
    ping: Option<PendingPing>,
    refreshed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            nodes: VecDeque::new(),
            replacements: VecDeque::new(),
            ping: None,
            refreshed: now,
        }
    }

    fn position(&self, id: &NodeId) -> Option<usize> {
        self.nodes
            .iter()
            .position(|entry| entry.contact.id() == *id)
    }

    fn remove_replacement(&mut self, id: &NodeId) {
        self.replacements.retain(|contact| contact.id() != *id);
    }
}

#[derive(Debug)]
struct Entry {
    contact: Contact,
    last_seen: Instant,
}

#[derive(Debug)]
struct PendingPing {
    node: NodeId,
    since: Instant,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::distance::Distance;

    fn contact(bytes: [u8; 32]) -> Contact {
        Contact::new(NodeId::from_array(bytes), Vec::new()).unwrap()
    }

    /// A node at distance `d` (as a big-endian suffix) from the zero ID.
    fn at(d: u16) -> Contact {
        let mut bytes = [0u8; 32];
        bytes[30..].copy_from_slice(&d.to_be_bytes());
        contact(bytes)
    }

    fn table(k: usize, now: Instant) -> RoutingTable {
        RoutingTable::new(
            NodeId::from_array([0; 32]),
            Config::with_k(NonZeroUsize::new(k).unwrap()),
            now,
        )
    }

    fn ids<'a>(contacts: impl Iterator<Item = &'a Contact>) -> Vec<NodeId> {
        contacts.map(Contact::id).collect()
    }

    #[test]
    fn the_local_node_is_never_inserted() {
        let now = Instant::now();
        let mut t = table(2, now);
        assert_eq!(t.insert(at(0), now), InsertOutcome::Local);
        assert!(t.is_empty());
        assert!(!t.on_ping_success(&at(0).id(), now));
        assert_eq!(t.on_ping_failure(&at(0).id(), now), None);
    }

    #[test]
    fn contacts_are_kept_least_recently_seen_first() {
        let now = Instant::now();
        let mut t = table(3, now);
        // 4..8 all fall in bucket 2.
        for d in [4, 5, 6] {
            assert_eq!(t.insert(at(d), now), InsertOutcome::Inserted);
        }
        assert_eq!(ids(t.bucket(2)), ids([at(4), at(5), at(6)].iter()));
        let moved = Contact::new(at(4).id(), vec!["h:1".into()]).unwrap();
        assert_eq!(t.insert(moved.clone(), now), InsertOutcome::Updated);
        assert_eq!(ids(t.bucket(2)), ids([at(5), at(6), at(4)].iter()));
        assert_eq!(t.contact(&at(4).id()), Some(&moved));
        assert!(t.on_ping_success(&at(5).id(), now));
        assert_eq!(ids(t.bucket(2)), ids([at(6), at(4), at(5)].iter()));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_full_bucket_asks_for_one_liveness_check_and_caches_newcomers() {
        let now = Instant::now();
        let mut t = table(2, now);
        t.insert(at(4), now);
        t.insert(at(5), now);
        assert_eq!(t.insert(at(6), now), InsertOutcome::Ping { stale: at(4) });
        // A check is under way: newcomers are only cached.
        assert_eq!(t.insert(at(7), now), InsertOutcome::Cached);
        assert_eq!(ids(t.bucket(2)), ids([at(4), at(5)].iter()));
        assert_eq!(ids(t.replacements(2)), ids([at(6), at(7)].iter()));
        // A cached node seen again moves to the back of the cache.
        assert_eq!(t.insert(at(6), now), InsertOutcome::Cached);
        assert_eq!(ids(t.replacements(2)), ids([at(7), at(6)].iter()));
        // An unanswered check is asked for again after the timeout.
        let later = now + t.config().ping_timeout;
        assert_eq!(t.insert(at(7), later), InsertOutcome::Ping { stale: at(4) });
    }

    #[test]
    fn a_live_stale_node_stays_and_the_newcomer_waits() {
        let now = Instant::now();
        let mut t = table(2, now);
        t.insert(at(4), now);
        t.insert(at(5), now);
        assert_eq!(t.insert(at(6), now), InsertOutcome::Ping { stale: at(4) });
        assert!(t.on_ping_success(&at(4).id(), now));
        assert_eq!(ids(t.bucket(2)), ids([at(5), at(4)].iter()));
        assert_eq!(ids(t.replacements(2)), ids([at(6)].iter()));
        // The check is over, so the next newcomer asks for a new one.
        assert_eq!(t.insert(at(7), now), InsertOutcome::Ping { stale: at(5) });
    }

    #[test]
    fn a_dead_stale_node_is_replaced_by_the_most_recent_replacement() {
        let now = Instant::now();
        let mut t = table(2, now);
        t.insert(at(4), now);
        t.insert(at(5), now);
        t.insert(at(6), now);
        t.insert(at(7), now);
        assert_eq!(t.on_ping_failure(&at(4).id(), now), Some(at(7)));
        assert_eq!(ids(t.bucket(2)), ids([at(5), at(7)].iter()));
        assert_eq!(ids(t.replacements(2)), ids([at(6)].iter()));
        assert!(!t.contains(&at(4).id()));
        // An unknown node fails: nothing happens.
        assert_eq!(t.on_ping_failure(&at(4).id(), now), None);
        // With no replacement left, a failure just frees a slot.
        assert_eq!(t.on_ping_failure(&at(5).id(), now), Some(at(6)));
        assert_eq!(t.on_ping_failure(&at(6).id(), now), None);
        assert_eq!(ids(t.bucket(2)), ids([at(7)].iter()));
        assert_eq!(t.insert(at(4), now), InsertOutcome::Inserted);
    }

    #[test]
    fn the_replacement_cache_is_bounded() {
        let now = Instant::now();
        let mut config = Config::with_k(NonZeroUsize::new(1).unwrap());
        config.replacement_cache = 2;
        let mut t = RoutingTable::new(NodeId::from_array([0; 32]), config, now);
        for d in 0x80..0x90 {
            t.insert(at(d), now);
        }
        assert_eq!(ids(t.bucket(7)), ids([at(0x80)].iter()));
        assert_eq!(ids(t.replacements(7)), ids([at(0x8e), at(0x8f)].iter()));

        config = Config::with_k(NonZeroUsize::new(1).unwrap());
        config.replacement_cache = 0;
        let mut t = RoutingTable::new(NodeId::from_array([0; 32]), config, now);
        t.insert(at(0x80), now);
        t.insert(at(0x81), now);
        assert_eq!(t.replacements(7).count(), 0);
        assert_eq!(t.on_ping_failure(&at(0x80).id(), now), None);
    }

    #[test]
    fn closest_orders_by_distance_to_the_target() {
        let now = Instant::now();
        let mut t = table(20, now);
        for d in [1, 2, 3, 9, 12, 300] {
            t.insert(at(d), now);
        }
        let target = Key::from(at(8).id());
        // Distances to 8: 9, 10, 11, 1, 4, 300 ^ 8 = 292.
        assert_eq!(
            ids(t.closest(&target, 4).iter()),
            ids([at(9), at(12), at(1), at(2)].iter())
        );
        assert_eq!(t.closest(&target, 100).len(), 6);
        assert!(t.closest(&target, 0).is_empty());
    }

    #[test]
    fn stale_buckets_are_reported_from_the_lowest_non_empty_one() {
        let start = Instant::now();
        let mut t = table(20, start);
        let hour = t.config().refresh_interval;
        assert!(t.stale_buckets(start + hour * 2).is_empty());
        t.insert(at(0x10), start); // Bucket 4.
        assert!(t.stale_buckets(start + hour / 2).is_empty());
        let later = start + hour;
        let stale = t.stale_buckets(later);
        assert_eq!(stale.first(), Some(&4));
        assert_eq!(stale.len(), 252);
        // Touching a bucket through a contact or a lookup resets it.
        t.insert(at(0x10), later);
        t.mark_refreshed(200, later);
        let stale = t.stale_buckets(later);
        assert_eq!(stale.first(), Some(&5));
        assert!(!stale.contains(&200));
        assert!(!stale.contains(&4));
        let target = t.refresh_target(200, [0xaa; 32]).unwrap();
        assert_eq!(t.bucket_index(&target), Some(200));
        assert_eq!(t.bucket_index(&Key::from_array([0; 32])), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert([u8; 32]),
        PingFailure(usize),
        PingSuccess(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => any::<[u8; 32]>().prop_map(Op::Insert),
            // Node IDs with a shared prefix land in the same low buckets, so
            // buckets other than the top few fill up too.
            3 => (any::<u8>(), any::<[u8; 2]>()).prop_map(|(b, tail)| {
                let mut bytes = [0u8; 32];
                bytes[30] = b & 0x0f;
                bytes[31] = tail[0] ^ tail[1];
                Op::Insert(bytes)
            }),
            1 => any::<usize>().prop_map(Op::PingFailure),
            1 => any::<usize>().prop_map(Op::PingSuccess),
        ]
    }

    fn check_invariants(t: &RoutingTable, k: usize, cache: usize) -> Result<(), TestCaseError> {
        let mut seen = BTreeSet::new();
        for index in 0..NUM_BUCKETS {
            prop_assert!(t.bucket(index).count() <= k);
            prop_assert!(t.replacements(index).count() <= cache);
            for contact in t.bucket(index).chain(t.replacements(index)) {
                prop_assert_eq!(t.bucket_index(&contact.key()), Some(index));
                prop_assert!(seen.insert(contact.id()), "duplicate {:?}", contact);
            }
        }
        prop_assert!(!seen.contains(&t.local()));
        Ok(())
    }

    fn pick(t: &RoutingTable, i: usize) -> Option<NodeId> {
        let all: Vec<NodeId> = t.iter().map(Contact::id).collect();
        (!all.is_empty()).then(|| all[i % all.len()])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn routing_table_invariants_hold(
            local in any::<[u8; 32]>(),
            k in 1usize..6,
            cache in 0usize..4,
            ops in prop::collection::vec(op(), 1..200),
            target in any::<[u8; 32]>(),
        ) {
            let now = Instant::now();
            let mut config = Config::with_k(NonZeroUsize::new(k).unwrap());
            config.replacement_cache = cache;
            let mut t = RoutingTable::new(NodeId::from_array(local), config, now);
            t.insert(contact(local), now);
            for op in ops {
                match op {
                    Op::Insert(bytes) => {
                        let before = t.len();
                        match t.insert(contact(bytes), now) {
                            InsertOutcome::Inserted => prop_assert_eq!(t.len(), before + 1),
                            InsertOutcome::Ping { stale } => {
                                let index = t.bucket_index(&stale.key()).unwrap();
                                prop_assert_eq!(t.bucket(index).next(), Some(&stale));
                                prop_assert_eq!(t.bucket(index).count(), k);
                            }
                            InsertOutcome::Local => prop_assert_eq!(bytes, local),
                            InsertOutcome::Cached | InsertOutcome::Updated => {
                                prop_assert_eq!(t.len(), before);
                            }
                        }
                    }
                    Op::PingSuccess(i) => {
                        if let Some(id) = pick(&t, i) {
                            prop_assert!(t.on_ping_success(&id, now));
                            let index = t.bucket_index(&Key::from(id)).unwrap();
                            prop_assert_eq!(t.bucket(index).last().map(Contact::id), Some(id));
                        }
                    }
                    Op::PingFailure(i) => {
                        if let Some(id) = pick(&t, i) {
                            let index = t.bucket_index(&Key::from(id)).unwrap();
                            let size = t.bucket(index).count();
                            let newest = t.replacements(index).last().cloned();
                            let promoted = t.on_ping_failure(&id, now);
                            // The most recent replacement takes the freed slot.
                            prop_assert_eq!(&promoted, &newest);
                            prop_assert!(!t.contains(&id));
                            match promoted {
                                Some(p) => {
                                    prop_assert_eq!(t.bucket(index).count(), size);
                                    prop_assert_eq!(t.bucket(index).last(), Some(&p));
                                    prop_assert!(t.replacements(index).all(|c| c.id() != p.id()));
                                }
                                None => prop_assert_eq!(t.bucket(index).count(), size - 1),
                            }
                        }
                    }
                }
                check_invariants(&t, k, cache)?;
            }
            // `closest` agrees with a brute-force sort of the table.
            let target = Key::from_array(target);
            let mut all: Vec<(Distance, NodeId)> =
                t.iter().map(|c| (target.distance(&c.key()), c.id())).collect();
            all.sort();
            for count in [0, 1, k, 3 * k, all.len() + 1] {
                let closest = t.closest(&target, count);
                let want: Vec<NodeId> = all.iter().take(count).map(|(_, id)| *id).collect();
                prop_assert_eq!(ids(closest.iter()), want);
            }
        }

        #[test]
        fn closest_finds_the_true_closest_inserted_nodes(
            local in any::<[u8; 32]>(),
            nodes in prop::collection::btree_set(any::<[u8; 32]>(), 0..120),
            target in any::<[u8; 32]>(),
            count in 0usize..40,
        ) {
            // With k large enough that no bucket overflows, every inserted
            // node is in the table and `closest` must find the true closest.
            let now = Instant::now();
            let config = Config::with_k(NonZeroUsize::new(128).unwrap());
            let mut t = RoutingTable::new(NodeId::from_array(local), config, now);
            for bytes in &nodes {
                t.insert(contact(*bytes), now);
            }
            let target = Key::from_array(target);
            let mut want: Vec<[u8; 32]> =
                nodes.iter().copied().filter(|b| *b != local).collect();
            want.sort_by_key(|b| target.distance(&Key::from_array(*b)));
            want.truncate(count);
            let got: Vec<[u8; 32]> = t
                .closest(&target, count)
                .iter()
                .map(|c| *c.id().as_bytes())
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
