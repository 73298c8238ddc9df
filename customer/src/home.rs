//! The customer's home directory (`~/.silt`, `--home`, `SILT_HOME`):
//!
//! ```text
//! config.toml     user ID, identity server, bootstrap seeds, listen address
//! identity        the signed identity document (protobuf envelope), 0600
//! state.json      what has been published, 0600
//! pins.json       trust-on-first-use pins of other users' master keys
//! keys/           the keystore, one 0600 file per key
//! .lock           held while the home is being changed
//! ```
//!
//! A home is initialised once the identity file and config exist; `init`
//! writes the master key first, then the identity, then the config, so a
//! crash leaves either nothing usable or a complete home.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::atomic_file::{self, PRIVATE_FILE_MODE};
use common::crypto::{Passphrase, PrivateKey};
use common::id::{KeyId, UserId};
use common::identity::{IdentityDocument, IdentityError, PinStore, SignedIdentity};
use common::keystore::{Keystore, KeystoreError, NewKey, Origin};
use common::lockfile::FileLock;
use serde::{Deserialize, Serialize};

const CONFIG_FILE: &str = "config.toml";
const IDENTITY_FILE: &str = "identity";
const STATE_FILE: &str = "state.json";
const PINS_FILE: &str = "pins.json";
const KEYS_DIR: &str = "keys";
const LOCK_FILE: &str = ".lock";

/// Why a home operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// The home is not initialised.
    #[error("{0} is not initialised: run `silt init --name NAME --id-server HOST[:PORT]` first")]
    NotInitialised(PathBuf),
    /// The home is already initialised.
    #[error("{home} is already initialised{who}; refusing to overwrite it")]
    AlreadyInitialised {
        /// The home.
        home: PathBuf,
        /// ` as user@idhost`, when known.
        who: String,
    },
    /// A master key exists without an identity (an interrupted init).
    #[error(
        "{0} holds a master key but no identity (an interrupted `silt init`?); \
         move the keys directory away to start again"
    )]
    Incomplete(PathBuf),
    /// The config file is invalid.
    #[error("invalid config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The keystore failed.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// The identity failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerConfig {
    /// `user@idhost`.
    pub user_id: UserId,
    /// The identity server, `host:port`.
    pub id_server: String,
    /// DHT seeds, `host:port`.
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Where `silt daemon` listens.
    pub listen: SocketAddr,
}

/// `state.json`: what the network has seen of us.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The identity revision the identity server last accepted.
    #[serde(default)]
    pub published_revision: Option<u64>,
}

/// What `silt init` and `silt identity restore` need.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// `user@idhost`.
    pub user_id: UserId,
    /// The identity server, `host:port`.
    pub id_server: String,
    /// DHT seeds.
    pub bootstrap: Vec<String>,
    /// Where `silt daemon` listens.
    pub listen: SocketAddr,
}

/// A customer home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// The home at `dir` (not necessarily initialised).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The keystore.
    pub fn keystore(&self) -> Result<Keystore, HomeError> {
        Ok(Keystore::open(self.dir.join(KEYS_DIR))?)
    }

    /// The pins of other users' master keys.
    pub fn pins(&self) -> PinStore {
        PinStore::new(self.dir.join(PINS_FILE))
    }

    /// Whether `init` has completed here.
    pub fn is_initialised(&self) -> bool {
        self.dir.join(CONFIG_FILE).exists() && self.dir.join(IDENTITY_FILE).exists()
    }

    fn lock(&self) -> Result<FileLock, HomeError> {
        atomic_file::create_private_dir(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.dir.join(LOCK_FILE);
        FileLock::exclusive(&path).map_err(io_err(&path))
    }

    /// Reads `config.toml`.
    pub fn config(&self) -> Result<CustomerConfig, HomeError> {
        let path = self.dir.join(CONFIG_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(HomeError::NotInitialised(self.dir.clone()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        toml::from_str(&text).map_err(|e| HomeError::Config {
            path,
            reason: e.to_string(),
        })
    }

    /// Reads and verifies the signed identity document.
    pub fn identity(&self) -> Result<SignedIdentity, HomeError> {
        let path = self.dir.join(IDENTITY_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(HomeError::NotInitialised(self.dir.clone()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(SignedIdentity::from_bytes(&bytes)?)
    }

    /// Reads `state.json`; a missing file is the empty state.
    pub fn state(&self) -> Result<State, HomeError> {
        let path = self.dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| HomeError::Config {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Replaces `state.json`.
    pub fn set_state(&self, state: &State) -> Result<(), HomeError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| HomeError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        atomic_file::write(&path, &bytes, PRIVATE_FILE_MODE).map_err(io_err(&path))
    }

    /// The master key ID of this home's user.
    pub fn master_key_id(&self) -> Result<KeyId, HomeError> {
        Ok(KeyId::master(self.config()?.user_id))
    }

    /// Whether the master key is passphrase-protected.
    pub fn master_is_protected(&self) -> Result<bool, HomeError> {
        let key_id = self.master_key_id()?;
        Ok(self.keystore()?.load_public(&key_id)?.1.encrypted)
    }

    /// Loads the master key; `passphrase` is needed if it is protected
    /// (see [`Home::master_is_protected`]).
    pub fn master_key(&self, passphrase: Option<&Passphrase>) -> Result<PrivateKey, HomeError> {
        let key_id = self.master_key_id()?;
        Ok(self.keystore()?.load_private(&key_id, passphrase)?.0)
    }

    /// Makes a new identity: a master key (protected by `passphrase` if
    /// given), a signed identity document and the config.
    pub fn init(
        &self,
        options: &InitOptions,
        key_bits: usize,
        passphrase: Option<&Passphrase>,
    ) -> Result<SignedIdentity, HomeError> {
        let master = PrivateKey::generate(key_bits).map_err(|e| HomeError::Config {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        let document = IdentityDocument {
            user_id: options.user_id.clone(),
            master_key: master.public_key().clone(),
            endpoints: endpoints(options.listen),
            revision: 1,
            created_unix: common::unix_now(),
        };
        let signed = SignedIdentity::sign(document, &master)?;
        self.install(options, &signed, &master, passphrase)?;
        Ok(signed)
    }

    /// Installs an existing identity (from a backup) into an empty home.
    pub fn install(
        &self,
        options: &InitOptions,
        identity: &SignedIdentity,
        master: &PrivateKey,
        passphrase: Option<&Passphrase>,
    ) -> Result<(), HomeError> {
        let _lock = self.lock()?;
        self.ensure_empty()?;
        let keystore = self.keystore()?;
        let key_id = KeyId::master(options.user_id.clone());
        keystore.add_private(
            NewKey {
                key_id,
                label: "identity key".into(),
                epoch: 0,
                origin: Origin::Created,
            },
            master,
            passphrase,
        )?;
        let identity_path = self.dir.join(IDENTITY_FILE);
        atomic_file::write_new(&identity_path, &identity.to_bytes(), PRIVATE_FILE_MODE)
            .map_err(io_err(&identity_path))?;
        let config = CustomerConfig {
            user_id: options.user_id.clone(),
            id_server: options.id_server.clone(),
            bootstrap: options.bootstrap.clone(),
            listen: options.listen,
        };
        let config_path = self.dir.join(CONFIG_FILE);
        let text = toml::to_string_pretty(&config).map_err(|e| HomeError::Config {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        atomic_file::write_new(&config_path, text.as_bytes(), PRIVATE_FILE_MODE)
            .map_err(io_err(&config_path))?;
        Ok(())
    }

    /// Undoes an `init` whose identity was never used: the identity server
    /// refused the name. Removes the config, identity, state and master key.
    pub fn discard_new_identity(&self) -> Result<(), HomeError> {
        let key_id = self.master_key_id()?;
        let _lock = self.lock()?;
        for file in [CONFIG_FILE, IDENTITY_FILE, STATE_FILE] {
            let path = self.dir.join(file);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        self.keystore()?.discard_unused_master(&key_id)?;
        Ok(())
    }

    /// Fails if this home already holds an identity (or the master key of an
    /// interrupted init), so nothing is ever overwritten.
    pub fn ensure_empty(&self) -> Result<(), HomeError> {
        if self.dir.join(CONFIG_FILE).exists() || self.dir.join(IDENTITY_FILE).exists() {
            let who = self
                .config()
                .map(|c| format!(" as {}", c.user_id))
                .unwrap_or_default();
            return Err(HomeError::AlreadyInitialised {
                home: self.dir.clone(),
                who,
            });
        }
        let keystore = self.keystore()?;
        if keystore.list()?.keys.iter().any(|k| k.key_id.is_master()) {
            return Err(HomeError::Incomplete(self.dir.clone()));
        }
        Ok(())
    }
}

/// The endpoints an identity document advertises for a listen address: none
/// for an unspecified address (0.0.0.0), which nobody could dial.
fn endpoints(listen: SocketAddr) -> Vec<String> {
    if listen.ip().is_unspecified() {
        Vec::new()
    } else {
        vec![listen.to_string()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> InitOptions {
        InitOptions {
            user_id: "alice@127.0.0.1".parse().unwrap(),
            id_server: "127.0.0.1:7700".into(),
            bootstrap: vec![],
            listen: "127.0.0.1:7700".parse().unwrap(),
        }
    }

    #[test]
    fn init_once_then_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home"));
        assert!(matches!(home.config(), Err(HomeError::NotInitialised(_))));
        let signed = home.init(&options(), 2048, None).unwrap();
        assert!(home.is_initialised());
        assert_eq!(home.identity().unwrap(), signed);
        assert_eq!(
            home.config().unwrap().user_id.to_string(),
            "alice@127.0.0.1"
        );
        let master = home.master_key(None).unwrap();
        assert_eq!(master.public_key(), &signed.document().master_key);

        let err = home.init(&options(), 2048, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("already initialised as alice@127.0.0.1"),
            "{err}"
        );
        // The refused second init changed nothing.
        assert_eq!(home.identity().unwrap(), signed);
    }

    #[test]
    fn protected_master_keys_ask_for_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_owned());
        let pass = Passphrase::new("pass phrase".into());
        home.init(&options(), 2048, Some(&pass)).unwrap();
        assert!(home.master_is_protected().unwrap());
        home.master_key(Some(&pass)).unwrap();
        assert!(home.master_key(None).is_err());
        assert!(
            home.master_key(Some(&Passphrase::new("bad".into())))
                .is_err()
        );
    }

    #[test]
    fn a_discarded_identity_leaves_an_empty_home() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_owned());
        home.init(&options(), 2048, None).unwrap();
        home.discard_new_identity().unwrap();
        assert!(!home.is_initialised());
        home.init(&options(), 2048, None).unwrap();
    }
}
