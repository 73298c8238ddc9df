//! A working session: the unlocked master key, our identity, a dialer, and
//! connections to our suppliers, opened on first use and checked against
//! their node IDs.

use std::sync::Arc;
use std::time::Duration;

use common::crypto::{PrivateKey, PublicKey, Purpose};
use common::envelope::Envelope;
use common::id::{KeyId, NodeId, UserId};
use common::identity::SignedIdentity;
use net::Dialer;
use proto::storage::v1::storage_client::StorageClient;
use proto::storage::v1::{HireRequest, KeyRegistration, OfferRequest, RegisterKeyRequest};
use tokio::sync::OnceCell;
use tonic::transport::Channel;

use crate::home::{Home, HomeError};
use crate::idserver::{self, IdServerError};
use crate::pipeline::ObjectIdKey;
use crate::suppliers::{SupplierEntry, SupplierSet};

/// Deadline of one call to a supplier that moves no bulk data.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline for connecting to a supplier.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The home is not usable.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// No suppliers are hired.
    #[error("no suppliers are hired yet: run `silt suppliers hire --supplier HOST:PORT ...`")]
    NoSuppliers,
    /// The supplier list is damaged.
    #[error("cannot read the supplier list: {0}")]
    SupplierList(#[source] std::io::Error),
    /// A supplier could not be reached.
    #[error("supplier at position {position} ({addr}) is unreachable: {reason}")]
    Unreachable {
        /// Its position.
        position: u32,
        /// Its address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A supplier refused a request.
    #[error("supplier at position {position} refused: {message}")]
    Refused {
        /// Its position.
        position: u32,
        /// What it said.
        message: String,
    },
    /// A supplier could not be hired.
    #[error("cannot hire {addr}: {reason}")]
    Hire {
        /// Its address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] common::tls::TlsError),
    /// The identity server failed.
    #[error(transparent)]
    IdServer(#[from] IdServerError),
    /// A key is unusable for this operation.
    #[error("{0}")]
    Key(String),
}

/// The keys of one location.
#[derive(Debug, Clone)]
pub struct LocationKeys {
    /// `alias$owner`.
    pub key_id: KeyId,
    /// The location's private key.
    pub private: Arc<PrivateKey>,
    /// Its public key.
    pub public: PublicKey,
    /// Key epoch.
    pub epoch: u64,
    /// Object ID secret.
    pub object_key: Arc<ObjectIdKey>,
}

/// An open session.
#[derive(Debug)]
pub struct Session {
    home: Home,
    user: UserId,
    master: Arc<PrivateKey>,
    identity: SignedIdentity,
    dialer: Dialer,
    suppliers: Option<SupplierSet>,
    clients: Vec<OnceCell<StorageClient<Channel>>>,
    block_size: usize,
}

impl Session {
    /// Opens a session with an unlocked master key.
    pub fn open(home: Home, master: PrivateKey) -> Result<Self, SessionError> {
        let config = home.config()?;
        let identity = home.identity()?;
        if identity.document().master_key != *master.public_key() {
            return Err(SessionError::Key(
                "the master key does not match the identity".into(),
            ));
        }
        let dialer = crate::dialer(&master)?.with_connect_timeout(CONNECT_TIMEOUT);
        let suppliers = SupplierSet::load(home.dir()).map_err(SessionError::SupplierList)?;
        let count = suppliers.as_ref().map_or(0, |s| s.suppliers.len());
        let clients = (0..count).map(|_| OnceCell::new()).collect();
        Ok(Self {
            home,
            user: config.user_id,
            master: Arc::new(master),
            identity,
            dialer,
            suppliers,
            clients,
            block_size: crate::pipeline::DEFAULT_BLOCK_SIZE,
        })
    }

    /// Plaintext bytes per block for new uploads.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Sets the block size of new uploads (within the pipeline's bounds).
    pub fn set_block_size(&mut self, block_size: usize) {
        self.block_size = block_size;
    }

    /// Our user ID.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// Our master key.
    pub fn master(&self) -> &Arc<PrivateKey> {
        &self.master
    }

    /// Our signed identity.
    pub fn identity(&self) -> &SignedIdentity {
        &self.identity
    }

    /// The home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The hired suppliers.
    pub fn suppliers(&self) -> Result<&SupplierSet, SessionError> {
        self.suppliers.as_ref().ok_or(SessionError::NoSuppliers)
    }

    /// Publishes our identity if the identity server has not got this
    /// revision yet. Failure to reach it is reported, not fatal.
    pub async fn ensure_published(&self) -> Result<bool, SessionError> {
        let state = self.home.state()?;
        let revision = self.identity.document().revision;
        if state.published_revision.is_some_and(|r| r >= revision) {
            return Ok(false);
        }
        let server = self.home.config()?.id_server;
        let stored = idserver::publish(&self.dialer, &server, &self.identity).await?;
        let mut state = state;
        state.published_revision = Some(stored);
        self.home.set_state(&state)?;
        Ok(true)
    }

    /// The storage client of a position, connecting on first use.
    pub async fn client(&self, position: u32) -> Result<StorageClient<Channel>, SessionError> {
        let set = self.suppliers()?;
        let entry = set
            .suppliers
            .get(position as usize)
            .ok_or_else(|| SessionError::Key(format!("no supplier at position {position}")))?;
        let cell = self
            .clients
            .get(position as usize)
            .ok_or_else(|| SessionError::Key(format!("no supplier at position {position}")))?;
        let client = cell
            .get_or_try_init(|| async {
                let connection = self
                    .dialer
                    .connect(&entry.addr, Some(entry.node_id))
                    .await
                    .map_err(|e| SessionError::Unreachable {
                        position,
                        addr: entry.addr.clone(),
                        reason: e.to_string(),
                    })?;
                Ok::<_, SessionError>(
                    StorageClient::new(connection.channel)
                        .max_decoding_message_size(proto::codec::TRANSPORT_MESSAGE_BYTES)
                        .max_encoding_message_size(proto::codec::TRANSPORT_MESSAGE_BYTES),
                )
            })
            .await?;
        Ok(client.clone())
    }

    /// The keys of a location we hold the private key of.
    pub fn location_keys(&self, key_id: &KeyId) -> Result<LocationKeys, SessionError> {
        let (private, epoch) = if key_id.is_master() && key_id.owner() == &self.user {
            (self.master.clone(), 0)
        } else if key_id.is_master() {
            return Err(SessionError::Key(format!(
                "{key_id} is another user's master location, which only they can read"
            )));
        } else {
            let (key, meta) = self
                .home
                .keystore()?
                .load_private(key_id, None)
                .map_err(|e| SessionError::Key(e.to_string()))?;
            (Arc::new(key), meta.epoch)
        };
        let object_key =
            ObjectIdKey::derive(&private).map_err(|e| SessionError::Key(e.to_string()))?;
        Ok(LocationKeys {
            key_id: key_id.clone(),
            public: private.public_key().clone(),
            private,
            epoch,
            object_key: Arc::new(object_key),
        })
    }

    /// Registers the public key of one of our own share locations with every
    /// supplier (idempotent). The master location needs none.
    pub async fn register_location(&self, keys: &LocationKeys) -> Result<(), SessionError> {
        if keys.key_id.is_master() {
            return Ok(());
        }
        if keys.key_id.owner() != &self.user {
            return Err(SessionError::Key(format!(
                "{} belongs to {}; only its owner registers it",
                keys.key_id,
                keys.key_id.owner()
            )));
        }
        let registration = KeyRegistration {
            key_id: keys.key_id.to_string(),
            public_key: keys.public.spki_der().to_vec(),
            epoch: keys.epoch,
            issued_unix: common::unix_now(),
        };
        let envelope = Envelope::seal_message(&self.master, Purpose::KeyRegister, &registration)
            .map_err(|e| SessionError::Key(e.to_string()))?;
        for position in 0..self.suppliers()?.suppliers.len() as u32 {
            let mut client = self.client(position).await?;
            let mut request = tonic::Request::new(RegisterKeyRequest {
                registration: Some(envelope.to_proto()),
            });
            request.set_timeout(CALL_TIMEOUT);
            client
                .register_key(request)
                .await
                .map_err(|s| status_error(position, &s))?;
        }
        Ok(())
    }

    /// Hires the suppliers at `addrs` with `quota` bytes each, in position
    /// order, and returns their entries. Nothing is saved.
    pub async fn hire(
        &self,
        addrs: &[String],
        quota: u64,
    ) -> Result<Vec<SupplierEntry>, SessionError> {
        let mut entries = Vec::with_capacity(addrs.len());
        for (position, addr) in addrs.iter().enumerate() {
            let hire_error = |reason: String| SessionError::Hire {
                addr: addr.clone(),
                reason,
            };
            let connection = self
                .dialer
                .connect(addr, None)
                .await
                .map_err(|e| hire_error(e.to_string()))?;
            let node_id = connection.peer.node_id;
            if entries.iter().any(|e: &SupplierEntry| e.node_id == node_id) {
                return Err(hire_error("the same supplier is listed twice".into()));
            }
            let mut client = StorageClient::new(connection.channel);
            let mut offer = tonic::Request::new(OfferRequest {
                requested_bytes: quota,
            });
            offer.set_timeout(CALL_TIMEOUT);
            let offer = client
                .offer(offer)
                .await
                .map_err(|s| hire_error(s.message().to_owned()))?
                .into_inner();
            if offer.available_bytes < quota {
                return Err(hire_error(format!(
                    "it offers {} bytes, {quota} were asked for",
                    offer.available_bytes
                )));
            }
            let mut hire = tonic::Request::new(HireRequest {
                identity: Some(self.identity.to_proto()),
                quota_bytes: quota,
            });
            hire.set_timeout(CALL_TIMEOUT);
            client
                .hire(hire)
                .await
                .map_err(|s| hire_error(s.message().to_owned()))?;
            entries.push(SupplierEntry {
                position: position as u32,
                addr: addr.clone(),
                node_id,
            });
        }
        Ok(entries)
    }

    /// The master public key of `user`: ours, or fetched from their identity
    /// server and checked against our pins.
    pub async fn master_key_of(&self, user: &UserId) -> Result<PublicKey, SessionError> {
        if user == &self.user {
            return Ok(self.master.public_key().clone());
        }
        let identity = idserver::fetch(&self.dialer, &user.idhost().server_addr(), user).await?;
        let key = identity.document().master_key.clone();
        self.home
            .pins()
            .check(user, &key)
            .map_err(|e| SessionError::Key(e.to_string()))?;
        Ok(key)
    }

    /// The node ID of the supplier at `position`.
    pub fn supplier_id(&self, position: u32) -> Option<NodeId> {
        self.suppliers
            .as_ref()
            .and_then(|s| s.suppliers.get(position as usize))
            .map(|e| e.node_id)
    }
}

/// Turns a supplier's status into an error that names its position.
pub fn status_error(position: u32, status: &tonic::Status) -> SessionError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            SessionError::Unreachable {
                position,
                addr: String::new(),
                reason: status.message().to_owned(),
            }
        }
        _ => SessionError::Refused {
            position,
            message: status.message().to_owned(),
        },
    }
}
