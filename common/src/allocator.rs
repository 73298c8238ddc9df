//! The C allocator's settings for Silt's data path, in both programs.
//!
//! By default glibc serves every allocation of 128 KiB or more from a fresh
//! `mmap` until freed blocks teach it a higher threshold, and it returns the
//! top of a heap to the kernel as soon as 128 KiB there are free. Silt moves
//! data in pieces of that size and more: a customer seals 4 MiB blocks and
//! receives 1 MiB fragments, a supplier receives fragments, and RocksDB
//! (which shares the allocator) fills memtable arenas of megabytes. Much of
//! that memory was mapped, zeroed by the kernel, and unmapped again over and
//! over: in a 1 GiB upload a sixth to a quarter of the suppliers' CPU, the
//! most on a fresh supplier, and 5–10% of the customer's CPU in uploads and
//! downloads (figures in `docs/design/throughput.md`).
//!
//! [`tune`] fixes the threshold at [`MMAP_THRESHOLD`] and lets heaps keep up to
//! [`TRIM_THRESHOLD`] of free memory. Whoever sets any `glibc.malloc.*`
//! tunable in `GLIBC_TUNABLES` keeps their own settings.

use std::ffi::OsStr;

/// Allocations below this come from the heaps, whose memory is reused; only
/// larger ones are mapped on their own. The ceiling glibc's own dynamic
/// threshold can reach, far above a block, a fragment or a memtable arena
/// block.
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Free memory a heap keeps at its top before returning it to the kernel.
pub const TRIM_THRESHOLD: usize = 256 << 20;

/// What [`tune`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    /// Both settings are in effect.
    Applied,
    /// `GLIBC_TUNABLES` sets the allocator: left as the user or operator
    /// chose.
    OperatorSettings,
    /// glibc refused a setting. The threshold is set first, so a refused
    /// trim setting leaves the threshold in effect; a refused threshold
    /// leaves both at glibc's defaults.
    Refused,
    /// Not glibc: nothing to do.
    Unsupported,
}

/// Applies [`MMAP_THRESHOLD`] and [`TRIM_THRESHOLD`] to the process's
/// allocator, unless `GLIBC_TUNABLES` configures it. Call it once, early; it
/// affects every allocation of the process, a C library's included.
pub fn tune() -> Tuning {
    if operator_tuned(std::env::var_os("GLIBC_TUNABLES").as_deref()) {
        return Tuning::OperatorSettings;
    }
    apply()
}

/// Whether a `GLIBC_TUNABLES` value sets any of glibc's malloc tunables.
fn operator_tuned(tunables: Option<&OsStr>) -> bool {
    tunables.is_some_and(|value| value.to_string_lossy().contains("glibc.malloc."))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn apply() -> Tuning {
    let (Ok(mmap), Ok(trim)) = (
        libc::c_int::try_from(MMAP_THRESHOLD),
        libc::c_int::try_from(TRIM_THRESHOLD),
    ) else {
        return Tuning::Refused;
    };
    // SAFETY: `mallopt` only changes the allocator's parameters. glibc takes
    // its own lock, and it may be called at any time from any thread; it
    // touches no memory of ours. It returns 1 on success and 0 when it
    // refuses a value.
    let applied = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, trim) == 1
    };
    if applied {
        Tuning::Applied
    } else {
        Tuning::Refused
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Tuning {
    Tuning::Unsupported
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_malloc_tunables_count_as_the_operators_choice() {
        assert!(!operator_tuned(None));
        assert!(!operator_tuned(Some(OsStr::new(""))));
        assert!(!operator_tuned(Some(OsStr::new("glibc.pthread.rseq=0"))));
        assert!(operator_tuned(Some(OsStr::new(
            "glibc.malloc.trim_threshold=1000"
        ))));
        assert!(operator_tuned(Some(OsStr::new(
            "glibc.pthread.rseq=0:glibc.malloc.mmap_threshold=65536"
        ))));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_both_settings() {
        // Otherwise both programs would run with glibc's defaults, and the
        // supplier would log a warning at every start.
        assert_eq!(apply(), Tuning::Applied);
    }
}
