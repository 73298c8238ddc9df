//! The supplier's storage engine: RocksDB, and the only module that knows it.
//!
//! Column families are declared once, in [`Cf`]. Every multi-key change is one
//! `WriteBatch`, and writes that acknowledge something to a peer are synced
//! (WAL fsync) before they return; `docs/design/storage.md` spells out the
//! crash semantics. All calls block: async callers go through
//! [`Store::run`], which moves them onto the blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rocksdb::{ColumnFamilyDescriptor, DB, DBCompressionType, Options, WriteBatch, WriteOptions};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// RocksDB reported an error.
    #[error("database: {0}")]
    Db(String),
    /// A blocking task died.
    #[error("storage task failed: {0}")]
    Task(String),
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        Self::Db(e.into_string())
    }
}

/// The column families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// Identity documents hosted by this node: `user@idhost` to envelope bytes.
    Identities,
    /// Node metadata (schema version).
    Meta,
}

impl Cf {
    const ALL: [Cf; 2] = [Cf::Identities, Cf::Meta];

    fn name(self) -> &'static str {
        match self {
            Self::Identities => "identities",
            Self::Meta => "meta",
        }
    }

    fn options(self) -> Options {
        let mut opts = Options::default();
        opts.set_compression_type(DBCompressionType::Lz4);
        opts
    }
}

const SCHEMA_KEY: &[u8] = b"schema";
const SCHEMA_VERSION: &[u8] = b"1";

/// The database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// Serialises read-check-write sequences.
    write_lock: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens or creates the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf.options()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let store = Self {
            db: Arc::new(db),
            write_lock: Arc::default(),
        };
        if store.get(Cf::Meta, SCHEMA_KEY)?.is_none() {
            let mut batch = WriteBatch::default();
            batch.put_cf(store.cf(Cf::Meta)?, SCHEMA_KEY, SCHEMA_VERSION);
            store.write(batch)?;
        }
        Ok(store)
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

    /// Writes a batch durably: the WAL is synced before this returns.
    fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    /// The identity document stored for `user_id`.
    pub fn identity(&self, user_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Cf::Identities, user_id.as_bytes())
    }

    /// Stores an identity document if `decide`, given the current one,
    /// allows it. The check and the write are atomic with respect to other
    /// writers.
    pub fn update_identity<E>(
        &self,
        user_id: &str,
        decide: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Result<(), E>, StoreError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
