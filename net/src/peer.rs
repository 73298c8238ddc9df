//! Who is calling: the peer identity proved in the mutual-TLS handshake,
//! carried to gRPC handlers as a request extension.

use std::net::SocketAddr;

use common::crypto::PublicKey;
use common::id::NodeId;

/// Identifies one accepted connection, so grants can be tied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// The authenticated peer of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// SHA-256 of the peer's master public key.
    pub node_id: NodeId,
    /// The peer's master public key.
    pub master_key: PublicKey,
    /// The peer's socket address.
    pub remote_addr: SocketAddr,
    /// This connection.
    pub connection: ConnectionId,
}

/// The authenticated peer of a request, or `UNAUTHENTICATED` if the request
/// did not arrive over [`crate::server::incoming`] (which cannot happen in a
/// correctly wired node, and is refused rather than trusted).
pub fn peer<T>(request: &tonic::Request<T>) -> Result<&PeerInfo, tonic::Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .ok_or_else(|| tonic::Status::unauthenticated("no authenticated peer"))
}
