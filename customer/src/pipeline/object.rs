//! Paths and object IDs.
//!
//! An object ID is `HMAC-SHA256(secret, normalized path)`, where the secret is
//! `HMAC-SHA256(key = SHA-256(location private key as PKCS#8 DER), message =
//! "silt-object-id-v1")`. Every member of a location holds its private key,
//! so all members map a path to the same object, while suppliers learn no
//! names.
//!
//! A normalized path is relative to the location's root and uses `/` between
//! components. Leading slashes are dropped (`/a/b` and `a/b` are one object);
//! anything else that could be spelled two ways is refused rather than
//! rewritten: empty components (`a//b`, `a/`), `.` and `..`, and NUL bytes.
//! A backslash is an ordinary character, as it is in Unix file names, so
//! callers that take Windows paths convert separators first. Unicode
//! normalization (NFC) is *not* applied: `é` as one code point and as `e` plus
//! a combining accent are two different objects, so callers that read names
//! from systems that decompose them (macOS) should normalize them first.

use std::fmt;
use std::str::FromStr;

use common::crypto::{PrivateKey, hmac_sha256, sha256};
use common::manifest::ObjectId;
use zeroize::Zeroizing;

use super::PipelineError;

/// Longest normalized path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// The message that derives the object ID secret from the location key.
const OBJECT_ID_LABEL: &[u8] = b"silt-object-id-v1";

/// How much of a refused path an error message shows.
const PATH_PREVIEW_CHARS: usize = 64;

/// A path in a location, normalized as the module documentation describes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NormalPath(String);

impl NormalPath {
    /// Normalizes `path`, or says why it cannot name an object.
    pub fn new(path: &str) -> Result<Self, PipelineError> {
        let bad = |reason| PipelineError::Path {
            path: preview(path),
            reason,
        };
        let relative = path.trim_start_matches('/');
        if relative.is_empty() {
            return Err(bad("the path is empty"));
        }
        if relative.len() > MAX_PATH_BYTES {
            return Err(bad("the path is longer than 4096 bytes"));
        }
        if relative.contains('\0') {
            return Err(bad("the path contains a NUL byte"));
        }
        for component in relative.split('/') {
            match component {
                "" => {
                    return Err(bad(
                        "the path has an empty component (`//` or a trailing `/`)",
                    ));
                }
                "." => return Err(bad("the path has a `.` component")),
                ".." => return Err(bad("the path has a `..` component")),
                _ => {}
            }
        }
        Ok(Self(relative.to_owned()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The reserved path of Silt's own copy of a user's keys in their master
    /// location (`silt key backup`). It starts with a NUL byte, which
    /// [`NormalPath::new`] refuses, so no user path can name it, and
    /// listings leave it out.
    pub fn key_backup() -> Self {
        Self(KEY_BACKUP_PATH.to_owned())
    }

    /// Whether this is a path Silt keeps for itself.
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with('\0')
    }

    /// Reads a path from stored metadata: a user path, or one of Silt's
    /// reserved paths.
    pub(crate) fn from_stored(path: &str) -> Result<Self, PipelineError> {
        if path == KEY_BACKUP_PATH {
            return Ok(Self::key_backup());
        }
        Self::new(path)
    }
}

/// See [`NormalPath::key_backup`].
const KEY_BACKUP_PATH: &str = "\0silt/key-backup-v1";

impl fmt::Display for NormalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NormalPath {
    type Err = PipelineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The secret that maps paths to object IDs in one location. Zeroed on drop
/// and never printed.
#[derive(Clone)]
pub struct ObjectIdKey(Zeroizing<[u8; 32]>);

impl ObjectIdKey {
    /// Derives the secret from the location's private key.
    pub fn derive(location_key: &PrivateKey) -> Result<Self, PipelineError> {
        let seed = location_seed(location_key)?;
        Ok(Self::from_seed(&seed))
    }

    /// The secret under a seed made by [`location_seed`].
    pub(super) fn from_seed(seed: &[u8; 32]) -> Self {
        Self(Zeroizing::new(hmac_sha256(seed, OBJECT_ID_LABEL)))
    }

    /// The object ID of `path`.
    pub fn object_id(&self, path: &NormalPath) -> ObjectId {
        ObjectId(hmac_sha256(self.0.as_slice(), path.as_str().as_bytes()))
    }
}

impl fmt::Debug for ObjectIdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObjectIdKey(..)")
    }
}

/// `SHA-256(location private key as PKCS#8 DER)`: what the location's
/// symmetric secrets are derived from, each under its own label.
pub(super) fn location_seed(
    location_key: &PrivateKey,
) -> Result<Zeroizing<[u8; 32]>, PipelineError> {
    let der = location_key
        .to_pkcs8_der()
        .map_err(PipelineError::KeyDerivation)?;
    Ok(Zeroizing::new(sha256(&der)))
}

/// The start of `path`, for error messages.
fn preview(path: &str) -> String {
    match path.char_indices().nth(PATH_PREVIEW_CHARS) {
        Some((end, _)) => format!("{}…", &path[..end]),
        None => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{LOCATION, OTHER};
    use super::*;

    fn reason(path: &str) -> &'static str {
        match NormalPath::new(path).unwrap_err() {
            PipelineError::Path { reason, .. } => reason,
            other => panic!("{path:?}: unexpected {other}"),
        }
    }

    #[test]
    fn paths_normalize() {
        for (input, normal) in [
            ("a", "a"),
            ("/a/b.txt", "a/b.txt"),
            ("///a/b", "a/b"),
            ("photos/2024/ümlaut .jpg", "photos/2024/ümlaut .jpg"),
            ("a\\b", "a\\b"),
            ("...", "..."),
            (".hidden/..x", ".hidden/..x"),
        ] {
            assert_eq!(
                NormalPath::new(input).unwrap().as_str(),
                normal,
                "{input:?}"
            );
        }
        let longest = "x/".repeat(MAX_PATH_BYTES / 2 - 1) + "yz";
        assert_eq!(longest.len(), MAX_PATH_BYTES);
        assert_eq!(NormalPath::new(&longest).unwrap().as_str(), longest);
        assert_eq!("/a/b".parse::<NormalPath>().unwrap().to_string(), "a/b");
    }

    #[test]
    fn bad_paths_are_refused_with_a_reason() {
        assert_eq!(reason(""), "the path is empty");
        assert_eq!(reason("/"), "the path is empty");
        assert!(reason("a//b").contains("empty component"));
        assert!(reason("a/").contains("empty component"));
        assert!(reason("./a").contains("`.`"));
        assert!(reason("a/./b").contains("`.`"));
        assert!(reason("..").contains("`..`"));
        assert!(reason("a/../b").contains("`..`"));
        assert!(reason("a\0b").contains("NUL"));
        assert!(reason(&"x".repeat(MAX_PATH_BYTES + 1)).contains("4096"));

        let err = NormalPath::new(&"y".repeat(10_000)).unwrap_err();
        let message = err.to_string();
        assert!(message.len() < 200, "long paths are shortened: {message}");
        assert!(message.contains("yyyy…"), "{message}");
        assert_eq!(
            NormalPath::new("a/../b").unwrap_err().to_string(),
            "invalid path \"a/../b\": the path has a `..` component"
        );
    }

    #[test]
    fn the_key_backup_path_is_reserved_and_no_user_path_reaches_it() {
        let reserved = NormalPath::key_backup();
        assert!(reserved.is_reserved());
        assert!(reason(reserved.as_str()).contains("NUL"));
        assert_eq!(
            NormalPath::from_stored(reserved.as_str()).unwrap(),
            reserved
        );
        let user = NormalPath::from_stored("silt/key-backup-v1").unwrap();
        assert!(!user.is_reserved());
        assert!(NormalPath::from_stored("\0silt/other").is_err());
    }

    #[test]
    fn object_ids_depend_on_key_and_path_only() {
        let key = ObjectIdKey::derive(&LOCATION).unwrap();
        let again = ObjectIdKey::derive(&LOCATION).unwrap();
        let other = ObjectIdKey::derive(&OTHER).unwrap();
        let path = NormalPath::new("docs/report.pdf").unwrap();
        let id = key.object_id(&path);
        assert_eq!(id, again.object_id(&path));
        assert_eq!(
            id,
            key.object_id(&NormalPath::new("/docs/report.pdf").unwrap())
        );
        assert_ne!(id, other.object_id(&path));
        assert_ne!(
            id,
            key.object_id(&NormalPath::new("docs/report.pdf2").unwrap())
        );
        assert_ne!(
            id,
            key.object_id(&NormalPath::new("Docs/report.pdf").unwrap())
        );
        // The derivation is the documented one.
        let der = LOCATION.to_pkcs8_der().unwrap();
        let secret = hmac_sha256(&sha256(&der), b"silt-object-id-v1");
        assert_eq!(id.0, hmac_sha256(&secret, b"docs/report.pdf"));
        assert_eq!(format!("{key:?}"), "ObjectIdKey(..)");
    }
}
