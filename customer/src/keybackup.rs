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

use common::keystore::{Keystore, KeystoreError, Restored};
use common::manifest::ObjectId;
use zeroize::Zeroizing;

use crate::home::HomeError;
use crate::pipeline::NormalPath;
use crate::session::{LocationKeys, Session, SessionError};
use crate::transfer::{TransferError, newest};

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

/// A file in the keystore directory (mode 0700) that is removed when
/// dropped; the keystore ignores its name.
struct Scratch(PathBuf);

impl Scratch {
    /// A new empty file, mode 0600.
    fn create(dir: &Path) -> Result<Self, TransferError> {
        let path = dir.join(format!(".key-backup-{:016x}", rand::random::<u64>()));
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
    pub async fn backup_keys(&self) -> Result<KeysBackedUp, TransferError> {
        let (keystore, keys, path, object) = self.key_backup_object()?;
        let (held, _) = self.versions(&keys, Some(object)).await?;
        let version = held.keys().map(|(_, v)| v + 1).max().unwrap_or(1);

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
            return Err(TransferError::NotFound(if unreachable.is_empty() {
                "key backup on your suppliers (make one with `silt key backup`)".into()
            } else {
                format!(
                    "key backup on the suppliers that answered; unreachable supplier positions: {unreachable:?}"
                )
            }));
        };
        // Written under its own mode 0600, which the download keeps.
        let scratch = Scratch::create(keystore.dir())?;
        self.download(&keys, version, &scratch.0, &unreachable, no_progress())
            .await?;
        let mut bytes = Zeroizing::new(Vec::new());
        std::io::Read::read_to_end(
            &mut File::open(&scratch.0).map_err(scratch.io())?,
            &mut bytes,
        )
        .map_err(scratch.io())?;
        drop(scratch);
        let restored = keystore.restore(&bytes).map_err(keystore_err)?;
        Ok(KeysRestored {
            version: version.manifest.version,
            keys: restored,
        })
    }
}
