//! Reed-Solomon coding of sealed blocks into fragments, one per supplier
//! position, with `reed-solomon-simd` doing all Galois field arithmetic.
//!
//! Decoding checks each fragment's size and digest against the manifest
//! before using it; a fragment that does not match counts as missing.

use std::fmt;

use common::digest::FragmentHash;
use common::manifest::{BlockFragments, Scheme};
use prost::bytes::Bytes;
use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use super::PipelineError;
use super::scheme::checked;

/// How new versions digest their fragments. BLAKE3 runs about four times
/// as fast as SHA-256 (with SHA-NI) and both sides hash every fragment;
/// see `docs/design/data-path.md`.
pub const FRAGMENT_HASH: FragmentHash = FragmentHash::Blake3;

/// Length of a sealed block of `sealed_len` bytes once padded for `data`
/// data fragments: `data * fragment_size(sealed_len, data)`.
pub(super) fn padded_len(sealed_len: usize, data: u32) -> usize {
    fragment_size(sealed_len, data).saturating_mul(usize::try_from(data.max(1)).unwrap_or(1))
}

/// Size of each fragment of a sealed block of `sealed_len` bytes cut into
/// `data` data fragments: `ceil(sealed_len / data)`, rounded up to an even
/// number (the Reed-Solomon library works on 16-bit words), at least 2.
pub fn fragment_size(sealed_len: usize, data: u32) -> usize {
    let data = usize::try_from(data.max(1)).unwrap_or(usize::MAX);
    let size = sealed_len.div_ceil(data).max(1);
    size + (size & 1)
}

/// The fragments of one sealed block, ready to send.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedBlock {
    /// The block index.
    pub index: u64,
    /// One fragment per position, in position order: `k` data fragments
    /// (views of the padded sealed block), then `m` parity fragments.
    pub fragments: Vec<Bytes>,
    /// The fragments' size and digests, as the manifest lists them.
    pub hashes: BlockFragments,
    /// The algorithm of those digests.
    pub hash: FragmentHash,
}

impl fmt::Debug for EncodedBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The fragments are megabytes of ciphertext: show their shape only.
        f.debug_struct("EncodedBlock")
            .field("index", &self.index)
            .field("fragments", &self.fragments.len())
            .field("fragment_size", &self.hashes.fragment_size)
            .finish()
    }
}

/// Encodes sealed blocks into fragments and rebuilds them from any `k`.
/// It keeps the Reed-Solomon work space between blocks, so use one per
/// stream of blocks.
pub struct ErasureCoder {
    scheme: Scheme,
    hash: FragmentHash,
    encoder: Option<ReedSolomonEncoder>,
    decoder: Option<ReedSolomonDecoder>,
}

impl ErasureCoder {
    /// A coder for `scheme`, which must have `k ≥ 1` and `k + m ≤ 64`,
    /// with the digests of new versions ([`FRAGMENT_HASH`]).
    pub fn new(scheme: Scheme) -> Result<Self, PipelineError> {
        Self::with_hash(scheme, FRAGMENT_HASH)
    }

    /// A coder whose fragment digests use `hash`: for decoding, the
    /// manifest's.
    pub fn with_hash(scheme: Scheme, hash: FragmentHash) -> Result<Self, PipelineError> {
        Ok(Self {
            scheme: checked(scheme)?,
            hash,
            encoder: None,
            decoder: None,
        })
    }

    /// The algorithm of the fragment digests.
    pub fn hash(&self) -> FragmentHash {
        self.hash
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Cuts sealed block `index` into `k` data fragments (zero-padded to
    /// [`fragment_size`]) and computes `m` parity fragments and all hashes.
    pub fn encode(&mut self, index: u64, sealed: &[u8]) -> Result<EncodedBlock, PipelineError> {
        let mut owned = Vec::with_capacity(padded_len(sealed.len(), self.scheme.data));
        owned.extend_from_slice(sealed);
        self.encode_owned(index, owned)
    }

    /// [`ErasureCoder::encode`], taking the sealed block: it is padded in
    /// place and the data fragments are views of it, not copies. Give it
    /// room for [`padded_len`] bytes and it is not moved either.
    pub fn encode_owned(
        &mut self,
        index: u64,
        mut sealed: Vec<u8>,
    ) -> Result<EncodedBlock, PipelineError> {
        let (data, parity) = self.counts();
        let size = fragment_size(sealed.len(), self.scheme.data);
        sealed.resize(data * size, 0);
        let sealed = Bytes::from(sealed);
        let mut fragments: Vec<Bytes> = (0..data)
            .map(|position| sealed.slice(position * size..(position + 1) * size))
            .collect();
        if parity > 0 {
            let failed = |source| PipelineError::Erasure {
                block: index,
                source,
            };
            let encoder = match self.encoder.take() {
                Some(mut encoder) => {
                    encoder.reset(data, parity, size).map_err(failed)?;
                    encoder
                }
                None => ReedSolomonEncoder::new(data, parity, size).map_err(failed)?,
            };
            let encoder = self.encoder.insert(encoder);
            for fragment in &fragments {
                encoder.add_original_shard(fragment).map_err(failed)?;
            }
            let result = encoder.encode().map_err(failed)?;
            fragments.extend(result.recovery_iter().map(Bytes::copy_from_slice));
        }
        let hashes = BlockFragments {
            digests: fragments.iter().map(|f| self.hash.digest(f)).collect(),
            fragment_size: size as u64,
        };
        Ok(EncodedBlock {
            index,
            fragments,
            hashes,
            hash: self.hash,
        })
    }

    /// Rebuilds sealed block `index` of `sealed_len` bytes from the fragments
    /// at hand: `fragments[p]` is the fragment of position `p`, if any.
    ///
    /// Fragments are checked against `expected` (size and digest) before
    /// use, data positions first, until `k` good ones are found; the rest are
    /// not looked at. A fragment that fails the check counts as missing. With
    /// fewer than `k` good fragments the error lists the missing and the
    /// corrupt positions.
    pub fn decode<T: AsRef<[u8]>>(
        &mut self,
        index: u64,
        expected: &BlockFragments,
        sealed_len: usize,
        fragments: &[Option<T>],
    ) -> Result<Vec<u8>, PipelineError> {
        let (data, parity) = self.counts();
        let positions = data + parity;
        if fragments.len() != positions {
            return Err(PipelineError::PositionCount {
                expected: self.scheme.positions(),
                got: fragments.len(),
            });
        }
        if expected.digests.len() != positions {
            return Err(PipelineError::Inconsistent(
                "a block does not list one hash per position",
            ));
        }
        let size = fragment_size(sealed_len, self.scheme.data);
        if expected.fragment_size != size as u64 {
            return Err(PipelineError::Inconsistent(
                "a fragment size does not match the block length",
            ));
        }

        let mut good: Vec<Option<&[u8]>> = vec![None; positions];
        let mut usable = 0;
        let mut missing = Vec::new();
        let mut corrupt = Vec::new();
        for (position, slot) in fragments.iter().enumerate() {
            if usable == data {
                break;
            }
            // Positions are at most 64, so they fit in a u32.
            let number = position as u32;
            match slot {
                None => missing.push(number),
                Some(fragment) => {
                    let fragment = fragment.as_ref();
                    if fragment.len() == size
                        && self.hash.digest(fragment) == expected.digests[position]
                    {
                        good[position] = Some(fragment);
                        usable += 1;
                    } else {
                        corrupt.push(number);
                    }
                }
            }
        }
        if usable < data {
            return Err(PipelineError::MissingFragments {
                block: index,
                needed: self.scheme.data,
                usable: usable as u32,
                missing,
                corrupt,
            });
        }

        let mut sealed = Vec::with_capacity(data * size);
        if good[..data].iter().all(Option::is_some) {
            for fragment in good[..data].iter().flatten() {
                sealed.extend_from_slice(fragment);
            }
        } else {
            let failed = |source| PipelineError::Erasure {
                block: index,
                source,
            };
            let decoder = match self.decoder.take() {
                Some(mut decoder) => {
                    decoder.reset(data, parity, size).map_err(failed)?;
                    decoder
                }
                None => ReedSolomonDecoder::new(data, parity, size).map_err(failed)?,
            };
            let decoder = self.decoder.insert(decoder);
            for (position, fragment) in good.iter().enumerate() {
                if let Some(fragment) = fragment {
                    if position < data {
                        decoder.add_original_shard(position, fragment)
                    } else {
                        decoder.add_recovery_shard(position - data, fragment)
                    }
                    .map_err(failed)?;
                }
            }
            let result = decoder.decode().map_err(failed)?;
            for (position, fragment) in good[..data].iter().enumerate() {
                let fragment =
                    match fragment {
                        Some(fragment) => *fragment,
                        None => result.restored_original(position).ok_or(
                            PipelineError::Inconsistent("the erasure decoder restored no fragment"),
                        )?,
                    };
                sealed.extend_from_slice(fragment);
            }
        }
        sealed.truncate(sealed_len);
        Ok(sealed)
    }

    /// The fragment of `position` in block `index`, as a replaced supplier
    /// needs it: the one in `fragments` at that position if it matches the
    /// manifest, else rebuilt from the other positions' and checked against
    /// the manifest's digest.
    ///
    /// Needs neither the file key nor the block's length: the `k` data
    /// fragments, padding included, are decoded and coded again, and the
    /// padding is zeros whatever the length was.
    pub fn rebuild<T: AsRef<[u8]>>(
        &mut self,
        index: u64,
        expected: &BlockFragments,
        fragments: &[Option<T>],
        position: u32,
    ) -> Result<Bytes, PipelineError> {
        let slot = position as usize;
        let wanted = expected
            .digests
            .get(slot)
            .ok_or(PipelineError::Inconsistent(
                "the position to rebuild is outside the scheme",
            ))?;
        let size = usize::try_from(expected.fragment_size)
            .ok()
            .filter(|&size| size <= super::MAX_BLOCK_SIZE + (1 << 10))
            .ok_or(PipelineError::Inconsistent(
                "a fragment size is out of range",
            ))?;
        if let Some(Some(own)) = fragments.get(slot) {
            let own = own.as_ref();
            if own.len() == size && self.hash.digest(own) == *wanted {
                return Ok(Bytes::copy_from_slice(own));
            }
        }
        let others: Vec<Option<&[u8]>> = fragments
            .iter()
            .enumerate()
            .map(|(p, fragment)| fragment.as_ref().map(AsRef::as_ref).filter(|_| p != slot))
            .collect();
        let padded = size.saturating_mul(self.scheme.data as usize);
        let block = match self.decode(index, expected, padded, &others) {
            Ok(block) => block,
            // The position being rebuilt is not one of the missing.
            Err(PipelineError::MissingFragments {
                block,
                needed,
                usable,
                mut missing,
                corrupt,
            }) => {
                missing.retain(|&p| p != position);
                return Err(PipelineError::MissingFragments {
                    block,
                    needed,
                    usable,
                    missing,
                    corrupt,
                });
            }
            Err(e) => return Err(e),
        };
        let encoded = self.encode_owned(index, block)?;
        match (
            encoded.fragments.get(slot),
            encoded.hashes.digests.get(slot),
        ) {
            (Some(fragment), Some(digest)) if digest == wanted => Ok(fragment.clone()),
            _ => Err(PipelineError::Inconsistent(
                "the rebuilt fragment does not match the manifest's digest",
            )),
        }
    }

    /// `(k, m)` as sizes. The scheme was checked, so both are at most 64.
    fn counts(&self) -> (usize, usize) {
        (self.scheme.data as usize, self.scheme.parity as usize)
    }
}

impl fmt::Debug for ErasureCoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErasureCoder")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMES: [(u32, u32); 8] = [
        (1, 0),
        (1, 1),
        (2, 1),
        (2, 2),
        (3, 0),
        (4, 2),
        (5, 3),
        (2, 5),
    ];

    fn random(len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand::fill(data.as_mut_slice());
        data
    }

    /// The fragments with the positions in `mask` left out.
    fn without(block: &EncodedBlock, mask: u64) -> Vec<Option<&[u8]>> {
        block
            .fragments
            .iter()
            .enumerate()
            .map(|(p, f)| (mask & (1 << p) == 0).then_some(&f[..]))
            .collect()
    }

    fn positions_in(mask: u64) -> Vec<u32> {
        (0..64).filter(|p| mask & (1 << p) != 0).collect()
    }

    #[test]
    fn fragment_sizes_are_even_and_cover_the_block() {
        for len in [0, 1, 16, 17, 1000, 4097, 65_552] {
            for k in 1..=64 {
                let size = fragment_size(len, k);
                assert_eq!(size % 2, 0);
                assert!(size >= 2);
                assert!(size * k as usize >= len);
                assert!(
                    (size - 2) * (k as usize) < len.max(1),
                    "{len} {k}: {size} is not minimal"
                );
            }
        }
    }

    #[test]
    fn a_lost_position_is_rebuilt_from_any_k_others() {
        for (data, parity) in SCHEMES {
            let scheme = Scheme { data, parity };
            let positions = scheme.positions();
            let mut coder = ErasureCoder::new(scheme).unwrap();
            for len in [0, 17, 4097] {
                let block = coder.encode(3, &random(len)).unwrap();
                for position in 0..positions {
                    for mask in 0..1u64 << positions {
                        // The position itself is always gone.
                        let mask = mask | 1 << position;
                        let lost = mask.count_ones();
                        let result =
                            coder.rebuild(3, &block.hashes, &without(&block, mask), position);
                        if lost <= parity {
                            assert_eq!(
                                result.unwrap(),
                                block.fragments[position as usize],
                                "{scheme} len {len} position {position} mask {mask:b}"
                            );
                        } else {
                            assert!(
                                matches!(result, Err(PipelineError::MissingFragments { .. })),
                                "{scheme} len {len} position {position} mask {mask:b}"
                            );
                        }
                    }
                }
                // The position's own fragment, when good, is taken as is,
                // even with every other position gone...
                let all = (1u64 << positions) - 1;
                let mut own_only = without(&block, all);
                own_only[0] = Some(&block.fragments[0][..]);
                assert_eq!(
                    coder.rebuild(3, &block.hashes, &own_only, 0).unwrap(),
                    block.fragments[0]
                );
                // ...and a bad one counts for nothing: rebuilt when the
                // others suffice, and never named among the missing.
                let mut junk = without(&block, 0);
                junk[0] = Some(&b"junk"[..]);
                if parity > 0 {
                    assert_eq!(
                        coder.rebuild(3, &block.hashes, &junk, 0).unwrap(),
                        block.fragments[0]
                    );
                }
                let mut junk_alone = without(&block, all);
                junk_alone[0] = Some(&b"junk"[..]);
                match coder.rebuild(3, &block.hashes, &junk_alone, 0) {
                    Err(PipelineError::MissingFragments { missing, .. }) => {
                        assert_eq!(missing, (1..positions).collect::<Vec<_>>(), "{scheme}");
                    }
                    other => panic!("{scheme}: a junk fragment alone gave {other:?}"),
                }
                // A manifest whose digest for the position is wrong is caught.
                let mut wrong = block.hashes.clone();
                wrong.digests[0] = [7; 32];
                if parity > 0 {
                    assert!(matches!(
                        coder.rebuild(3, &wrong, &without(&block, 1), 0),
                        Err(PipelineError::Inconsistent(_))
                    ));
                }
                assert!(matches!(
                    coder.rebuild(3, &block.hashes, &without(&block, 0), positions),
                    Err(PipelineError::Inconsistent(_))
                ));
            }
        }
    }

    #[test]
    fn any_k_fragments_rebuild_the_block() {
        for (data, parity) in SCHEMES {
            let scheme = Scheme { data, parity };
            let positions = scheme.positions();
            let mut coder = ErasureCoder::new(scheme).unwrap();
            for len in [16, 17, 999, 4097] {
                let sealed = random(len);
                let block = coder.encode(9, &sealed).unwrap();
                assert_eq!(block.index, 9);
                assert_eq!(block.fragments.len(), positions as usize);
                let size = fragment_size(len, data);
                assert_eq!(block.hashes.fragment_size, size as u64);
                assert_eq!(block.hash, FragmentHash::Blake3);
                for (fragment, digest) in block.fragments.iter().zip(&block.hashes.digests) {
                    assert_eq!(fragment.len(), size);
                    assert_eq!(&FragmentHash::Blake3.digest(fragment), digest);
                }
                // Data fragments are the sealed block itself, zero-padded.
                let joined: Vec<u8> = block.fragments[..data as usize].concat();
                assert_eq!(&joined[..len], sealed.as_slice());
                assert!(joined[len..].iter().all(|&b| b == 0));

                for mask in 0..1u64 << positions {
                    let lost = mask.count_ones();
                    let result = coder.decode(9, &block.hashes, len, &without(&block, mask));
                    if lost <= parity {
                        assert_eq!(result.unwrap(), sealed, "{scheme} len {len} mask {mask:b}");
                    } else if lost == parity + 1 {
                        match result.unwrap_err() {
                            PipelineError::MissingFragments {
                                block,
                                needed,
                                usable,
                                missing,
                                corrupt,
                            } => {
                                assert_eq!(block, 9);
                                assert_eq!(needed, data);
                                assert_eq!(usable, data - 1);
                                assert_eq!(missing, positions_in(mask));
                                assert!(corrupt.is_empty());
                            }
                            other => panic!("{scheme}: unexpected {other}"),
                        }
                    } else {
                        assert!(result.is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn corrupt_fragments_count_as_missing() {
        let scheme = Scheme { data: 4, parity: 2 };
        let mut coder = ErasureCoder::new(scheme).unwrap();
        let sealed = random(10_000);
        let block = coder.encode(0, &sealed).unwrap();
        let mut flipped: Vec<Vec<u8>> = block.fragments.iter().map(|f| f.to_vec()).collect();
        flipped[1][7] ^= 0x40;
        flipped[3].pop();
        let slots: Vec<Option<&Vec<u8>>> = flipped.iter().map(Some).collect();
        assert_eq!(
            coder
                .decode(0, &block.hashes, sealed.len(), &slots)
                .unwrap(),
            sealed
        );

        let mut slots = slots;
        slots[4] = None;
        let err = coder
            .decode(0, &block.hashes, sealed.len(), &slots)
            .unwrap_err();
        assert!(matches!(
            &err,
            PipelineError::MissingFragments { missing, corrupt, usable: 3, .. }
                if missing == &[4] && corrupt == &[1, 3]
        ));
        assert_eq!(
            err.to_string(),
            "block 0: 3 usable fragments, 4 needed; missing positions [4], corrupt positions [1, 3]"
        );
    }

    #[test]
    fn fragments_are_checked_with_the_manifests_algorithm() {
        // Versions written before BLAKE3 name SHA-256 and still decode; a
        // coder with the other algorithm sees every fragment as corrupt.
        let scheme = Scheme { data: 2, parity: 1 };
        let sealed = random(5000);
        let mut old = ErasureCoder::with_hash(scheme, FragmentHash::Sha256).unwrap();
        let block = old.encode(0, &sealed).unwrap();
        assert_eq!(
            block.hashes.digests[0],
            FragmentHash::Sha256.digest(&block.fragments[0])
        );
        let slots: Vec<Option<&Bytes>> = block.fragments.iter().map(Some).collect();
        assert_eq!(
            old.decode(0, &block.hashes, sealed.len(), &slots).unwrap(),
            sealed
        );
        let mut new = ErasureCoder::new(scheme).unwrap();
        assert!(matches!(
            new.decode(0, &block.hashes, sealed.len(), &slots),
            Err(PipelineError::MissingFragments { usable: 0, corrupt, .. }) if corrupt == [0, 1, 2]
        ));
    }

    #[test]
    fn inconsistent_inputs_are_refused() {
        let mut coder = ErasureCoder::new(Scheme { data: 2, parity: 1 }).unwrap();
        let sealed = random(100);
        let block = coder.encode(0, &sealed).unwrap();
        let slots: Vec<Option<&Bytes>> = block.fragments.iter().map(Some).collect();
        assert!(matches!(
            coder.decode(0, &block.hashes, 100, &slots[..2]),
            Err(PipelineError::PositionCount {
                expected: 3,
                got: 2
            })
        ));
        assert!(matches!(
            coder.decode(0, &block.hashes, 120, &slots),
            Err(PipelineError::Inconsistent(_))
        ));
        let mut hashes = block.hashes.clone();
        hashes.digests.pop();
        assert!(matches!(
            coder.decode(0, &hashes, 100, &slots),
            Err(PipelineError::Inconsistent(_))
        ));
        assert!(ErasureCoder::new(Scheme { data: 0, parity: 2 }).is_err());
        assert!(
            ErasureCoder::new(Scheme {
                data: 60,
                parity: 5
            })
            .is_err()
        );
        assert!(format!("{:?}", block).len() < 100);
    }
}
