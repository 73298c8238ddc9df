//! File keys, nonces, AAD, and sealing blocks and metadata with AES-256-GCM.

use std::fmt;

use common::crypto::{NONCE_LEN, PrivateKey, PublicKey, SymmetricKey};
use common::id::KeyId;
use common::manifest::{Manifest, ObjectId};
use prost::Message;

use super::{FileMetadata, PipelineError};

/// The nonce that seals a version's metadata. Block nonces start with four
/// zero bytes, so no block index produces it.
pub const METADATA_NONCE: [u8; NONCE_LEN] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// AES-GCM tag length: a sealed block is this much longer than its plaintext.
pub(super) const TAG_LEN: usize = common::crypto::TAG_LEN;

const BLOCK_DOMAIN: &[u8] = b"silt-block-v1";
const METADATA_DOMAIN: &[u8] = b"silt-metadata-v1";

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

    /// Wraps the key with RSA-OAEP-SHA256 under the location's public key.
    pub fn wrap(&self, location_key: &PublicKey) -> Result<Vec<u8>, PipelineError> {
        location_key
            .wrap(self.0.as_bytes())
            .map_err(PipelineError::WrapKey)
    }

    /// Unwraps a key with the location's private key.
    ///
    /// RSA decryption leaks timing (RUSTSEC-2023-0071): only unwrap keys from
    /// manifests whose signatures were checked first.
    pub fn unwrap(wrapped: &[u8], location_key: &PrivateKey) -> Result<Self, PipelineError> {
        let bytes = location_key
            .unwrap(wrapped)
            .map_err(PipelineError::UnwrapKey)?;
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
    use super::super::NormalPath;
    use super::super::fixtures::{LOCATION, OTHER};
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
    fn file_keys_wrap_under_the_location_key() {
        let key = FileKey::generate();
        let wrapped = key.wrap(LOCATION.public_key()).unwrap();
        let back = FileKey::unwrap(&wrapped, &LOCATION).unwrap();
        assert_eq!(back.0.as_bytes(), key.0.as_bytes());
        assert!(matches!(
            FileKey::unwrap(&wrapped, &OTHER),
            Err(PipelineError::UnwrapKey(_))
        ));
        let printed = format!("{key:?} {:?}", VersionCipher::new(key.clone(), version()));
        assert!(printed.contains("FileKey(..)"));
        assert!(!printed.contains(&format!("{:?}", key.0.as_bytes())));
    }
}
