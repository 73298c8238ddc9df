//! Record stores: the [`RecordStore`] trait, the replacement rule every
//! store applies, and the bounded in-memory [`MemoryStore`].
//!
//! A store only takes [`Record`]s, which exist only once validated, so a
//! store never holds a record whose signature, key, type or size is bad.
//! What a store still checks is what depends on what it already holds:
//! [`check_replacement`] (sequence and signer) and its record cap.

use std::collections::BTreeMap;

use tracing::debug;

use crate::error::Error;
use crate::record::{Record, RecordKey};

/// The default cap of a [`MemoryStore`]: with records of at most 64 KiB,
/// at most 256 MiB.
pub const DEFAULT_MAX_RECORDS: usize = 4096;

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

/// Where a node keeps the records it holds for the DHT.
///
/// Implementations must apply [`check_replacement`] in `put`, bound how many
/// records they hold, and never return an expired record. Methods are
/// fallible so that a database-backed store can report its errors as
/// [`Error::Store`].
pub trait RecordStore {
    /// The record of `key`, unless none is stored or it has expired at
    /// `now_unix`.
    fn get(&self, key: &RecordKey, now_unix: i64) -> Result<Option<Record>, Error>;

    /// Stores `record`, subject to [`check_replacement`] and the store's cap.
    fn put(&mut self, record: Record, now_unix: i64) -> Result<PutOutcome, Error>;

    /// Removes the record of `key`, returning it.
    fn remove(&mut self, key: &RecordKey) -> Result<Option<Record>, Error>;

    /// Drops every record expired at `now_unix`, returning how many.
    fn expire(&mut self, now_unix: i64) -> Result<usize, Error>;

    /// Every record live at `now_unix` (for republishing); at most the cap.
    fn records(&self, now_unix: i64) -> Result<Vec<Record>, Error>;
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

/// A bounded in-memory record store.
#[derive(Debug)]
pub struct MemoryStore {
    records: BTreeMap<RecordKey, Record>,
    max_records: usize,
}

impl MemoryStore {
    /// An empty store that holds at most `max_records` records.
    pub fn new(max_records: usize) -> Self {
        Self {
            records: BTreeMap::new(),
            max_records,
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
        let before = self.records.len();
        self.records
            .retain(|_, record| !record.is_expired(now_unix));
        before - self.records.len()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_RECORDS)
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

    fn put(&mut self, record: Record, now_unix: i64) -> Result<PutOutcome, Error> {
        let outcome = check_replacement(self.records.get(record.key()), &record, now_unix)
            .inspect_err(|err| debug!(%err, "record refused"))?;
        match outcome {
            PutOutcome::Unchanged => return Ok(outcome),
            PutOutcome::Inserted if !self.records.contains_key(record.key()) => {
                if self.records.len() >= self.max_records {
                    self.sweep(now_unix);
                }
                if self.records.len() >= self.max_records {
                    debug!(key = %record.key(), "record store full");
                    return Err(Error::StoreFull {
                        max: self.max_records,
                    });
                }
            }
            // Replaces a record of the same key: the count does not grow.
            PutOutcome::Inserted | PutOutcome::Replaced => {}
        }
        self.records.insert(record.key().clone(), record);
        Ok(outcome)
    }

    fn remove(&mut self, key: &RecordKey) -> Result<Option<Record>, Error> {
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
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

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
        let mut store = MemoryStore::default();
        assert!(store.is_empty());
        let record = alice_suppliers(1, NOW + 60);
        assert_eq!(
            store.put(record.clone(), NOW).unwrap(),
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
        let mut store = MemoryStore::default();
        store.put(alice_suppliers(5, NOW + 60), NOW).unwrap();
        assert!(matches!(
            store.put(alice_suppliers(4, NOW + 60), NOW),
            Err(Error::SequenceRegressed {
                stored: 5,
                offered: 4,
                ..
            })
        ));
        assert_eq!(
            store.put(alice_suppliers(6, NOW + 60), NOW).unwrap(),
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
        let mut store = MemoryStore::default();
        let record = alice_suppliers(5, NOW + 60);
        store.put(record.clone(), NOW).unwrap();
        // The very same record again.
        assert_eq!(
            store.put(record.clone(), NOW).unwrap(),
            PutOutcome::Unchanged
        );
        // The same body signed again: RSA-PSS gives another signature.
        let resigned = alice_suppliers(5, NOW + 60);
        assert_ne!(resigned.to_proto().signature, record.to_proto().signature);
        assert_eq!(store.put(resigned, NOW).unwrap(), PutOutcome::Unchanged);
        // The same sequence with other content.
        assert!(matches!(
            store.put(alice_suppliers(5, NOW + 61), NOW),
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
        let mut store = MemoryStore::default();
        let squat = Record::verify(
            squatted_identity_record(&BOB, "alice@id-a", 1, NOW + 60),
            NOW,
            None,
        )
        .unwrap();
        store.put(squat, NOW).unwrap();
        let genuine = Record::verify(
            identity_record(&ALICE, &ALICE, "alice@id-a", 9, NOW + 100),
            NOW,
            None,
        )
        .unwrap();
        let err = store.put(genuine.clone(), NOW).unwrap_err();
        assert!(
            matches!(&err, Error::SignerChanged { stored, offered, .. }
                if *stored == node(&BOB) && *offered == node(&ALICE)),
            "{err}"
        );
        // Once the squatted record has expired, the genuine one goes in.
        assert_eq!(store.put(genuine, NOW + 60).unwrap(), PutOutcome::Inserted);
    }

    #[test]
    fn expired_records_are_never_returned_and_are_swept() {
        let mut store = MemoryStore::default();
        store.put(alice_suppliers(1, NOW + 10), NOW).unwrap();
        let identity = Record::verify(
            identity_record(&ALICE, &ALICE, "alice@id-a", 1, NOW + 100),
            NOW,
            None,
        )
        .unwrap();
        store.put(identity, NOW).unwrap();
        let suppliers = key("suppliers/alice@id-a");
        assert!(store.get(&suppliers, NOW + 9).unwrap().is_some());
        assert!(store.get(&suppliers, NOW + 10).unwrap().is_none());
        assert_eq!(store.records(NOW + 10).unwrap().len(), 1);
        assert_eq!(store.len(), 2);
        assert_eq!(store.expire(NOW + 10).unwrap(), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.expire(NOW + 100).unwrap(), 1);
        assert!(store.is_empty());
        // An expired offer is refused; a lower sequence may follow an expired record.
        assert!(matches!(
            store.put(alice_suppliers(2, NOW + 10), NOW + 10),
            Err(Error::Expired { .. })
        ));
        store.put(alice_suppliers(3, NOW + 10), NOW).unwrap();
        assert_eq!(
            store.put(alice_suppliers(2, NOW + 20), NOW + 10).unwrap(),
            PutOutcome::Inserted
        );
    }

    #[test]
    fn the_record_cap_holds() {
        let mut store = MemoryStore::new(2);
        store.put(alice_suppliers(1, NOW + 10), NOW).unwrap();
        let bob = Record::verify(
            identity_record(&BOB, &BOB, "bob@id-a", 1, NOW + 100),
            NOW,
            None,
        )
        .unwrap();
        store.put(bob, NOW).unwrap();
        let alice = Record::verify(
            identity_record(&ALICE, &ALICE, "alice@id-a", 1, NOW + 100),
            NOW,
            None,
        )
        .unwrap();
        assert!(matches!(
            store.put(alice.clone(), NOW),
            Err(Error::StoreFull { max: 2 })
        ));
        // Replacing a stored key is allowed when full.
        assert_eq!(
            store.put(alice_suppliers(2, NOW + 10), NOW).unwrap(),
            PutOutcome::Replaced
        );
        // A full store sweeps expired records before refusing.
        assert_eq!(store.put(alice, NOW + 10).unwrap(), PutOutcome::Inserted);
        assert_eq!(store.len(), 2);
        let mut none = MemoryStore::new(0);
        assert!(matches!(
            none.put(alice_suppliers(1, NOW + 10), NOW),
            Err(Error::StoreFull { max: 0 })
        ));
    }
}
