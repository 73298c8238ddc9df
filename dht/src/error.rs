//! The crate's error type: why a contact or a record was refused, or why a
//! record store could not take a record.

use common::envelope::EnvelopeError;
use common::id::{NodeId, UserId};
use common::identity::IdentityError;

use crate::record::{RecordKey, RecordKind};

/// Why the DHT refused something.
///
/// Every variant but [`Error::Store`] describes bad input from a peer (or a
/// caller); none of them is a bug in this node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node contact from the wire breaks the rules.
    #[error("invalid node contact: {reason}")]
    BadContact {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A record key is not `suppliers/<user@idhost>` or `identity/<user@idhost>`
    /// in canonical form.
    #[error("invalid record key {key:?}: {reason}")]
    BadKey {
        /// The offending key, as received.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The record envelope is malformed, unsigned or its signature is bad.
    #[error("record envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The record has expired.
    #[error("record {key} expired at {expires_unix} (now {now_unix})")]
    Expired {
        /// The record key.
        key: RecordKey,
        /// Its expiry, in seconds since the Unix epoch.
        expires_unix: i64,
        /// The time of the check.
        now_unix: i64,
    },
    /// The record expires further ahead than allowed.
    #[error("record {key} expires at {expires_unix}, later than the allowed {max_unix}")]
    ExpiryTooFar {
        /// The record key.
        key: RecordKey,
        /// Its expiry, in seconds since the Unix epoch.
        expires_unix: i64,
        /// The latest expiry allowed at the time of the check.
        max_unix: i64,
    },
    /// The identity document in an `identity/` record does not verify.
    #[error("record {key}: {source}")]
    Identity {
        /// The record key.
        key: RecordKey,
        /// Why the document was refused (boxed: it is large and rare).
        #[source]
        source: Box<IdentityError>,
    },
    /// The identity document in an `identity/` record is for another user.
    #[error("record {key} holds the identity document of {named}")]
    IdentityMismatch {
        /// The record key.
        key: RecordKey,
        /// The user the document names.
        named: UserId,
    },
    /// A reply carried a record for a key other than the one asked for.
    #[error("asked for record {wanted}, got {found}")]
    KeyMismatch {
        /// The key asked for.
        wanted: RecordKey,
        /// The key of the record received.
        found: RecordKey,
    },
    /// The record value does not decode as its type requires.
    #[error("record {key} has a malformed value: {reason}")]
    MalformedValue {
        /// The record key.
        key: RecordKey,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The record has the stored sequence number but other content.
    #[error("record {key} has sequence {sequence} like the stored one but different content")]
    SequenceConflict {
        /// The record key.
        key: RecordKey,
        /// The sequence number both carry.
        sequence: u64,
    },
    /// The record is older than the stored one.
    #[error("record {key} has sequence {offered}, lower than the stored {stored}")]
    SequenceRegressed {
        /// The record key.
        key: RecordKey,
        /// The stored sequence number.
        stored: u64,
        /// The offered sequence number.
        offered: u64,
    },
    /// The record is signed by another key than the stored record of that key.
    #[error("record {key} is signed by {offered}, the stored one by {stored}")]
    SignerChanged {
        /// The record key.
        key: RecordKey,
        /// The node ID of the stored record's signer.
        stored: NodeId,
        /// The node ID of the offered record's signer.
        offered: NodeId,
    },
    /// A `suppliers/` record was checked without the node ID of the user it
    /// names, so whether the user signed it cannot be known.
    #[error("record {key} cannot be checked without the node id of the user it names")]
    SignerUnknown {
        /// The record key.
        key: RecordKey,
    },
    /// A record store failed (for example, its database did).
    #[error("record store failed: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The record store holds as many records as it may.
    #[error("record store is full ({max} records)")]
    StoreFull {
        /// The cap.
        max: usize,
    },
    /// A signer that nobody here vouches for already has as many records
    /// in this store as one stranger may.
    #[error("record {key}: its signer {signer} already has {max} records here")]
    SignerQuota {
        /// The record key.
        key: RecordKey,
        /// The node ID of the record's signer.
        signer: NodeId,
        /// How many records one stranger may have held.
        max: usize,
    },
    /// The encoded record is larger than allowed.
    #[error("record is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The record's type does not match its key's prefix.
    #[error("record {key} has type {found}, but its key calls for {expected}")]
    TypeMismatch {
        /// The record key.
        key: RecordKey,
        /// The type the key prefix calls for.
        expected: RecordKind,
        /// The raw type field received.
        found: i32,
    },
    /// The record is signed by someone other than the user its key names.
    #[error("record {key} is signed by {found}, not by its user {expected}")]
    WrongSigner {
        /// The record key.
        key: RecordKey,
        /// The node ID of the user the key names.
        expected: NodeId,
        /// The node ID of the key that signed the record.
        found: NodeId,
    },
}
