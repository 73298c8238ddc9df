//! Generated protobuf messages and gRPC services of Silt.
//!
//! This crate holds generated code only. Domain types live in the crates that
//! own them and convert from these with `TryFrom`; generated types stop at the
//! service layer.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// The codec of every generated client and server.
#[cfg(feature = "grpc")]
pub mod codec;

/// `silt.common.v1`: envelopes, locations, sealed messages.
pub mod common {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/silt.common.v1.rs"));
    }
}

/// `silt.identity.v1`: identity documents and the identity server.
pub mod identity {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/silt.identity.v1.rs"));
    }
}

/// `silt.storage.v1`: the supplier's storage service.
pub mod storage {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/silt.storage.v1.rs"));
    }
}

/// `silt.dht.v1`: Kademlia.
pub mod dht {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/silt.dht.v1.rs"));
    }
}

/// `silt.mailbox.v1`: store-and-forward mailboxes.
pub mod mailbox {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/silt.mailbox.v1.rs"));
    }
}

/// `silt.peer.v1`: the customer daemon's service.
pub mod peer {
    /// Version 1.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/silt.peer.v1.rs"));
    }
}
