//! The keystore: one file per key under `<home>/keys/`.
//!
//! A key file is JSON (format `silt-key-v1`) that holds the key's metadata
//! (label, created time, epoch, origin, size) and the key as PEM: PKCS#8 for a
//! private key, optionally passphrase-encrypted, and SubjectPublicKeyInfo for
//! the public half, which is kept in the clear so listing never needs a
//! passphrase. Files are named `<key_id>.private` or `<key_id>.public`, are
//! written atomically with mode 0600, and every change holds `keys/.lock`, so
//! the CLI and the daemon never race.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::atomic_file::{self, PRIVATE_FILE_MODE};
use crate::crypto::{CryptoError, Passphrase, PrivateKey, PublicKey};
use crate::id::{KeyId, UserId};
use crate::lockfile::FileLock;

const FORMAT: &str = "silt-key-v1";
const MAX_KEY_FILE: u64 = 64 * 1024;
const PRIVATE_EXT: &str = "private";
const PUBLIC_EXT: &str = "public";

/// Why a keystore operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The key is not in the keystore.
    #[error("no key {0} in the keystore (see `silt key list`)")]
    NotFound(KeyId),
    /// A key with this ID already exists.
    #[error("a key {0} already exists")]
    Exists(KeyId),
    /// The master key cannot be deleted.
    #[error("{0} is the identity key and cannot be deleted")]
    MasterProtected(KeyId),
    /// Only the public half is held.
    #[error("only the public part of {0} is in the keystore")]
    PublicOnly(KeyId),
    /// The key is passphrase-protected and none was given.
    #[error("{0} is protected by a passphrase: set SILT_PASSPHRASE_FILE or pass --passphrase-file")]
    PassphraseRequired(KeyId),
    /// The passphrase is wrong.
    #[error("wrong passphrase for {0}")]
    WrongPassphrase(KeyId),
    /// A key file is damaged.
    #[error("key file {path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A key could not be encoded.
    #[error("key {key_id}: {source}")]
    Crypto {
        /// The key.
        key_id: KeyId,
        /// The error.
        #[source]
        source: CryptoError,
    },
    /// A key backup document cannot be used.
    #[error("the key backup cannot be used: {0}")]
    BadBackup(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeystoreError + '_ {
    move |source| KeystoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Which half of a key a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// The private key (and its public half).
    Private,
    /// Only the public key.
    Public,
}

/// Where a key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Made on this device.
    Created,
    /// Imported from a file.
    Imported,
    /// Received from another user (a grant or a public key).
    ReceivedFrom(UserId),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Created => f.write_str("created"),
            Self::Imported => f.write_str("imported"),
            Self::ReceivedFrom(user) => write!(f, "received from {user}"),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Origin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "created" => Ok(Self::Created),
            "imported" => Ok(Self::Imported),
            other => other
                .strip_prefix("received from ")
                .and_then(|user| user.parse().ok())
                .map(Self::ReceivedFrom)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown origin {other:?}"))),
        }
    }
}

/// A key's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyMeta {
    /// `alias$user@idhost`.
    pub key_id: KeyId,
    /// Private or public only.
    pub kind: KeyKind,
    /// Free text from the user.
    pub label: String,
    /// Seconds since the Unix epoch.
    pub created_unix: i64,
    /// Key epoch; increases when a share is rotated.
    pub epoch: u64,
    /// Where the key came from.
    pub origin: Origin,
    /// RSA modulus size.
    pub bits: usize,
    /// Whether the private key is passphrase-protected.
    pub encrypted: bool,
    /// Node ID of the public key (its fingerprint).
    pub fingerprint: String,
}

/// Metadata given when adding a key.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The key ID.
    pub key_id: KeyId,
    /// Free text.
    pub label: String,
    /// Key epoch.
    pub epoch: u64,
    /// Where the key came from.
    pub origin: Origin,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    format: String,
    key_id: KeyId,
    kind: KeyKind,
    label: String,
    created_unix: i64,
    epoch: u64,
    origin: Origin,
    bits: usize,
    encrypted: bool,
    public_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    private_pem: Option<String>,
}

impl KeyFile {
    fn meta(&self, public: &PublicKey) -> KeyMeta {
        KeyMeta {
            key_id: self.key_id.clone(),
            kind: self.kind,
            label: self.label.clone(),
            created_unix: self.created_unix,
            epoch: self.epoch,
            origin: self.origin.clone(),
            bits: self.bits,
            encrypted: self.encrypted,
            fingerprint: public.node_id().to_string(),
        }
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if let Some(pem) = self.private_pem.take() {
            drop(Zeroizing::new(pem));
        }
    }
}

/// The result of listing: the keys that loaded, and the files that did not.
#[derive(Debug, Default)]
pub struct Listing {
    /// Readable keys, sorted by key ID.
    pub keys: Vec<KeyMeta>,
    /// Files that could not be read, with the reason.
    pub damaged: Vec<KeystoreError>,
}

/// The format of a key backup document.
const BACKUP_FORMAT: &str = "silt-key-backup-v1";
/// Largest key backup read: far more keys than anyone holds.
const MAX_BACKUP_BYTES: usize = 64 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct BackupFile {
    format: String,
    keys: Vec<KeyFile>,
}

/// A key backup document (see [`Keystore::backup`]). Its bytes are wiped
/// when it is dropped.
pub struct KeyBackup {
    /// The document.
    pub bytes: Zeroizing<Vec<u8>>,
    /// How many keys it holds.
    pub keys: usize,
}

impl fmt::Debug for KeyBackup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBackup")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// What restoring one key from a backup did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// It was not here and now is.
    Added(KeyMeta),
    /// The same key is already here; nothing changed.
    Held(KeyMeta),
    /// Another key is held under this ID; it was kept, and the backup's
    /// copy was not restored.
    Differs(KeyId),
    /// The backup's copy is not a valid key file.
    Invalid {
        /// The ID it claims.
        key_id: KeyId,
        /// What is wrong.
        reason: String,
    },
    /// It could not be compared with what is here or written (a damaged
    /// key file here, a full disk).
    Failed {
        /// The key.
        key_id: KeyId,
        /// What went wrong.
        reason: String,
    },
}

/// The key IDs in a key backup document.
pub fn backup_key_ids(backup: &[u8]) -> Result<Vec<KeyId>, KeystoreError> {
    Ok(parse_backup(backup)?
        .keys
        .iter()
        .map(|k| k.key_id.clone())
        .collect())
}

fn parse_backup(backup: &[u8]) -> Result<BackupFile, KeystoreError> {
    if backup.len() > MAX_BACKUP_BYTES {
        return Err(KeystoreError::BadBackup("it is too large".into()));
    }
    let document: BackupFile = serde_json::from_slice(backup)
        .map_err(|e| KeystoreError::BadBackup(format!("it is not a key backup ({e})")))?;
    if document.format != BACKUP_FORMAT {
        return Err(KeystoreError::BadBackup(format!(
            "it is not a {BACKUP_FORMAT} document"
        )));
    }
    Ok(document)
}

/// The keystore directory.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
}

impl Keystore {
    /// Opens (and creates, mode 0700) the keystore in `dir`.
    pub fn open(dir: PathBuf) -> Result<Self, KeystoreError> {
        atomic_file::create_private_dir(&dir).map_err(io_err(&dir))?;
        Ok(Self { dir })
    }

    /// The keystore directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<FileLock, KeystoreError> {
        let path = self.dir.join(".lock");
        FileLock::exclusive(&path).map_err(io_err(&path))
    }

    fn path(&self, key_id: &KeyId, kind: KeyKind) -> PathBuf {
        let ext = match kind {
            KeyKind::Private => PRIVATE_EXT,
            KeyKind::Public => PUBLIC_EXT,
        };
        self.dir.join(format!("{key_id}.{ext}"))
    }

    /// Whether any half of `key_id` is held.
    pub fn contains(&self, key_id: &KeyId) -> bool {
        self.path(key_id, KeyKind::Private).exists() || self.path(key_id, KeyKind::Public).exists()
    }

    /// Adds a private key, encrypted with `passphrase` if one is given.
    /// Refuses to replace an existing key. A public-only copy of the same key
    /// is replaced by the private one.
    pub fn add_private(
        &self,
        new: NewKey,
        key: &PrivateKey,
        passphrase: Option<&Passphrase>,
    ) -> Result<KeyMeta, KeystoreError> {
        let crypto = |source| KeystoreError::Crypto {
            key_id: new.key_id.clone(),
            source,
        };
        let private_pem = match passphrase {
            Some(pass) => key.to_encrypted_pem(pass),
            None => key.to_pkcs8_pem(),
        }
        .map_err(crypto)?;
        let _lock = self.lock()?;
        let private_path = self.path(&new.key_id, KeyKind::Private);
        let public_path = self.path(&new.key_id, KeyKind::Public);
        if private_path.exists() {
            return Err(KeystoreError::Exists(new.key_id));
        }
        if public_path.exists() {
            let (held, _) = self.read(&public_path)?;
            if held.public_pem != key.public_key().to_pem().map_err(crypto)? {
                return Err(KeystoreError::Exists(new.key_id));
            }
        }
        let file = KeyFile {
            format: FORMAT.into(),
            key_id: new.key_id.clone(),
            kind: KeyKind::Private,
            label: new.label,
            created_unix: crate::unix_now(),
            epoch: new.epoch,
            origin: new.origin,
            bits: key.public_key().bits(),
            encrypted: passphrase.is_some(),
            public_pem: key.public_key().to_pem().map_err(crypto)?,
            private_pem: Some(private_pem.to_string()),
        };
        self.write_new(&private_path, &file)?;
        if public_path.exists() {
            fs::remove_file(&public_path).map_err(io_err(&public_path))?;
        }
        Ok(file.meta(key.public_key()))
    }

    /// Adds the public part of someone's key. Refuses to replace a key.
    pub fn add_public(&self, new: NewKey, key: &PublicKey) -> Result<KeyMeta, KeystoreError> {
        let public_pem = key.to_pem().map_err(|source| KeystoreError::Crypto {
            key_id: new.key_id.clone(),
            source,
        })?;
        let _lock = self.lock()?;
        if self.contains(&new.key_id) {
            return Err(KeystoreError::Exists(new.key_id));
        }
        let file = KeyFile {
            format: FORMAT.into(),
            key_id: new.key_id.clone(),
            kind: KeyKind::Public,
            label: new.label,
            created_unix: crate::unix_now(),
            epoch: new.epoch,
            origin: new.origin,
            bits: key.bits(),
            encrypted: false,
            public_pem,
            private_pem: None,
        };
        self.write_new(&self.path(&new.key_id, KeyKind::Public), &file)?;
        Ok(file.meta(key))
    }

    /// Loads a private key, decrypting it with `passphrase` if it is protected.
    pub fn load_private(
        &self,
        key_id: &KeyId,
        passphrase: Option<&Passphrase>,
    ) -> Result<(PrivateKey, KeyMeta), KeystoreError> {
        let path = self.path(key_id, KeyKind::Private);
        if !path.exists() {
            return Err(if self.path(key_id, KeyKind::Public).exists() {
                KeystoreError::PublicOnly(key_id.clone())
            } else {
                KeystoreError::NotFound(key_id.clone())
            });
        }
        let (file, meta) = self.read(&path)?;
        let pem = file
            .private_pem
            .as_deref()
            .ok_or_else(|| damaged(&path, "no private key"))?;
        let key = if file.encrypted {
            let pass =
                passphrase.ok_or_else(|| KeystoreError::PassphraseRequired(key_id.clone()))?;
            PrivateKey::from_encrypted_pem(pem, pass)
                .map_err(|_| KeystoreError::WrongPassphrase(key_id.clone()))?
        } else {
            PrivateKey::from_pkcs8_pem(pem).map_err(|e| damaged(&path, &e.to_string()))?
        };
        if key.public_key().to_pem().ok().as_deref() != Some(file.public_pem.as_str()) {
            return Err(damaged(&path, "private and public parts do not match"));
        }
        Ok((key, meta))
    }

    /// Loads the public half of a key, private or public-only.
    pub fn load_public(&self, key_id: &KeyId) -> Result<(PublicKey, KeyMeta), KeystoreError> {
        for kind in [KeyKind::Private, KeyKind::Public] {
            let path = self.path(key_id, kind);
            if path.exists() {
                let (file, meta) = self.read(&path)?;
                let key = PublicKey::from_pem(&file.public_pem)
                    .map_err(|e| damaged(&path, &e.to_string()))?;
                return Ok((key, meta));
            }
        }
        Err(KeystoreError::NotFound(key_id.clone()))
    }

    /// Lists every key.
    pub fn list(&self) -> Result<Listing, KeystoreError> {
        let mut listing = Listing::default();
        for path in self.key_files()? {
            match self.read(&path) {
                Ok((_, meta)) => listing.keys.push(meta),
                Err(e) => listing.damaged.push(e),
            }
        }
        listing.keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        Ok(listing)
    }

    /// Deletes a key. The master key is refused.
    pub fn delete(&self, key_id: &KeyId) -> Result<KeyMeta, KeystoreError> {
        if key_id.is_master() {
            return Err(KeystoreError::MasterProtected(key_id.clone()));
        }
        let _lock = self.lock()?;
        let (_, meta) = self.load_public(key_id)?;
        for kind in [KeyKind::Private, KeyKind::Public] {
            let path = self.path(key_id, kind);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(meta)
    }

    /// Removes a master key that was never used: only for undoing a
    /// `silt init` whose name the identity server refused. Every other
    /// deletion goes through [`Keystore::delete`], which protects the master key.
    pub fn discard_unused_master(&self, key_id: &KeyId) -> Result<(), KeystoreError> {
        let _lock = self.lock()?;
        let path = self.path(key_id, KeyKind::Private);
        fs::remove_file(&path).map_err(io_err(&path))
    }

    /// Every key but master keys, as one JSON document (format
    /// `silt-key-backup-v1`) that holds the key files as they are: a private
    /// key protected by a passphrase stays protected. A damaged key file
    /// fails the backup rather than being left out unseen.
    pub fn backup(&self) -> Result<KeyBackup, KeystoreError> {
        let _lock = self.lock()?;
        let mut keys = Vec::new();
        for path in self.key_files()? {
            let (file, meta) = self.read(&path)?;
            if !meta.key_id.is_master() {
                keys.push(file);
            }
        }
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        let count = keys.len();
        let bytes = serde_json::to_vec(&BackupFile {
            format: BACKUP_FORMAT.into(),
            keys,
        })
        .map_err(|e| damaged(&self.dir, &e.to_string()))?;
        Ok(KeyBackup {
            bytes: Zeroizing::new(bytes),
            keys: count,
        })
    }

    /// Adds the keys of a [`Keystore::backup`] that are not here. Nothing
    /// held is replaced: a key held under the same ID is reported as held
    /// if it is the same key, and as differing if not. A public-only copy
    /// is completed by the backup's private key when the two match. A key
    /// that is not valid is reported and the others are still restored; a
    /// document that is not a key backup is an error and restores nothing.
    pub fn restore(&self, backup: &[u8]) -> Result<Vec<Restored>, KeystoreError> {
        let document = parse_backup(backup)?;
        let _lock = self.lock()?;
        let mut report = Vec::with_capacity(document.keys.len());
        for file in &document.keys {
            report.push(match check_restored(file) {
                Err(reason) => Restored::Invalid {
                    key_id: file.key_id.clone(),
                    reason,
                },
                // A damaged file here stops this key only.
                Ok(public) => {
                    self.restore_one(file, &public)
                        .unwrap_or_else(|e| Restored::Failed {
                            key_id: file.key_id.clone(),
                            reason: e.to_string(),
                        })
                }
            });
        }
        Ok(report)
    }

    /// Writes one checked key file from a backup, holding the lock.
    fn restore_one(&self, file: &KeyFile, public: &PublicKey) -> Result<Restored, KeystoreError> {
        let private_path = self.path(&file.key_id, KeyKind::Private);
        let public_path = self.path(&file.key_id, KeyKind::Public);
        let held = [&private_path, &public_path]
            .into_iter()
            .find(|p| p.exists())
            .map(|p| self.read(p))
            .transpose()?;
        let upgrade = match &held {
            None => false,
            Some((held, meta)) => {
                if held.public_pem != file.public_pem {
                    return Ok(Restored::Differs(file.key_id.clone()));
                }
                if held.kind == KeyKind::Private || file.kind == KeyKind::Public {
                    return Ok(Restored::Held(meta.clone()));
                }
                true
            }
        };
        let copy = KeyFile {
            format: FORMAT.into(),
            key_id: file.key_id.clone(),
            kind: file.kind,
            label: file.label.clone(),
            created_unix: file.created_unix,
            epoch: file.epoch,
            origin: file.origin.clone(),
            bits: public.bits(),
            encrypted: file.encrypted,
            public_pem: file.public_pem.clone(),
            private_pem: file.private_pem.clone(),
        };
        self.write_new(&self.path(&file.key_id, file.kind), &copy)?;
        if upgrade {
            fs::remove_file(&public_path).map_err(io_err(&public_path))?;
        }
        Ok(Restored::Added(copy.meta(public)))
    }

    /// The paths of every key file.
    fn key_files(&self) -> Result<Vec<PathBuf>, KeystoreError> {
        let mut paths = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = entry.map_err(io_err(&self.dir))?.path();
            let is_key = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some(PRIVATE_EXT | PUBLIC_EXT)
            );
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if is_key && !hidden {
                paths.push(path);
            }
        }
        Ok(paths)
    }

    fn write_new(&self, path: &Path, file: &KeyFile) -> Result<(), KeystoreError> {
        let bytes = Zeroizing::new(
            serde_json::to_vec_pretty(file).map_err(|e| damaged(path, &e.to_string()))?,
        );
        atomic_file::write_new(path, &bytes, PRIVATE_FILE_MODE).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                KeystoreError::Exists(file.key_id.clone())
            } else {
                io_err(path)(e)
            }
        })
    }

    fn read(&self, path: &Path) -> Result<(KeyFile, KeyMeta), KeystoreError> {
        atomic_file::check_private(path).map_err(io_err(path))?;
        let mut bytes = Zeroizing::new(Vec::new());
        fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE + 1).read_to_end(&mut bytes))
            .map_err(io_err(path))?;
        if bytes.len() as u64 > MAX_KEY_FILE {
            return Err(damaged(path, "file is too large"));
        }
        let file: KeyFile =
            serde_json::from_slice(&bytes).map_err(|e| damaged(path, &e.to_string()))?;
        if file.format != FORMAT {
            return Err(damaged(path, "unknown format"));
        }
        let expected = self.path(&file.key_id, file.kind);
        if expected.file_name() != path.file_name() {
            return Err(damaged(path, "file name does not match the key id inside"));
        }
        let public =
            PublicKey::from_pem(&file.public_pem).map_err(|e| damaged(path, &e.to_string()))?;
        let meta = file.meta(&public);
        Ok((file, meta))
    }
}

/// A key file from a backup, checked as far as it can be without a
/// passphrase: its ID is not a master key's, its public key parses, it holds
/// a private key exactly when it says so, and an unprotected private key
/// matches its public key. Returns the public key.
fn check_restored(file: &KeyFile) -> Result<PublicKey, String> {
    if file.format != FORMAT {
        return Err("unknown key file format".into());
    }
    if file.key_id.is_master() {
        return Err("master keys are restored from an identity backup, not a key backup".into());
    }
    let public = PublicKey::from_pem(&file.public_pem).map_err(|e| e.to_string())?;
    match (file.kind, &file.private_pem) {
        (KeyKind::Public, None) => {}
        (KeyKind::Private, Some(pem)) => {
            if !file.encrypted {
                let private = PrivateKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
                if private.public_key() != &public {
                    return Err("its private and public parts do not match".into());
                }
            }
        }
        (KeyKind::Private, None) => return Err("it says private but holds no private key".into()),
        (KeyKind::Public, Some(_)) => return Err("it says public but holds a private key".into()),
    }
    Ok(public)
}

fn damaged(path: &Path, reason: &str) -> KeystoreError {
    KeystoreError::Damaged {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::LazyLock;

    use super::*;

    static KEY: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());

    fn new_key(id: &str) -> NewKey {
        NewKey {
            key_id: id.parse().unwrap(),
            label: "test".into(),
            epoch: 0,
            origin: Origin::Created,
        }
    }

    #[test]
    fn add_load_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Keystore::open(dir.path().join("keys")).unwrap();
        let id: KeyId = "photos$alice@id-a".parse().unwrap();
        let meta = store
            .add_private(new_key("photos$alice@id-a"), &KEY, None)
            .unwrap();
        assert_eq!(meta.bits, 2048);
        let path = dir.path().join("keys/photos$alice@id-a.private");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let (loaded, meta) = store.load_private(&id, None).unwrap();
        assert_eq!(loaded.public_key(), KEY.public_key());
        assert_eq!(meta.origin, Origin::Created);
        assert!(matches!(
            store.add_private(new_key("photos$alice@id-a"), &KEY, None),
            Err(KeystoreError::Exists(_))
        ));

        let bob: KeyId = "share_x1$bob@id-b".parse().unwrap();
        store
            .add_public(
                NewKey {
                    origin: Origin::ReceivedFrom("bob@id-b".parse().unwrap()),
                    ..new_key("share_x1$bob@id-b")
                },
                KEY.public_key(),
            )
            .unwrap();
        assert!(matches!(
            store.load_private(&bob, None),
            Err(KeystoreError::PublicOnly(_))
        ));
        let listing = store.list().unwrap();
        assert_eq!(listing.keys.len(), 2);
        assert!(listing.damaged.is_empty());
        assert_eq!(listing.keys[1].origin.to_string(), "received from bob@id-b");

        store.delete(&id).unwrap();
        assert!(!path.exists());
        assert!(matches!(
            store.load_private(&id, None),
            Err(KeystoreError::NotFound(_))
        ));
        assert!(matches!(store.delete(&id), Err(KeystoreError::NotFound(_))));
        let master: KeyId = "master$alice@id-a".parse().unwrap();
        assert!(matches!(
            store.delete(&master),
            Err(KeystoreError::MasterProtected(_))
        ));
    }

    #[test]
    fn protected_keys_need_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let store = Keystore::open(dir.path().join("keys")).unwrap();
        let id: KeyId = "master$alice@id-a".parse().unwrap();
        let pass = Passphrase::new("secret words".into());
        store
            .add_private(new_key("master$alice@id-a"), &KEY, Some(&pass))
            .unwrap();
        let text = fs::read_to_string(dir.path().join("keys/master$alice@id-a.private")).unwrap();
        assert!(text.contains("BEGIN ENCRYPTED PRIVATE KEY"));
        assert!(matches!(
            store.load_private(&id, None),
            Err(KeystoreError::PassphraseRequired(_))
        ));
        assert!(matches!(
            store.load_private(&id, Some(&Passphrase::new("nope".into()))),
            Err(KeystoreError::WrongPassphrase(_))
        ));
        store.load_private(&id, Some(&pass)).unwrap();
        // The public half needs no passphrase.
        assert_eq!(&store.load_public(&id).unwrap().0, KEY.public_key());
    }

    #[test]
    fn a_backup_restores_what_is_missing_and_replaces_nothing() {
        static OTHER: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let store = Keystore::open(dir.path().join("keys")).unwrap();
        store
            .add_private(new_key("master$alice@id-a"), &OTHER, None)
            .unwrap();
        let pass = Passphrase::new("secret words".into());
        store
            .add_private(new_key("photos$alice@id-a"), &KEY, None)
            .unwrap();
        store
            .add_private(new_key("locked$alice@id-a"), &KEY, Some(&pass))
            .unwrap();
        store
            .add_public(new_key("docs$bob@id-b"), OTHER.public_key())
            .unwrap();
        let backup = store.backup().unwrap();
        assert_eq!(backup.keys, 3, "the master key is left out");
        let text = String::from_utf8(backup.bytes.to_vec()).unwrap();
        assert!(!text.contains("master$alice"));
        assert!(
            text.contains("BEGIN ENCRYPTED PRIVATE KEY"),
            "protected keys stay protected"
        );

        // Into an empty keystore: everything comes back, the same keys.
        let laptop = Keystore::open(dir.path().join("laptop")).unwrap();
        let report = laptop.restore(&backup.bytes).unwrap();
        assert!(
            report.iter().all(|r| matches!(r, Restored::Added(_))),
            "{report:?}"
        );
        let photos: KeyId = "photos$alice@id-a".parse().unwrap();
        assert_eq!(
            laptop.load_private(&photos, None).unwrap().0.public_key(),
            KEY.public_key()
        );
        let locked: KeyId = "locked$alice@id-a".parse().unwrap();
        laptop.load_private(&locked, Some(&pass)).unwrap();
        assert_eq!(laptop.list().unwrap().keys.len(), 3);
        let mode = fs::metadata(dir.path().join("laptop/photos$alice@id-a.private"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // Again: nothing changes.
        let report = laptop.restore(&backup.bytes).unwrap();
        assert!(
            report.iter().all(|r| matches!(r, Restored::Held(_))),
            "{report:?}"
        );

        // A different key under a held ID is kept; a public-only copy is
        // completed by the matching private key.
        let other = Keystore::open(dir.path().join("other")).unwrap();
        other
            .add_private(new_key("photos$alice@id-a"), &OTHER, None)
            .unwrap();
        other
            .add_public(new_key("locked$alice@id-a"), KEY.public_key())
            .unwrap();
        let report = other.restore(&backup.bytes).unwrap();
        assert!(
            report.contains(&Restored::Differs(photos.clone())),
            "{report:?}"
        );
        assert_eq!(
            other.load_private(&photos, None).unwrap().0.public_key(),
            OTHER.public_key()
        );
        assert_eq!(other.load_public(&locked).unwrap().1.kind, KeyKind::Private);
        assert!(!dir.path().join("other/locked$alice@id-a.public").exists());
    }

    #[test]
    fn a_bad_backup_restores_nothing_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let store = Keystore::open(dir.path().join("keys")).unwrap();
        for (junk, expected) in [
            (&b"not json"[..], "not a key backup"),
            (
                br#"{"format":"other","keys":[]}"#,
                "not a silt-key-backup-v1",
            ),
        ] {
            let err = store.restore(junk).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        let err = store
            .restore(&vec![b' '; MAX_BACKUP_BYTES + 1])
            .unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");

        // One bad entry among good ones: the good ones are restored.
        let source = Keystore::open(dir.path().join("source")).unwrap();
        source
            .add_private(new_key("photos$alice@id-a"), &KEY, None)
            .unwrap();
        source
            .add_private(new_key("docs$alice@id-a"), &KEY, None)
            .unwrap();
        let backup = source.backup().unwrap();
        let mut document: serde_json::Value = serde_json::from_slice(&backup.bytes).unwrap();
        let other = PrivateKey::generate(2048).unwrap();
        document["keys"][0]["public_pem"] = other.public_key().to_pem().unwrap().into();
        let mut master = document["keys"][1].clone();
        master["key_id"] = "master$alice@id-a".into();
        document["keys"].as_array_mut().unwrap().push(master);
        let report = store
            .restore(&serde_json::to_vec(&document).unwrap())
            .unwrap();
        assert_eq!(report.len(), 3);
        assert!(
            matches!(&report[0], Restored::Invalid { reason, .. } if reason.contains("do not match")),
            "{report:?}"
        );
        assert!(matches!(&report[1], Restored::Added(_)), "{report:?}");
        assert!(
            matches!(&report[2], Restored::Invalid { reason, .. } if reason.contains("identity backup")),
            "{report:?}"
        );
        assert_eq!(store.list().unwrap().keys.len(), 1);

        // A damaged key file here stops that key only.
        let damaged_store = Keystore::open(dir.path().join("damaged")).unwrap();
        let junk = dir.path().join("damaged/photos$alice@id-a.private");
        atomic_file::write(&junk, b"not json", 0o600).unwrap();
        let report = damaged_store.restore(&backup.bytes).unwrap();
        assert!(matches!(&report[0], Restored::Added(_)), "{report:?}");
        assert!(
            matches!(&report[1], Restored::Failed { reason, .. } if reason.contains("damaged")),
            "{report:?}"
        );
        assert_eq!(fs::read(&junk).unwrap(), b"not json");
        assert_eq!(
            backup_key_ids(&backup.bytes).unwrap(),
            [
                "docs$alice@id-a".parse::<KeyId>().unwrap(),
                "photos$alice@id-a".parse().unwrap()
            ]
        );
    }

    #[test]
    fn damaged_and_exposed_files_are_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Keystore::open(dir.path().join("keys")).unwrap();
        store
            .add_private(new_key("photos$alice@id-a"), &KEY, None)
            .unwrap();
        let junk = dir.path().join("keys/junk$alice@id-a.private");
        atomic_file::write(&junk, b"not json", 0o600).unwrap();
        let listing = store.list().unwrap();
        assert_eq!(listing.keys.len(), 1);
        assert_eq!(listing.damaged.len(), 1);
        assert!(listing.damaged[0].to_string().contains("damaged"));

        let path = dir.path().join("keys/photos$alice@id-a.private");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = store
            .load_private(&"photos$alice@id-a".parse().unwrap(), None)
            .unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
