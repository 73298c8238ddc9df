//! Files to suppliers and back: upload, download, listing and removal.
//!
//! Uploads read the file block by block on a blocking thread, seal and
//! erasure-code each block, and send every position's fragment to its
//! supplier, with a few blocks in flight; then every supplier commits the
//! manifest. Downloads fetch any `k` fragments of each block, preferring
//! data positions, fetch more when one is missing or corrupt, and write the
//! blocks in order to a temporary file that is renamed into place only when
//! the whole file checked out. Memory use is bounded by the blocks in flight,
//! whatever the file size.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::id::UserId;
use common::manifest::{Manifest, ObjectId, SignedManifest};
use prost::bytes::{Bytes, BytesMut};
use proto::common::v1::Location;
use proto::storage::v1::storage_client::StorageClient;
use proto::storage::v1::{
    CommitManifestRequest, DeleteRequest, FragmentHeader, FragmentRef, GetFragmentRequest,
    InlineFragment, ListManifestsRequest, PutFragmentRequest, get_fragment_response,
    put_fragment_request,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tracing::warn;

use crate::pipeline::{
    Decoder, EncodeParams, EncodedBlock, Encoder, FileMetadata, MAX_BLOCK_SIZE, NormalPath,
    PipelineError, VersionRef,
};
use crate::session::{CALL_TIMEOUT, LocationKeys, Session, SessionError, status_error};

/// Blocks uploaded or downloaded at once.
const BLOCKS_IN_FLIGHT: usize = 8;
/// A download starts syncing what it wrote, in the background, every this
/// many blocks (64 MiB of default blocks): the kernel would otherwise hold a
/// large file's pages until the final sync, and write them all then.
const SYNC_BEHIND_BLOCKS: u64 = 16;
/// Fragments up to this size are sent with the commit instead of staged
/// first, saving a round trip per supplier for small files.
const INLINE_FRAGMENT_MAX: u64 = 64 << 10;
/// The most fragment bytes one commit carries; suppliers take up to
/// `supplier::service::storage::MAX_INLINE_BYTES` (1 MiB).
const INLINE_TOTAL_MAX: u64 = 256 << 10;
/// Bytes per `PutFragment` chunk message: large enough that a fragment of a
/// default block is one message, sent without a copy.
const CHUNK: usize = 8 << 20;

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A session-level failure (suppliers, keys).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The data pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Nothing is stored under this path.
    #[error("no file {0}")]
    NotFound(String),
    /// Some positions could not be reached, so too few fragments remain.
    #[error("cannot read {path}; unreachable supplier positions: {unreachable:?}")]
    Unavailable {
        /// The file.
        path: String,
        /// Positions that did not answer.
        unreachable: Vec<u32>,
        /// The pipeline's account of the block.
        #[source]
        source: PipelineError,
    },
    /// A fragment for a replaced position could not be made.
    #[error("cannot rebuild {path}: {source}")]
    RebuildFailed {
        /// The file and version.
        path: String,
        /// What went wrong.
        #[source]
        source: PipelineError,
    },
    /// A version cannot be rebuilt onto a replaced position: too few of the
    /// other positions answer with it.
    #[error(
        "cannot rebuild {path}: only positions {holding:?} answer with it and {needed} are needed; \
         unreachable supplier positions: {unreachable:?}"
    )]
    TooFewToRebuild {
        /// The file and version.
        path: String,
        /// Positions that hold it.
        holding: Vec<u32>,
        /// Fragments needed (k).
        needed: u32,
        /// Positions that did not answer.
        unreachable: Vec<u32>,
    },
    /// Some suppliers did not commit.
    #[error(
        "version {version} of {path} was committed on {committed} of {total} suppliers; failed: {failures}"
    )]
    PartialCommit {
        /// The file.
        path: String,
        /// The version.
        version: u64,
        /// How many committed.
        committed: usize,
        /// How many there are.
        total: usize,
        /// Which failed and why.
        failures: String,
    },
    /// Some suppliers did not delete.
    #[error("{path} was removed on {removed} of {total} suppliers; failed: {failures}")]
    PartialRemove {
        /// The file.
        path: String,
        /// How many removed it.
        removed: usize,
        /// How many there are.
        total: usize,
        /// Which failed and why.
        failures: String,
    },
    /// Only the owner may delete.
    #[error("only the owner of {0} may delete in it")]
    NotOwner(String),
    /// A share could not be deleted, or not completely.
    #[error("share {share} is not deleted: {reason}")]
    ShareNotDeleted {
        /// The share's key ID.
        share: String,
        /// How far it got, and why not further.
        reason: String,
    },
    /// A manifest from a supplier did not verify.
    #[error("a manifest from supplier position {position} is invalid: {reason}")]
    BadManifest {
        /// The supplier.
        position: u32,
        /// Why.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A background task failed.
    #[error("internal task failed: {0}")]
    Task(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Most manifests one supplier may list for one location.
const MAX_LISTED: usize = 1_000_000;

/// A verified version of an object.
#[derive(Debug, Clone)]
pub struct Version {
    /// The manifest, signatures checked.
    pub manifest: Manifest,
    /// The signed form, as committed.
    pub signed: SignedManifest,
    /// Positions that hold it.
    pub positions: Vec<u32>,
}

impl Version {
    /// Whether enough of the positions that answered hold it to rebuild it.
    /// A version whose commit reached fewer than `k` suppliers is not.
    pub fn readable(&self) -> bool {
        self.positions.len() >= self.manifest.scheme.data as usize
    }
}

/// The version of one object to show and fetch by default: the newest that
/// can be read now, or, if none can, the newest (whose download then names
/// the missing positions). A newer version that reached too few suppliers
/// (a partial commit) does not hide an older one that is whole.
pub fn newest<'a>(versions: impl IntoIterator<Item = &'a Version>) -> Option<&'a Version> {
    versions
        .into_iter()
        .max_by_key(|v| (v.readable(), v.manifest.version))
}

/// A file in a catalog listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    /// Its path.
    pub path: String,
    /// Size of the newest version.
    pub size: u64,
    /// Modification time of the newest version.
    pub mtime_unix: i64,
    /// The newest version.
    pub version: u64,
    /// Every version held.
    pub versions: Vec<u64>,
    /// When the newest version was made.
    pub created_unix: i64,
    /// Who wrote the newest version.
    pub writer: String,
}

/// What an upload did.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The version made.
    pub version: u64,
    /// Plaintext bytes.
    pub size: u64,
}

/// Reports bytes done.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// The wire form of the location of `keys`.
pub(crate) fn location_proto(keys: &LocationKeys) -> Location {
    Location {
        owner: keys.key_id.owner().to_string(),
        alias: keys.key_id.alias().to_string(),
    }
}

impl Session {
    /// Every verified version in a location (or of one object), from every
    /// reachable supplier, merged. Also returns the positions that did not
    /// answer.
    pub async fn versions(
        &self,
        keys: &LocationKeys,
        object: Option<ObjectId>,
    ) -> Result<(BTreeMap<(ObjectId, u64), Version>, Vec<u32>), TransferError> {
        let count = self.suppliers()?.suppliers.len() as u32;
        // Connected (and, in a share, proved) all at once, so that one
        // supplier that hangs does not hold up the others.
        let clients = futures_util::future::join_all((0..count).map(|p| self.client(p))).await;
        let mut tasks = JoinSet::new();
        for (position, client) in (0..count).zip(clients) {
            let location = location_proto(keys);
            let addr = self.supplier_addr(position);
            tasks.spawn(async move {
                let all = list_manifests(client?, location, object, position, &addr).await?;
                Ok::<_, SessionError>((position, all))
            });
        }
        let mut bodies: HashMap<Vec<u8>, (proto::storage::v1::SignedManifest, Vec<u32>)> =
            HashMap::new();
        let mut unreachable = Vec::new();
        let mut refused = None;
        while let Some(joined) = tasks.join_next().await {
            match joined.map_err(|e| TransferError::Task(e.to_string()))? {
                Ok((position, manifests)) => {
                    for signed in manifests {
                        bodies
                            .entry(signed.body.clone())
                            .or_insert_with(|| (signed, Vec::new()))
                            .1
                            .push(position);
                    }
                }
                Err(SessionError::Unreachable { position, .. }) => unreachable.push(position),
                // A supplier that refuses to list is no more use than one
                // that is down, and is reported with them.
                Err(e @ SessionError::Refused { position, .. }) => {
                    unreachable.push(position);
                    refused = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(e) = refused
            && bodies.is_empty()
        {
            return Err(e.into());
        }
        unreachable.sort_unstable();
        // A manifest that fails its checks is left out, so that one bad
        // supplier or writer cannot hide the rest; if nothing else is left,
        // the listing fails with the first reason.
        let mut writers: HashMap<UserId, Option<common::crypto::PublicKey>> = HashMap::new();
        let mut out = BTreeMap::new();
        let mut first_bad = None;
        for (_, (wire, mut positions)) in bodies {
            positions.sort_unstable();
            match self
                .check_manifest(keys, wire, &positions, &mut writers)
                .await
            {
                Ok((manifest, signed)) => {
                    out.insert(
                        (manifest.object_id, manifest.version),
                        Version {
                            manifest,
                            signed,
                            positions,
                        },
                    );
                }
                Err(e) => {
                    warn!("left out of the listing: {e}");
                    first_bad.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_bad
            && out.is_empty()
        {
            return Err(e);
        }
        Ok((out, unreachable))
    }

    /// Checks one listed manifest: its encoding, the location's signature,
    /// the writer's, and that it is for this location. `writers` caches the
    /// writers' keys (`None`: could not be resolved).
    async fn check_manifest(
        &self,
        keys: &LocationKeys,
        wire: proto::storage::v1::SignedManifest,
        positions: &[u32],
        writers: &mut HashMap<UserId, Option<common::crypto::PublicKey>>,
    ) -> Result<(Manifest, SignedManifest), TransferError> {
        let position = positions.first().copied().unwrap_or(0);
        let bad = |reason: String| TransferError::BadManifest { position, reason };
        let signed = SignedManifest::from_proto(wire).map_err(|e| bad(e.to_string()))?;
        let manifest = signed
            .verify_location(&keys.public)
            .map_err(|e| bad(e.to_string()))?;
        if manifest.location != keys.key_id {
            return Err(bad("it is for another location".into()));
        }
        let writer = match writers.get(&manifest.writer) {
            Some(Some(key)) => key.clone(),
            Some(None) => {
                return Err(bad(format!(
                    "the key of its writer {} is unknown",
                    manifest.writer
                )));
            }
            None => match self.master_key_of(&manifest.writer).await {
                Ok(key) => {
                    writers.insert(manifest.writer.clone(), Some(key.clone()));
                    key
                }
                Err(e) => {
                    writers.insert(manifest.writer.clone(), None);
                    return Err(e.into());
                }
            },
        };
        signed
            .verify_writer(&writer)
            .map_err(|e| bad(e.to_string()))?;
        Ok((manifest, signed))
    }

    /// Uploads one local file as a new version of `path`.
    pub async fn upload(
        &self,
        keys: &LocationKeys,
        local: &Path,
        path: &NormalPath,
        version: u64,
        progress: Progress,
    ) -> Result<Uploaded, TransferError> {
        let set = self.suppliers()?;
        let scheme = set.scheme();
        let count = set.suppliers.len() as u32;
        let file = File::open(local).map_err(io_err(local))?;
        let metadata = file.metadata().map_err(io_err(local))?;
        let file_len = metadata.len();
        let mtime_unix = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .unwrap_or(0);
        let object_id = keys.secrets.object_id(path);
        let params = EncodeParams {
            version: VersionRef {
                location: keys.key_id.clone(),
                object_id,
                version,
            },
            path: path.clone(),
            epoch: keys.epoch,
            writer: self.user().clone(),
            scheme,
            block_size: self.block_size(),
            mtime_unix,
            created_unix: common::unix_now(),
        };
        let mut clients = Vec::with_capacity(count as usize);
        for position in 0..count {
            clients.push(self.client(position).await?);
        }
        let addrs: Arc<[String]> = (0..count).map(|p| self.supplier_addr(p)).collect();

        // Read, seal and code on a blocking thread, two blocks ahead.
        let (tx, mut rx) = mpsc::channel::<EncodedBlock>(2);
        let secrets = keys.secrets.clone();
        let producer = tokio::task::spawn_blocking(move || {
            let mut encoder =
                Encoder::new(BufReader::with_capacity(1 << 20, file), params, &secrets)?;
            while let Some(block) = encoder.next_block()? {
                if tx.blocking_send(block).is_err() {
                    return Err(PipelineError::InputNotExhausted);
                }
            }
            encoder.finish()
        });

        let location = location_proto(keys);
        let mut in_flight: JoinSet<Result<u64, TransferError>> = JoinSet::new();
        let mut failure = None;
        // Small blocks ride with the commit: per position, each block's
        // fragment.
        let mut inline: Vec<Vec<InlineFragment>> = vec![Vec::new(); count as usize];
        let mut inline_bytes = 0u64;
        let mut inline_plaintext = 0u64;
        while let Some(block) = rx.recv().await {
            // Progress counts plaintext bytes: the block's share of the file.
            let block_size = self.block_size() as u64;
            let plaintext = file_len
                .saturating_sub(block.index * block_size)
                .min(block_size);
            let fragment_bytes = block.hashes.fragment_size;
            if fragment_bytes <= INLINE_FRAGMENT_MAX
                && inline_bytes + fragment_bytes <= INLINE_TOTAL_MAX
            {
                inline_bytes += fragment_bytes;
                inline_plaintext += plaintext;
                for (slot, data) in inline.iter_mut().zip(block.fragments) {
                    slot.push(InlineFragment {
                        block: block.index,
                        data,
                    });
                }
                continue;
            }
            while in_flight.len() >= BLOCKS_IN_FLIGHT {
                if let Some(done) = in_flight.join_next().await {
                    match flatten(done) {
                        Ok(bytes) => progress(bytes),
                        Err(e) => failure = Some(e),
                    }
                }
            }
            if failure.is_some() {
                break;
            }
            let clients = clients.clone();
            let addrs = addrs.clone();
            let location = location.clone();
            in_flight.spawn(upload_block(
                clients, addrs, location, object_id, version, block, plaintext,
            ));
        }
        drop(rx);
        while let Some(done) = in_flight.join_next().await {
            match flatten(done) {
                Ok(bytes) => progress(bytes),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let manifest = producer
            .await
            .map_err(|e| TransferError::Task(e.to_string()));
        if let Some(e) = failure {
            return Err(e);
        }
        let manifest = manifest??;

        let master = self.master().clone();
        let private = keys.private.clone();
        let signed =
            tokio::task::spawn_blocking(move || SignedManifest::sign(&manifest, &private, &master))
                .await
                .map_err(|e| TransferError::Task(e.to_string()))?
                .map_err(|e| TransferError::Task(e.to_string()))?;
        let mut commits = JoinSet::new();
        for ((position, client), fragments) in clients.into_iter().enumerate().zip(inline) {
            let request = CommitManifestRequest {
                manifest: Some(signed.to_proto()),
                position: position as u32,
                writer_identity: Some(self.identity().to_proto()),
                location: Some(location.clone()),
                fragments,
            };
            let mut client = client;
            let addr = self.supplier_addr(position as u32);
            commits.spawn(async move {
                let mut request = tonic::Request::new(request);
                request.set_timeout(CALL_TIMEOUT);
                client
                    .commit_manifest(request)
                    .await
                    .map_err(|s| status_error(position as u32, &addr, &s))
            });
        }
        let mut failures = Vec::new();
        while let Some(done) = commits.join_next().await {
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => failures.push(e.to_string()),
                Err(e) => failures.push(e.to_string()),
            }
        }
        if failures.is_empty() {
            progress(inline_plaintext);
        } else {
            return Err(TransferError::PartialCommit {
                path: path.to_string(),
                version,
                committed: count as usize - failures.len(),
                total: count as usize,
                failures: failures.join("; "),
            });
        }
        Ok(Uploaded {
            version,
            size: metadata.len(),
        })
    }

    /// Downloads `version` to `dest`, through a temporary file in the same
    /// directory that is renamed into place only when every block checked out.
    pub async fn download(
        &self,
        keys: &LocationKeys,
        version: &Version,
        dest: &Path,
        unreachable: &[u32],
        progress: Progress,
    ) -> Result<FileMetadata, TransferError> {
        let manifest = version.manifest.clone();
        let secrets = keys.secrets.clone();
        let decoder = tokio::task::spawn_blocking(move || Decoder::new(&manifest, &secrets))
            .await
            .map_err(|e| TransferError::Task(e.to_string()))??;
        self.download_decoded(keys, version, decoder, dest, unreachable, progress)
            .await
    }

    /// [`Session::download`] with the file key already unwrapped (as
    /// [`catalog`] does for every file it lists).
    pub async fn download_decoded(
        &self,
        keys: &LocationKeys,
        version: &Version,
        mut decoder: Decoder,
        dest: &Path,
        unreachable: &[u32],
        progress: Progress,
    ) -> Result<FileMetadata, TransferError> {
        let path_text = decoder.metadata().path.to_string();
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "download".into());
        let tmp = dir.join(format!(".{name}.silt-{:016x}.part", rand::random::<u64>()));
        // The plaintext is readable by the user alone while it is written;
        // the finished file gets the mode of the file it replaces, or what
        // the user's umask gives a new file.
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let result = async {
            let created = file.metadata().map_err(io_err(&tmp))?.permissions();
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io_err(&tmp))?;
            let permissions = match std::fs::metadata(dest) {
                Ok(existing) => existing.permissions(),
                Err(_) => created,
            };
            self.download_blocks(
                keys,
                version,
                &mut decoder,
                file,
                &tmp,
                unreachable,
                &path_text,
                progress,
            )
            .await?;
            std::fs::set_permissions(&tmp, permissions).map_err(io_err(&tmp))?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                let metadata = decoder.finish()?;
                std::fs::rename(&tmp, dest).map_err(io_err(dest))?;
                Ok(metadata)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn download_blocks(
        &self,
        keys: &LocationKeys,
        version: &Version,
        decoder: &mut Decoder,
        file: File,
        tmp: &Path,
        unreachable: &[u32],
        path: &str,
        progress: Progress,
    ) -> Result<(), TransferError> {
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        // Written blocks are synced behind the writes, so that the final
        // sync finds little left to write.
        let mut unsynced = 0u64;
        let mut written = 0u64;
        let mut syncing: Option<tokio::task::JoinHandle<Result<(), TransferError>>> = None;
        let scheme = version.manifest.scheme;
        let positions = scheme.positions();
        let (clients, down) = self.holders(version, unreachable).await;
        // Prefer data positions, then parity.
        let mut order: Vec<u32> = clients.keys().copied().collect();
        order.sort_unstable();
        let clients = Arc::new(clients);
        let location = location_proto(keys);
        let blocks = version.manifest.blocks.len() as u64;
        let base = FragmentRef {
            location: Some(location),
            object_id: version.manifest.object_id.0.to_vec(),
            version: version.manifest.version,
            block: 0,
            position: 0,
        };
        let mut pending: JoinSet<(u64, Vec<Option<Bytes>>)> = JoinSet::new();
        let mut ready: BTreeMap<u64, Vec<Option<Bytes>>> = BTreeMap::new();
        let mut next_fetch = 0u64;
        let mut next_write = 0u64;
        while next_write < blocks {
            while next_fetch < blocks && pending.len() + ready.len() < BLOCKS_IN_FLIGHT {
                let clients = clients.clone();
                let order = order.clone();
                let mut reference = base.clone();
                reference.block = next_fetch;
                let need = scheme.data as usize;
                let index = next_fetch;
                pending.spawn(async move {
                    let fragments = fetch_block(&clients, &order, reference, need, positions).await;
                    (index, fragments)
                });
                next_fetch += 1;
            }
            while !ready.contains_key(&next_write) {
                let (index, fragments) = pending
                    .join_next()
                    .await
                    .ok_or_else(|| TransferError::Task("no block in flight".into()))?
                    .map_err(|e| TransferError::Task(e.to_string()))?;
                ready.insert(index, fragments);
            }
            let mut fragments = ready.remove(&next_write).unwrap_or_default();
            let size = decoder.metadata().block_len(next_write).unwrap_or(0);
            let first = tokio::task::block_in_place(|| {
                decoder.write_block(next_write, &fragments, &mut file)
            });
            match first {
                Ok(()) => {}
                Err(PipelineError::MissingFragments { .. }) => {
                    // A fragment was missing or corrupt: fetch every position.
                    let mut reference = base.clone();
                    reference.block = next_write;
                    let all =
                        fetch_block(&clients, &order, reference, positions as usize, positions)
                            .await;
                    for (slot, fetched) in fragments.iter_mut().zip(all) {
                        if slot.is_none() {
                            *slot = fetched;
                        }
                    }
                    let retry = tokio::task::block_in_place(|| {
                        decoder.write_block(next_write, &fragments, &mut file)
                    });
                    match retry {
                        Ok(()) => {}
                        Err(source @ PipelineError::MissingFragments { .. }) => {
                            return Err(TransferError::Unavailable {
                                path: path.to_owned(),
                                unreachable: down,
                                source,
                            });
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
            progress(size);
            next_write += 1;
            unsynced += 1;
            written += size;
            if unsynced >= SYNC_BEHIND_BLOCKS && syncing.as_ref().is_none_or(|s| s.is_finished()) {
                if let Some(done) = syncing.take() {
                    flatten(done.await)?;
                }
                tokio::task::block_in_place(|| std::io::Write::flush(&mut file))
                    .map_err(io_err(tmp))?;
                let handle = file.get_ref().try_clone().map_err(io_err(tmp))?;
                let path = tmp.to_owned();
                let synced = written;
                syncing = Some(tokio::task::spawn_blocking(move || {
                    handle.sync_data().map_err(io_err(&path))?;
                    // Clean now: let the kernel reuse those pages rather
                    // than fill memory (and evict others) with the file.
                    // Only advice, so a refusal changes nothing.
                    let _ = rustix::fs::fadvise(
                        &handle,
                        0,
                        std::num::NonZeroU64::new(synced),
                        rustix::fs::Advice::DontNeed,
                    );
                    Ok(())
                }));
                unsynced = 0;
            }
        }
        if let Some(done) = syncing.take() {
            flatten(done.await)?;
        }
        let file = file.into_inner().map_err(|e| TransferError::Io {
            path: tmp.to_owned(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(tmp))?;
        Ok(())
    }

    /// Clients of the positions that hold `version`, leaving out those in
    /// `unreachable`, and every position known to be down: those and the
    /// ones that cannot be reached now, in order.
    pub(crate) async fn holders(
        &self,
        version: &Version,
        unreachable: &[u32],
    ) -> (HashMap<u32, StorageClient<Channel>>, Vec<u32>) {
        let mut clients = HashMap::new();
        let mut down = unreachable.to_vec();
        for &position in &version.positions {
            if unreachable.contains(&position) {
                continue;
            }
            match self.client(position).await {
                Ok(client) => {
                    clients.insert(position, client);
                }
                Err(_) => down.push(position),
            }
        }
        down.sort_unstable();
        down.dedup();
        (clients, down)
    }

    /// Deletes `path` (every version, or one) on every supplier.
    pub async fn remove(
        &self,
        keys: &LocationKeys,
        path: &NormalPath,
        version: Option<u64>,
    ) -> Result<(), TransferError> {
        if keys.key_id.owner() != self.user() {
            return Err(TransferError::NotOwner(keys.key_id.to_string()));
        }
        let count = self.suppliers()?.suppliers.len();
        let (found, failures) = self
            .delete_object(keys, keys.secrets.object_id(path), version)
            .await?;
        if !failures.is_empty() {
            return Err(TransferError::PartialRemove {
                path: path.to_string(),
                removed: count - failures.len(),
                total: count,
                failures: failures.join("; "),
            });
        }
        if !found {
            return Err(TransferError::NotFound(path.to_string()));
        }
        Ok(())
    }

    /// Deletes one object (every version, or one) on every supplier. Returns
    /// whether any supplier had it, and why each supplier that failed did.
    pub(crate) async fn delete_object(
        &self,
        keys: &LocationKeys,
        object_id: ObjectId,
        version: Option<u64>,
    ) -> Result<(bool, Vec<String>), TransferError> {
        let location = location_proto(keys);
        Ok(self
            .on_every_position(async |mut client| {
                let mut request = tonic::Request::new(DeleteRequest {
                    location: Some(location.clone()),
                    object_id: object_id.0.to_vec(),
                    version: version.unwrap_or(0),
                });
                request.set_timeout(CALL_TIMEOUT);
                client.delete(request).await.map(drop)
            })
            .await?)
    }
}

/// A listed file: what it is, its newest version, and that version's
/// unwrapped file key, ready to download.
#[derive(Debug)]
pub struct Listed {
    /// Name, size, dates.
    pub entry: Entry,
    /// The newest version.
    pub version: Version,
    /// Its decoder (file key unwrapped, metadata opened).
    pub decoder: Decoder,
}

/// Reads the names, sizes and dates of the newest version of each object,
/// unwrapping file keys on every core. Silt's reserved objects in a
/// master location (see [`NormalPath::key_backup`]) are left out.
pub fn catalog(
    keys: &LocationKeys,
    versions: &BTreeMap<(ObjectId, u64), Version>,
) -> Result<Vec<Listed>, TransferError> {
    let mut objects: BTreeMap<ObjectId, Vec<&Version>> = BTreeMap::new();
    for ((object, _), version) in versions {
        objects.entry(*object).or_default().push(version);
    }
    let latest: Vec<(&Version, Vec<u64>)> = objects
        .into_values()
        .filter_map(|all| {
            let numbers = all.iter().map(|v| v.manifest.version).collect();
            newest(all).map(|chosen| (chosen, numbers))
        })
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .max(1);
    let chunk = latest.len().div_ceil(threads).max(1);
    let decoded: Vec<Result<Listed, TransferError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = latest
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(version, numbers)| {
                            let decoder = Decoder::new(&version.manifest, &keys.secrets)?;
                            let metadata = decoder.metadata();
                            let entry = Entry {
                                path: metadata.path.to_string(),
                                size: metadata.size,
                                mtime_unix: metadata.mtime_unix,
                                version: version.manifest.version,
                                versions: numbers.clone(),
                                created_unix: version.manifest.created_unix,
                                writer: version.manifest.writer.to_string(),
                            };
                            Ok(Listed {
                                entry,
                                version: (*version).clone(),
                                decoder,
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(TransferError::Task(
                        "a decoding thread panicked".into(),
                    ))]
                })
            })
            .collect()
    });
    let mut listed = decoded.into_iter().collect::<Result<Vec<_>, _>>()?;
    // Silt's own objects (the key backup) are not the user's files. Only
    // our master location holds them; anywhere else such a path is shown,
    // so that nobody can hide files in a share.
    if keys.key_id.is_master() {
        listed.retain(|l| !l.decoder.metadata().path.is_reserved());
    }
    listed.sort_by(|a, b| a.entry.path.cmp(&b.entry.path));
    Ok(listed)
}

/// Every manifest one supplier holds in `location` (or of one object),
/// page by page, as received: nothing is checked yet.
pub(crate) async fn list_manifests(
    mut client: proto::storage::v1::storage_client::StorageClient<tonic::transport::Channel>,
    location: Location,
    object: Option<ObjectId>,
    position: u32,
    addr: &str,
) -> Result<Vec<proto::storage::v1::SignedManifest>, SessionError> {
    let mut all = Vec::new();
    let mut token = Vec::new();
    loop {
        let mut request = tonic::Request::new(ListManifestsRequest {
            location: Some(location.clone()),
            object_id: object.map(|o| o.0.to_vec()).unwrap_or_default(),
            page_token: token.clone(),
            page_size: 1000,
        });
        request.set_timeout(CALL_TIMEOUT);
        let page = client
            .list_manifests(request)
            .await
            .map_err(|s| status_error(position, addr, &s))?
            .into_inner();
        let empty = page.manifests.is_empty();
        all.extend(page.manifests);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        // Tokens are manifest keys, in order: one that does not move
        // forward, or an empty page that promises more, would never end.
        if empty || page.next_page_token <= token || all.len() > MAX_LISTED {
            return Err(SessionError::Refused {
                position,
                message: "its manifest listing does not end".into(),
            });
        }
        token = page.next_page_token;
    }
}

pub(crate) fn flatten<T>(
    joined: Result<Result<T, TransferError>, tokio::task::JoinError>,
) -> Result<T, TransferError> {
    joined.map_err(|e| TransferError::Task(e.to_string()))?
}

/// Sends one block's fragments, one per position, in parallel, and returns
/// `plaintext`, the block's plaintext size, for progress.
async fn upload_block(
    clients: Vec<proto::storage::v1::storage_client::StorageClient<tonic::transport::Channel>>,
    addrs: Arc<[String]>,
    location: Location,
    object_id: ObjectId,
    version: u64,
    block: EncodedBlock,
    plaintext: u64,
) -> Result<u64, TransferError> {
    let mut sends = JoinSet::new();
    for (position, (fragment, client)) in block.fragments.into_iter().zip(clients).enumerate() {
        let reference = FragmentRef {
            location: Some(location.clone()),
            object_id: object_id.0.to_vec(),
            version,
            block: block.index,
            position: position as u32,
        };
        let digest = block
            .hashes
            .digests
            .get(position)
            .copied()
            .unwrap_or_default();
        let hash = block.hash.to_wire();
        let addr = addrs.get(position).cloned().unwrap_or_default();
        sends.spawn(async move {
            put_fragment(client, &addr, reference, fragment, digest.to_vec(), hash).await
        });
    }
    while let Some(done) = sends.join_next().await {
        done.map_err(|e| TransferError::Task(e.to_string()))??;
    }
    Ok(plaintext)
}

/// Stages one fragment on a supplier: a header, then the fragment in
/// chunks that are views of it, not copies.
pub(crate) async fn put_fragment(
    mut client: proto::storage::v1::storage_client::StorageClient<tonic::transport::Channel>,
    addr: &str,
    reference: FragmentRef,
    fragment: Bytes,
    digest: Vec<u8>,
    hash: i32,
) -> Result<(), SessionError> {
    let position = reference.position;
    let mut messages = Vec::with_capacity(1 + fragment.len() / CHUNK + 1);
    messages.push(PutFragmentRequest {
        part: Some(put_fragment_request::Part::Header(FragmentHeader {
            fragment: Some(reference),
            size: fragment.len() as u64,
            digest,
            hash,
        })),
    });
    messages.extend(fragment.chunks(CHUNK).map(|chunk| PutFragmentRequest {
        part: Some(put_fragment_request::Part::Chunk(fragment.slice_ref(chunk))),
    }));
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    request.set_timeout(CALL_TIMEOUT * 4);
    client
        .put_fragment(request)
        .await
        .map_err(|s| status_error(position, addr, &s))?;
    Ok(())
}

/// Fetches fragments of one block until `need` arrived, trying positions in
/// `order`. Returns one slot per position.
pub(crate) async fn fetch_block(
    clients: &HashMap<
        u32,
        proto::storage::v1::storage_client::StorageClient<tonic::transport::Channel>,
    >,
    order: &[u32],
    reference: FragmentRef,
    need: usize,
    positions: u32,
) -> Vec<Option<Bytes>> {
    let mut slots: Vec<Option<Bytes>> = vec![None; positions as usize];
    let mut remaining = order.iter().copied();
    let mut got = 0;
    let mut fetches = JoinSet::new();
    let spawn = |fetches: &mut JoinSet<(u32, Option<Bytes>)>, position: u32| {
        let Some(client) = clients.get(&position).cloned() else {
            return false;
        };
        let mut reference = reference.clone();
        reference.position = position;
        fetches.spawn(async move { (position, fetch_fragment(client, reference).await) });
        true
    };
    for _ in 0..need {
        for position in remaining.by_ref() {
            if spawn(&mut fetches, position) {
                break;
            }
        }
    }
    while let Some(done) = fetches.join_next().await {
        let Ok((position, fragment)) = done else {
            continue;
        };
        match fragment {
            Some(bytes) => {
                if let Some(slot) = slots.get_mut(position as usize) {
                    *slot = Some(bytes);
                    got += 1;
                }
            }
            None => {
                // Replace a failed fetch with the next position, if any.
                for position in remaining.by_ref() {
                    if spawn(&mut fetches, position) {
                        break;
                    }
                }
            }
        }
        if got >= need && fetches.is_empty() {
            break;
        }
    }
    slots
}

/// Fetches one fragment, or `None` if the supplier refuses or fails, or
/// lets more than [`CALL_TIMEOUT`] pass between two messages (a stream that
/// stalls would otherwise hold the block forever).
pub(crate) async fn fetch_fragment(
    mut client: proto::storage::v1::storage_client::StorageClient<tonic::transport::Channel>,
    reference: FragmentRef,
) -> Option<Bytes> {
    let mut request = tonic::Request::new(GetFragmentRequest {
        fragment: Some(reference),
    });
    request.set_timeout(CALL_TIMEOUT * 4);
    let mut stream = client.get_fragment(request).await.ok()?.into_inner();
    let mut chunks = FragmentChunks::default();
    let mut expected = 0;
    while let Some(message) = tokio::time::timeout(CALL_TIMEOUT, stream.message())
        .await
        .ok()?
        .ok()?
    {
        match message.part {
            Some(get_fragment_response::Part::Header(header)) => {
                expected = usize::try_from(header.size).unwrap_or(0);
            }
            Some(get_fragment_response::Part::Chunk(chunk)) => chunks.push(chunk, expected)?,
            None => {}
        }
    }
    Some(chunks.finish())
}

/// The digest a supplier's header gives for a fragment it holds, read
/// without the fragment; `None` if it holds none or does not answer.
pub(crate) async fn fragment_digest(
    mut client: proto::storage::v1::storage_client::StorageClient<tonic::transport::Channel>,
    reference: FragmentRef,
) -> Option<Vec<u8>> {
    let mut request = tonic::Request::new(GetFragmentRequest {
        fragment: Some(reference),
    });
    request.set_timeout(CALL_TIMEOUT);
    let mut stream = client.get_fragment(request).await.ok()?.into_inner();
    let first = tokio::time::timeout(CALL_TIMEOUT, stream.message())
        .await
        .ok()?
        .ok()??;
    match first.part {
        Some(get_fragment_response::Part::Header(header)) => Some(header.digest),
        _ => None,
    }
}

/// No fragment is larger than the largest block sealed and cut for one
/// data fragment; the margin covers the tag and padding. A supplier that
/// streams more is refused before it can fill the customer's memory.
const MAX_FRAGMENT_BYTES: usize = MAX_BLOCK_SIZE + (1 << 20);

/// The chunks of one fetched fragment. A fragment that arrives as one
/// chunk (every fragment up to 8 MiB) is kept as received; only one sent
/// in several is copied together.
#[derive(Debug, Default)]
struct FragmentChunks {
    first: Option<Bytes>,
    joined: Option<BytesMut>,
}

impl FragmentChunks {
    /// Adds the next chunk; `expected` (the size the supplier announced)
    /// only sizes the buffer. `None`, and nothing added, once the
    /// fragment would exceed [`MAX_FRAGMENT_BYTES`].
    fn push(&mut self, chunk: Bytes, expected: usize) -> Option<()> {
        let held = self.first.as_ref().map_or(0, Bytes::len)
            + self.joined.as_ref().map_or(0, BytesMut::len);
        let len = held.saturating_add(chunk.len());
        if len > MAX_FRAGMENT_BYTES {
            return None;
        }
        match (&mut self.joined, self.first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&chunk),
            (None, None) => self.first = Some(chunk),
            (None, Some(earlier)) => {
                let mut buffer = BytesMut::with_capacity(expected.clamp(len, MAX_FRAGMENT_BYTES));
                buffer.extend_from_slice(&earlier);
                buffer.extend_from_slice(&chunk);
                self.joined = Some(buffer);
            }
        }
        Some(())
    }

    /// The whole fragment.
    fn finish(self) -> Bytes {
        match self.joined {
            Some(joined) => joined.freeze(),
            None => self.first.unwrap_or_default(),
        }
    }
}

/// The next version number for each object: one more than the newest held.
pub fn next_versions(versions: &BTreeMap<(ObjectId, u64), Version>) -> HashMap<ObjectId, u64> {
    let mut next = HashMap::new();
    for (object, version) in versions.keys() {
        let slot = next.entry(*object).or_insert(1);
        *slot = (*slot).max(version.saturating_add(1));
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_in_one_chunk_is_kept_as_received() {
        let chunk = Bytes::from(vec![7u8; 1000]);
        let mut chunks = FragmentChunks::default();
        assert!(chunks.push(chunk.clone(), 1000).is_some());
        let fragment = chunks.finish();
        assert_eq!(fragment, chunk);
        assert_eq!(fragment.as_ptr(), chunk.as_ptr(), "copied");
    }

    #[test]
    fn chunks_join_in_order_whatever_size_was_announced() {
        for announced in [0, 3, 9, usize::MAX] {
            let mut chunks = FragmentChunks::default();
            for part in [&b"abc"[..], b"", b"de", b"fghi"] {
                assert!(
                    chunks
                        .push(Bytes::copy_from_slice(part), announced)
                        .is_some()
                );
            }
            assert_eq!(&chunks.finish()[..], b"abcdefghi");
        }
        assert!(FragmentChunks::default().finish().is_empty());
    }

    #[test]
    fn a_fragment_larger_than_any_block_is_refused() {
        let mut chunks = FragmentChunks::default();
        assert!(
            chunks
                .push(Bytes::from(vec![0u8; MAX_FRAGMENT_BYTES]), 0)
                .is_some()
        );
        assert!(chunks.push(Bytes::from_static(b"x"), 0).is_none());
        assert_eq!(chunks.finish().len(), MAX_FRAGMENT_BYTES);

        let mut chunks = FragmentChunks::default();
        assert!(chunks.push(Bytes::from_static(b"x"), 0).is_some());
        assert!(
            chunks
                .push(Bytes::from(vec![0u8; MAX_FRAGMENT_BYTES]), 0)
                .is_none()
        );
    }
}
