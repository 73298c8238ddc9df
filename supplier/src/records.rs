//! The DHT's record store on a supplier: records kept in RocksDB (through
//! [`Store`]) so they survive restarts and keep being republished.
//!
//! Each value is the signer's node ID (32 bytes) followed by the record's
//! envelope, so a record is verified again, against that signer, when it is
//! read back.

use common::id::NodeId;
use dht::Error;
use dht::record::{PutOutcome, Record, RecordKey, RecordStore, check_replacement};
use prost::Message;

use crate::store::{Store, WeakStore};

/// Who signs the records of a user, as this supplier knows it: its
/// customers (from their contracts) and the identities it hosts.
#[derive(Debug, Clone)]
pub struct KnownSigners {
    store: WeakStore,
}

impl KnownSigners {
    /// Signers known from `store`. The resolver does not keep the store
    /// open: after shutdown it knows no one.
    pub fn new(store: &Store) -> Self {
        Self {
            store: store.downgrade(),
        }
    }
}

impl dht::signer::SignerResolver for KnownSigners {
    fn resolve<'a>(
        &'a self,
        user: &'a common::id::UserId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<NodeId>> + Send + 'a>> {
        let store = self.store.upgrade();
        let user = user.to_string();
        Box::pin(async move {
            store?
                .run(move |store| {
                    if let Some(node) = store.customer(&user)? {
                        return Ok(Some(node));
                    }
                    Ok(store
                        .identity(&user)?
                        .and_then(|bytes| common::identity::SignedIdentity::from_bytes(&bytes).ok())
                        .map(|identity| identity.document().node_id()))
                })
                .await
                .ok()
                .flatten()
        })
    }
}

/// Records kept in the supplier's database, at most `cap`.
#[derive(Debug)]
pub struct StoredRecords {
    store: Store,
    cap: usize,
    /// Records held, counted once at start and kept up to date, so a put
    /// does not scan the column family to enforce the cap.
    count: usize,
}

impl StoredRecords {
    /// Records in `store`, at most `cap` of them.
    pub fn new(store: Store, cap: usize) -> Self {
        let count = store.records().map_or(0, |records| records.len());
        Self { store, cap, count }
    }

    fn load(&self, key: &str, now_unix: i64) -> Result<Option<Record>, Error> {
        let Some(bytes) = self.store.record(key).map_err(store_error)? else {
            return Ok(None);
        };
        decode(&bytes, now_unix)
    }

    /// Records held, expired ones included until [`RecordStore::expire`]
    /// removes them.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no records are held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

fn store_error(e: crate::store::StoreError) -> Error {
    Error::Store(Box::new(e))
}

/// A stored value back to a verified record; `None` when it has expired.
fn decode(bytes: &[u8], now_unix: i64) -> Result<Option<Record>, Error> {
    let (signer, envelope) = bytes
        .split_at_checked(32)
        .ok_or_else(|| Error::Store("a stored record is truncated".into()))?;
    let signer = NodeId::from_slice(signer).map_err(|e| Error::Store(Box::new(e)))?;
    let wire =
        proto::common::v1::Envelope::decode(envelope).map_err(|e| Error::Store(Box::new(e)))?;
    match Record::verify(wire, now_unix, Some(signer)) {
        Ok(record) => Ok(Some(record)),
        Err(Error::Expired { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn encode(record: &Record) -> Vec<u8> {
    let mut bytes = record.signer().as_bytes().to_vec();
    bytes.extend_from_slice(&record.to_proto().encode_to_vec());
    bytes
}

impl RecordStore for StoredRecords {
    fn get(&self, key: &RecordKey, now_unix: i64) -> Result<Option<Record>, Error> {
        self.load(&key.to_string(), now_unix)
    }

    fn put(&mut self, record: Record, now_unix: i64) -> Result<PutOutcome, Error> {
        let key = record.key().to_string();
        let held = self.store.record(&key).map_err(store_error)?;
        let stored = match &held {
            Some(bytes) => decode(bytes, now_unix)?,
            None => None,
        };
        let outcome = check_replacement(stored.as_ref(), &record, now_unix)?;
        if outcome == PutOutcome::Unchanged {
            return Ok(outcome);
        }
        if held.is_none() && self.count >= self.cap {
            // Expired records still count until removed: make room first.
            self.expire(now_unix)?;
            if self.count >= self.cap {
                return Err(Error::StoreFull { max: self.cap });
            }
        }
        self.store
            .put_record(&key, &encode(&record))
            .map_err(store_error)?;
        if held.is_none() {
            self.count += 1;
        }
        Ok(outcome)
    }

    fn remove(&mut self, key: &RecordKey) -> Result<Option<Record>, Error> {
        let old = self
            .store
            .remove_record(&key.to_string())
            .map_err(store_error)?;
        if old.is_some() {
            self.count = self.count.saturating_sub(1);
        }
        Ok(old.and_then(|bytes| decode(&bytes, common::unix_now()).ok().flatten()))
    }

    fn expire(&mut self, now_unix: i64) -> Result<usize, Error> {
        let mut expired = 0;
        for (key, bytes) in self.store.records().map_err(store_error)? {
            if !matches!(decode(&bytes, now_unix), Ok(Some(_))) {
                self.store.remove_record(&key).map_err(store_error)?;
                self.count = self.count.saturating_sub(1);
                expired += 1;
            }
        }
        Ok(expired)
    }

    fn records(&self, now_unix: i64) -> Result<Vec<Record>, Error> {
        let mut out = Vec::new();
        for (_, bytes) in self.store.records().map_err(store_error)? {
            if let Ok(Some(record)) = decode(&bytes, now_unix) {
                out.push(record);
            }
            if out.len() >= self.cap {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use common::crypto::PrivateKey;
    use common::identity::{IdentityDocument, SignedIdentity};

    use super::*;

    #[test]
    fn records_survive_a_reopen_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate(2048).unwrap();
        let record_key = RecordKey::identity("alice@id-a".parse().unwrap());
        let now = common::unix_now();
        let record = identity_record("alice", &key, now + 60);
        {
            let mut records = StoredRecords::new(Store::open(dir.path()).unwrap(), 10);
            assert_eq!(
                records.put(record.clone(), now).unwrap(),
                PutOutcome::Inserted
            );
            assert_eq!(records.put(record, now).unwrap(), PutOutcome::Unchanged);
        }
        let mut records = StoredRecords::new(Store::open(dir.path()).unwrap(), 10);
        let back = records.get(&record_key, now).unwrap().unwrap();
        assert_eq!(back.sequence(), 1);
        assert_eq!(records.records(now).unwrap().len(), 1);
        // Once expired it is neither served nor kept.
        assert!(records.get(&record_key, now + 61).unwrap().is_none());
        assert_eq!(records.expire(now + 61).unwrap(), 1);
        assert!(records.records(now).unwrap().is_empty());
    }

    fn identity_record(name: &str, key: &PrivateKey, expires: i64) -> Record {
        let user: common::id::UserId = format!("{name}@id-a").parse().unwrap();
        let identity = SignedIdentity::sign(
            IdentityDocument {
                user_id: user.clone(),
                master_key: key.public_key().clone(),
                endpoints: vec![],
                revision: 1,
                created_unix: 1,
            },
            key,
        )
        .unwrap();
        let envelope = Record::seal(
            key,
            &RecordKey::identity(user),
            1,
            expires,
            identity.to_proto().encode_to_vec(),
        )
        .unwrap();
        Record::verify(envelope.to_proto(), common::unix_now(), None).unwrap()
    }

    #[test]
    fn the_cap_counts_held_records_and_expired_ones_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate(2048).unwrap();
        let now = common::unix_now();
        let mut records = StoredRecords::new(Store::open(dir.path()).unwrap(), 2);
        records
            .put(identity_record("alice", &key, now + 30), now)
            .unwrap();
        let bob = identity_record("bob", &key, now + 600);
        records.put(bob.clone(), now).unwrap();
        assert_eq!(records.len(), 2);
        // A record already held needs no room.
        assert_eq!(records.put(bob, now).unwrap(), PutOutcome::Unchanged);
        assert!(matches!(
            records.put(identity_record("carol", &key, now + 600), now),
            Err(Error::StoreFull { max: 2 })
        ));
        assert_eq!(records.len(), 2);
        // Once alice's record has expired, carol's takes its place.
        records
            .put(identity_record("carol", &key, now + 600), now + 60)
            .unwrap();
        assert_eq!(records.len(), 2);
        records
            .remove(&RecordKey::identity("bob@id-a".parse().unwrap()))
            .unwrap();
        assert_eq!(records.len(), 1);
        // The count is read back on open.
        drop(records);
        let records = StoredRecords::new(Store::open(dir.path()).unwrap(), 2);
        assert_eq!(records.len(), 1);
    }
}
