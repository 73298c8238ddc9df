//! gRPC over mutual TLS for Silt nodes.
//!
//! - [`server`]: an accept loop that completes the TLS handshake off the
//!   accept path, bounds connections and handshake time, and hands tonic
//!   streams that carry the authenticated [`PeerInfo`].
//! - [`client`]: a [`Dialer`] that resolves `host:port` through
//!   hickory-resolver, completes the handshake, and refuses any node other
//!   than the one expected.
//! - [`peer`]: how a gRPC handler learns who is calling.
//!
//! There is no plaintext port: everything a node serves goes through
//! [`server::incoming`].

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod peer;
pub mod resolve;
pub mod server;

pub use client::{Connection, Dialer};
pub use peer::{ConnectionId, PeerInfo, peer};

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A `host:port` could not be parsed.
    #[error("invalid address {addr:?}: {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A name did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's answer.
        reason: String,
    },
    /// The connection or handshake failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The cause, with its chain.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] common::tls::TlsError),
}

/// Joins an error and its sources into one line.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
