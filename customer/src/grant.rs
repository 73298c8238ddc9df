//! Granting a share (DESIGN.md §7): handing one of our share keys to
//! another user's daemon, which must be online. Each step that fails fails
//! the grant with an error that names the step.
//!
//! 1. Find the recipient's identity (their identity server, else the DHT),
//!    checked against our pins, and reach the daemon at the address it
//!    advertises: the TLS handshake must prove their master key, and `Ping`
//!    must answer with their name.
//! 2. Audit their master key: they sign our fresh nonce with it.
//! 3. Register the share's public key with our suppliers (at least `k`).
//! 4. List the share's files, whose names go with the key.
//! 5. Deliver the key, sealed to their master key and signed by ours.

use common::audit;
use common::crypto::PublicKey;
use common::crypto::Purpose;
use common::id::{KeyId, NodeId, UserId};
use common::identity::SignedIdentity;
use common::sealed::{self, KIND_GRANT};
use prost::Message;
use proto::peer::v1::peer_client::PeerClient;
use proto::peer::v1::{AuditPrivateKeyRequest, AuditPublicKeyRequest, DeliverRequest, PingRequest};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use crate::session::{CALL_TIMEOUT, LocationKeys, Session};
use crate::transfer::catalog;

/// Why a grant failed, by step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// Not a share of ours.
    #[error("{0}")]
    NotGrantable(String),
    /// Step 1.
    #[error("step 1 (reaching {user}'s daemon) failed: {reason}")]
    Offline {
        /// The recipient.
        user: UserId,
        /// Why.
        reason: String,
    },
    /// Step 2.
    #[error("step 2 (auditing {user}'s master key) failed: {reason}")]
    Audit {
        /// The recipient.
        user: UserId,
        /// Why.
        reason: String,
    },
    /// Step 3.
    #[error("step 3 (registering {share} with your suppliers) failed: {reason}")]
    Register {
        /// The share.
        share: KeyId,
        /// Why.
        reason: String,
    },
    /// Step 4.
    #[error("step 4 (listing the files of {share}) failed: {reason}")]
    Listing {
        /// The share.
        share: KeyId,
        /// Why.
        reason: String,
    },
    /// Step 5.
    #[error("step 5 (delivering the key to {user}) failed: {reason}")]
    Deliver {
        /// The recipient.
        user: UserId,
        /// Why.
        reason: String,
    },
}

/// Which half of a key an audit checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// The other side holds the same public key.
    Public,
    /// The other side holds the private key.
    Private,
}

/// Why `silt key audit` did not confirm a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The audit cannot be made as asked.
    #[error("{0}")]
    Unusable(String),
    /// Their daemon could not be reached.
    #[error("cannot reach {user}'s daemon: {reason}")]
    Offline {
        /// The audited user.
        user: UserId,
        /// Why.
        reason: String,
    },
    /// Their daemon refused to answer.
    #[error("{user}'s daemon refused the audit: {reason}")]
    Refused {
        /// The audited user.
        user: UserId,
        /// What it said.
        reason: String,
    },
    /// The answer does not match our copy of the key.
    #[error("{user} does not hold the same {key_id} as you: the answer does not match your copy")]
    Mismatch {
        /// The audited user.
        user: UserId,
        /// The key.
        key_id: KeyId,
    },
}

/// How one audit call went wrong.
enum AuditFailure {
    Refused(String),
    Mismatch,
}

/// What a grant did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The daemon reached, `host:port`.
    pub endpoint: String,
    /// Files named in the grant.
    pub files: usize,
    /// Why the grant could not be added to `members.json`, if it could not
    /// (the grant itself was delivered).
    pub unrecorded: Option<String>,
}

impl Session {
    /// Grants the share of `keys` (one of ours) to `recipient`.
    pub async fn grant(
        &self,
        keys: &LocationKeys,
        recipient: &UserId,
    ) -> Result<Granted, GrantError> {
        let share = keys.key_id.clone();
        if share.is_master() {
            return Err(GrantError::NotGrantable(
                "the master location is never shared; create a share with `silt share create`"
                    .into(),
            ));
        }
        if share.owner() != self.user() {
            return Err(GrantError::NotGrantable(format!(
                "{share} belongs to {}; only its owner grants it",
                share.owner()
            )));
        }
        if recipient == self.user() {
            return Err(GrantError::NotGrantable(
                "you hold this share already".into(),
            ));
        }

        // 1. Their identity, their daemon, and its answer.
        let offline = |reason: String| GrantError::Offline {
            user: recipient.clone(),
            reason,
        };
        let identity = self
            .identity_of(recipient)
            .await
            .map_err(|e| offline(e.to_string()))?;
        let their_key = identity.document().master_key.clone();
        let (endpoint, mut client) = self.reach_daemon(&identity).await.map_err(offline)?;
        let mut ping = tonic::Request::new(PingRequest {});
        ping.set_timeout(CALL_TIMEOUT);
        let answered = client
            .ping(ping)
            .await
            .map_err(|s| offline(s.message().to_owned()))?
            .into_inner()
            .user_id;
        if answered != recipient.to_string() {
            return Err(offline(format!("the daemon there answers as {answered}")));
        }

        // 2. They sign our nonce with their master key.
        let audit_failed = |reason: String| GrantError::Audit {
            user: recipient.clone(),
            reason,
        };
        self.audit_on(
            &mut client,
            &KeyId::master(recipient.clone()),
            &their_key.node_id(),
            &their_key,
            AuditKind::Private,
        )
        .await
        .map_err(|failure| {
            audit_failed(match failure {
                AuditFailure::Refused(reason) => reason,
                AuditFailure::Mismatch => "the signature is not by their master key".into(),
            })
        })?;

        // 3. The suppliers must know the share's key before anyone proves it.
        self.register_location(keys)
            .await
            .map_err(|e| GrantError::Register {
                share: share.clone(),
                reason: e.to_string(),
            })?;

        // 4. The names of the files already there.
        let listing = |reason: String| GrantError::Listing {
            share: share.clone(),
            reason,
        };
        let (versions, _) = self
            .versions(keys, None)
            .await
            .map_err(|e| listing(e.to_string()))?;
        let file_names: Vec<String> = catalog(keys, &versions)
            .map_err(|e| listing(e.to_string()))?
            .into_iter()
            .map(|listed| listed.entry.path)
            .collect();

        // 5. The key, sealed to them and signed by us.
        let delivery_failed = |reason: String| GrantError::Deliver {
            user: recipient.clone(),
            reason,
        };
        let label = self
            .home()
            .keystore()
            .ok()
            .and_then(|keystore| keystore.load_public(&share).ok())
            .map(|(_, meta)| meta.label)
            .unwrap_or_default();
        let private_key = keys
            .private
            .to_pkcs8_der()
            .map_err(|e| delivery_failed(e.to_string()))?;
        let mut grant = proto::common::v1::Grant {
            key_id: share.to_string(),
            private_key: private_key.to_vec(),
            epoch: keys.epoch,
            label,
            file_names: file_names.clone(),
        };
        let plaintext = zeroize::Zeroizing::new(grant.encode_to_vec());
        zeroize::Zeroize::zeroize(&mut grant.private_key);
        let envelope = sealed::seal(
            self.user(),
            self.master(),
            recipient,
            &their_key,
            KIND_GRANT,
            &plaintext,
            common::unix_now(),
        )
        .map_err(|e| delivery_failed(e.to_string()))?;
        let mut request = tonic::Request::new(DeliverRequest {
            message: Some(envelope.to_proto()),
        });
        request.set_timeout(CALL_TIMEOUT);
        client
            .deliver(request)
            .await
            .map_err(|s| delivery_failed(s.message().to_owned()))?;
        let unrecorded = crate::members::Members::new(self.home().dir())
            .add(&share, recipient, keys.epoch)
            .err()
            .map(|e| e.to_string());
        Ok(Granted {
            endpoint,
            files: file_names.len(),
            unrecorded,
        })
    }

    /// Audits `user`'s copy of `key_id` (`silt key audit`): with
    /// [`AuditKind::Private`] their daemon signs our fresh nonce with the
    /// private key, with [`AuditKind::Public`] it hashes the nonce with its
    /// public key; either is checked against our own copy. For
    /// `master$user` our copy is the key pinned for them. Their daemon
    /// answers anyone about their master key, and only a key's owner about
    /// another key. Returns the daemon's address.
    pub async fn audit_key(
        &self,
        key_id: &KeyId,
        user: &UserId,
        kind: AuditKind,
    ) -> Result<String, AuditError> {
        if key_id.is_master() && key_id.owner() != user {
            return Err(AuditError::Unusable(format!(
                "{key_id} is the master key of {}; audit it with them",
                key_id.owner()
            )));
        }
        if user == self.user() {
            return Err(AuditError::Unusable(
                "audit another user's copy; your own keys are here".into(),
            ));
        }
        // Our copy of their master key is the one we pinned before; a key
        // first seen now would be compared with itself.
        if key_id.is_master() {
            let pinned = self
                .home()
                .pins()
                .get(user)
                .map_err(|e| AuditError::Unusable(e.to_string()))?;
            if pinned.is_none() {
                return Err(AuditError::Unusable(format!(
                    "no key is pinned for {user} yet, so there is no copy of yours to compare with; \
                     check their fingerprint with them out of band (a grant to them pins it)"
                )));
            }
        }
        let identity = self
            .identity_of(user)
            .await
            .map_err(|e| AuditError::Offline {
                user: user.clone(),
                reason: e.to_string(),
            })?;
        let ours = if key_id.is_master() {
            identity.document().master_key.clone()
        } else {
            self.home()
                .keystore()
                .and_then(|keystore| Ok(keystore.load_public(key_id)?.0))
                .map_err(|e| AuditError::Unusable(e.to_string()))?
        };
        let (endpoint, mut client) =
            self.reach_daemon(&identity)
                .await
                .map_err(|reason| AuditError::Offline {
                    user: user.clone(),
                    reason,
                })?;
        let responder = identity.document().master_key.node_id();
        match self
            .audit_on(&mut client, key_id, &responder, &ours, kind)
            .await
        {
            Ok(()) => Ok(endpoint),
            Err(AuditFailure::Refused(reason)) => Err(AuditError::Refused {
                user: user.clone(),
                reason,
            }),
            Err(AuditFailure::Mismatch) => Err(AuditError::Mismatch {
                user: user.clone(),
                key_id: key_id.clone(),
            }),
        }
    }

    /// One audit of `key_id` by the daemon behind `client`, checked against
    /// `ours`, with a fresh nonce.
    async fn audit_on(
        &self,
        client: &mut PeerClient<Channel>,
        key_id: &KeyId,
        responder: &NodeId,
        ours: &PublicKey,
        kind: AuditKind,
    ) -> Result<(), AuditFailure> {
        let nonce: [u8; 32] = rand::random();
        let refused = |status: tonic::Status| AuditFailure::Refused(status.message().to_owned());
        match kind {
            AuditKind::Private => {
                let mut request = tonic::Request::new(AuditPrivateKeyRequest {
                    key_id: key_id.to_string(),
                    nonce: nonce.to_vec(),
                });
                request.set_timeout(CALL_TIMEOUT);
                let signature = client
                    .audit_private_key(request)
                    .await
                    .map_err(refused)?
                    .into_inner()
                    .signature;
                // Bound to both of us: `responder` is the node ID the
                // daemon's TLS handshake proved.
                let message = audit::peer_proof(
                    &self.master().public_key().node_id(),
                    responder,
                    key_id,
                    &nonce,
                );
                ours.verify(Purpose::Audit, &message, &signature)
                    .map_err(|_| AuditFailure::Mismatch)
            }
            AuditKind::Public => {
                let mut request = tonic::Request::new(AuditPublicKeyRequest {
                    key_id: key_id.to_string(),
                    nonce: nonce.to_vec(),
                });
                request.set_timeout(CALL_TIMEOUT);
                let digest = client
                    .audit_public_key(request)
                    .await
                    .map_err(refused)?
                    .into_inner()
                    .digest;
                let mut hasher = Sha256::new();
                hasher.update(nonce);
                hasher.update(ours.spki_der());
                if hasher.finalize().as_slice() == digest.as_slice() {
                    Ok(())
                } else {
                    Err(AuditFailure::Mismatch)
                }
            }
        }
    }

    /// Whether our own daemon answers at an address our identity
    /// advertises, and where: `None` if it advertises none.
    pub async fn own_daemon(&self) -> Option<Result<String, String>> {
        if self.identity().document().endpoints.is_empty() {
            return None;
        }
        let (endpoint, mut client) = match self.reach_daemon(self.identity()).await {
            Ok(reached) => reached,
            Err(reason) => return Some(Err(reason)),
        };
        let mut ping = tonic::Request::new(PingRequest {});
        ping.set_timeout(CALL_TIMEOUT);
        Some(match client.ping(ping).await {
            Ok(_) => Ok(endpoint),
            Err(status) => Err(status.message().to_owned()),
        })
    }

    /// Connects to the first endpoint of `identity` that answers as its
    /// master key.
    async fn reach_daemon(
        &self,
        identity: &SignedIdentity,
    ) -> Result<(String, PeerClient<Channel>), String> {
        let document = identity.document();
        if document.endpoints.is_empty() {
            return Err(format!(
                "{} advertises no address for their daemon",
                document.user_id
            ));
        }
        let mut reasons = Vec::new();
        for endpoint in &document.endpoints {
            match self
                .dialer()
                .connect_once(endpoint, document.master_key.node_id())
                .await
            {
                Ok(connection) => {
                    return Ok((endpoint.clone(), PeerClient::new(connection.channel)));
                }
                Err(e) => reasons.push(format!("{endpoint}: {e}")),
            }
        }
        Err(format!(
            "their daemon does not answer (is `silt daemon` running?): {}",
            reasons.join("; ")
        ))
    }
}
