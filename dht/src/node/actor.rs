//! The node's actor: the one task that owns the routing table, the record
//! store and the republish schedule.
//!
//! It takes messages from two bounded inboxes, local work (the handle,
//! lookups, jobs) before remote work (the service), and never waits on the
//! network: liveness checks and background jobs (republishing, bucket
//! refreshes, repairs, bootstrap retries) run in `JoinSet`s it owns, so they
//! end with it. [`State`] holds the decisions and takes `now` as an
//! argument; [`Actor`] only reads the clock and moves messages.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::id::NodeId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tracing::{Instrument, debug, info, trace, warn};

use crate::contact::Contact;
use crate::distance::Key;
use crate::error::Error;
use crate::kbucket::{InsertOutcome, RoutingTable};
use crate::node::{NodeStats, Shared, now};
use crate::record::{PutOutcome, Record, RecordKey, RecordStore, Standing};
use crate::republish::Schedule;

/// What the actor is asked to do.
#[derive(Debug)]
pub(crate) enum Message {
    /// The `k` contacts closest to `target`, without `exclude`; a remote
    /// `sender` is seen first.
    Closest {
        target: Key,
        sender: Option<Contact>,
        exclude: Option<NodeId>,
        reply: oneshot::Sender<Vec<Contact>>,
    },
    /// A request to `peer` could not reach it.
    Failed { peer: NodeId },
    /// A FIND_VALUE from `requester`: the record, else the closest contacts.
    FindValue {
        sender: Option<Contact>,
        requester: NodeId,
        key: RecordKey,
        reply: oneshot::Sender<(Option<Record>, Vec<Contact>)>,
    },
    /// `contact` answered a request, or sent one.
    Observed { contact: Contact },
    /// The live record of `key` held here.
    Record {
        key: RecordKey,
        reply: oneshot::Sender<Result<Option<Record>, Error>>,
    },
    /// `peers` returned an older record than `record`: send it to them.
    Repair { record: Record, peers: Vec<Contact> },
    /// The seeds to retry while the routing table is empty.
    Seeds { seeds: Vec<String> },
    /// Counts.
    Stats { reply: oneshot::Sender<NodeStats> },
    /// Keep `record` (validated already): a STORE from `sender`, or a
    /// local put.
    Store {
        sender: Option<Contact>,
        record: Record,
        /// Whether the owner vouches for the record's signer.
        standing: Standing,
        reply: oneshot::Sender<Result<PutOutcome, Error>>,
    },
}

/// The task around [`State`].
pub(crate) struct Actor {
    shared: std::sync::Arc<Shared>,
    state: State,
    inbox: mpsc::Receiver<Message>,
    inbound: mpsc::Receiver<Message>,
    /// Liveness checks: at most one per bucket, by the table's rule.
    pings: JoinSet<(NodeId, bool)>,
    /// Background jobs, at most `max_jobs`.
    jobs: JoinSet<()>,
    seeds: Vec<String>,
    /// The bootstrap retry running, if any.
    bootstrap: Option<tokio::task::Id>,
    next_bootstrap: Instant,
    next_expiry: Instant,
}

impl Actor {
    pub(crate) fn new(
        shared: std::sync::Arc<Shared>,
        store: Box<dyn RecordStore + Send>,
        inbox: mpsc::Receiver<Message>,
        inbound: mpsc::Receiver<Message>,
        now: Instant,
    ) -> Self {
        let config = &shared.config;
        let mut state = State {
            k: config.k.get(),
            max_failures: config.max_failures.max(1),
            table: RoutingTable::new(shared.local, config.kbucket(), now),
            store,
            schedule: Schedule::new(config.republish_interval),
            failures: HashMap::new(),
        };
        // Records left in a persistent store are republished within the
        // first interval, spread out.
        state.reconcile(now, common::unix_now(), || {
            random_delay(config.republish_interval)
        });
        Self {
            next_expiry: now + config.expire_interval,
            next_bootstrap: now,
            shared,
            state,
            inbox,
            inbound,
            pings: JoinSet::new(),
            jobs: JoinSet::new(),
            seeds: Vec::new(),
            bootstrap: None,
        }
    }

    /// Runs until the node is cancelled.
    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(self.shared.config.tick());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shared.cancel.cancelled() => break,
                Some(done) = self.pings.join_next() => {
                    if let Ok((peer, alive)) = done {
                        self.state.on_ping(&peer, alive, now());
                    }
                }
                Some(done) = self.jobs.join_next_with_id() => {
                    let id = match &done {
                        Ok((id, ())) => *id,
                        Err(error) => error.id(),
                    };
                    if self.bootstrap == Some(id) {
                        self.bootstrap = None;
                    }
                }
                _ = tick.tick() => self.maintain(),
                Some(message) = self.inbox.recv() => self.handle(message),
                Some(message) = self.inbound.recv() => self.handle(message),
            }
        }
        debug!("dht actor stopped");
    }

    fn handle(&mut self, message: Message) {
        let now = now();
        match message {
            Message::Closest {
                target,
                sender,
                exclude,
                reply,
            } => {
                self.observe(sender, now);
                let _ = reply.send(self.state.closest(&target, exclude));
            }
            Message::Failed { peer } => self.state.on_failure(&peer, now),
            Message::FindValue {
                sender,
                requester,
                key,
                reply,
            } => {
                self.observe(sender, now);
                let record = self
                    .state
                    .record(&key, common::unix_now())
                    .unwrap_or_else(|error| {
                        warn!(%error, "record store failed");
                        None
                    });
                let closer = if record.is_some() {
                    Vec::new()
                } else {
                    self.state.closest(&key.position(), Some(requester))
                };
                let _ = reply.send((record, closer));
            }
            Message::Observed { contact } => self.observe(Some(contact), now),
            Message::Record { key, reply } => {
                let _ = reply.send(self.state.record(&key, common::unix_now()));
            }
            Message::Repair { record, peers } => {
                if self.jobs.len() < self.shared.config.max_jobs.max(1) {
                    let shared = self.shared.clone();
                    self.jobs.spawn(
                        async move {
                            let updated = shared.store_at(&record, peers).await;
                            debug!(key = %record.key(), updated, "outdated holders updated");
                        }
                        .in_current_span(),
                    );
                }
            }
            Message::Seeds { seeds } => self.seeds = seeds,
            Message::Stats { reply } => {
                let mut stats = self.state.stats(common::unix_now());
                self.shared.lookup_counters.fill(&mut stats);
                let _ = reply.send(stats);
            }
            Message::Store {
                sender,
                record,
                standing,
                reply,
            } => {
                self.observe(sender, now);
                let jitter = random_delay(self.state.schedule.interval() / 10);
                let _ =
                    reply.send(
                        self.state
                            .store(record, standing, now, common::unix_now(), jitter),
                    );
            }
        }
    }

    /// Puts a contact that proved itself into the table, and starts the
    /// liveness check the table asks for.
    fn observe(&mut self, contact: Option<Contact>, now: Instant) {
        let Some(contact) = contact else {
            return;
        };
        if let Some(stale) = self.state.observe(contact, now) {
            let network = self.shared.network.clone();
            self.pings.spawn(
                async move {
                    let alive = network.ping(&stale).await.is_ok();
                    trace!(peer = %stale.id().fmt_short(), alive, "liveness check");
                    (stale.id(), alive)
                }
                .in_current_span(),
            );
        }
    }

    /// Timers: bootstrap retries, bucket refreshes, republishing, expiry.
    fn maintain(&mut self) {
        let now = now();
        let now_unix = common::unix_now();
        let config = &self.shared.config;
        let max_jobs = config.max_jobs.max(1);

        if self.state.table.is_empty()
            && !self.seeds.is_empty()
            && self.bootstrap.is_none()
            && now >= self.next_bootstrap
            && self.jobs.len() < max_jobs
        {
            self.next_bootstrap = now + config.bootstrap_retry;
            let shared = self.shared.clone();
            let seeds = self.seeds.clone();
            let job = self.jobs.spawn(
                async move {
                    if let Err(error) = shared.bootstrap(&seeds).await {
                        debug!(%error, "bootstrap retry failed");
                    }
                }
                .in_current_span(),
            );
            self.bootstrap = Some(job.id());
        }

        for index in self.state.table.stale_buckets(now) {
            if self.jobs.len() >= max_jobs {
                break;
            }
            self.state.table.mark_refreshed(index, now);
            let Some(target) = self.state.table.refresh_target(index, rand::random()) else {
                continue;
            };
            let shared = self.shared.clone();
            self.jobs.spawn(
                async move {
                    match shared.find_node(target).await {
                        Ok(found) => {
                            trace!(bucket = index, found = found.len(), "bucket refreshed")
                        }
                        Err(error) => debug!(bucket = index, %error, "bucket refresh failed"),
                    }
                }
                .in_current_span(),
            );
        }

        let free = max_jobs.saturating_sub(self.jobs.len());
        let interval = self.state.schedule.interval();
        let due = self
            .state
            .schedule
            .take_due(now, free, || random_delay(interval / 10));
        for key in due {
            let record = match self.state.record(&key, now_unix) {
                Ok(Some(record)) => record,
                Ok(None) => {
                    self.state.schedule.remove(&key);
                    continue;
                }
                Err(error) => {
                    warn!(%error, "record store failed");
                    continue;
                }
            };
            let shared = self.shared.clone();
            self.jobs.spawn(
                async move {
                    match shared.publish(&record).await {
                        Ok(stored) => debug!(key = %record.key(), stored, "record republished"),
                        Err(error) => debug!(key = %record.key(), %error, "republish failed"),
                    }
                }
                .in_current_span(),
            );
        }

        if now >= self.next_expiry {
            self.next_expiry = now + config.expire_interval;
            self.state.expire(now, now_unix, || random_delay(interval));
        }
    }
}

/// The actor's decisions, with time as an argument.
pub(crate) struct State {
    k: usize,
    max_failures: u32,
    pub(crate) table: RoutingTable,
    store: Box<dyn RecordStore + Send>,
    pub(crate) schedule: Schedule,
    /// Failed requests in a row, for contacts in the table.
    failures: HashMap<NodeId, u32>,
}

impl State {
    /// `contact` proved itself: into the table. Returns the contact to
    /// check for liveness, if its bucket is full.
    fn observe(&mut self, contact: Contact, now: Instant) -> Option<Contact> {
        self.failures.remove(&contact.id());
        match self.table.insert(contact, now) {
            InsertOutcome::Ping { stale } => Some(stale),
            InsertOutcome::Cached
            | InsertOutcome::Inserted
            | InsertOutcome::Local
            | InsertOutcome::Updated => None,
        }
    }

    /// A request to `peer` failed: after `max_failures` in a row, the peer
    /// leaves the table and a replacement takes its place.
    fn on_failure(&mut self, peer: &NodeId, now: Instant) {
        if !self.table.contains(peer) {
            // Drops it from the replacement cache, if it waits there.
            self.table.on_ping_failure(peer, now);
            return;
        }
        let count = self.failures.entry(*peer).or_insert(0);
        *count += 1;
        if *count >= self.max_failures {
            self.failures.remove(peer);
            let promoted = self.table.on_ping_failure(peer, now);
            debug!(peer = %peer.fmt_short(), promoted = ?promoted.map(|c| c.id()), "contact evicted");
        }
    }

    fn on_ping(&mut self, peer: &NodeId, alive: bool, now: Instant) {
        if alive {
            self.failures.remove(peer);
            self.table.on_ping_success(peer, now);
        } else {
            self.failures.remove(peer);
            let promoted = self.table.on_ping_failure(peer, now);
            debug!(peer = %peer.fmt_short(), promoted = ?promoted.map(|c| c.id()), "stale contact evicted");
        }
    }

    fn closest(&self, target: &Key, exclude: Option<NodeId>) -> Vec<Contact> {
        let mut closest = self.table.closest(target, self.k + 1);
        closest.retain(|contact| Some(contact.id()) != exclude);
        closest.truncate(self.k);
        closest
    }

    fn record(&self, key: &RecordKey, now_unix: i64) -> Result<Option<Record>, Error> {
        let store = &self.store;
        blocking(|| store.get(key, now_unix))
    }

    fn store(
        &mut self,
        record: Record,
        standing: Standing,
        now: Instant,
        now_unix: i64,
        jitter: Duration,
    ) -> Result<PutOutcome, Error> {
        let key = record.key().clone();
        let store = &mut self.store;
        let outcome = blocking(|| store.put(record, standing, now_unix))?;
        // Whoever sent it sent it to the other closest nodes too: our own
        // republish of this key can wait a full interval.
        self.schedule.on_stored(key, now, jitter);
        Ok(outcome)
    }

    /// Sweeps expired records out and brings the schedule in line with the
    /// store: keys no longer held are dropped, and keys held but not
    /// scheduled are adopted at `delay()` from now.
    fn expire(&mut self, now: Instant, now_unix: i64, delay: impl FnMut() -> Duration) {
        let store = &mut self.store;
        match blocking(|| store.expire(now_unix)) {
            Ok(0) => {}
            Ok(swept) => debug!(swept, "expired records swept"),
            Err(error) => warn!(%error, "record store failed to sweep"),
        }
        self.reconcile(now, now_unix, delay);
        let table = &self.table;
        self.failures.retain(|peer, _| table.contains(peer));
    }

    fn reconcile(&mut self, now: Instant, now_unix: i64, mut delay: impl FnMut() -> Duration) {
        let store = &self.store;
        let records = match blocking(|| store.records(now_unix)) {
            Ok(records) => records,
            Err(error) => {
                warn!(%error, "record store failed to list records");
                return;
            }
        };
        let held: std::collections::BTreeSet<RecordKey> = records
            .into_iter()
            .map(|record| record.key().clone())
            .collect();
        self.schedule.retain(|key| held.contains(key));
        let mut adopted = 0;
        for key in held {
            if !self.schedule.contains(&key) {
                self.schedule.adopt(key, now, delay());
                adopted += 1;
            }
        }
        if adopted > 0 {
            info!(adopted, "held records scheduled for republishing");
        }
    }

    fn stats(&self, now_unix: i64) -> NodeStats {
        let records = self.store.live(now_unix);
        NodeStats {
            contacts: self.table.len(),
            records,
            lookups: 0,
            lookups_failed: 0,
            lookup_micros: 0,
        }
    }
}

/// Runs a store call, under `block_in_place` where the runtime allows it,
/// so a store that blocks (a synced database write) does not stall the
/// other tasks of its worker thread.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
        _ => call(),
    }
}

/// A random delay in `[0, max]`, at millisecond resolution.
fn random_delay(max: Duration) -> Duration {
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=max_ms))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;
    use crate::kbucket;
    use crate::record::MemoryStore;
    use crate::record::fixtures::{ALICE, NOW, suppliers_record, verified};

    const HOUR: Duration = Duration::from_secs(3600);

    fn contact(first: u8, last: u8) -> Contact {
        let mut id = [0u8; 32];
        id[0] = first;
        id[31] = last;
        Contact::new(NodeId::from_array(id), vec!["127.0.0.1:7700".into()]).unwrap()
    }

    /// A node at the origin with buckets of `k` and a memory store.
    fn state(k: usize, now: Instant) -> State {
        let k = NonZeroUsize::new(k).unwrap();
        State {
            k: k.get(),
            max_failures: 2,
            table: RoutingTable::new(NodeId::from_array([0; 32]), kbucket::Config::with_k(k), now),
            store: Box::new(MemoryStore::new(Key::from_array([0; 32]), 8)),
            schedule: Schedule::new(HOUR),
            failures: HashMap::new(),
        }
    }

    #[test]
    fn a_full_bucket_asks_to_check_its_oldest_contact() {
        let now = Instant::now();
        let mut state = state(2, now);
        // All three fall in bucket 255.
        assert_eq!(state.observe(contact(0x80, 1), now), None);
        assert_eq!(state.observe(contact(0x81, 1), now), None);
        assert_eq!(state.observe(contact(0x82, 1), now), Some(contact(0x80, 1)));
        // The old contact answers: it stays, the newcomer waits.
        state.on_ping(&contact(0x80, 1).id(), true, now);
        assert!(state.table.contains(&contact(0x80, 1).id()));
        assert!(!state.table.contains(&contact(0x82, 1).id()));
        // Next time the oldest is 0x81; it is dead, and the newcomer moves in.
        assert_eq!(state.observe(contact(0x83, 1), now), Some(contact(0x81, 1)));
        state.on_ping(&contact(0x81, 1).id(), false, now);
        assert!(!state.table.contains(&contact(0x81, 1).id()));
        assert!(state.table.contains(&contact(0x83, 1).id()));
    }

    #[test]
    fn repeated_failures_evict_and_an_answer_forgives() {
        let now = Instant::now();
        let mut state = state(20, now);
        let peer = contact(0x80, 1);
        state.observe(peer.clone(), now);
        state.on_failure(&peer.id(), now);
        assert!(state.table.contains(&peer.id()));
        // An answer in between resets the count.
        state.observe(peer.clone(), now);
        state.on_failure(&peer.id(), now);
        assert!(state.table.contains(&peer.id()));
        state.on_failure(&peer.id(), now);
        assert!(!state.table.contains(&peer.id()));
        assert!(state.failures.is_empty());
        // Failures of unknown nodes leave no trace.
        state.on_failure(&contact(0x40, 1).id(), now);
        assert!(state.failures.is_empty());
    }

    #[test]
    fn closest_leaves_out_the_requester_and_returns_k() {
        let now = Instant::now();
        let mut state = state(3, now);
        for first in [0x80, 0x40, 0x20, 0x10] {
            state.observe(contact(first, 1), now);
        }
        let target = Key::from(contact(0x10, 0).id());
        let closest = state.closest(&target, None);
        assert_eq!(closest.len(), 3);
        assert_eq!(closest[0], contact(0x10, 1));
        let without = state.closest(&target, Some(contact(0x10, 1).id()));
        assert_eq!(without.len(), 3);
        assert!(without.iter().all(|c| c.id() != contact(0x10, 1).id()));
    }

    #[test]
    fn stored_records_are_scheduled_and_swept_when_expired() {
        let now = Instant::now();
        let mut state = state(20, now);
        let record = verified(suppliers_record(&ALICE, "alice@id-a", 1, NOW + 60));
        let key = record.key().clone();
        assert_eq!(
            state
                .store(record.clone(), Standing::Stranger, now, NOW, Duration::ZERO)
                .unwrap(),
            PutOutcome::Inserted
        );
        assert_eq!(state.schedule.deadline(&key), Some(now + HOUR));
        // The same record again (a peer's republish) restarts the timer.
        let later = now + Duration::from_secs(60);
        assert_eq!(
            state
                .store(record, Standing::Stranger, later, NOW, Duration::ZERO)
                .unwrap(),
            PutOutcome::Unchanged
        );
        assert_eq!(state.schedule.deadline(&key), Some(later + HOUR));
        assert_eq!(state.stats(NOW).records, 1);
        assert!(state.record(&key, NOW).unwrap().is_some());
        // Expired: never served, then swept and unscheduled.
        assert!(state.record(&key, NOW + 60).unwrap().is_none());
        state.expire(later, NOW + 60, || Duration::ZERO);
        assert!(state.schedule.is_empty());
        assert_eq!(state.stats(NOW).records, 0);
    }

    #[test]
    fn records_found_in_the_store_are_adopted() {
        let now = Instant::now();
        let mut store = MemoryStore::new(Key::from_array([0; 32]), 8);
        let record = verified(suppliers_record(&ALICE, "alice@id-a", 1, NOW + 60));
        let key = record.key().clone();
        store.put(record, Standing::Vouched, NOW).unwrap();
        let mut state = state(20, now);
        state.store = Box::new(store);
        state.reconcile(now, NOW, || Duration::from_secs(5));
        assert_eq!(
            state.schedule.deadline(&key),
            Some(now + Duration::from_secs(5))
        );
    }
}
