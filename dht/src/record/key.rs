//! Record keys: `suppliers/<user@idhost>` and `identity/<user@idhost>`.
//!
//! A key parses only in its canonical form (the user ID as
//! [`UserId`]'s `Display` writes it), so one record has exactly one key and
//! one position in the keyspace.

use std::fmt;
use std::str::FromStr;

use common::id::UserId;
use proto::dht::v1::RecordType;

use crate::distance::Key;
use crate::error::Error;

/// What a record holds, named by its key's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    /// `identity/<user@idhost>`: the user's signed identity document.
    Identity,
    /// `suppliers/<user@idhost>`: the user's suppliers, by position.
    Suppliers,
}

impl RecordKind {
    /// The key prefix, without the slash.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Suppliers => "suppliers",
        }
    }

    /// The wire type.
    pub fn to_proto(self) -> RecordType {
        match self {
            Self::Identity => RecordType::Identity,
            Self::Suppliers => RecordType::Suppliers,
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// The key of a record: a kind and the user it is about.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    kind: RecordKind,
    // Boxed to keep the key (and every error that names one) small.
    user: Box<UserId>,
}

impl RecordKey {
    /// Joins a kind and a user.
    pub fn new(kind: RecordKind, user: UserId) -> Self {
        Self {
            kind,
            user: Box::new(user),
        }
    }

    /// `identity/<user>`.
    pub fn identity(user: UserId) -> Self {
        Self::new(RecordKind::Identity, user)
    }

    /// `suppliers/<user>`.
    pub fn suppliers(user: UserId) -> Self {
        Self::new(RecordKind::Suppliers, user)
    }

    /// The kind.
    pub fn kind(&self) -> RecordKind {
        self.kind
    }

    /// The user the record is about.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The record's position in the keyspace: the SHA-256 of the key string.
    pub fn position(&self) -> Key {
        Key::for_record(&self.to_string())
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.prefix(), self.user)
    }
}

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordKey({self})")
    }
}

impl FromStr for RecordKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| Error::BadKey {
            key: s.chars().take(MAX_QUOTED_KEY).collect(),
            reason,
        };
        let (prefix, user) = s
            .split_once('/')
            .ok_or_else(|| bad("expected suppliers/<user@idhost> or identity/<user@idhost>"))?;
        let kind = match prefix {
            "identity" => RecordKind::Identity,
            "suppliers" => RecordKind::Suppliers,
            _ => return Err(bad("the prefix must be suppliers/ or identity/")),
        };
        let user: UserId = user
            .parse()
            .map_err(|_| bad("the part after the prefix is not a valid user@idhost"))?;
        let key = Self::new(kind, user);
        if key.to_string() != s {
            return Err(bad("the user id is not in canonical form"));
        }
        Ok(key)
    }
}

/// How much of a refused key an error quotes.
const MAX_QUOTED_KEY: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_in_canonical_form_only() {
        let key: RecordKey = "suppliers/alice@id-a".parse().unwrap();
        assert_eq!(key.kind(), RecordKind::Suppliers);
        assert_eq!(key.user().to_string(), "alice@id-a");
        assert_eq!(key.to_string(), "suppliers/alice@id-a");
        assert_eq!(key.position(), Key::for_record("suppliers/alice@id-a"));
        let key: RecordKey = "identity/bob@127.0.0.1_9000".parse().unwrap();
        assert_eq!(key.kind(), RecordKind::Identity);
        assert_eq!(
            key,
            RecordKey::identity("bob@127.0.0.1_9000".parse().unwrap())
        );

        for (bad, why) in [
            ("", "expected"),
            ("suppliers", "expected"),
            ("manifest/alice@id-a", "prefix"),
            ("Suppliers/alice@id-a", "prefix"),
            ("suppliers/", "valid user"),
            ("suppliers/Alice@id-a", "valid user"),
            ("suppliers/alice@id-a/x", "valid user"),
            ("suppliers/alice@id-a_7700", "canonical"),
        ] {
            let err = bad.parse::<RecordKey>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn refused_keys_are_quoted_briefly() {
        let long = format!("suppliers/{}", "a".repeat(10_000));
        let err = long.parse::<RecordKey>().unwrap_err().to_string();
        assert!(err.len() < 500, "{}", err.len());
    }
}
