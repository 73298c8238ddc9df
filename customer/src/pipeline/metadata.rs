//! File metadata: the plaintext sealed into `Manifest.sealed_metadata`.

use super::stream::checked_block_size;
use super::{NormalPath, PipelineError};

/// The path, size, modification time and block layout of a file version.
/// Suppliers never see it; members open it with the file key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMetadata {
    /// The path in the location.
    pub path: NormalPath,
    /// Size of the plaintext in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_unix: i64,
    /// Plaintext bytes per block (the last block may be shorter).
    pub block_size: u64,
    /// Number of blocks: `ceil(size / block_size)`.
    pub block_count: u64,
}

impl FileMetadata {
    /// The wire form.
    pub fn to_proto(&self) -> proto::storage::v1::FileMetadata {
        proto::storage::v1::FileMetadata {
            path: self.path.as_str().to_owned(),
            size: self.size,
            mtime_unix: self.mtime_unix,
            block_size: self.block_size,
            block_count: self.block_count,
        }
    }

    /// Plaintext length of block `index`, or `None` past the end.
    pub fn block_len(&self, index: u64) -> Option<u64> {
        if index >= self.block_count {
            return None;
        }
        let start = index.checked_mul(self.block_size)?;
        Some(self.size.checked_sub(start)?.min(self.block_size))
    }
}

impl TryFrom<proto::storage::v1::FileMetadata> for FileMetadata {
    type Error = PipelineError;

    /// Checks the layout: a block size in range and
    /// `block_count = ceil(size / block_size)`.
    fn try_from(wire: proto::storage::v1::FileMetadata) -> Result<Self, Self::Error> {
        let path = NormalPath::from_stored(&wire.path)
            .map_err(|_| PipelineError::Inconsistent("the metadata holds an invalid path"))?;
        checked_block_size(wire.block_size)?;
        if wire.block_count != wire.size.div_ceil(wire.block_size) {
            return Err(PipelineError::Inconsistent(
                "the block count does not match the size",
            ));
        }
        Ok(Self {
            path,
            size: wire.size,
            mtime_unix: wire.mtime_unix,
            block_size: wire.block_size,
            block_count: wire.block_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(size: u64, block_size: u64, block_count: u64) -> proto::storage::v1::FileMetadata {
        proto::storage::v1::FileMetadata {
            path: "a".into(),
            size,
            mtime_unix: 0,
            block_size,
            block_count,
        }
    }

    #[test]
    fn block_layout_is_checked() {
        let meta = FileMetadata::try_from(wire(10_000, 4096, 3)).unwrap();
        assert_eq!(meta.block_len(0), Some(4096));
        assert_eq!(meta.block_len(2), Some(10_000 - 8192));
        assert_eq!(meta.block_len(3), None);
        assert_eq!(
            FileMetadata::try_from(wire(0, 4096, 0))
                .unwrap()
                .block_len(0),
            None
        );
        assert_eq!(
            FileMetadata::try_from(wire(8192, 4096, 2))
                .unwrap()
                .block_len(1),
            Some(4096)
        );
        assert!(FileMetadata::try_from(wire(10_000, 4096, 2)).is_err());
        assert!(FileMetadata::try_from(wire(0, 4096, 1)).is_err());
        assert!(matches!(
            FileMetadata::try_from(wire(10, 0, 1)),
            Err(PipelineError::BlockSize { size: 0 })
        ));
        let mut bad_path = wire(1, 4096, 1);
        bad_path.path = "../x".into();
        assert!(FileMetadata::try_from(bad_path).is_err());
        // Round trip through the wire form.
        assert_eq!(FileMetadata::try_from(meta.to_proto()).unwrap(), meta);
    }
}
