//! Drives one [`Query`] over the network.
//!
//! The query decides whom to ask and when the lookup is over; this loop
//! sends what it asks for (each request in its own task, so `α` of them
//! overlap), feeds replies, failures and timeouts back with the current
//! time, validates FIND_VALUE records before the query sees them, and tells
//! the actor which nodes answered and which could not be reached, so that
//! the routing table learns from every lookup.
//!
//! Dropping the future abandons the lookup: the request tasks are aborted
//! with their `JoinSet`.

use common::id::NodeId;
use tokio::task::JoinSet;
use tracing::{Instrument, debug};

use crate::contact::Contact;
use crate::node::actor::Message;
use crate::node::network::{Network, RpcError};
use crate::node::{NodeError, Shared, now};
use crate::query::{Action, Query, QueryResult, Request};
use crate::record::Record;

/// Runs `query` to the end. `expected_signer` goes to
/// [`Record::verify_reply`] for every record received.
pub(crate) async fn run(
    shared: &Shared,
    query: Query<Record>,
    expected_signer: Option<NodeId>,
) -> Result<QueryResult<Record>, NodeError> {
    let started = std::time::Instant::now();
    let result = drive(shared, query, expected_signer).await;
    let ok = matches!(&result, Ok(done) if !done.closest.is_empty());
    shared.lookup_counters.record(started.elapsed(), ok);
    result
}

async fn drive(
    shared: &Shared,
    mut query: Query<Record>,
    expected_signer: Option<NodeId>,
) -> Result<QueryResult<Record>, NodeError> {
    let mut requests: JoinSet<(Contact, Result<Reply, RpcError>)> = JoinSet::new();
    loop {
        match query.next_action(now()) {
            Action::Finished(result) => return Ok(result),
            Action::Send { peer, request } => {
                let network = shared.network.clone();
                requests.spawn(
                    async move {
                        let outcome = ask(&network, &peer, request, expected_signer).await;
                        (peer, outcome)
                    }
                    .in_current_span(),
                );
            }
            Action::Wait { until } => {
                tokio::select! {
                    () = shared.cancel.cancelled() => return Err(NodeError::Shutdown),
                    Some(joined) = requests.join_next() => {
                        // A request task that panicked is left to time out.
                        let Ok((peer, outcome)) = joined else { continue };
                        let now = now();
                        match outcome {
                            Ok(reply) => {
                                query.on_response(&peer.id(), reply.closer, reply.value, now);
                                shared.report(Message::Observed { contact: peer }).await;
                            }
                            Err(error) => {
                                debug!(peer = %peer.id().fmt_short(), %error, "lookup request failed");
                                query.on_failure(&peer.id(), now);
                                if error.is_unreachable() {
                                    shared.report(Message::Failed { peer: peer.id() }).await;
                                }
                            }
                        }
                    }
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(until)) => {}
                }
            }
        }
    }
}

/// A reply, its record validated.
struct Reply {
    closer: Vec<Contact>,
    value: Option<Record>,
}

async fn ask(
    network: &Network,
    peer: &Contact,
    request: Request,
    expected_signer: Option<NodeId>,
) -> Result<Reply, RpcError> {
    match request {
        Request::FindNode { target } => Ok(Reply {
            closer: network.find_node(peer, target).await?,
            value: None,
        }),
        Request::FindValue { key } => {
            let (record, closer) = network.find_value(peer, &key).await?;
            let value = match record {
                None => None,
                Some(wire) => {
                    let record =
                        Record::verify_reply(&key, wire, common::unix_now(), expected_signer)
                            .map_err(|err| {
                                debug!(peer = %peer.id().fmt_short(), %err, "record reply refused");
                                RpcError::Invalid("the record does not verify")
                            })?;
                    Some(record)
                }
            };
            Ok(Reply { closer, value })
        }
    }
}
