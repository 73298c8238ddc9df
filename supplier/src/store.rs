//! The supplier's storage engine: RocksDB, and the only module that knows it.
//!
//! Column families are declared once, in [`Cf`]; key encodings are the
//! functions in [`keys`], with round-trip tests. Fragment payloads live in a
//! BlobDB column family, uncompressed (they are ciphertext); everything else
//! is small and lz4-compressed.
//!
//! Every change is one `WriteBatch` under one writer lock, so a check (quota,
//! staged hashes) and the write it guards are atomic, and a crash leaves
//! either the whole change or none of it. Batches are written with WAL fsync,
//! except staged fragments, which become durable with the synced commit that
//! names them.
//! `docs/design/storage.md` spells out the crash semantics. All calls block:
//! async callers go through [`Store::run`], which moves them onto the
//! blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use common::digest::{FragmentDigest, FragmentHash};
use common::id::NodeId;
use prost::Message;
use rocksdb::{
    BottommostLevelCompaction, ColumnFamilyDescriptor, CompactOptions, DB, DBCompressionType,
    Direction, FlushOptions, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};
use tokio::sync::Notify;

/// A storage failure or a refused change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// RocksDB reported an error.
    #[error("database: {0}")]
    Db(String),
    /// A stored value does not decode.
    #[error("stored value is damaged: {0}")]
    Damaged(String),
    /// A blocking task died.
    #[error("storage task failed: {0}")]
    Task(String),
    /// The customer's quota would be exceeded.
    #[error("quota exceeded: {used} of {quota} bytes used, {needed} more needed")]
    QuotaExceeded {
        /// Bytes in use.
        used: u64,
        /// The contract's quota.
        quota: u64,
        /// Bytes the change needs.
        needed: u64,
    },
    /// The supplier's capacity would be exceeded.
    #[error("supplier is full: {needed} more bytes needed, {free} free")]
    Full {
        /// Bytes the change needs.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// The supplier has as many customers as its operator allows.
    #[error("supplier takes no more customers (limit {max})")]
    NoMoreCustomers {
        /// The operator's limit.
        max: usize,
    },
    /// The disk the database lives on is nearly full: writing would eat
    /// into the room kept free for the database's own work.
    #[error(
        "supplier disk is nearly full: {} needed, {} free on disk, {} kept free for the database",
        bytesize::ByteSize::b(*.needed),
        bytesize::ByteSize::b(*.free),
        bytesize::ByteSize::b(*.reserve)
    )]
    DiskFull {
        /// Bytes the change needs.
        needed: u64,
        /// Bytes free on the file system, for unprivileged users.
        free: u64,
        /// Bytes the supplier keeps free.
        reserve: u64,
    },
    /// No contract for this customer.
    #[error("no contract for this customer")]
    NoContract,
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        Self::Db(e.into_string())
    }
}

impl From<prost::DecodeError> for StoreError {
    fn from(e: prost::DecodeError) -> Self {
        Self::Damaged(e.to_string())
    }
}

/// The column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// Owner node ID → [`Contract`].
    Contracts,
    /// `user@idhost` → owner node ID.
    Customers,
    /// Location → [`FragmentMeta`] of each fragment, staged or committed.
    FragmentMeta,
    /// Fragment key → payload (BlobDB).
    Fragments,
    /// Identity documents hosted here: `user@idhost` → envelope bytes.
    Identities,
    /// Location → registered share key ([`KeyRecord`]).
    Keys,
    /// Recipient node ID, time, id → mailbox message.
    Mailbox,
    /// Manifest key → signed manifest (protobuf).
    Manifests,
    /// Node metadata (schema version).
    Meta,
    /// DHT records.
    Records,
}

impl Cf {
    const ALL: [Cf; 10] = [
        Cf::Contracts,
        Cf::Customers,
        Cf::FragmentMeta,
        Cf::Fragments,
        Cf::Identities,
        Cf::Keys,
        Cf::Mailbox,
        Cf::Manifests,
        Cf::Meta,
        Cf::Records,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Contracts => "contracts",
            Self::Customers => "customers",
            Self::FragmentMeta => "fragment_meta",
            Self::Fragments => "fragments",
            Self::Identities => "identities",
            Self::Keys => "keys",
            Self::Mailbox => "mailbox",
            Self::Manifests => "manifests",
            Self::Meta => "meta",
            Self::Records => "records",
        }
    }

    fn options(self) -> Options {
        let mut opts = Options::default();
        if self == Cf::Fragments {
            // Fragments are ciphertext: compression would only cost CPU.
            opts.set_compression_type(DBCompressionType::None);
            opts.set_enable_blob_files(true);
            opts.set_min_blob_size(4096);
            opts.set_blob_compression_type(DBCompressionType::None);
            // Garbage collection during every compaction relocates the live
            // blobs of the oldest files even when nothing was deleted, which
            // doubled the CPU of large uploads. Blob files whose fragments
            // are all deleted are still dropped.
            opts.set_enable_blob_gc(false);
        } else {
            opts.set_compression_type(DBCompressionType::Lz4);
        }
        opts
    }
}

/// A customer's contract.
#[derive(Clone, PartialEq, Message)]
pub struct Contract {
    /// `user@idhost`.
    #[prost(string, tag = "1")]
    pub user_id: String,
    /// The customer's master key, SPKI DER.
    #[prost(bytes = "vec", tag = "2")]
    pub master_key: Vec<u8>,
    /// Bytes the customer may store.
    #[prost(uint64, tag = "3")]
    pub quota_bytes: u64,
    /// Bytes stored, staged and committed.
    #[prost(uint64, tag = "4")]
    pub used_bytes: u64,
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "5")]
    pub created_unix: i64,
}

/// A registered share key.
#[derive(Clone, PartialEq, Message)]
pub struct KeyRecord {
    /// SPKI DER.
    #[prost(bytes = "vec", tag = "1")]
    pub public_key: Vec<u8>,
    /// Key epoch.
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// Seconds since the Unix epoch.
    #[prost(int64, tag = "3")]
    pub registered_unix: i64,
}

/// What the store knows of a fragment besides its payload.
#[derive(Clone, PartialEq, Message)]
pub struct FragmentMeta {
    /// Whether a committed manifest claims it.
    #[prost(bool, tag = "1")]
    pub committed: bool,
    /// When it was staged, seconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub staged_unix: i64,
    /// Payload size.
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// Digest of the payload, with `hash`.
    #[prost(bytes = "vec", tag = "4")]
    pub digest: Vec<u8>,
    /// The digest's algorithm (`silt.storage.v1.FragmentHash`); records
    /// from before BLAKE3 lack it and read as SHA-256.
    #[prost(int32, tag = "5")]
    pub hash: i32,
}

impl FragmentMeta {
    /// The record of a fragment just staged.
    fn staged(size: u64, digest: FragmentDigest) -> Self {
        Self {
            committed: false,
            staged_unix: common::unix_now(),
            size,
            digest: digest.value.to_vec(),
            hash: digest.hash.to_wire(),
        }
    }

    /// The recorded digest; a record that names no known algorithm or
    /// holds a digest of the wrong length is damaged.
    pub fn digest(&self) -> Result<FragmentDigest, StoreError> {
        Ok(FragmentDigest {
            hash: FragmentHash::from_wire(self.hash)
                .map_err(|e| StoreError::Damaged(format!("fragment record: {e}")))?,
            value: self.digest.as_slice().try_into().map_err(|_| {
                StoreError::Damaged("fragment record: digest is not 32 bytes".into())
            })?,
        })
    }
}

/// Whether files in `dir` can be opened with `O_DIRECT`. Some file systems
/// refuse it (tmpfs before Linux 6.6, some FUSE and network file systems),
/// and RocksDB would then fail its flushes. Creates `dir`.
fn direct_io_works(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(".direct-io-probe");
    let works = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    if !works {
        tracing::info!(dir = %dir.display(), "no direct I/O here: flushes and reads go through the page cache");
    }
    works
}

/// Bytes free on the file system holding `dir`, for unprivileged users
/// (what RocksDB can write: root's reserved blocks do not count).
pub fn disk_free(dir: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(dir)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Key encodings. Every key that belongs to a customer starts with the
/// owner's node ID, so a customer's data is one key range per column family.
pub mod keys {
    use common::id::NodeId;

    /// A location: owner node ID, alias length, alias.
    pub fn location(owner: &NodeId, alias: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(33 + alias.len());
        key.extend_from_slice(owner.as_bytes());
        // Aliases are at most 50 bytes (common::id::Alias), so this fits.
        key.push(u8::try_from(alias.len()).unwrap_or(u8::MAX));
        key.extend_from_slice(alias.as_bytes());
        key
    }

    /// An object in a location.
    pub fn object(location: &[u8], object_id: &[u8; 32]) -> Vec<u8> {
        [location, object_id].concat()
    }

    /// A version of an object: where its manifest lives.
    pub fn manifest(location: &[u8], object_id: &[u8; 32], version: u64) -> Vec<u8> {
        [location, object_id, &version.to_be_bytes()].concat()
    }

    /// One fragment: a position of a block of a version.
    pub fn fragment(
        location: &[u8],
        object_id: &[u8; 32],
        version: u64,
        block: u64,
        position: u32,
    ) -> Vec<u8> {
        [
            location,
            object_id,
            &version.to_be_bytes(),
            &block.to_be_bytes(),
            &position.to_be_bytes(),
        ]
        .concat()
    }

    /// The key of the version a fragment key belongs to (its manifest key):
    /// the fragment key without block and position.
    pub fn version_of_fragment(key: &[u8]) -> &[u8] {
        key.get(..key.len().saturating_sub(8 + 4))
            .unwrap_or_default()
    }

    /// Splits a manifest key into its location, object ID and version.
    pub fn split_manifest(key: &[u8]) -> Option<(&[u8], [u8; 32], u64)> {
        let location_len = 33 + usize::from(*key.get(32)?);
        let location = key.get(..location_len)?;
        let object = key.get(location_len..location_len + 32)?.try_into().ok()?;
        let version = u64::from_be_bytes(key.get(location_len + 32..)?.try_into().ok()?);
        Some((location, object, version))
    }

    /// A mailbox message: recipient, arrival time in nanoseconds, a random id.
    pub fn mailbox(recipient: &NodeId, nanos: u64, id: u64) -> Vec<u8> {
        [
            recipient.as_bytes().as_slice(),
            &nanos.to_be_bytes(),
            &id.to_be_bytes(),
        ]
        .concat()
    }

    /// The first key after every key starting with `prefix`, if there is one.
    pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                return Some(end);
            }
        }
        None
    }
}

const SCHEMA_KEY: &[u8] = b"schema";
const SCHEMA_VERSION: &[u8] = b"1";

/// Staged fragments at least this large skip the WAL: writing them there
/// and again at flush doubled the disk traffic of large uploads. A commit
/// makes them durable before it names them (see [`Store::commit`]).
const UNLOGGED_MIN_BYTES: usize = 256 * 1024;
/// A commit whose unlogged fragments add up to at most this much writes
/// them again, through the WAL, in its own batch; above it, the commit
/// flushes the memtables instead. Keeps medium files from making a tiny
/// flush (and tiny blob file) each.
const REWRITE_MAX_BYTES: u64 = 4 << 20;
/// Unlogged fragments remembered before a stage flushes them all anyway.
const MAX_UNLOGGED: usize = 16_384;

/// A write batch that holds one fragment's payload, and its size.
struct PayloadBatch {
    batch: WriteBatch,
    size: usize,
}

/// A staged fragment's key and size.
type Unclaimed = (Box<[u8]>, u64);

/// The owner a customer key starts with.
fn owner_of(key: &[u8]) -> Result<NodeId, StoreError> {
    NodeId::from_slice(key.get(..32).unwrap_or_default())
        .map_err(|e| StoreError::Damaged(e.to_string()))
}

/// A raw key and value from a scan.
type RawEntry = (Box<[u8]>, Box<[u8]>);

/// A page of manifests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Encoded signed manifests, in key order.
    pub manifests: Vec<Vec<u8>>,
    /// The key of the last manifest returned, to resume after.
    pub last: Option<Vec<u8>>,
    /// Whether the page stopped at its count or size limit, so that more
    /// may follow `last`.
    pub more: bool,
}

/// A message waiting in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// Its key, which is also its ID.
    pub key: Vec<u8>,
    /// The encoded `MailboxMessage`.
    pub message: Vec<u8>,
}

/// A committed fragment as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFragment {
    /// The payload.
    pub payload: Vec<u8>,
    /// Its digest, checked on this read.
    pub digest: FragmentDigest,
}

/// A commit the store should make atomically.
#[derive(Debug)]
pub struct Commit {
    /// The owner.
    pub owner: NodeId,
    /// Location key ([`keys::location`]).
    pub location: Vec<u8>,
    /// The object.
    pub object_id: [u8; 32],
    /// The version.
    pub version: u64,
    /// The signed manifest, encoded.
    pub manifest: Vec<u8>,
    /// Expected digest of this position's fragment of each block.
    pub fragments: Vec<(u64, u32, FragmentDigest)>,
    /// How many versions to keep.
    pub keep_versions: usize,
}

/// A fragment that came with its commit, checked against the manifest.
#[derive(Debug)]
pub struct Carried {
    /// Its key ([`keys::fragment`]).
    pub key: Vec<u8>,
    /// The payload.
    pub payload: prost::bytes::Bytes,
    /// The payload's digest.
    pub digest: FragmentDigest,
}

/// Why a commit was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitRefusal {
    /// A fragment the manifest claims was not staged.
    #[error("fragment of block {block} at position {position} was not uploaded")]
    Missing {
        /// Block index.
        block: u64,
        /// Supplier position.
        position: u32,
    },
    /// A staged fragment's hash differs from the manifest's.
    #[error("fragment of block {block} at position {position} does not match the manifest's hash")]
    HashMismatch {
        /// Block index.
        block: u64,
        /// Supplier position.
        position: u32,
    },
    /// This version is already committed with another manifest.
    #[error("version {0} is already committed")]
    VersionExists(u64),
}

/// What a commit or delete changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Versions whose manifests were removed.
    pub versions: Vec<u64>,
    /// Bytes freed.
    pub bytes: u64,
}

/// The database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// Serialises every change, so checks and writes are atomic together,
    /// and holds the totals those checks need.
    write_lock: Arc<Mutex<Ledger>>,
    disk: Arc<Disk>,
    /// Signalled when deletes leave garbage to reclaim.
    garbage: Arc<Notify>,
}

/// The file system under the database, and how much of it stays free.
#[derive(Debug)]
struct Disk {
    dir: PathBuf,
    reserve: u64,
}

/// What [`Store::open`] keeps free on the database's disk by default.
pub const DEFAULT_MIN_FREE_DISK: u64 = 256 << 20;

/// Totals kept in memory so that checks do not scan the database. Computed
/// when the store opens and changed only under the write lock, after the
/// batch that changes the stored figures has been written.
#[derive(Debug, Default)]
struct Ledger {
    /// The sum of every contract's `used_bytes`.
    used_bytes: u64,
    /// How many fragments are committed, for metrics.
    committed_fragments: u64,
    /// Staged fragments written without the WAL and perhaps not yet
    /// flushed, with their sizes. Cleared by every flush this store makes;
    /// memtable flushes RocksDB makes on its own are not seen, so this
    /// over-approximates, which is safe.
    unlogged: HashMap<Vec<u8>, u64>,
    /// Bytes deleted since the last [`Store::reclaim`]: still on disk until
    /// a compaction drops them.
    garbage_bytes: u64,
}

/// A handle that does not keep the database open.
#[derive(Clone)]
pub struct WeakStore {
    db: std::sync::Weak<DB>,
    write_lock: std::sync::Weak<Mutex<Ledger>>,
    disk: Arc<Disk>,
    garbage: Arc<Notify>,
}

impl WeakStore {
    /// The store, if it is still open.
    pub fn upgrade(&self) -> Option<Store> {
        Some(Store {
            db: self.db.upgrade()?,
            write_lock: self.write_lock.upgrade()?,
            disk: self.disk.clone(),
            garbage: self.garbage.clone(),
        })
    }
}

impl std::fmt::Debug for WeakStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakStore").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens or creates the database in `dir`, keeping
    /// [`DEFAULT_MIN_FREE_DISK`] free on its disk.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, DEFAULT_MIN_FREE_DISK)
    }

    /// Opens or creates the database in `dir`. New fragments and mailbox
    /// messages are refused while they would leave less than `min_free_disk`
    /// bytes free on its file system: RocksDB needs room to flush and
    /// compact, and deletes, commits and contract changes need room to be
    /// written, so that a customer can free space on a full supplier.
    pub fn open_with(dir: &Path, min_free_disk: u64) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Flushes write every fragment a second time (after the WAL); through
        // the page cache that copy was a fifth of a supplier's CPU during
        // uploads. Reads of fragments through the page cache were copied
        // from it once more, and filled it with data read once; direct reads
        // halved a supplier's CPU in downloads. Small records are served
        // from RocksDB's block cache instead. Both where the file system
        // allows direct I/O.
        let direct = direct_io_works(dir);
        opts.set_use_direct_io_for_flush_and_compaction(direct);
        opts.set_use_direct_reads(direct);
        // Large staged fragments are written without the WAL, together with
        // their metadata and the contract's new total. Flushing every
        // family at once keeps those together across a crash.
        opts.set_atomic_flush(true);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf.options()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let store = Self {
            db: Arc::new(db),
            write_lock: Arc::default(),
            disk: Arc::new(Disk {
                dir: dir.to_owned(),
                reserve: min_free_disk,
            }),
            garbage: Arc::default(),
        };
        if store.get(Cf::Meta, SCHEMA_KEY)?.is_none() {
            let mut batch = WriteBatch::default();
            batch.put_cf(store.cf(Cf::Meta)?, SCHEMA_KEY, SCHEMA_VERSION);
            store.write(batch)?;
        }
        *store.lock() = store.reconcile_contracts()?;
        Ok(store)
    }

    /// Sets every contract's `used_bytes` to the sum of its fragments'
    /// sizes, and returns the ledger that follows. A crash can lose unlogged
    /// staged fragments while a later logged write kept a contract total
    /// that counted them; the fragments are the truth.
    fn reconcile_contracts(&self) -> Result<Ledger, StoreError> {
        let mut sizes: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut committed = 0;
        for item in self.scan(Cf::FragmentMeta, &[], None)? {
            let (key, value) = item?;
            let meta = FragmentMeta::decode(&*value)?;
            let owner = owner_of(&key)?;
            *sizes.entry(owner).or_default() += meta.size;
            committed += u64::from(meta.committed);
        }
        let mut batch = WriteBatch::default();
        let mut used_bytes = 0;
        for (owner, mut contract) in self.contracts()? {
            let actual = sizes.get(&owner).copied().unwrap_or(0);
            used_bytes += actual;
            if contract.used_bytes != actual {
                tracing::warn!(
                    customer = %contract.user_id,
                    recorded = contract.used_bytes,
                    actual,
                    "contract usage corrected from the stored fragments"
                );
                contract.used_bytes = actual;
                batch.put_cf(
                    self.cf(Cf::Contracts)?,
                    owner.as_bytes(),
                    contract.encode_to_vec(),
                );
            }
        }
        if !batch.is_empty() {
            self.write(batch)?;
        }
        // Deletes made before this start may not have been reclaimed: one
        // pass of Store::reclaim finds out.
        self.garbage.notify_one();
        Ok(Ledger {
            used_bytes,
            committed_fragments: committed,
            unlogged: HashMap::new(),
            garbage_bytes: 1,
        })
    }

    /// A handle for long-lived helpers that must not keep the database open
    /// after the node shuts down.
    pub fn downgrade(&self) -> WeakStore {
        WeakStore {
            db: Arc::downgrade(&self.db),
            write_lock: Arc::downgrade(&self.write_lock),
            disk: self.disk.clone(),
            garbage: self.garbage.clone(),
        }
    }

    /// Runs blocking store work on the blocking pool.
    pub async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn cf(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| StoreError::Db(format!("missing column family {}", cf.name())))
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf)?, key)?)
    }

    fn get_message<M: Message + Default>(
        &self,
        cf: Cf,
        key: &[u8],
    ) -> Result<Option<M>, StoreError> {
        self.get(cf, key)?
            .map(|bytes| M::decode(bytes.as_slice()).map_err(StoreError::from))
            .transpose()
    }

    /// Writes a batch durably: the WAL is synced before this returns.
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    /// Writes a batch to the WAL without waiting for the disk. Atomic like
    /// every batch, but a power loss may drop it; the next synced write
    /// makes it durable too, because the WAL is one ordered log and
    /// recovery replays a prefix of it. Used for staged fragments, which
    /// nobody can see until a synced commit names them.
    fn write_unsynced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        Ok(self.db.write_opt(batch, &WriteOptions::default())?)
    }

    /// Writes a batch to the memtables only. A crash loses it unless a
    /// flush came first; see [`UNLOGGED_MIN_BYTES`].
    fn write_unlogged(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    /// Flushes every family's memtable to disk and waits, making every
    /// unlogged write so far durable. Called with the write lock held, so
    /// no unlogged write races it.
    fn flush_unlogged(&self, ledger: &mut Ledger) -> Result<(), StoreError> {
        let cfs = Cf::ALL
            .iter()
            .map(|&cf| self.cf(cf))
            .collect::<Result<Vec<_>, _>>()?;
        let mut opts = FlushOptions::default();
        opts.set_wait(true);
        self.db.flush_cfs_opt(&cfs, &opts)?;
        ledger.unlogged.clear();
        Ok(())
    }

    /// Refuses a write of `needed` bytes that would leave less than the
    /// reserve free on the database's disk. What the memtables hold counts
    /// as written: the next flush writes it. A file system that cannot
    /// tell its free space is not checked: RocksDB's own error then
    /// answers.
    fn disk_room(&self, needed: u64) -> Result<(), StoreError> {
        let free = match self.disk_free() {
            Ok(free) => free,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the disk's free space");
                return Ok(());
            }
        };
        let reserve = self.disk.reserve;
        let pending = self.int_property(Cf::Fragments, "rocksdb.cur-size-all-mem-tables")?;
        if free < reserve.saturating_add(pending).saturating_add(needed) {
            return Err(StoreError::DiskFull {
                needed,
                free,
                reserve,
            });
        }
        Ok(())
    }

    /// Records `bytes` given back by a write just made: no longer charged,
    /// and garbage on disk until [`Store::reclaim`].
    fn freed(&self, ledger: &mut Ledger, bytes: u64) {
        if bytes == 0 {
            return;
        }
        ledger.used_bytes = ledger.used_bytes.saturating_sub(bytes);
        ledger.garbage_bytes = ledger.garbage_bytes.saturating_add(bytes);
        self.garbage.notify_one();
    }

    /// Waits until deletes have left garbage that [`Store::reclaim`] can
    /// give back to the disk.
    pub async fn garbage_left(&self) {
        self.garbage.notified().await;
    }

    /// Whether enough has been deleted since the last [`Store::reclaim`]
    /// for a pass to be worth its compaction: an eighth of what is stored
    /// (at least 16 MiB, at most 1 GiB), or anything at all once the disk
    /// is short of room. Compacting after every small delete would flush
    /// the memtables every second on a busy supplier.
    pub fn reclaim_due(&self) -> bool {
        let (garbage, used) = {
            let ledger = self.lock();
            (ledger.garbage_bytes, ledger.used_bytes)
        };
        if garbage == 0 {
            return false;
        }
        let threshold = (used / 8).clamp(16 << 20, 1 << 30);
        garbage >= threshold || self.disk_short()
    }

    /// Whether the room left above the reserve is small: below the larger
    /// of the reserve and 256 MiB.
    fn disk_short(&self) -> bool {
        self.room_above_reserve()
            .is_ok_and(|room| room < self.disk.reserve.max(256 << 20))
    }

    /// Gives the disk space of deleted fragments back to the file system.
    ///
    /// RocksDB deletes by writing tombstones; the bytes stay on disk until
    /// a compaction drops the deleted keys, and a blob file is removed only
    /// once every fragment in it is deleted. Without writes to trigger
    /// compactions a full supplier whose customers delete would never get
    /// its space back. So this compacts the fragments' key space (cheap:
    /// its SST files hold only references into the blob files), and when
    /// more than a quarter of the blob bytes are then known to be garbage
    /// and the disk has room to copy the live ones, compacts once more with
    /// blob garbage collection, which moves the live fragments out of
    /// partly deleted blob files.
    ///
    /// Returns the blob bytes given back. Does nothing when nothing was
    /// deleted since the last call. On an error the deletes stay counted,
    /// for the next call.
    pub fn reclaim(&self) -> Result<u64, StoreError> {
        let garbage = std::mem::take(&mut self.lock().garbage_bytes);
        if garbage == 0 {
            return Ok(0);
        }
        let result = self.compact_garbage();
        if result.is_err() {
            let mut ledger = self.lock();
            ledger.garbage_bytes = ledger.garbage_bytes.saturating_add(garbage);
        }
        result
    }

    fn compact_garbage(&self) -> Result<u64, StoreError> {
        let cf = self.cf(Cf::Fragments)?;
        let before = self.blob_bytes()?;
        let errors = self.background_errors()?;
        let mut opts = CompactOptions::default();
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        self.db
            .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
        self.check_background_errors(errors)?;
        let total = self.int_property(Cf::Fragments, "rocksdb.live-blob-file-size")?;
        let dead = self.int_property(Cf::Fragments, "rocksdb.live-blob-file-garbage-size")?;
        let live = total.saturating_sub(dead);
        // Collection writes the live fragments anew before the old files
        // go: it needs that much room above the reserve, or it would eat
        // into what flushes and deletes need.
        let room = self.room_above_reserve().unwrap_or(0);
        if dead > 0 && dead >= total / 4 {
            if live.saturating_add(64 << 20) > room {
                tracing::warn!(
                    garbage = dead,
                    live,
                    room,
                    "deleted fragments share files with live ones, and the disk has no room to \
                     move the live ones out: their space stays in use"
                );
            } else {
                let enabled = self.db.set_options_cf(
                    cf,
                    &[
                        ("enable_blob_garbage_collection", "true"),
                        ("blob_garbage_collection_age_cutoff", "1.0"),
                    ],
                );
                if enabled.is_ok() {
                    self.db
                        .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &opts);
                }
                // Back to the settings of Cf::options whatever happened:
                // collection during the compactions uploads cause doubled
                // their CPU. RocksDB applies options before it writes them
                // to its OPTIONS file, so a failed call may still have
                // turned collection on.
                self.db.set_options_cf(
                    cf,
                    &[
                        ("enable_blob_garbage_collection", "false"),
                        ("blob_garbage_collection_age_cutoff", "0.25"),
                    ],
                )?;
                enabled?;
                self.check_background_errors(errors)?;
            }
        }
        Ok(before.saturating_sub(self.blob_bytes()?))
    }

    /// RocksDB reports a failed manual compaction only by counting a
    /// background error: more than `before` means one failed.
    fn check_background_errors(&self, before: u64) -> Result<(), StoreError> {
        let now = self.background_errors()?;
        if now > before {
            return Err(StoreError::Db(format!(
                "compaction failed ({} new background errors; see the database's LOG)",
                now - before
            )));
        }
        Ok(())
    }

    fn background_errors(&self) -> Result<u64, StoreError> {
        Ok(self
            .db
            .property_int_value("rocksdb.background-errors")?
            .unwrap_or(0))
    }

    /// Stops compactions, a running [`Store::reclaim`] included, for a
    /// shutdown: the store takes no more background work afterwards.
    pub fn stop_background_work(&self) {
        self.db.cancel_all_background_work(false);
    }

    /// Bytes free on the database's disk, for unprivileged users.
    pub fn disk_free(&self) -> std::io::Result<u64> {
        disk_free(&self.disk.dir)
    }

    /// Bytes free on the database's disk beyond what it keeps free.
    pub fn room_above_reserve(&self) -> std::io::Result<u64> {
        Ok(self.disk_free()?.saturating_sub(self.disk.reserve))
    }

    /// Bytes in the fragments' blob files, live and garbage.
    pub fn blob_bytes(&self) -> Result<u64, StoreError> {
        self.int_property(Cf::Fragments, "rocksdb.total-blob-file-size")
    }

    fn int_property(&self, cf: Cf, name: &str) -> Result<u64, StoreError> {
        Ok(self
            .db
            .property_int_value_cf(self.cf(cf)?, name)?
            .unwrap_or(0))
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.write_lock
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Key-value pairs whose keys start with `prefix`, from `start` (inclusive)
    /// if given, in key order.
    fn scan(
        &self,
        cf: Cf,
        prefix: &[u8],
        start: Option<&[u8]>,
    ) -> Result<impl Iterator<Item = Result<RawEntry, StoreError>> + '_, StoreError> {
        let mut opts = ReadOptions::default();
        if let Some(end) = keys::prefix_end(prefix) {
            opts.set_iterate_upper_bound(end);
        }
        let from = start.unwrap_or(prefix);
        let iter = self.db.iterator_cf_opt(
            self.cf(cf)?,
            opts,
            IteratorMode::From(from, Direction::Forward),
        );
        Ok(iter.map(|item| item.map_err(StoreError::from)))
    }

    // Identities.

    /// The identity document stored for `user_id`.
    pub fn identity(&self, user_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Cf::Identities, user_id.as_bytes())
    }

    /// Stores an identity document if `decide`, given the current one,
    /// returns new bytes. The check and the write are atomic.
    pub fn update_identity<E>(
        &self,
        user_id: &str,
        decide: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Result<(), E>, StoreError> {
        let _guard = self.lock();
        let current = self.get(Cf::Identities, user_id.as_bytes())?;
        match decide(current.as_deref()) {
            Ok(Some(bytes)) => {
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(Cf::Identities)?, user_id.as_bytes(), bytes);
                self.write(batch)?;
                Ok(Ok(()))
            }
            Ok(None) => Ok(Ok(())),
            Err(e) => Ok(Err(e)),
        }
    }

    // Contracts.

    /// The contract of the customer with master key `owner`.
    pub fn contract(&self, owner: &NodeId) -> Result<Option<Contract>, StoreError> {
        self.get_message(Cf::Contracts, owner.as_bytes())
    }

    /// The node ID a user ID is contracted under.
    pub fn customer(&self, user_id: &str) -> Result<Option<NodeId>, StoreError> {
        self.get(Cf::Customers, user_id.as_bytes())?
            .map(|bytes| NodeId::from_slice(&bytes).map_err(|e| StoreError::Damaged(e.to_string())))
            .transpose()
    }

    /// Every contract.
    pub fn contracts(&self) -> Result<Vec<(NodeId, Contract)>, StoreError> {
        let mut all = Vec::new();
        for item in self.scan(Cf::Contracts, &[], None)? {
            let (key, value) = item?;
            let node = NodeId::from_slice(&key).map_err(|e| StoreError::Damaged(e.to_string()))?;
            all.push((node, Contract::decode(&*value)?));
        }
        Ok(all)
    }

    /// Opens or resizes a contract. `capacity` bounds the sum of all quotas.
    /// Returns the stored contract.
    pub fn hire(
        &self,
        owner: &NodeId,
        user_id: &str,
        master_key: &[u8],
        quota: u64,
        capacity: u64,
    ) -> Result<Contract, StoreError> {
        self.hire_within(owner, user_id, master_key, quota, capacity, usize::MAX)
    }

    /// [`Store::hire`], taking a new customer only while fewer than
    /// `max_customers` hold contracts.
    pub fn hire_within(
        &self,
        owner: &NodeId,
        user_id: &str,
        master_key: &[u8],
        quota: u64,
        capacity: u64,
        max_customers: usize,
    ) -> Result<Contract, StoreError> {
        let _guard = self.lock();
        let existing = self.contract(owner)?;
        let contracts = self.contracts()?;
        room_for_customer(existing.is_some(), contracts.len(), max_customers)?;
        let promised_elsewhere: u64 = contracts
            .iter()
            .filter(|(node, _)| node != owner)
            .map(|(_, c)| c.quota_bytes)
            .sum();
        let free = capacity.saturating_sub(promised_elsewhere);
        if quota > free {
            return Err(StoreError::Full {
                needed: quota,
                free,
            });
        }
        let used = existing.as_ref().map_or(0, |c| c.used_bytes);
        if quota < used {
            return Err(StoreError::QuotaExceeded {
                used,
                quota,
                needed: 0,
            });
        }
        let contract = Contract {
            user_id: user_id.to_owned(),
            master_key: master_key.to_vec(),
            quota_bytes: quota,
            used_bytes: used,
            created_unix: existing.map_or_else(common::unix_now, |c| c.created_unix),
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(Cf::Contracts)?,
            owner.as_bytes(),
            contract.encode_to_vec(),
        );
        batch.put_cf(
            self.cf(Cf::Customers)?,
            user_id.as_bytes(),
            owner.as_bytes(),
        );
        self.write(batch)?;
        Ok(contract)
    }

    /// How many customers hold contracts (a scan of keys, no decoding).
    pub fn customer_count(&self) -> Result<usize, StoreError> {
        let mut customers = 0;
        for item in self.scan(Cf::Contracts, &[], None)? {
            item?;
            customers += 1;
        }
        Ok(customers)
    }

    /// Ends a contract and deletes everything the customer stored.
    pub fn release(&self, owner: &NodeId) -> Result<(), StoreError> {
        let mut ledger = self.lock();
        let contract = self.contract(owner)?.ok_or(StoreError::NoContract)?;
        let committed = self.count_committed(owner.as_bytes())?;
        let start = owner.as_bytes().to_vec();
        let end = keys::prefix_end(&start);
        let mut batch = WriteBatch::default();
        for cf in [
            Cf::Keys,
            Cf::FragmentMeta,
            Cf::Fragments,
            Cf::Manifests,
            Cf::Mailbox,
        ] {
            match &end {
                Some(end) => batch.delete_range_cf(self.cf(cf)?, start.as_slice(), end.as_slice()),
                None => {
                    for item in self.scan(cf, &start, None)? {
                        batch.delete_cf(self.cf(cf)?, item?.0);
                    }
                }
            }
        }
        batch.delete_cf(self.cf(Cf::Contracts)?, owner.as_bytes());
        batch.delete_cf(self.cf(Cf::Customers)?, contract.user_id.as_bytes());
        self.write(batch)?;
        self.freed(&mut ledger, contract.used_bytes);
        ledger.committed_fragments = ledger.committed_fragments.saturating_sub(committed);
        Ok(())
    }

    // Share keys.

    /// The share key registered for a location.
    pub fn key(&self, location: &[u8]) -> Result<Option<KeyRecord>, StoreError> {
        self.get_message(Cf::Keys, location)
    }

    /// Registers a share key if `decide`, given the current record, allows it.
    pub fn update_key<E>(
        &self,
        location: &[u8],
        decide: impl FnOnce(Option<&KeyRecord>) -> Result<Option<KeyRecord>, E>,
    ) -> Result<Result<(), E>, StoreError> {
        let _guard = self.lock();
        let current = self.key(location)?;
        match decide(current.as_ref()) {
            Ok(Some(record)) => {
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(Cf::Keys)?, location, record.encode_to_vec());
                self.write(batch)?;
                Ok(Ok(()))
            }
            Ok(None) => Ok(Ok(())),
            Err(e) => Ok(Err(e)),
        }
    }

    /// Removes a share key. Returns whether there was one.
    pub fn remove_key(&self, location: &[u8]) -> Result<bool, StoreError> {
        let _guard = self.lock();
        if self.key(location)?.is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(Cf::Keys)?, location);
        self.write(batch)?;
        Ok(true)
    }

    // Fragments.

    /// Stages a fragment, charging `owner`'s quota and the supplier's
    /// capacity before anything is written. Replacing a staged fragment
    /// charges only the difference; a committed fragment is never replaced.
    pub fn stage(
        &self,
        owner: &NodeId,
        key: &[u8],
        payload: &[u8],
        digest: FragmentDigest,
        capacity: u64,
    ) -> Result<(), StoreError> {
        // The payload is copied into the batch before the lock is taken, so
        // fragments arriving on several streams are copied in parallel.
        let batch = self.fragment_batch(key, payload)?;
        let mut ledger = self.lock();
        self.stage_locked(&mut ledger, owner, key, batch, digest, capacity)
    }

    /// A batch holding a fragment's payload, with room for the records
    /// [`Store::stage_locked`] adds. Sized up front: a batch grown by
    /// appending copied a large payload three times over.
    fn fragment_batch(&self, key: &[u8], payload: &[u8]) -> Result<PayloadBatch, StoreError> {
        const RECORDS_ROOM: usize = 1024;
        let mut batch =
            WriteBatch::with_capacity_bytes(payload.len() + 3 * key.len() + RECORDS_ROOM);
        batch.put_cf(self.cf(Cf::Fragments)?, key, payload);
        Ok(PayloadBatch {
            batch,
            size: payload.len(),
        })
    }

    /// [`Store::stage`] with the write lock held.
    fn stage_locked(
        &self,
        ledger: &mut Ledger,
        owner: &NodeId,
        key: &[u8],
        payload: PayloadBatch,
        digest: FragmentDigest,
        capacity: u64,
    ) -> Result<(), StoreError> {
        let mut contract = self.contract(owner)?.ok_or(StoreError::NoContract)?;
        let previous: Option<FragmentMeta> = self.get_message(Cf::FragmentMeta, key)?;
        if let Some(previous) = &previous
            && previous.committed
        {
            return if previous.digest()? == digest {
                Ok(())
            } else {
                Err(StoreError::Damaged(
                    "a committed fragment cannot be replaced".into(),
                ))
            };
        }
        let PayloadBatch { mut batch, size } = payload;
        let unlogged = size >= UNLOGGED_MIN_BYTES;
        let size = size as u64;
        let freed = previous.map_or(0, |p| p.size);
        let needed = size.saturating_sub(freed);
        if contract.used_bytes + needed > contract.quota_bytes {
            return Err(StoreError::QuotaExceeded {
                used: contract.used_bytes,
                quota: contract.quota_bytes,
                needed,
            });
        }
        if ledger.used_bytes + needed > capacity {
            return Err(StoreError::Full {
                needed,
                free: capacity.saturating_sub(ledger.used_bytes),
            });
        }
        self.disk_room(size)?;
        contract.used_bytes = (contract.used_bytes + size).saturating_sub(freed);
        let meta = FragmentMeta::staged(size, digest);
        batch.put_cf(self.cf(Cf::FragmentMeta)?, key, meta.encode_to_vec());
        batch.put_cf(
            self.cf(Cf::Contracts)?,
            owner.as_bytes(),
            contract.encode_to_vec(),
        );
        if unlogged {
            self.write_unlogged(batch)?;
            ledger.unlogged.insert(key.to_vec(), size);
        } else {
            self.write_unsynced(batch)?;
        }
        ledger.used_bytes = ledger.used_bytes.saturating_add(size);
        self.freed(ledger, freed);
        if ledger.unlogged.len() > MAX_UNLOGGED {
            self.flush_unlogged(ledger)?;
        }
        Ok(())
    }

    /// A fragment's metadata.
    pub fn fragment_meta(&self, key: &[u8]) -> Result<Option<FragmentMeta>, StoreError> {
        self.get_message(Cf::FragmentMeta, key)
    }

    /// A committed fragment's payload, checked against its recorded hash.
    pub fn fragment(&self, key: &[u8]) -> Result<Option<StoredFragment>, StoreError> {
        let Some(meta) = self.fragment_meta(key)? else {
            return Ok(None);
        };
        if !meta.committed {
            return Ok(None);
        }
        let payload = self
            .get(Cf::Fragments, key)?
            .ok_or_else(|| StoreError::Damaged("fragment payload is missing".into()))?;
        let digest = meta.digest()?;
        if !digest.matches(&payload) {
            return Err(StoreError::Damaged(
                "fragment payload does not match its digest".into(),
            ));
        }
        Ok(Some(StoredFragment { payload, digest }))
    }

    /// Makes a version visible: checks every staged fragment against the
    /// manifest, marks them committed, stores the manifest, and drops the
    /// oldest versions beyond `keep_versions`, in one batch.
    pub fn commit(&self, commit: &Commit) -> Result<Result<Removed, CommitRefusal>, StoreError> {
        self.commit_carrying(commit, &[], 0)
    }

    /// [`Store::commit`] of a version whose `carried` fragments came with
    /// the commit: unless the version is committed already, they are staged
    /// first (charged as [`Store::stage`] does, each in its own batch),
    /// under the same lock.
    pub fn commit_carrying(
        &self,
        commit: &Commit,
        carried: &[Carried],
        capacity: u64,
    ) -> Result<Result<Removed, CommitRefusal>, StoreError> {
        let mut ledger = self.lock();
        let manifest_key = keys::manifest(&commit.location, &commit.object_id, commit.version);
        if let Some(existing) = self.get(Cf::Manifests, &manifest_key)? {
            return Ok(if existing == commit.manifest {
                Ok(Removed::default())
            } else {
                Err(CommitRefusal::VersionExists(commit.version))
            });
        }
        for fragment in carried {
            self.stage_locked(
                &mut ledger,
                &commit.owner,
                &fragment.key,
                self.fragment_batch(&fragment.key, &fragment.payload)?,
                fragment.digest,
                capacity,
            )?;
        }
        let mut batch = WriteBatch::default();
        let mut newly_committed = std::collections::BTreeSet::new();
        let mut unlogged = Vec::new();
        for &(block, position, digest) in &commit.fragments {
            let key = keys::fragment(
                &commit.location,
                &commit.object_id,
                commit.version,
                block,
                position,
            );
            let Some(mut meta) = self.fragment_meta(&key)? else {
                return Ok(Err(CommitRefusal::Missing { block, position }));
            };
            if meta.digest()? != digest {
                return Ok(Err(CommitRefusal::HashMismatch { block, position }));
            }
            if let Some(&size) = ledger.unlogged.get(&key) {
                unlogged.push((key.clone(), size));
            }
            if !meta.committed {
                meta.committed = true;
                batch.put_cf(self.cf(Cf::FragmentMeta)?, &key, meta.encode_to_vec());
                newly_committed.insert(key);
            }
        }
        // The fragments this commit names must be on disk before it is:
        // a few are written again through the WAL in this batch, many are
        // flushed.
        if unlogged.iter().map(|(_, size)| size).sum::<u64>() > REWRITE_MAX_BYTES {
            self.flush_unlogged(&mut ledger)?;
            unlogged.clear();
        }
        for (key, _) in &unlogged {
            let payload = self
                .get(Cf::Fragments, key)?
                .ok_or_else(|| StoreError::Damaged("fragment payload is missing".into()))?;
            batch.put_cf(self.cf(Cf::Fragments)?, key, payload);
        }
        batch.put_cf(self.cf(Cf::Manifests)?, &manifest_key, &commit.manifest);

        // Retention: keep the newest `keep_versions`, counting this one.
        let mut versions = self.versions(&commit.location, &commit.object_id)?;
        versions.push(commit.version);
        versions.sort_unstable();
        let excess = versions.len().saturating_sub(commit.keep_versions.max(1));
        let mut removed = Removed::default();
        let mut uncommitted = 0;
        for &old in versions.iter().take(excess) {
            if old == commit.version {
                continue;
            }
            let (bytes, fragments) =
                self.delete_version(&mut batch, &commit.location, &commit.object_id, old)?;
            removed.bytes += bytes;
            uncommitted += fragments;
            removed.versions.push(old);
        }
        let released = self.charge_release(&mut batch, &commit.owner, removed.bytes)?;
        self.write(batch)?;
        self.freed(&mut ledger, released);
        ledger.committed_fragments =
            (ledger.committed_fragments + newly_committed.len() as u64).saturating_sub(uncommitted);
        for (key, _) in &unlogged {
            ledger.unlogged.remove(key);
        }
        Ok(Ok(removed))
    }

    /// The committed versions of an object, ascending.
    fn versions(&self, location: &[u8], object_id: &[u8; 32]) -> Result<Vec<u64>, StoreError> {
        let prefix = keys::object(location, object_id);
        let mut versions = Vec::new();
        for item in self.scan(Cf::Manifests, &prefix, None)? {
            let (key, _) = item?;
            if let Some((_, _, version)) = keys::split_manifest(&key) {
                versions.push(version);
            }
        }
        Ok(versions)
    }

    /// Adds the deletion of one version (manifest, fragments) to `batch` and
    /// returns the bytes it frees and how many committed fragments it drops.
    fn delete_version(
        &self,
        batch: &mut WriteBatch,
        location: &[u8],
        object_id: &[u8; 32],
        version: u64,
    ) -> Result<(u64, u64), StoreError> {
        batch.delete_cf(
            self.cf(Cf::Manifests)?,
            keys::manifest(location, object_id, version),
        );
        let prefix = keys::manifest(location, object_id, version);
        let (mut freed, mut committed) = (0, 0);
        for item in self.scan(Cf::FragmentMeta, &prefix, None)? {
            let (key, value) = item?;
            let meta = FragmentMeta::decode(&*value)?;
            freed += meta.size;
            committed += u64::from(meta.committed);
            batch.delete_cf(self.cf(Cf::FragmentMeta)?, &key);
            batch.delete_cf(self.cf(Cf::Fragments)?, &key);
        }
        Ok((freed, committed))
    }

    /// How many committed fragments have keys starting with `prefix`.
    fn count_committed(&self, prefix: &[u8]) -> Result<u64, StoreError> {
        let mut count = 0;
        for item in self.scan(Cf::FragmentMeta, prefix, None)? {
            let (_, value) = item?;
            count += u64::from(FragmentMeta::decode(&*value)?.committed);
        }
        Ok(count)
    }

    /// Adds to `batch` the lowering of `owner`'s used bytes by `freed`, and
    /// returns by how much the stored figure falls, for the ledger.
    fn charge_release(
        &self,
        batch: &mut WriteBatch,
        owner: &NodeId,
        freed: u64,
    ) -> Result<u64, StoreError> {
        if freed == 0 {
            return Ok(0);
        }
        let Some(mut contract) = self.contract(owner)? else {
            return Ok(0);
        };
        let released = freed.min(contract.used_bytes);
        contract.used_bytes -= released;
        batch.put_cf(
            self.cf(Cf::Contracts)?,
            owner.as_bytes(),
            contract.encode_to_vec(),
        );
        Ok(released)
    }

    /// Deletes one version of an object, or all of them (`version` None).
    pub fn delete(
        &self,
        owner: &NodeId,
        location: &[u8],
        object_id: &[u8; 32],
        version: Option<u64>,
    ) -> Result<Removed, StoreError> {
        let mut ledger = self.lock();
        let versions = match version {
            Some(v) => vec![v],
            None => self.versions(location, object_id)?,
        };
        let mut batch = WriteBatch::default();
        let mut removed = Removed::default();
        let mut uncommitted = 0;
        for version in versions {
            let existed = self
                .get(Cf::Manifests, &keys::manifest(location, object_id, version))?
                .is_some();
            let (freed, fragments) =
                self.delete_version(&mut batch, location, object_id, version)?;
            uncommitted += fragments;
            if existed || freed > 0 {
                removed.versions.push(version);
                removed.bytes += freed;
            }
        }
        let released = self.charge_release(&mut batch, owner, removed.bytes)?;
        self.write(batch)?;
        self.freed(&mut ledger, released);
        ledger.committed_fragments = ledger.committed_fragments.saturating_sub(uncommitted);
        Ok(removed)
    }

    /// A page of a location's manifests (or of one object's), in key
    /// order, after the key `after`: at most `limit` of them and, unless the
    /// first alone is larger, at most `max_bytes` in all.
    pub fn manifests(
        &self,
        location: &[u8],
        object_id: Option<&[u8; 32]>,
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page, StoreError> {
        let prefix = match object_id {
            Some(object_id) => keys::object(location, object_id),
            None => location.to_vec(),
        };
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0usize;
        let mut last = None;
        for item in self.scan(Cf::Manifests, &prefix, after)? {
            let (key, value) = item?;
            if after == Some(&*key) {
                continue;
            }
            // A location prefix also matches longer aliases that start the
            // same way only if the length byte matched, so every key here is
            // in this location.
            if out.len() >= limit || (!out.is_empty() && bytes + value.len() > max_bytes) {
                return Ok(Page {
                    manifests: out,
                    last,
                    more: true,
                });
            }
            bytes += value.len();
            out.push(value.into_vec());
            last = Some(key.into_vec());
        }
        Ok(Page {
            manifests: out,
            last,
            more: false,
        })
    }

    /// Deletes the staged fragments that no manifest claimed of every
    /// version none of whose fragments was staged at or after
    /// `staged_before` (Unix seconds). An upload still sending keeps all of
    /// its version's fragments, however long it has been running; an
    /// abandoned one is collected a timeout after its last fragment.
    /// Returns how many and the bytes freed.
    pub fn collect_staged(&self, staged_before: i64) -> Result<(usize, u64), StoreError> {
        let mut ledger = self.lock();
        // Version key (a fragment key without block and position) → newest
        // staging time, and the uncommitted fragments with their sizes.
        let mut versions: BTreeMap<Box<[u8]>, (i64, Vec<Unclaimed>)> = BTreeMap::new();
        for item in self.scan(Cf::FragmentMeta, &[], None)? {
            let (key, value) = item?;
            let meta = FragmentMeta::decode(&*value)?;
            if meta.committed {
                continue;
            }
            let entry = versions
                .entry(keys::version_of_fragment(&key).into())
                .or_insert_with(|| (i64::MIN, Vec::new()));
            entry.0 = entry.0.max(meta.staged_unix);
            entry.1.push((key, meta.size));
        }
        let mut batch = WriteBatch::default();
        let mut freed_by: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut count = 0;
        for (newest, fragments) in versions.into_values() {
            if newest >= staged_before {
                continue;
            }
            for (key, size) in fragments {
                let owner = owner_of(&key)?;
                *freed_by.entry(owner).or_default() += size;
                batch.delete_cf(self.cf(Cf::FragmentMeta)?, &key);
                batch.delete_cf(self.cf(Cf::Fragments)?, &key);
                count += 1;
            }
        }
        let mut total = 0;
        let mut released = 0;
        for (owner, freed) in freed_by {
            released += self.charge_release(&mut batch, &owner, freed)?;
            total += freed;
        }
        if count > 0 {
            self.write(batch)?;
            self.freed(&mut ledger, released);
        }
        Ok((count, total))
    }

    /// Stored bytes (all contracts) and committed fragments, for metrics.
    /// Kept in memory: no database access.
    pub fn usage(&self) -> (u64, u64) {
        let ledger = self.lock();
        (ledger.used_bytes, ledger.committed_fragments)
    }

    /// Replaces a committed fragment's bytes and recorded hash, as a faulty
    /// or malicious supplier would. Only for tests of the customer's checks.
    #[cfg(feature = "test-utils")]
    pub fn danger_replace_fragment(&self, key: &[u8], payload: &[u8]) -> Result<(), StoreError> {
        let _guard = self.lock();
        let mut meta = self
            .fragment_meta(key)?
            .ok_or_else(|| StoreError::Damaged("no such fragment".into()))?;
        meta.digest = FragmentDigest::of(meta.digest()?.hash, payload)
            .value
            .to_vec();
        meta.size = payload.len() as u64;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(Cf::Fragments)?, key, payload);
        batch.put_cf(self.cf(Cf::FragmentMeta)?, key, meta.encode_to_vec());
        self.write(batch)
    }

    /// Replaces a stored manifest's bytes, as a faulty or malicious
    /// supplier would. Only for tests of the customer's checks.
    #[cfg(feature = "test-utils")]
    pub fn danger_replace_manifest(&self, key: &[u8], manifest: &[u8]) -> Result<(), StoreError> {
        let _guard = self.lock();
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(Cf::Manifests)?, key, manifest);
        self.write(batch)
    }

    // DHT records.

    /// The DHT record stored under `key`.
    pub fn record(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Cf::Records, key.as_bytes())
    }

    /// Stores a DHT record (already validated by the DHT), removing the
    /// records of `evict` in the same write.
    pub fn put_record(&self, key: &str, value: &[u8], evict: &[String]) -> Result<(), StoreError> {
        let _guard = self.lock();
        let mut batch = WriteBatch::default();
        for evicted in evict {
            batch.delete_cf(self.cf(Cf::Records)?, evicted.as_bytes());
        }
        batch.put_cf(self.cf(Cf::Records)?, key.as_bytes(), value);
        self.write(batch)
    }

    /// Removes a DHT record.
    pub fn remove_record(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let _guard = self.lock();
        let old = self.get(Cf::Records, key.as_bytes())?;
        if old.is_some() {
            let mut batch = WriteBatch::default();
            batch.delete_cf(self.cf(Cf::Records)?, key.as_bytes());
            self.write(batch)?;
        }
        Ok(old)
    }

    /// Calls `each` with every DHT record's key and stored bytes, one at a
    /// time, without holding them all in memory, until it returns `false`.
    pub fn for_each_record(
        &self,
        mut each: impl FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for item in self.scan(Cf::Records, &[], None)? {
            let (key, value) = item?;
            if !each(&String::from_utf8_lossy(&key), &value) {
                break;
            }
        }
        Ok(())
    }

    // Mailboxes.

    /// Messages waiting for `recipient`, oldest first, at most `limit`.
    pub fn mailbox(
        &self,
        recipient: &NodeId,
        limit: usize,
    ) -> Result<Vec<MailboxEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.scan(Cf::Mailbox, recipient.as_bytes(), None)? {
            let (key, value) = item?;
            out.push(MailboxEntry {
                key: key.into_vec(),
                message: value.into_vec(),
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Adds a message if `admit`, given the recipient's current messages,
    /// allows it.
    pub fn post<E>(
        &self,
        recipient: &NodeId,
        key: &[u8],
        message: &[u8],
        admit: impl FnOnce(&[MailboxEntry]) -> Result<(), E>,
    ) -> Result<Result<(), E>, StoreError> {
        let _guard = self.lock();
        let current = self.mailbox(recipient, usize::MAX)?;
        if let Err(e) = admit(&current) {
            return Ok(Err(e));
        }
        self.disk_room(message.len() as u64)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(Cf::Mailbox)?, key, message);
        self.write(batch)?;
        Ok(Ok(()))
    }

    /// Removes messages of `recipient`. Keys outside its mailbox are ignored.
    pub fn ack(&self, recipient: &NodeId, keys: &[Vec<u8>]) -> Result<usize, StoreError> {
        let _guard = self.lock();
        let mut batch = WriteBatch::default();
        let mut count = 0;
        for key in keys {
            if key.starts_with(recipient.as_bytes()) && self.get(Cf::Mailbox, key)?.is_some() {
                batch.delete_cf(self.cf(Cf::Mailbox)?, key);
                count += 1;
            }
        }
        self.write(batch)?;
        Ok(count)
    }
}

/// Whether a caller that `has_contract` (or not) may hold one: a customer
/// keeps its contract; a new one comes in only while fewer than
/// `max_customers` of the `customers` hold contracts.
pub fn room_for_customer(
    has_contract: bool,
    customers: usize,
    max_customers: usize,
) -> Result<(), StoreError> {
    if has_contract || customers < max_customers {
        Ok(())
    } else {
        Err(StoreError::NoMoreCustomers { max: max_customers })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn node(n: u8) -> NodeId {
        NodeId::from_array([n; 32])
    }

    fn hash(data: &[u8]) -> FragmentDigest {
        FragmentDigest::of(FragmentHash::Blake3, data)
    }

    /// Stages and commits `data` as the one fragment of version 1 of
    /// object `[object; 32]` in `owner`'s master location; returns its key.
    fn store_one(store: &Store, owner: NodeId, object: u8, data: &[u8]) -> Vec<u8> {
        let location = keys::location(&owner, "master");
        let key = keys::fragment(&location, &[object; 32], 1, 0, 0);
        store.stage(&owner, &key, data, hash(data), GIB).unwrap();
        store
            .commit(&Commit {
                owner,
                location,
                object_id: [object; 32],
                version: 1,
                manifest: b"m".to_vec(),
                fragments: vec![(0, 0, hash(data))],
                keep_versions: 3,
            })
            .unwrap()
            .unwrap();
        key
    }

    #[test]
    fn identities_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .update_identity::<()>("alice@id-a", |current| {
                    assert!(current.is_none());
                    Ok(Some(b"doc".to_vec()))
                })
                .unwrap()
                .unwrap();
            let refused = store
                .update_identity("alice@id-a", |_| Err::<Option<Vec<u8>>, _>("taken"))
                .unwrap();
            assert_eq!(refused, Err("taken"));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.identity("alice@id-a").unwrap().as_deref(),
            Some(&b"doc"[..])
        );
        assert_eq!(store.identity("bob@id-a").unwrap(), None);
    }

    #[test]
    fn stage_commit_read_delete_with_accounting() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = node(1);
        store.hire(&owner, "alice@id-a", b"key", 1000, GIB).unwrap();
        let location = keys::location(&owner, "master");
        let object = [9; 32];
        let a = keys::fragment(&location, &object, 1, 0, 0);
        let b = keys::fragment(&location, &object, 1, 1, 0);
        store
            .stage(&owner, &a, &[1; 300], hash(&[1; 300]), GIB)
            .unwrap();
        store
            .stage(&owner, &b, &[2; 300], hash(&[2; 300]), GIB)
            .unwrap();
        assert_eq!(store.contract(&owner).unwrap().unwrap().used_bytes, 600);
        // Staged fragments are not readable.
        assert_eq!(store.fragment(&a).unwrap(), None);

        // Quota: 600 used of 1000; 500 more is refused and nothing changes.
        let c = keys::fragment(&location, &object, 1, 2, 0);
        let err = store
            .stage(&owner, &c, &[3; 500], hash(&[3; 500]), GIB)
            .unwrap_err();
        assert!(matches!(err, StoreError::QuotaExceeded { used: 600, .. }));
        assert_eq!(store.fragment_meta(&c).unwrap(), None);

        let mut commit = Commit {
            owner,
            location: location.clone(),
            object_id: object,
            version: 1,
            manifest: b"manifest-1".to_vec(),
            fragments: vec![(0, 0, hash(&[1; 300])), (1, 0, hash(&[9; 300]))],
            keep_versions: 3,
        };
        assert_eq!(
            store.commit(&commit).unwrap(),
            Err(CommitRefusal::HashMismatch {
                block: 1,
                position: 0
            })
        );
        commit.fragments.push((2, 0, hash(&[])));
        commit.fragments[1].2 = hash(&[2; 300]);
        assert_eq!(
            store.commit(&commit).unwrap(),
            Err(CommitRefusal::Missing {
                block: 2,
                position: 0
            })
        );
        commit.fragments.pop();
        assert_eq!(store.commit(&commit).unwrap(), Ok(Removed::default()));
        // Idempotent for the same manifest, refused for another.
        assert_eq!(store.commit(&commit).unwrap(), Ok(Removed::default()));
        commit.manifest = b"other".to_vec();
        assert_eq!(
            store.commit(&commit).unwrap(),
            Err(CommitRefusal::VersionExists(1))
        );

        assert_eq!(store.fragment(&a).unwrap().unwrap().payload, vec![1; 300]);
        let page = store
            .manifests(&location, None, None, 10, usize::MAX)
            .unwrap();
        assert_eq!(page.manifests, vec![b"manifest-1".to_vec()]);
        assert!(page.last.is_some());
        assert!(!page.more);
        let next = store
            .manifests(&location, None, page.last.as_deref(), 10, usize::MAX)
            .unwrap();
        assert!(next.manifests.is_empty());

        let removed = store.delete(&owner, &location, &object, None).unwrap();
        assert_eq!(
            removed,
            Removed {
                versions: vec![1],
                bytes: 600
            }
        );
        assert_eq!(store.contract(&owner).unwrap().unwrap().used_bytes, 0);
        assert_eq!(store.fragment(&a).unwrap(), None);
    }

    #[test]
    fn only_the_newest_versions_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = node(1);
        store.hire(&owner, "alice@id-a", b"key", GIB, GIB).unwrap();
        let location = keys::location(&owner, "master");
        let object = [7; 32];
        for version in 1..=5u64 {
            let key = keys::fragment(&location, &object, version, 0, 0);
            let data = vec![version as u8; 10];
            store.stage(&owner, &key, &data, hash(&data), GIB).unwrap();
            let removed = store
                .commit(&Commit {
                    owner,
                    location: location.clone(),
                    object_id: object,
                    version,
                    manifest: vec![version as u8],
                    fragments: vec![(0, 0, hash(&data))],
                    keep_versions: 3,
                })
                .unwrap()
                .unwrap();
            if version > 3 {
                assert_eq!(removed.versions, vec![version - 3]);
            }
        }
        let page = store
            .manifests(&location, Some(&object), None, 10, usize::MAX)
            .unwrap();
        assert_eq!(page.manifests, vec![vec![3], vec![4], vec![5]]);
        assert_eq!(store.contract(&owner).unwrap().unwrap().used_bytes, 30);
    }

    #[test]
    fn manifest_pages_are_bounded_in_count_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = node(1);
        store.hire(&owner, "alice@id-a", b"key", GIB, GIB).unwrap();
        let location = keys::location(&owner, "master");
        // Five objects whose manifests are 10, 10, 40, 10 and 10 bytes.
        for (n, size) in [10, 10, 40, 10, 10].into_iter().enumerate() {
            let object = [n as u8; 32];
            let key = keys::fragment(&location, &object, 1, 0, 0);
            store.stage(&owner, &key, &[1], hash(&[1]), GIB).unwrap();
            store
                .commit(&Commit {
                    owner,
                    location: location.clone(),
                    object_id: object,
                    version: 1,
                    manifest: vec![n as u8; size],
                    fragments: vec![(0, 0, hash(&[1]))],
                    keep_versions: 3,
                })
                .unwrap()
                .unwrap();
        }
        let mut sizes = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .manifests(&location, None, after.as_deref(), 1000, 25)
                .unwrap();
            sizes.push(page.manifests.iter().map(Vec::len).collect::<Vec<_>>());
            if !page.more {
                break;
            }
            after = page.last;
        }
        // Within 25 bytes, except a manifest larger than that, alone.
        assert_eq!(sizes, vec![vec![10, 10], vec![40], vec![10, 10]]);

        let page = store
            .manifests(&location, None, None, 5, usize::MAX)
            .unwrap();
        assert_eq!(page.manifests.len(), 5);
        assert!(!page.more, "nothing follows the fifth");
        let page = store
            .manifests(&location, None, None, 4, usize::MAX)
            .unwrap();
        assert_eq!(page.manifests.len(), 4);
        assert!(page.more);
    }

    #[test]
    fn capacity_bounds_contracts_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.hire(&node(1), "alice@id-a", b"k", 600, 1000).unwrap();
        assert!(matches!(
            store.hire(&node(2), "bob@id-a", b"k", 500, 1000),
            Err(StoreError::Full { free: 400, .. })
        ));
        store.hire(&node(2), "bob@id-a", b"k", 400, 1000).unwrap();
        // A tiny disk: contracts promise more than the capacity now allows.
        let key = keys::fragment(&keys::location(&node(1), "master"), &[1; 32], 1, 0, 0);
        let err = store
            .stage(&node(1), &key, &[0; 300], hash(&[0; 300]), 200)
            .unwrap_err();
        assert!(matches!(err, StoreError::Full { .. }));
        assert_eq!(store.fragment_meta(&key).unwrap(), None);
    }

    #[test]
    fn staged_fragments_are_collected_and_release_deletes_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = node(1);
        store.hire(&owner, "alice@id-a", b"k", GIB, GIB).unwrap();
        let location = keys::location(&owner, "master");
        let key = keys::fragment(&location, &[1; 32], 1, 0, 0);
        store
            .stage(&owner, &key, &[5; 50], hash(&[5; 50]), GIB)
            .unwrap();
        assert_eq!(
            store.collect_staged(common::unix_now() - 60).unwrap(),
            (0, 0)
        );
        assert_eq!(
            store.collect_staged(common::unix_now() + 1).unwrap(),
            (1, 50)
        );
        assert_eq!(store.fragment_meta(&key).unwrap(), None);
        assert_eq!(store.contract(&owner).unwrap().unwrap().used_bytes, 0);

        store
            .stage(&owner, &key, &[5; 50], hash(&[5; 50]), GIB)
            .unwrap();
        store.release(&owner).unwrap();
        assert_eq!(store.contract(&owner).unwrap(), None);
        assert_eq!(store.customer("alice@id-a").unwrap(), None);
        assert_eq!(store.fragment_meta(&key).unwrap(), None);
    }

    /// Moves a staged fragment's staging time `seconds` into the past.
    fn age_staged(store: &Store, key: &[u8], seconds: i64) {
        let mut meta = store.fragment_meta(key).unwrap().unwrap();
        meta.staged_unix -= seconds;
        let mut batch = WriteBatch::default();
        batch.put_cf(
            store.cf(Cf::FragmentMeta).unwrap(),
            key,
            meta.encode_to_vec(),
        );
        store.write(batch).unwrap();
    }

    #[test]
    fn a_version_still_being_staged_keeps_its_oldest_fragments() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = node(1);
        store.hire(&owner, "alice@id-a", b"k", GIB, GIB).unwrap();
        let location = keys::location(&owner, "master");
        // A long upload: its first block was staged two hours ago, its
        // latest just now.
        let first = keys::fragment(&location, &[1; 32], 1, 0, 0);
        let latest = keys::fragment(&location, &[1; 32], 1, 900, 0);
        // An abandoned upload of another version, and of another object.
        let abandoned = keys::fragment(&location, &[1; 32], 2, 0, 0);
        let other = keys::fragment(&location, &[2; 32], 1, 0, 0);
        assert_eq!(
            keys::version_of_fragment(&latest),
            keys::manifest(&location, &[1; 32], 1)
        );
        for key in [&first, &latest, &abandoned, &other] {
            store
                .stage(&owner, key, &[5; 50], hash(&[5; 50]), GIB)
                .unwrap();
        }
        for key in [&first, &abandoned, &other] {
            age_staged(&store, key, 7200);
        }
        assert_eq!(
            store.collect_staged(common::unix_now() - 3600).unwrap(),
            (2, 100)
        );
        assert!(store.fragment_meta(&first).unwrap().is_some());
        assert!(store.fragment_meta(&latest).unwrap().is_some());
        assert_eq!(store.fragment_meta(&abandoned).unwrap(), None);
        assert_eq!(store.fragment_meta(&other).unwrap(), None);
        assert_eq!(store.contract(&owner).unwrap().unwrap().used_bytes, 100);

        // Once the upload stops, the whole version goes.
        age_staged(&store, &latest, 7200);
        assert_eq!(
            store.collect_staged(common::unix_now() - 3600).unwrap(),
            (2, 100)
        );
        assert_eq!(store.fragment_meta(&first).unwrap(), None);
        assert_eq!(store.contract(&owner).unwrap().unwrap().used_bytes, 0);
    }

    /// What `usage()` should say, computed from the database.
    fn stored_usage(store: &Store) -> (u64, u64) {
        let bytes = store
            .contracts()
            .unwrap()
            .iter()
            .map(|(_, c)| c.used_bytes)
            .sum();
        (bytes, store.count_committed(&[]).unwrap())
    }

    #[test]
    fn kept_totals_follow_every_change_and_bound_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (alice, bob) = (node(1), node(2));
        store
            .hire(&alice, "alice@id-a", b"k", 1 << 20, GIB)
            .unwrap();
        store.hire(&bob, "bob@id-a", b"k", 1 << 20, GIB).unwrap();
        let (la, lb) = (
            keys::location(&alice, "master"),
            keys::location(&bob, "master"),
        );
        let object = [3; 32];
        let stage = |owner: &NodeId, key: &[u8], len: usize, capacity: u64| {
            let data = vec![len as u8; len];
            store.stage(owner, key, &data, hash(&data), capacity)
        };
        let commit = |owner: NodeId, location: &[u8], version: u64, len: usize| {
            let data = vec![len as u8; len];
            store.commit(&Commit {
                owner,
                location: location.to_vec(),
                object_id: object,
                version,
                manifest: vec![version as u8],
                fragments: vec![(0, 0, hash(&data))],
                keep_versions: 2,
            })
        };

        // Capacity counts every customer: Alice's 700 bytes leave Bob 300.
        stage(&alice, &keys::fragment(&la, &object, 1, 0, 0), 700, 1000).unwrap();
        let err = stage(&bob, &keys::fragment(&lb, &object, 1, 0, 0), 400, 1000).unwrap_err();
        assert!(matches!(err, StoreError::Full { free: 300, .. }), "{err:?}");
        assert_eq!(store.usage(), (700, 0));
        // Replacing a staged fragment charges only the difference.
        stage(&alice, &keys::fragment(&la, &object, 1, 0, 0), 200, 1000).unwrap();
        stage(&bob, &keys::fragment(&lb, &object, 1, 0, 0), 400, 1000).unwrap();
        assert_eq!(store.usage(), (600, 0));
        assert_eq!(store.usage(), stored_usage(&store));

        commit(alice, &la, 1, 200).unwrap().unwrap();
        commit(bob, &lb, 1, 400).unwrap().unwrap();
        assert_eq!(store.usage(), (600, 2));
        // Committing the same manifest again changes nothing.
        commit(alice, &la, 1, 200).unwrap().unwrap();
        assert_eq!(store.usage(), (600, 2));
        // Retention drops Alice's version 1 when version 3 commits.
        for version in [2, 3] {
            stage(
                &alice,
                &keys::fragment(&la, &object, version, 0, 0),
                50,
                GIB,
            )
            .unwrap();
            commit(alice, &la, version, 50).unwrap().unwrap();
        }
        assert_eq!(store.usage(), (500, 3));
        assert_eq!(store.usage(), stored_usage(&store));

        // A staged fragment no manifest claims is collected.
        stage(&bob, &keys::fragment(&lb, &object, 2, 0, 0), 10, GIB).unwrap();
        assert_eq!(store.usage(), (510, 3));
        store.collect_staged(common::unix_now() + 1).unwrap();
        assert_eq!(store.usage(), (500, 3));

        store.delete(&alice, &la, &object, Some(2)).unwrap();
        assert_eq!(store.usage(), (450, 2));
        assert_eq!(store.usage(), stored_usage(&store));
        store.release(&bob).unwrap();
        assert_eq!(store.usage(), (50, 1));
        assert_eq!(store.usage(), stored_usage(&store));

        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.usage(), (50, 1));
    }

    #[test]
    fn a_nearly_full_disk_refuses_new_data_but_still_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let owner = node(4);
        let location = keys::location(&owner, "master");
        let data = vec![7u8; 50_000];
        let old = {
            let store = Store::open_with(dir.path(), 0).unwrap();
            store.hire(&owner, "dave@id-a", b"k", GIB, GIB).unwrap();
            store_one(&store, owner, 1, &data)
        };

        // Reopened asking for more free space than the disk has: the disk
        // is "full" for this store.
        let reserve = disk_free(dir.path()).unwrap() + (1 << 40);
        let store = Store::open_with(dir.path(), reserve).unwrap();
        let new = keys::fragment(&location, &[2; 32], 1, 0, 0);
        let err = store
            .stage(&owner, &new, &data, hash(&data), GIB)
            .unwrap_err();
        let StoreError::DiskFull {
            needed,
            reserve: kept,
            ..
        } = err
        else {
            panic!("expected DiskFull, got {err:?}");
        };
        assert_eq!((needed, kept), (50_000, reserve));
        assert!(err.to_string().contains("disk is nearly full"), "{err}");
        // Nothing was charged or written for the refused fragment.
        assert_eq!(store.fragment_meta(&new).unwrap(), None);
        assert_eq!(store.usage(), (50_000, 1));
        assert_eq!(store.contract(&owner).unwrap().unwrap().used_bytes, 50_000);
        // Mailbox messages are refused too.
        let key = keys::mailbox(&node(5), 1, 1);
        let err = store
            .post(&node(5), &key, b"hello", |_| Ok::<_, ()>(()))
            .unwrap_err();
        assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
        // What was stored stays readable, and the owner can still delete it.
        assert_eq!(store.fragment(&old).unwrap().unwrap().payload, data);
        let removed = store.delete(&owner, &location, &[1; 32], None).unwrap();
        assert_eq!(removed.bytes, 50_000);
        assert_eq!(store.usage(), (0, 0));
        drop(store);

        // With room again, the same fragment is accepted.
        let store = Store::open_with(dir.path(), 0).unwrap();
        store.stage(&owner, &new, &data, hash(&data), GIB).unwrap();
        assert_eq!(store.usage().0, 50_000);
    }

    #[test]
    fn deleted_fragments_give_their_disk_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let owner = node(6);
        store.hire(&owner, "erin@id-a", b"k", GIB, GIB).unwrap();
        let location = keys::location(&owner, "master");
        // Two objects of four 300 KiB fragments, staged together so that
        // every blob file holds fragments of both.
        let mut fragments: BTreeMap<u8, Vec<(u64, FragmentDigest)>> = BTreeMap::new();
        for block in 0..4u64 {
            for object in [1u8, 2] {
                let data = vec![object * 10 + block as u8; 300 << 10];
                let key = keys::fragment(&location, &[object; 32], 1, block, 0);
                store.stage(&owner, &key, &data, hash(&data), GIB).unwrap();
                fragments
                    .entry(object)
                    .or_default()
                    .push((block, hash(&data)));
            }
        }
        store.flush_unlogged(&mut store.lock()).unwrap();
        for (&object, list) in &fragments {
            store
                .commit(&Commit {
                    owner,
                    location: location.clone(),
                    object_id: [object; 32],
                    version: 1,
                    manifest: vec![object],
                    fragments: list.iter().map(|&(b, d)| (b, 0, d)).collect(),
                    keep_versions: 3,
                })
                .unwrap()
                .unwrap();
        }
        let full = store.blob_bytes().unwrap();
        assert!(full >= 8 * (300 << 10), "{full} bytes in blob files");
        // Nothing deleted: nothing to give back (the pass at open finds
        // nothing either).
        assert_eq!(store.reclaim().unwrap(), 0);
        assert!(!store.reclaim_due());

        // Half of every blob file is deleted: the live half is moved out.
        store.delete(&owner, &location, &[1; 32], None).unwrap();
        // 1.2 MiB deleted is not worth a compaction on its own, unless
        // this disk is short of room.
        assert_eq!(store.reclaim_due(), store.disk_short());
        let freed = store.reclaim().unwrap();
        let half = store.blob_bytes().unwrap();
        assert_eq!(freed, full - half);
        assert!(half <= full / 2 + (64 << 10), "{half} of {full} left");
        for block in 0..4u64 {
            let key = keys::fragment(&location, &[2; 32], 1, block, 0);
            let payload = store.fragment(&key).unwrap().unwrap().payload;
            assert_eq!(payload, vec![20 + block as u8; 300 << 10]);
        }

        // Everything deleted: nothing is left on disk.
        store.delete(&owner, &location, &[2; 32], None).unwrap();
        store.reclaim().unwrap();
        assert_eq!(store.blob_bytes().unwrap(), 0);
    }

    #[test]
    fn committed_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let owner = node(3);
        let data = vec![42u8; 100_000];
        let key = {
            let store = Store::open(dir.path()).unwrap();
            store.hire(&owner, "carol@id-a", b"k", GIB, GIB).unwrap();
            store_one(&store, owner, 1, &data)
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.fragment(&key).unwrap().unwrap().payload, data);
        assert_eq!(store.usage(), (100_000, 1));
    }

    #[test]
    fn flushed_fragments_read_back_with_and_without_direct_io() {
        // /tmp is usually a disk file system, /dev/shm tmpfs (which takes
        // O_DIRECT only on recent kernels): both must store, flush and read
        // back (with direct reads where O_DIRECT works).
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if let Ok(shm) = tempfile::tempdir_in("/dev/shm") {
            dirs.push(shm);
        }
        for dir in dirs {
            let owner = node(4);
            let location = keys::location(&owner, "master");
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            {
                let store = Store::open(dir.path()).unwrap();
                store.hire(&owner, "dave@id-a", b"k", GIB, GIB).unwrap();
                let mut fragments = Vec::new();
                for block in 0..3 {
                    let key = keys::fragment(&location, &[2; 32], 1, block, 0);
                    store.stage(&owner, &key, &data, hash(&data), GIB).unwrap();
                    fragments.push((block, 0, hash(&data)));
                }
                let commit = Commit {
                    owner,
                    location: location.clone(),
                    object_id: [2; 32],
                    version: 1,
                    manifest: b"m".to_vec(),
                    fragments,
                    keep_versions: 3,
                };
                store.commit(&commit).unwrap().unwrap();
                store.db.flush_cf(store.cf(Cf::Fragments).unwrap()).unwrap();
            }
            let store = Store::open(dir.path()).unwrap();
            for block in 0..3 {
                let key = keys::fragment(&location, &[2; 32], 1, block, 0);
                assert_eq!(store.fragment(&key).unwrap().unwrap().payload, data);
            }
        }
    }

    proptest! {
        #[test]
        fn manifest_keys_round_trip(owner in any::<[u8; 32]>(), alias in "[a-z][a-z0-9_-]{2,49}", object in any::<[u8; 32]>(), version in any::<u64>()) {
            let location = keys::location(&NodeId::from_array(owner), &alias);
            let key = keys::manifest(&location, &object, version);
            let (l, o, v) = keys::split_manifest(&key).unwrap();
            prop_assert_eq!(l, location.as_slice());
            prop_assert_eq!(o, object);
            prop_assert_eq!(v, version);
            // Fragment keys of a version sort under its manifest key.
            let fragment = keys::fragment(&location, &object, version, 3, 1);
            prop_assert!(fragment.starts_with(&key));
        }

        #[test]
        fn prefix_end_bounds_the_prefix(prefix in prop::collection::vec(any::<u8>(), 0..40), tail in prop::collection::vec(any::<u8>(), 0..8)) {
            let key = [prefix.as_slice(), &tail].concat();
            if let Some(end) = keys::prefix_end(&prefix) {
                prop_assert!(key < end);
                prop_assert!(prefix <= end);
            } else {
                prop_assert!(prefix.iter().all(|b| *b == u8::MAX));
            }
        }
    }
}
