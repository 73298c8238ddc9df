//! The customer's suppliers: one per position, with the erasure scheme, kept
//! in `<home>/suppliers.json`.

use std::io;
use std::path::{Path, PathBuf};

use common::atomic_file::{self, PRIVATE_FILE_MODE};
use common::id::NodeId;
use common::manifest::Scheme;
use serde::{Deserialize, Serialize};

const FILE: &str = "suppliers.json";

/// One hired supplier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplierEntry {
    /// Its position: which fragment of every block it holds.
    pub position: u32,
    /// `host:port`.
    pub addr: String,
    /// Its node ID, checked on every connection.
    pub node_id: NodeId,
}

/// The hired suppliers and the scheme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplierSet {
    /// Fragments needed per block.
    pub data: u32,
    /// Extra fragments per block.
    pub parity: u32,
    /// One per position, in position order.
    pub suppliers: Vec<SupplierEntry>,
}

impl SupplierSet {
    /// The erasure scheme.
    pub fn scheme(&self) -> Scheme {
        Scheme {
            data: self.data,
            parity: self.parity,
        }
    }

    fn path(home: &Path) -> PathBuf {
        home.join(FILE)
    }

    /// Reads the set; `None` if no suppliers are hired.
    pub fn load(home: &Path) -> io::Result<Option<Self>> {
        let path = Self::path(home);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let set: Self = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                let consistent = set.suppliers.len() as u64
                    == u64::from(set.data) + u64::from(set.parity)
                    && set
                        .suppliers
                        .iter()
                        .enumerate()
                        .all(|(i, s)| s.position as usize == i);
                if !consistent {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: positions do not match the scheme", path.display()),
                    ));
                }
                Ok(Some(set))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the set atomically.
    pub fn save(&self, home: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        atomic_file::write(&Self::path(home), &bytes, PRIVATE_FILE_MODE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_refuses_inconsistent_sets() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SupplierSet::load(dir.path()).unwrap(), None);
        let set = SupplierSet {
            data: 1,
            parity: 1,
            suppliers: (0..2)
                .map(|i| SupplierEntry {
                    position: i,
                    addr: format!("127.0.0.1:{}", 7000 + i),
                    node_id: NodeId::from_array([i as u8; 32]),
                })
                .collect(),
        };
        set.save(dir.path()).unwrap();
        assert_eq!(SupplierSet::load(dir.path()).unwrap(), Some(set.clone()));
        let mut bad = set;
        bad.parity = 2;
        bad.save(dir.path()).unwrap();
        assert!(SupplierSet::load(dir.path()).is_err());
    }
}
