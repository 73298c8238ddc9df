//! Proofs of possession and the grants they earn, kept in memory.
//!
//! A member asks for a nonce (`Challenge`), signs
//! [`common::audit::supplier_proof`] with the location's key, and sends the
//! signature (`Prove`). A nonce is bound to the connection, the requester,
//! the location and the key epoch, expires quickly, and is removed on its
//! first use, whatever the outcome, so a proof can never be replayed. A
//! successful proof grants the connection access to the location for a short
//! time and only for the epoch it was made in.
//!
//! The logic takes `now` as an argument and does no IO.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::audit::NONCE_LEN;
use common::id::{KeyId, NodeId};
use net::ConnectionId;

/// Most nonces outstanding per connection.
const MAX_NONCES_PER_CONNECTION: usize = 32;
/// Most nonces outstanding in all.
const MAX_NONCES: usize = 65_536;
/// Most grants held in all.
const MAX_GRANTS: usize = 262_144;

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// Too many nonces are outstanding.
    #[error("too many outstanding challenges")]
    TooMany,
    /// The nonce is unknown, used, expired, or was issued to someone else or
    /// for something else.
    #[error("unknown or expired challenge")]
    BadNonce,
}

/// A nonce issued and not yet used.
#[derive(Debug, Clone)]
pub struct Pending {
    connection: ConnectionId,
    requester: NodeId,
    location: Vec<u8>,
    /// The key the proof must be made with.
    pub key_id: KeyId,
    /// The epoch the proof must be made for.
    pub epoch: u64,
    expires: Instant,
}

#[derive(Debug)]
struct Grant {
    epoch: u64,
    expires: Instant,
}

impl Grant {
    /// Whether it still grants access at `epoch`.
    fn allows(&self, epoch: u64, now: Instant) -> bool {
        self.expires > now && self.epoch == epoch
    }
}

#[derive(Debug, Default)]
struct State {
    nonces: HashMap<[u8; NONCE_LEN], Pending>,
    grants: HashMap<(ConnectionId, Vec<u8>), Grant>,
}

/// Outstanding nonces and granted access.
#[derive(Debug)]
pub struct Grants {
    state: Mutex<State>,
    nonce_ttl: Duration,
    grant_ttl: Duration,
}

impl Grants {
    /// Nonces live `nonce_ttl`; grants live `grant_ttl`.
    pub fn new(nonce_ttl: Duration, grant_ttl: Duration) -> Self {
        Self {
            state: Mutex::default(),
            nonce_ttl,
            grant_ttl,
        }
    }

    /// How long a grant lasts.
    pub fn grant_ttl(&self) -> Duration {
        self.grant_ttl
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Issues a nonce for `requester` on `connection` to prove it holds
    /// `key_id` (stored under `location`) at `epoch`.
    pub fn challenge(
        &self,
        connection: ConnectionId,
        requester: NodeId,
        location: Vec<u8>,
        key_id: KeyId,
        epoch: u64,
        now: Instant,
    ) -> Result<[u8; NONCE_LEN], GrantError> {
        let mut state = self.state();
        state.nonces.retain(|_, pending| pending.expires > now);
        let on_connection = state
            .nonces
            .values()
            .filter(|p| p.connection == connection)
            .count();
        if on_connection >= MAX_NONCES_PER_CONNECTION || state.nonces.len() >= MAX_NONCES {
            return Err(GrantError::TooMany);
        }
        let nonce: [u8; NONCE_LEN] = rand::random();
        state.nonces.insert(
            nonce,
            Pending {
                connection,
                requester,
                location,
                key_id,
                epoch,
                expires: now + self.nonce_ttl,
            },
        );
        Ok(nonce)
    }

    /// Takes a nonce for checking a proof. The nonce is gone afterwards,
    /// whether or not it matches.
    pub fn take(
        &self,
        nonce: &[u8],
        connection: ConnectionId,
        requester: NodeId,
        location: &[u8],
        now: Instant,
    ) -> Result<Pending, GrantError> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| GrantError::BadNonce)?;
        let pending = self
            .state()
            .nonces
            .remove(&nonce)
            .ok_or(GrantError::BadNonce)?;
        if pending.connection != connection
            || pending.requester != requester
            || pending.location != location
            || pending.expires <= now
        {
            return Err(GrantError::BadNonce);
        }
        Ok(pending)
    }

    /// Grants `connection` access to `location` at `epoch`.
    pub fn grant(&self, connection: ConnectionId, location: Vec<u8>, epoch: u64, now: Instant) {
        let mut state = self.state();
        if state.grants.len() >= MAX_GRANTS {
            state.grants.retain(|_, grant| grant.expires > now);
        }
        if state.grants.len() < MAX_GRANTS {
            state.grants.insert(
                (connection, location),
                Grant {
                    epoch,
                    expires: now + self.grant_ttl,
                },
            );
        }
    }

    /// Whether `connection` holds a live grant for `location` at `epoch`.
    pub fn is_granted(
        &self,
        connection: ConnectionId,
        location: &[u8],
        epoch: u64,
        now: Instant,
    ) -> bool {
        let mut state = self.state();
        let key = (connection, location.to_vec());
        match state.grants.get(&key) {
            Some(grant) if grant.allows(epoch, now) => true,
            Some(_) => {
                state.grants.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Whether `connection` holds a live grant for `location` at `epoch`,
    /// without dropping a grant that does not match (a subscription made
    /// under an old epoch must not cost a fresh grant).
    pub fn holds(
        &self,
        connection: ConnectionId,
        location: &[u8],
        epoch: u64,
        now: Instant,
    ) -> bool {
        self.state()
            .grants
            .get(&(connection, location.to_vec()))
            .is_some_and(|grant| grant.allows(epoch, now))
    }

    /// Drops every grant and nonce for `location` (its key changed).
    pub fn revoke(&self, location: &[u8]) {
        let mut state = self.state();
        state.grants.retain(|(_, l), _| l != location);
        state.nonces.retain(|_, p| p.location != location);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: ConnectionId = ConnectionId(1);
    const C2: ConnectionId = ConnectionId(2);

    fn setup() -> (Grants, NodeId, KeyId, Instant) {
        (
            Grants::new(Duration::from_secs(60), Duration::from_secs(300)),
            NodeId::from_array([1; 32]),
            "photos$alice@id-a".parse().unwrap(),
            Instant::now(),
        )
    }

    #[test]
    fn a_nonce_is_single_use_and_bound_to_its_context() {
        let (grants, bob, key, now) = setup();
        let mallory = NodeId::from_array([2; 32]);
        let nonce = grants
            .challenge(C1, bob, b"loc".to_vec(), key.clone(), 0, now)
            .unwrap();
        let pending = grants.take(&nonce, C1, bob, b"loc", now).unwrap();
        assert_eq!(pending.key_id, key);
        // Replayed.
        assert_eq!(
            grants.take(&nonce, C1, bob, b"loc", now).unwrap_err(),
            GrantError::BadNonce
        );

        // Each mismatch consumes the nonce too.
        for (connection, requester, location) in [
            (C2, bob, &b"loc"[..]),
            (C1, mallory, b"loc"),
            (C1, bob, b"other"),
        ] {
            let nonce = grants
                .challenge(C1, bob, b"loc".to_vec(), key.clone(), 0, now)
                .unwrap();
            assert!(
                grants
                    .take(&nonce, connection, requester, location, now)
                    .is_err()
            );
            assert!(grants.take(&nonce, C1, bob, b"loc", now).is_err());
        }
        // Expired.
        let nonce = grants
            .challenge(C1, bob, b"loc".to_vec(), key, 0, now)
            .unwrap();
        assert!(
            grants
                .take(&nonce, C1, bob, b"loc", now + Duration::from_secs(61))
                .is_err()
        );
        assert!(grants.take(&[0; 5], C1, bob, b"loc", now).is_err());
    }

    #[test]
    fn grants_expire_and_follow_the_epoch() {
        let (grants, _, _, now) = setup();
        grants.grant(C1, b"loc".to_vec(), 3, now);
        assert!(grants.is_granted(C1, b"loc", 3, now));
        assert!(!grants.is_granted(C2, b"loc", 3, now));
        assert!(!grants.is_granted(C1, b"other", 3, now));
        assert!(!grants.is_granted(C1, b"loc", 3, now + Duration::from_secs(301)));
        grants.grant(C1, b"loc".to_vec(), 3, now);
        assert!(!grants.is_granted(C1, b"loc", 4, now));
        grants.grant(C1, b"loc".to_vec(), 4, now);
        // A subscription's check under an old epoch leaves the new grant.
        assert!(!grants.holds(C1, b"loc", 3, now));
        assert!(grants.holds(C1, b"loc", 4, now));
        assert!(!grants.holds(C1, b"loc", 4, now + Duration::from_secs(301)));
        assert!(grants.is_granted(C1, b"loc", 4, now));
        grants.revoke(b"loc");
        assert!(!grants.is_granted(C1, b"loc", 4, now));
        assert!(!grants.holds(C1, b"loc", 4, now));
    }

    #[test]
    fn outstanding_nonces_are_bounded_per_connection() {
        let (grants, bob, key, now) = setup();
        for _ in 0..MAX_NONCES_PER_CONNECTION {
            grants
                .challenge(C1, bob, b"loc".to_vec(), key.clone(), 0, now)
                .unwrap();
        }
        assert_eq!(
            grants
                .challenge(C1, bob, b"loc".to_vec(), key.clone(), 0, now)
                .unwrap_err(),
            GrantError::TooMany
        );
        grants
            .challenge(C2, bob, b"loc".to_vec(), key.clone(), 0, now)
            .unwrap();
        // Expired ones make room again.
        grants
            .challenge(
                C1,
                bob,
                b"loc".to_vec(),
                key,
                0,
                now + Duration::from_secs(61),
            )
            .unwrap();
    }
}
