//! Remote paths as users write them: `<key_id>:<path>[#version]`, or a bare
//! `path[#version]` in the user's own `master` location.

use std::fmt;

use common::id::{KeyId, UserId};

use crate::pipeline::{NormalPath, PipelineError};

/// A parsed remote path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePath {
    /// The location.
    pub location: KeyId,
    /// The path inside it; empty for the location itself.
    pub path: String,
    /// A version asked for with `#N`.
    pub version: Option<u64>,
}

/// Why a remote path did not parse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The key ID part is invalid.
    #[error("invalid remote path {text:?}: {reason}")]
    Invalid {
        /// The input.
        text: String,
        /// What is wrong.
        reason: String,
    },
}

impl RemotePath {
    /// Parses `text`; a bare path is in `me`'s master location.
    pub fn parse(text: &str, me: &UserId) -> Result<Self, RemoteError> {
        let invalid = |reason: String| RemoteError::Invalid {
            text: text.to_owned(),
            reason,
        };
        // Key IDs never contain ':', so the first ':' after a '$' ends one.
        let (location, rest) = match text.split_once(':') {
            Some((key, rest)) if key.contains('$') => (
                key.parse::<KeyId>().map_err(|e| invalid(e.to_string()))?,
                rest,
            ),
            _ => (KeyId::master(me.clone()), text),
        };
        let (path, version) = match rest.rsplit_once('#') {
            Some((path, digits))
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) =>
            {
                let version: u64 = digits
                    .parse()
                    .map_err(|_| invalid("version is too large".into()))?;
                if version == 0 {
                    return Err(invalid("versions start at 1".into()));
                }
                (path, Some(version))
            }
            _ => (rest, None),
        };
        Ok(Self {
            location,
            path: path.trim_matches('/').to_owned(),
            version,
        })
    }

    /// The path as a normalized object path.
    pub fn normal(&self) -> Result<NormalPath, PipelineError> {
        NormalPath::new(&self.path)
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_master() {
            f.write_str(&self.path)?;
        } else {
            write!(f, "{}:{}", self.location, self.path)?;
        }
        if let Some(version) = self.version {
            write!(f, "#{version}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_and_keyed_paths_with_versions() {
        let me: UserId = "alice@id-a".parse().unwrap();
        let bare = RemotePath::parse("docs/cat.txt", &me).unwrap();
        assert!(bare.location.is_master());
        assert_eq!(bare.path, "docs/cat.txt");
        assert_eq!(bare.version, None);

        let keyed = RemotePath::parse("share_ab12$bob@id-b_7701:docs/cat.txt#3", &me).unwrap();
        assert_eq!(keyed.location.to_string(), "share_ab12$bob@id-b_7701");
        assert_eq!(keyed.path, "docs/cat.txt");
        assert_eq!(keyed.version, Some(3));
        assert_eq!(keyed.to_string(), "share_ab12$bob@id-b_7701:docs/cat.txt#3");

        // A ':' in a bare path is just a character; '#' without digits too.
        let odd = RemotePath::parse("a:b#c", &me).unwrap();
        assert_eq!(odd.path, "a:b#c");
        assert!(RemotePath::parse("x#0", &me).is_err());
        assert!(RemotePath::parse("Bad$alice@id-a:x", &me).is_err());
        assert!(RemotePath::parse("x#99999999999999999999999", &me).is_err());
    }
}
