//! Identity, keys, crypto, envelopes, the keystore and TLS peer identity:
//! everything Silt nodes share that does no networking.
//!
//! - [`id`]: node IDs, user IDs (`user@idhost`) and key IDs (`alias$user@idhost`).
//! - [`crypto`]: RSA keys, domain-separated signatures, key wrapping, AES-256-GCM.
//! - [`envelope`]: signed bodies, verified before they are decoded.
//! - [`identity`]: identity documents, trust-on-first-use pins, backups.
//! - [`keystore`]: one file per key, atomic and mode 0600.
//! - [`manifest`]: file version manifests with their two signatures.
//! - [`sealed`]: messages encrypted to a user and signed by another (grants).
//! - [`tls`]: self-certifying mutual TLS.

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod allocator;
pub mod atomic_file;
pub mod audit;
pub mod crypto;
pub mod digest;
pub mod envelope;
pub mod id;
pub mod identity;
pub mod keystore;
pub mod lockfile;
pub mod manifest;
pub mod sealed;
pub mod tls;

/// Seconds since the Unix epoch; 0 if the clock is before 1970.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
