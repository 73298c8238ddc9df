//! The supplier's configuration: TOML file, then `SILT_SUPPLIER_*`
//! environment variables, then flags (clap handles the last two).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// Name of the config file `silt-supplier init` writes in the data directory.
pub const CONFIG_FILE: &str = "supplier.toml";

/// Everything a supplier needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory: node key and database.
    pub data: PathBuf,
    /// The supplier's user name (`NAME@idhost`), set by `init`. `None`: not
    /// yet initialised.
    pub name: Option<String>,
    /// The identity server the supplier's own identity lives on,
    /// `host[:port]`. `None`: the supplier has no published identity.
    pub id_server: Option<String>,
    /// Bytes this supplier offers to customers in total.
    pub capacity: ByteSize,
    /// Bytes kept free on the data directory's disk: new fragments and
    /// mailbox messages are refused below it, so that the database can
    /// still flush, and customers can still delete, when the disk fills.
    pub min_free_disk: ByteSize,
    /// Address the mutual-TLS gRPC port binds to.
    pub listen: SocketAddr,
    /// `host:port` others reach this node at. `None`: the listen address.
    pub public_addr: Option<String>,
    /// DHT seeds, `host:port`.
    pub bootstrap: Vec<String>,
    /// Whether to serve the identity server role.
    pub identity_server: bool,
    /// The identity host this server hosts names for (`host` or `host_port`).
    /// `None`: derived from `public_addr`, or else from `listen`.
    pub identity_host: Option<String>,
    /// Address of the Prometheus `/metrics` endpoint (plain HTTP, metrics
    /// only). `None`: disabled.
    pub metrics: Option<SocketAddr>,
    /// How long shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest fragment accepted.
    pub max_fragment: ByteSize,
    /// Versions of each object kept.
    pub keep_versions: usize,
    /// Most customers holding contracts at once; `Hire` from a new
    /// customer is refused beyond it. Each customer's DHT records are kept
    /// whatever strangers send, so this also bounds how much of the DHT
    /// store customers alone can take (two records each, of 100,000).
    pub max_customers: usize,
    /// Staged fragments no manifest claims are deleted this long after the
    /// last fragment of their version arrived.
    #[serde(with = "humantime_serde")]
    pub staged_ttl: Duration,
    /// How often staged fragments are collected.
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    /// How long a member's proof of a share key holds on its connection
    /// (1 s to 1 day); members prove again before it lapses.
    #[serde(with = "humantime_serde")]
    pub grant_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data: PathBuf::from("silt-supplier-data"),
            name: None,
            id_server: None,
            capacity: ByteSize::gib(10),
            min_free_disk: ByteSize::b(crate::store::DEFAULT_MIN_FREE_DISK),
            listen: SocketAddr::from(([0, 0, 0, 0], common::id::DEFAULT_PORT)),
            public_addr: None,
            bootstrap: Vec::new(),
            identity_server: false,
            identity_host: None,
            metrics: None,
            shutdown_grace: Duration::from_secs(8),
            max_fragment: ByteSize::mib(32),
            keep_versions: 3,
            max_customers: 10_000,
            staged_ttl: Duration::from_secs(3600),
            gc_interval: Duration::from_secs(60),
            grant_ttl: Duration::from_secs(300),
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// A config for tests: data in `dir`, an ephemeral loopback port, the
    /// identity server role on, 1 GiB of capacity, and staged fragments
    /// collected after a second.
    pub fn for_tests(dir: &Path) -> Self {
        Self {
            data: dir.to_owned(),
            name: Some("supplier".into()),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            identity_server: true,
            capacity: ByteSize::gib(1),
            shutdown_grace: Duration::from_secs(2),
            staged_ttl: Duration::from_secs(1),
            gc_interval: Duration::from_millis(200),
            ..Self::default()
        }
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The TOML text of this config.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid() {
        let example: Config =
            toml::from_str(include_str!("../../deploy/supplier.example.toml")).unwrap();
        assert_eq!(example.capacity, ByteSize::gib(500));
        assert_eq!(example.metrics, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn round_trips_and_refuses_unknown_fields() {
        let config = Config {
            capacity: ByteSize::mib(512),
            metrics: Some("127.0.0.1:9100".parse().unwrap()),
            ..Config::default()
        };
        let text = config.to_toml().unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
        let parsed: Config =
            toml::from_str("capacity = \"2 GiB\"\nshutdown_grace = \"3s\"").unwrap();
        assert_eq!(parsed.capacity, ByteSize::gib(2));
        assert_eq!(parsed.shutdown_grace, Duration::from_secs(3));
        let err = toml::from_str::<Config>("capasity = \"1 GiB\"").unwrap_err();
        assert!(err.to_string().contains("capasity"), "{err}");
    }
}
