//! Fragment digests: how a customer names each fragment in a signed
//! manifest, and how a supplier checks what it is sent and what it reads
//! back.
//!
//! New versions use BLAKE3; SHA-256 stays readable, because manifests and
//! supplier records written before BLAKE3 name it (the wire default). The
//! algorithm is part of the signed manifest body, so a digest is never
//! checked with an algorithm the writer did not choose. Why BLAKE3:
//! `docs/design/data-path.md`.

use sha2::Digest as _;

/// Length of every fragment digest.
pub const DIGEST_LEN: usize = 32;

/// The algorithm of a fragment digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragmentHash {
    /// SHA-256: manifests and records from before BLAKE3.
    Sha256,
    /// BLAKE3 (32-byte output): what new versions use.
    Blake3,
}

/// A wire value that names no known algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown fragment hash algorithm {0}")]
pub struct UnknownHash(pub i32);

impl FragmentHash {
    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> [u8; DIGEST_LEN] {
        match self {
            Self::Sha256 => sha2::Sha256::digest(data).into(),
            Self::Blake3 => blake3::hash(data).into(),
        }
    }

    /// An incremental hasher, for payloads that arrive in chunks.
    pub fn hasher(self) -> FragmentHasher {
        FragmentHasher(match self {
            Self::Sha256 => Inner::Sha256(sha2::Sha256::new()),
            Self::Blake3 => Inner::Blake3(Box::new(blake3::Hasher::new())),
        })
    }

    /// The wire value (`silt.storage.v1.FragmentHash`).
    pub fn to_wire(self) -> i32 {
        match self {
            Self::Sha256 => proto::storage::v1::FragmentHash::Sha256 as i32,
            Self::Blake3 => proto::storage::v1::FragmentHash::Blake3 as i32,
        }
    }

    /// Reads a wire value; unknown values are refused, never guessed.
    pub fn from_wire(value: i32) -> Result<Self, UnknownHash> {
        match proto::storage::v1::FragmentHash::try_from(value) {
            Ok(proto::storage::v1::FragmentHash::Sha256) => Ok(Self::Sha256),
            Ok(proto::storage::v1::FragmentHash::Blake3) => Ok(Self::Blake3),
            Err(_) => Err(UnknownHash(value)),
        }
    }
}

impl std::fmt::Display for FragmentHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sha256 => "SHA-256",
            Self::Blake3 => "BLAKE3",
        })
    }
}

/// A digest together with its algorithm: what a supplier records for each
/// fragment and checks a manifest's entries against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragmentDigest {
    /// The algorithm.
    pub hash: FragmentHash,
    /// The digest.
    pub value: [u8; DIGEST_LEN],
}

impl FragmentDigest {
    /// The digest of `data` with `hash`.
    pub fn of(hash: FragmentHash, data: &[u8]) -> Self {
        Self {
            hash,
            value: hash.digest(data),
        }
    }

    /// Whether `data` has this digest.
    pub fn matches(&self, data: &[u8]) -> bool {
        self.hash.digest(data) == self.value
    }
}

/// Computes a [`FragmentHash`] digest over chunks.
#[derive(Debug, Clone)]
pub struct FragmentHasher(Inner);

#[derive(Debug, Clone)]
enum Inner {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl FragmentHasher {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Sha256(h) => h.update(data),
            Inner::Blake3(h) => {
                h.update(data);
            }
        }
    }

    /// The digest of everything added.
    pub fn finalize(self) -> [u8; DIGEST_LEN] {
        match self.0 {
            Inner::Sha256(h) => h.finalize().into(),
            Inner::Blake3(h) => h.finalize().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_published_test_vectors() {
        // FIPS 180-2 and the BLAKE3 reference: the digests of "abc" and of
        // nothing.
        assert_eq!(
            hex::encode(FragmentHash::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(FragmentHash::Blake3.digest(b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            hex::encode(FragmentHash::Blake3.digest(b"abc")),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn chunked_and_whole_digests_agree() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for hash in [FragmentHash::Sha256, FragmentHash::Blake3] {
            let mut hasher = hash.hasher();
            for chunk in data.chunks(65_537) {
                hasher.update(chunk);
            }
            assert_eq!(hasher.finalize(), hash.digest(&data), "{hash}");
        }
        let blake3 = FragmentDigest::of(FragmentHash::Blake3, &data);
        let sha256 = FragmentDigest::of(FragmentHash::Sha256, &data);
        assert!(blake3.matches(&data) && sha256.matches(&data));
        assert_ne!(blake3.value, sha256.value);
        assert!(!blake3.matches(&data[1..]));
    }

    #[test]
    fn wire_values_round_trip_and_unknown_ones_are_refused() {
        for hash in [FragmentHash::Sha256, FragmentHash::Blake3] {
            assert_eq!(FragmentHash::from_wire(hash.to_wire()), Ok(hash));
        }
        // Records written before the field existed decode as zero.
        assert_eq!(FragmentHash::from_wire(0), Ok(FragmentHash::Sha256));
        assert_eq!(FragmentHash::from_wire(7), Err(UnknownHash(7)));
        assert_eq!(FragmentHash::from_wire(-1), Err(UnknownHash(-1)));
    }
}
