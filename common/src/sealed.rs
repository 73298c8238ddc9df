//! Sealed messages between users: encrypted to the recipient's master key
//! and signed by the sender's (DESIGN.md §7), such as a grant that hands a
//! share's private key to a member.
//!
//! A fresh AES-256 key encrypts the plaintext (AES-256-GCM, the AAD binding
//! sender, recipient and kind) and is wrapped with RSA-OAEP-SHA256 to the
//! recipient's master key. The encoded [`SealedMessage`] is the body of an
//! [`Envelope`] signed by the sender (purpose `silt-message-v1`).
//!
//! [`open`] checks the sender's signature over the received bytes before
//! anything else, so no RSA decryption ever runs on a ciphertext from
//! someone who has not signed it (RUSTSEC-2023-0071).

use prost::Message;
use proto::common::v1::SealedMessage;
use zeroize::Zeroizing;

use crate::crypto::{NONCE_LEN, PrivateKey, PublicKey, Purpose, SymmetricKey};
use crate::envelope::{Envelope, EnvelopeError};
use crate::id::UserId;

/// Kind of a sealed [`proto::common::v1::Grant`].
pub const KIND_GRANT: &str = "grant";

/// How far in the future a message's creation time may be (clock skew).
const MAX_SKEW_SECS: i64 = 600;
/// How old a message may be: long enough for one waiting in a mailbox, and
/// no replay of an old one after that.
pub const MAX_AGE_SECS: i64 = 30 * 86_400;

/// Why a sealed message could not be made or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealedError {
    /// The envelope is malformed or its signature is not the sender's.
    #[error("the message is not signed by its sender: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The signed body does not decode.
    #[error("the message is malformed: {0}")]
    Malformed(String),
    /// It names another sender, recipient or kind than expected.
    #[error("the message is {0}")]
    Mismatch(String),
    /// Decryption failed: not for our key, or tampered with.
    #[error("the message cannot be decrypted with our key")]
    Undecryptable,
    /// Encryption failed.
    #[error("cannot seal the message: {0}")]
    Crypto(String),
}

/// Seals `plaintext` of `kind` from `sender` (whose master key signs) to
/// `recipient` (whose master key is `recipient_key`).
pub fn seal(
    sender: &UserId,
    sender_key: &PrivateKey,
    recipient: &UserId,
    recipient_key: &PublicKey,
    kind: &str,
    plaintext: &[u8],
    now: i64,
) -> Result<Envelope, SealedError> {
    let key = SymmetricKey::generate();
    let nonce: [u8; NONCE_LEN] = rand::random();
    let aad = aad(sender, recipient, kind);
    let ciphertext = key
        .seal(&nonce, &aad, plaintext)
        .map_err(|e| SealedError::Crypto(e.to_string()))?;
    let wrapped_key = recipient_key
        .wrap(key.as_bytes())
        .map_err(|e| SealedError::Crypto(e.to_string()))?;
    let message = SealedMessage {
        sender: sender.to_string(),
        recipient: recipient.to_string(),
        kind: kind.to_owned(),
        wrapped_key,
        nonce: nonce.to_vec(),
        ciphertext,
        created_unix: now,
    };
    Envelope::seal_message(sender_key, Purpose::Message, &message)
        .map_err(|e| SealedError::Crypto(e.to_string()))
}

/// Opens a message of `kind` that `sender` (whose master key is
/// `sender_key`) sealed to us, `recipient`: checks the signature first, then
/// who it is from and for, then decrypts with `recipient_key`.
pub fn open(
    envelope: &Envelope,
    sender: &UserId,
    sender_key: &PublicKey,
    recipient: &UserId,
    recipient_key: &PrivateKey,
    kind: &str,
    now: i64,
) -> Result<Zeroizing<Vec<u8>>, SealedError> {
    let body = envelope.open(sender_key, Purpose::Message)?;
    let message = SealedMessage::decode(body).map_err(|e| SealedError::Malformed(e.to_string()))?;
    if message.sender != sender.to_string() {
        return Err(SealedError::Mismatch(format!(
            "from {}, not {sender}",
            message.sender
        )));
    }
    if message.recipient != recipient.to_string() {
        return Err(SealedError::Mismatch(format!(
            "for {}, not {recipient}",
            message.recipient
        )));
    }
    if message.kind != kind {
        return Err(SealedError::Mismatch(format!(
            "a {:?}, not a {kind:?}",
            message.kind
        )));
    }
    if message.created_unix > now.saturating_add(MAX_SKEW_SECS) {
        return Err(SealedError::Mismatch("dated in the future".into()));
    }
    if message.created_unix < now.saturating_sub(MAX_AGE_SECS) {
        return Err(SealedError::Mismatch("too old".into()));
    }
    let nonce: [u8; NONCE_LEN] = message
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| SealedError::Malformed("the nonce is not 12 bytes".into()))?;
    // The sender is authenticated: its signature over these bytes checked.
    let secret = recipient_key
        .unwrap(&message.wrapped_key)
        .map_err(|_| SealedError::Undecryptable)?;
    let key = SymmetricKey::from_slice(&secret).map_err(|_| SealedError::Undecryptable)?;
    key.open(&nonce, &aad(sender, recipient, kind), &message.ciphertext)
        .map(Zeroizing::new)
        .map_err(|_| SealedError::Undecryptable)
}

/// The sender of a sealed message as it claims, before anything is checked:
/// only for finding the key to check it with.
pub fn claimed_sender(envelope: &Envelope) -> Result<UserId, SealedError> {
    let message = SealedMessage::decode(envelope.body_unverified())
        .map_err(|e| SealedError::Malformed(e.to_string()))?;
    message
        .sender
        .parse()
        .map_err(|e| SealedError::Malformed(format!("sender: {e}")))
}

fn aad(sender: &UserId, recipient: &UserId, kind: &str) -> Vec<u8> {
    let mut aad = Vec::new();
    for field in [sender.to_string(), recipient.to_string(), kind.to_owned()] {
        aad.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        aad.extend_from_slice(field.as_bytes());
    }
    aad
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    static ALICE: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());
    static BOB: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());

    fn users() -> (UserId, UserId) {
        ("alice@id-a".parse().unwrap(), "bob@id-b".parse().unwrap())
    }

    fn sealed(kind: &str) -> Envelope {
        let (alice, bob) = users();
        seal(
            &alice,
            &ALICE,
            &bob,
            BOB.public_key(),
            kind,
            b"the key",
            1_000,
        )
        .unwrap()
    }

    #[test]
    fn the_recipient_opens_what_the_sender_sealed() {
        let (alice, bob) = users();
        let envelope = sealed(KIND_GRANT);
        assert_eq!(claimed_sender(&envelope).unwrap(), alice);
        let opened = open(
            &envelope,
            &alice,
            ALICE.public_key(),
            &bob,
            &BOB,
            KIND_GRANT,
            1_000,
        )
        .unwrap();
        assert_eq!(opened.as_slice(), b"the key");
    }

    #[test]
    fn wrong_senders_recipients_kinds_keys_and_bytes_are_refused() {
        let (alice, bob) = users();
        let envelope = sealed(KIND_GRANT);
        let open_as = |envelope: &Envelope,
                       sender: &UserId,
                       sender_key: &PublicKey,
                       recipient: &UserId,
                       key: &PrivateKey,
                       kind: &str,
                       now: i64| {
            open(envelope, sender, sender_key, recipient, key, kind, now)
                .map(|_| ())
                .unwrap_err()
        };
        // Not signed by the key we check with: nothing is decrypted.
        let err = open_as(
            &envelope,
            &alice,
            BOB.public_key(),
            &bob,
            &BOB,
            KIND_GRANT,
            1_000,
        );
        assert!(matches!(err, SealedError::Envelope(_)), "{err}");
        let mallory: UserId = "mallory@id-a".parse().unwrap();
        let err = open_as(
            &envelope,
            &mallory,
            ALICE.public_key(),
            &bob,
            &BOB,
            KIND_GRANT,
            1_000,
        );
        assert!(err.to_string().contains("from alice@id-a"), "{err}");
        let err = open_as(
            &envelope,
            &alice,
            ALICE.public_key(),
            &mallory,
            &BOB,
            KIND_GRANT,
            1_000,
        );
        assert!(err.to_string().contains("for bob@id-b"), "{err}");
        let err = open_as(
            &envelope,
            &alice,
            ALICE.public_key(),
            &bob,
            &BOB,
            "public-key",
            1_000,
        );
        assert!(err.to_string().contains("not a \"public-key\""), "{err}");
        let err = open_as(
            &envelope,
            &alice,
            ALICE.public_key(),
            &bob,
            &BOB,
            KIND_GRANT,
            0,
        );
        assert!(err.to_string().contains("future"), "{err}");
        let late = 1_000 + MAX_AGE_SECS + 1;
        let err = open_as(
            &envelope,
            &alice,
            ALICE.public_key(),
            &bob,
            &BOB,
            KIND_GRANT,
            late,
        );
        assert!(err.to_string().contains("too old"), "{err}");
        // Right signature, but sealed to another key than ours.
        let err = open_as(
            &envelope,
            &alice,
            ALICE.public_key(),
            &bob,
            &ALICE,
            KIND_GRANT,
            1_000,
        );
        assert!(matches!(err, SealedError::Undecryptable), "{err}");
        // Any changed byte breaks the signature.
        let mut wire = envelope.to_proto();
        let last = wire.body.len() - 1;
        wire.body[last] ^= 1;
        let tampered = Envelope::from_proto(wire, 1 << 20).unwrap();
        let err = open_as(
            &tampered,
            &alice,
            ALICE.public_key(),
            &bob,
            &BOB,
            KIND_GRANT,
            1_000,
        );
        assert!(matches!(err, SealedError::Envelope(_)), "{err}");
    }
}
