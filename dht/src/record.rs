//! Signed DHT records: validation, the record store and the reader's choice.
//!
//! A record travels as an envelope (`proto::common::v1::Envelope`) whose body
//! is a `proto::dht::v1::Record` signed by the user's master key for
//! [`Purpose::Record`], with the signer's public key carried beside it. A
//! [`Record`] exists only once [`Record::verify`] has accepted one:
//!
//! 1. the encoded envelope is at most [`MAX_RECORD_BYTES`];
//! 2. the signature verifies with the carried key (before anything is decoded);
//! 3. the key is `suppliers/<user@idhost>` or `identity/<user@idhost>`, in
//!    canonical form, naming a valid user ID;
//! 4. the record type matches the key prefix;
//! 5. the record has not expired and expires at most [`MAX_TTL_SECS`] ahead;
//! 6. the signer is the user the key names:
//!    - `identity/<user>`: the value is an encoded envelope of an identity
//!      document that verifies, names that user, and names the record's
//!      signer as master key (and, if the caller passes one, the expected
//!      node ID);
//!    - `suppliers/<user>`: the signer's node ID is the one the caller passes,
//!      taken from the user's resolved identity; without it the record is
//!      refused. The value must be a `SupplierList` naming that user.
//!
//! Whether a record may replace a stored one (sequence numbers, signer) and
//! the per-store cap are the store's part: see [`check_replacement`] and
//! [`RecordStore`].

mod key;
mod store;

use std::fmt;

use common::crypto::{PrivateKey, Purpose};
use common::envelope::Envelope;
use common::id::NodeId;
use common::identity::SignedIdentity;
use prost::Message;
use tracing::debug;

pub use self::key::{RecordKey, RecordKind};
pub use self::store::{
    DEFAULT_MAX_RECORDS, MAX_RECORDS_PER_STRANGER, MemoryStore, Occupancy, PutOutcome, RecordStore,
    Standing, check_replacement,
};
use crate::error::Error;
use crate::query::Versioned;

/// The largest encoded record envelope accepted: 64 KiB.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// How far ahead a record may expire: 48 hours.
pub const MAX_TTL_SECS: i64 = 48 * 60 * 60;

/// A validated record.
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    key: RecordKey,
    sequence: u64,
    expires_unix: i64,
    value: Vec<u8>,
    signer: NodeId,
    identity: Option<SignedIdentity>,
    envelope: Envelope,
    encoded_len: usize,
}

impl Record {
    /// Signs a record with `signer` (the user's master key), for publishing.
    /// Nothing is validated: pass the result through [`Record::verify`] to
    /// check it as a peer would.
    pub fn seal(
        signer: &PrivateKey,
        key: &RecordKey,
        sequence: u64,
        expires_unix: i64,
        value: Vec<u8>,
    ) -> Result<Envelope, Error> {
        let body = proto::dht::v1::Record {
            key: key.to_string(),
            r#type: key.kind().to_proto().into(),
            sequence,
            expires_unix,
            value,
        };
        Ok(Envelope::seal_self_signed(signer, Purpose::Record, &body)?)
    }

    /// Validates a record received in a STORE request (or anywhere the key
    /// is not known in advance) at `now_unix`. See the module documentation
    /// for the rules.
    ///
    /// `expected_signer` is the node ID of the user the record's key names,
    /// from that user's resolved identity (identity server, pin, or a valid
    /// `identity/` record):
    ///
    /// - `suppliers/` records require it, and are refused with
    ///   [`Error::SignerUnknown`] when it is `None`: nothing in the record
    ///   itself ties the signing key to the user;
    /// - `identity/` records are self-certifying and accepted with `None`;
    ///   with `Some`, the document's key must also match it (a pin check).
    pub fn verify(
        wire: proto::common::v1::Envelope,
        now_unix: i64,
        expected_signer: Option<NodeId>,
    ) -> Result<Self, Error> {
        let encoded_len = wire.encoded_len();
        if encoded_len > MAX_RECORD_BYTES {
            return Err(Error::TooLarge {
                size: encoded_len,
                max: MAX_RECORD_BYTES,
            });
        }
        let envelope = Envelope::from_proto(wire, MAX_RECORD_BYTES)?;
        let (body, signer) =
            envelope.open_self_signed::<proto::dht::v1::Record>(Purpose::Record)?;
        let signer = signer.node_id();
        let key: RecordKey = body.key.parse()?;
        let expected_type: i32 = key.kind().to_proto().into();
        if body.r#type != expected_type {
            return Err(Error::TypeMismatch {
                expected: key.kind(),
                found: body.r#type,
                key,
            });
        }
        if body.expires_unix <= now_unix {
            return Err(Error::Expired {
                key,
                expires_unix: body.expires_unix,
                now_unix,
            });
        }
        let max_unix = now_unix.saturating_add(MAX_TTL_SECS);
        if body.expires_unix > max_unix {
            return Err(Error::ExpiryTooFar {
                key,
                expires_unix: body.expires_unix,
                max_unix,
            });
        }
        let identity = match key.kind() {
            RecordKind::Identity => {
                Some(check_identity(&key, &body.value, signer, expected_signer)?)
            }
            RecordKind::Suppliers => {
                check_suppliers(&key, &body.value, signer, expected_signer)?;
                None
            }
        };
        Ok(Self {
            key,
            sequence: body.sequence,
            expires_unix: body.expires_unix,
            value: body.value,
            signer,
            identity,
            envelope,
            encoded_len,
        })
    }

    /// Validates a record received in reply to a FIND_VALUE for `wanted`:
    /// [`Record::verify`], and the record must be for `wanted`.
    pub fn verify_reply(
        wanted: &RecordKey,
        wire: proto::common::v1::Envelope,
        now_unix: i64,
        expected_signer: Option<NodeId>,
    ) -> Result<Self, Error> {
        let record = Self::verify(wire, now_unix, expected_signer)?;
        if record.key != *wanted {
            return Err(Error::KeyMismatch {
                wanted: wanted.clone(),
                found: record.key,
            });
        }
        Ok(record)
    }

    /// The key.
    pub fn key(&self) -> &RecordKey {
        &self.key
    }

    /// The sequence number; higher is newer.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// When the record expires, in seconds since the Unix epoch.
    pub fn expires_unix(&self) -> i64 {
        self.expires_unix
    }

    /// Whether the record has expired at `now_unix`.
    pub fn is_expired(&self, now_unix: i64) -> bool {
        self.expires_unix <= now_unix
    }

    /// The value: an encoded `SupplierList` for `suppliers/` records, an
    /// encoded identity envelope for `identity/` records.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// The node ID of the key that signed the record.
    pub fn signer(&self) -> NodeId {
        self.signer
    }

    /// For `identity/` records, the verified identity document.
    pub fn identity(&self) -> Option<&SignedIdentity> {
        self.identity.as_ref()
    }

    /// The signed envelope, for sending on.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::common::v1::Envelope {
        self.envelope.to_proto()
    }

    /// The size of the encoded envelope, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// Whether both records have the same signed body (their signatures may
    /// differ: RSA-PSS is randomized).
    pub fn same_content(&self, other: &Record) -> bool {
        self.envelope.body_unverified() == other.envelope.body_unverified()
    }
}

impl Versioned for Record {
    fn sequence(&self) -> u64 {
        self.sequence
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("key", &self.key)
            .field("sequence", &self.sequence)
            .field("expires_unix", &self.expires_unix)
            .field("signer", &self.signer)
            .field("value_len", &self.value.len())
            .finish_non_exhaustive()
    }
}

/// The newest of validated records: the highest sequence, the earliest of
/// equals.
pub fn newest(records: impl IntoIterator<Item = Record>) -> Option<Record> {
    records.into_iter().fold(None, |best, record| match best {
        Some(best) if best.sequence >= record.sequence => Some(best),
        _ => Some(record),
    })
}

/// What a reader keeps of the replies to a FIND_VALUE for `wanted`: each is
/// validated with [`Record::verify_reply`] (invalid ones and records of other
/// keys are dropped), then the one with the highest sequence wins; of equal
/// sequences, the earliest reply.
pub fn newest_valid(
    wanted: &RecordKey,
    replies: impl IntoIterator<Item = proto::common::v1::Envelope>,
    now_unix: i64,
    expected_signer: Option<NodeId>,
) -> Option<Record> {
    newest(replies.into_iter().filter_map(|wire| {
        Record::verify_reply(wanted, wire, now_unix, expected_signer)
            .inspect_err(|err| debug!(%err, "record reply dropped"))
            .ok()
    }))
}

fn check_identity(
    key: &RecordKey,
    value: &[u8],
    signer: NodeId,
    expected_signer: Option<NodeId>,
) -> Result<SignedIdentity, Error> {
    let wire = proto::common::v1::Envelope::decode(value).map_err(|_| Error::MalformedValue {
        key: key.clone(),
        reason: "not an encoded identity envelope",
    })?;
    let identity = SignedIdentity::from_proto(wire).map_err(|source| Error::Identity {
        key: key.clone(),
        source: Box::new(source),
    })?;
    let document = identity.document();
    if document.user_id != *key.user() {
        return Err(Error::IdentityMismatch {
            key: key.clone(),
            named: document.user_id.clone(),
        });
    }
    if document.node_id() != signer {
        return Err(Error::WrongSigner {
            key: key.clone(),
            expected: document.node_id(),
            found: signer,
        });
    }
    if let Some(expected) = expected_signer
        && expected != signer
    {
        return Err(Error::WrongSigner {
            key: key.clone(),
            expected,
            found: signer,
        });
    }
    Ok(identity)
}

fn check_suppliers(
    key: &RecordKey,
    value: &[u8],
    signer: NodeId,
    expected_signer: Option<NodeId>,
) -> Result<(), Error> {
    let Some(expected) = expected_signer else {
        return Err(Error::SignerUnknown { key: key.clone() });
    };
    if expected != signer {
        return Err(Error::WrongSigner {
            key: key.clone(),
            expected,
            found: signer,
        });
    }
    let list = proto::dht::v1::SupplierList::decode(value).map_err(|_| Error::MalformedValue {
        key: key.clone(),
        reason: "not an encoded supplier list",
    })?;
    if list.user_id != key.user().to_string() {
        return Err(Error::MalformedValue {
            key: key.clone(),
            reason: "the supplier list names another user",
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use common::envelope::EnvelopeError;
    use common::identity::IdentityError;

    use super::fixtures::*;
    use super::*;

    #[test]
    fn a_valid_suppliers_record_is_accepted() {
        let wire = suppliers_record(&ALICE, "alice@id-a", 3, NOW + 3600);
        let record = Record::verify(wire.clone(), NOW, Some(node(&ALICE))).unwrap();
        assert_eq!(record.key().to_string(), "suppliers/alice@id-a");
        assert_eq!(record.key().kind(), RecordKind::Suppliers);
        assert_eq!(record.sequence(), 3);
        assert_eq!(record.expires_unix(), NOW + 3600);
        assert_eq!(record.signer(), node(&ALICE));
        assert!(record.identity().is_none());
        assert_eq!(record.to_proto(), wire);
        assert_eq!(record.encoded_len(), wire.encoded_len());
        let list = proto::dht::v1::SupplierList::decode(record.value()).unwrap();
        assert_eq!(list.user_id, "alice@id-a");
        assert!(!record.is_expired(NOW + 3599));
        assert!(record.is_expired(NOW + 3600));
        assert!(format!("{record:?}").contains("suppliers/alice@id-a"));
    }

    #[test]
    fn a_valid_identity_record_is_accepted_with_or_without_a_pin() {
        let wire = identity_record(&ALICE, &ALICE, "alice@id-a", 1, NOW + 60);
        let record = Record::verify(wire.clone(), NOW, None).unwrap();
        let identity = record.identity().unwrap();
        assert_eq!(identity.document().user_id.to_string(), "alice@id-a");
        assert_eq!(identity.document().node_id(), node(&ALICE));
        Record::verify(wire.clone(), NOW, Some(node(&ALICE))).unwrap();
        // A pin on another key refuses it.
        assert!(matches!(
            Record::verify(wire, NOW, Some(node(&BOB))),
            Err(Error::WrongSigner { expected, found, .. })
                if expected == node(&BOB) && found == node(&ALICE)
        ));
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let mut wire = suppliers_record(&ALICE, "alice@id-a", 1, NOW + 60);
        let last = wire.body.len() - 1;
        wire.body[last] ^= 1;
        assert!(matches!(
            Record::verify(wire.clone(), NOW, Some(node(&ALICE))),
            Err(Error::Envelope(EnvelopeError::BadSignature))
        ));
        let mut wire = suppliers_record(&ALICE, "alice@id-a", 1, NOW + 60);
        wire.signature[0] ^= 0x80;
        assert!(matches!(
            Record::verify(wire, NOW, Some(node(&ALICE))),
            Err(Error::Envelope(EnvelopeError::BadSignature))
        ));
        // Another key swapped in beside the body.
        let mut wire = suppliers_record(&ALICE, "alice@id-a", 1, NOW + 60);
        wire.signer_public_key = BOB.public_key().spki_der().to_vec();
        assert!(matches!(
            Record::verify(wire, NOW, Some(node(&BOB))),
            Err(Error::Envelope(EnvelopeError::BadSignature))
        ));
        // No key at all.
        let mut wire = suppliers_record(&ALICE, "alice@id-a", 1, NOW + 60);
        wire.signer_public_key.clear();
        assert!(matches!(
            Record::verify(wire, NOW, Some(node(&ALICE))),
            Err(Error::Envelope(EnvelopeError::BadSigner))
        ));
        // Signed for another purpose.
        let body = raw_body(
            "suppliers/alice@id-a",
            1,
            1,
            NOW + 60,
            supplier_list("alice@id-a"),
        );
        let wire = Envelope::seal_self_signed(&ALICE, Purpose::Identity, &body)
            .unwrap()
            .to_proto();
        assert!(matches!(
            Record::verify(wire, NOW, Some(node(&ALICE))),
            Err(Error::Envelope(EnvelopeError::BadSignature))
        ));
    }

    #[test]
    fn the_type_must_match_the_key_prefix() {
        for (key, record_type) in [
            ("suppliers/alice@id-a", 2),
            ("identity/alice@id-a", 1),
            ("suppliers/alice@id-a", 0),
            ("suppliers/alice@id-a", 9),
        ] {
            let wire = sign_body(&ALICE, raw_body(key, record_type, 1, NOW + 60, Vec::new()));
            let err = Record::verify(wire, NOW, Some(node(&ALICE))).unwrap_err();
            assert!(
                matches!(err, Error::TypeMismatch { found, .. } if found == record_type),
                "{key} {record_type}: {err}"
            );
        }
    }

    #[test]
    fn the_key_must_name_a_valid_user_in_canonical_form() {
        for key in [
            "",
            "manifest/alice@id-a",
            "suppliers/al@id-a",
            "suppliers/alice",
            "suppliers/alice@id-a_7700",
        ] {
            let wire = sign_body(
                &ALICE,
                raw_body(key, 1, 1, NOW + 60, supplier_list("alice@id-a")),
            );
            let err = Record::verify(wire, NOW, Some(node(&ALICE))).unwrap_err();
            assert!(matches!(err, Error::BadKey { .. }), "{key}: {err}");
        }
    }

    #[test]
    fn expired_and_far_future_records_are_refused() {
        let expired = suppliers_record(&ALICE, "alice@id-a", 1, NOW);
        assert!(matches!(
            Record::verify(expired, NOW, Some(node(&ALICE))),
            Err(Error::Expired {
                expires_unix: NOW,
                now_unix: NOW,
                ..
            })
        ));
        let long_ago = suppliers_record(&ALICE, "alice@id-a", 1, 0);
        assert!(matches!(
            Record::verify(long_ago, NOW, Some(node(&ALICE))),
            Err(Error::Expired { .. })
        ));
        let far = suppliers_record(&ALICE, "alice@id-a", 1, NOW + MAX_TTL_SECS + 1);
        let err = Record::verify(far, NOW, Some(node(&ALICE))).unwrap_err();
        assert!(matches!(err, Error::ExpiryTooFar { .. }), "{err}");
        assert!(err.to_string().contains("later than the allowed"));
        let huge = suppliers_record(&ALICE, "alice@id-a", 1, i64::MAX);
        assert!(matches!(
            Record::verify(huge, NOW, Some(node(&ALICE))),
            Err(Error::ExpiryTooFar { .. })
        ));
        // Exactly 48 h ahead is allowed.
        let edge = suppliers_record(&ALICE, "alice@id-a", 1, NOW + MAX_TTL_SECS);
        Record::verify(edge, NOW, Some(node(&ALICE))).unwrap();
    }

    #[test]
    fn oversized_records_are_refused_before_any_crypto() {
        let big = padded_supplier_list("alice@id-a", MAX_RECORD_BYTES);
        let wire = sign_body(
            &ALICE,
            raw_body("suppliers/alice@id-a", 1, 1, NOW + 60, big),
        );
        let size = wire.encoded_len();
        assert!(matches!(
            Record::verify(wire, NOW, Some(node(&ALICE))),
            Err(Error::TooLarge { size: s, max: MAX_RECORD_BYTES }) if s == size
        ));
        // Garbage of that size is refused the same way, unsigned.
        let garbage = proto::common::v1::Envelope {
            body: vec![0; MAX_RECORD_BYTES],
            signature: Vec::new(),
            signer_public_key: Vec::new(),
        };
        assert!(matches!(
            Record::verify(garbage, NOW, None),
            Err(Error::TooLarge { .. })
        ));
        // Just under the limit is fine.
        let fits = padded_supplier_list("alice@id-a", MAX_RECORD_BYTES - 1024);
        let wire = sign_body(
            &ALICE,
            raw_body("suppliers/alice@id-a", 1, 1, NOW + 60, fits),
        );
        assert!(wire.encoded_len() <= MAX_RECORD_BYTES);
        Record::verify(wire, NOW, Some(node(&ALICE))).unwrap();
    }

    #[test]
    fn records_signed_by_someone_other_than_their_user_are_refused() {
        // Bob signs alice's supplier list.
        let forged = suppliers_record(&BOB, "alice@id-a", 9, NOW + 60);
        assert!(matches!(
            Record::verify(forged.clone(), NOW, Some(node(&ALICE))),
            Err(Error::WrongSigner { expected, found, .. })
                if expected == node(&ALICE) && found == node(&BOB)
        ));
        // Without the user's node ID, a suppliers record cannot be checked.
        assert!(matches!(
            Record::verify(forged, NOW, None),
            Err(Error::SignerUnknown { .. })
        ));
        // Bob wraps alice's genuine identity document in a record he signs.
        let forged = identity_record(&BOB, &ALICE, "alice@id-a", 1, NOW + 60);
        assert!(matches!(
            Record::verify(forged, NOW, None),
            Err(Error::WrongSigner { expected, found, .. })
                if expected == node(&ALICE) && found == node(&BOB)
        ));
        // Bob publishes his own document under alice's key.
        let forged =
            identity_record_with(&BOB, identity(&BOB, "bob@id-a"), "alice@id-a", 1, NOW + 60);
        let err = Record::verify(forged, NOW, None).unwrap_err();
        assert!(matches!(err, Error::IdentityMismatch { .. }), "{err}");
        // Bob makes a document claiming to be alice, with his key: only a
        // pin (the expected node ID) or a stored record tells it apart.
        let squat = squatted_identity_record(&BOB, "alice@id-a", 1, NOW + 60);
        Record::verify(squat.clone(), NOW, None).unwrap();
        assert!(matches!(
            Record::verify(squat, NOW, Some(node(&ALICE))),
            Err(Error::WrongSigner { .. })
        ));
    }

    #[test]
    fn malformed_values_are_refused() {
        let wire = sign_body(
            &ALICE,
            raw_body("identity/alice@id-a", 2, 1, NOW + 60, vec![0xff; 10]),
        );
        assert!(matches!(
            Record::verify(wire, NOW, None),
            Err(Error::MalformedValue { .. })
        ));
        // A tampered identity document inside a validly signed record.
        let mut document = identity(&ALICE, "alice@id-a").to_proto();
        let last = document.body.len() - 1;
        document.body[last] ^= 1;
        let wire = sign_body(
            &ALICE,
            raw_body(
                "identity/alice@id-a",
                2,
                1,
                NOW + 60,
                document.encode_to_vec(),
            ),
        );
        let err = Record::verify(wire, NOW, None).unwrap_err();
        assert!(
            matches!(&err, Error::Identity { source, .. }
                if matches!(**source, IdentityError::Envelope(_))),
            "{err}"
        );
        let wire = sign_body(
            &ALICE,
            raw_body("suppliers/alice@id-a", 1, 1, NOW + 60, vec![0xff; 10]),
        );
        assert!(matches!(
            Record::verify(wire, NOW, Some(node(&ALICE))),
            Err(Error::MalformedValue { .. })
        ));
        let body = raw_body(
            "suppliers/alice@id-a",
            1,
            1,
            NOW + 60,
            supplier_list("bob@id-a"),
        );
        let other_user = sign_body(&ALICE, body);
        let err = Record::verify(other_user, NOW, Some(node(&ALICE))).unwrap_err();
        assert!(err.to_string().contains("names another user"), "{err}");
    }

    #[test]
    fn replies_must_be_for_the_key_asked_for() {
        let wanted: RecordKey = "suppliers/alice@id-a".parse().unwrap();
        let wire = identity_record(&ALICE, &ALICE, "alice@id-a", 1, NOW + 60);
        assert!(matches!(
            Record::verify_reply(&wanted, wire, NOW, Some(node(&ALICE))),
            Err(Error::KeyMismatch { .. })
        ));
        let wire = suppliers_record(&ALICE, "alice@id-a", 1, NOW + 60);
        Record::verify_reply(&wanted, wire, NOW, Some(node(&ALICE))).unwrap();
    }

    #[test]
    fn readers_keep_the_highest_valid_sequence() {
        let wanted: RecordKey = "suppliers/alice@id-a".parse().unwrap();
        let mut tampered = suppliers_record(&ALICE, "alice@id-a", 50, NOW + 60);
        tampered.signature[5] ^= 1;
        let replies = vec![
            suppliers_record(&ALICE, "alice@id-a", 4, NOW + 60),
            // Invalid, for another key, forged, or expired: all dropped.
            tampered,
            suppliers_record(&ALICE, "alicia@id-a", 60, NOW + 60),
            suppliers_record(&BOB, "alice@id-a", 70, NOW + 60),
            suppliers_record(&ALICE, "alice@id-a", 80, NOW),
            suppliers_record(&ALICE, "alice@id-a", 7, NOW + 60),
            suppliers_record(&ALICE, "alice@id-a", 5, NOW + 60),
        ];
        let best = newest_valid(&wanted, replies, NOW, Some(node(&ALICE))).unwrap();
        assert_eq!(best.sequence(), 7);
        assert!(newest_valid(&wanted, Vec::new(), NOW, Some(node(&ALICE))).is_none());

        // Of equal sequences, the earliest wins.
        let first = verified(suppliers_record(&ALICE, "alice@id-a", 3, NOW + 60));
        let second = verified(suppliers_record(&ALICE, "alice@id-a", 3, NOW + 61));
        assert_eq!(newest([first.clone(), second]), Some(first));
    }
}
