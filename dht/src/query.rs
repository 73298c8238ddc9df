//! The iterative lookup: a sans-IO state machine for FIND_NODE and
//! FIND_VALUE.
//!
//! A [`Query`] starts from seed contacts (the closest ones in the local
//! routing table) and knows nothing about sockets or clocks. The driver loops
//! on [`Query::next_action`]:
//!
//! - [`Action::Send`]: send the request to that peer, then call
//!   [`Query::next_action`] again.
//! - [`Action::Wait`]: nothing to send now; call again when a reply arrives
//!   or at `until`, whichever comes first.
//! - [`Action::Finished`]: the lookup is over; requests still out may be
//!   abandoned.
//!
//! Replies go in through [`Query::on_response`] and errors through
//! [`Query::on_failure`]. A request not answered within
//! [`Config::request_timeout`] counts as failed; its reply is still taken if
//! it comes in later, but it no longer holds a slot.
//!
//! # The algorithm
//!
//! Peers are kept sorted by XOR distance to the target. At most
//! [`Config::alpha`] requests are in flight, always to the closest peers not
//! yet asked among the `k` closest peers not known to have failed. A round
//! that brings no closer peer does not end the lookup by itself: it goes on
//! with the not-yet-asked peers among the `k` closest (the last step of the
//! Kademlia paper), still `alpha` at a time. The lookup ends when
//!
//! - the `k` closest peers not known to have failed have all answered, or
//! - no peer is left to ask and none is in flight (fewer than `k` answered), or
//! - for FIND_VALUE, a value came in and the requests in flight at that time
//!   have finished (answered, failed or timed out): no new request is sent
//!   once a value is known, and the value with the highest sequence among
//!   the replies wins, or
//! - [`Config::max_duration`] has passed since the start.
//!
//! Everything is bounded: `alpha` requests in flight, at most `k` contacts
//! taken from each reply, and at most [`Config::max_peers`] live candidates
//! (the farthest not-yet-asked are dropped first, never one of the `k`
//! closest).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use common::id::NodeId;
use tracing::{debug, trace};

use crate::contact::Contact;
use crate::distance::{Distance, Key};
use crate::kbucket::DEFAULT_K;
use crate::record::RecordKey;

/// Kademlia's default parallelism.
pub const DEFAULT_ALPHA: NonZeroUsize = match NonZeroUsize::new(3) {
    Some(alpha) => alpha,
    // Evaluated at compile time: a zero here would not build.
    None => panic!("alpha must not be zero"),
};

/// Lookup settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The most requests in flight at once: Kademlia's `α`.
    pub alpha: NonZeroUsize,
    /// How many closest peers the lookup looks for: Kademlia's `k`.
    pub k: NonZeroUsize,
    /// How long a request may go unanswered before it counts as failed
    /// (at most a day).
    pub request_timeout: Duration,
    /// How long the whole lookup may take; it then ends with what it has
    /// (at most a day).
    pub max_duration: Duration,
    /// The most candidates kept that are not known to have failed (never
    /// fewer than `k`).
    pub max_peers: usize,
}

impl Config {
    /// The defaults with another `k`.
    pub fn with_k(k: NonZeroUsize) -> Self {
        Self {
            k,
            max_peers: k.get().saturating_mul(8),
            ..Self::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            alpha: DEFAULT_ALPHA,
            k: DEFAULT_K,
            request_timeout: Duration::from_secs(10),
            max_duration: Duration::from_secs(60),
            max_peers: DEFAULT_K.get() * 8,
        }
    }
}

/// A value a FIND_VALUE lookup can return: the reply with the highest
/// sequence number wins.
pub trait Versioned {
    /// The sequence number; higher is newer.
    fn sequence(&self) -> u64;
}

/// What a lookup asks each peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// FIND_NODE: the peers closest to `target`.
    FindNode {
        /// The position looked up.
        target: Key,
    },
    /// FIND_VALUE: the record of `key`, or the peers closest to it.
    FindValue {
        /// The record looked up.
        key: RecordKey,
    },
}

/// What the driver should do next.
#[derive(Debug, Clone)]
pub enum Action<V> {
    /// The lookup is over.
    Finished(QueryResult<V>),
    /// Send `request` to `peer` and report the outcome.
    Send {
        /// Whom to ask.
        peer: Contact,
        /// What to ask.
        request: Request,
    },
    /// Nothing to send; call [`Query::next_action`] again when a reply comes
    /// in, or at `until` at the latest.
    Wait {
        /// When the earliest request in flight times out.
        until: Instant,
    },
}

/// The outcome of a lookup.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QueryResult<V> {
    /// Up to `k` peers that answered, closest to the target first.
    pub closest: Vec<Contact>,
    /// FIND_VALUE: the value with the highest sequence among the replies.
    pub value: Option<V>,
    /// FIND_VALUE: the peers that returned [`QueryResult::value`] (or one
    /// with the same sequence).
    pub holders: Vec<Contact>,
    /// FIND_VALUE: the peers that returned a value with a lower sequence,
    /// which the driver may bring up to date.
    pub outdated: Vec<Contact>,
    /// Counters.
    pub stats: QueryStats,
}

/// Counters of one lookup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueryStats {
    /// Requests sent.
    pub requests: usize,
    /// Replies taken (late ones included).
    pub successes: usize,
    /// Requests reported failed.
    pub failures: usize,
    /// Requests that timed out (a late reply may still follow).
    pub timeouts: usize,
    /// Whether the lookup ended because [`Config::max_duration`] passed.
    pub gave_up: bool,
}

/// One iterative lookup.
#[derive(Debug)]
pub struct Query<V> {
    request: Request,
    target: Key,
    local: NodeId,
    config: Config,
    /// Keyed by distance to the target: distinct IDs have distinct distances.
    peers: BTreeMap<Distance, Peer>,
    in_flight: usize,
    deadline: Instant,
    best: Option<V>,
    holders: Vec<Contact>,
    outdated: Vec<Contact>,
    stats: QueryStats,
    result: Option<QueryResult<V>>,
}

impl<V: Versioned + Clone> Query<V> {
    /// A FIND_NODE lookup of `target`, started at `now` from `seeds`.
    /// `local` is never asked.
    pub fn find_node(
        target: Key,
        local: NodeId,
        seeds: impl IntoIterator<Item = Contact>,
        config: Config,
        now: Instant,
    ) -> Self {
        Self::new(
            Request::FindNode { target },
            target,
            local,
            seeds,
            config,
            now,
        )
    }

    /// A FIND_VALUE lookup of the record `key`, started at `now` from
    /// `seeds`. `local` is never asked. The driver validates every record
    /// that comes in (see [`crate::record::Record::verify_reply`]) and passes
    /// only valid ones to [`Query::on_response`].
    pub fn find_value(
        key: RecordKey,
        local: NodeId,
        seeds: impl IntoIterator<Item = Contact>,
        config: Config,
        now: Instant,
    ) -> Self {
        let target = key.position();
        Self::new(
            Request::FindValue { key },
            target,
            local,
            seeds,
            config,
            now,
        )
    }

    fn new(
        request: Request,
        target: Key,
        local: NodeId,
        seeds: impl IntoIterator<Item = Contact>,
        config: Config,
        now: Instant,
    ) -> Self {
        let mut config = config;
        // Capped so that adding them to an `Instant` cannot overflow.
        config.request_timeout = config.request_timeout.min(MAX_DURATION);
        config.max_duration = config.max_duration.min(MAX_DURATION);
        let mut query = Self {
            request,
            target,
            local,
            deadline: now + config.max_duration,
            config,
            peers: BTreeMap::new(),
            in_flight: 0,
            best: None,
            holders: Vec::new(),
            outdated: Vec::new(),
            stats: QueryStats::default(),
            result: None,
        };
        for seed in seeds {
            query.add_peer(seed);
        }
        query.prune();
        query
    }

    /// What each peer is asked.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The position looked up.
    pub fn target(&self) -> Key {
        self.target
    }

    /// How many requests hold a slot (sent, not answered, not timed out).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether [`Query::next_action`] has returned [`Action::Finished`].
    pub fn is_finished(&self) -> bool {
        self.result.is_some()
    }

    /// The next thing to do. Once this returns [`Action::Finished`], it
    /// keeps returning the same result.
    pub fn next_action(&mut self, now: Instant) -> Action<V> {
        if let Some(result) = &self.result {
            return Action::Finished(result.clone());
        }
        self.expire(now);
        if now >= self.deadline {
            return self.finish(true);
        }
        if self.is_done() {
            return self.finish(false);
        }
        if self.in_flight < self.config.alpha.get()
            && self.best.is_none()
            && let Some(distance) = self.next_candidate()
            && let Some(peer) = self.peers.get_mut(&distance)
        {
            peer.state = PeerState::InFlight {
                deadline: now + self.config.request_timeout,
            };
            self.in_flight += 1;
            self.stats.requests += 1;
            trace!(peer = %peer.contact.id().fmt_short(), target = ?self.target, "lookup request");
            return Action::Send {
                peer: peer.contact.clone(),
                request: self.request.clone(),
            };
        }
        let earliest = self
            .peers
            .values()
            .filter_map(|peer| match peer.state {
                PeerState::InFlight { deadline } => Some(deadline),
                _ => None,
            })
            .min();
        match earliest {
            Some(until) => Action::Wait {
                until: until.min(self.deadline),
            },
            // Nothing in flight and nothing to send: the lookup is over.
            None => self.finish(false),
        }
    }

    /// Reports a reply from `peer`: the contacts it knows closer to the
    /// target and, for FIND_VALUE, the valid value it holds. Returns `false`
    /// (and changes nothing) if no request to `peer` is outstanding, so
    /// unsolicited or repeated replies are ignored.
    pub fn on_response(
        &mut self,
        peer: &NodeId,
        closer: impl IntoIterator<Item = Contact>,
        value: Option<V>,
        now: Instant,
    ) -> bool {
        if self.result.is_some() {
            return false;
        }
        self.expire(now);
        let distance = self.target.distance(&Key::from(peer));
        let Some(entry) = self.peers.get_mut(&distance) else {
            return false;
        };
        match entry.state {
            PeerState::InFlight { .. } => self.in_flight -= 1,
            PeerState::TimedOut => {}
            PeerState::Failed | PeerState::NotContacted | PeerState::Succeeded => return false,
        }
        entry.state = PeerState::Succeeded;
        let contact = entry.contact.clone();
        self.stats.successes += 1;
        if let (Request::FindValue { .. }, Some(value)) = (&self.request, value) {
            self.offer_value(contact, value);
        }
        for contact in closer.into_iter().take(self.config.k.get()) {
            self.add_peer(contact);
        }
        self.prune();
        true
    }

    /// Reports that the request to `peer` failed. Returns `false` if no
    /// request to `peer` is outstanding.
    pub fn on_failure(&mut self, peer: &NodeId, now: Instant) -> bool {
        if self.result.is_some() {
            return false;
        }
        self.expire(now);
        let distance = self.target.distance(&Key::from(peer));
        let Some(entry) = self.peers.get_mut(&distance) else {
            return false;
        };
        match entry.state {
            PeerState::InFlight { .. } => self.in_flight -= 1,
            PeerState::TimedOut => {}
            PeerState::Failed | PeerState::NotContacted | PeerState::Succeeded => return false,
        }
        entry.state = PeerState::Failed;
        self.stats.failures += 1;
        true
    }

    fn offer_value(&mut self, from: Contact, value: V) {
        let best = self.best.as_ref().map(V::sequence);
        match best {
            Some(best) if value.sequence() < best => self.outdated.push(from),
            Some(best) if value.sequence() == best => self.holders.push(from),
            _ => {
                self.outdated.append(&mut self.holders);
                self.holders.push(from);
                self.best = Some(value);
            }
        }
    }

    fn add_peer(&mut self, contact: Contact) {
        if contact.id() == self.local {
            return;
        }
        let distance = self.target.distance(&contact.key());
        self.peers.entry(distance).or_insert(Peer {
            contact,
            state: PeerState::NotContacted,
        });
    }

    /// Drops the farthest not-yet-asked candidates beyond the `k` closest
    /// live ones while more than `max_peers` are live.
    fn prune(&mut self) {
        let k = self.config.k.get();
        let max = self.config.max_peers.max(k);
        let live = self.peers.values().filter(|p| p.state.is_live()).count();
        if live <= max {
            return;
        }
        let mut seen = 0;
        let mut removable = Vec::new();
        for (distance, peer) in &self.peers {
            if peer.state.is_live() {
                seen += 1;
                if seen > k && peer.state == PeerState::NotContacted {
                    removable.push(*distance);
                }
            }
        }
        for distance in removable.iter().rev().take(live - max) {
            self.peers.remove(distance);
        }
    }

    fn expire(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            if let PeerState::InFlight { deadline } = peer.state
                && deadline <= now
            {
                trace!(peer = %peer.contact.id().fmt_short(), "lookup request timed out");
                peer.state = PeerState::TimedOut;
                self.in_flight -= 1;
                self.stats.timeouts += 1;
            }
        }
    }

    /// The closest peer not yet asked among the `k` closest live ones.
    fn next_candidate(&self) -> Option<Distance> {
        let k = self.config.k.get();
        let mut live = 0;
        for (distance, peer) in &self.peers {
            match peer.state {
                PeerState::Failed | PeerState::TimedOut => {}
                PeerState::NotContacted => return Some(*distance),
                PeerState::InFlight { .. } | PeerState::Succeeded => {
                    live += 1;
                    if live >= k {
                        return None;
                    }
                }
            }
        }
        None
    }

    fn is_done(&self) -> bool {
        if self.best.is_some() {
            return self.in_flight == 0;
        }
        let k = self.config.k.get();
        let mut answered = 0;
        for peer in self.peers.values() {
            match peer.state {
                PeerState::Succeeded => {
                    answered += 1;
                    if answered >= k {
                        return true;
                    }
                }
                PeerState::NotContacted | PeerState::InFlight { .. } => return false,
                PeerState::Failed | PeerState::TimedOut => {}
            }
        }
        true
    }

    fn finish(&mut self, gave_up: bool) -> Action<V> {
        self.stats.gave_up = gave_up;
        let result = QueryResult {
            closest: self
                .peers
                .values()
                .filter(|peer| peer.state == PeerState::Succeeded)
                .take(self.config.k.get())
                .map(|peer| peer.contact.clone())
                .collect(),
            value: self.best.clone(),
            holders: self.holders.clone(),
            outdated: self.outdated.clone(),
            stats: self.stats,
        };
        debug!(
            target_key = ?self.target,
            found = result.closest.len(),
            value = result.value.is_some(),
            requests = self.stats.requests,
            gave_up,
            "lookup finished"
        );
        self.result = Some(result.clone());
        Action::Finished(result)
    }
}

/// The cap on [`Config::request_timeout`] and [`Config::max_duration`].
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug)]
struct Peer {
    contact: Contact,
    state: PeerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerState {
    /// The request failed.
    Failed,
    /// A request is out and holds a slot until `deadline`.
    InFlight { deadline: Instant },
    /// Not asked yet.
    NotContacted,
    /// Answered.
    Succeeded,
    /// The request timed out; a late reply is still taken.
    TimedOut,
}

impl PeerState {
    fn is_live(self) -> bool {
        !matches!(self, Self::Failed | Self::TimedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Value(u64, &'static str);

    impl Versioned for Value {
        fn sequence(&self) -> u64 {
            self.0
        }
    }

    /// The node at distance `d` from the zero key.
    fn at(d: u16) -> Contact {
        let mut bytes = [0u8; 32];
        bytes[30..].copy_from_slice(&d.to_be_bytes());
        Contact::new(NodeId::from_array(bytes), Vec::new()).unwrap()
    }

    fn local() -> NodeId {
        NodeId::from_array([0xff; 32])
    }

    fn config(k: usize, alpha: usize) -> Config {
        let mut config = Config::with_k(NonZeroUsize::new(k).unwrap());
        config.alpha = NonZeroUsize::new(alpha).unwrap();
        config
    }

    fn find_node(seeds: &[u16], config: Config, now: Instant) -> Query<Value> {
        Query::find_node(
            Key::from_array([0; 32]),
            local(),
            seeds.iter().map(|d| at(*d)),
            config,
            now,
        )
    }

    /// Drains `Send` actions, returning the distances asked and the final action.
    fn sends(query: &mut Query<Value>, now: Instant) -> (Vec<u16>, Action<Value>) {
        let mut asked = Vec::new();
        loop {
            match query.next_action(now) {
                Action::Send { peer, .. } => asked.push(offset(&peer)),
                other => return (asked, other),
            }
        }
    }

    fn finished(action: Action<Value>) -> QueryResult<Value> {
        match action {
            Action::Finished(result) => result,
            other => panic!("expected Finished, got {other:?}"),
        }
    }

    fn distances(contacts: &[Contact]) -> Vec<u16> {
        contacts.iter().map(offset).collect()
    }

    /// The distance of a contact made by [`at`] from the zero key.
    fn offset(contact: &Contact) -> u16 {
        let bytes = *contact.id().as_bytes();
        u16::from_be_bytes([bytes[30], bytes[31]])
    }

    #[test]
    fn a_lookup_without_seeds_finishes_at_once() {
        let now = Instant::now();
        let mut query = find_node(&[], Config::default(), now);
        let result = finished(query.next_action(now));
        assert!(result.closest.is_empty());
        assert_eq!(result.stats.requests, 0);
        assert!(query.is_finished());
    }

    #[test]
    fn at_most_alpha_requests_go_out_closest_first() {
        let now = Instant::now();
        let mut query = find_node(&[9, 3, 7, 1, 5, 8], config(20, 3), now);
        let (asked, action) = sends(&mut query, now);
        assert_eq!(asked, [1, 3, 5]);
        assert_eq!(query.in_flight(), 3);
        let timeout = Config::default().request_timeout;
        assert!(matches!(action, Action::Wait { until } if until == now + timeout));
        // A reply frees one slot, which goes to the next closest.
        assert!(query.on_response(&at(1).id(), [], None, now));
        let (asked, _) = sends(&mut query, now);
        assert_eq!(asked, [7]);
        assert_eq!(query.in_flight(), 3);
        assert_eq!(
            query.request(),
            &Request::FindNode {
                target: query.target()
            }
        );
    }

    #[test]
    fn the_lookup_ends_when_the_k_closest_have_answered() {
        let now = Instant::now();
        let mut query = find_node(&[1, 2, 3, 4, 5, 6], config(3, 3), now);
        let (asked, _) = sends(&mut query, now);
        assert_eq!(asked, [1, 2, 3]);
        for d in [3, 1, 2] {
            query.on_response(&at(d).id(), [], None, now);
        }
        let result = finished(query.next_action(now));
        assert_eq!(distances(&result.closest), [1, 2, 3]);
        assert_eq!(result.stats.requests, 3);
        assert_eq!(result.stats.successes, 3);
        // Finished is sticky, and later replies are ignored.
        assert!(matches!(query.next_action(now), Action::Finished(_)));
        assert!(!query.on_response(&at(4).id(), [], None, now));
    }

    #[test]
    fn closer_contacts_are_followed_and_the_local_node_is_skipped() {
        let now = Instant::now();
        let local_contact = Contact::new(local(), Vec::new()).unwrap();
        let mut query: Query<Value> = Query::find_node(
            Key::from_array([0; 32]),
            local(),
            [at(100), local_contact.clone()],
            config(2, 1),
            now,
        );
        assert_eq!(sends(&mut query, now).0, [100]);
        query.on_response(&at(100).id(), [at(50), local_contact, at(60)], None, now);
        assert_eq!(sends(&mut query, now).0, [50]);
        query.on_response(&at(50).id(), [at(10), at(100)], None, now);
        assert_eq!(sends(&mut query, now).0, [10]);
        query.on_response(&at(10).id(), [], None, now);
        // 10 and 50 are the two closest and both answered.
        let result = finished(query.next_action(now));
        assert_eq!(distances(&result.closest), [10, 50]);
        assert_eq!(result.stats.requests, 3);
    }

    #[test]
    fn a_stalled_round_still_asks_the_rest_of_the_k_closest() {
        let now = Instant::now();
        let mut query = find_node(&[1, 2, 3, 4, 5], config(5, 2), now);
        assert_eq!(sends(&mut query, now).0, [1, 2]);
        // Replies bring nothing closer; the other three are still asked.
        query.on_response(&at(1).id(), [at(9)], None, now);
        query.on_response(&at(2).id(), [], None, now);
        assert_eq!(sends(&mut query, now).0, [3, 4]);
        query.on_response(&at(3).id(), [], None, now);
        query.on_response(&at(4).id(), [], None, now);
        assert_eq!(sends(&mut query, now).0, [5]);
        query.on_response(&at(5).id(), [], None, now);
        let result = finished(query.next_action(now));
        assert_eq!(distances(&result.closest), [1, 2, 3, 4, 5]);
        assert_eq!(result.stats.requests, 5);
    }

    #[test]
    fn failed_peers_are_replaced_by_the_next_closest() {
        let now = Instant::now();
        let mut query = find_node(&[1, 2, 3, 4], config(2, 2), now);
        assert_eq!(sends(&mut query, now).0, [1, 2]);
        assert!(query.on_failure(&at(1).id(), now));
        assert!(!query.on_failure(&at(1).id(), now));
        assert_eq!(sends(&mut query, now).0, [3]);
        query.on_response(&at(2).id(), [], None, now);
        query.on_response(&at(3).id(), [], None, now);
        let result = finished(query.next_action(now));
        assert_eq!(distances(&result.closest), [2, 3]);
        assert_eq!(result.stats.failures, 1);
    }

    #[test]
    fn fewer_than_k_reachable_peers_end_the_lookup_when_all_are_done() {
        let now = Instant::now();
        let mut query = find_node(&[1, 2, 3], config(20, 3), now);
        assert_eq!(sends(&mut query, now).0, [1, 2, 3]);
        query.on_failure(&at(1).id(), now);
        query.on_response(&at(2).id(), [], None, now);
        assert!(matches!(query.next_action(now), Action::Wait { .. }));
        query.on_response(&at(3).id(), [], None, now);
        let result = finished(query.next_action(now));
        assert_eq!(distances(&result.closest), [2, 3]);
    }

    #[test]
    fn timeouts_free_slots_and_late_replies_still_count() {
        let start = Instant::now();
        let mut query = find_node(&[1, 2, 3, 4, 5, 6], config(3, 2), start);
        assert_eq!(sends(&mut query, start).0, [1, 2]);
        let (_, action) = sends(&mut query, start);
        let Action::Wait { until } = action else {
            panic!("expected Wait, got {action:?}");
        };
        // Just before the deadline nothing changes; at it both time out.
        assert!(
            sends(&mut query, until - Duration::from_millis(1))
                .0
                .is_empty()
        );
        assert_eq!(sends(&mut query, until).0, [3, 4]);
        assert_eq!(query.in_flight(), 2);
        // 1 answers late: it counts, but frees no slot.
        assert!(query.on_response(&at(1).id(), [], None, until));
        assert_eq!(query.in_flight(), 2);
        query.on_response(&at(3).id(), [], None, until);
        query.on_response(&at(4).id(), [], None, until);
        let result = finished(query.next_action(until));
        assert_eq!(distances(&result.closest), [1, 3, 4]);
        assert_eq!(result.stats.timeouts, 2);
        assert_eq!(result.stats.successes, 3);
    }

    #[test]
    fn unsolicited_and_repeated_replies_are_ignored() {
        let now = Instant::now();
        let mut query = find_node(&[1, 2, 3, 4], config(20, 1), now);
        assert_eq!(sends(&mut query, now).0, [1]);
        // 2 was not asked; 77 is unknown.
        assert!(!query.on_response(&at(2).id(), [at(0x10)], None, now));
        assert!(!query.on_response(&at(77).id(), [], None, now));
        assert!(!query.on_failure(&at(2).id(), now));
        assert!(query.on_response(&at(1).id(), [], None, now));
        assert!(!query.on_response(&at(1).id(), [], None, now));
        assert!(!query.on_failure(&at(1).id(), now));
        // The contact offered by the unsolicited reply was not taken.
        assert_eq!(sends(&mut query, now).0, [2]);
    }

    #[test]
    fn the_lookup_gives_up_after_its_max_duration() {
        let start = Instant::now();
        let mut config = config(20, 1);
        config.request_timeout = Duration::from_secs(100);
        config.max_duration = Duration::from_secs(30);
        let mut query = find_node(&[1, 2], config, start);
        assert_eq!(sends(&mut query, start).0, [1]);
        let Action::Wait { until } = query.next_action(start) else {
            panic!("expected Wait");
        };
        assert_eq!(until, start + Duration::from_secs(30));
        let result = finished(query.next_action(until));
        assert!(result.stats.gave_up);
        assert!(result.closest.is_empty());
    }

    #[test]
    fn huge_durations_are_capped_instead_of_overflowing() {
        let now = Instant::now();
        let mut config = config(20, 1);
        config.request_timeout = Duration::MAX;
        config.max_duration = Duration::MAX;
        let mut query = find_node(&[1], config, now);
        assert_eq!(sends(&mut query, now).0, [1]);
        let Action::Wait { until } = query.next_action(now) else {
            panic!("expected Wait");
        };
        assert_eq!(until, now + MAX_DURATION);
    }

    #[test]
    fn candidates_are_bounded_without_losing_the_closest() {
        let now = Instant::now();
        let mut config = config(3, 1);
        config.max_peers = 5;
        let mut query = find_node(&[1000], config, now);
        assert_eq!(sends(&mut query, now).0, [1000]);
        // Each reply offers at most k contacts: 3 of these 10 are taken.
        query.on_response(&at(1000).id(), (900..910).map(at), None, now);
        assert_eq!(query.peers.len(), 4);
        assert_eq!(sends(&mut query, now).0, [900]);
        query.on_response(&at(900).id(), [at(5), at(6), at(7)], None, now);
        // Live: 5 6 7 900 901 902 1000 -> pruned to 5, keeping the closest.
        let live: Vec<u16> = distances(
            &query
                .peers
                .values()
                .filter(|p| p.state.is_live())
                .map(|p| p.contact.clone())
                .collect::<Vec<_>>(),
        );
        assert_eq!(live, [5, 6, 7, 900, 1000]);
        assert_eq!(sends(&mut query, now).0, [5]);
    }

    fn value_key() -> RecordKey {
        "suppliers/alice@id-a".parse().unwrap()
    }

    /// The node at distance `d` from the position of [`value_key`].
    fn near_value(d: u16) -> Contact {
        let offset = Key::from(at(d).id());
        let id = NodeId::from_array(*value_key().position().distance(&offset).as_bytes());
        Contact::new(id, Vec::new()).unwrap()
    }

    fn find_value(seeds: &[u16], config: Config, now: Instant) -> Query<Value> {
        Query::find_value(
            value_key(),
            local(),
            seeds.iter().map(|d| near_value(*d)),
            config,
            now,
        )
    }

    /// Like [`sends`], for a lookup seeded with [`near_value`] contacts.
    fn value_sends(query: &mut Query<Value>, now: Instant) -> (Vec<u16>, Action<Value>) {
        let mut asked = Vec::new();
        loop {
            match query.next_action(now) {
                Action::Send { peer, .. } => asked.push(value_offset(&peer)),
                other => return (asked, other),
            }
        }
    }

    fn value_offset(contact: &Contact) -> u16 {
        let d = value_key().position().distance(&contact.key());
        u16::from_be_bytes([d.as_bytes()[30], d.as_bytes()[31]])
    }

    fn value_distances(contacts: &[Contact]) -> Vec<u16> {
        contacts.iter().map(value_offset).collect()
    }

    #[test]
    fn find_value_stops_early_and_keeps_the_highest_sequence() {
        let now = Instant::now();
        let mut query = find_value(&[1, 2, 3, 4, 5, 6], config(20, 3), now);
        assert_eq!(value_sends(&mut query, now).0, [1, 2, 3]);
        assert!(matches!(
            query.request(),
            Request::FindValue { key } if key.to_string() == "suppliers/alice@id-a"
        ));
        assert_eq!(query.target(), Key::for_record("suppliers/alice@id-a"));
        assert!(query.on_response(&near_value(2).id(), [], Some(Value(5, "old")), now));
        // A value is known: nothing new goes out, the two in flight are awaited.
        assert!(
            matches!(value_sends(&mut query, now), (asked, Action::Wait { .. }) if asked.is_empty())
        );
        query.on_response(
            &near_value(1).id(),
            [near_value(7)],
            Some(Value(7, "new")),
            now,
        );
        query.on_response(&near_value(3).id(), [], Some(Value(7, "same")), now);
        let result = finished(query.next_action(now));
        assert_eq!(result.value, Some(Value(7, "new")));
        assert_eq!(value_distances(&result.holders), [1, 3]);
        assert_eq!(value_distances(&result.outdated), [2]);
        assert_eq!(result.stats.requests, 3);
    }

    #[test]
    fn find_value_waits_out_slow_peers_then_returns_the_value() {
        let now = Instant::now();
        let mut query = find_value(&[1, 2, 3], config(20, 3), now);
        assert_eq!(value_sends(&mut query, now).0, [1, 2, 3]);
        query.on_response(&near_value(3).id(), [], Some(Value(4, "v")), now);
        query.on_response(&near_value(1).id(), [], None, now);
        let Action::Wait { until } = query.next_action(now) else {
            panic!("expected Wait");
        };
        let result = finished(query.next_action(until));
        assert_eq!(result.value, Some(Value(4, "v")));
        assert!(result.outdated.is_empty());
        assert_eq!(result.stats.timeouts, 1);
    }

    #[test]
    fn find_value_without_a_value_behaves_like_find_node() {
        let now = Instant::now();
        let mut query = find_value(&[1, 2], config(20, 3), now);
        value_sends(&mut query, now);
        query.on_response(&near_value(1).id(), [], None, now);
        query.on_response(&near_value(2).id(), [], None, now);
        let result = finished(query.next_action(now));
        assert_eq!(result.value, None);
        assert_eq!(value_distances(&result.closest), [1, 2]);
    }

    #[test]
    fn find_node_ignores_values() {
        let now = Instant::now();
        let mut query = find_node(&[1, 2], config(20, 3), now);
        sends(&mut query, now);
        query.on_response(&at(1).id(), [], Some(Value(1, "x")), now);
        assert!(matches!(query.next_action(now), Action::Wait { .. }));
        query.on_response(&at(2).id(), [], None, now);
        let result = finished(query.next_action(now));
        assert_eq!(result.value, None);
        assert!(result.holders.is_empty());
    }
}
