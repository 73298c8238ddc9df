//! `silt.mailbox.v1.Mailbox`: store-and-forward of small sealed messages for
//! this supplier's customers. Anyone authenticated may post to a customer;
//! only the customer fetches and acknowledges. Sizes and counts are bounded
//! per recipient and per sender.

use common::id::{NodeId, UserId};
use prost::Message;
use proto::mailbox::v1::mailbox_server::Mailbox;
use proto::mailbox::v1::{
    AckRequest, AckResponse, FetchRequest, FetchResponse, MailboxMessage, PostRequest, PostResponse,
};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::metrics::Metrics;
use crate::store::{Store, StoreError, keys};

/// Bounds of the mailbox service.
#[derive(Debug, Clone)]
pub struct MailboxLimits {
    /// Largest message, encoded.
    pub max_message_bytes: usize,
    /// Most messages waiting for one recipient.
    pub max_messages: usize,
    /// Most bytes waiting for one recipient.
    pub max_bytes: usize,
    /// Most messages one sender may leave for one recipient.
    pub max_per_sender: usize,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_messages: 1000,
            max_bytes: 16 << 20,
            max_per_sender: 100,
        }
    }
}

const MAX_FETCH: u32 = 1000;

/// Serves `silt.mailbox.v1.Mailbox`.
#[derive(Debug, Clone)]
pub struct MailboxService {
    store: Store,
    limits: MailboxLimits,
    metrics: Metrics,
}

impl MailboxService {
    /// Mailboxes kept in `store`.
    pub fn new(store: Store, limits: MailboxLimits, metrics: Metrics) -> Self {
        Self {
            store,
            limits,
            metrics,
        }
    }

    fn finish<T>(&self, method: &str, result: Result<T, Status>) -> Result<Response<T>, Status> {
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.metrics.request(method, code);
        result.map(Response::new)
    }

    async fn post(&self, sender: NodeId, request: PostRequest) -> Result<PostResponse, Status> {
        let recipient: UserId = request
            .recipient
            .parse()
            .map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let message = request
            .message
            .ok_or_else(|| Status::invalid_argument("missing message"))?;
        let now_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let id: u64 = rand::random();
        let limits = self.limits.clone();
        let user = recipient.to_string();
        let stored = MailboxMessage {
            message_id: Vec::new(),
            sender_node_id: sender.as_bytes().to_vec(),
            received_unix: common::unix_now(),
            message: Some(message),
        };
        if stored.encoded_len() > limits.max_message_bytes {
            return Err(Status::resource_exhausted(format!(
                "message is larger than {} bytes",
                limits.max_message_bytes
            )));
        }
        let outcome = self
            .store
            .run(move |store| {
                let Some(node) = store.customer(&user)? else {
                    return Ok(Err(Status::not_found(format!(
                        "{user} has no mailbox on this supplier"
                    ))));
                };
                let key = keys::mailbox(&node, now_nanos, id);
                let mut stored = stored;
                stored.message_id = key.clone();
                let bytes = stored.encode_to_vec();
                let size = bytes.len();
                store
                    .post(&node, &key, &bytes, |current| {
                        let total: usize = current.iter().map(|e| e.message.len()).sum();
                        if current.len() >= limits.max_messages || total + size > limits.max_bytes {
                            return Err(Status::resource_exhausted(format!(
                                "the mailbox of {user} is full"
                            )));
                        }
                        let from_sender = current
                            .iter()
                            .filter(|e| {
                                MailboxMessage::decode(e.message.as_slice())
                                    .is_ok_and(|m| m.sender_node_id == sender.as_bytes())
                            })
                            .count();
                        if from_sender >= limits.max_per_sender {
                            return Err(Status::resource_exhausted(format!(
                                "you have left {from_sender} messages for {user} already"
                            )));
                        }
                        Ok(())
                    })
                    .map(|result| result.map(|()| key))
            })
            .await
            .map_err(store_status)?;
        let key = outcome?;
        debug!(recipient = %recipient, "mailbox message posted");
        Ok(PostResponse { message_id: key })
    }

    async fn fetch(
        &self,
        recipient: NodeId,
        request: FetchRequest,
    ) -> Result<FetchResponse, Status> {
        let limit = match request.max_messages {
            0 => 100,
            n => n.min(MAX_FETCH),
        } as usize;
        let messages = self
            .store
            .run(move |store| store.mailbox(&recipient, limit))
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|entry| MailboxMessage::decode(entry.message.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Status::data_loss("a stored message is damaged"))?;
        Ok(FetchResponse { messages })
    }

    async fn ack(&self, recipient: NodeId, request: AckRequest) -> Result<AckResponse, Status> {
        if request.message_ids.len() > MAX_FETCH as usize {
            return Err(Status::invalid_argument("too many ids in one ack"));
        }
        self.store
            .run(move |store| store.ack(&recipient, &request.message_ids))
            .await
            .map_err(store_status)?;
        Ok(AckResponse {})
    }
}

fn store_status(e: StoreError) -> Status {
    if let StoreError::DiskFull { .. } = e {
        tracing::warn!(error = %e, "mailbox message refused");
        return Status::resource_exhausted("supplier disk is full");
    }
    tracing::error!(error = %e, "mailbox storage failure");
    Status::internal("storage failure")
}

#[tonic::async_trait]
impl Mailbox for MailboxService {
    async fn post(&self, request: Request<PostRequest>) -> Result<Response<PostResponse>, Status> {
        let sender = net::peer(&request)?.node_id;
        let result = self.post(sender, request.into_inner()).await;
        self.finish("Post", result)
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let recipient = net::peer(&request)?.node_id;
        let result = self.fetch(recipient, request.into_inner()).await;
        self.finish("Fetch", result)
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let recipient = net::peer(&request)?.node_id;
        let result = self.ack(recipient, request.into_inner()).await;
        self.finish("Ack", result)
    }
}
