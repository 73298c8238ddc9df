//! The `silt.dht.v1.Dht` gRPC service of a server node.
//!
//! [`DhtService`] is thin: it decodes and checks each request, asks the
//! node through its handle, and encodes the answer. The rules:
//!
//! - The caller is who the mutual-TLS handshake proved ([`net::peer()`]).
//!   A request's `sender` is either empty (a client-mode node, which is
//!   served but never enters the routing table) or the caller's own contact:
//!   a sender naming another node is refused with `INVALID_ARGUMENT`. A
//!   sender without endpoints cannot be dialled and is treated as empty.
//! - A sender that passes goes into the routing table; a full bucket starts
//!   a liveness check of its least recently seen contact.
//! - `Ping` answers with this node's contact.
//! - `FindNode` answers with the `k` contacts closest to the target, the
//!   caller left out.
//! - `FindValue` answers with the record if this node holds a live one,
//!   else with the `k` closest contacts.
//! - `Store` validates the record with the core's rules and the signer of
//!   the user its key names (resolved as [`crate::signer`] describes), then
//!   stores it under the store's replacement rules. A record that fails is
//!   never stored: bad records get `INVALID_ARGUMENT`, records that clash
//!   with the stored one (lower sequence, other signer) get
//!   `FAILED_PRECONDITION`, an unresolvable signer `FAILED_PRECONDITION`,
//!   and a full store `RESOURCE_EXHAUSTED`. Verification details go to the
//!   debug log only.
//! - A client-mode node does not serve: every call gets `UNIMPLEMENTED`.
//!
//! Errors map to statuses in one place, `From<ServiceError> for Status`.

use proto::dht::v1::dht_server::{Dht, DhtServer};
use proto::dht::v1::{
    FindNodeRequest, FindNodeResponse, FindValueRequest, FindValueResponse, NodeContact,
    PingRequest, PingResponse, StoreRequest, StoreResponse,
};
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, debug_span, error};

use crate::contact::Contact;
use crate::distance::Key;
use crate::error::Error;
use crate::node::actor::Message;
use crate::node::{DhtHandle, NodeError};
use crate::record::{MAX_RECORD_BYTES, RecordKey};

/// The largest request decoded: a STORE of the largest record with a full
/// sender contact, rounded up.
pub const MAX_REQUEST_BYTES: usize = MAX_RECORD_BYTES + 16 * 1024;

/// Serves `silt.dht.v1.Dht` for a node.
#[derive(Debug, Clone)]
pub struct DhtService {
    node: DhtHandle,
}

impl DhtService {
    /// Serves the node behind `node`.
    pub fn new(node: DhtHandle) -> Self {
        Self { node }
    }

    /// The tonic service, decoding requests of at most
    /// [`MAX_REQUEST_BYTES`].
    pub fn into_server(self) -> DhtServer<Self> {
        DhtServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// The caller and its sender contact, if it may enter the routing table.
    fn caller<T>(
        &self,
        request: &Request<T>,
        sender: Option<NodeContact>,
    ) -> Result<Caller, ServiceError> {
        if !self.node.config().is_server() {
            return Err(ServiceError::ClientMode);
        }
        let peer = net::peer(request).map_err(ServiceError::Unauthenticated)?;
        let id = peer.node_id;
        let sender = match sender {
            None => None,
            Some(wire) if wire.node_id.is_empty() => None,
            Some(wire) => {
                let contact = Contact::try_from(wire)
                    .map_err(|_| ServiceError::BadRequest("malformed sender"))?;
                if contact.id() != id {
                    return Err(ServiceError::ForeignSender);
                }
                Some(contact).filter(|contact| !contact.endpoints().is_empty())
            }
        };
        Ok(Caller { id, sender })
    }
}

/// Who is calling.
struct Caller {
    /// Proved by the handshake.
    id: common::id::NodeId,
    /// Its contact, if it is a server node that can be dialled.
    sender: Option<Contact>,
}

#[tonic::async_trait]
impl Dht for DhtService {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let caller = self.caller(&request, request.get_ref().sender.clone())?;
        let span = debug_span!(parent: &self.node.shared().span, "dht.rpc", rpc.method = "ping", peer = %caller.id.fmt_short());
        async {
            if let Some(contact) = caller.sender {
                self.node
                    .shared()
                    .report_inbound(Message::Observed { contact })
                    .await?;
            }
            Ok(Response::new(PingResponse {
                responder: self.node.contact().map(Contact::to_proto),
            }))
        }
        .instrument(span)
        .await
        .map_err(|e: ServiceError| e.into())
    }

    async fn find_node(
        &self,
        request: Request<FindNodeRequest>,
    ) -> Result<Response<FindNodeResponse>, Status> {
        let caller = self.caller(&request, request.get_ref().sender.clone())?;
        let span = debug_span!(parent: &self.node.shared().span, "dht.rpc", rpc.method = "find_node", peer = %caller.id.fmt_short());
        async {
            let target: [u8; 32] = request
                .get_ref()
                .target
                .as_slice()
                .try_into()
                .map_err(|_| ServiceError::BadRequest("target must be 32 bytes"))?;
            let closer = self
                .node
                .shared()
                .ask_inbound(|reply| Message::Closest {
                    target: Key::from_array(target),
                    sender: caller.sender,
                    exclude: Some(caller.id),
                    reply,
                })
                .await?;
            Ok(Response::new(FindNodeResponse {
                closer: closer.iter().map(Contact::to_proto).collect(),
            }))
        }
        .instrument(span)
        .await
        .map_err(|e: ServiceError| e.into())
    }

    async fn find_value(
        &self,
        request: Request<FindValueRequest>,
    ) -> Result<Response<FindValueResponse>, Status> {
        let caller = self.caller(&request, request.get_ref().sender.clone())?;
        let span = debug_span!(parent: &self.node.shared().span, "dht.rpc", rpc.method = "find_value", peer = %caller.id.fmt_short());
        async {
            let key: RecordKey = request
                .get_ref()
                .key
                .parse()
                .map_err(|_| ServiceError::BadRequest("invalid record key"))?;
            let (record, closer) = self
                .node
                .shared()
                .ask_inbound(|reply| Message::FindValue {
                    sender: caller.sender,
                    requester: caller.id,
                    key,
                    reply,
                })
                .await?;
            Ok(Response::new(FindValueResponse {
                record: record.map(|record| record.to_proto()),
                closer: closer.iter().map(Contact::to_proto).collect(),
            }))
        }
        .instrument(span)
        .await
        .map_err(|e: ServiceError| e.into())
    }

    async fn store(
        &self,
        request: Request<StoreRequest>,
    ) -> Result<Response<StoreResponse>, Status> {
        let caller = self.caller(&request, request.get_ref().sender.clone())?;
        let span = debug_span!(parent: &self.node.shared().span, "dht.rpc", rpc.method = "store", peer = %caller.id.fmt_short());
        async {
            let wire = request
                .into_inner()
                .record
                .ok_or(ServiceError::BadRequest("no record"))?;
            let shared = self.node.shared();
            let (record, standing) = shared.validate(wire).await?;
            let key = record.key().clone();
            let outcome = shared
                .ask_inbound(|reply| Message::Store {
                    sender: caller.sender,
                    record,
                    standing,
                    reply,
                })
                .await?
                .map_err(NodeError::from)?;
            debug!(%key, ?outcome, "record stored");
            Ok(Response::new(StoreResponse {}))
        }
        .instrument(span)
        .await
        .map_err(|e: ServiceError| e.into())
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("this node does not serve the dht")]
    ClientMode,
    #[error("the sender is not the authenticated peer")]
    ForeignSender,
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("no authenticated peer")]
    Unauthenticated(Status),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::BadRequest(reason) => Status::invalid_argument(reason),
            ServiceError::ClientMode => Status::unimplemented(e.to_string()),
            ServiceError::ForeignSender => Status::invalid_argument(e.to_string()),
            ServiceError::Unauthenticated(status) => status,
            ServiceError::Node(NodeError::Busy) => Status::unavailable("busy"),
            ServiceError::Node(NodeError::Shutdown) => Status::unavailable("shutting down"),
            ServiceError::Node(NodeError::SignerUnavailable { .. }) => {
                Status::unavailable("cannot check the signer of this record now")
            }
            ServiceError::Node(NodeError::Record(error)) => record_status(&error),
            ServiceError::Node(error) => {
                error!(%error, "dht request failed");
                Status::internal("internal error")
            }
        }
    }
}

/// The status of a refused record: terse, the details in the debug log.
fn record_status(error: &Error) -> Status {
    debug!(%error, "record refused");
    match error {
        Error::SequenceRegressed { .. }
        | Error::SequenceConflict { .. }
        | Error::SignerChanged { .. } => Status::failed_precondition(error.to_string()),
        Error::SignerUnknown { .. } => {
            Status::failed_precondition("the signer of this record is unknown here")
        }
        Error::StoreFull { .. } => Status::resource_exhausted("record store is full"),
        Error::SignerQuota { .. } => {
            Status::resource_exhausted("this signer has as many records here as it may")
        }
        Error::Store(_) => {
            error!(%error, "record store failed");
            Status::internal("storage failure")
        }
        _ => Status::invalid_argument("invalid record"),
    }
}
