//! Test fixtures: two users' keys (made once, RSA key generation is slow)
//! and builders of valid and forged records.

use std::sync::LazyLock;

use common::crypto::{PrivateKey, Purpose};
use common::envelope::Envelope;
use common::id::NodeId;
use common::identity::{IdentityDocument, SignedIdentity};
use prost::Message;

use super::{Record, RecordKey};

/// The time every test takes as now.
pub(crate) const NOW: i64 = 1_700_000_000;

pub(crate) static ALICE: LazyLock<PrivateKey> =
    LazyLock::new(|| PrivateKey::generate(2048).unwrap());
pub(crate) static BOB: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());

pub(crate) fn node(key: &PrivateKey) -> NodeId {
    key.public_key().node_id()
}

/// A signed identity document of `user` with `key`.
pub(crate) fn identity(key: &PrivateKey, user: &str) -> SignedIdentity {
    let document = IdentityDocument {
        user_id: user.parse().unwrap(),
        master_key: key.public_key().clone(),
        endpoints: vec!["127.0.0.1:7700".into()],
        revision: 1,
        created_unix: NOW,
    };
    SignedIdentity::sign(document, key).unwrap()
}

pub(crate) fn supplier_list(user: &str) -> Vec<u8> {
    proto::dht::v1::SupplierList {
        user_id: user.into(),
        data: 2,
        parity: 1,
        suppliers: Vec::new(),
    }
    .encode_to_vec()
}

/// A supplier list padded with an unknown field (which decoders skip) to
/// about `size` bytes.
pub(crate) fn padded_supplier_list(user: &str, size: usize) -> Vec<u8> {
    let mut list = supplier_list(user);
    let pad = size.saturating_sub(list.len() + 8);
    // Field 15, wire type 2 (length-delimited).
    list.push((15 << 3) | 2);
    let mut len = pad;
    while len >= 0x80 {
        list.push((len as u8) | 0x80);
        len >>= 7;
    }
    list.push(len as u8);
    list.resize(list.len() + pad, 0);
    list
}

pub(crate) fn raw_body(
    key: &str,
    record_type: i32,
    sequence: u64,
    expires_unix: i64,
    value: Vec<u8>,
) -> proto::dht::v1::Record {
    proto::dht::v1::Record {
        key: key.into(),
        r#type: record_type,
        sequence,
        expires_unix,
        value,
    }
}

pub(crate) fn sign_body(
    key: &PrivateKey,
    body: proto::dht::v1::Record,
) -> proto::common::v1::Envelope {
    Envelope::seal_self_signed(key, Purpose::Record, &body)
        .unwrap()
        .to_proto()
}

/// `suppliers/<user>` signed by `signer`.
pub(crate) fn suppliers_record(
    signer: &PrivateKey,
    user: &str,
    sequence: u64,
    expires_unix: i64,
) -> proto::common::v1::Envelope {
    let key = RecordKey::suppliers(user.parse().unwrap());
    Record::seal(signer, &key, sequence, expires_unix, supplier_list(user))
        .unwrap()
        .to_proto()
}

/// `identity/<user>` signed by `signer`, holding the document of `user`
/// made with `owner`'s key.
pub(crate) fn identity_record(
    signer: &PrivateKey,
    owner: &PrivateKey,
    user: &str,
    sequence: u64,
    expires_unix: i64,
) -> proto::common::v1::Envelope {
    identity_record_with(signer, identity(owner, user), user, sequence, expires_unix)
}

/// Like [`identity_record`], with the document of another user ID than the key.
pub(crate) fn identity_record_with(
    signer: &PrivateKey,
    document: SignedIdentity,
    key_user: &str,
    sequence: u64,
    expires_unix: i64,
) -> proto::common::v1::Envelope {
    let key = RecordKey::identity(key_user.parse().unwrap());
    Record::seal(
        signer,
        &key,
        sequence,
        expires_unix,
        document.to_proto().encode_to_vec(),
    )
    .unwrap()
    .to_proto()
}

/// `identity/<user>` made entirely by `squatter`: a document naming `user`
/// with the squatter's key, in a record the squatter signs.
pub(crate) fn squatted_identity_record(
    squatter: &PrivateKey,
    user: &str,
    sequence: u64,
    expires_unix: i64,
) -> proto::common::v1::Envelope {
    identity_record(squatter, squatter, user, sequence, expires_unix)
}

pub(crate) fn verified(wire: proto::common::v1::Envelope) -> Record {
    Record::verify(wire, NOW, Some(ALICE.public_key().node_id())).unwrap()
}
