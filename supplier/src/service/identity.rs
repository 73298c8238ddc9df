//! The identity server role: hosts identity documents for one identity host,
//! first come, first served. An update must be signed by the key that
//! registered the name and carry a higher revision.

use common::id::{IdHost, UserId};
use common::identity::{IdentityError, SignedIdentity};
use prost::Message;
use proto::identity::v1::identity_server::Identity;
use proto::identity::v1::{
    GetIdentityRequest, GetIdentityResponse, PublishIdentityRequest, PublishIdentityResponse,
};
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::store::{Store, StoreError};

/// Serves `silt.identity.v1.Identity`.
#[derive(Debug)]
pub struct IdentityService {
    store: Store,
    host: IdHost,
}

/// Why a request failed; mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("this identity server hosts ids @{0} only")]
    WrongHost(IdHost),
    #[error("no identity {0} on this server")]
    NotFound(UserId),
    #[error("the name {0} is already registered with another key")]
    Taken(UserId),
    #[error("revision {offered} is not higher than the stored revision {stored}")]
    StaleRevision { offered: u64, stored: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::BadRequest(_) => Status::invalid_argument(e.to_string()),
            Error::WrongHost(_) => Status::failed_precondition(e.to_string()),
            Error::NotFound(_) => Status::not_found(e.to_string()),
            Error::Taken(_) => Status::already_exists(e.to_string()),
            Error::StaleRevision { .. } => Status::failed_precondition(e.to_string()),
            Error::Store(inner) => {
                tracing::error!(error = %inner, "identity store failed");
                Status::internal("storage failure")
            }
        }
    }
}

impl IdentityService {
    /// Hosts names `@host` in `store`.
    pub fn new(store: Store, host: IdHost) -> Self {
        Self { store, host }
    }

    async fn get(&self, user_id: &str) -> Result<GetIdentityResponse, Error> {
        let user_id: UserId = user_id
            .parse()
            .map_err(|e| Error::BadRequest(format!("{e}")))?;
        if user_id.idhost() != &self.host {
            return Err(Error::WrongHost(self.host.clone()));
        }
        let key = user_id.to_string();
        let bytes = self
            .store
            .run(move |store| store.identity(&key))
            .await?
            .ok_or_else(|| Error::NotFound(user_id.clone()))?;
        let document = proto::common::v1::Envelope::decode(bytes.as_slice())
            .map_err(|e| StoreError::Db(format!("stored identity of {user_id} is damaged: {e}")))?;
        Ok(GetIdentityResponse {
            document: Some(document),
        })
    }

    async fn publish(
        &self,
        request: PublishIdentityRequest,
    ) -> Result<PublishIdentityResponse, Error> {
        let envelope = request
            .document
            .ok_or_else(|| Error::BadRequest("missing identity document".into()))?;
        let signed =
            SignedIdentity::from_proto(envelope).map_err(|e| Error::BadRequest(e.to_string()))?;
        let document = signed.document().clone();
        if document.user_id.idhost() != &self.host {
            return Err(Error::WrongHost(self.host.clone()));
        }
        let user_id = document.user_id.clone();
        let bytes = signed.to_bytes();
        let key = user_id.to_string();
        self.store
            .run(move |store| {
                store.update_identity(&key, |current| {
                    let Some(current) = current else {
                        return Ok(Some(bytes));
                    };
                    let stored = SignedIdentity::from_bytes(current)
                        .map_err(|e: IdentityError| Error::Store(StoreError::Db(e.to_string())))?;
                    let stored = stored.document();
                    if stored.master_key != document.master_key {
                        return Err(Error::Taken(document.user_id.clone()));
                    }
                    if current == bytes.as_slice() {
                        return Ok(None);
                    }
                    if document.revision <= stored.revision {
                        return Err(Error::StaleRevision {
                            offered: document.revision,
                            stored: stored.revision,
                        });
                    }
                    Ok(Some(bytes))
                })
            })
            .await??;
        info!(user = %user_id, revision = signed.document().revision, "identity published");
        Ok(PublishIdentityResponse {
            revision: signed.document().revision,
        })
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get(
        &self,
        request: Request<GetIdentityRequest>,
    ) -> Result<Response<GetIdentityResponse>, Status> {
        let peer = net::peer(&request)?.node_id;
        debug!(peer = %peer.fmt_short(), user = %request.get_ref().user_id, "identity get");
        Ok(Response::new(self.get(&request.get_ref().user_id).await?))
    }

    async fn publish(
        &self,
        request: Request<PublishIdentityRequest>,
    ) -> Result<Response<PublishIdentityResponse>, Status> {
        let peer = net::peer(&request)?.node_id;
        debug!(peer = %peer.fmt_short(), "identity publish");
        Ok(Response::new(self.publish(request.into_inner()).await?))
    }
}
