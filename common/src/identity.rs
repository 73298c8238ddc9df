//! Identity documents, trust-on-first-use pins and identity backups.
//!
//! An identity document names a user, their master public key and where
//! their daemon can be reached. It is signed by the master key itself, so it
//! proves only that whoever made it holds the key; *which* key belongs to a
//! user ID is settled by the identity server (first come, first served) and by
//! the pins each node keeps: the first key seen for a user ID is pinned, and a
//! later document with another key is refused loudly.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::atomic_file::{self, PRIVATE_FILE_MODE};
use crate::crypto::{Passphrase, PrivateKey, PublicKey, Purpose};
use crate::envelope::{Envelope, EnvelopeError};
use crate::id::{IdError, NodeId, UserId, UserName};
use crate::lockfile::FileLock;

/// Largest identity document body accepted.
pub const MAX_IDENTITY_BYTES: usize = 8 * 1024;
/// Most contact endpoints in one document.
pub const MAX_ENDPOINTS: usize = 8;
const MAX_ENDPOINT_LEN: usize = 255;
const BACKUP_FORMAT: &str = "silt-identity-backup-v1";

/// Why an identity document, pin or backup was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The envelope failed.
    #[error("identity document: {0}")]
    Envelope(#[from] EnvelopeError),
    /// A field is invalid.
    #[error("identity document: {0}")]
    Id(#[from] IdError),
    /// The master key is malformed or of a refused size.
    #[error("identity document: master key: {0}")]
    Key(#[source] crate::crypto::CryptoError),
    /// Another rule is broken.
    #[error("identity document: {0}")]
    Invalid(&'static str),
    /// The document is signed by a key other than the one it names.
    #[error("identity document is signed by a key other than the one it names")]
    WrongSigner,
    /// A user ID is pinned to another key.
    #[error(
        "the master key of {user} has changed: pinned {pinned}, offered {offered}; \
         if the change is expected, check the new fingerprint with {user} out of band \
         and remove the old pin with `silt identity unpin {user}`"
    )]
    PinMismatch {
        /// The user ID.
        user: UserId,
        /// Node ID of the pinned key.
        pinned: NodeId,
        /// Node ID of the offered key.
        offered: NodeId,
    },
    /// A backup file is malformed.
    #[error("not a Silt identity backup: {0}")]
    Backup(&'static str),
    /// A backup's key could not be decrypted.
    #[error("cannot open the identity backup: wrong passphrase, or the file is damaged")]
    BackupPassphrase,
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

impl IdentityError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What an identity document says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityDocument {
    /// `user@idhost`.
    pub user_id: UserId,
    /// The master public key.
    pub master_key: PublicKey,
    /// Where the user's daemon can be reached, `host:port`.
    pub endpoints: Vec<String>,
    /// Increases with every update.
    pub revision: u64,
    /// Seconds since the Unix epoch.
    pub created_unix: i64,
}

impl IdentityDocument {
    /// The node ID of the master key.
    pub fn node_id(&self) -> NodeId {
        self.master_key.node_id()
    }

    fn to_proto(&self) -> proto::identity::v1::IdentityDocument {
        proto::identity::v1::IdentityDocument {
            user: self.user_id.user().to_string(),
            idhost: self.user_id.idhost().to_string(),
            master_public_key: self.master_key.spki_der().to_vec(),
            endpoints: self.endpoints.clone(),
            revision: self.revision,
            created_unix: self.created_unix,
        }
    }

    fn check(&self) -> Result<(), IdentityError> {
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(IdentityError::Invalid("too many endpoints"));
        }
        if self
            .endpoints
            .iter()
            .any(|e| e.is_empty() || e.len() > MAX_ENDPOINT_LEN)
        {
            return Err(IdentityError::Invalid("endpoint is empty or too long"));
        }
        if self.revision == 0 {
            return Err(IdentityError::Invalid("revision must be at least 1"));
        }
        Ok(())
    }
}

impl TryFrom<proto::identity::v1::IdentityDocument> for IdentityDocument {
    type Error = IdentityError;

    fn try_from(wire: proto::identity::v1::IdentityDocument) -> Result<Self, Self::Error> {
        let user: UserName = wire.user.parse()?;
        let user_id = UserId::new(user, wire.idhost.parse()?);
        // The idhost must be in canonical form, or one ID would have two spellings.
        if user_id.to_string() != format!("{}@{}", wire.user, wire.idhost) {
            return Err(IdentityError::Invalid("idhost is not in canonical form"));
        }
        let document = Self {
            user_id,
            master_key: PublicKey::from_spki_der(&wire.master_public_key)
                .map_err(IdentityError::Key)?,
            endpoints: wire.endpoints,
            revision: wire.revision,
            created_unix: wire.created_unix,
        };
        document.check()?;
        Ok(document)
    }
}

/// An identity document with its verified signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIdentity {
    document: IdentityDocument,
    envelope: Envelope,
}

impl SignedIdentity {
    /// Signs a document with its master key.
    pub fn sign(document: IdentityDocument, master: &PrivateKey) -> Result<Self, IdentityError> {
        document.check()?;
        if master.public_key() != &document.master_key {
            return Err(IdentityError::WrongSigner);
        }
        let envelope = Envelope::seal_self_signed(master, Purpose::Identity, &document.to_proto())?;
        Ok(Self { document, envelope })
    }

    /// Verifies a received envelope: the signature with the carried key
    /// first, then the body, then that the body names that same key.
    pub fn verify(envelope: Envelope) -> Result<Self, IdentityError> {
        let (wire, signer) = envelope
            .open_self_signed::<proto::identity::v1::IdentityDocument>(Purpose::Identity)?;
        if wire.master_public_key != signer.spki_der() {
            return Err(IdentityError::WrongSigner);
        }
        let document = IdentityDocument::try_from(wire)?;
        Ok(Self { document, envelope })
    }

    /// Verifies the wire form.
    pub fn from_proto(wire: proto::common::v1::Envelope) -> Result<Self, IdentityError> {
        Self::verify(Envelope::from_proto(wire, MAX_IDENTITY_BYTES)?)
    }

    /// Verifies bytes written by [`SignedIdentity::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        Self::verify(Envelope::from_bytes(bytes, MAX_IDENTITY_BYTES)?)
    }

    /// The verified document.
    pub fn document(&self) -> &IdentityDocument {
        &self.document
    }

    /// The signed envelope, for sending on.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::common::v1::Envelope {
        self.envelope.to_proto()
    }

    /// Bytes for a file.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.envelope.to_bytes()
    }
}

/// The outcome of a pin check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// The key matched the pinned one.
    Known,
    /// No key was pinned for this user; this one now is.
    New,
}

/// Trust-on-first-use pins: user ID to master key node ID, in a JSON file.
#[derive(Debug, Clone)]
pub struct PinStore {
    path: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PinFile {
    pins: BTreeMap<String, PinEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PinEntry {
    node_id: NodeId,
    first_seen_unix: i64,
}

impl PinStore {
    /// Pins kept in `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Checks `key` against the pin for `user`, pinning it if there is none.
    pub fn check(&self, user: &UserId, key: &PublicKey) -> Result<Pin, IdentityError> {
        let _lock =
            FileLock::exclusive(&self.lock_path()).map_err(IdentityError::io(&self.path))?;
        let mut file = self.load()?;
        let offered = key.node_id();
        if let Some(entry) = file.pins.get(&user.to_string()) {
            return if entry.node_id == offered {
                Ok(Pin::Known)
            } else {
                Err(IdentityError::PinMismatch {
                    user: user.clone(),
                    pinned: entry.node_id,
                    offered,
                })
            };
        }
        file.pins.insert(
            user.to_string(),
            PinEntry {
                node_id: offered,
                first_seen_unix: crate::unix_now(),
            },
        );
        self.save(&file)?;
        Ok(Pin::New)
    }

    /// The pinned node ID of `user`, if any.
    pub fn get(&self, user: &UserId) -> Result<Option<NodeId>, IdentityError> {
        Ok(self.load()?.pins.get(&user.to_string()).map(|e| e.node_id))
    }

    /// Forgets the pin of `user`. Returns whether there was one.
    pub fn remove(&self, user: &UserId) -> Result<bool, IdentityError> {
        let _lock =
            FileLock::exclusive(&self.lock_path()).map_err(IdentityError::io(&self.path))?;
        let mut file = self.load()?;
        let removed = file.pins.remove(&user.to_string()).is_some();
        if removed {
            self.save(&file)?;
        }
        Ok(removed)
    }

    fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }

    fn load(&self) -> Result<PinFile, IdentityError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| IdentityError::Io {
                path: self.path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PinFile::default()),
            Err(e) => Err(IdentityError::io(&self.path)(e)),
        }
    }

    fn save(&self, file: &PinFile) -> Result<(), IdentityError> {
        let bytes = serde_json::to_vec_pretty(file).map_err(|e| IdentityError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        atomic_file::write(&self.path, &bytes, PRIVATE_FILE_MODE)
            .map_err(IdentityError::io(&self.path))
    }
}

#[derive(Serialize, Deserialize)]
struct BackupFile {
    format: String,
    user_id: String,
    node_id: String,
    /// Base64 of the signed identity envelope.
    identity: String,
    /// Passphrase-encrypted PKCS#8 PEM of the master key.
    master_key: String,
}

/// Writes an identity backup: the signed identity document and the master
/// key encrypted with `passphrase` (scrypt, AES-256-CBC; PKCS#8). The file is
/// mode 0600 and must not already exist.
pub fn write_backup(
    path: &Path,
    identity: &SignedIdentity,
    master: &PrivateKey,
    passphrase: &Passphrase,
) -> Result<(), IdentityError> {
    if passphrase.is_empty() {
        return Err(IdentityError::Backup(
            "a backup needs a non-empty passphrase",
        ));
    }
    if master.public_key() != &identity.document().master_key {
        return Err(IdentityError::WrongSigner);
    }
    let encrypted = master
        .to_encrypted_pem(passphrase)
        .map_err(IdentityError::Key)?;
    let file = BackupFile {
        format: BACKUP_FORMAT.into(),
        user_id: identity.document().user_id.to_string(),
        node_id: identity.document().node_id().to_string(),
        identity: BASE64.encode(identity.to_bytes()),
        master_key: encrypted.to_string(),
    };
    let bytes = zeroize::Zeroizing::new(
        serde_json::to_vec_pretty(&file).map_err(|_| IdentityError::Backup("cannot encode"))?,
    );
    atomic_file::write_new(path, &bytes, PRIVATE_FILE_MODE).map_err(IdentityError::io(path))
}

/// Reads an identity backup and decrypts its master key.
pub fn read_backup(
    path: &Path,
    passphrase: &Passphrase,
) -> Result<(SignedIdentity, PrivateKey), IdentityError> {
    let bytes = fs::read(path).map_err(IdentityError::io(path))?;
    let file: BackupFile =
        serde_json::from_slice(&bytes).map_err(|_| IdentityError::Backup("not valid JSON"))?;
    if file.format != BACKUP_FORMAT {
        return Err(IdentityError::Backup("unknown format"));
    }
    let envelope = BASE64
        .decode(file.identity.as_bytes())
        .map_err(|_| IdentityError::Backup("identity is not base64"))?;
    let identity = SignedIdentity::from_bytes(&envelope)?;
    let master = PrivateKey::from_encrypted_pem(&file.master_key, passphrase)
        .map_err(|_| IdentityError::BackupPassphrase)?;
    if master.public_key() != &identity.document().master_key {
        return Err(IdentityError::Backup(
            "master key does not match the identity document",
        ));
    }
    Ok((identity, master))
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    static KEY: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());

    fn document(key: &PrivateKey) -> IdentityDocument {
        IdentityDocument {
            user_id: "alice@id-a_7701".parse().unwrap(),
            master_key: key.public_key().clone(),
            endpoints: vec!["127.0.0.1:7700".into()],
            revision: 1,
            created_unix: 1_700_000_000,
        }
    }

    #[test]
    fn signed_documents_verify_from_bytes() {
        let signed = SignedIdentity::sign(document(&KEY), &KEY).unwrap();
        let back = SignedIdentity::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(back.document(), &document(&KEY));
        assert_eq!(back.document().node_id(), KEY.public_key().node_id());
    }

    #[test]
    fn documents_signed_by_another_key_are_refused() {
        let other = PrivateKey::generate(2048).unwrap();
        assert!(matches!(
            SignedIdentity::sign(document(&KEY), &other),
            Err(IdentityError::WrongSigner)
        ));
        // A document naming KEY but signed (and carried) by `other`.
        let envelope =
            Envelope::seal_self_signed(&other, Purpose::Identity, &document(&KEY).to_proto())
                .unwrap();
        assert!(matches!(
            SignedIdentity::verify(envelope),
            Err(IdentityError::WrongSigner)
        ));
    }

    #[test]
    fn non_canonical_or_invalid_documents_are_refused() {
        let mut wire = document(&KEY).to_proto();
        wire.idhost = "id-a_7700".into();
        let envelope = Envelope::seal_self_signed(&KEY, Purpose::Identity, &wire).unwrap();
        assert!(SignedIdentity::verify(envelope).is_err());

        let mut wire = document(&KEY).to_proto();
        wire.endpoints = vec!["x".into(); MAX_ENDPOINTS + 1];
        let envelope = Envelope::seal_self_signed(&KEY, Purpose::Identity, &wire).unwrap();
        assert!(SignedIdentity::verify(envelope).is_err());

        let mut wire = document(&KEY).to_proto();
        wire.user = "A".into();
        let envelope = Envelope::seal_self_signed(&KEY, Purpose::Identity, &wire).unwrap();
        assert!(SignedIdentity::verify(envelope).is_err());
    }

    #[test]
    fn pins_are_trust_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let pins = PinStore::new(dir.path().join("pins.json"));
        let alice: UserId = "alice@id-a".parse().unwrap();
        assert_eq!(pins.check(&alice, KEY.public_key()).unwrap(), Pin::New);
        assert_eq!(pins.check(&alice, KEY.public_key()).unwrap(), Pin::Known);
        let other = PrivateKey::generate(2048).unwrap();
        let err = pins.check(&alice, other.public_key()).unwrap_err();
        assert!(matches!(err, IdentityError::PinMismatch { .. }));
        assert!(err.to_string().contains("has changed"));
        // The pin survives a reload and can be removed on purpose.
        let pins = PinStore::new(dir.path().join("pins.json"));
        assert_eq!(pins.get(&alice).unwrap(), Some(KEY.public_key().node_id()));
        assert!(pins.remove(&alice).unwrap());
        assert_eq!(pins.check(&alice, other.public_key()).unwrap(), Pin::New);
    }

    #[test]
    fn backups_restore_with_the_right_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.silt");
        let signed = SignedIdentity::sign(document(&KEY), &KEY).unwrap();
        let pass = Passphrase::new("a long passphrase".into());
        write_backup(&path, &signed, &KEY, &pass).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("BEGIN PRIVATE KEY"));

        let (identity, master) = read_backup(&path, &pass).unwrap();
        assert_eq!(identity.document().node_id(), KEY.public_key().node_id());
        assert_eq!(master.public_key(), KEY.public_key());

        assert!(matches!(
            read_backup(&path, &Passphrase::new("wrong".into())),
            Err(IdentityError::BackupPassphrase)
        ));
        // An existing file is never overwritten, and empty passphrases are refused.
        assert!(write_backup(&path, &signed, &KEY, &pass).is_err());
        assert!(
            write_backup(
                &dir.path().join("b2"),
                &signed,
                &KEY,
                &Passphrase::new(String::new())
            )
            .is_err()
        );
        fs::write(dir.path().join("junk"), b"{}").unwrap();
        assert!(matches!(
            read_backup(&dir.path().join("junk"), &pass),
            Err(IdentityError::Backup(_))
        ));
    }
}
