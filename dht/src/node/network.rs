//! Outgoing DHT requests over mutual TLS.
//!
//! A contact is always dialled with its node ID as the expected peer, so a
//! reply can only come from the node the contact names; only a bootstrap
//! seed is dialled blind, once, to learn its ID. Open channels are
//! kept for reuse, at most `max_connections` of them (the least recently
//! used is closed first), and a channel that fails is dropped. Requests in
//! flight are bounded by a semaphore, and every request has a deadline that
//! covers dialling too; waiting for a free slot does not count against the
//! peer.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::id::NodeId;
use net::Dialer;
use proto::dht::v1::dht_client::DhtClient;
use proto::dht::v1::{FindNodeRequest, FindValueRequest, NodeContact, PingRequest, StoreRequest};
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tracing::trace;

use crate::contact::{Contact, MAX_ENDPOINTS};
use crate::distance::Key;
use crate::record::RecordKey;

/// The largest reply decoded: `k` contacts of 8 endpoints each, or one
/// record of at most 64 KiB, with room to spare.
const MAX_REPLY_BYTES: usize = 256 * 1024;

/// Dials other nodes and sends them DHT requests.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dialer: Dialer,
    /// Our contact in server mode; `None` in client mode.
    sender: Option<NodeContact>,
    timeout: Duration,
    k: usize,
    requests: Semaphore,
    channels: Mutex<Channels>,
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum RpcError {
    /// The peer answered with an error.
    Refused(Status),
    /// The reply breaks the protocol.
    Invalid(&'static str),
    /// The peer could not be reached or did not answer in time.
    Unreachable(String),
}

impl RpcError {
    /// Whether the failure says the peer may be gone (as opposed to a peer
    /// that answered, if unhelpfully).
    pub(crate) fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused(status) => write!(f, "refused: {}", status.message()),
            Self::Invalid(reason) => write!(f, "invalid reply: {reason}"),
            Self::Unreachable(reason) => write!(f, "unreachable: {reason}"),
        }
    }
}

impl Network {
    /// A network that presents `sender` (our contact, in server mode) and
    /// gives every request `timeout`.
    pub(crate) fn new(
        dialer: Dialer,
        sender: Option<&Contact>,
        timeout: Duration,
        k: usize,
        max_requests: usize,
        max_connections: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                dialer: dialer.with_connect_timeout(timeout),
                sender: sender.map(Contact::to_proto),
                timeout,
                k,
                requests: Semaphore::new(max_requests.max(1)),
                channels: Mutex::new(Channels::new(max_connections.max(1))),
            }),
        }
    }

    /// Asks `peer` whether it is alive.
    pub(crate) async fn ping(&self, peer: &Contact) -> Result<(), RpcError> {
        let request = PingRequest {
            sender: self.inner.sender.clone(),
        };
        self.call(
            peer,
            |mut client, request| async move { client.ping(request).await },
            request,
        )
        .await
        .map(|_| ())
    }

    /// Asks `peer` for the nodes it knows closest to `target`.
    pub(crate) async fn find_node(
        &self,
        peer: &Contact,
        target: Key,
    ) -> Result<Vec<Contact>, RpcError> {
        let request = FindNodeRequest {
            sender: self.inner.sender.clone(),
            target: target.as_bytes().to_vec(),
        };
        let reply = self
            .call(
                peer,
                |mut client, request| async move { client.find_node(request).await },
                request,
            )
            .await?;
        Ok(self.contacts(reply.closer))
    }

    /// Asks `peer` for the record of `key`, or the nodes it knows closest to
    /// it. The record is not validated here.
    pub(crate) async fn find_value(
        &self,
        peer: &Contact,
        key: &RecordKey,
    ) -> Result<(Option<proto::common::v1::Envelope>, Vec<Contact>), RpcError> {
        let request = FindValueRequest {
            sender: self.inner.sender.clone(),
            key: key.to_string(),
        };
        let reply = self
            .call(
                peer,
                |mut client, request| async move { client.find_value(request).await },
                request,
            )
            .await?;
        Ok((reply.record, self.contacts(reply.closer)))
    }

    /// Asks `peer` to store `record`.
    pub(crate) async fn store(
        &self,
        peer: &Contact,
        record: proto::common::v1::Envelope,
    ) -> Result<(), RpcError> {
        let request = StoreRequest {
            sender: self.inner.sender.clone(),
            record: Some(record),
        };
        self.call(
            peer,
            |mut client, request| async move { client.store(request).await },
            request,
        )
        .await
        .map(|_| ())
    }

    /// Dials `addr` without knowing who is there, learns its node ID from
    /// the handshake, and pings it (which tells a server about us). Returns
    /// its contact: the address dialled first, then the endpoints it gives
    /// for itself.
    pub(crate) async fn hello(&self, addr: &str) -> Result<Contact, RpcError> {
        let _permit = self
            .inner
            .requests
            .acquire()
            .await
            .map_err(|_| RpcError::Unreachable("node stopped".into()))?;
        let attempt = async {
            let connection = self
                .inner
                .dialer
                .connect(addr, None)
                .await
                .map_err(|e| RpcError::Unreachable(e.to_string()))?;
            let id = connection.peer.node_id;
            let mut client = client(connection.channel.clone());
            let reply = client
                .ping(self.request(PingRequest {
                    sender: self.inner.sender.clone(),
                }))
                .await
                .map_err(classify)?
                .into_inner();
            let mut endpoints = vec![addr.to_owned()];
            if let Some(responder) = reply.responder.and_then(|c| Contact::try_from(c).ok())
                && responder.id() == id
            {
                for endpoint in responder.endpoints() {
                    if endpoints.len() < MAX_ENDPOINTS && !endpoints.contains(endpoint) {
                        endpoints.push(endpoint.clone());
                    }
                }
            }
            // The channel is not kept: it would reconnect without checking
            // the peer's ID. Later requests dial with the ID as expected.
            Contact::new(id, endpoints)
                .map_err(|_| RpcError::Invalid("seed address is not a valid endpoint"))
        };
        tokio::time::timeout(self.inner.timeout, attempt)
            .await
            .map_err(|_| RpcError::Unreachable("timed out".into()))?
    }

    /// Sends one request to `peer`: a free slot, then a channel (dialled if
    /// needed), then the call, all but the slot within the deadline.
    async fn call<Req, Resp, F, Fut>(
        &self,
        peer: &Contact,
        send: F,
        message: Req,
    ) -> Result<Resp, RpcError>
    where
        F: FnOnce(DhtClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let _permit = self
            .inner
            .requests
            .acquire()
            .await
            .map_err(|_| RpcError::Unreachable("node stopped".into()))?;
        let attempt = async {
            let channel = self.channel(peer).await?;
            send(client(channel), self.request(message))
                .await
                .map(tonic::Response::into_inner)
                .map_err(classify)
        };
        let result = match tokio::time::timeout(self.inner.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Unreachable("timed out".into())),
        };
        if let Err(error) = &result {
            trace!(peer = %peer.id().fmt_short(), %error, "dht request failed");
            if error.is_unreachable() {
                self.channels().remove(&peer.id());
            }
        }
        result
    }

    /// An open channel to `peer`, dialled with its node ID as the expected
    /// peer if none is open.
    async fn channel(&self, peer: &Contact) -> Result<Channel, RpcError> {
        if let Some(channel) = self.channels().get(&peer.id()) {
            return Ok(channel);
        }
        let mut last = String::from("the contact has no endpoint");
        for endpoint in peer.endpoints() {
            match self.inner.dialer.connect(endpoint, Some(peer.id())).await {
                Ok(connection) => {
                    self.channels()
                        .insert(peer.id(), connection.channel.clone());
                    return Ok(connection.channel);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(RpcError::Unreachable(last))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.inner.timeout);
        request
    }

    /// The contacts of a reply: at most `k`, the malformed and the
    /// undialable dropped.
    fn contacts(&self, wire: Vec<NodeContact>) -> Vec<Contact> {
        wire.into_iter()
            .take(self.inner.k)
            .filter_map(|contact| Contact::try_from(contact).ok())
            .filter(|contact| !contact.endpoints().is_empty())
            .collect()
    }

    fn channels(&self) -> MutexGuard<'_, Channels> {
        // Every critical section leaves the map consistent, so a poisoned
        // lock is still usable.
        self.inner
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn client(channel: Channel) -> DhtClient<Channel> {
    DhtClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES)
}

/// Transport failures and deadlines mean the peer may be gone; any other
/// status is an answer.
fn classify(status: Status) -> RpcError {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            RpcError::Unreachable(status.message().to_owned())
        }
        _ => RpcError::Refused(status),
    }
}

/// Open channels by node, least recently used evicted first.
#[derive(Debug)]
struct Channels {
    open: HashMap<NodeId, (Channel, u64)>,
    clock: u64,
    max: usize,
}

impl Channels {
    fn new(max: usize) -> Self {
        Self {
            open: HashMap::new(),
            clock: 0,
            max,
        }
    }

    fn get(&mut self, id: &NodeId) -> Option<Channel> {
        self.clock += 1;
        let clock = self.clock;
        self.open.get_mut(id).map(|(channel, used)| {
            *used = clock;
            channel.clone()
        })
    }

    fn insert(&mut self, id: NodeId, channel: Channel) {
        self.clock += 1;
        if !self.open.contains_key(&id)
            && self.open.len() >= self.max
            && let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id)
        {
            self.open.remove(&oldest);
        }
        self.open.insert(id, (channel, self.clock));
    }

    fn remove(&mut self, id: &NodeId) {
        self.open.remove(id);
    }
}
