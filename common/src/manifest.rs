//! File version manifests: what a supplier checks before a version becomes
//! visible, and what members read to find and decrypt a file.
//!
//! A manifest is signed twice over the same body bytes (purpose `manifest`):
//! by the location's key, which proves the writer is a member, and by the
//! writer's master key, which attributes the write. Both signatures are
//! checked over the received bytes before the body is decoded.

use prost::Message;

use crate::crypto::{CryptoError, PrivateKey, PublicKey, Purpose};
use crate::digest::{DIGEST_LEN, FragmentHash};
use crate::id::{IdError, KeyId, UserId};

/// Largest encoded manifest body accepted.
pub const MAX_MANIFEST_BYTES: usize = 16 * 1024 * 1024;
/// Most suppliers (positions) in one scheme.
pub const MAX_POSITIONS: u32 = 64;
const MAX_WRAPPED_KEY: usize = 1024;
const MAX_SEALED_METADATA: usize = 64 * 1024;
/// Largest version number: leaves room for a next one.
pub const MAX_VERSION: u64 = u64::MAX / 2;
/// Largest fragment a manifest may describe (4 GiB). Far above any block
/// size the customer makes, and small enough that sizes summed over a
/// manifest's blocks and positions cannot overflow.
pub const MAX_FRAGMENT_SIZE: u64 = 1 << 32;

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The location signature does not verify.
    #[error("manifest location signature is invalid")]
    BadLocationSignature,
    /// The writer signature does not verify.
    #[error("manifest writer signature is invalid")]
    BadWriterSignature,
    /// The body is too large.
    #[error("manifest is {0} bytes, more than allowed")]
    TooLarge(usize),
    /// The body does not decode.
    #[error("manifest is malformed: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// An ID in the body is invalid.
    #[error("manifest: {0}")]
    Id(#[from] IdError),
    /// Another rule is broken.
    #[error("manifest: {0}")]
    Invalid(&'static str),
    /// Signing failed.
    #[error("manifest signing failed: {0}")]
    Sign(#[source] CryptoError),
}

/// An object ID: HMAC-SHA256 of the normalized path under a secret derived
/// from the location's key, so suppliers learn no names.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// Parses 32 bytes from the wire.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ManifestError> {
        Ok(Self(bytes.try_into().map_err(|_| {
            ManifestError::Invalid("object id must be 32 bytes")
        })?))
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectId({})", hex::encode(&self.0[..6]))
    }
}

/// An erasure-coding scheme: `data` fragments are enough to rebuild a block,
/// `parity` more are stored; one fragment per supplier position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// Fragments needed (k).
    pub data: u32,
    /// Extra fragments (m).
    pub parity: u32,
}

impl Scheme {
    /// Total positions, k + m.
    pub fn positions(&self) -> u32 {
        self.data + self.parity
    }

    /// Checks the bounds: k ≥ 1, k + m ≤ [`MAX_POSITIONS`].
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.data == 0 {
            return Err(ManifestError::Invalid(
                "scheme needs at least one data fragment",
            ));
        }
        if self.positions() > MAX_POSITIONS {
            return Err(ManifestError::Invalid("scheme has too many positions"));
        }
        Ok(())
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{}", self.data, self.parity)
    }
}

/// The fragments of one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockFragments {
    /// Digest of the fragment at each position, in position order, with the
    /// manifest's [`Manifest::fragment_hash`].
    pub digests: Vec<[u8; DIGEST_LEN]>,
    /// Size of each fragment.
    pub fragment_size: u64,
}

/// One version of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The location: `alias$owner`.
    pub location: KeyId,
    /// The object.
    pub object_id: ObjectId,
    /// Version number, from 1.
    pub version: u64,
    /// Key epoch the file key is wrapped under.
    pub epoch: u64,
    /// Who wrote it.
    pub writer: UserId,
    /// Erasure-coding scheme.
    pub scheme: Scheme,
    /// RSA-OAEP wrapped file key.
    pub wrapped_file_key: Vec<u8>,
    /// AES-256-GCM sealed file metadata (path, size, mtime, block size).
    pub sealed_metadata: Vec<u8>,
    /// How the fragment digests in `blocks` are computed.
    pub fragment_hash: FragmentHash,
    /// Fragment digests, one entry per block.
    pub blocks: Vec<BlockFragments>,
    /// Seconds since the Unix epoch.
    pub created_unix: i64,
}

impl Manifest {
    /// The wire form of the body.
    pub fn to_proto(&self) -> proto::storage::v1::Manifest {
        proto::storage::v1::Manifest {
            location: Some(proto::common::v1::Location {
                owner: self.location.owner().to_string(),
                alias: self.location.alias().to_string(),
            }),
            object_id: self.object_id.0.to_vec(),
            version: self.version,
            epoch: self.epoch,
            writer: self.writer.to_string(),
            scheme: Some(proto::storage::v1::ErasureScheme {
                data: self.scheme.data,
                parity: self.scheme.parity,
            }),
            wrapped_file_key: self.wrapped_file_key.clone(),
            sealed_metadata: self.sealed_metadata.clone(),
            blocks: self
                .blocks
                .iter()
                .map(|b| proto::storage::v1::BlockFragments {
                    digests: b.digests.iter().map(|h| h.to_vec()).collect(),
                    fragment_size: b.fragment_size,
                })
                .collect(),
            created_unix: self.created_unix,
            fragment_hash: self.fragment_hash.to_wire(),
        }
    }

    fn check(&self) -> Result<(), ManifestError> {
        self.scheme.check()?;
        if self.version == 0 {
            return Err(ManifestError::Invalid("version must be at least 1"));
        }
        if self.version > MAX_VERSION {
            return Err(ManifestError::Invalid("version number is too large"));
        }
        if self
            .blocks
            .iter()
            .any(|b| b.fragment_size > MAX_FRAGMENT_SIZE)
        {
            return Err(ManifestError::Invalid("a fragment is too large"));
        }
        if self.wrapped_file_key.len() > MAX_WRAPPED_KEY {
            return Err(ManifestError::Invalid("wrapped file key is too large"));
        }
        if self.sealed_metadata.len() > MAX_SEALED_METADATA {
            return Err(ManifestError::Invalid("sealed metadata is too large"));
        }
        let positions = self.scheme.positions() as usize;
        if self.blocks.iter().any(|b| b.digests.len() != positions) {
            return Err(ManifestError::Invalid(
                "a block does not list one hash per position",
            ));
        }
        Ok(())
    }
}

impl TryFrom<proto::storage::v1::Manifest> for Manifest {
    type Error = ManifestError;

    fn try_from(wire: proto::storage::v1::Manifest) -> Result<Self, Self::Error> {
        let location = wire
            .location
            .ok_or(ManifestError::Invalid("missing location"))?;
        let scheme = wire
            .scheme
            .ok_or(ManifestError::Invalid("missing scheme"))?;
        let mut blocks = Vec::with_capacity(wire.blocks.len());
        for block in wire.blocks {
            let mut digests = Vec::with_capacity(block.digests.len());
            for digest in block.digests {
                digests.push(
                    <[u8; DIGEST_LEN]>::try_from(digest.as_slice())
                        .map_err(|_| ManifestError::Invalid("fragment digest must be 32 bytes"))?,
                );
            }
            blocks.push(BlockFragments {
                digests,
                fragment_size: block.fragment_size,
            });
        }
        let manifest = Self {
            location: KeyId::new(location.alias.parse()?, location.owner.parse()?),
            object_id: ObjectId::from_slice(&wire.object_id)?,
            version: wire.version,
            epoch: wire.epoch,
            writer: wire.writer.parse()?,
            scheme: Scheme {
                data: scheme.data,
                parity: scheme.parity,
            },
            wrapped_file_key: wire.wrapped_file_key,
            sealed_metadata: wire.sealed_metadata,
            fragment_hash: FragmentHash::from_wire(wire.fragment_hash)
                .map_err(|_| ManifestError::Invalid("unknown fragment hash algorithm"))?,
            blocks,
            created_unix: wire.created_unix,
        };
        manifest.check()?;
        Ok(manifest)
    }
}

/// A manifest body and its two signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedManifest {
    body: Vec<u8>,
    location_signature: Vec<u8>,
    writer_signature: Vec<u8>,
}

impl SignedManifest {
    /// Encodes and signs `manifest` with the location key and the writer's
    /// master key.
    pub fn sign(
        manifest: &Manifest,
        location_key: &PrivateKey,
        writer_key: &PrivateKey,
    ) -> Result<Self, ManifestError> {
        manifest.check()?;
        let body = manifest.to_proto().encode_to_vec();
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(body.len()));
        }
        let location_signature = location_key
            .sign(Purpose::Manifest, &body)
            .map_err(ManifestError::Sign)?;
        // In the owner's master location the two keys are one: one signature
        // serves both checks, and saves an RSA operation per version.
        let writer_signature = if location_key.public_key() == writer_key.public_key() {
            location_signature.clone()
        } else {
            writer_key
                .sign(Purpose::Manifest, &body)
                .map_err(ManifestError::Sign)?
        };
        Ok(Self {
            body,
            location_signature,
            writer_signature,
        })
    }

    /// Takes the wire form, unverified; only the size is checked.
    pub fn from_proto(wire: proto::storage::v1::SignedManifest) -> Result<Self, ManifestError> {
        if wire.body.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(wire.body.len()));
        }
        Ok(Self {
            body: wire.body,
            location_signature: wire.location_signature,
            writer_signature: wire.writer_signature,
        })
    }

    /// The encoded body, as signed.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::storage::v1::SignedManifest {
        proto::storage::v1::SignedManifest {
            body: self.body.clone(),
            location_signature: self.location_signature.clone(),
            writer_signature: self.writer_signature.clone(),
        }
    }

    /// Checks the location signature with `location_key`, then decodes and
    /// validates the body. The writer signature is left to
    /// [`SignedManifest::verify_writer`], since finding the writer's key needs
    /// the writer's name from the body.
    pub fn verify_location(&self, location_key: &PublicKey) -> Result<Manifest, ManifestError> {
        location_key
            .verify(Purpose::Manifest, &self.body, &self.location_signature)
            .map_err(|_| ManifestError::BadLocationSignature)?;
        Manifest::try_from(proto::storage::v1::Manifest::decode(self.body.as_slice())?)
    }

    /// Checks the writer signature with the writer's master key.
    pub fn verify_writer(&self, writer_key: &PublicKey) -> Result<(), ManifestError> {
        writer_key
            .verify(Purpose::Manifest, &self.body, &self.writer_signature)
            .map_err(|_| ManifestError::BadWriterSignature)
    }

    /// Checks both signatures and returns the manifest.
    pub fn verify(
        &self,
        location_key: &PublicKey,
        writer_key: &PublicKey,
    ) -> Result<Manifest, ManifestError> {
        let manifest = self.verify_location(location_key)?;
        self.verify_writer(writer_key)?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    static SHARE: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());
    static WRITER: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());

    fn manifest() -> Manifest {
        Manifest {
            location: "photos$alice@id-a".parse().unwrap(),
            object_id: ObjectId([3; 32]),
            version: 2,
            epoch: 0,
            writer: "bob@id-b".parse().unwrap(),
            scheme: Scheme { data: 2, parity: 1 },
            wrapped_file_key: vec![1; 256],
            sealed_metadata: vec![2; 80],
            fragment_hash: FragmentHash::Blake3,
            blocks: vec![BlockFragments {
                digests: vec![[4; 32], [5; 32], [6; 32]],
                fragment_size: 10,
            }],
            created_unix: 5,
        }
    }

    #[test]
    fn both_signatures_are_checked() {
        let signed = SignedManifest::sign(&manifest(), &SHARE, &WRITER).unwrap();
        let back = SignedManifest::from_proto(signed.to_proto()).unwrap();
        assert_eq!(
            back.verify(SHARE.public_key(), WRITER.public_key())
                .unwrap(),
            manifest()
        );
        assert!(matches!(
            back.verify(WRITER.public_key(), WRITER.public_key()),
            Err(ManifestError::BadLocationSignature)
        ));
        assert!(matches!(
            back.verify(SHARE.public_key(), SHARE.public_key()),
            Err(ManifestError::BadWriterSignature)
        ));
        let mut wire = signed.to_proto();
        wire.body[3] ^= 1;
        let tampered = SignedManifest::from_proto(wire).unwrap();
        assert!(
            tampered
                .verify(SHARE.public_key(), WRITER.public_key())
                .is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            if let Ok(wire) = proto::storage::v1::Manifest::decode(bytes.as_slice()) {
                let _ = Manifest::try_from(wire);
            }
            if let Ok(wire) = proto::storage::v1::SignedManifest::decode(bytes.as_slice())
                && let Ok(signed) = SignedManifest::from_proto(wire)
            {
                proptest::prop_assert!(signed.verify(SHARE.public_key(), WRITER.public_key()).is_err());
            }
        }
    }

    #[test]
    fn the_fragment_hash_is_signed_and_unknown_ones_are_refused() {
        let mut old = manifest();
        old.fragment_hash = FragmentHash::Sha256;
        // Manifests from before the field read as SHA-256: zero on the wire.
        assert_eq!(old.to_proto().fragment_hash, 0);
        let signed = SignedManifest::sign(&old, &SHARE, &WRITER).unwrap();
        assert_eq!(
            signed
                .verify(SHARE.public_key(), WRITER.public_key())
                .unwrap(),
            old
        );
        let mut wire = manifest().to_proto();
        wire.fragment_hash = 9;
        assert!(matches!(
            Manifest::try_from(wire),
            Err(ManifestError::Invalid("unknown fragment hash algorithm"))
        ));
    }

    #[test]
    fn inconsistent_manifests_are_refused() {
        let mut bad = manifest();
        bad.blocks[0].digests.pop();
        assert!(SignedManifest::sign(&bad, &SHARE, &WRITER).is_err());
        let mut bad = manifest();
        bad.scheme = Scheme { data: 0, parity: 2 };
        assert!(SignedManifest::sign(&bad, &SHARE, &WRITER).is_err());
        let mut bad = manifest();
        bad.version = 0;
        assert!(SignedManifest::sign(&bad, &SHARE, &WRITER).is_err());
        let mut bad = manifest();
        bad.version = u64::MAX;
        assert!(SignedManifest::sign(&bad, &SHARE, &WRITER).is_err());
        let mut bad = manifest();
        bad.blocks[0].fragment_size = MAX_FRAGMENT_SIZE + 1;
        assert!(SignedManifest::sign(&bad, &SHARE, &WRITER).is_err());
        // The same checks apply to what a peer sends, before any signature.
        let mut wire = manifest().to_proto();
        wire.version = u64::MAX;
        assert!(Manifest::try_from(wire).is_err());
    }
}
