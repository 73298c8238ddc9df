//! `silt key backup` and `silt key restore`: a copy of every key but the
//! master key, kept on our own suppliers.
//!
//! The copy is one object in our master location, under a path that no user
//! path can name ([`NormalPath::key_backup`]), so it is sealed like every
//! file there: a fresh file key wrapped under a secret that only the master
//! key derives, and AES-256-GCM over the blocks. Suppliers see one more
//! object and learn nothing of what it holds. Private keys that are
//! protected by a passphrase stay protected inside it.
//!
//! Each backup is a new version, so the suppliers' version retention keeps
//! the last few. A restore reads the newest one that enough suppliers hold
//! and adds the keys that are missing; it never replaces a key that is here.
//! With `silt identity restore` (the master key) and `silt suppliers
//! recover` (where the data is), this brings a lost laptop's shares back.

use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::id::KeyId;
use common::keystore::{self, Keystore, KeystoreError, Restored};
use common::manifest::ObjectId;
use zeroize::Zeroizing;

use crate::home::HomeError;
use crate::pipeline::NormalPath;
use crate::session::{LocationKeys, Session, SessionError};
use crate::transfer::{TransferError, Version, newest};

/// What `silt key backup` stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysBackedUp {
    /// Keys in the backup.
    pub keys: usize,
    /// The version it was stored as.
    pub version: u64,
}

/// What `silt key restore` found.
#[derive(Debug)]
pub struct KeysRestored {
    /// The backup's version.
    pub version: u64,
    /// One entry per key in it.
    pub keys: Vec<Restored>,
}

/// Keys of the newest backup that a new one may leave out although this
/// home does not hold them.
#[derive(Debug, Clone, Copy)]
pub enum LeaveOut<'a> {
    /// None: a backup that would drop a key is refused.
    Nothing,
    /// These, which were deleted here on purpose.
    These(&'a [KeyId]),
    /// Every one (`silt key backup --prune`).
    All,
}

impl LeaveOut<'_> {
    fn covers(&self, key_id: &KeyId) -> bool {
        match self {
            Self::Nothing => false,
            Self::These(ids) => ids.contains(key_id),
            Self::All => true,
        }
    }
}

/// How scratch files are named; the download's temporary file adds a dot
/// in front.
const SCRATCH_PREFIX: &str = ".key-backup-";
/// A scratch file older than this was left by a process that was killed.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// A file in the keystore directory (mode 0700) that is removed when
/// dropped; the keystore ignores its name.
struct Scratch(PathBuf);

impl Scratch {
    /// A new empty file, mode 0600. Removes scratch files that a killed
    /// process left behind, since they may hold keys in the clear.
    fn create(dir: &Path) -> Result<Self, TransferError> {
        remove_stale(dir);
        let path = dir.join(format!("{SCRATCH_PREFIX}{:016x}", rand::random::<u64>()));
        File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| TransferError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self(path))
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
        move |source| TransferError::Io {
            path: self.0.clone(),
            source,
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Removes scratch files (and their downloads' temporary files) older than
/// [`STALE_AFTER`]; younger ones may belong to a command still running.
fn remove_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with(SCRATCH_PREFIX)
            || name
                .strip_prefix('.')
                .is_some_and(|n| n.starts_with(SCRATCH_PREFIX));
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if ours && stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn keystore_err(error: KeystoreError) -> TransferError {
    SessionError::from(HomeError::from(error)).into()
}

fn no_progress() -> crate::transfer::Progress {
    Arc::new(|_| {})
}

impl Session {
    /// The keystore, and where the key backup lives: our master location,
    /// the reserved path, its object ID. Only on our own suppliers.
    fn key_backup_object(
        &self,
    ) -> Result<(Keystore, LocationKeys, NormalPath, ObjectId), TransferError> {
        self.own_suppliers()?;
        let keystore = self.home().keystore().map_err(SessionError::from)?;
        let master = self.home().master_key_id().map_err(SessionError::from)?;
        let keys = self.location_keys(&master)?;
        let path = NormalPath::key_backup();
        let object = keys.secrets.object_id(&path);
        Ok((keystore, keys, path, object))
    }

    /// Stores every key but master keys on our own suppliers, as a new
    /// version of the key backup in our master location.
    ///
    /// A backup never silently drops a key: if the newest backup holds keys
    /// that this home does not (a new device before `silt key restore`, or
    /// a key deleted here), it is refused unless `leave_out` names them.
    pub async fn backup_keys(
        &self,
        leave_out: LeaveOut<'_>,
    ) -> Result<KeysBackedUp, TransferError> {
        let (keystore, keys, path, object) = self.key_backup_object()?;
        let (held, unreachable) = self.versions(&keys, Some(object)).await?;
        let version = held.keys().map(|(_, v)| v + 1).max().unwrap_or(1);
        if let Some(previous) = newest(held.values()) {
            let bytes = self
                .read_key_backup(&keystore, &keys, previous, &unreachable)
                .await?;
            let missing: Vec<String> = keystore::backup_key_ids(&bytes)
                .map_err(keystore_err)?
                .into_iter()
                .filter(|id| !keystore.contains(id) && !leave_out.covers(id))
                .map(|id| id.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(SessionError::Key(format!(
                    "the newest key backup (version {}) holds {} key(s) this home does not: {}; \
                     run `silt key restore` to bring them here first, or `silt key backup --prune` to leave them out",
                    previous.manifest.version,
                    missing.len(),
                    missing.join(", ")
                ))
                .into());
            }
        }

        let backup = keystore.backup().map_err(keystore_err)?;
        let scratch = Scratch::create(keystore.dir())?;
        fs::write(&scratch.0, &backup.bytes[..]).map_err(scratch.io())?;
        let uploaded = self
            .upload(&keys, &scratch.0, &path, version, no_progress())
            .await?;
        Ok(KeysBackedUp {
            keys: backup.keys,
            version: uploaded.version,
        })
    }

    /// Adds the keys of the newest key backup on our suppliers that are not
    /// in the keystore. Keys held here are never replaced.
    pub async fn restore_keys(&self) -> Result<KeysRestored, TransferError> {
        let (keystore, keys, _, object) = self.key_backup_object()?;
        let (held, unreachable) = self.versions(&keys, Some(object)).await?;
        let Some(version) = newest(held.values()) else {
            return Err(SessionError::Key(if unreachable.is_empty() {
                "there is no key backup on your suppliers (make one with `silt key backup`)".into()
            } else {
                format!(
                    "there is no key backup on the suppliers that answered; unreachable supplier positions: {unreachable:?}"
                )
            })
            .into());
        };
        let bytes = self
            .read_key_backup(&keystore, &keys, version, &unreachable)
            .await?;
        let restored = keystore.restore(&bytes).map_err(keystore_err)?;
        Ok(KeysRestored {
            version: version.manifest.version,
            keys: restored,
        })
    }

    /// Downloads one version of the key backup into memory, through a mode
    /// 0600 file in the keystore directory that is removed at once.
    async fn read_key_backup(
        &self,
        keystore: &Keystore,
        keys: &LocationKeys,
        version: &Version,
        unreachable: &[u32],
    ) -> Result<Zeroizing<Vec<u8>>, TransferError> {
        // Written under its own mode 0600, which the download keeps.
        let scratch = Scratch::create(keystore.dir())?;
        self.download(keys, version, &scratch.0, unreachable, no_progress())
            .await?;
        let mut bytes = Zeroizing::new(Vec::new());
        std::io::Read::read_to_end(
            &mut File::open(&scratch.0).map_err(scratch.io())?,
            &mut bytes,
        )
        .map_err(scratch.io())?;
        Ok(bytes)
    }
}
