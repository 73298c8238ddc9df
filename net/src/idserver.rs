//! Talking to identity servers: publishing our identity document and
//! fetching other users' documents.

use std::time::Duration;

use crate::Dialer;
use common::id::UserId;
use common::identity::SignedIdentity;
use proto::identity::v1::identity_client::IdentityClient;
use proto::identity::v1::{GetIdentityRequest, PublishIdentityRequest};
use tonic::Code;

/// Deadline of one identity server call, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why publishing or fetching an identity failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdServerError {
    /// The server could not be reached.
    #[error("identity server {server} is unreachable: {reason}")]
    Unreachable {
        /// `host:port`.
        server: String,
        /// The cause.
        reason: String,
    },
    /// The name is registered with another key.
    #[error(
        "the name {0} is already taken on its identity server by another key; choose another name"
    )]
    Taken(UserId),
    /// The server has no document for the user.
    #[error("identity server {server} has no identity {user}")]
    NotFound {
        /// `host:port`.
        server: String,
        /// The user asked for.
        user: UserId,
    },
    /// The server refused the request.
    #[error("identity server {server} refused: {reason}")]
    Refused {
        /// `host:port`.
        server: String,
        /// Its message.
        reason: String,
    },
    /// The server answered with a document that does not verify or is for
    /// someone else.
    #[error("identity server {server} sent an invalid identity: {reason}")]
    Invalid {
        /// `host:port`.
        server: String,
        /// What is wrong.
        reason: String,
    },
}

async fn client(
    dialer: &Dialer,
    server: &str,
) -> Result<IdentityClient<tonic::transport::Channel>, IdServerError> {
    let connection = tokio::time::timeout(CALL_TIMEOUT, dialer.connect(server, None))
        .await
        .map_err(|_| IdServerError::Unreachable {
            server: server.to_owned(),
            reason: "timed out".into(),
        })?
        .map_err(|e| IdServerError::Unreachable {
            server: server.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(IdentityClient::new(connection.channel))
}

fn status_error(server: &str, status: &tonic::Status) -> IdServerError {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            IdServerError::Unreachable {
                server: server.to_owned(),
                reason: status.message().to_owned(),
            }
        }
        _ => IdServerError::Refused {
            server: server.to_owned(),
            reason: status.message().to_owned(),
        },
    }
}

/// Publishes `identity` to the identity server at `server` (`host:port`) and
/// returns the revision it stored.
///
/// Cancel-safe: publishing is idempotent.
pub async fn publish(
    dialer: &Dialer,
    server: &str,
    identity: &SignedIdentity,
) -> Result<u64, IdServerError> {
    let mut client = client(dialer, server).await?;
    let mut request = tonic::Request::new(PublishIdentityRequest {
        document: Some(identity.to_proto()),
    });
    request.set_timeout(CALL_TIMEOUT);
    match client.publish(request).await {
        Ok(response) => Ok(response.into_inner().revision),
        Err(status) if status.code() == Code::AlreadyExists => {
            Err(IdServerError::Taken(identity.document().user_id.clone()))
        }
        Err(status) => Err(status_error(server, &status)),
    }
}

/// Fetches and verifies the identity document of `user` from `server`.
/// The caller checks the key against its pins.
///
/// Cancel-safe.
pub async fn fetch(
    dialer: &Dialer,
    server: &str,
    user: &UserId,
) -> Result<SignedIdentity, IdServerError> {
    let mut client = client(dialer, server).await?;
    let mut request = tonic::Request::new(GetIdentityRequest {
        user_id: user.to_string(),
    });
    request.set_timeout(CALL_TIMEOUT);
    let response = match client.get(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::NotFound => {
            return Err(IdServerError::NotFound {
                server: server.to_owned(),
                user: user.clone(),
            });
        }
        Err(status) => return Err(status_error(server, &status)),
    };
    let invalid = |reason: String| IdServerError::Invalid {
        server: server.to_owned(),
        reason,
    };
    let envelope = response
        .document
        .ok_or_else(|| invalid("empty answer".into()))?;
    let identity = SignedIdentity::from_proto(envelope).map_err(|e| invalid(e.to_string()))?;
    if &identity.document().user_id != user {
        return Err(invalid(format!(
            "asked for {user}, got {}",
            identity.document().user_id
        )));
    }
    Ok(identity)
}
