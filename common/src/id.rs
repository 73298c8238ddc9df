//! Node IDs, global user IDs and key IDs, with strict parsing.
//!
//! - A [`NodeId`] is the SHA-256 of a master public key (SubjectPublicKeyInfo DER).
//! - A [`UserId`] is `user@idhost`: a [`UserName`] and the [`IdHost`] of the
//!   identity server that holds the user's identity document. The default port
//!   7700 is left out; any other port is written `host_port`.
//! - A [`KeyId`] is `alias$user@idhost`: an [`Alias`] and the owner's [`UserId`].
//!
//! Every type parses from its display form and displays in one canonical form,
//! so `parse(display(x)) == x` always holds. Parsing accepts one non-canonical
//! spelling, `host_7700`, and drops the default port.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The default port of every Silt node.
pub const DEFAULT_PORT: u16 = 7700;

/// Alias of the identity key of every user.
pub const MASTER_ALIAS: &str = "master";

/// Why an ID did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A node ID is not 64 hex characters.
    #[error("node id must be 64 hex characters (a SHA-256), got {0:?}")]
    NodeId(String),
    /// A user name breaks the rules.
    #[error("invalid user name {name:?}: {reason}")]
    UserName {
        /// The offending input.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An identity host breaks the rules.
    #[error("invalid identity host {host:?}: {reason}")]
    IdHost {
        /// The offending input.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A user ID is not `user@idhost`.
    #[error("invalid user id {0:?}: expected user@idhost, e.g. alice@id.example.org")]
    UserId(String),
    /// An alias breaks the rules.
    #[error("invalid key alias {alias:?}: {reason}")]
    Alias {
        /// The offending input.
        alias: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key ID is not `alias$user@idhost`.
    #[error("invalid key id {0:?}: expected alias$user@idhost, e.g. photos$alice@id.example.org")]
    KeyId(String),
}

/// A node's identity: SHA-256 of its master public key (SPKI DER).
/// It is also the node's Kademlia ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// Wraps 32 raw bytes.
    pub const fn from_array(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses a node ID from the wire; it must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| IdError::NodeId(format!("{} bytes", bytes.len())))?;
        Ok(Self(array))
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 hex characters, for logs.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.fmt_short())
    }
}

impl FromStr for NodeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 64 {
            return Err(IdError::NodeId(s.to_owned()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| IdError::NodeId(s.to_owned()))?;
        Ok(Self(bytes))
    }
}

/// The local part of a user ID: 3–20 characters of `a-z0-9_-`, starting with a letter.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

impl UserName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UserName {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_word(s, 3, 20, "must be 3 to 20 characters").map_err(|reason| IdError::UserName {
            name: s.to_owned(),
            reason,
        })?;
        Ok(Self(s.to_owned()))
    }
}

/// The host of an identity server, with its port when that is not 7700.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdHost {
    host: String,
    port: u16,
}

impl IdHost {
    /// Builds an identity host from a host name (or IPv4 address) and a port.
    /// The host is lowercased.
    pub fn new(host: &str, port: u16) -> Result<Self, IdError> {
        let lower = host.to_ascii_lowercase();
        check_host(&lower).map_err(|reason| IdError::IdHost {
            host: host.to_owned(),
            reason,
        })?;
        if port == 0 {
            return Err(IdError::IdHost {
                host: host.to_owned(),
                reason: "port 0 is not a port",
            });
        }
        Ok(Self { host: lower, port })
    }

    /// Parses a server address as a user types it: `host` or `host:port`.
    pub fn from_server_addr(addr: &str) -> Result<Self, IdError> {
        let bad = |reason| IdError::IdHost {
            host: addr.to_owned(),
            reason,
        };
        match addr.rsplit_once(':') {
            None => Self::new(addr, DEFAULT_PORT),
            Some((host, port)) => {
                let port = parse_port(port).ok_or_else(|| bad("port must be 1-65535"))?;
                Self::new(host, port)
            }
        }
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, for dialling.
    pub fn server_addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for IdHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == DEFAULT_PORT {
            f.write_str(&self.host)
        } else {
            write!(f, "{}_{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for IdHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdHost({self})")
    }
}

impl FromStr for IdHost {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| IdError::IdHost {
            host: s.to_owned(),
            reason,
        };
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("must be lowercase"));
        }
        match s.split_once('_') {
            None => Self::new(s, DEFAULT_PORT),
            Some((host, port)) => {
                let port = parse_port(port).ok_or_else(|| bad("port after '_' must be 1-65535"))?;
                Self::new(host, port)
            }
        }
    }
}

/// A global user ID, `user@idhost`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId {
    user: UserName,
    idhost: IdHost,
}

impl UserId {
    /// Joins a user name and an identity host.
    pub fn new(user: UserName, idhost: IdHost) -> Self {
        Self { user, idhost }
    }

    /// The local part.
    pub fn user(&self) -> &UserName {
        &self.user
    }

    /// The identity server's host.
    pub fn idhost(&self) -> &IdHost {
        &self.idhost
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.user.0, self.idhost)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({self})")
    }
}

impl FromStr for UserId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, idhost) = s
            .split_once('@')
            .ok_or_else(|| IdError::UserId(s.to_owned()))?;
        Ok(Self {
            user: user.parse()?,
            idhost: idhost.parse()?,
        })
    }
}

/// A key alias: 3–50 characters of `a-z0-9_-`, starting with a letter.
/// `master` names the identity key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Alias(String);

impl Alias {
    /// The alias of the identity key.
    pub fn master() -> Self {
        Self(MASTER_ALIAS.to_owned())
    }

    /// A fresh random share alias, `share_<32 hex>`.
    pub fn random_share() -> Self {
        let bytes: [u8; 16] = rand::random();
        Self(format!("share_{}", hex::encode(bytes)))
    }

    /// Whether this is the identity key's alias.
    pub fn is_master(&self) -> bool {
        self.0 == MASTER_ALIAS
    }

    /// The alias as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Alias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Alias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Alias({})", self.0)
    }
}

impl FromStr for Alias {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        check_word(s, 3, 50, "must be 3 to 50 characters").map_err(|reason| IdError::Alias {
            alias: s.to_owned(),
            reason,
        })?;
        Ok(Self(s.to_owned()))
    }
}

/// A key ID, `alias$user@idhost`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId {
    alias: Alias,
    owner: UserId,
}

impl KeyId {
    /// Joins an alias and its owner.
    pub fn new(alias: Alias, owner: UserId) -> Self {
        Self { alias, owner }
    }

    /// The master key ID of a user.
    pub fn master(owner: UserId) -> Self {
        Self::new(Alias::master(), owner)
    }

    /// The alias.
    pub fn alias(&self) -> &Alias {
        &self.alias
    }

    /// The owner.
    pub fn owner(&self) -> &UserId {
        &self.owner
    }

    /// Whether this is a master key.
    pub fn is_master(&self) -> bool {
        self.alias.is_master()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}${}", self.alias, self.owner)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alias, owner) = s
            .split_once('$')
            .ok_or_else(|| IdError::KeyId(s.to_owned()))?;
        Ok(Self {
            alias: alias.parse()?,
            owner: owner.parse()?,
        })
    }
}

macro_rules! serde_via_string {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_via_string!(NodeId, UserId, KeyId, Alias);

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserName({})", self.0)
    }
}

/// Checks the shared rule of user names and aliases.
/// `length_rule` is the message given when the length is out of range.
fn check_word(
    s: &str,
    min: usize,
    max: usize,
    length_rule: &'static str,
) -> Result<(), &'static str> {
    if s.len() < min || s.len() > max {
        return Err(length_rule);
    }
    if !s.as_bytes()[0].is_ascii_lowercase() {
        return Err("must start with a lowercase letter a-z");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err("may only contain a-z, 0-9, '_' and '-'");
    }
    Ok(())
}

/// Checks a lowercase DNS name or IPv4 address.
fn check_host(host: &str) -> Result<(), &'static str> {
    if host.is_empty() {
        return Err("host is empty");
    }
    if host.len() > 253 {
        return Err("host is longer than 253 characters");
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated part must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("may only contain a-z, 0-9, '-' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a part may not start or end with '-'");
        }
    }
    let all_numeric = host
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if all_numeric && host.parse::<std::net::Ipv4Addr>().is_err() {
        return Err("looks like an IPv4 address but is not one");
    }
    Ok(())
}

/// Parses a canonical decimal port: 1–65535, no sign, no leading zeros.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn user_ids_parse_and_print_canonically() {
        let id: UserId = "alice@id.example.org".parse().unwrap();
        assert_eq!(id.user().as_str(), "alice");
        assert_eq!(id.idhost().port(), DEFAULT_PORT);
        assert_eq!(id.to_string(), "alice@id.example.org");

        let id: UserId = "alice@id-a_7701".parse().unwrap();
        assert_eq!(id.idhost().host(), "id-a");
        assert_eq!(id.idhost().port(), 7701);
        assert_eq!(id.to_string(), "alice@id-a_7701");

        // The default port is dropped.
        let id: UserId = "alice@id-a_7700".parse().unwrap();
        assert_eq!(id.to_string(), "alice@id-a");

        let id: UserId = "bob@127.0.0.1_9000".parse().unwrap();
        assert_eq!(id.idhost().server_addr(), "127.0.0.1:9000");
    }

    #[test]
    fn bad_user_ids_are_refused_with_a_reason() {
        for bad in [
            "",
            "alice",
            "@host",
            "al@host",
            "Alice@host",
            "1alice@host",
            "alice@",
            "alice@Host",
            "alice@host_",
            "alice@host_0",
            "alice@host_070",
            "alice@host_65536",
            "alice@host_-1",
            "alice@-host",
            "alice@ho st",
            "alice@host..org",
            "alice@999.1.1.1",
            "alice@host@x",
            "aliceaaaaaaaaaaaaaaaa@host",
        ] {
            let err = bad.parse::<UserId>().unwrap_err();
            assert!(!err.to_string().is_empty(), "{bad}");
        }
    }

    #[test]
    fn aliases_follow_the_rules() {
        for good in ["abc", "photos", "share_0123", "a-b_c", &"a".repeat(50)] {
            good.parse::<Alias>().unwrap();
        }
        for (bad, why) in [
            ("../x", "start with a lowercase letter"),
            ("A", "3 to 50"),
            ("ab", "3 to 50"),
            (&"a".repeat(51), "3 to 50"),
            ("Photos", "start with a lowercase letter"),
            ("pho.tos", "only contain"),
            ("ph$os", "only contain"),
            ("1abc", "start with a lowercase letter"),
        ] {
            let err = bad.parse::<Alias>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn random_share_aliases_are_valid_and_distinct() {
        let a = Alias::random_share();
        let b = Alias::random_share();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), "share_".len() + 32);
        a.as_str().parse::<Alias>().unwrap();
    }

    #[test]
    fn key_ids_round_trip() {
        let id: KeyId = "photos$alice@id-a_7701".parse().unwrap();
        assert_eq!(id.alias().as_str(), "photos");
        assert_eq!(id.owner().to_string(), "alice@id-a_7701");
        assert_eq!(id.to_string(), "photos$alice@id-a_7701");
        assert!("master$alice@id-a".parse::<KeyId>().unwrap().is_master());
        assert!("photos@alice@id-a".parse::<KeyId>().is_err());
        assert!("ph$alice@id-a".parse::<KeyId>().is_err());
    }

    #[test]
    fn node_ids_round_trip() {
        let id = NodeId::from_array([0xab; 32]);
        assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        assert_eq!(id.fmt_short(), "abababab");
        assert!("abc".parse::<NodeId>().is_err());
        assert!("zz".repeat(32).parse::<NodeId>().is_err());
        assert!(NodeId::from_slice(&[1; 31]).is_err());
    }

    #[test]
    fn server_addresses_become_id_hosts() {
        assert_eq!(
            IdHost::from_server_addr("127.0.0.1:7700")
                .unwrap()
                .to_string(),
            "127.0.0.1"
        );
        assert_eq!(
            IdHost::from_server_addr("ID.Example.org")
                .unwrap()
                .to_string(),
            "id.example.org"
        );
        assert_eq!(
            IdHost::from_server_addr("id-a:9000").unwrap().to_string(),
            "id-a_9000"
        );
        assert!(IdHost::from_server_addr("id-a:").is_err());
        assert!(IdHost::from_server_addr("id_a:7700").is_err());
        assert!(IdHost::from_server_addr("[::1]:7700").is_err());
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_round_trips(s in "\\PC{0,80}") {
            if let Ok(id) = s.parse::<UserId>() {
                prop_assert_eq!(id.to_string().parse::<UserId>().unwrap(), id);
            }
            if let Ok(id) = s.parse::<KeyId>() {
                prop_assert_eq!(id.to_string().parse::<KeyId>().unwrap(), id);
            }
            if let Ok(alias) = s.parse::<Alias>() {
                prop_assert_eq!(alias.to_string(), s.clone());
            }
            let _ = s.parse::<NodeId>();
        }

        #[test]
        fn generated_key_ids_round_trip(
            alias in "[a-z][a-z0-9_-]{2,49}",
            user in "[a-z][a-z0-9_-]{2,19}",
            labels in prop::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..4),
            port in 1u16..,
        ) {
            let host = labels.join(".");
            prop_assume!(!host.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit())));
            let text = format!("{alias}${user}@{host}_{port}");
            let id: KeyId = text.parse().unwrap();
            prop_assert_eq!(id.owner().idhost().port(), port);
            let printed = id.to_string();
            prop_assert_eq!(printed.parse::<KeyId>().unwrap(), id);
            if port != DEFAULT_PORT {
                prop_assert_eq!(printed, text);
            }
        }
    }
}
