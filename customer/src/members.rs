//! The owner's record of whom each share was granted to:
//! `<home>/members.json`, written atomically (mode 0600) under
//! `<home>/.members.lock`, so the CLI and the daemon never race.
//!
//! Only grants are recorded. A key handed over by hand (`silt key export
//! --private`) leaves no trace here, since nothing tells the owner who
//! imported it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use common::atomic_file::{self, PRIVATE_FILE_MODE};
use common::id::{KeyId, UserId};
use common::lockfile::FileLock;
use serde::{Deserialize, Serialize};

const FILE: &str = "members.json";
const LOCK: &str = ".members.lock";
const FORMAT: &str = "silt-members-v1";
/// Largest record read.
const MAX_BYTES: u64 = 16 * 1024 * 1024;

/// One user a share was granted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// `user@idhost`.
    pub user: UserId,
    /// When the last grant to them was delivered, seconds since the Unix
    /// epoch.
    pub granted_unix: i64,
    /// The key epoch they were given.
    pub epoch: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    format: String,
    shares: BTreeMap<KeyId, Vec<Member>>,
}

/// The members record of one home.
#[derive(Debug, Clone)]
pub struct Members {
    dir: PathBuf,
}

impl Members {
    /// The record in the home at `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn read(&self) -> io::Result<File> {
        let path = self.path();
        let bytes = match std::fs::File::open(&path) {
            Ok(file) => {
                let mut bytes = Vec::new();
                io::Read::read_to_end(&mut io::Read::take(file, MAX_BYTES + 1), &mut bytes)?;
                bytes
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(File::default()),
            Err(e) => return Err(e),
        };
        let invalid = |reason: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {reason}", path.display()),
            )
        };
        if bytes.len() as u64 > MAX_BYTES {
            return Err(invalid("the file is too large".into()));
        }
        let file: File = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if file.format != FORMAT {
            return Err(invalid(format!("not a {FORMAT} file")));
        }
        Ok(file)
    }

    /// Changes the record under the lock.
    fn update(&self, change: impl FnOnce(&mut BTreeMap<KeyId, Vec<Member>>)) -> io::Result<()> {
        let _lock = FileLock::exclusive(&self.dir.join(LOCK))?;
        let mut file = self.read()?;
        change(&mut file.shares);
        file.shares.retain(|_, members| !members.is_empty());
        file.format = FORMAT.into();
        let bytes = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
        atomic_file::write(&self.path(), &bytes, PRIVATE_FILE_MODE)
    }

    /// Records that `share` at `epoch` was granted to `user` now.
    pub fn add(&self, share: &KeyId, user: &UserId, epoch: u64) -> io::Result<()> {
        self.update(|shares| {
            let members = shares.entry(share.clone()).or_default();
            members.retain(|m| &m.user != user);
            members.push(Member {
                user: user.clone(),
                granted_unix: common::unix_now(),
                epoch,
            });
            members.sort_by(|a, b| a.user.cmp(&b.user));
        })
    }

    /// Whom `share` was granted to, by name.
    pub fn of(&self, share: &KeyId) -> io::Result<Vec<Member>> {
        Ok(self.read()?.shares.remove(share).unwrap_or_default())
    }

    /// Forgets a deleted share.
    pub fn forget(&self, share: &KeyId) -> io::Result<()> {
        self.update(|shares| {
            shares.remove(share);
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn grants_are_recorded_once_per_user_and_forgotten_with_the_share() {
        let dir = tempfile::tempdir().unwrap();
        let members = Members::new(dir.path());
        let share: KeyId = "album$alice@id-a".parse().unwrap();
        let other: KeyId = "docs$alice@id-a".parse().unwrap();
        let bob: UserId = "bob@id-b".parse().unwrap();
        let carol: UserId = "carol@id-c".parse().unwrap();
        assert!(members.of(&share).unwrap().is_empty());
        members.add(&share, &carol, 0).unwrap();
        members.add(&share, &bob, 0).unwrap();
        members.add(&share, &bob, 0).unwrap();
        members.add(&other, &bob, 0).unwrap();
        let users: Vec<_> = members
            .of(&share)
            .unwrap()
            .into_iter()
            .map(|m| m.user)
            .collect();
        assert_eq!(users, [bob.clone(), carol]);
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        members.forget(&share).unwrap();
        assert!(members.of(&share).unwrap().is_empty());
        assert_eq!(members.of(&other).unwrap().len(), 1);
    }

    #[test]
    fn a_damaged_record_is_an_error_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let members = Members::new(dir.path());
        std::fs::write(dir.path().join(FILE), b"not json").unwrap();
        let share: KeyId = "album$alice@id-a".parse().unwrap();
        let err = members.of(&share).unwrap_err();
        assert!(err.to_string().contains("members.json"), "{err}");
        assert!(
            members
                .add(&share, &"bob@id-b".parse().unwrap(), 0)
                .is_err()
        );
        assert_eq!(std::fs::read(dir.path().join(FILE)).unwrap(), b"not json");
    }
}
