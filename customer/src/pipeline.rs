//! The data path of DESIGN.md §5, without any networking: object IDs, file
//! keys, block sealing, erasure coding and a streaming encoder and decoder
//! whose memory use does not grow with the file.
//!
//! - [`default_scheme`] and [`parse_scheme`]: erasure schemes per supplier
//!   count, and a user's `k+m`.
//! - [`NormalPath`] and [`ObjectIdKey`]: path normalization and object IDs.
//! - [`LocationSecrets`]: what a location's private key derives.
//! - [`FileKey`] and [`VersionCipher`]: file keys, nonces, AAD, sealing.
//! - [`ErasureCoder`]: Reed-Solomon fragments of a sealed block, checked
//!   against the manifest's hashes before they are used.
//! - [`Encoder`], [`Decoder`] and [`ManifestBuilder`]: streaming, block by
//!   block.
//!
//! # Format
//!
//! This is what another implementation must reproduce to read our files.
//!
//! - **Blocks.** Block `i` (from 0) holds plaintext bytes
//!   `[i * B, min((i + 1) * B, size))` for block size `B`. Every block but
//!   the last is full, and an empty file has no blocks.
//! - **Location secrets.** `seed = SHA-256(location private key as PKCS#8
//!   DER)`; the object-ID secret is `HMAC-SHA256(seed, "silt-object-id-v1")`
//!   and the wrapping secret `HMAC-SHA256(seed, "silt-file-key-wrap-v1")`.
//! - **File key.** A fresh random AES-256 key per file version. Because the
//!   key is never reused, nonces only need to be unique within one version.
//!   `Manifest.wrapped_file_key` is `nonce (12 random bytes) ||
//!   AES-256-GCM(wrapping secret, file key)` with AAD `"silt-file-key-v1",
//!   owner, alias, object id, version (u64 BE), epoch (u64 BE)`: 60 bytes.
//!   Earlier builds of 0.1 wrapped it with RSA-OAEP-SHA256 under the
//!   location's public key (as long as the modulus); those still unwrap
//!   with the private key. See `docs/design/data-path.md` for why.
//! - **Nonces.** Block `i`: `00 00 00 00 || i` (u64 big-endian). Metadata:
//!   `01 || 00 * 11`, which no block index can produce.
//! - **AAD.** A list of length-prefixed fields (`u32` big-endian length,
//!   then the bytes), so no two field lists encode alike. Blocks:
//!   `"silt-block-v1", owner, alias, object id, version (u64 BE), index
//!   (u64 BE)`. Metadata: `"silt-metadata-v1", owner, alias, object id,
//!   version (u64 BE)`.
//! - **Metadata.** `Manifest.sealed_metadata` is `nonce || AES-256-GCM(
//!   FileMetadata protobuf)`.
//! - **Fragments.** A sealed block of `c` bytes (plaintext + 16-byte tag) is
//!   padded with zeros to `k * s` bytes, where `s` is `ceil(c / k)` rounded up
//!   to an even number (`reed-solomon-simd` needs even shards), and cut into
//!   `k` data fragments (positions `0..k`). The `m` parity fragments
//!   (positions `k..k+m`) are the recovery shards of `reed-solomon-simd` 3
//!   (Leopard-RS over GF(2^16)) for `k` originals and `m` recoveries; with
//!   `m = 0` there are none. The manifest records `s` as `fragment_size` and
//!   each fragment's digest: BLAKE3 (32 bytes) for new versions, named by
//!   `Manifest.fragment_hash`; versions from before it name SHA-256, and
//!   decoding uses whichever the signed manifest names. The padding needs no
//!   record of its own: the sealed length follows from the size and block
//!   size in the metadata, and the decoder checks that `fragment_size`
//!   agrees with it.

mod erasure;
mod metadata;
mod object;
mod scheme;
mod seal;
mod stream;

use std::io;

use common::crypto::CryptoError;
use common::manifest::{MAX_MANIFEST_BYTES, Scheme};

pub use erasure::{EncodedBlock, ErasureCoder, FRAGMENT_HASH, fragment_size};
pub use metadata::FileMetadata;
pub use object::{MAX_PATH_BYTES, NormalPath, ObjectIdKey};
pub use scheme::{default_scheme, parse_scheme};
pub use seal::{
    FileKey, LocationSecrets, METADATA_NONCE, VersionCipher, VersionRef, WRAPPED_KEY_LEN,
    block_aad, block_nonce, metadata_aad,
};
pub use stream::{
    DEFAULT_BLOCK_SIZE, Decoder, EncodeParams, Encoder, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE,
    ManifestBuilder,
};

/// What went wrong in the data pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A block did not authenticate: the wrong key, or fragments of another
    /// block, version or object.
    #[error(
        "block {block} does not decrypt: wrong key, or fragments of another block, version or object"
    )]
    BlockDecrypt {
        /// The block index.
        block: u64,
    },
    /// Blocks were written to the output out of order.
    #[error("block {got} is out of order: block {expected} comes next")]
    BlockOrder {
        /// The block that comes next.
        expected: u64,
        /// The block that was given.
        got: u64,
    },
    /// A block index beyond the file.
    #[error("block {block} does not exist: the file has {blocks} blocks")]
    BlockRange {
        /// The block index asked for.
        block: u64,
        /// How many blocks the file has.
        blocks: u64,
    },
    /// A block size outside [`MIN_BLOCK_SIZE`]..=[`MAX_BLOCK_SIZE`].
    #[error(
        "block size {size} is out of range: it must be {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE} bytes"
    )]
    BlockSize {
        /// The size given.
        size: u64,
    },
    /// Not every block was written before the decoder finished.
    #[error("only {written} of {blocks} blocks were written")]
    BlocksUnwritten {
        /// Blocks written.
        written: u64,
        /// Blocks in the file.
        blocks: u64,
    },
    /// The Reed-Solomon library refused a block.
    #[error("erasure coding of block {block} failed")]
    Erasure {
        /// The block index.
        block: u64,
        /// What the library said.
        #[source]
        source: reed_solomon_simd::Error,
    },
    /// A manifest, or the metadata sealed in it, contradicts itself.
    #[error("manifest is inconsistent: {0}")]
    Inconsistent(&'static str),
    /// The encoder was finished before its input was read to the end.
    #[error("the input was not read to its end")]
    InputNotExhausted,
    /// The location's secrets could not be derived from its key.
    #[error("cannot derive the location's secrets from its key")]
    KeyDerivation(#[source] CryptoError),
    /// The file has so many blocks that its manifest would be too large.
    #[error(
        "the manifest would exceed {MAX_MANIFEST_BYTES} bytes after {blocks} blocks: use a larger block size"
    )]
    ManifestTooLarge {
        /// Blocks so far.
        blocks: u64,
    },
    /// The metadata decrypted but is not a valid `FileMetadata`.
    #[error("file metadata is malformed")]
    MetadataDecode(#[source] prost::DecodeError),
    /// The metadata did not authenticate.
    #[error(
        "file metadata does not decrypt: wrong key, or the manifest belongs to another object or version"
    )]
    MetadataDecrypt,
    /// Fewer than `k` fragments of a block are usable.
    #[error(
        "block {block}: {usable} usable fragments, {needed} needed; missing positions {missing:?}, \
         corrupt positions {corrupt:?}"
    )]
    MissingFragments {
        /// The block index.
        block: u64,
        /// Fragments needed (k).
        needed: u32,
        /// Fragments present with a matching hash.
        usable: u32,
        /// Positions with no fragment.
        missing: Vec<u32>,
        /// Positions whose fragment has the wrong size or hash.
        corrupt: Vec<u32>,
    },
    /// An earlier call failed or was cancelled half-way through a block, so
    /// the stream cannot go on.
    #[error("an earlier block failed or was cancelled half-way: start the transfer again")]
    Poisoned,
    /// A path that cannot name an object.
    #[error("invalid path {path:?}: {reason}")]
    Path {
        /// The path (shortened if long).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A fragment set without one slot per position.
    #[error("expected {expected} fragment slots, one per position, got {got}")]
    PositionCount {
        /// Positions in the scheme (k + m).
        expected: u32,
        /// Slots given.
        got: usize,
    },
    /// Reading the input failed.
    #[error("cannot read the input")]
    Read(#[source] io::Error),
    /// An erasure scheme that does not parse or is out of bounds.
    #[error("invalid erasure scheme {scheme:?}: {reason}")]
    Scheme {
        /// The scheme as given.
        scheme: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A scheme whose position count is not the number of suppliers.
    #[error(
        "scheme {scheme} stores {} fragments per block, but there are {suppliers} suppliers",
        u64::from(scheme.data) + u64::from(scheme.parity)
    )]
    SchemeSuppliers {
        /// The scheme.
        scheme: Scheme,
        /// Suppliers available.
        suppliers: u32,
    },
    /// Encryption failed.
    #[error("encryption failed")]
    Seal(#[source] CryptoError),
    /// No default scheme for this many suppliers.
    #[error("cannot spread fragments over {suppliers} suppliers: 1 to 64 are supported")]
    Suppliers {
        /// Suppliers given.
        suppliers: u32,
    },
    /// The wrapped file key did not unwrap.
    #[error("cannot unwrap the file key: not this location's key, or the manifest is damaged")]
    UnwrapKey(#[source] CryptoError),
    /// A version number of 0.
    #[error("version must be at least 1")]
    Version,
    /// Wrapping the file key failed.
    #[error("cannot wrap the file key")]
    WrapKey(#[source] CryptoError),
    /// Writing the output failed.
    #[error("cannot write the output")]
    Write(#[source] io::Error),
}

/// Keys shared by the tests of all pipeline modules: RSA key generation is
/// slow, so each is made once per test binary.
#[cfg(test)]
mod fixtures {
    use std::sync::{Arc, LazyLock};

    use common::crypto::PrivateKey;

    use super::LocationSecrets;

    /// The location key of most tests.
    pub(super) static LOCATION: LazyLock<Arc<PrivateKey>> =
        LazyLock::new(|| Arc::new(PrivateKey::generate(2048).unwrap()));
    /// Another location's key.
    pub(super) static OTHER: LazyLock<Arc<PrivateKey>> =
        LazyLock::new(|| Arc::new(PrivateKey::generate(2048).unwrap()));
    /// The secrets of [`LOCATION`].
    pub(super) static SECRETS: LazyLock<LocationSecrets> =
        LazyLock::new(|| LocationSecrets::derive(LOCATION.clone()).unwrap());
    /// The secrets of [`OTHER`].
    pub(super) static OTHER_SECRETS: LazyLock<LocationSecrets> =
        LazyLock::new(|| LocationSecrets::derive(OTHER.clone()).unwrap());
}
