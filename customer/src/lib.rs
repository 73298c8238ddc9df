//! `silt`: the Silt customer. The library holds what the CLI and the daemon
//! share; `main.rs` and `cli/` are the command line.
//!
//! - [`daemon`]: `silt daemon`, which answers online checks and key audits and receives grants.
//! - [`grant`]: handing a share's key to another user's daemon.
//! - [`home`]: the home directory: config, identity, keystore, pins, state.
//! - [`idserver`]: publishing and fetching identity documents.
//! - [`pipeline`]: the data path: object IDs, block sealing, erasure coding, streaming.
//! - [`replace`]: replacing a supplier and rebuilding its fragments onto the new one.
//! - [`session`]: keys, supplier connections, the DHT, and working in another user's share.
//! - [`share`]: deleting a share.

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod daemon;
pub mod grant;
pub mod home;
pub mod keybackup;
pub mod members;
pub use net::idserver;
pub mod pipeline;
pub mod remote;
pub mod replace;
pub mod session;
pub mod share;
pub mod suppliers;
pub mod transfer;

use std::sync::Arc;

use common::crypto::PrivateKey;
use common::tls::{TlsError, TlsIdentity};

/// A dialer that presents a fresh TLS certificate bound to `master`.
pub fn dialer(master: &PrivateKey) -> Result<net::Dialer, TlsError> {
    Ok(net::Dialer::new(Arc::new(TlsIdentity::generate(master)?)))
}
