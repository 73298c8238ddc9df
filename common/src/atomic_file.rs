//! Durable file writes: a temporary file in the same directory, fsync,
//! rename over the target, then fsync of the directory.
//!
//! A crash leaves either the old content or the new, never a torn file. Files
//! are created with the requested mode from the start, so a secret is never
//! readable by others, not even for a moment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of files that hold secrets or identity: owner read and write only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Mode of directories that hold secrets.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Writes `contents` to `path` atomically with permissions `mode`.
/// Replaces an existing file.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_inner(path, contents, mode, true)
}

/// Like [`write`], but fails with `AlreadyExists` if `path` exists, and never
/// replaces it, even when two writers race.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_inner(path, contents, mode, false)
}

fn write_inner(path: &Path, contents: &[u8], mode: u32, replace: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let suffix: u64 = rand::random();
    let tmp = dir.join(format!(".{}.{suffix:016x}.tmp", name.to_string_lossy()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have cleared bits of `mode`; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        if replace {
            fs::rename(&tmp, path)
        } else {
            // A hard link fails if the target exists, which makes creation
            // exclusive even against a concurrent writer.
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) if missing and makes it mode 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

/// Fails if a file holding a secret can be read or written by group or others.
pub fn check_private(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is accessible by other users (mode {mode:04o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_atomically_with_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write(&path, b"one", PRIVATE_FILE_MODE).unwrap();
        write(&path, b"two", PRIVATE_FILE_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        check_private(&path).unwrap();
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_new(&path, b"one", PRIVATE_FILE_MODE).unwrap();
        let err = write_new(&path, b"two", PRIVATE_FILE_MODE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn readable_secrets_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write(&path, b"x", 0o644).unwrap();
        let err = check_private(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"));
    }
}
