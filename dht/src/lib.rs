//! Silt's Kademlia: a sans-IO core (the routing table, iterative lookups,
//! signed records, the republish schedule) and the driver that runs it over
//! gRPC and mutual TLS.
//!
//! Nothing in the core opens a socket, spawns a task or reads a clock.
//! Every method that cares about time takes `now` (an [`std::time::Instant`]
//! for timers, Unix seconds for record expiry), and every state machine
//! returns what its driver should do next, in the style of quinn-proto and
//! libp2p-kad.
//!
//! The core:
//!
//! - [`distance`]: 256-bit keys, XOR distance and bucket indices.
//! - [`contact`]: a node ID and its endpoints, bounded.
//! - [`kbucket`]: the routing table: 256 buckets of `k` contacts with
//!   replacement caches, liveness checks and refresh bookkeeping.
//! - [`query`]: the FIND_NODE / FIND_VALUE lookup state machine.
//! - [`record`]: record validation, the record store and the reader's choice.
//! - [`republish`]: when each held record is due to be republished.
//! - [`signer`]: who may sign a user's records, and what the node caches.
//!
//! The driver:
//!
//! - [`node`]: the node actor, its [`node::DhtHandle`] (bootstrap, lookups,
//!   get, put) and its timers (refresh, republish, expiry).
//! - [`service`]: the `silt.dht.v1.Dht` gRPC service of a server node.
//!
//! # Invariants
//!
//! - No core module does IO or reads the clock; the driver reads it once
//!   per event and passes it down.
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
pub mod node;
pub mod query;
pub mod record;
pub mod republish;
pub mod service;
pub mod signer;

pub use crate::contact::Contact;
pub use crate::distance::{Distance, Key};
pub use crate::error::Error;
pub use crate::node::{Config, DhtHandle, DhtNode, Mode, NodeError};
pub use crate::service::DhtService;
