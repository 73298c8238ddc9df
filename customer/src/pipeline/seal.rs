//! File keys, nonces, AAD, and sealing blocks and metadata with AES-256-GCM.

use std::fmt;
use std::sync::Arc;

use common::crypto::{CryptoError, NONCE_LEN, PrivateKey, SymmetricKey, hmac_sha256};
use common::id::KeyId;
use common::manifest::{Manifest, ObjectId};
use prost::Message;

use zeroize::Zeroizing;

use super::object::location_seed;
use super::{FileMetadata, NormalPath, ObjectIdKey, PipelineError};

/// The nonce that seals a version's metadata. Block nonces start with four
/// zero bytes, so no block index produces it.
pub const METADATA_NONCE: [u8; NONCE_LEN] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// AES-GCM tag length: a sealed block is this much longer than its plaintext.
pub(super) const TAG_LEN: usize = common::crypto::TAG_LEN;

const BLOCK_DOMAIN: &[u8] = b"silt-block-v1";
const METADATA_DOMAIN: &[u8] = b"silt-metadata-v1";

/// The message that derives the file-key wrapping secret from the location
/// key's seed.
const WRAP_LABEL: &[u8] = b"silt-file-key-wrap-v1";
const WRAP_DOMAIN: &[u8] = b"silt-file-key-v1";
/// A file key wrapped under a location's wrapping secret: a random nonce,
/// then the sealed 32-byte key and its tag. RSA-OAEP ciphertexts, which
/// earlier versions wrote, are as long as the modulus (256 bytes or more).
pub const WRAPPED_KEY_LEN: usize = NONCE_LEN + 32 + TAG_LEN;

/// The secrets of one location, all derived from its private key, so every
/// member derives the same: the object-ID secret and the secret that wraps
/// file keys. Zeroed on drop and never printed.
#[derive(Clone)]
pub struct LocationSecrets {
    object_ids: ObjectIdKey,
    wrap: SymmetricKey,
    /// For file keys that earlier versions wrapped with RSA-OAEP.
    private: Arc<PrivateKey>,
}

impl LocationSecrets {
    /// Derives the secrets from the location's private key.
    pub fn derive(location_key: Arc<PrivateKey>) -> Result<Self, PipelineError> {
        let seed = location_seed(&location_key)?;
        let wrap = Zeroizing::new(hmac_sha256(seed.as_slice(), WRAP_LABEL));
        Ok(Self {
            object_ids: ObjectIdKey::from_seed(&seed),
            wrap: SymmetricKey::from_slice(wrap.as_slice())
                .map_err(PipelineError::KeyDerivation)?,
            private: location_key,
        })
    }

    /// The object ID of `path` in this location.
    pub fn object_id(&self, path: &NormalPath) -> ObjectId {
        self.object_ids.object_id(path)
    }
}

impl fmt::Debug for LocationSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocationSecrets(..)")
    }
}

/// The random 256-bit key of one file version. Zeroed on drop and never
/// printed.
#[derive(Clone)]
pub struct FileKey(SymmetricKey);

impl FileKey {
    /// A fresh random key. Make one per file version and never reuse it: the
    /// nonces are derived from block indices, so they repeat across versions.
    pub fn generate() -> Self {
        Self(SymmetricKey::generate())
    }

    /// Wraps the key under the location's wrapping secret, bound to the
    /// version and key epoch it belongs to: [`WRAPPED_KEY_LEN`] bytes.
    pub fn wrap(
        &self,
        secrets: &LocationSecrets,
        version: &VersionRef,
        epoch: u64,
    ) -> Result<Vec<u8>, PipelineError> {
        // Random: a failed upload may be retried under the same version
        // with a new file key, so the version cannot serve as the nonce.
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = secrets
            .wrap
            .seal(&nonce, &wrap_aad(version, epoch), self.0.as_bytes())
            .map_err(PipelineError::WrapKey)?;
        let mut out = Vec::with_capacity(WRAPPED_KEY_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Unwraps a key wrapped by [`FileKey::wrap`] for `version` and `epoch`,
    /// or, for manifests written before, with RSA-OAEP under the location's
    /// public key.
    ///
    /// RSA decryption leaks timing (RUSTSEC-2023-0071): only unwrap keys from
    /// manifests whose signatures were checked first.
    pub fn unwrap(
        wrapped: &[u8],
        secrets: &LocationSecrets,
        version: &VersionRef,
        epoch: u64,
    ) -> Result<Self, PipelineError> {
        let bytes = if wrapped.len() == WRAPPED_KEY_LEN {
            let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
            let nonce: &[u8; NONCE_LEN] = nonce
                .try_into()
                .map_err(|_| PipelineError::UnwrapKey(CryptoError::Decrypt))?;
            Zeroizing::new(
                secrets
                    .wrap
                    .open(nonce, &wrap_aad(version, epoch), sealed)
                    .map_err(PipelineError::UnwrapKey)?,
            )
        } else {
            secrets
                .private
                .unwrap(wrapped)
                .map_err(PipelineError::UnwrapKey)?
        };
        SymmetricKey::from_slice(&bytes)
            .map(Self)
            .map_err(PipelineError::UnwrapKey)
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(..)")
    }
}

/// What a file version's ciphertext is bound to: its location (owner and
/// alias), object and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRef {
    /// The location, `alias$owner`.
    pub location: KeyId,
    /// The object.
    pub object_id: ObjectId,
    /// The version, from 1.
    pub version: u64,
}

impl VersionRef {
    /// The version a manifest describes.
    pub fn of(manifest: &Manifest) -> Self {
        Self {
            location: manifest.location.clone(),
            object_id: manifest.object_id,
            version: manifest.version,
        }
    }
}

/// The nonce of block `index`: four zero bytes, then the index as a
/// big-endian u64.
pub fn block_nonce(index: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[4..].copy_from_slice(&index.to_be_bytes());
    nonce
}

/// The AAD of block `index` of `version`.
pub fn block_aad(version: &VersionRef, index: u64) -> Vec<u8> {
    let mut aad = version_aad(BLOCK_DOMAIN, version);
    push_field(&mut aad, &index.to_be_bytes());
    aad
}

/// The AAD of the metadata of `version`.
pub fn metadata_aad(version: &VersionRef) -> Vec<u8> {
    version_aad(METADATA_DOMAIN, version)
}

/// Seals and opens the blocks and metadata of one file version.
#[derive(Debug, Clone)]
pub struct VersionCipher {
    key: FileKey,
    version: VersionRef,
    /// The block AAD up to, not including, the block index.
    block_aad_prefix: Vec<u8>,
}

impl VersionCipher {
    /// A cipher for `version` under `key`. The key must belong to this
    /// version alone (see [`FileKey::generate`]).
    pub fn new(key: FileKey, version: VersionRef) -> Self {
        let block_aad_prefix = version_aad(BLOCK_DOMAIN, &version);
        Self {
            key,
            version,
            block_aad_prefix,
        }
    }

    /// The version this cipher seals.
    pub fn version(&self) -> &VersionRef {
        &self.version
    }

    /// Seals block `index` in place: `block` holds the plaintext and ends up
    /// holding the sealed block, 16 bytes longer.
    pub fn seal_block_in_place(
        &self,
        index: u64,
        block: &mut Vec<u8>,
    ) -> Result<(), PipelineError> {
        self.key
            .0
            .seal_in_place(&block_nonce(index), &self.block_aad(index), block)
            .map_err(PipelineError::Seal)
    }

    /// Seals block `index`; the result is 16 bytes longer than `plaintext`.
    pub fn seal_block(&self, index: u64, plaintext: &[u8]) -> Result<Vec<u8>, PipelineError> {
        self.key
            .0
            .seal(&block_nonce(index), &self.block_aad(index), plaintext)
            .map_err(PipelineError::Seal)
    }

    /// Opens block `index`.
    pub fn open_block(&self, index: u64, sealed: &[u8]) -> Result<Vec<u8>, PipelineError> {
        self.key
            .0
            .open(&block_nonce(index), &self.block_aad(index), sealed)
            .map_err(|_| PipelineError::BlockDecrypt { block: index })
    }

    /// Seals the metadata: [`METADATA_NONCE`] followed by the ciphertext of
    /// the `FileMetadata` protobuf.
    pub fn seal_metadata(&self, metadata: &FileMetadata) -> Result<Vec<u8>, PipelineError> {
        let plaintext = zeroize::Zeroizing::new(metadata.to_proto().encode_to_vec());
        let sealed = self
            .key
            .0
            .seal(&METADATA_NONCE, &metadata_aad(&self.version), &plaintext)
            .map_err(PipelineError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&METADATA_NONCE);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens and checks sealed metadata.
    pub fn open_metadata(&self, sealed: &[u8]) -> Result<FileMetadata, PipelineError> {
        let ciphertext = sealed
            .strip_prefix(METADATA_NONCE.as_slice())
            .ok_or(PipelineError::MetadataDecrypt)?;
        let plaintext = zeroize::Zeroizing::new(
            self.key
                .0
                .open(&METADATA_NONCE, &metadata_aad(&self.version), ciphertext)
                .map_err(|_| PipelineError::MetadataDecrypt)?,
        );
        let wire = proto::storage::v1::FileMetadata::decode(plaintext.as_slice())
            .map_err(PipelineError::MetadataDecode)?;
        FileMetadata::try_from(wire)
    }

    fn block_aad(&self, index: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.block_aad_prefix.len() + 12);
        aad.extend_from_slice(&self.block_aad_prefix);
        push_field(&mut aad, &index.to_be_bytes());
        aad
    }
}

/// The AAD of a wrapped file key: the version's fields, then the epoch.
fn wrap_aad(version: &VersionRef, epoch: u64) -> Vec<u8> {
    let mut aad = version_aad(WRAP_DOMAIN, version);
    push_field(&mut aad, &epoch.to_be_bytes());
    aad
}

/// Domain, owner, alias, object ID and version, each length-prefixed.
fn version_aad(domain: &[u8], version: &VersionRef) -> Vec<u8> {
    let mut aad = Vec::with_capacity(160);
    push_field(&mut aad, domain);
    push_field(&mut aad, version.location.owner().to_string().as_bytes());
    push_field(&mut aad, version.location.alias().as_str().as_bytes());
    push_field(&mut aad, &version.object_id.0);
    push_field(&mut aad, &version.version.to_be_bytes());
    aad
}

/// Appends `field` with its length as a big-endian u32.
fn push_field(aad: &mut Vec<u8>, field: &[u8]) {
    // Every field is an ID, a tag or an integer: far below 4 GiB.
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    aad.extend_from_slice(&len.to_be_bytes());
    aad.extend_from_slice(field);
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{LOCATION, OTHER_SECRETS, SECRETS};
    use super::*;

    fn version() -> VersionRef {
        VersionRef {
            location: "photos$alice@id-a".parse().unwrap(),
            object_id: ObjectId([7; 32]),
            version: 3,
        }
    }

    fn metadata() -> FileMetadata {
        FileMetadata {
            path: NormalPath::new("a/b.txt").unwrap(),
            size: 10,
            mtime_unix: 1_700_000_000,
            block_size: 65536,
            block_count: 1,
        }
    }

    #[test]
    fn nonces_never_collide() {
        assert_eq!(block_nonce(0), [0; 12]);
        assert_eq!(block_nonce(0x0102), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(block_nonce(u64::MAX)[..4], [0; 4]);
        assert_ne!(METADATA_NONCE[..4], [0; 4]);
    }

    #[test]
    fn aad_fields_are_length_prefixed() {
        let aad = block_aad(&version(), 5);
        let mut expected = Vec::new();
        for field in [
            b"silt-block-v1".as_slice(),
            b"alice@id-a",
            b"photos",
            &[7; 32],
            &3u64.to_be_bytes(),
            &5u64.to_be_bytes(),
        ] {
            expected.extend_from_slice(&(field.len() as u32).to_be_bytes());
            expected.extend_from_slice(field);
        }
        assert_eq!(aad, expected);
        let meta = metadata_aad(&version());
        assert!(meta.starts_with(b"\0\0\0\x10silt-metadata-v1"));
        assert_ne!(block_aad(&version(), 5), block_aad(&version(), 6));
    }

    #[test]
    fn blocks_are_bound_to_index_version_object_and_location() {
        let key = FileKey::generate();
        let cipher = VersionCipher::new(key.clone(), version());
        let sealed = cipher.seal_block(4, b"block four").unwrap();
        assert_eq!(sealed.len(), b"block four".len() + TAG_LEN);
        assert_eq!(cipher.open_block(4, &sealed).unwrap(), b"block four");
        assert!(matches!(
            cipher.open_block(5, &sealed),
            Err(PipelineError::BlockDecrypt { block: 5 })
        ));

        // The same key under another version, object, alias or owner.
        let mut others = Vec::new();
        let mut v = version();
        v.version = 4;
        others.push(v);
        let mut v = version();
        v.object_id = ObjectId([8; 32]);
        others.push(v);
        let mut v = version();
        v.location = "videos$alice@id-a".parse().unwrap();
        others.push(v);
        let mut v = version();
        v.location = "photos$alice@id-b".parse().unwrap();
        others.push(v);
        for other in others {
            let cipher = VersionCipher::new(key.clone(), other.clone());
            assert!(cipher.open_block(4, &sealed).is_err(), "{other:?}");
        }

        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert!(cipher.open_block(4, &flipped).is_err());
        assert!(
            VersionCipher::new(FileKey::generate(), version())
                .open_block(4, &sealed)
                .is_err()
        );
    }

    #[test]
    fn metadata_round_trips_and_is_bound_to_the_version() {
        let key = FileKey::generate();
        let cipher = VersionCipher::new(key.clone(), version());
        let sealed = cipher.seal_metadata(&metadata()).unwrap();
        assert!(sealed.starts_with(&METADATA_NONCE));
        assert_eq!(cipher.open_metadata(&sealed).unwrap(), metadata());

        let mut v = version();
        v.version = 2;
        let other = VersionCipher::new(key.clone(), v);
        assert!(matches!(
            other.open_metadata(&sealed),
            Err(PipelineError::MetadataDecrypt)
        ));
        // A block sealed where metadata belongs does not open as metadata.
        let block = cipher.seal_block(0, b"x").unwrap();
        assert!(cipher.open_metadata(&block).is_err());
        assert!(cipher.open_metadata(&[]).is_err());
    }

    #[test]
    fn file_keys_wrap_under_the_location_secret_bound_to_version_and_epoch() {
        let key = FileKey::generate();
        let version = version();
        let wrapped = key.wrap(&SECRETS, &version, 3).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
        let back = FileKey::unwrap(&wrapped, &SECRETS, &version, 3).unwrap();
        assert_eq!(back.0.as_bytes(), key.0.as_bytes());
        // A second wrap of the same key looks unrelated (fresh nonce).
        assert_ne!(key.wrap(&SECRETS, &version, 3).unwrap(), wrapped);
        // Another location, version, object or epoch does not unwrap it.
        let unwraps = |secrets: &LocationSecrets, version: &VersionRef, epoch| {
            FileKey::unwrap(&wrapped, secrets, version, epoch).is_ok()
        };
        assert!(!unwraps(&OTHER_SECRETS, &version, 3));
        assert!(!unwraps(&SECRETS, &version, 4));
        let mut later = version.clone();
        later.version += 1;
        assert!(!unwraps(&SECRETS, &later, 3));
        let mut elsewhere = version.clone();
        elsewhere.object_id = ObjectId([9; 32]);
        assert!(!unwraps(&SECRETS, &elsewhere, 3));
        // A damaged wrap is refused; a truncated one goes to RSA, which
        // refuses it for its length.
        let mut damaged = wrapped.clone();
        damaged[20] ^= 1;
        assert!(matches!(
            FileKey::unwrap(&damaged, &SECRETS, &version, 3),
            Err(PipelineError::UnwrapKey(_))
        ));
        assert!(FileKey::unwrap(&wrapped[..40], &SECRETS, &version, 3).is_err());
        assert!(FileKey::unwrap(&[], &SECRETS, &version, 3).is_err());
        let printed = format!(
            "{key:?} {:?} {:?}",
            VersionCipher::new(key.clone(), version),
            *SECRETS
        );
        assert!(printed.contains("FileKey(..)") && printed.contains("LocationSecrets(..)"));
        assert!(!printed.contains(&format!("{:?}", key.0.as_bytes())));
    }

    #[test]
    fn file_keys_that_earlier_versions_wrapped_with_rsa_still_unwrap() {
        let key = FileKey::generate();
        let legacy = LOCATION.public_key().wrap(key.0.as_bytes()).unwrap();
        assert_ne!(legacy.len(), WRAPPED_KEY_LEN);
        let back = FileKey::unwrap(&legacy, &SECRETS, &version(), 0).unwrap();
        assert_eq!(back.0.as_bytes(), key.0.as_bytes());
        assert!(matches!(
            FileKey::unwrap(&legacy, &OTHER_SECRETS, &version(), 0),
            Err(PipelineError::UnwrapKey(_))
        ));
    }

    #[test]
    fn the_wrapping_secret_is_not_the_object_id_secret() {
        let path = NormalPath::new("a").unwrap();
        let ids = ObjectIdKey::derive(&LOCATION).unwrap();
        // Object IDs did not change when the wrapping secret was added.
        assert_eq!(SECRETS.object_id(&path), ids.object_id(&path));
        assert_ne!(
            SECRETS.wrap.as_bytes().as_slice(),
            hmac_sha256(&location_seed(&LOCATION).unwrap()[..], b"silt-object-id-v1").as_slice()
        );
    }
}
