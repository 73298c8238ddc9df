//! RSA keys, signatures, key wrapping, AES-256-GCM and SHA-256.
//!
//! - Signatures are RSA-PSS with SHA-256 (salt of 32 bytes, MGF1-SHA-256) over
//!   `"silt-<purpose>-v1" || 0x00 || message`, so a signature made for one
//!   purpose never verifies for another. `ring` makes and checks them
//!   (several times faster than `rsa`, and constant-time); `rsa` is the
//!   fallback for keys `ring` refuses. Both use the same encoding.
//! - Key wrapping is RSA-OAEP with SHA-256.
//! - Data is sealed with AES-256-GCM (ciphertext followed by the 16-byte tag),
//!   by `ring`: in this workspace's dev profile RustCrypto's `aes-gcm` ran
//!   at a tenth of `ring`'s speed, and the encoding is the same standard one
//!   (a test holds the two to each other).
//!
//! Private keys never print: their `Debug` shows only the node ID of the
//! public half.

use std::fmt;
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::id::NodeId;

/// Default size of new RSA keys, in bits.
pub const DEFAULT_KEY_BITS: usize = 3072;

/// RSA key sizes Silt makes and accepts, in bits.
pub const ALLOWED_KEY_BITS: [usize; 3] = [2048, 3072, 4096];

/// Length of an AES-256 key.
pub const SYMMETRIC_KEY_LEN: usize = 32;

/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;

/// Length of an AES-GCM tag, appended to every ciphertext.
pub const TAG_LEN: usize = 16;

/// What went wrong in a cryptographic operation. Deliberately terse: details
/// of a failed verification or decryption would only help an attacker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A key size outside [`ALLOWED_KEY_BITS`].
    #[error("unsupported RSA key size {0} bits (allowed: 2048, 3072, 4096)")]
    KeySize(usize),
    /// A signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// A ciphertext did not decrypt or authenticate.
    #[error("decryption failed")]
    Decrypt,
    /// A key could not be decoded.
    #[error("malformed key: {0}")]
    MalformedKey(&'static str),
    /// A passphrase-protected key could not be opened.
    #[error("wrong passphrase, or the key is damaged")]
    Passphrase,
    /// The RSA implementation refused an operation.
    #[error("rsa operation failed")]
    Rsa,
    /// A plaintext too large for AES-GCM.
    #[error("plaintext too large to seal")]
    Seal,
}

/// The domain of a signature. Each maps to `silt-<purpose>-v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purpose {
    /// Proofs of key possession (key audits, supplier grants).
    Audit,
    /// Identity documents.
    Identity,
    /// Share key registrations with suppliers.
    KeyRegister,
    /// Share key removals.
    KeyRemove,
    /// File version manifests.
    Manifest,
    /// Sealed messages between users.
    Message,
    /// DHT records.
    Record,
    /// The binding of a TLS key to a master key.
    Tls,
}

impl Purpose {
    /// The domain separation string.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Audit => "silt-audit-v1",
            Self::Identity => "silt-identity-v1",
            Self::KeyRegister => "silt-key-register-v1",
            Self::KeyRemove => "silt-key-remove-v1",
            Self::Manifest => "silt-manifest-v1",
            Self::Message => "silt-message-v1",
            Self::Record => "silt-record-v1",
            Self::Tls => "silt-tls-v1",
        }
    }

    fn digest(self, message: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.tag().as_bytes());
        hasher.update([0u8]);
        hasher.update(message);
        hasher.finalize().into()
    }

    /// The bytes whose SHA-256 is [`Purpose::digest`].
    fn framed(self, message: &[u8]) -> Vec<u8> {
        let tag = self.tag().as_bytes();
        let mut framed = Vec::with_capacity(tag.len() + 1 + message.len());
        framed.extend_from_slice(tag);
        framed.push(0);
        framed.extend_from_slice(message);
        framed
    }
}

/// An RSA private key.
pub struct PrivateKey {
    key: rsa::PrivateKey,
    public: PublicKey,
    /// `ring`'s form of the same key, made on first signature; `None` if
    /// `ring` refuses the key (an unusual public exponent, say).
    signer: OnceLock<Option<ring::rsa::KeyPair>>,
}

impl PrivateKey {
    /// Makes a new key of `bits` bits (2048, 3072 or 4096) from the OS RNG.
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        Self::generate_with_rng(&mut rand::rng(), bits)
    }

    /// Makes a new key from the given RNG (seeded RNGs make test keys).
    pub fn generate_with_rng<R: rand::CryptoRng + ?Sized>(
        rng: &mut R,
        bits: usize,
    ) -> Result<Self, CryptoError> {
        if !ALLOWED_KEY_BITS.contains(&bits) {
            return Err(CryptoError::KeySize(bits));
        }
        let key = rsa::PrivateKey::new(rng, bits).map_err(|_| CryptoError::Rsa)?;
        Self::from_rsa(key)
    }

    fn from_rsa(key: rsa::PrivateKey) -> Result<Self, CryptoError> {
        let public = PublicKey::from_rsa(key.to_public_key())?;
        Ok(Self {
            key,
            public,
            signer: OnceLock::new(),
        })
    }

    fn ring_signer(&self) -> Option<&ring::rsa::KeyPair> {
        self.signer
            .get_or_init(|| {
                let der = self.key.to_pkcs8_der().ok()?;
                ring::rsa::KeyPair::from_pkcs8(der.as_bytes()).ok()
            })
            .as_ref()
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message` for `purpose` with RSA-PSS-SHA256.
    pub fn sign(&self, purpose: Purpose, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let Some(signer) = self.ring_signer() else {
            return self.sign_with_rsa(purpose, message);
        };
        let mut signature = vec![0; signer.public().modulus_len()];
        signer
            .sign(
                &ring::signature::RSA_PSS_SHA256,
                &ring::rand::SystemRandom::new(),
                &purpose.framed(message),
                &mut signature,
            )
            .map_err(|_| CryptoError::Rsa)?;
        Ok(signature)
    }

    /// The same signature made by `rsa`: the fallback, and the reference
    /// the tests hold `ring` to.
    fn sign_with_rsa(&self, purpose: Purpose, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let digest = purpose.digest(message);
        self.key
            .pss_sign_prehash::<Sha256>(&digest)
            .map_err(|_| CryptoError::Rsa)
    }

    /// Unwraps an RSA-OAEP-SHA256 ciphertext.
    ///
    /// Only call this on ciphertexts from an authenticated peer whose
    /// signature was checked first (RUSTSEC-2023-0071).
    pub fn unwrap(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.key
            .oaep_decrypt::<Sha256>(ciphertext)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Decrypt)
    }

    /// PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let doc = self
            .key
            .to_pkcs8_der()
            .map_err(|_| CryptoError::MalformedKey("cannot encode key"))?;
        Ok(Zeroizing::new(doc.as_bytes().to_vec()))
    }

    /// Decodes PKCS#8 DER.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key = rsa::PrivateKey::from_pkcs8_der(der)
            .map_err(|_| CryptoError::MalformedKey("not a PKCS#8 RSA private key"))?;
        Self::checked(key)
    }

    /// Unencrypted PKCS#8 PEM (`BEGIN PRIVATE KEY`).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| CryptoError::MalformedKey("cannot encode key"))
    }

    /// Passphrase-encrypted PKCS#8 PEM (`BEGIN ENCRYPTED PRIVATE KEY`):
    /// scrypt and AES-256-CBC, readable by OpenSSL.
    pub fn to_encrypted_pem(
        &self,
        passphrase: &Passphrase,
    ) -> Result<Zeroizing<String>, CryptoError> {
        self.key
            .to_pkcs8_encrypted_pem(passphrase.as_bytes(), LineEnding::LF)
            .map_err(|_| CryptoError::MalformedKey("cannot encrypt key"))
    }

    /// Decodes unencrypted PKCS#8 PEM.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = rsa::PrivateKey::from_pkcs8_pem(pem)
            .map_err(|_| CryptoError::MalformedKey("not a PKCS#8 PEM RSA private key"))?;
        Self::checked(key)
    }

    /// Decodes passphrase-encrypted PKCS#8 PEM.
    pub fn from_encrypted_pem(pem: &str, passphrase: &Passphrase) -> Result<Self, CryptoError> {
        let key = rsa::PrivateKey::from_pkcs8_encrypted_pem(pem, passphrase.as_bytes())
            .map_err(|_| CryptoError::Passphrase)?;
        Self::checked(key)
    }

    fn checked(key: rsa::PrivateKey) -> Result<Self, CryptoError> {
        key.validate()
            .map_err(|_| CryptoError::MalformedKey("inconsistent RSA private key"))?;
        Self::from_rsa(key)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, ..)", self.public.node_id().fmt_short())
    }
}

/// How many decoded public keys [`PublicKey::from_spki_der`] keeps.
const PARSED_KEYS_CACHED: u64 = 4096;
/// How many passed signature checks [`PublicKey::verify`] remembers.
const VERIFIED_CACHED: u64 = 16_384;

/// An RSA public key, with its SubjectPublicKeyInfo DER kept for hashing.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: rsa::PublicKey,
    spki: Vec<u8>,
    /// Modulus and exponent, big-endian, for `ring`'s verifier; `None` for
    /// exponents `ring` does not take (it needs an odd e below 2^33).
    ring_parts: Option<RingParts>,
}

/// An RSA public key's modulus and exponent, big-endian, as `ring` takes them.
type RingParts = (Box<[u8]>, Box<[u8]>);

impl PublicKey {
    fn from_rsa(key: rsa::PublicKey) -> Result<Self, CryptoError> {
        let bits = key.size() * 8;
        if !ALLOWED_KEY_BITS.contains(&bits) {
            return Err(CryptoError::KeySize(bits));
        }
        let spki = key
            .to_public_key_der()
            .map_err(|_| CryptoError::MalformedKey("cannot encode public key"))?
            .into_vec();
        let e = key.e_bytes();
        let ring_parts =
            (e.len() <= 4 && e.last().is_some_and(|b| b & 1 == 1) && e.as_ref() != [1])
                .then(|| (key.n_bytes(), e));
        Ok(Self {
            key,
            spki,
            ring_parts,
        })
    }

    /// Decodes SubjectPublicKeyInfo DER, as received from a peer. Only the
    /// sizes in [`ALLOWED_KEY_BITS`] are accepted, and the encoding must be
    /// canonical: it must re-encode to the same bytes, so one key has one ID.
    ///
    /// Keys that decoded once are kept in a small process-wide cache: `rsa`
    /// precomputes Montgomery parameters for every key it parses, and a
    /// supplier parses the same few customer keys on every commit.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CryptoError> {
        if der.len() > 1024 {
            return Err(CryptoError::MalformedKey("public key too large"));
        }
        static PARSED: OnceLock<moka::sync::Cache<Box<[u8]>, PublicKey>> = OnceLock::new();
        let parsed = PARSED.get_or_init(|| moka::sync::Cache::new(PARSED_KEYS_CACHED));
        if let Some(key) = parsed.get(der) {
            return Ok(key);
        }
        let key = rsa::PublicKey::from_public_key_der(der)
            .map_err(|_| CryptoError::MalformedKey("not an RSA SubjectPublicKeyInfo"))?;
        let this = Self::from_rsa(key)?;
        if this.spki != der {
            return Err(CryptoError::MalformedKey(
                "non-canonical public key encoding",
            ));
        }
        parsed.insert(der.into(), this.clone());
        Ok(this)
    }

    /// Decodes a `BEGIN PUBLIC KEY` PEM.
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = rsa::PublicKey::from_public_key_pem(pem)
            .map_err(|_| CryptoError::MalformedKey("not a PEM RSA public key"))?;
        Self::from_rsa(key)
    }

    /// A `BEGIN PUBLIC KEY` PEM.
    pub fn to_pem(&self) -> Result<String, CryptoError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| CryptoError::MalformedKey("cannot encode public key"))
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// SHA-256 of the SPKI DER: the node ID when this is a master key.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_array(sha256(&self.spki))
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key.size() * 8
    }

    /// Checks an RSA-PSS-SHA256 signature made for `purpose`.
    ///
    /// Checks that passed are remembered in a small process-wide cache, by
    /// a hash of key, purpose, message and signature: a supplier sees the
    /// same identity envelope with every commit, and a manifest in its
    /// owner's master location carries one signature twice.
    pub fn verify(
        &self,
        purpose: Purpose,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        if signature.len() != self.key.size() {
            return Err(CryptoError::BadSignature);
        }
        static VERIFIED: OnceLock<moka::sync::Cache<[u8; 32], ()>> = OnceLock::new();
        let verified = VERIFIED.get_or_init(|| moka::sync::Cache::new(VERIFIED_CACHED));
        let digest = purpose.digest(message);
        let check = self.check_id(&digest, signature);
        if verified.contains_key(&check) {
            return Ok(());
        }
        if let Some((n, e)) = &self.ring_parts {
            ring::signature::RsaPublicKeyComponents {
                n: n.as_ref(),
                e: e.as_ref(),
            }
            .verify(
                &ring::signature::RSA_PSS_2048_8192_SHA256,
                &purpose.framed(message),
                signature,
            )
            .map_err(|_| CryptoError::BadSignature)?;
        } else {
            self.verify_with_rsa(purpose, message, signature)?;
        }
        verified.insert(check, ());
        Ok(())
    }

    /// What names one signature check: SHA-256 over the key, the digest of
    /// the framed message and the signature (the last two have fixed
    /// lengths for one key).
    fn check_id(&self, digest: &[u8; 32], signature: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update((self.spki.len() as u64).to_be_bytes());
        hasher.update(&self.spki);
        hasher.update(digest);
        hasher.update(signature);
        hasher.finalize().into()
    }

    /// The same check made by `rsa`: the fallback, and the reference the
    /// tests hold `ring` to.
    fn verify_with_rsa(
        &self,
        purpose: Purpose,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        let digest = purpose.digest(message);
        self.key
            .pss_verify_prehash::<Sha256>(&digest, signature)
            .map_err(|_| CryptoError::BadSignature)
    }

    /// Wraps a short secret (a symmetric key) with RSA-OAEP-SHA256.
    pub fn wrap(&self, secret: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.key
            .oaep_encrypt::<Sha256>(secret)
            .map_err(|_| CryptoError::Rsa)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PublicKey({}, {} bits)",
            self.node_id().fmt_short(),
            self.bits()
        )
    }
}

/// A passphrase. Zeroed on drop and never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase; trailing newlines (from files) are removed.
    pub fn new(mut text: String) -> Self {
        while text.ends_with('\n') || text.ends_with('\r') {
            text.pop();
        }
        Self(Zeroizing::new(text))
    }

    /// Whether two passphrases are the same (to confirm a typed one).
    pub fn same_as(&self, other: &Passphrase) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }

    /// Whether the passphrase is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// A 256-bit AES-GCM key. Zeroed on drop and never printed.
#[derive(Clone)]
pub struct SymmetricKey(Zeroizing<[u8; SYMMETRIC_KEY_LEN]>);

impl SymmetricKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(Zeroizing::new(rand::random()))
    }

    /// Wraps key bytes; they must be exactly 32.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; SYMMETRIC_KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::MalformedKey("symmetric key must be 32 bytes"))?;
        Ok(Self(Zeroizing::new(array)))
    }

    /// The key bytes, e.g. to wrap them.
    pub fn as_bytes(&self) -> &[u8; SYMMETRIC_KEY_LEN] {
        &self.0
    }

    /// Encrypts and authenticates `plaintext` and `aad`. The nonce must never
    /// repeat under one key.
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut sealed = Vec::with_capacity(plaintext.len() + TAG_LEN);
        sealed.extend_from_slice(plaintext);
        self.seal_in_place(nonce, aad, &mut sealed)?;
        Ok(sealed)
    }

    /// [`SymmetricKey::seal`] over `buffer`'s bytes, in place: they become
    /// the ciphertext, and the tag is appended (no copy if `buffer` has room
    /// for it).
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buffer: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        self.cipher()?
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                buffer,
            )
            .map_err(|_| CryptoError::Seal)
    }

    /// Decrypts and checks a ciphertext sealed with the same nonce and AAD.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut buffer = ciphertext.to_vec();
        let plaintext_len = self
            .cipher()?
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                &mut buffer,
            )
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }

    fn cipher(&self) -> Result<ring::aead::LessSafeKey, CryptoError> {
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, self.0.as_slice())
            .map(ring::aead::LessSafeKey::new)
            .map_err(|_| CryptoError::MalformedKey("bad AES key"))
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(..)")
    }
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// HMAC-SHA256.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivateKey {
        PrivateKey::generate(2048).unwrap()
    }

    #[test]
    fn ring_and_rsa_signatures_are_interchangeable() {
        for bits in [2048, 3072] {
            let key = PrivateKey::generate(bits).unwrap();
            assert!(key.ring_signer().is_some(), "ring takes {bits}-bit keys");
            let public = key.public_key();
            let by_ring = key.sign(Purpose::Manifest, b"body").unwrap();
            let by_rsa = key.sign_with_rsa(Purpose::Manifest, b"body").unwrap();
            assert_eq!(by_ring.len(), bits / 8);
            public.verify(Purpose::Manifest, b"body", &by_ring).unwrap();
            public.verify(Purpose::Manifest, b"body", &by_rsa).unwrap();
            assert!(public.ring_parts.is_some(), "ring takes e = 65537");
            public
                .verify_with_rsa(Purpose::Manifest, b"body", &by_ring)
                .unwrap();
            public
                .verify_with_rsa(Purpose::Manifest, b"body", &by_rsa)
                .unwrap();
            for check in [PublicKey::verify, PublicKey::verify_with_rsa] {
                assert!(check(public, Purpose::Audit, b"body", &by_ring).is_err());
                assert!(check(public, Purpose::Manifest, b"bodY", &by_ring).is_err());
                let mut flipped = by_rsa.clone();
                flipped[bits / 16] ^= 1;
                assert!(check(public, Purpose::Manifest, b"body", &flipped).is_err());
            }
        }
    }

    #[test]
    fn signatures_are_bound_to_purpose_and_message() {
        let key = key();
        let public = key.public_key();
        let sig = key.sign(Purpose::Identity, b"hello").unwrap();
        // The first check is remembered (and answers the second); it
        // vouches for nothing else: every check below differs in one part.
        public.verify(Purpose::Identity, b"hello", &sig).unwrap();
        public.verify(Purpose::Identity, b"hello", &sig).unwrap();
        assert!(public.verify(Purpose::Record, b"hello", &sig).is_err());
        assert!(public.verify(Purpose::Identity, b"hellO", &sig).is_err());
        let mut flipped = sig.clone();
        flipped[10] ^= 1;
        assert!(
            public
                .verify(Purpose::Identity, b"hello", &flipped)
                .is_err()
        );
        assert!(
            public
                .verify(Purpose::Identity, b"hello", &sig[1..])
                .is_err()
        );
        let other = PrivateKey::generate(2048).unwrap();
        assert!(
            other
                .public_key()
                .verify(Purpose::Identity, b"hello", &sig)
                .is_err()
        );
    }

    #[test]
    fn wrapping_round_trips() {
        let key = key();
        let secret = SymmetricKey::generate();
        let wrapped = key.public_key().wrap(secret.as_bytes()).unwrap();
        let unwrapped = key.unwrap(&wrapped).unwrap();
        assert_eq!(unwrapped.as_slice(), secret.as_bytes());
        let mut bad = wrapped.clone();
        bad[0] ^= 1;
        assert!(key.unwrap(&bad).is_err());
    }

    #[test]
    fn aead_detects_tampering() {
        let key = SymmetricKey::generate();
        let nonce = [7u8; NONCE_LEN];
        let sealed = key.seal(&nonce, b"aad", b"secret data").unwrap();
        assert_eq!(key.open(&nonce, b"aad", &sealed).unwrap(), b"secret data");
        assert!(key.open(&nonce, b"aaD", &sealed).is_err());
        assert!(key.open(&[8u8; NONCE_LEN], b"aad", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert!(key.open(&nonce, b"aad", &bad).is_err());
    }

    #[test]
    fn pem_round_trips_with_and_without_passphrase() {
        let key = key();
        let pem = key.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = PrivateKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.public_key(), key.public_key());

        let pass = Passphrase::new("correct horse\n".into());
        let enc = key.to_encrypted_pem(&pass).unwrap();
        assert!(enc.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let back =
            PrivateKey::from_encrypted_pem(&enc, &Passphrase::new("correct horse".into())).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert!(matches!(
            PrivateKey::from_encrypted_pem(&enc, &Passphrase::new("wrong".into())),
            Err(CryptoError::Passphrase)
        ));

        let public_pem = key.public_key().to_pem().unwrap();
        assert_eq!(&PublicKey::from_pem(&public_pem).unwrap(), key.public_key());
    }

    #[test]
    fn public_keys_from_peers_are_checked() {
        let key = key();
        let der = key.public_key().spki_der().to_vec();
        assert_eq!(&PublicKey::from_spki_der(&der).unwrap(), key.public_key());
        // The second decoding comes from the cache and is the same key.
        assert_eq!(&PublicKey::from_spki_der(&der).unwrap(), key.public_key());
        // A cached key does not stand in for a damaged copy of it.
        assert!(PublicKey::from_spki_der(&der[..der.len() - 1]).is_err());
        let mut flipped = der.clone();
        flipped[der.len() / 2] ^= 0x10;
        assert_ne!(
            PublicKey::from_spki_der(&flipped).ok().as_ref(),
            Some(key.public_key())
        );
        assert!(PublicKey::from_spki_der(b"").is_err());
        assert!(PublicKey::from_spki_der(&[0x30; 2000]).is_err());
        assert!(matches!(
            PrivateKey::generate(1024),
            Err(CryptoError::KeySize(1024))
        ));
    }

    #[test]
    fn sealing_matches_rustcrypto_aes_gcm() {
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        let key = SymmetricKey::generate();
        let reference = aes_gcm::Aes256Gcm::new_from_slice(key.as_bytes()).unwrap();
        let nonce = [9u8; NONCE_LEN];
        for len in [0, 1, 15, 16, 17, 4096, 100_003] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let ours = key.seal(&nonce, b"aad", &plaintext).unwrap();
            let theirs = reference
                .encrypt(
                    &nonce.into(),
                    Payload {
                        msg: &plaintext,
                        aad: b"aad",
                    },
                )
                .unwrap();
            assert_eq!(ours, theirs, "{len} bytes");
            assert_eq!(ours.len(), len + TAG_LEN);
            assert_eq!(key.open(&nonce, b"aad", &theirs).unwrap(), plaintext);
            assert!(key.open(&nonce, b"aaD", &ours).is_err());
            assert!(key.open(&[8u8; NONCE_LEN], b"aad", &ours).is_err());
            let mut flipped = ours.clone();
            flipped[len / 2] ^= 0x40;
            assert!(key.open(&nonce, b"aad", &flipped).is_err());
            assert!(key.open(&nonce, b"aad", &ours[..ours.len() - 1]).is_err());
        }
        assert!(key.open(&nonce, b"aad", b"short").is_err());
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let key = key();
        let printed = format!(
            "{key:?} {:?} {:?}",
            SymmetricKey::generate(),
            Passphrase::new("pw".into())
        );
        assert!(printed.starts_with("PrivateKey("));
        assert!(!printed.contains("pw\""));
        assert!(!printed.contains("BEGIN"));
    }
}
