//! The DHT's record store on a supplier: records kept in RocksDB (through
//! [`Store`]) so they survive restarts and keep being republished.
//!
//! Each value is the signer's node ID (32 bytes) followed by the record's
//! envelope, so a record is verified again, against that signer, when it is
//! read back. Which records are held, by whom they are signed, and whether
//! this supplier vouches for the signer is kept in memory ([`Occupancy`]),
//! rebuilt at open, so that the cap and the choice of what gives way need no
//! scan of the column family.

use common::id::NodeId;
use dht::Error;
use dht::Key;
use dht::record::{
    Occupancy, PutOutcome, Record, RecordKey, RecordStore, Standing, check_replacement,
};
use dht::signer::Unresolved;
use prost::Message;
use tracing::{debug, warn};

use crate::store::{Store, StoreError, WeakStore};

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

/// The node ID `store` knows for `user`: a customer's, else a hosted
/// identity's. A hosted identity that no longer parses is an error, not
/// "unknown": the DHT's word must not stand in for it.
fn known_signer(store: &Store, user: &str) -> Result<Option<NodeId>, Unresolved> {
    let database = |error: StoreError| Unresolved::new(format!("supplier database: {error}"));
    if let Some(node) = store.customer(user).map_err(database)? {
        return Ok(Some(node));
    }
    store
        .identity(user)
        .map_err(database)?
        .map(|bytes| {
            common::identity::SignedIdentity::from_bytes(&bytes)
                .map(|identity| identity.document().node_id())
                .map_err(|e| Unresolved::new(format!("the hosted identity of {user}: {e}")))
        })
        .transpose()
}

/// Whether `signer` is the key `user` holds a contract under here. Only
/// customers are vouched for: anyone may publish names on an identity host
/// for free, so a hosted name earns no room in the DHT store.
fn is_customer(store: &Store, user: &str, signer: NodeId) -> Result<bool, StoreError> {
    Ok(store.customer(user)? == Some(signer))
}

impl dht::signer::SignerResolver for KnownSigners {
    fn resolve<'a>(&'a self, user: &'a common::id::UserId) -> dht::signer::Resolving<'a> {
        let store = self.store.upgrade();
        let user = user.to_string();
        Box::pin(async move {
            let Some(store) = store else {
                return Err(Unresolved::new("the supplier is shutting down"));
            };
            store
                .run(move |store| Ok::<_, StoreError>(known_signer(store, &user)))
                .await
                .map_err(|error| Unresolved::new(format!("supplier database: {error}")))?
        })
    }

    fn vouches<'a>(
        &'a self,
        user: &'a common::id::UserId,
        signer: NodeId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        let store = self.store.upgrade();
        let user = user.to_string();
        Box::pin(async move {
            let Some(store) = store else {
                return false;
            };
            store
                .run(move |store| is_customer(store, &user, signer))
                .await
                .unwrap_or(false)
        })
    }
}

/// Records kept in the supplier's database, at most `cap`.
#[derive(Debug)]
pub struct StoredRecords {
    store: Store,
    occupancy: Occupancy,
}

impl StoredRecords {
    /// Records in `store`, held by the node at `local`, at most `cap` of
    /// them. Reads every record once (blocking: call it off the async
    /// runtime): expired and unreadable ones are removed, and a record is
    /// vouched for when its signer is a customer's.
    pub fn new(store: Store, local: Key, cap: usize) -> Result<Self, StoreError> {
        let mut occupancy = Occupancy::new(local, cap);
        let now_unix = common::unix_now();
        let mut gone = Vec::new();
        store.for_each_record(|key, bytes| {
            let record = match decode(bytes, now_unix) {
                Ok(Some(record)) => record,
                Ok(None) => {
                    gone.push(key.to_owned());
                    return true;
                }
                // Stored when this machine's clock was ahead (it has gone
                // back since): kept, counted and swept at its expiry, but
                // not served until the clock catches up.
                Err(error @ Error::ExpiryTooFar { expires_unix, .. }) => {
                    warn!(%key, %error, "DHT record from the future: check the clock");
                    match decode(bytes, expires_unix - dht::record::MAX_TTL_SECS) {
                        Ok(Some(record)) => record,
                        _ => {
                            gone.push(key.to_owned());
                            return true;
                        }
                    }
                }
                Err(error) => {
                    warn!(%key, %error, "unreadable DHT record removed");
                    gone.push(key.to_owned());
                    return true;
                }
            };
            let customer = is_customer(&store, &record.key().user().to_string(), record.signer())
                .unwrap_or_else(|error| {
                    warn!(key = %record.key(), %error, "cannot tell whether a DHT record is a customer's");
                    false
                });
            let standing = if customer {
                Standing::Vouched
            } else {
                Standing::Stranger
            };
            occupancy.insert(&record, standing, &[]);
            true
        })?;
        for key in gone {
            store.remove_record(&key)?;
        }
        Ok(Self { store, occupancy })
    }

    fn load(&self, key: &str, now_unix: i64) -> Result<Option<Record>, Error> {
        let Some(bytes) = self.store.record(key).map_err(store_error)? else {
            return Ok(None);
        };
        match decode(&bytes, now_unix) {
            // Stored when this machine's clock was ahead: not served until
            // the clock catches up, and replaceable meanwhile.
            Err(Error::ExpiryTooFar { .. }) => Ok(None),
            other => other,
        }
    }

    /// Takes the vouched standing from the records of customers whose
    /// contracts have ended: they are strangers from now on.
    fn demote_former_customers(&mut self) -> Result<(), Error> {
        for (key, signer) in self.occupancy.vouched() {
            let user = key.user().to_string();
            if !is_customer(&self.store, &user, signer).map_err(store_error)? {
                debug!(%key, "DHT record no longer vouched for: its contract ended");
                self.occupancy.demote(&key);
            }
        }
        Ok(())
    }

    /// Records held, expired ones included until [`RecordStore::expire`]
    /// removes them.
    pub fn len(&self) -> usize {
        self.occupancy.len()
    }

    /// Whether no records are held.
    pub fn is_empty(&self) -> bool {
        self.occupancy.is_empty()
    }
}

fn store_error(e: StoreError) -> Error {
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

    fn put(
        &mut self,
        record: Record,
        standing: Standing,
        now_unix: i64,
    ) -> Result<PutOutcome, Error> {
        let key = record.key().to_string();
        let stored = self.load(&key, now_unix)?;
        let outcome = check_replacement(stored.as_ref(), &record, now_unix)?;
        if outcome == PutOutcome::Unchanged {
            // The record may have become vouched for since.
            self.occupancy.insert(&record, standing, &[]);
            return Ok(outcome);
        }
        if self.occupancy.len() >= self.occupancy.cap() {
            // Only current customers may hold places no one can take:
            // contracts released since the last sweep count no more.
            self.demote_former_customers()?;
        }
        let evict = self.occupancy.admit(&record, standing, now_unix)?;
        let names: Vec<String> = evict.iter().map(ToString::to_string).collect();
        self.store
            .put_record(&key, &encode(&record), &names)
            .map_err(store_error)?;
        if !evict.is_empty() {
            debug!(evicted = evict.len(), key = %record.key(), "DHT records removed to make room");
        }
        self.occupancy.insert(&record, standing, &evict);
        Ok(outcome)
    }

    fn remove(&mut self, key: &RecordKey) -> Result<Option<Record>, Error> {
        let old = self
            .store
            .remove_record(&key.to_string())
            .map_err(store_error)?;
        self.occupancy.remove(key);
        Ok(old.and_then(|bytes| decode(&bytes, common::unix_now()).ok().flatten()))
    }

    fn expire(&mut self, now_unix: i64) -> Result<usize, Error> {
        let expired = self.occupancy.expired(now_unix);
        for key in &expired {
            self.store
                .remove_record(&key.to_string())
                .map_err(store_error)?;
            self.occupancy.remove(key);
        }
        self.demote_former_customers()?;
        Ok(expired.len())
    }

    fn records(&self, now_unix: i64) -> Result<Vec<Record>, Error> {
        let mut out = Vec::new();
        let cap = self.occupancy.cap();
        self.store
            .for_each_record(|_, bytes| {
                if let Ok(Some(record)) = decode(bytes, now_unix) {
                    out.push(record);
                }
                out.len() < cap
            })
            .map_err(store_error)?;
        Ok(out)
    }

    fn live(&self, now_unix: i64) -> usize {
        // Records kept from a clock that ran ahead count until they expire.
        self.occupancy.live(now_unix)
    }
}

#[cfg(test)]
mod tests {
    use common::crypto::PrivateKey;
    use common::identity::{IdentityDocument, SignedIdentity};

    use super::*;

    /// Where the tests' node sits.
    const LOCAL: Key = Key::from_array([0; 32]);

    /// How many records the database holds, whether counted or not.
    fn stored(records: &StoredRecords) -> usize {
        let mut count = 0;
        records
            .store
            .for_each_record(|_, _| {
                count += 1;
                true
            })
            .unwrap();
        count
    }

    fn open(dir: &std::path::Path, cap: usize) -> StoredRecords {
        StoredRecords::new(Store::open(dir).unwrap(), LOCAL, cap).unwrap()
    }

    #[test]
    fn records_survive_a_reopen_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate(2048).unwrap();
        let record_key = RecordKey::identity("alice@id-a".parse().unwrap());
        let now = common::unix_now();
        let record = identity_record("alice", &key, now + 60);
        {
            let mut records = open(dir.path(), 10);
            assert_eq!(
                records
                    .put(record.clone(), Standing::Stranger, now)
                    .unwrap(),
                PutOutcome::Inserted
            );
            assert_eq!(
                records.put(record, Standing::Stranger, now).unwrap(),
                PutOutcome::Unchanged
            );
        }
        let mut records = open(dir.path(), 10);
        let back = records.get(&record_key, now).unwrap().unwrap();
        assert_eq!(back.sequence(), 1);
        assert_eq!(records.records(now).unwrap().len(), 1);
        // Once expired it is neither served nor kept.
        assert!(records.get(&record_key, now + 61).unwrap().is_none());
        assert_eq!(records.expire(now + 61).unwrap(), 1);
        assert!(records.records(now).unwrap().is_empty());
        assert_eq!(stored(&records), 0);
    }

    fn identity(name: &str, key: &PrivateKey) -> SignedIdentity {
        SignedIdentity::sign(
            IdentityDocument {
                user_id: format!("{name}@id-a").parse().unwrap(),
                master_key: key.public_key().clone(),
                endpoints: vec![],
                revision: 1,
                created_unix: 1,
            },
            key,
        )
        .unwrap()
    }

    fn identity_record(name: &str, key: &PrivateKey, expires: i64) -> Record {
        let identity = identity(name, key);
        let envelope = Record::seal(
            key,
            &RecordKey::identity(identity.document().user_id.clone()),
            1,
            expires,
            identity.to_proto().encode_to_vec(),
        )
        .unwrap();
        Record::verify(envelope.to_proto(), common::unix_now(), None).unwrap()
    }

    /// A key for `name@id-a`, who now holds a contract in `store`.
    fn customer(store: &Store, name: &str) -> PrivateKey {
        let key = PrivateKey::generate(2048).unwrap();
        let node = key.public_key().node_id();
        store
            .hire(&node, &format!("{name}@id-a"), b"key", 1 << 20, 1 << 30)
            .unwrap();
        key
    }

    #[test]
    fn the_cap_counts_held_records_and_expired_ones_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let now = common::unix_now();
        let vouched = Standing::Vouched;
        let mut records = open(dir.path(), 2);
        let [alice, bob, carol] =
            ["alice", "bob", "carol"].map(|name| customer(&records.store, name));
        records
            .put(identity_record("alice", &alice, now + 30), vouched, now)
            .unwrap();
        let bob = identity_record("bob", &bob, now + 600);
        records.put(bob.clone(), vouched, now).unwrap();
        assert_eq!(records.len(), 2);
        // A record already held needs no room.
        assert_eq!(
            records.put(bob, vouched, now).unwrap(),
            PutOutcome::Unchanged
        );
        let carol = identity_record("carol", &carol, now + 600);
        assert!(matches!(
            records.put(carol.clone(), vouched, now),
            Err(Error::StoreFull { max: 2 })
        ));
        assert_eq!(records.len(), 2);
        // Once alice's record has expired, carol's takes its place.
        records.put(carol, vouched, now + 60).unwrap();
        assert_eq!(records.len(), 2);
        records
            .remove(&RecordKey::identity("bob@id-a".parse().unwrap()))
            .unwrap();
        assert_eq!(records.len(), 1);
        // The count is read back on open.
        drop(records);
        let records = open(dir.path(), 2);
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn a_customers_record_is_vouched_for_after_a_reopen_and_never_gives_way() {
        let dir = tempfile::tempdir().unwrap();
        let now = common::unix_now();
        let stranger = PrivateKey::generate(2048).unwrap();
        let hosted = identity_record("hosted", &stranger, now + 600);
        let first = identity_record("stranger1", &stranger, now + 600);
        let theirs = {
            let store = Store::open(dir.path()).unwrap();
            // `customer@id-a` holds a contract here; `hosted@id-a` only
            // published its name on this identity host, which is free.
            let theirs = identity_record("customer", &customer(&store, "customer"), now + 600);
            store
                .update_identity("hosted@id-a", |_| {
                    Ok::<_, ()>(Some(identity("hosted", &stranger).to_bytes()))
                })
                .unwrap()
                .unwrap();
            let mut records = StoredRecords::new(store, LOCAL, 3).unwrap();
            // Stored before this supplier knew better, as strangers'.
            for record in [&theirs, &hosted, &first] {
                records
                    .put(record.clone(), Standing::Stranger, now)
                    .unwrap();
            }
            theirs
        };
        let mut records = open(dir.path(), 3);
        // The reopened store knows its customer: new customers' records
        // take the strangers' places (the hosted name's among them), never
        // the first customer's...
        let newcomers: Vec<Record> = ["second", "third"]
            .iter()
            .map(|name| identity_record(name, &customer(&records.store, name), now + 600))
            .collect();
        for offered in &newcomers {
            records
                .put(offered.clone(), Standing::Vouched, now)
                .unwrap();
            assert!(records.get(theirs.key(), now).unwrap().is_some());
            assert_eq!(records.len(), 3);
        }
        assert!(records.get(hosted.key(), now).unwrap().is_none());
        assert!(records.get(first.key(), now).unwrap().is_none());
        // ...and with no stranger left to give way, the store is full.
        assert!(matches!(
            records.put(hosted.clone(), Standing::Stranger, now),
            Err(Error::StoreFull { max: 3 })
        ));
        // The evicted records are gone from the database too.
        drop(records);
        let records = open(dir.path(), 3);
        assert!(records.get(first.key(), now).unwrap().is_none());
        assert!(records.get(hosted.key(), now).unwrap().is_none());
        for kept in [&theirs, &newcomers[0], &newcomers[1]] {
            assert!(records.get(kept.key(), now).unwrap().is_some());
        }
        assert_eq!(stored(&records), 3);
    }

    #[test]
    fn the_resolver_vouches_for_customers_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (customer, hosted) = (
            PrivateKey::generate(2048).unwrap(),
            PrivateKey::generate(2048).unwrap(),
        );
        let customer_node = customer.public_key().node_id();
        let hosted_node = hosted.public_key().node_id();
        store
            .hire(&customer_node, "customer@id-a", b"key", 1 << 20, 1 << 30)
            .unwrap();
        store
            .update_identity("hosted@id-a", |_| {
                Ok::<_, ()>(Some(identity("hosted", &hosted).to_bytes()))
            })
            .unwrap()
            .unwrap();
        let signers = KnownSigners::new(&store);
        let user = |name: &str| -> common::id::UserId { name.parse().unwrap() };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use dht::signer::SignerResolver;
            // Both names resolve, so both users' records can be checked...
            assert_eq!(
                signers.resolve(&user("customer@id-a")).await,
                Ok(Some(customer_node))
            );
            assert_eq!(
                signers.resolve(&user("hosted@id-a")).await,
                Ok(Some(hosted_node))
            );
            assert_eq!(signers.resolve(&user("nobody@id-a")).await, Ok(None));
            // ...but only the customer, under its own key, is vouched for.
            assert!(signers.vouches(&user("customer@id-a"), customer_node).await);
            assert!(!signers.vouches(&user("customer@id-a"), hosted_node).await);
            assert!(!signers.vouches(&user("hosted@id-a"), hosted_node).await);
            assert!(!signers.vouches(&user("nobody@id-a"), hosted_node).await);
            // A closed database cannot say who is pinned: an error, never
            // "nobody", so the node cannot fall back to the DHT's word.
            drop(store);
            let closed = signers.resolve(&user("customer@id-a")).await;
            assert!(
                matches!(&closed, Err(e) if e.reason.contains("shutting down")),
                "{closed:?}"
            );
            assert!(!signers.vouches(&user("customer@id-a"), customer_node).await);
        });
    }

    #[test]
    fn a_customer_who_left_is_a_stranger_as_soon_as_room_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let now = common::unix_now();
        let (customer, stranger) = (
            PrivateKey::generate(2048).unwrap(),
            PrivateKey::generate(2048).unwrap(),
        );
        let node = customer.public_key().node_id();
        let store = Store::open(dir.path()).unwrap();
        store
            .hire(&node, "customer@id-a", b"key", 1 << 20, 1 << 30)
            .unwrap();
        let mut records = StoredRecords::new(store.clone(), LOCAL, 1).unwrap();
        let theirs = identity_record("customer", &customer, now + 600);
        records.put(theirs.clone(), Standing::Vouched, now).unwrap();
        let newcomer = identity_record("stranger1", &stranger, now + 600);
        records.expire(now).unwrap();
        assert!(matches!(
            records.put(newcomer.clone(), Standing::Vouched, now),
            Err(Error::StoreFull { max: 1 })
        ));
        // No sweep in between: the full store asks the contracts again.
        store.release(&node).unwrap();
        records
            .put(newcomer.clone(), Standing::Vouched, now)
            .unwrap();
        assert!(records.get(theirs.key(), now).unwrap().is_none());
    }

    #[test]
    fn a_lowered_cap_is_reached_again_as_records_come_in() {
        let dir = tempfile::tempdir().unwrap();
        let now = common::unix_now();
        let key = PrivateKey::generate(2048).unwrap();
        {
            let mut records = open(dir.path(), 3);
            for name in ["stranger1", "stranger2", "stranger3"] {
                records
                    .put(
                        identity_record(name, &key, now + 600),
                        Standing::Stranger,
                        now,
                    )
                    .unwrap();
            }
        }
        let mut records = open(dir.path(), 2);
        assert_eq!(records.len(), 3);
        let vouched = identity_record("customer", &key, now + 600);
        records
            .put(vouched.clone(), Standing::Vouched, now)
            .unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(stored(&records), 2);
        assert!(records.get(vouched.key(), now).unwrap().is_some());
    }

    #[test]
    fn a_record_from_a_clock_that_ran_ahead_is_kept_counted_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let now = common::unix_now();
        let ahead = now + 3 * 24 * 3600;
        let key = PrivateKey::generate(2048).unwrap();
        let identity = identity("customer", &key);
        let wire = Record::seal(
            &key,
            &RecordKey::identity(identity.document().user_id.clone()),
            1,
            ahead + 600,
            identity.to_proto().encode_to_vec(),
        )
        .unwrap()
        .to_proto();
        let record = Record::verify(wire, ahead, None).unwrap();
        // Stored while this machine's clock was three days ahead.
        open(dir.path(), 10)
            .put(record.clone(), Standing::Stranger, ahead)
            .unwrap();
        // Back to the right time: kept and counted, but not served.
        let mut records = open(dir.path(), 10);
        assert_eq!(records.len(), 1);
        assert_eq!(records.live(now), 1);
        assert!(records.get(record.key(), now).unwrap().is_none());
        assert!(records.records(now).unwrap().is_empty());
        assert!(records.get(record.key(), ahead).unwrap().is_some());
        // Swept once it has expired.
        assert_eq!(records.expire(ahead + 600).unwrap(), 1);
        assert_eq!(stored(&records), 0);
    }
}
