//! Signed envelopes: a body (an encoded message) and a signature over its
//! exact bytes.
//!
//! Verifiers check the signature over the bytes they received, then decode;
//! nothing is ever re-encoded in order to verify it. Self-certifying bodies
//! (identity documents, DHT records) carry the signer's public key beside the
//! body; [`Envelope::open_self_signed`] checks the signature with that key
//! first and leaves the decision whether to trust the key to the caller.

use prost::Message;

use crate::crypto::{CryptoError, PrivateKey, PublicKey, Purpose};

/// Why an envelope was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The signature does not verify with the expected key and purpose.
    #[error("envelope signature is invalid")]
    BadSignature,
    /// The signer's public key is missing or malformed.
    #[error("envelope signer key is missing or malformed")]
    BadSigner,
    /// The body does not decode as the expected message.
    #[error("envelope body is malformed: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The body is larger than allowed.
    #[error("envelope body is {size} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size received.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[source] CryptoError),
}

/// A signed body.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    body: Vec<u8>,
    signature: Vec<u8>,
    signer: Option<PublicKey>,
}

impl Envelope {
    /// Signs `body` for `purpose`.
    pub fn seal(key: &PrivateKey, purpose: Purpose, body: Vec<u8>) -> Result<Self, EnvelopeError> {
        let signature = key.sign(purpose, &body).map_err(EnvelopeError::Sign)?;
        Ok(Self {
            body,
            signature,
            signer: None,
        })
    }

    /// Encodes and signs a message for `purpose`.
    pub fn seal_message<M: Message>(
        key: &PrivateKey,
        purpose: Purpose,
        message: &M,
    ) -> Result<Self, EnvelopeError> {
        Self::seal(key, purpose, message.encode_to_vec())
    }

    /// Like [`Envelope::seal_message`], and carries the signer's public key
    /// for verifiers that do not know it yet.
    pub fn seal_self_signed<M: Message>(
        key: &PrivateKey,
        purpose: Purpose,
        message: &M,
    ) -> Result<Self, EnvelopeError> {
        let mut envelope = Self::seal_message(key, purpose, message)?;
        envelope.signer = Some(key.public_key().clone());
        Ok(envelope)
    }

    /// Verifies the signature with a known key, then returns the body bytes.
    pub fn open(&self, key: &PublicKey, purpose: Purpose) -> Result<&[u8], EnvelopeError> {
        key.verify(purpose, &self.body, &self.signature)
            .map_err(|_| EnvelopeError::BadSignature)?;
        Ok(&self.body)
    }

    /// Verifies the signature with a known key, then decodes the body.
    pub fn open_message<M: Message + Default>(
        &self,
        key: &PublicKey,
        purpose: Purpose,
    ) -> Result<M, EnvelopeError> {
        let body = self.open(key, purpose)?;
        Ok(M::decode(body)?)
    }

    /// Verifies the signature with the key carried in the envelope, then
    /// decodes the body. The caller must still check that the signer is who
    /// the body claims (for example, that an identity document names this key).
    pub fn open_self_signed<M: Message + Default>(
        &self,
        purpose: Purpose,
    ) -> Result<(M, &PublicKey), EnvelopeError> {
        let signer = self.signer.as_ref().ok_or(EnvelopeError::BadSigner)?;
        let message = self.open_message(signer, purpose)?;
        Ok((message, signer))
    }

    /// The signer key carried in the envelope, if any (unverified).
    pub fn signer(&self) -> Option<&PublicKey> {
        self.signer.as_ref()
    }

    /// The body bytes, unverified. Only for storing or forwarding.
    pub fn body_unverified(&self) -> &[u8] {
        &self.body
    }

    /// Converts from the wire form, refusing bodies larger than `max_body`.
    pub fn from_proto(
        wire: proto::common::v1::Envelope,
        max_body: usize,
    ) -> Result<Self, EnvelopeError> {
        if wire.body.len() > max_body {
            return Err(EnvelopeError::TooLarge {
                size: wire.body.len(),
                max: max_body,
            });
        }
        let signer = if wire.signer_public_key.is_empty() {
            None
        } else {
            Some(
                PublicKey::from_spki_der(&wire.signer_public_key)
                    .map_err(|_| EnvelopeError::BadSigner)?,
            )
        };
        Ok(Self {
            body: wire.body,
            signature: wire.signature,
            signer,
        })
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::common::v1::Envelope {
        proto::common::v1::Envelope {
            body: self.body.clone(),
            signature: self.signature.clone(),
            signer_public_key: self
                .signer
                .as_ref()
                .map(|key| key.spki_der().to_vec())
                .unwrap_or_default(),
        }
    }

    /// Encodes the wire form to bytes (for files).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// Decodes bytes written by [`Envelope::to_bytes`].
    pub fn from_bytes(bytes: &[u8], max_body: usize) -> Result<Self, EnvelopeError> {
        Self::from_proto(proto::common::v1::Envelope::decode(bytes)?, max_body)
    }
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("body_len", &self.body.len())
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use proto::common::v1::Location;

    use super::*;

    static KEY: LazyLock<PrivateKey> = LazyLock::new(|| PrivateKey::generate(2048).unwrap());

    fn location() -> Location {
        Location {
            owner: "alice@id-a".into(),
            alias: "photos".into(),
        }
    }

    #[test]
    fn round_trip_through_bytes() {
        let envelope = Envelope::seal_message(&KEY, Purpose::Record, &location()).unwrap();
        let back = Envelope::from_bytes(&envelope.to_bytes(), 1024).unwrap();
        let decoded: Location = back
            .open_message(KEY.public_key(), Purpose::Record)
            .unwrap();
        assert_eq!(decoded, location());
    }

    #[test]
    fn any_flipped_bit_in_body_or_signature_fails() {
        let envelope = Envelope::seal_message(&KEY, Purpose::Record, &location()).unwrap();
        let wire = envelope.to_proto();
        for i in 0..wire.body.len() * 8 {
            let mut bad = wire.clone();
            bad.body[i / 8] ^= 1 << (i % 8);
            let bad = Envelope::from_proto(bad, 1024).unwrap();
            assert!(matches!(
                bad.open(KEY.public_key(), Purpose::Record),
                Err(EnvelopeError::BadSignature)
            ));
        }
        for i in [0, 7, 100, wire.signature.len() * 8 - 1] {
            let mut bad = wire.clone();
            bad.signature[i / 8] ^= 1 << (i % 8);
            let bad = Envelope::from_proto(bad, 1024).unwrap();
            assert!(bad.open(KEY.public_key(), Purpose::Record).is_err());
        }
    }

    #[test]
    fn another_purpose_fails() {
        let envelope = Envelope::seal_message(&KEY, Purpose::Record, &location()).unwrap();
        assert!(envelope.open(KEY.public_key(), Purpose::Identity).is_err());
        assert!(envelope.open(KEY.public_key(), Purpose::Manifest).is_err());
    }

    #[test]
    fn self_signed_envelopes_carry_and_check_their_key() {
        let envelope = Envelope::seal_self_signed(&KEY, Purpose::Identity, &location()).unwrap();
        let back = Envelope::from_bytes(&envelope.to_bytes(), 1024).unwrap();
        let (decoded, signer): (Location, _) = back.open_self_signed(Purpose::Identity).unwrap();
        assert_eq!(decoded, location());
        assert_eq!(signer, KEY.public_key());

        // A different key swapped in fails, as does a missing one.
        let other = PrivateKey::generate(2048).unwrap();
        let mut wire = envelope.to_proto();
        wire.signer_public_key = other.public_key().spki_der().to_vec();
        let swapped = Envelope::from_proto(wire.clone(), 1024).unwrap();
        assert!(
            swapped
                .open_self_signed::<Location>(Purpose::Identity)
                .is_err()
        );
        wire.signer_public_key.clear();
        let unsigned = Envelope::from_proto(wire.clone(), 1024).unwrap();
        assert!(matches!(
            unsigned.open_self_signed::<Location>(Purpose::Identity),
            Err(EnvelopeError::BadSigner)
        ));
        wire.signer_public_key = vec![1, 2, 3];
        assert!(matches!(
            Envelope::from_proto(wire, 1024),
            Err(EnvelopeError::BadSigner)
        ));
    }

    #[test]
    fn oversized_bodies_are_refused() {
        let envelope = Envelope::seal(&KEY, Purpose::Record, vec![0; 2000]).unwrap();
        assert!(matches!(
            Envelope::from_bytes(&envelope.to_bytes(), 1024),
            Err(EnvelopeError::TooLarge {
                size: 2000,
                max: 1024
            })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(envelope) = Envelope::from_bytes(&bytes, 512) {
                // Random bytes never carry a valid signature.
                prop_assert!(envelope.open(KEY.public_key(), Purpose::Record).is_err());
                let _ = envelope.open_self_signed::<Location>(Purpose::Record);
            }
        }
    }
}
