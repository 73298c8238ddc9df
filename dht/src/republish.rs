//! When to republish the records a node holds: a sans-IO schedule.
//!
//! A server node sends every record it holds to the `k` nodes closest to
//! the record's key once per interval, so that a record outlives its
//! publisher (until it expires) and reaches the nodes that joined near its
//! key. Kademlia's optimisation keeps this cheap: a node that receives a
//! STORE for a key assumes that the sender sent it to the other closest
//! nodes as well, and pushes its own republish of that key one interval
//! ahead. In a steady network only the holder whose timer fires first
//! republishes a key, and its STOREs restart the timers of the others.
//! The driver adds a random jitter to every deadline so that holders drift
//! apart instead of firing together.
//!
//! The schedule reads no clock: every method takes `now`, and the jitter is
//! an argument.
//!
//! # Invariants
//!
//! - A key is scheduled at most once.
//! - Every deadline is at most [`MAX_DELAY`] after the `now` it was set at.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::record::RecordKey;

/// The longest delay the schedule sets: records expire within 48 hours, so
/// a later republish would be pointless.
pub const MAX_DELAY: Duration = Duration::from_secs(48 * 60 * 60);

/// The republish deadlines of the records a node holds.
#[derive(Debug, Clone)]
pub struct Schedule {
    interval: Duration,
    by_key: BTreeMap<RecordKey, Instant>,
    by_time: BTreeSet<(Instant, RecordKey)>,
}

impl Schedule {
    /// An empty schedule that republishes every `interval` (capped at
    /// [`MAX_DELAY`]).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval: interval.min(MAX_DELAY),
            by_key: BTreeMap::new(),
            by_time: BTreeSet::new(),
        }
    }

    /// The republish interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How many keys are scheduled.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no key is scheduled.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Whether `key` is scheduled.
    pub fn contains(&self, key: &RecordKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// When `key` is next due, if it is scheduled.
    pub fn deadline(&self, key: &RecordKey) -> Option<Instant> {
        self.by_key.get(key).copied()
    }

    /// The record of `key` was just stored, by a peer's STORE or locally:
    /// its next republish is one interval plus `jitter` from `now`.
    pub fn on_stored(&mut self, key: RecordKey, now: Instant, jitter: Duration) {
        let at = later(now, self.interval.saturating_add(jitter));
        self.set(key, at);
    }

    /// Schedules a held record that is not scheduled yet (one found in a
    /// persistent store at start, say) at `now + delay`. A key that is
    /// already scheduled keeps its deadline.
    pub fn adopt(&mut self, key: RecordKey, now: Instant, delay: Duration) {
        if !self.contains(&key) {
            self.set(key, later(now, delay));
        }
    }

    /// Forgets `key` (its record expired or was removed).
    pub fn remove(&mut self, key: &RecordKey) {
        if let Some(at) = self.by_key.remove(key) {
            self.by_time.remove(&(at, key.clone()));
        }
    }

    /// Keeps only the keys `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&RecordKey) -> bool) {
        let dropped: Vec<RecordKey> = self.by_key.keys().filter(|k| !keep(k)).cloned().collect();
        for key in &dropped {
            self.remove(key);
        }
    }

    /// Takes up to `max` keys due at `now`, earliest first, and schedules
    /// each again one interval plus `jitter()` from `now`.
    pub fn take_due(
        &mut self,
        now: Instant,
        max: usize,
        mut jitter: impl FnMut() -> Duration,
    ) -> Vec<RecordKey> {
        let due: Vec<RecordKey> = self
            .by_time
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(max)
            .map(|(_, key)| key.clone())
            .collect();
        for key in &due {
            self.on_stored(key.clone(), now, jitter());
        }
        due
    }

    /// The earliest deadline.
    pub fn next_due(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    fn set(&mut self, key: RecordKey, at: Instant) {
        self.remove(&key);
        self.by_time.insert((at, key.clone()));
        self.by_key.insert(key, at);
    }
}

/// `now + delay`, with the delay capped at [`MAX_DELAY`] so the sum cannot
/// overflow.
fn later(now: Instant, delay: Duration) -> Instant {
    let delay = delay.min(MAX_DELAY);
    now.checked_add(delay).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key(user: &str) -> RecordKey {
        format!("suppliers/{user}@id-a").parse().unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_stored_record_is_due_one_interval_later() {
        let start = Instant::now();
        let mut schedule = Schedule::new(HOUR);
        schedule.on_stored(key("alice"), start, Duration::from_secs(5));
        assert_eq!(schedule.len(), 1);
        assert_eq!(
            schedule.next_due(),
            Some(start + HOUR + Duration::from_secs(5))
        );
        assert!(
            schedule
                .take_due(start + HOUR, 10, || Duration::ZERO)
                .is_empty()
        );
        let due = schedule.take_due(start + HOUR + Duration::from_secs(5), 10, || Duration::ZERO);
        assert_eq!(due, vec![key("alice")]);
        // Taken keys are rescheduled, not dropped.
        assert_eq!(
            schedule.deadline(&key("alice")),
            Some(start + 2 * HOUR + Duration::from_secs(5))
        );
    }

    #[test]
    fn a_store_from_a_peer_pushes_the_republish_back() {
        let start = Instant::now();
        let mut schedule = Schedule::new(HOUR);
        schedule.on_stored(key("alice"), start, Duration::ZERO);
        // Another holder republished half an hour later: our turn moves.
        let later = start + HOUR / 2;
        schedule.on_stored(key("alice"), later, Duration::ZERO);
        assert!(
            schedule
                .take_due(start + HOUR, 10, || Duration::ZERO)
                .is_empty()
        );
        assert_eq!(schedule.next_due(), Some(later + HOUR));
        assert_eq!(schedule.len(), 1);
    }

    #[test]
    fn due_keys_come_earliest_first_and_at_most_max() {
        let start = Instant::now();
        let mut schedule = Schedule::new(HOUR);
        for (i, user) in ["carol", "alice", "bob"].iter().enumerate() {
            schedule.on_stored(key(user), start, Duration::from_secs(i as u64));
        }
        let due = schedule.take_due(start + 2 * HOUR, 2, || Duration::ZERO);
        assert_eq!(due, vec![key("carol"), key("alice")]);
        let due = schedule.take_due(start + 2 * HOUR, 2, || Duration::ZERO);
        assert_eq!(due, vec![key("bob")]);
    }

    #[test]
    fn adopt_keeps_existing_deadlines_and_remove_forgets() {
        let start = Instant::now();
        let mut schedule = Schedule::new(HOUR);
        schedule.on_stored(key("alice"), start, Duration::ZERO);
        schedule.adopt(key("alice"), start, Duration::ZERO);
        schedule.adopt(key("bob"), start, Duration::from_secs(1));
        assert_eq!(schedule.deadline(&key("alice")), Some(start + HOUR));
        assert_eq!(
            schedule.deadline(&key("bob")),
            Some(start + Duration::from_secs(1))
        );
        schedule.remove(&key("alice"));
        schedule.retain(|k| *k != key("bob"));
        assert!(schedule.is_empty());
        assert_eq!(schedule.next_due(), None);
    }

    #[test]
    fn huge_intervals_do_not_overflow() {
        let start = Instant::now();
        let mut schedule = Schedule::new(Duration::MAX);
        assert_eq!(schedule.interval(), MAX_DELAY);
        schedule.on_stored(key("alice"), start, Duration::MAX);
        assert_eq!(schedule.next_due(), Some(start + MAX_DELAY));
    }

    proptest! {
        #[test]
        fn every_key_is_scheduled_once(
            ops in proptest::collection::vec((0usize..6, 0u64..7200, any::<bool>()), 0..60)
        ) {
            let users = ["alice", "bob", "carol", "dave", "erin", "frank"];
            let start = Instant::now();
            let mut schedule = Schedule::new(HOUR);
            let mut now = start;
            for (user, secs, store) in ops {
                now += Duration::from_secs(secs);
                if store {
                    schedule.on_stored(key(users[user]), now, Duration::from_secs(secs % 60));
                } else {
                    for taken in schedule.take_due(now, 3, || Duration::ZERO) {
                        // Rescheduled one interval ahead of now.
                        prop_assert_eq!(schedule.deadline(&taken), Some(now + HOUR));
                    }
                }
                prop_assert_eq!(schedule.by_key.len(), schedule.by_time.len());
                for (k, at) in &schedule.by_key {
                    prop_assert!(schedule.by_time.contains(&(*at, k.clone())));
                    prop_assert!(*at <= now + MAX_DELAY);
                }
            }
        }
    }
}
