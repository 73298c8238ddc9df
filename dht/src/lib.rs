//! Silt's Kademlia core: the routing table, iterative lookups and signed
//! records, with no IO.
//!
//! Nothing in this crate opens a socket, spawns a task or reads a clock.
//! Every method that cares about time takes `now` (an [`std::time::Instant`]
//! for timers, Unix seconds for record expiry), and every state machine
//! returns what its driver should do next, in the style of quinn-proto and
//! libp2p-kad. The network driver over gRPC lives elsewhere.
//!
//! - [`distance`]: 256-bit keys, XOR distance and bucket indices.
//! - [`contact`]: a node ID and its endpoints, bounded.
//! - [`kbucket`]: the routing table: 256 buckets of `k` contacts with
//!   replacement caches, liveness checks and refresh bookkeeping.
//! - [`query`]: the FIND_NODE / FIND_VALUE lookup state machine.
//! - [`record`]: record validation, the record store and the reader's choice.
//!
//! # Invariants
//!
//! - No module does IO or reads the clock.
//! - Everything a peer can grow is bounded: bucket and cache sizes, requests
//!   in flight and candidates per lookup, record size and records per store.
//! - A [`record::Record`] exists only once validated, and a store holds
//!   nothing else.
//! - Input from peers never panics: it is refused with an [`Error`].

#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod contact;
pub mod distance;
mod error;
pub mod kbucket;
pub mod query;
pub mod record;

pub use crate::contact::Contact;
pub use crate::distance::{Distance, Key};
pub use crate::error::Error;
