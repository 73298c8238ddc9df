//! Record stores: the [`RecordStore`] trait, the replacement rule every
//! store applies, the admission rule of a full store ([`Occupancy`]) and the
//! bounded in-memory [`MemoryStore`].
//!
//! A store only takes [`Record`]s, which exist only once validated, so a
//! store never holds a record whose signature, key, type or size is bad.
//! What a store still checks is what depends on what it already holds:
//! [`check_replacement`] (sequence and signer), and [`Occupancy::admit`]
//! (its record cap, how many records one stranger may keep here, and which
//! record gives way when it is full).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use common::id::NodeId;
use tracing::debug;

use crate::distance::{Distance, Key};
use crate::error::Error;
use crate::record::{Record, RecordKey};

/// The default cap of a store: with records of at most 64 KiB, at most
/// 256 MiB.
pub const DEFAULT_MAX_RECORDS: usize = 4096;

/// How many records one signer the node's owner does not vouch for may have
/// held at once. A user has two (`identity/` and `suppliers/`); the slack
/// covers a user who moved to another identity host with the same key.
pub const MAX_RECORDS_PER_STRANGER: usize = 4;

/// What [`RecordStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// No live record of that key was stored; now this one is.
    Inserted,
    /// A record with a lower sequence was replaced.
    Replaced,
    /// The same record (same sequence, same signed body) was already stored.
    Unchanged,
}

/// How the node's owner knows the signer of a record offered to its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The owner's [`crate::signer::SignerResolver`] named this signer for
    /// the record's user (see [`crate::signer::SignerResolver::vouches`]):
    /// on a supplier, a customer under contract. Such records are always
    /// kept, at a stranger's expense if need be.
    Vouched,
    /// Nobody here vouches for the signer: the key came with the record
    /// (an `identity/` record) or from the DHT. Anyone can make such keys,
    /// so strangers' records are capped per signer and give way first.
    Stranger,
}

/// Where a node keeps the records it holds for the DHT.
///
/// Implementations must apply [`check_replacement`] in `put`, then admit
/// the record with an [`Occupancy`] (which bounds how many records they
/// hold and picks what gives way), and never return an expired record.
/// Methods are fallible so that a database-backed store can report its
/// errors as [`Error::Store`].
pub trait RecordStore {
    /// The record of `key`, unless none is stored or it has expired at
    /// `now_unix`.
    fn get(&self, key: &RecordKey, now_unix: i64) -> Result<Option<Record>, Error>;

    /// Stores `record`, whose signer has `standing` here, subject to
    /// [`check_replacement`] and [`Occupancy::admit`]. Taking it may evict
    /// a stranger's record farther from this node.
    fn put(
        &mut self,
        record: Record,
        standing: Standing,
        now_unix: i64,
    ) -> Result<PutOutcome, Error>;

    /// Removes the record of `key`, returning it.
    fn remove(&mut self, key: &RecordKey) -> Result<Option<Record>, Error>;

    /// Drops every record expired at `now_unix`, returning how many.
    fn expire(&mut self, now_unix: i64) -> Result<usize, Error>;

    /// Every record live at `now_unix` (for republishing); at most the cap.
    fn records(&self, now_unix: i64) -> Result<Vec<Record>, Error>;

    /// How many records are live at `now_unix` (for metrics), without
    /// reading them.
    fn live(&self, now_unix: i64) -> usize;
}

/// Whether `offered` may replace `stored` at `now_unix`:
///
/// - an expired offer is refused ([`Error::Expired`]);
/// - with nothing live stored, the offer is taken ([`PutOutcome::Inserted`]);
/// - a live record may only be replaced by one from the same signer
///   ([`Error::SignerChanged`]): a user's master key does not change, and
///   this keeps a stranger from burning a user's sequence numbers;
/// - a lower sequence is refused ([`Error::SequenceRegressed`]);
/// - an equal sequence with the same signed body is a no-op
///   ([`PutOutcome::Unchanged`]; RSA-PSS signatures are randomized, so the
///   signature bytes may differ), with another body it is refused
///   ([`Error::SequenceConflict`]);
/// - a higher sequence replaces ([`PutOutcome::Replaced`]).
pub fn check_replacement(
    stored: Option<&Record>,
    offered: &Record,
    now_unix: i64,
) -> Result<PutOutcome, Error> {
    if offered.is_expired(now_unix) {
        return Err(Error::Expired {
            key: offered.key().clone(),
            expires_unix: offered.expires_unix(),
            now_unix,
        });
    }
    let Some(stored) = stored.filter(|s| !s.is_expired(now_unix)) else {
        return Ok(PutOutcome::Inserted);
    };
    if stored.signer() != offered.signer() {
        return Err(Error::SignerChanged {
            key: offered.key().clone(),
            stored: stored.signer(),
            offered: offered.signer(),
        });
    }
    match offered.sequence().cmp(&stored.sequence()) {
        std::cmp::Ordering::Less => Err(Error::SequenceRegressed {
            key: offered.key().clone(),
            stored: stored.sequence(),
            offered: offered.sequence(),
        }),
        std::cmp::Ordering::Equal if offered.same_content(stored) => Ok(PutOutcome::Unchanged),
        std::cmp::Ordering::Equal => Err(Error::SequenceConflict {
            key: offered.key().clone(),
            sequence: offered.sequence(),
        }),
        std::cmp::Ordering::Greater => Ok(PutOutcome::Replaced),
    }
}

/// What a store keeps in memory about each record it holds (its signer,
/// standing, expiry and distance from this node), to decide whether a new
/// key may come in and, when the store is full, which record gives way.
///
/// The rules, for a key not held live yet ([`Occupancy::admit`]):
///
/// - a stranger signer with [`MAX_RECORDS_PER_STRANGER`] records held here
///   (expired ones not yet swept included) gets no more
///   ([`Error::SignerQuota`]), so filling the store takes many keys, each an
///   RSA key generation;
/// - below the cap, the record comes in;
/// - at the cap, expired records go first; if none has expired, the
///   stranger's record farthest from this node gives way, to a vouched
///   record always and to a stranger's only if that one is closer to this
///   node: a Kademlia node is responsible for the keys near it, and the
///   nodes near a far key keep that one;
/// - otherwise the store is full ([`Error::StoreFull`]). Vouched records
///   never give way, so a supplier always keeps its customers' records.
///
/// A record once vouched for stays vouched for when the same signer's
/// record is offered again as a stranger's (a resolver that timed out, a
/// peer replaying it): it loses that standing only when it leaves the store.
///
/// Every decision costs a logarithm of the records held, not a scan.
#[derive(Debug)]
pub struct Occupancy {
    local: Key,
    cap: usize,
    held: BTreeMap<RecordKey, Held>,
    /// How many records each signer has held (expired ones included).
    signers: HashMap<NodeId, usize>,
    /// Strangers' records by distance from this node.
    strangers: BTreeSet<(Distance, RecordKey)>,
    /// Every record by expiry.
    expiries: BTreeSet<(i64, RecordKey)>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    signer: NodeId,
    standing: Standing,
    expires_unix: i64,
    distance: Distance,
}

impl Occupancy {
    /// Nothing held yet, by the node at `local`, at most `cap` records.
    pub fn new(local: Key, cap: usize) -> Self {
        Self {
            local,
            cap,
            held: BTreeMap::new(),
            signers: HashMap::new(),
            strangers: BTreeSet::new(),
            expiries: BTreeSet::new(),
        }
    }

    /// The most records the store may hold.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// How many records are held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Notes that `record` is now held, with `standing`, in place of
    /// whatever was held under its key, and that the records of `evicted`
    /// are not. A same-signer record held as vouched for stays so.
    pub fn insert(&mut self, record: &Record, standing: Standing, evicted: &[RecordKey]) {
        debug_assert!(!evicted.contains(record.key()), "a record evicts itself");
        for key in evicted {
            self.remove(key);
        }
        let standing = match self.take(record.key()) {
            Some(old) if old.signer == record.signer() && old.standing == Standing::Vouched => {
                Standing::Vouched
            }
            _ => standing,
        };
        let held = Held {
            signer: record.signer(),
            standing,
            expires_unix: record.expires_unix(),
            distance: self.local.distance(&record.key().position()),
        };
        let key = record.key().clone();
        *self.signers.entry(held.signer).or_default() += 1;
        if standing == Standing::Stranger {
            self.strangers.insert((held.distance, key.clone()));
        }
        self.expiries.insert((held.expires_unix, key.clone()));
        self.held.insert(key, held);
    }

    /// Notes that the record of `key` is no longer held.
    pub fn remove(&mut self, key: &RecordKey) {
        self.take(key);
    }

    /// Takes the record of `key` out of every index, returning what was
    /// known of it.
    fn take(&mut self, key: &RecordKey) -> Option<Held> {
        let held = self.held.remove(key)?;
        if let Some(count) = self.signers.get_mut(&held.signer) {
            *count -= 1;
            if *count == 0 {
                self.signers.remove(&held.signer);
            }
        }
        // The set entries are owned pairs: look them up by a clone.
        self.strangers.remove(&(held.distance, key.clone()));
        self.expiries.remove(&(held.expires_unix, key.clone()));
        Some(held)
    }

    /// How many records held are live at `now_unix`.
    pub fn live(&self, now_unix: i64) -> usize {
        self.held.len() - self.expired_keys(now_unix).count()
    }

    /// The keys whose records have expired at `now_unix`.
    pub fn expired(&self, now_unix: i64) -> Vec<RecordKey> {
        self.expired_keys(now_unix).cloned().collect()
    }

    fn expired_keys(&self, now_unix: i64) -> impl Iterator<Item = &RecordKey> {
        self.expiries
            .iter()
            .take_while(move |(expires, _)| *expires <= now_unix)
            .map(|(_, key)| key)
    }

    /// Whether `record` may be held at `now_unix`, and which records the
    /// store must remove in the same write to make room for it (see
    /// [`Occupancy`]): none when its key is held already or the store is
    /// below its cap. Nothing changes until [`Occupancy::insert`].
    pub fn admit(
        &self,
        record: &Record,
        standing: Standing,
        now_unix: i64,
    ) -> Result<Vec<RecordKey>, Error> {
        let here = self.held.get(record.key());
        if here.is_some_and(|held| held.expires_unix > now_unix) {
            // A live record's successor: `check_replacement` has already
            // made sure it has the same signer.
            return Ok(Vec::new());
        }
        let signer = record.signer();
        let vouched = standing == Standing::Vouched
            || here.is_some_and(|held| held.signer == signer && held.standing == Standing::Vouched);
        if !vouched {
            // An expired record in this key's slot is replaced, not added.
            let replaced = usize::from(here.is_some_and(|held| held.signer == signer));
            let holds = self
                .signers
                .get(&signer)
                .copied()
                .unwrap_or(0)
                .saturating_sub(replaced);
            if holds >= MAX_RECORDS_PER_STRANGER {
                return Err(Error::SignerQuota {
                    key: record.key().clone(),
                    signer,
                    max: MAX_RECORDS_PER_STRANGER,
                });
            }
        }
        if here.is_some() || self.held.len() < self.cap {
            return Ok(Vec::new());
        }
        // Expired records go first. A store above its cap (the cap was
        // lowered) comes down to it, one stranger more per record taken.
        let mut evict = self.expired(now_unix);
        let needed = self.held.len() + 1 - self.cap;
        if evict.len() >= needed {
            return Ok(evict);
        }
        let distance = self.local.distance(&record.key().position());
        // Strangers' live records, farthest first (every expired one is in
        // `evict` already); each must be farther than the newcomer unless
        // the newcomer is vouched for.
        let givers: Vec<RecordKey> = self
            .strangers
            .iter()
            .rev()
            .filter(|(_, key)| {
                self.held
                    .get(key)
                    .is_some_and(|held| held.expires_unix > now_unix)
            })
            .take_while(|(far, _)| vouched || distance < *far)
            .take(needed - evict.len())
            .map(|(_, key)| key.clone())
            .collect();
        if evict.len() + givers.len() < needed {
            return Err(Error::StoreFull { max: self.cap });
        }
        evict.extend(givers);
        Ok(evict)
    }

    /// The keys and signers of the records held as vouched for.
    pub fn vouched(&self) -> Vec<(RecordKey, NodeId)> {
        self.held
            .iter()
            .filter(|(_, held)| held.standing == Standing::Vouched)
            .map(|(key, held)| (key.clone(), held.signer))
            .collect()
    }

    /// Takes the vouched standing of the record of `key` away, when the
    /// owner has stopped vouching for its signer (a contract ended).
    pub fn demote(&mut self, key: &RecordKey) {
        if let Some(held) = self.held.get_mut(key)
            && held.standing == Standing::Vouched
        {
            held.standing = Standing::Stranger;
            self.strangers.insert((held.distance, key.clone()));
        }
    }
}

/// A bounded in-memory record store.
#[derive(Debug)]
pub struct MemoryStore {
    records: BTreeMap<RecordKey, Record>,
    occupancy: Occupancy,
}

impl MemoryStore {
    /// An empty store of the node at `local` that holds at most
    /// `max_records` records.
    pub fn new(local: Key, max_records: usize) -> Self {
        Self {
            records: BTreeMap::new(),
            occupancy: Occupancy::new(local, max_records),
        }
    }

    /// How many records are held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn sweep(&mut self, now_unix: i64) -> usize {
        let expired = self.occupancy.expired(now_unix);
        for key in &expired {
            self.records.remove(key);
            self.occupancy.remove(key);
        }
        expired.len()
    }
}

impl RecordStore for MemoryStore {
    fn get(&self, key: &RecordKey, now_unix: i64) -> Result<Option<Record>, Error> {
        Ok(self
            .records
            .get(key)
            .filter(|record| !record.is_expired(now_unix))
            .cloned())
    }

    fn put(
        &mut self,
        record: Record,
        standing: Standing,
        now_unix: i64,
    ) -> Result<PutOutcome, Error> {
        let outcome = check_replacement(self.records.get(record.key()), &record, now_unix)
            .inspect_err(|err| debug!(%err, "record refused"))?;
        if outcome == PutOutcome::Unchanged {
            // The record may have become vouched for since.
            self.occupancy.insert(&record, standing, &[]);
            return Ok(outcome);
        }
        let evict = self
            .occupancy
            .admit(&record, standing, now_unix)
            .inspect_err(|err| debug!(%err, "record refused"))?;
        for key in &evict {
            self.records.remove(key);
        }
        self.occupancy.insert(&record, standing, &evict);
        self.records.insert(record.key().clone(), record);
        Ok(outcome)
    }

    fn remove(&mut self, key: &RecordKey) -> Result<Option<Record>, Error> {
        self.occupancy.remove(key);
        Ok(self.records.remove(key))
    }

    fn expire(&mut self, now_unix: i64) -> Result<usize, Error> {
        Ok(self.sweep(now_unix))
    }

    fn records(&self, now_unix: i64) -> Result<Vec<Record>, Error> {
        Ok(self
            .records
            .values()
            .filter(|record| !record.is_expired(now_unix))
            .cloned()
            .collect())
    }

    fn live(&self, now_unix: i64) -> usize {
        self.occupancy.live(now_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    /// Where the tests' node sits.
    const LOCAL: Key = Key::from_array([0; 32]);

    fn key(text: &str) -> RecordKey {
        text.parse().unwrap()
    }

    fn alice_suppliers(sequence: u64, expires_unix: i64) -> Record {
        verified(suppliers_record(
            &ALICE,
            "alice@id-a",
            sequence,
            expires_unix,
        ))
    }

    #[test]
    fn records_are_stored_and_read_back() {
        let mut store = MemoryStore::new(LOCAL, DEFAULT_MAX_RECORDS);
        assert!(store.is_empty());
        let record = alice_suppliers(1, NOW + 60);
        assert_eq!(
            store.put(record.clone(), Standing::Stranger, NOW).unwrap(),
            PutOutcome::Inserted
        );
        assert_eq!(store.len(), 1);
        assert_eq!(store.get(record.key(), NOW).unwrap(), Some(record.clone()));
        assert_eq!(store.get(&key("suppliers/bob@id-a"), NOW).unwrap(), None);
        assert_eq!(store.records(NOW).unwrap(), std::slice::from_ref(&record));
        assert_eq!(store.remove(record.key()).unwrap(), Some(record.clone()));
        assert_eq!(store.get(record.key(), NOW).unwrap(), None);
    }

    #[test]
    fn sequence_numbers_never_go_backwards() {
        let mut store = MemoryStore::new(LOCAL, DEFAULT_MAX_RECORDS);
        store
            .put(alice_suppliers(5, NOW + 60), Standing::Stranger, NOW)
            .unwrap();
        assert!(matches!(
            store.put(alice_suppliers(4, NOW + 60), Standing::Stranger, NOW),
            Err(Error::SequenceRegressed {
                stored: 5,
                offered: 4,
                ..
            })
        ));
        assert_eq!(
            store
                .put(alice_suppliers(6, NOW + 60), Standing::Stranger, NOW)
                .unwrap(),
            PutOutcome::Replaced
        );
        let stored = store
            .get(&key("suppliers/alice@id-a"), NOW)
            .unwrap()
            .unwrap();
        assert_eq!(stored.sequence(), 6);
    }

    #[test]
    fn an_equal_sequence_is_a_no_op_only_with_identical_content() {
        let mut store = MemoryStore::new(LOCAL, DEFAULT_MAX_RECORDS);
        let record = alice_suppliers(5, NOW + 60);
        store.put(record.clone(), Standing::Stranger, NOW).unwrap();
        // The very same record again.
        assert_eq!(
            store.put(record.clone(), Standing::Stranger, NOW).unwrap(),
            PutOutcome::Unchanged
        );
        // The same body signed again: RSA-PSS gives another signature.
        let resigned = alice_suppliers(5, NOW + 60);
        assert_ne!(resigned.to_proto().signature, record.to_proto().signature);
        assert_eq!(
            store.put(resigned, Standing::Stranger, NOW).unwrap(),
            PutOutcome::Unchanged
        );
        // The same sequence with other content.
        assert!(matches!(
            store.put(alice_suppliers(5, NOW + 61), Standing::Stranger, NOW),
            Err(Error::SequenceConflict { sequence: 5, .. })
        ));
        assert_eq!(
            store
                .get(record.key(), NOW)
                .unwrap()
                .unwrap()
                .expires_unix(),
            NOW + 60
        );
    }

    #[test]
    fn a_stored_record_keeps_its_signer() {
        // Bob squats alice's identity key first; alice's genuine record,
        // whatever its sequence, does not displace it while it lives.
        let mut store = MemoryStore::new(LOCAL, DEFAULT_MAX_RECORDS);
        let squat = Record::verify(
            squatted_identity_record(&BOB, "alice@id-a", 1, NOW + 60),
            NOW,
            None,
        )
        .unwrap();
        store.put(squat, Standing::Stranger, NOW).unwrap();
        let genuine = Record::verify(
            identity_record(&ALICE, &ALICE, "alice@id-a", 9, NOW + 100),
            NOW,
            None,
        )
        .unwrap();
        let err = store
            .put(genuine.clone(), Standing::Stranger, NOW)
            .unwrap_err();
        assert!(
            matches!(&err, Error::SignerChanged { stored, offered, .. }
                if *stored == node(&BOB) && *offered == node(&ALICE)),
            "{err}"
        );
        // Once the squatted record has expired, the genuine one goes in.
        assert_eq!(
            store.put(genuine, Standing::Stranger, NOW + 60).unwrap(),
            PutOutcome::Inserted
        );
    }

    #[test]
    fn expired_records_are_never_returned_and_are_swept() {
        let mut store = MemoryStore::new(LOCAL, DEFAULT_MAX_RECORDS);
        store
            .put(alice_suppliers(1, NOW + 10), Standing::Stranger, NOW)
            .unwrap();
        let identity = Record::verify(
            identity_record(&ALICE, &ALICE, "alice@id-a", 1, NOW + 100),
            NOW,
            None,
        )
        .unwrap();
        store.put(identity, Standing::Stranger, NOW).unwrap();
        let suppliers = key("suppliers/alice@id-a");
        assert!(store.get(&suppliers, NOW + 9).unwrap().is_some());
        assert!(store.get(&suppliers, NOW + 10).unwrap().is_none());
        assert_eq!(store.records(NOW + 10).unwrap().len(), 1);
        assert_eq!(store.live(NOW + 9), 2);
        assert_eq!(store.live(NOW + 10), 1);
        assert_eq!(store.len(), 2);
        assert_eq!(store.expire(NOW + 10).unwrap(), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.expire(NOW + 100).unwrap(), 1);
        assert!(store.is_empty());
        // An expired offer is refused; a lower sequence may follow an expired record.
        assert!(matches!(
            store.put(alice_suppliers(2, NOW + 10), Standing::Stranger, NOW + 10),
            Err(Error::Expired { .. })
        ));
        store
            .put(alice_suppliers(3, NOW + 10), Standing::Stranger, NOW)
            .unwrap();
        assert_eq!(
            store
                .put(alice_suppliers(2, NOW + 20), Standing::Stranger, NOW + 10)
                .unwrap(),
            PutOutcome::Inserted
        );
    }

    #[test]
    fn the_record_cap_holds() {
        let mut store = MemoryStore::new(LOCAL, 2);
        store
            .put(alice_suppliers(1, NOW + 10), Standing::Vouched, NOW)
            .unwrap();
        store
            .put(squatted("bob@id-a", NOW + 100), Standing::Vouched, NOW)
            .unwrap();
        // Vouched records never give way, to anyone.
        let alice = squatted("alice@id-a", NOW + 100);
        for standing in [Standing::Vouched, Standing::Stranger] {
            assert!(matches!(
                store.put(alice.clone(), standing, NOW),
                Err(Error::StoreFull { max: 2 })
            ));
        }
        // Replacing a stored key is allowed when full.
        assert_eq!(
            store
                .put(alice_suppliers(2, NOW + 10), Standing::Vouched, NOW)
                .unwrap(),
            PutOutcome::Replaced
        );
        // A full store sweeps expired records before refusing.
        assert_eq!(
            store.put(alice, Standing::Stranger, NOW + 10).unwrap(),
            PutOutcome::Inserted
        );
        assert_eq!(store.len(), 2);
        let mut none = MemoryStore::new(LOCAL, 0);
        assert!(matches!(
            none.put(alice_suppliers(1, NOW + 10), Standing::Vouched, NOW),
            Err(Error::StoreFull { max: 0 })
        ));
    }

    /// An `identity/` record for `user` signed by BOB, who makes up names.
    fn squatted(user: &str, expires_unix: i64) -> Record {
        Record::verify(
            squatted_identity_record(&BOB, user, 1, expires_unix),
            NOW,
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_stranger_keeps_only_a_few_records_here() {
        let mut store = MemoryStore::new(LOCAL, DEFAULT_MAX_RECORDS);
        let names: Vec<String> = (0..=MAX_RECORDS_PER_STRANGER)
            .map(|i| format!("name{i}@id-a"))
            .collect();
        for name in &names[..MAX_RECORDS_PER_STRANGER] {
            store
                .put(squatted(name, NOW + 60), Standing::Stranger, NOW)
                .unwrap();
        }
        let extra = squatted(&names[MAX_RECORDS_PER_STRANGER], NOW + 60);
        let err = store
            .put(extra.clone(), Standing::Stranger, NOW)
            .unwrap_err();
        assert!(
            matches!(&err, Error::SignerQuota { signer, max, .. }
                if *signer == node(&BOB) && *max == MAX_RECORDS_PER_STRANGER),
            "{err}"
        );
        assert_eq!(store.len(), MAX_RECORDS_PER_STRANGER);
        // Its records can still be renewed.
        let renewed = Record::verify(
            squatted_identity_record(&BOB, &names[0], 2, NOW + 60),
            NOW,
            None,
        )
        .unwrap();
        assert_eq!(
            store.put(renewed, Standing::Stranger, NOW).unwrap(),
            PutOutcome::Replaced
        );
        // A signer the owner vouches for is not capped.
        assert_eq!(
            store.put(extra, Standing::Vouched, NOW).unwrap(),
            PutOutcome::Inserted
        );
    }

    #[test]
    fn a_full_store_gives_way_to_vouched_records_and_to_closer_ones() {
        // Records of several strangers (each name a key of its own), and a
        // node placed right at one record's position.
        let records: Vec<Record> = (0..6)
            .map(|i| squatted(&format!("user{i}@id-a"), NOW + 60))
            .collect();
        let local = records[0].key().position();
        let distance = |record: &Record| local.distance(&record.key().position());
        let mut store = MemoryStore::new(local, 2);
        // Two strangers fill the store (BOB's quota is four).
        store
            .put(records[1].clone(), Standing::Stranger, NOW)
            .unwrap();
        store
            .put(records[2].clone(), Standing::Stranger, NOW)
            .unwrap();
        let (near, far) = if distance(&records[1]) < distance(&records[2]) {
            (&records[1], &records[2])
        } else {
            (&records[2], &records[1])
        };
        // The record at the node's own position is as close as can be: the
        // farther stranger gives way.
        store
            .put(records[0].clone(), Standing::Stranger, NOW)
            .unwrap();
        assert!(store.get(far.key(), NOW).unwrap().is_none());
        assert!(store.get(near.key(), NOW).unwrap().is_some());
        assert_eq!(store.len(), 2);
        // A stranger farther than every held record is refused...
        let farther = records[3..]
            .iter()
            .find(|record| distance(record) > distance(near))
            .expect("one of three random positions is farther");
        assert!(matches!(
            store.put(farther.clone(), Standing::Stranger, NOW),
            Err(Error::StoreFull { max: 2 })
        ));
        // ...but a vouched record takes the farthest stranger's place anyway.
        let vouched = alice_suppliers(1, NOW + 60);
        store.put(vouched.clone(), Standing::Vouched, NOW).unwrap();
        assert!(store.get(near.key(), NOW).unwrap().is_none());
        assert!(store.get(records[0].key(), NOW).unwrap().is_some());
        assert!(store.get(vouched.key(), NOW).unwrap().is_some());
        // A record the owner now vouches for no longer gives way.
        assert_eq!(
            store
                .put(records[0].clone(), Standing::Vouched, NOW)
                .unwrap(),
            PutOutcome::Unchanged
        );
        assert!(matches!(
            store.put(records[3].clone(), Standing::Vouched, NOW),
            Err(Error::StoreFull { max: 2 })
        ));
    }

    #[test]
    fn a_stranger_cannot_outrun_its_quota_with_short_lived_records() {
        let mut store = MemoryStore::new(LOCAL, DEFAULT_MAX_RECORDS);
        let short: Vec<String> = (0..MAX_RECORDS_PER_STRANGER)
            .map(|i| format!("short{i}@id-a"))
            .collect();
        for name in &short {
            store
                .put(squatted(name, NOW + 1), Standing::Stranger, NOW)
                .unwrap();
        }
        // Expired but not swept yet: they still count...
        let later = NOW + 2;
        let fresh = |name: &str| {
            Record::verify(
                squatted_identity_record(&BOB, name, 2, later + 600),
                later,
                None,
            )
            .unwrap()
        };
        assert!(matches!(
            store.put(fresh("another@id-a"), Standing::Stranger, later),
            Err(Error::SignerQuota { .. })
        ));
        // ...and renewing one in its own slot is fine, but does not free
        // the others' places.
        store
            .put(fresh(&short[0]), Standing::Stranger, later)
            .unwrap();
        assert!(matches!(
            store.put(fresh("another@id-a"), Standing::Stranger, later),
            Err(Error::SignerQuota { .. })
        ));
        // Once swept, the expired ones no longer count.
        assert_eq!(store.expire(later).unwrap(), MAX_RECORDS_PER_STRANGER - 1);
        store
            .put(fresh("another@id-a"), Standing::Stranger, later)
            .unwrap();
    }

    #[test]
    fn a_vouched_record_stays_vouched_when_offered_again_as_a_strangers() {
        let records: Vec<Record> = (0..3)
            .map(|i| squatted(&format!("user{i}@id-a"), NOW + 60))
            .collect();
        // The node sits at the position of the record a stranger offers.
        let local = records[2].key().position();
        let mut store = MemoryStore::new(local, 2);
        store
            .put(records[0].clone(), Standing::Vouched, NOW)
            .unwrap();
        store
            .put(records[1].clone(), Standing::Vouched, NOW)
            .unwrap();
        // Replayed while the owner's resolver could not answer, say.
        assert_eq!(
            store
                .put(records[0].clone(), Standing::Stranger, NOW)
                .unwrap(),
            PutOutcome::Unchanged
        );
        let renewed = Record::verify(
            squatted_identity_record(&BOB, "user1@id-a", 2, NOW + 60),
            NOW,
            None,
        )
        .unwrap();
        assert_eq!(
            store.put(renewed, Standing::Stranger, NOW).unwrap(),
            PutOutcome::Replaced
        );
        // Neither gives way, even to the closest possible stranger.
        assert!(matches!(
            store.put(records[2].clone(), Standing::Stranger, NOW),
            Err(Error::StoreFull { max: 2 })
        ));
    }

    #[test]
    fn a_stranger_at_its_quota_cannot_take_over_an_expired_key_of_another() {
        let mut store = MemoryStore::new(LOCAL, DEFAULT_MAX_RECORDS);
        let genuine = Record::verify(
            identity_record(&ALICE, &ALICE, "alice@id-a", 1, NOW + 10),
            NOW,
            None,
        )
        .unwrap();
        store.put(genuine, Standing::Stranger, NOW).unwrap();
        for i in 0..MAX_RECORDS_PER_STRANGER {
            store
                .put(
                    squatted(&format!("name{i}@id-a"), NOW + 60),
                    Standing::Stranger,
                    NOW,
                )
                .unwrap();
        }
        // Alice's record has expired but is still held; Bob squats it.
        let squat = Record::verify(
            squatted_identity_record(&BOB, "alice@id-a", 1, NOW + 60),
            NOW + 10,
            None,
        )
        .unwrap();
        assert!(matches!(
            store.put(squat, Standing::Stranger, NOW + 10),
            Err(Error::SignerQuota { .. })
        ));
    }
}
