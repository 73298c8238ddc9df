//! Node contacts: a node ID and the endpoints where that node listens.
//!
//! A [`Contact`] is the domain form of `proto::dht::v1::NodeContact`. It is
//! bounded (at most [`MAX_ENDPOINTS`] endpoints of at most
//! [`MAX_ENDPOINT_LEN`] bytes each), so routing tables and lookups that hold
//! contacts from untrusted peers stay bounded too. The endpoints are not
//! trusted: whoever dials one checks the node ID in the mutual-TLS handshake.

use std::fmt;

use common::id::NodeId;
pub use common::identity::MAX_ENDPOINTS;

use crate::distance::Key;
use crate::error::Error;

/// Longest endpoint accepted, in bytes.
pub const MAX_ENDPOINT_LEN: usize = 255;

/// A node and where to reach it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Contact {
    id: NodeId,
    endpoints: Vec<String>,
}

impl Contact {
    /// Builds a contact, checking the endpoints: at most [`MAX_ENDPOINTS`],
    /// each 1 to [`MAX_ENDPOINT_LEN`] printable ASCII characters.
    pub fn new(id: NodeId, endpoints: Vec<String>) -> Result<Self, Error> {
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(Error::BadContact {
                reason: "too many endpoints",
            });
        }
        for endpoint in &endpoints {
            if endpoint.is_empty() || endpoint.len() > MAX_ENDPOINT_LEN {
                return Err(Error::BadContact {
                    reason: "endpoint is empty or too long",
                });
            }
            if !endpoint.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::BadContact {
                    reason: "endpoint has characters other than printable ascii",
                });
            }
        }
        Ok(Self { id, endpoints })
    }

    /// The node ID.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The node's position in the keyspace.
    pub fn key(&self) -> Key {
        Key::from(self.id)
    }

    /// Where the node listens, `host:port`.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::dht::v1::NodeContact {
        proto::dht::v1::NodeContact {
            node_id: self.id.as_bytes().to_vec(),
            endpoints: self.endpoints.clone(),
        }
    }
}

impl TryFrom<proto::dht::v1::NodeContact> for Contact {
    type Error = Error;

    fn try_from(wire: proto::dht::v1::NodeContact) -> Result<Self, Self::Error> {
        let id = NodeId::from_slice(&wire.node_id).map_err(|_| Error::BadContact {
            reason: "node id is not 32 bytes",
        })?;
        Self::new(id, wire.endpoints)
    }
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contact")
            .field("id", &self.id)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(node_id: Vec<u8>, endpoints: &[&str]) -> proto::dht::v1::NodeContact {
        proto::dht::v1::NodeContact {
            node_id,
            endpoints: endpoints.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    #[test]
    fn contacts_round_trip_through_the_wire() {
        let contact = Contact::new(NodeId::from_array([3; 32]), vec!["id-a:7700".into()]).unwrap();
        let back = Contact::try_from(contact.to_proto()).unwrap();
        assert_eq!(back, contact);
        assert_eq!(back.key(), Key::from_array([3; 32]));
    }

    #[test]
    fn bad_contacts_are_refused() {
        let too_many = vec!["h:1"; MAX_ENDPOINTS + 1];
        let long = "h".repeat(MAX_ENDPOINT_LEN + 1);
        for (bad, why) in [
            (wire(vec![1; 31], &[]), "32 bytes"),
            (wire(vec![1; 33], &[]), "32 bytes"),
            (wire(vec![], &[]), "32 bytes"),
            (wire(vec![1; 32], &too_many), "too many"),
            (wire(vec![1; 32], &[""]), "empty"),
            (wire(vec![1; 32], &[&long]), "too long"),
            (wire(vec![1; 32], &["a b:1"]), "printable"),
            (wire(vec![1; 32], &["h\n:1"]), "printable"),
        ] {
            let err = Contact::try_from(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
        Contact::try_from(wire(vec![1; 32], &["h:1"; MAX_ENDPOINTS])).unwrap();
    }
}
