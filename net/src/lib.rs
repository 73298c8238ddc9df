//! gRPC over mutual TLS for Silt nodes.
//!
//! - [`server`]: an accept loop that completes the TLS handshake off the
//!   accept path, bounds connections and handshake time, and hands tonic
//!   streams that carry the authenticated [`PeerInfo`].
//! - [`client`]: a [`Dialer`] that resolves `host:port` through
//!   hickory-resolver, completes the handshake, and refuses any node other
//!   than the one expected.
//! - [`peer`]: how a gRPC handler learns who is calling.
//! - [`idserver`]: publishing and fetching identity documents.
//!
//! There is no plaintext port: everything a node serves goes through
//! [`server::incoming`].

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
pub mod idserver;
pub mod peer;
pub mod resolve;
pub mod server;

pub use client::{Connection, Dialer};
pub use peer::{ConnectionId, PeerInfo, peer};

/// HTTP/2 flow control and framing, set on both ends of every Silt
/// connection. hyper's defaults (1 MiB windows on a server, 16 KiB frames)
/// made a megabyte fragment wait for window updates and cross h2 and TLS
/// in 64 pieces; these let a few fragments per connection be in flight
/// while bounding what one authenticated peer can make a node buffer.
pub mod http2 {
    /// What a supplier lets one stream (one request) send ahead.
    pub const SERVER_STREAM_WINDOW: u32 = 2 << 20;
    /// What a supplier lets one connection send ahead, all streams together.
    pub const SERVER_CONNECTION_WINDOW: u32 = 4 << 20;
    /// What a customer lets one stream (one download) send ahead.
    pub const CLIENT_STREAM_WINDOW: u32 = 4 << 20;
    /// What a customer lets one connection send ahead.
    pub const CLIENT_CONNECTION_WINDOW: u32 = 16 << 20;
    /// Largest HTTP/2 frame either end accepts.
    pub const MAX_FRAME: u32 = 256 << 10;
}

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
