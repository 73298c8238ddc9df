//! Replacing a supplier: every version a position should hold is stored on
//! the supplier that takes its place, copied from the old supplier where it
//! still answers and rebuilt from the other positions where it does not.
//!
//! A rebuild needs no file key: each block's `k` data fragments, padding
//! included, are decoded from any `k` others and coded again
//! ([`crate::pipeline::ErasureCoder::rebuild`]). Copied or rebuilt, the
//! fragment must match the digest its signed manifest lists for the
//! position, and the same signed manifest is then committed there.
//!
//! The session keeps using the old set until the end, so the old supplier
//! stays a source. Versions the new supplier holds already are skipped, so
//! a replace that was cut off carries on where it stopped when run again.
//! The new set is saved only once every location is done, and the old
//! supplier is released (its copy deleted) only if nothing was left out.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use common::manifest::{BlockFragments, Scheme, SignedManifest};
use proto::storage::v1::storage_client::StorageClient;
use proto::storage::v1::{CommitManifestRequest, DeleteRequest, FragmentRef, ReleaseRequest};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::pipeline::{Decoder, ErasureCoder, PipelineError};
use crate::session::{
    CALL_TIMEOUT, LocationKeys, Session, SessionError, register_key, status_error,
};
use crate::suppliers::{SupplierEntry, SupplierSet};
use crate::transfer::{
    Progress, TransferError, Version, fetch_block, fetch_fragment, flatten, fragment_digest,
    list_manifests, location_proto, put_fragment,
};

/// Blocks rebuilt at once.
const BLOCKS_IN_FLIGHT: usize = 8;

/// What a replace did in one location, or in all of them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Rebuilt {
    /// Versions stored on the new supplier now.
    pub versions: usize,
    /// Versions it held already.
    pub already: usize,
    /// Versions it held that no other position lists any more (removed
    /// meanwhile), deleted from it.
    pub removed: usize,
    /// Fragment bytes stored.
    pub bytes: u64,
    /// What was left out, with the reason.
    pub skipped: Vec<String>,
}

impl Rebuilt {
    fn add(&mut self, other: Rebuilt) {
        self.versions += other.versions;
        self.already += other.already;
        self.removed += other.removed;
        self.bytes += other.bytes;
        self.skipped.extend(other.skipped);
    }
}

/// What [`Session::replace_supplier`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replaced {
    /// The position.
    pub position: u32,
    /// The supplier that held it.
    pub old: SupplierEntry,
    /// The supplier that holds it now.
    pub new: SupplierEntry,
    /// Locations gone through.
    pub locations: usize,
    /// All locations together.
    pub rebuilt: Rebuilt,
    /// Whether the old supplier was released: asked for, it answered, and
    /// nothing was left out.
    pub released: bool,
    /// DHT nodes that took the new supplier list, or why none did.
    pub published: Result<usize, String>,
}

/// How a replace treats versions that too few positions answer with now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Unreadable {
    /// Stop with an error naming the version and the positions (default):
    /// the missing suppliers may come back.
    #[default]
    Stop,
    /// Leave them out with a warning; the position's fragments of those
    /// versions are then lost, unless the old supplier comes back and the
    /// replace is run again onto the new one.
    Skip,
}

/// How a replace goes about it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Versions too few positions answer with now.
    pub unreadable: Unreadable,
    /// Release the old supplier at the end (which deletes everything it
    /// holds for us, in every location, including any whose key is not in
    /// this home), if it answers and nothing was left out. Off by default:
    /// the old supplier keeps its copy and our contract.
    pub release_old: bool,
}

impl Session {
    /// Hires the supplier at `addr` (with `quota` bytes) in place of the one
    /// at `position`, stores on it every version of each of our own
    /// locations, then saves the new supplier set and publishes it, and
    /// releases the old supplier if asked to.
    ///
    /// `addr` may be the supplier at `position` itself: what it lacks is
    /// then stored on it, and the set stays as it is (a repair, for
    /// versions an earlier replace left out).
    ///
    /// If anything fails, the saved set and the session are unchanged; the
    /// new supplier keeps what it got, and running the replace again
    /// carries on from there.
    pub async fn replace_supplier(
        &mut self,
        position: u32,
        addr: &str,
        quota: u64,
        options: Options,
        progress: Progress,
    ) -> Result<Replaced, TransferError> {
        let set = self.own_suppliers()?.clone();
        let old = set
            .suppliers
            .get(position as usize)
            .cloned()
            .ok_or_else(|| {
                SessionError::Key(format!(
                    "there is no position {position}: the suppliers are at 0 to {}",
                    set.suppliers.len().saturating_sub(1)
                ))
            })?;
        let others: Vec<SupplierEntry> = set
            .suppliers
            .iter()
            .filter(|e| e.position != position)
            .cloned()
            .collect();
        let mut new = self
            .hire_except(&[addr.to_owned()], quota, &others)
            .await?
            .pop()
            .ok_or_else(|| TransferError::Task("the hire returned no supplier".into()))?;
        new.position = position;
        let repair = new.node_id == old.node_id;
        let (locations, rebuilt) = self
            .rebuild_locations(&new, options.unreadable, progress)
            .await?;
        if repair {
            return Ok(Replaced {
                position,
                old,
                new,
                locations,
                rebuilt,
                released: false,
                published: Ok(0),
            });
        }

        // Another command may have changed the set meanwhile: saving ours
        // over it would lose that change.
        let current = SupplierSet::load(self.home().dir()).map_err(SessionError::SupplierList)?;
        if current.as_ref() != Some(&set) {
            return Err(SessionError::Key(
                "the supplier set changed while the replace ran; run it again".into(),
            )
            .into());
        }
        let mut replaced = set;
        replaced.suppliers[position as usize] = new.clone();
        replaced
            .save(self.home().dir())
            .map_err(SessionError::SupplierList)?;
        self.set_suppliers(replaced);
        info!(position, old = %old.addr, new = %new.addr, "supplier replaced");
        let published = self.publish_suppliers().await.map_err(|e| e.to_string());
        let released = if !options.release_old {
            false
        } else if rebuilt.skipped.is_empty() {
            self.release(&old).await
        } else {
            debug!(addr = %old.addr, "the replaced supplier is kept: some versions were left out");
            false
        };
        Ok(Replaced {
            position,
            old,
            new,
            locations,
            rebuilt,
            released,
            published,
        })
    }

    /// [`Session::rebuild_position`] for the master location and every
    /// location we hold the private key of and own. A key file that cannot
    /// be read is reported as left out.
    async fn rebuild_locations(
        &self,
        target: &SupplierEntry,
        unreadable: Unreadable,
        progress: Progress,
    ) -> Result<(usize, Rebuilt), TransferError> {
        let mut locations = vec![self.home().master_key_id().map_err(SessionError::from)?];
        let listing = self
            .home()
            .keystore()
            .map_err(SessionError::from)?
            .list()
            .map_err(|e| SessionError::Key(e.to_string()))?;
        locations.extend(
            listing
                .keys
                .into_iter()
                .filter(|meta| {
                    meta.kind == common::keystore::KeyKind::Private
                        && !meta.key_id.is_master()
                        && meta.key_id.owner() == self.user()
                })
                .map(|meta| meta.key_id),
        );
        let mut total = Rebuilt::default();
        total.skipped.extend(listing.damaged.iter().map(|e| {
            format!("a key file cannot be read, so its location was not gone through: {e}")
        }));
        for key_id in &locations {
            let keys = self.location_keys(key_id)?;
            total.add(
                self.rebuild_position(&keys, target, unreadable, progress.clone())
                    .await?,
            );
        }
        Ok((locations.len(), total))
    }

    /// Stores on `target`, the supplier taking `target.position`, every
    /// version of `keys`'s location that the position should hold and
    /// `target` lacks, and deletes from it the versions no other position
    /// lists any more. The current set is the source. `progress` counts
    /// fragment bytes stored.
    pub async fn rebuild_position(
        &self,
        keys: &LocationKeys,
        target: &SupplierEntry,
        unreadable: Unreadable,
        progress: Progress,
    ) -> Result<Rebuilt, TransferError> {
        let position = target.position;
        let client = self.connect(target).await?;
        if let Some(registration) = self.key_registration(keys)? {
            register_key(client.clone(), &registration, position, &target.addr).await?;
        }
        let location = location_proto(keys);
        let held = list_manifests(
            client.clone(),
            location.clone(),
            None,
            position,
            &target.addr,
        )
        .await?;
        let (versions, unreachable) = self.versions(keys, None).await?;
        let listed: HashSet<Vec<u8>> = versions
            .values()
            .map(|v| v.signed.body().to_vec())
            .collect();
        let held_bodies: HashSet<&[u8]> = held.iter().map(|m| m.body.as_slice()).collect();
        let target = Target {
            client,
            addr: target.addr.clone(),
            position,
        };
        let mut done = Rebuilt::default();
        // Versions removed meanwhile (a replace cut off, then `silt rm`)
        // would linger on the new supplier alone; with every supplier
        // answering, what none of them lists is gone for good. Done first,
        // so that no such leftover stands in the way of a commit.
        if unreachable.is_empty() {
            for wire in held.iter().filter(|m| !listed.contains(&m.body)) {
                let Ok(manifest) = SignedManifest::from_proto(wire.clone())
                    .and_then(|signed| signed.verify_location(&keys.public))
                else {
                    continue;
                };
                // Only ours: another writer's may just have failed a check
                // here for a passing reason.
                if manifest.writer == *self.user() {
                    target.delete(&location, &manifest).await?;
                    done.removed += 1;
                }
            }
        }
        for version in versions.values() {
            let name = || {
                format!(
                    "{}:{}#{}",
                    keys.key_id, version.manifest.object_id, version.manifest.version
                )
            };
            let holders = version.positions.len();
            let needed = version.manifest.scheme.data as usize;
            // The old supplier still answers with it: a copy needs no `k`.
            let old_has = version.positions.contains(&position) && !unreachable.contains(&position);
            let body_held = held_bodies.contains(version.signed.body());
            // A supplier keeps one manifest per version whatever the
            // position, so the position's own fragment is what counts.
            if body_held && target.holds(&location, &version.manifest).await {
                done.already += 1;
                continue;
            }
            if version.manifest.writer != *self.user() {
                // Suppliers take a manifest only from its writer.
                done.skipped.push(format!(
                    "{}: written by {}, who must commit it again",
                    name(),
                    version.manifest.writer
                ));
                continue;
            }
            if !old_has && holders + unreachable.len() < needed {
                // Even with every supplier back, too few would hold it: a
                // commit that failed part way, which no one can read.
                done.skipped.push(format!(
                    "{}: committed on {holders} suppliers, {needed} are needed to read it",
                    name()
                ));
                continue;
            }
            if !old_has && holders < needed {
                if unreadable == Unreadable::Skip {
                    done.skipped.push(format!(
                        "{}: only positions {:?} answer with it, {needed} are needed; unreachable: {unreachable:?}",
                        name(),
                        version.positions
                    ));
                    continue;
                }
                return Err(TransferError::TooFewToRebuild {
                    path: self.path_of(keys, version).await,
                    holding: version.positions.clone(),
                    needed: version.manifest.scheme.data,
                    unreachable,
                });
            }
            if body_held {
                // Held for another position (an earlier stint of the new
                // supplier's): it must go before this position's commit.
                target.delete(&location, &version.manifest).await?;
            }
            match self
                .rebuild_version(keys, version, &target, &unreachable, &progress)
                .await
            {
                Ok(bytes) => {
                    done.bytes += bytes;
                    done.versions += 1;
                }
                Err(e @ TransferError::RebuildFailed { .. }) if unreadable == Unreadable::Skip => {
                    done.skipped.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        // The caller reports what was left out; the log keeps the detail.
        for skipped in &done.skipped {
            debug!(position, "left out: {skipped}");
        }
        Ok(done)
    }

    /// Stores one version's fragments of the target's position and commits
    /// its manifest there. Returns the bytes stored.
    async fn rebuild_version(
        &self,
        keys: &LocationKeys,
        version: &Version,
        target: &Target,
        unreachable: &[u32],
        progress: &Progress,
    ) -> Result<u64, TransferError> {
        let manifest = &version.manifest;
        let scheme = manifest.scheme;
        let position = target.position;
        let (clients, down) = self.holders(version, unreachable).await;
        // The other positions, data first; the old supplier of the position,
        // if it holds the version, is asked first and alone.
        let mut others: Vec<u32> = clients.keys().copied().filter(|&p| p != position).collect();
        others.sort_unstable();
        let clients = Arc::new(clients);
        let others: Arc<[u32]> = others.into();
        let location = location_proto(keys);
        let base = FragmentRef {
            location: Some(location.clone()),
            object_id: manifest.object_id.0.to_vec(),
            version: manifest.version,
            block: 0,
            position,
        };
        let mut tasks: JoinSet<Result<u64, TransferError>> = JoinSet::new();
        let mut blocks = manifest.blocks.iter().cloned().zip(0u64..);
        let mut bytes = 0;
        let mut failure = None;
        loop {
            while failure.is_none() && tasks.len() < BLOCKS_IN_FLIGHT {
                let Some((expected, index)) = blocks.next() else {
                    break;
                };
                let mut reference = base.clone();
                reference.block = index;
                let job = BlockJob {
                    clients: clients.clone(),
                    others: others.clone(),
                    reference,
                    scheme,
                    hash: manifest.fragment_hash,
                    expected,
                };
                let (client, addr) = (target.client.clone(), target.addr.clone());
                tasks.spawn(async move {
                    let (reference, fragment, digest) = job.run().await?;
                    let size = fragment.len() as u64;
                    put_fragment(
                        client,
                        &addr,
                        reference,
                        fragment,
                        digest,
                        job.hash.to_wire(),
                    )
                    .await?;
                    Ok(size)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            match flatten(joined) {
                Ok(size) => {
                    bytes += size;
                    progress(size);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(match e {
                TransferError::Pipeline(source) => {
                    if !down.is_empty() {
                        warn!(unreachable = ?down, "positions that could not help the rebuild");
                    }
                    TransferError::RebuildFailed {
                        path: self.path_of(keys, version).await,
                        source,
                    }
                }
                other => other,
            });
        }
        let mut request = tonic::Request::new(CommitManifestRequest {
            manifest: Some(version.signed.to_proto()),
            position,
            writer_identity: Some(self.identity().to_proto()),
            location: Some(location),
            fragments: Vec::new(),
        });
        request.set_timeout(CALL_TIMEOUT);
        let mut client = target.client.clone();
        client
            .commit_manifest(request)
            .await
            .map_err(|s| status_error(position, &target.addr, &s))?;
        Ok(bytes)
    }

    /// The path of a version, for messages: opened from its metadata, or
    /// its object ID if that fails.
    async fn path_of(&self, keys: &LocationKeys, version: &Version) -> String {
        let manifest = version.manifest.clone();
        let secrets = keys.secrets.clone();
        let opened = tokio::task::spawn_blocking(move || {
            Decoder::new(&manifest, &secrets).map(|d| d.metadata().path.clone())
        })
        .await;
        match opened {
            Ok(Ok(path)) => format!("{}#{}", path, version.manifest.version),
            _ => format!(
                "{}#{}",
                version.manifest.object_id, version.manifest.version
            ),
        }
    }

    /// Ends our contract with a supplier we no longer use, if it answers.
    async fn release(&self, old: &SupplierEntry) -> bool {
        let released = async {
            let mut client = self.connect(old).await.map_err(|e| e.to_string())?;
            let mut request = tonic::Request::new(ReleaseRequest {});
            request.set_timeout(CALL_TIMEOUT);
            client
                .release(request)
                .await
                .map_err(|s| s.message().to_owned())
        }
        .await;
        match released {
            Ok(_) => true,
            Err(reason) => {
                warn!(addr = %old.addr, %reason, "the replaced supplier was not released");
                false
            }
        }
    }
}

/// The supplier taking a position.
struct Target {
    client: StorageClient<Channel>,
    addr: String,
    position: u32,
}

impl Target {
    /// Whether it holds this position's first fragment of `manifest`, as
    /// the manifest lists it.
    async fn holds(
        &self,
        location: &proto::common::v1::Location,
        manifest: &common::manifest::Manifest,
    ) -> bool {
        let Some(first) = manifest.blocks.first() else {
            return true;
        };
        let Some(expected) = first.digests.get(self.position as usize) else {
            return false;
        };
        let reference = FragmentRef {
            location: Some(location.clone()),
            object_id: manifest.object_id.0.to_vec(),
            version: manifest.version,
            block: 0,
            position: self.position,
        };
        fragment_digest(self.client.clone(), reference)
            .await
            .is_some_and(|digest| digest == expected)
    }

    /// Deletes one version from it; one it does not hold is no error.
    async fn delete(
        &self,
        location: &proto::common::v1::Location,
        manifest: &common::manifest::Manifest,
    ) -> Result<(), SessionError> {
        let mut request = tonic::Request::new(DeleteRequest {
            location: Some(location.clone()),
            object_id: manifest.object_id.0.to_vec(),
            version: manifest.version,
        });
        request.set_timeout(CALL_TIMEOUT);
        match self.client.clone().delete(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(status_error(self.position, &self.addr, &status)),
        }
    }
}

/// One block to store on the target: where its fragments are and what the
/// manifest says they are.
struct BlockJob {
    clients: Arc<HashMap<u32, StorageClient<Channel>>>,
    /// Positions other than the target's that hold the version.
    others: Arc<[u32]>,
    /// The fragment to make, the target's position included.
    reference: FragmentRef,
    scheme: Scheme,
    hash: common::digest::FragmentHash,
    expected: BlockFragments,
}

impl BlockJob {
    /// The fragment of the target's position: copied from the old supplier
    /// if it still holds a good one, else rebuilt from `k` others (all of
    /// them if one is missing or corrupt). Returns it with its reference
    /// and digest.
    async fn run(&self) -> Result<(FragmentRef, prost::bytes::Bytes, Vec<u8>), TransferError> {
        let positions = self.scheme.positions();
        let index = self.reference.block;
        let position = self.reference.position;
        let mut coder = ErasureCoder::with_hash(self.scheme, self.hash)?;
        let mut fragments = vec![None; positions as usize];
        if let Some(old) = self.clients.get(&position) {
            let own = fetch_fragment(old.clone(), self.reference.clone()).await;
            if let (Some(slot), Some(own)) = (fragments.get_mut(position as usize), own) {
                *slot = Some(own);
                let copied = tokio::task::block_in_place(|| {
                    coder.rebuild(index, &self.expected, &fragments, position)
                });
                if let Ok(fragment) = copied {
                    return Ok(self.done(fragment));
                }
            }
        }
        for want in [self.scheme.data as usize, positions as usize] {
            let fetched = fetch_block(
                &self.clients,
                &self.others,
                self.reference.clone(),
                want,
                positions,
            )
            .await;
            for (slot, fetched) in fragments.iter_mut().zip(fetched) {
                if slot.is_none() {
                    *slot = fetched;
                }
            }
            let result = tokio::task::block_in_place(|| {
                coder.rebuild(index, &self.expected, &fragments, position)
            });
            match result {
                Ok(fragment) => return Ok(self.done(fragment)),
                // One was missing or corrupt: fetch every other position.
                Err(PipelineError::MissingFragments { .. }) if want < positions as usize => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(TransferError::Task(
            "the rebuild ended without a result".into(),
        ))
    }

    fn done(&self, fragment: prost::bytes::Bytes) -> (FragmentRef, prost::bytes::Bytes, Vec<u8>) {
        let digest = self
            .expected
            .digests
            .get(self.reference.position as usize)
            .map(|d| d.to_vec())
            .unwrap_or_default();
        (self.reference.clone(), fragment, digest)
    }
}
