//! The exact bytes signed in proofs of key possession.
//!
//! Both messages are signed with purpose [`Purpose::Audit`]
//! (`silt-audit-v1`). Every variable-length field is length-prefixed, so no
//! two different tuples encode to the same bytes.
//!
//! [`Purpose::Audit`]: crate::crypto::Purpose::Audit

use crate::id::{KeyId, NodeId};

/// Length of nonces issued for proofs.
pub const NONCE_LEN: usize = 32;

/// What a member signs to prove to a supplier that it holds a location's
/// key: supplier ID, requester ID, key ID, epoch and the supplier's nonce.
pub fn supplier_proof(
    supplier: &NodeId,
    requester: &NodeId,
    key_id: &KeyId,
    epoch: u64,
    nonce: &[u8],
) -> Vec<u8> {
    let key_id = key_id.to_string();
    let mut message = Vec::with_capacity(32 + 32 + 4 + key_id.len() + 8 + 4 + nonce.len());
    message.extend_from_slice(b"supplier-grant");
    message.extend_from_slice(supplier.as_bytes());
    message.extend_from_slice(requester.as_bytes());
    push_field(&mut message, key_id.as_bytes());
    message.extend_from_slice(&epoch.to_be_bytes());
    push_field(&mut message, nonce);
    message
}

/// What a user signs to prove to another user (the auditor) that it holds a
/// private key: auditor ID, responder ID, key ID and the auditor's nonce.
pub fn peer_proof(auditor: &NodeId, responder: &NodeId, key_id: &KeyId, nonce: &[u8]) -> Vec<u8> {
    let key_id = key_id.to_string();
    let mut message = Vec::with_capacity(32 + 32 + 4 + key_id.len() + 4 + nonce.len());
    message.extend_from_slice(b"peer-audit");
    message.extend_from_slice(auditor.as_bytes());
    message.extend_from_slice(responder.as_bytes());
    push_field(&mut message, key_id.as_bytes());
    push_field(&mut message, nonce);
    message
}

fn push_field(message: &mut Vec<u8>, field: &[u8]) {
    // Fields are short (IDs, nonces); a longer one is truncated in the length
    // only, which cannot happen for the callers here.
    message.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
    message.extend_from_slice(field);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_message() {
        let a = NodeId::from_array([1; 32]);
        let b = NodeId::from_array([2; 32]);
        let key: KeyId = "photos$alice@id-a".parse().unwrap();
        let other: KeyId = "photo$alice@id-a".parse().unwrap();
        let base = supplier_proof(&a, &b, &key, 1, &[7; 32]);
        assert_ne!(base, supplier_proof(&b, &a, &key, 1, &[7; 32]));
        assert_ne!(base, supplier_proof(&a, &b, &other, 1, &[7; 32]));
        assert_ne!(base, supplier_proof(&a, &b, &key, 2, &[7; 32]));
        assert_ne!(base, supplier_proof(&a, &b, &key, 1, &[8; 32]));
        assert_ne!(base, peer_proof(&a, &b, &key, &[7; 32]));
    }
}
