//! The streaming encoder and decoder.
//!
//! The [`Encoder`] reads a file block by block and hands out each block's
//! fragments before it reads the next, so a caller can send them on and
//! memory stays at a few blocks whatever the file size. At the end it builds
//! the [`Manifest`]. The [`Decoder`] goes the other way, from a verified
//! manifest and per-block fragment sets to plaintext.

use std::fmt;
use std::io::{Read, Write};

use common::digest::FragmentHash;
use common::id::UserId;
use common::manifest::{BlockFragments, MAX_MANIFEST_BYTES, Manifest, ObjectId, Scheme};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::erasure::{EncodedBlock, ErasureCoder, FRAGMENT_HASH, fragment_size, padded_len};
use super::scheme::checked;
use super::seal::TAG_LEN;
use super::{
    FileKey, FileMetadata, LocationSecrets, NormalPath, PipelineError, VersionCipher, VersionRef,
};

/// Default plaintext bytes per block: 4 MiB.
pub const DEFAULT_BLOCK_SIZE: usize = 4 * 1024 * 1024;
/// Smallest block size: 4 KiB.
pub const MIN_BLOCK_SIZE: usize = 4 * 1024;
/// Largest block size: 64 MiB.
pub const MAX_BLOCK_SIZE: usize = 64 * 1024 * 1024;

/// Room left in the manifest size budget for everything but block entries.
const MANIFEST_HEADROOM: usize = 128 * 1024;

/// What the encoder needs to know about the file version it encodes.
#[derive(Debug, Clone)]
pub struct EncodeParams {
    /// The location, object and version; the encryption is bound to them.
    pub version: VersionRef,
    /// The path in the location; `version.object_id` must be its object ID
    /// under the location's [`ObjectIdKey`], or readers refuse the file.
    pub path: NormalPath,
    /// The key epoch the file key is wrapped under.
    pub epoch: u64,
    /// Who writes the version.
    pub writer: UserId,
    /// The erasure scheme.
    pub scheme: Scheme,
    /// Plaintext bytes per block, [`MIN_BLOCK_SIZE`]..=[`MAX_BLOCK_SIZE`];
    /// usually [`DEFAULT_BLOCK_SIZE`].
    pub block_size: usize,
    /// The file's modification time, seconds since the Unix epoch.
    pub mtime_unix: i64,
    /// When the version was made, seconds since the Unix epoch.
    pub created_unix: i64,
}

/// Reads a file block by block and turns each block into fragments.
///
/// Call [`Encoder::next_block`] (or [`Encoder::next_block_async`]) until it
/// returns `None`, sending each block's fragments on, then
/// [`Encoder::finish`] for the manifest. At most one block of plaintext and
/// one block's fragments are held at a time.
///
/// A fresh file key is made for every encoder, and so for every version.
pub struct Encoder<R> {
    reader: R,
    cipher: VersionCipher,
    coder: ErasureCoder,
    manifest: ManifestBuilder,
    path: NormalPath,
    mtime_unix: i64,
    block_size: usize,
    buffer: Vec<u8>,
    next_index: u64,
    size: u64,
    eof: bool,
    /// Set while a block is being read and encoded; still set afterwards if
    /// that failed or was cancelled, since the block's data is then lost.
    poisoned: bool,
}

impl<R> Encoder<R> {
    /// An encoder reading from `reader`. It makes a fresh file key and wraps
    /// it under the location's wrapping secret.
    pub fn new(
        reader: R,
        params: EncodeParams,
        location: &LocationSecrets,
    ) -> Result<Self, PipelineError> {
        let block_size = checked_block_size(params.block_size as u64)?;
        if params.version.version == 0 {
            return Err(PipelineError::Version);
        }
        let coder = ErasureCoder::new(params.scheme)?;
        let key = FileKey::generate();
        let wrapped = key.wrap(location, &params.version, params.epoch)?;
        let manifest = ManifestBuilder::new(params.version.clone(), params.writer, params.scheme)
            .epoch(params.epoch)
            .created_unix(params.created_unix)
            .fragment_hash(coder.hash())
            .wrapped_file_key(wrapped);
        Ok(Self {
            reader,
            cipher: VersionCipher::new(key, params.version),
            coder,
            manifest,
            path: params.path,
            mtime_unix: params.mtime_unix,
            block_size,
            buffer: Vec::new(),
            next_index: 0,
            size: 0,
            eof: false,
            poisoned: false,
        })
    }

    /// Plaintext bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.size
    }

    /// Seals the metadata and builds the manifest. Every block must have
    /// been taken first: [`Encoder::next_block`] must have returned `None`.
    pub fn finish(self) -> Result<Manifest, PipelineError> {
        if self.poisoned {
            return Err(PipelineError::Poisoned);
        }
        if !self.eof {
            return Err(PipelineError::InputNotExhausted);
        }
        let metadata = FileMetadata {
            path: self.path,
            size: self.size,
            mtime_unix: self.mtime_unix,
            block_size: self.block_size as u64,
            block_count: self.next_index,
        };
        let sealed = self.cipher.seal_metadata(&metadata)?;
        self.manifest.sealed_metadata(sealed).build()
    }

    /// Encodes the `filled` bytes in the buffer as the next block, or
    /// notes the end of the input if there are none.
    fn encode_buffered(&mut self, filled: usize) -> Result<Option<EncodedBlock>, PipelineError> {
        let block = self.encode_filled(filled)?;
        self.poisoned = false;
        Ok(block)
    }

    fn encode_filled(&mut self, filled: usize) -> Result<Option<EncodedBlock>, PipelineError> {
        if filled < self.block_size {
            self.eof = true;
        }
        // The block is sealed and padded where it was read, and its data
        // fragments are views of it: the buffer goes with them.
        let mut block = std::mem::take(&mut self.buffer);
        if filled == 0 {
            return Ok(None);
        }
        let index = self.next_index;
        self.cipher.seal_block_in_place(index, &mut block)?;
        let block = self.coder.encode_owned(index, block)?;
        self.manifest.push_block(block.hashes.clone())?;
        self.next_index += 1;
        self.size += filled as u64;
        Ok(Some(block))
    }

    /// Whether the input is done, after checking that no earlier call failed
    /// half-way.
    fn start_block(&mut self) -> Result<bool, PipelineError> {
        if self.poisoned {
            return Err(PipelineError::Poisoned);
        }
        if self.eof {
            return Ok(true);
        }
        self.poisoned = true;
        // Room for the tag and the padding, so neither moves the block.
        let room = padded_len(self.block_size + TAG_LEN, self.coder.scheme().data);
        self.buffer = Vec::with_capacity(room);
        Ok(false)
    }
}

impl<R: Read> Encoder<R> {
    /// Reads, seals and erasure-codes the next block. `None` at the end of
    /// the input (at once for an empty file).
    pub fn next_block(&mut self) -> Result<Option<EncodedBlock>, PipelineError> {
        if self.start_block()? {
            return Ok(None);
        }
        // `read_to_end` reads into the spare capacity, without zeroing it
        // first, and retries interrupted reads.
        let filled = (&mut self.reader)
            .take(self.block_size as u64)
            .read_to_end(&mut self.buffer)
            .map_err(PipelineError::Read)?;
        self.encode_buffered(filled)
    }
}

impl<R: AsyncRead + Unpin> Encoder<R> {
    /// [`Encoder::next_block`] for async readers.
    ///
    /// Sealing and coding a block is CPU work (milliseconds for a 4 MiB
    /// block) done inline. Not cancel-safe: a block read partly when the
    /// future is dropped is lost, so drop the encoder too.
    pub async fn next_block_async(&mut self) -> Result<Option<EncodedBlock>, PipelineError> {
        if self.start_block()? {
            return Ok(None);
        }
        let filled = (&mut self.reader)
            .take(self.block_size as u64)
            .read_to_end(&mut self.buffer)
            .await
            .map_err(PipelineError::Read)?;
        self.encode_buffered(filled)
    }
}

impl<R> fmt::Debug for Encoder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("version", self.cipher.version())
            .field("scheme", &self.coder.scheme())
            .field("block_size", &self.block_size)
            .field("next_index", &self.next_index)
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

/// Collects the parts of a [`Manifest`]; [`Encoder`] uses one, and callers
/// that seal and code blocks themselves can too.
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    version: VersionRef,
    epoch: u64,
    writer: UserId,
    scheme: Scheme,
    wrapped_file_key: Option<Vec<u8>>,
    sealed_metadata: Option<Vec<u8>>,
    created_unix: i64,
    fragment_hash: FragmentHash,
    blocks: Vec<BlockFragments>,
    /// Encoded size of the block entries so far.
    blocks_len: usize,
}

impl ManifestBuilder {
    /// A manifest of `version` by `writer` under `scheme`, at epoch 0 and
    /// created now, until set otherwise.
    pub fn new(version: VersionRef, writer: UserId, scheme: Scheme) -> Self {
        Self {
            version,
            epoch: 0,
            writer,
            scheme,
            wrapped_file_key: None,
            sealed_metadata: None,
            created_unix: common::unix_now(),
            fragment_hash: FRAGMENT_HASH,
            blocks: Vec::new(),
            blocks_len: 0,
        }
    }

    /// Sets the algorithm of the fragment digests (default
    /// [`FRAGMENT_HASH`]); it must be the encoder's.
    pub fn fragment_hash(mut self, hash: FragmentHash) -> Self {
        self.fragment_hash = hash;
        self
    }

    /// Sets the key epoch.
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    /// Sets the creation time, seconds since the Unix epoch.
    pub fn created_unix(mut self, created_unix: i64) -> Self {
        self.created_unix = created_unix;
        self
    }

    /// Sets the wrapped file key (required).
    pub fn wrapped_file_key(mut self, wrapped: Vec<u8>) -> Self {
        self.wrapped_file_key = Some(wrapped);
        self
    }

    /// Sets the sealed metadata (required).
    pub fn sealed_metadata(mut self, sealed: Vec<u8>) -> Self {
        self.sealed_metadata = Some(sealed);
        self
    }

    /// Appends the next block's fragment hashes. Fails when the block does
    /// not list one hash per position, or when the manifest would grow past
    /// what suppliers accept.
    pub fn push_block(&mut self, block: BlockFragments) -> Result<(), PipelineError> {
        if block.digests.len() != self.scheme.data as usize + self.scheme.parity as usize {
            return Err(PipelineError::Inconsistent(
                "a block does not list one hash per position",
            ));
        }
        let entry = proto::storage::v1::BlockFragments {
            digests: block.digests.iter().map(|h| h.to_vec()).collect(),
            fragment_size: block.fragment_size,
        }
        .encoded_len();
        // Field tag, length prefix, entry.
        self.blocks_len += 1 + prost::length_delimiter_len(entry) + entry;
        if self.blocks_len > MAX_MANIFEST_BYTES - MANIFEST_HEADROOM {
            return Err(PipelineError::ManifestTooLarge {
                blocks: self.blocks.len() as u64 + 1,
            });
        }
        self.blocks.push(block);
        Ok(())
    }

    /// The manifest.
    pub fn build(self) -> Result<Manifest, PipelineError> {
        let scheme = checked(self.scheme)?;
        if self.version.version == 0 {
            return Err(PipelineError::Version);
        }
        let wrapped_file_key = self.wrapped_file_key.ok_or(PipelineError::Inconsistent(
            "the wrapped file key is missing",
        ))?;
        let sealed_metadata = self.sealed_metadata.ok_or(PipelineError::Inconsistent(
            "the sealed metadata is missing",
        ))?;
        Ok(Manifest {
            location: self.version.location,
            object_id: self.version.object_id,
            version: self.version.version,
            epoch: self.epoch,
            writer: self.writer,
            scheme,
            wrapped_file_key,
            sealed_metadata,
            fragment_hash: self.fragment_hash,
            blocks: self.blocks,
            created_unix: self.created_unix,
        })
    }
}

/// Turns the fragments of a file version back into plaintext.
///
/// Build it from a manifest whose signatures were checked
/// (`SignedManifest::verify`), then either write blocks in order to a sink
/// with [`Decoder::write_block`] and call [`Decoder::finish`], or decode
/// single blocks in any order with [`Decoder::decode_block`].
pub struct Decoder {
    cipher: VersionCipher,
    coder: ErasureCoder,
    metadata: FileMetadata,
    object_id: ObjectId,
    blocks: Vec<BlockFragments>,
    next_index: u64,
    /// Set while a block is written; still set afterwards if the write failed
    /// or was cancelled, since the sink then holds part of a block.
    poisoned: bool,
}

impl Decoder {
    /// Unwraps the file key with the location's secrets, opens the metadata
    /// and checks that the manifest agrees with it: the object ID belongs to
    /// the path, and the block count and fragment sizes match the size.
    ///
    /// The manifest must have been verified first: file keys that earlier
    /// versions wrapped with RSA are decrypted with the private key, which
    /// leaks timing (RUSTSEC-2023-0071), so never unwrap a key that an
    /// unauthenticated peer chose.
    pub fn new(manifest: &Manifest, location: &LocationSecrets) -> Result<Self, PipelineError> {
        let scheme = checked(manifest.scheme)?;
        let version = VersionRef::of(manifest);
        let key = FileKey::unwrap(
            &manifest.wrapped_file_key,
            location,
            &version,
            manifest.epoch,
        )?;
        let cipher = VersionCipher::new(key, version);
        let metadata = cipher.open_metadata(&manifest.sealed_metadata)?;
        if location.object_id(&metadata.path) != manifest.object_id {
            return Err(PipelineError::Inconsistent(
                "the object id does not belong to the file's path",
            ));
        }
        if metadata.block_count != manifest.blocks.len() as u64 {
            return Err(PipelineError::Inconsistent(
                "the manifest lists another number of blocks than the metadata",
            ));
        }
        let positions = scheme.data as usize + scheme.parity as usize;
        for (index, block) in (0..).zip(&manifest.blocks) {
            let sealed = sealed_len(&metadata, index)?;
            if block.digests.len() != positions
                || block.fragment_size != fragment_size(sealed, scheme.data) as u64
            {
                return Err(PipelineError::Inconsistent(
                    "a block's fragments do not match its length",
                ));
            }
        }
        Ok(Self {
            cipher,
            coder: ErasureCoder::with_hash(scheme, manifest.fragment_hash)?,
            metadata,
            object_id: manifest.object_id,
            blocks: manifest.blocks.clone(),
            next_index: 0,
            poisoned: false,
        })
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &FileMetadata {
        &self.metadata
    }

    /// The number of blocks.
    pub fn block_count(&self) -> u64 {
        self.metadata.block_count
    }

    /// The block [`Decoder::write_block`] expects next, or `None` when all
    /// are written.
    pub fn next_index(&self) -> Option<u64> {
        (self.next_index < self.block_count()).then_some(self.next_index)
    }

    /// Decodes block `index` from its fragments: `fragments[p]` is the
    /// fragment of position `p`, if any. Any `k` good fragments suffice;
    /// fragments whose hash does not match the manifest count as missing.
    pub fn decode_block<T: AsRef<[u8]>>(
        &mut self,
        index: u64,
        fragments: &[Option<T>],
    ) -> Result<Vec<u8>, PipelineError> {
        let expected = usize::try_from(index)
            .ok()
            .and_then(|i| self.blocks.get(i))
            .ok_or(PipelineError::BlockRange {
                block: index,
                blocks: self.block_count(),
            })?;
        let sealed_len = sealed_len(&self.metadata, index)?;
        let sealed = self.coder.decode(index, expected, sealed_len, fragments)?;
        self.cipher.open_block(index, &sealed)
    }

    /// Decodes block `index`, which must be [`Decoder::next_index`], and
    /// writes its plaintext to `sink`.
    pub fn write_block<T: AsRef<[u8]>, W: Write + ?Sized>(
        &mut self,
        index: u64,
        fragments: &[Option<T>],
        sink: &mut W,
    ) -> Result<(), PipelineError> {
        let plaintext = self.decode_in_order(index, fragments)?;
        self.poisoned = true;
        sink.write_all(&plaintext).map_err(PipelineError::Write)?;
        self.poisoned = false;
        self.next_index += 1;
        Ok(())
    }

    /// [`Decoder::write_block`] for async sinks. Not cancel-safe: if the
    /// future is dropped, part of the block may have been written.
    pub async fn write_block_async<T: AsRef<[u8]>, W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        index: u64,
        fragments: &[Option<T>],
        sink: &mut W,
    ) -> Result<(), PipelineError> {
        let plaintext = self.decode_in_order(index, fragments)?;
        self.poisoned = true;
        sink.write_all(&plaintext)
            .await
            .map_err(PipelineError::Write)?;
        self.poisoned = false;
        self.next_index += 1;
        Ok(())
    }

    /// Checks that every block was written, and returns the metadata.
    pub fn finish(self) -> Result<FileMetadata, PipelineError> {
        if self.poisoned {
            return Err(PipelineError::Poisoned);
        }
        if self.next_index != self.block_count() {
            return Err(PipelineError::BlocksUnwritten {
                written: self.next_index,
                blocks: self.block_count(),
            });
        }
        Ok(self.metadata)
    }

    fn decode_in_order<T: AsRef<[u8]>>(
        &mut self,
        index: u64,
        fragments: &[Option<T>],
    ) -> Result<Vec<u8>, PipelineError> {
        if self.poisoned {
            return Err(PipelineError::Poisoned);
        }
        if index != self.next_index {
            return Err(PipelineError::BlockOrder {
                expected: self.next_index,
                got: index,
            });
        }
        self.decode_block(index, fragments)
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("object_id", &self.object_id)
            .field("version", &self.cipher.version().version)
            .field("scheme", &self.coder.scheme())
            .field("blocks", &self.block_count())
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

/// Checks a block size and returns it as a `usize`.
pub(super) fn checked_block_size(size: u64) -> Result<usize, PipelineError> {
    match usize::try_from(size) {
        Ok(size) if (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) => Ok(size),
        _ => Err(PipelineError::BlockSize { size }),
    }
}

/// Sealed length of block `index`: its plaintext plus the AES-GCM tag.
fn sealed_len(metadata: &FileMetadata, index: u64) -> Result<usize, PipelineError> {
    let plain = metadata.block_len(index).ok_or(PipelineError::BlockRange {
        block: index,
        blocks: metadata.block_count,
    })?;
    // The metadata's block size was checked against MAX_BLOCK_SIZE.
    Ok(plain as usize + TAG_LEN)
}

#[cfg(test)]
mod tests {
    use common::manifest::SignedManifest;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use std::io;

    use super::super::fixtures::{LOCATION, OTHER, OTHER_SECRETS, SECRETS};
    use super::*;

    const BLOCK: usize = 64 * 1024;
    const SCHEMES: [(u32, u32); 5] = [(1, 0), (1, 1), (2, 2), (4, 2), (5, 3)];

    fn scheme(data: u32, parity: u32) -> Scheme {
        Scheme { data, parity }
    }

    fn params(scheme: Scheme, block_size: usize, path: &str, version: u64) -> EncodeParams {
        let path = NormalPath::new(path).unwrap();
        EncodeParams {
            version: VersionRef {
                location: "docs$alice@id-a".parse().unwrap(),
                object_id: SECRETS.object_id(&path),
                version,
            },
            path,
            epoch: 2,
            writer: "bob@id-b".parse().unwrap(),
            scheme,
            block_size,
            mtime_unix: 1_700_000_123,
            created_unix: 1_700_000_456,
        }
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    fn encode_with(params: EncodeParams, data: &[u8]) -> (Vec<EncodedBlock>, Manifest) {
        let mut encoder = Encoder::new(data, params, &SECRETS).unwrap();
        let mut blocks = Vec::new();
        while let Some(block) = encoder.next_block().unwrap() {
            assert_eq!(block.index, blocks.len() as u64);
            blocks.push(block);
        }
        assert!(encoder.next_block().unwrap().is_none());
        (blocks, encoder.finish().unwrap())
    }

    fn encode(scheme: Scheme, block_size: usize, data: &[u8]) -> (Vec<EncodedBlock>, Manifest) {
        encode_with(params(scheme, block_size, "dir/file.bin", 1), data)
    }

    /// Every block's fragments, all present.
    fn all(blocks: &[EncodedBlock]) -> Vec<Vec<Option<Vec<u8>>>> {
        blocks
            .iter()
            .map(|b| b.fragments.iter().map(|f| Some(f.to_vec())).collect())
            .collect()
    }

    fn decode(
        manifest: &Manifest,
        blocks: &[Vec<Option<Vec<u8>>>],
    ) -> Result<Vec<u8>, PipelineError> {
        let mut decoder = Decoder::new(manifest, &SECRETS)?;
        let mut out = Vec::new();
        for (index, fragments) in (0..).zip(blocks) {
            assert_eq!(decoder.next_index(), Some(index));
            decoder.write_block(index, fragments, &mut out)?;
        }
        assert_eq!(decoder.next_index(), None);
        let metadata = decoder.finish()?;
        assert_eq!(metadata.size, out.len() as u64);
        Ok(out)
    }

    /// All subsets of `size` positions out of `positions`, as bit masks.
    fn subsets(positions: u32, size: u32) -> Vec<u64> {
        (0..1u64 << positions)
            .filter(|m| m.count_ones() == size)
            .collect()
    }

    #[test]
    fn round_trips_for_every_scheme_and_size() {
        for (data, parity) in SCHEMES {
            let scheme = scheme(data, parity);
            for len in [
                0,
                1,
                BLOCK - 1,
                BLOCK,
                BLOCK + 1,
                2 * BLOCK,
                3 * BLOCK + 12_345,
            ] {
                let plain = random(len, len as u64);
                let (blocks, manifest) = encode(scheme, BLOCK, &plain);
                assert_eq!(blocks.len(), len.div_ceil(BLOCK), "{scheme} {len}");
                assert_eq!(manifest.blocks.len(), blocks.len());
                assert_eq!(manifest.scheme, scheme);
                assert_eq!(manifest.version, 1);
                assert_eq!(manifest.epoch, 2);
                assert_eq!(manifest.created_unix, 1_700_000_456);
                assert_eq!(manifest.writer.to_string(), "bob@id-b");
                for (block, listed) in blocks.iter().zip(&manifest.blocks) {
                    assert_eq!(&block.hashes, listed);
                    assert_eq!(block.fragments.len(), scheme.positions() as usize);
                }
                assert_eq!(
                    decode(&manifest, &all(&blocks)).unwrap(),
                    plain,
                    "{scheme} {len}"
                );

                let decoder = Decoder::new(&manifest, &SECRETS).unwrap();
                let metadata = decoder.metadata();
                assert_eq!(metadata.path.as_str(), "dir/file.bin");
                assert_eq!(metadata.size, len as u64);
                assert_eq!(metadata.mtime_unix, 1_700_000_123);
                assert_eq!(metadata.block_size, BLOCK as u64);
                assert_eq!(decoder.block_count(), blocks.len() as u64);
            }
        }
    }

    #[test]
    fn any_m_fragments_of_every_block_may_be_missing() {
        for (data, parity) in SCHEMES {
            let scheme = scheme(data, parity);
            // One block per way of losing m fragments, each block losing
            // another set.
            let losses = subsets(scheme.positions(), parity);
            let plain = random(losses.len() * MIN_BLOCK_SIZE - 100, 7);
            let (blocks, manifest) = encode(scheme, MIN_BLOCK_SIZE, &plain);
            assert_eq!(blocks.len(), losses.len());
            let mut fragments = all(&blocks);
            for (block, mask) in fragments.iter_mut().zip(&losses) {
                for (position, slot) in block.iter_mut().enumerate() {
                    if mask & (1 << position) != 0 {
                        *slot = None;
                    }
                }
            }
            assert_eq!(decode(&manifest, &fragments).unwrap(), plain, "{scheme}");
        }
    }

    #[test]
    fn one_more_loss_names_the_positions_and_the_block_can_be_retried() {
        for (data, parity) in SCHEMES {
            let scheme = scheme(data, parity);
            let plain = random(3 * BLOCK, 3);
            let (blocks, manifest) = encode(scheme, BLOCK, &plain);
            for mask in subsets(scheme.positions(), parity + 1) {
                let mut decoder = Decoder::new(&manifest, &SECRETS).unwrap();
                let mut out = Vec::new();
                let mut fragments = all(&blocks);
                decoder.write_block(0, &fragments[0], &mut out).unwrap();
                let lost: Vec<u32> = (0..scheme.positions())
                    .filter(|p| mask & (1 << p) != 0)
                    .collect();
                for &p in &lost {
                    fragments[1][p as usize] = None;
                }
                match decoder.write_block(1, &fragments[1], &mut out).unwrap_err() {
                    PipelineError::MissingFragments {
                        block,
                        needed,
                        usable,
                        missing,
                        corrupt,
                    } => {
                        assert_eq!((block, needed, usable), (1, data, data - 1));
                        assert_eq!(missing, lost);
                        assert!(corrupt.is_empty());
                    }
                    other => panic!("{scheme}: unexpected {other}"),
                }
                // Fetching the fragments again lets the stream go on.
                let fragments = all(&blocks);
                decoder.write_block(1, &fragments[1], &mut out).unwrap();
                decoder.write_block(2, &fragments[2], &mut out).unwrap();
                decoder.finish().unwrap();
                assert_eq!(out, plain);
            }
        }
    }

    #[test]
    fn corrupt_fragments_are_caught_by_hash_and_repaired_from_parity() {
        let scheme = scheme(4, 2);
        let plain = random(2 * BLOCK + 5, 11);
        let (blocks, manifest) = encode(scheme, BLOCK, &plain);

        let mut fragments = all(&blocks);
        if let Some(fragment) = &mut fragments[0][0] {
            fragment[100] ^= 1;
        }
        if let Some(fragment) = &mut fragments[2][3] {
            fragment.truncate(10);
        }
        fragments[2][1] = None;
        assert_eq!(decode(&manifest, &fragments).unwrap(), plain);

        // Three bad fragments in one block are one too many.
        for p in [1, 4] {
            if let Some(fragment) = &mut fragments[0][p] {
                fragment[0] ^= 1;
            }
        }
        fragments[0][2] = None;
        match decode(&manifest, &fragments).unwrap_err() {
            PipelineError::MissingFragments {
                block: 0,
                missing,
                corrupt,
                ..
            } => {
                assert_eq!(missing, [2]);
                assert_eq!(corrupt, [0, 1, 4]);
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn fragments_cannot_move_between_blocks_versions_or_objects() {
        let scheme = scheme(2, 1);
        let plain = random(3 * BLOCK, 5);
        let (blocks, manifest) = encode(scheme, BLOCK, &plain);

        // Another block's fragments fail the hash check.
        let mut fragments = all(&blocks);
        fragments.swap(0, 1);
        assert!(matches!(
            decode(&manifest, &fragments),
            Err(PipelineError::MissingFragments {
                block: 0,
                usable: 0,
                ..
            })
        ));

        // With the manifest entry moved too, the hashes match, and the block's
        // AAD (its index) still refuses it.
        let mut moved = manifest.clone();
        moved.blocks.swap(0, 1);
        let mut decoder = Decoder::new(&moved, &SECRETS).unwrap();
        assert!(matches!(
            decoder.write_block(0, &fragments[0], &mut Vec::new()),
            Err(PipelineError::BlockDecrypt { block: 0 })
        ));

        // The same file as version 2, or at another path: neither its
        // fragments nor its hashes fit version 1.
        for other in [
            params(scheme, BLOCK, "dir/file.bin", 2),
            params(scheme, BLOCK, "dir/other.bin", 1),
        ] {
            let (other_blocks, other_manifest) = encode_with(other, &plain);
            assert!(matches!(
                decode(&manifest, &all(&other_blocks)),
                Err(PipelineError::MissingFragments {
                    block: 0,
                    usable: 0,
                    ..
                })
            ));
            // Even with its hashes, its blocks do not open under version 1's
            // key, and its file key is bound to its own version and object.
            let mut spliced = manifest.clone();
            spliced.blocks = other_manifest.blocks.clone();
            assert!(matches!(
                decode(&spliced, &all(&other_blocks)),
                Err(PipelineError::BlockDecrypt { block: 0 })
            ));
            let mut relabeled = other_manifest.clone();
            relabeled.version = manifest.version;
            relabeled.object_id = manifest.object_id;
            assert!(matches!(
                Decoder::new(&relabeled, &SECRETS),
                Err(PipelineError::UnwrapKey(_))
            ));
        }

        // The wrapped file key (and, under it, the metadata) is bound to
        // version, object and location.
        let mut relabeled = manifest.clone();
        relabeled.version = 9;
        assert!(matches!(
            Decoder::new(&relabeled, &SECRETS),
            Err(PipelineError::UnwrapKey(_))
        ));
        let mut relabeled = manifest.clone();
        relabeled.object_id = ObjectId([1; 32]);
        assert!(matches!(
            Decoder::new(&relabeled, &SECRETS),
            Err(PipelineError::UnwrapKey(_))
        ));
        let mut relabeled = manifest.clone();
        relabeled.location = "music$alice@id-a".parse().unwrap();
        assert!(matches!(
            Decoder::new(&relabeled, &SECRETS),
            Err(PipelineError::UnwrapKey(_))
        ));
    }

    #[test]
    fn decoders_check_the_manifest_against_the_metadata() {
        let scheme = scheme(2, 2);
        let plain = random(2 * BLOCK, 1);
        let (_, manifest) = encode(scheme, BLOCK, &plain);
        assert!(matches!(
            Decoder::new(&manifest, &OTHER_SECRETS),
            Err(PipelineError::UnwrapKey(_))
        ));
        let mut short = manifest.clone();
        short.blocks.pop();
        assert!(matches!(
            Decoder::new(&short, &SECRETS),
            Err(PipelineError::Inconsistent(_))
        ));
        let mut resized = manifest.clone();
        resized.blocks[1].fragment_size += 2;
        assert!(matches!(
            Decoder::new(&resized, &SECRETS),
            Err(PipelineError::Inconsistent(_))
        ));

        // An object ID that is not the path's.
        let mut wrong = params(scheme, BLOCK, "dir/file.bin", 1);
        wrong.version.object_id = OTHER_SECRETS.object_id(&wrong.path);
        let (_, manifest) = encode_with(wrong, &plain);
        assert!(matches!(
            Decoder::new(&manifest, &SECRETS),
            Err(PipelineError::Inconsistent(m)) if m.contains("object id")
        ));
    }

    #[test]
    fn decoders_keep_blocks_in_order() {
        let plain = random(3 * BLOCK, 2);
        let (blocks, manifest) = encode(scheme(1, 1), BLOCK, &plain);
        let fragments = all(&blocks);
        let mut decoder = Decoder::new(&manifest, &SECRETS).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            decoder.write_block(1, &fragments[1], &mut out),
            Err(PipelineError::BlockOrder {
                expected: 0,
                got: 1
            })
        ));
        assert!(matches!(
            decoder.decode_block(3, &fragments[0]),
            Err(PipelineError::BlockRange {
                block: 3,
                blocks: 3
            })
        ));
        assert_eq!(
            decoder.decode_block(2, &fragments[2]).unwrap(),
            &plain[2 * BLOCK..]
        );
        decoder.write_block(0, &fragments[0], &mut out).unwrap();
        assert!(matches!(
            decoder.finish(),
            Err(PipelineError::BlocksUnwritten {
                written: 1,
                blocks: 3
            })
        ));
    }

    /// A reader that hands out at most `chunk` bytes per call, counts them,
    /// and fails after `fail_after` bytes.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
        read: usize,
        fail_after: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.read >= self.fail_after {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.chunk).min(self.data.len() - self.read);
            buf[..n].copy_from_slice(&self.data[self.read..self.read + n]);
            self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn encoders_read_one_block_at_a_time() {
        let plain = random(5 * BLOCK, 4);
        let reader = Trickle {
            data: &plain,
            chunk: 1000,
            read: 0,
            fail_after: usize::MAX,
        };
        let params = params(scheme(4, 2), BLOCK, "big", 1);
        let mut encoder = Encoder::new(reader, params, &SECRETS).unwrap();
        let mut blocks = Vec::new();
        for index in 0..5 {
            let block = encoder.next_block().unwrap().unwrap();
            assert_eq!(encoder.reader.read, (index + 1) * BLOCK, "read ahead");
            assert_eq!(encoder.bytes_read(), encoder.reader.read as u64);
            blocks.push(block);
        }
        assert!(matches!(
            encoder.finish(),
            Err(PipelineError::InputNotExhausted)
        ));
    }

    #[test]
    fn a_failed_read_stops_the_encoder() {
        let plain = random(3 * BLOCK, 4);
        let reader = Trickle {
            data: &plain,
            chunk: 4096,
            read: 0,
            fail_after: BLOCK + 8192,
        };
        let params = params(scheme(2, 1), BLOCK, "f", 1);
        let mut encoder = Encoder::new(reader, params, &SECRETS).unwrap();
        assert!(encoder.next_block().unwrap().is_some());
        assert!(matches!(encoder.next_block(), Err(PipelineError::Read(_))));
        assert!(matches!(encoder.next_block(), Err(PipelineError::Poisoned)));
        assert!(matches!(encoder.finish(), Err(PipelineError::Poisoned)));
    }

    #[test]
    fn encoder_parameters_are_checked() {
        let mut p = params(scheme(2, 1), 100, "f", 1);
        assert!(matches!(
            Encoder::new(io::empty(), p.clone(), &SECRETS),
            Err(PipelineError::BlockSize { size: 100 })
        ));
        p.block_size = MAX_BLOCK_SIZE + 1;
        assert!(Encoder::new(io::empty(), p.clone(), &SECRETS).is_err());
        p.block_size = BLOCK;
        p.version.version = 0;
        assert!(matches!(
            Encoder::new(io::empty(), p.clone(), &SECRETS),
            Err(PipelineError::Version)
        ));
        p.version.version = 1;
        p.scheme = scheme(0, 3);
        assert!(matches!(
            Encoder::new(io::empty(), p.clone(), &SECRETS),
            Err(PipelineError::Scheme { .. })
        ));
        p.scheme = scheme(2, 1);
        let encoder = Encoder::new(io::empty(), p, &SECRETS).unwrap();
        let printed = format!("{encoder:?}");
        assert!(printed.starts_with("Encoder {"), "{printed}");
        assert!(!printed.contains("FileKey"));
    }

    #[test]
    fn manifest_builders_need_key_and_metadata_and_bound_the_size() {
        let version = params(scheme(1, 1), BLOCK, "f", 1).version;
        let writer: UserId = "bob@id-b".parse().unwrap();
        let builder = ManifestBuilder::new(version, writer, scheme(1, 1));
        assert!(builder.clone().build().is_err());
        assert!(builder.clone().wrapped_file_key(vec![1]).build().is_err());
        let mut builder = builder.wrapped_file_key(vec![1]).sealed_metadata(vec![2]);
        let hashes = |n| BlockFragments {
            digests: vec![[0; 32]; n],
            fragment_size: 65_552,
        };
        assert!(builder.push_block(hashes(3)).is_err());
        let mut pushed = 0u64;
        let err = loop {
            match builder.push_block(hashes(2)) {
                Ok(()) => pushed += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, PipelineError::ManifestTooLarge { blocks } if blocks == pushed + 1));
        let manifest = builder.build().unwrap();
        assert_eq!(manifest.blocks.len() as u64, pushed);
        // What was accepted still signs and encodes within the limit.
        SignedManifest::sign(&manifest, &LOCATION, &OTHER).unwrap();
    }

    #[test]
    fn signed_manifests_decode_after_verification() {
        let plain = random(BLOCK + 1, 8);
        let (blocks, manifest) = encode(scheme(2, 2), BLOCK, &plain);
        let signed = SignedManifest::sign(&manifest, &LOCATION, &OTHER).unwrap();
        let wire = SignedManifest::from_proto(signed.to_proto()).unwrap();
        let verified = wire
            .verify(LOCATION.public_key(), OTHER.public_key())
            .unwrap();
        assert_eq!(verified, manifest);
        assert_eq!(decode(&verified, &all(&blocks)).unwrap(), plain);
    }

    #[test]
    fn streams_can_move_between_threads() {
        fn send<T: Send>(_: &T) {}
        let mut encoder = Encoder::new(
            tokio::io::empty(),
            params(scheme(4, 2), BLOCK, "f", 1),
            &SECRETS,
        )
        .unwrap();
        send(&encoder);
        send(&encoder.next_block_async());
        let (_, manifest) = encode(scheme(4, 2), BLOCK, b"x");
        let mut decoder = Decoder::new(&manifest, &SECRETS).unwrap();
        send(&decoder);
        let mut sink = tokio::io::sink();
        send(&decoder.write_block_async(0, &[None::<Vec<u8>>], &mut sink));
    }

    #[tokio::test]
    async fn async_round_trip() {
        let plain = random(2 * BLOCK + 77, 9);
        let params = params(scheme(4, 2), BLOCK, "async", 1);
        let mut encoder = Encoder::new(plain.as_slice(), params, &SECRETS).unwrap();
        let mut blocks = Vec::new();
        while let Some(block) = encoder.next_block_async().await.unwrap() {
            blocks.push(block);
        }
        let manifest = encoder.finish().unwrap();
        let mut decoder = Decoder::new(&manifest, &SECRETS).unwrap();
        let mut out: Vec<u8> = Vec::new();
        for (index, fragments) in (0..).zip(all(&blocks)) {
            decoder
                .write_block_async(index, &fragments, &mut out)
                .await
                .unwrap();
        }
        decoder.finish().unwrap();
        assert_eq!(out, plain);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 24,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn random_files_round_trip(
            len in 0usize..150_000,
            block_size in MIN_BLOCK_SIZE..40_000,
            data in 1u32..=6,
            parity in 0u32..=3,
            seed in any::<u64>(),
        ) {
            let scheme = scheme(data, parity);
            let plain = random(len, seed);
            let (blocks, manifest) = encode(scheme, block_size, &plain);
            prop_assert_eq!(blocks.len(), len.div_ceil(block_size));
            // Lose up to m fragments of every block, chosen by the seed.
            let positions = scheme.positions() as usize;
            let mut pick = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut fragments = all(&blocks);
            for block in &mut fragments {
                for _ in 0..parity {
                    let position = (pick.next_u32() as usize) % positions;
                    block[position] = None;
                }
            }
            prop_assert_eq!(decode(&manifest, &fragments).unwrap(), plain);
        }
    }
}
