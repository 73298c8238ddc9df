//! Throughput of the data pipeline, in process and without networking:
//! encoding (AES-256-GCM sealing, Reed-Solomon coding, fragment hashing) and
//! decoding, for a 4+2 scheme with 4 MiB blocks.
//!
//! Run with `cargo bench -p customer --bench pipeline`. `SILT_BENCH_MIB` sets
//! the amount of data (default 256 MiB). It prints one line per figure, in
//! MiB of plaintext per second, and checks nothing about timing.
//!
//! `cargo bench` builds the dev-dependencies (RocksDB) with optimizations,
//! which takes long the first time. The dev profile already optimizes the
//! crypto and erasure-coding crates, so this is a cheaper approximation:
//!
//! ```text
//! cargo bench -p customer --bench pipeline --profile dev \
//!     --config 'profile.dev.package.customer.opt-level=3' \
//!     --config 'profile.dev.package.common.opt-level=3'
//! ```

use std::error::Error;
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::crypto::PrivateKey;
use common::digest::FragmentHash;
use common::manifest::Scheme;
use customer::pipeline::{
    DEFAULT_BLOCK_SIZE, Decoder, EncodeParams, Encoder, ErasureCoder, FileKey, LocationSecrets,
    NormalPath, VersionCipher, VersionRef,
};

const MIB: usize = 1024 * 1024;
/// Random bytes that the input cycles through, so the input costs little
/// more than a copy.
const POOL_BYTES: usize = 64 * MIB;

fn main() -> Result<(), Box<dyn Error>> {
    let total_mib: usize = match std::env::var("SILT_BENCH_MIB") {
        Ok(text) => text.parse()?,
        Err(_) => 256,
    };
    let total = total_mib * MIB;
    let scheme = Scheme { data: 4, parity: 2 };
    let block_size = DEFAULT_BLOCK_SIZE;

    let key = LocationSecrets::derive(Arc::new(PrivateKey::generate(2048)?))?;
    let path = NormalPath::new("bench/random.bin")?;
    let version = VersionRef {
        location: "bench$alice@id-a".parse()?,
        object_id: key.object_id(&path),
        version: 1,
    };
    let mut pool = vec![0u8; POOL_BYTES.min(total.max(1))];
    rand::fill(pool.as_mut_slice());

    println!(
        "pipeline benchmark: scheme {scheme}, {} MiB blocks, {total_mib} MiB of random data",
        block_size / MIB
    );

    // The stages alone, over one block repeated.
    let block = &pool[..block_size.min(pool.len())];
    let rounds = (total / block.len()).max(1);
    let cipher = VersionCipher::new(FileKey::generate(), version.clone());
    let sealed = cipher.seal_block(0, block)?;
    let seal = time(|| {
        for i in 0..rounds {
            black_box(cipher.seal_block(i as u64, black_box(block))?);
        }
        Ok(())
    })?;
    report("stage: seal (AES-256-GCM)", rounds * block.len(), seal);
    for algorithm in [FragmentHash::Sha256, FragmentHash::Blake3] {
        let hash = time(|| {
            for _ in 0..rounds {
                black_box(algorithm.digest(black_box(block)));
            }
            Ok(())
        })?;
        report(
            &format!("stage: hash ({algorithm})"),
            rounds * block.len(),
            hash,
        );
    }
    let mut coder = ErasureCoder::new(scheme)?;
    let code = time(|| {
        for i in 0..rounds {
            black_box(coder.encode(i as u64, black_box(&sealed))?);
        }
        Ok(())
    })?;
    report(
        "stage: erasure code + hash fragments (4+2)",
        rounds * block.len(),
        code,
    );

    // The whole encoder, block by block from a reader, dropping each block's
    // fragments as a sender would once they are sent.
    let params = EncodeParams {
        version,
        path,
        epoch: 0,
        writer: "alice@id-a".parse()?,
        scheme,
        block_size,
        mtime_unix: 0,
        created_unix: 0,
    };
    let encode = time(|| {
        let input = Cycle {
            pool: &pool,
            offset: 0,
            remaining: total,
        };
        let mut encoder = Encoder::new(input, params.clone(), &key)?;
        while let Some(block) = encoder.next_block()? {
            black_box(block);
        }
        black_box(encoder.finish()?);
        Ok(())
    })?;
    report("encode (read + seal + erasure code + hash)", total, encode);

    // Once more, untimed, keeping the fragments to decode them below.
    let input = Cycle {
        pool: &pool,
        offset: 0,
        remaining: total,
    };
    let mut encoder = Encoder::new(input, params, &key)?;
    let mut fragments: Vec<Vec<prost::bytes::Bytes>> = Vec::new();
    while let Some(block) = encoder.next_block()? {
        fragments.push(block.fragments);
    }
    let manifest = encoder.finish()?;

    // Decoding with every fragment, and with two data fragments lost per
    // block so that Reed-Solomon has to rebuild them.
    for (label, lost) in [
        ("decode, all fragments (hash + open)", 0),
        ("decode, 2 data fragments lost (hash + rebuild + open)", 2),
    ] {
        let mut sink = Count(0);
        let elapsed = time(|| {
            let mut decoder = Decoder::new(&manifest, &key)?;
            for (index, block) in (0..).zip(&fragments) {
                let slots: Vec<Option<&[u8]>> = block
                    .iter()
                    .enumerate()
                    .map(|(position, f)| (position >= lost).then_some(&f[..]))
                    .collect();
                decoder.write_block(index, &slots, &mut sink)?;
            }
            decoder.finish()?;
            Ok(())
        })?;
        if sink.0 != total {
            return Err(format!("decoded {} bytes, expected {total}", sink.0).into());
        }
        report(label, total, elapsed);
    }
    Ok(())
}

/// Runs `work` once and returns how long it took.
fn time(mut work: impl FnMut() -> Result<(), Box<dyn Error>>) -> Result<Duration, Box<dyn Error>> {
    let start = Instant::now();
    work()?;
    Ok(start.elapsed())
}

fn report(label: &str, bytes: usize, elapsed: Duration) {
    let mib = bytes as f64 / MIB as f64;
    println!(
        "{label}: {:.1} MiB/s ({mib:.0} MiB in {:.3} s)",
        mib / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}

/// `remaining` bytes of `pool`, repeated.
struct Cycle<'a> {
    pool: &'a [u8],
    offset: usize,
    remaining: usize,
}

impl Read for Cycle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(self.remaining)
            .min(self.pool.len() - self.offset);
        buf[..n].copy_from_slice(&self.pool[self.offset..self.offset + n]);
        self.offset = (self.offset + n) % self.pool.len();
        self.remaining -= n;
        Ok(n)
    }
}

/// A sink that counts what it is given.
struct Count(usize);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
