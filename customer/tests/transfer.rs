//! Storing and fetching files over real loopback mutual TLS with real
//! RocksDB suppliers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::manifest::ObjectId;
use customer::home::{Home, InitOptions};
use customer::pipeline::NormalPath;
use customer::replace::{Options, Unreadable};
use customer::session::{LocationKeys, Session};
use customer::suppliers::SupplierSet;
use customer::transfer::{Progress, TransferError, catalog, newest, next_versions};
use prost::Message;
use supplier::store::{Store, keys};
use supplier::{Config, Supplier};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Net {
    suppliers: Vec<Option<Supplier>>,
    dirs: Vec<TempDir>,
    addrs: Vec<std::net::SocketAddr>,
    _home_dir: TempDir,
    session: Session,
    keys: LocationKeys,
    work: TempDir,
}

fn no_progress() -> Progress {
    Arc::new(|_| {})
}

impl Net {
    /// `n` suppliers and a customer who hired them with `scheme`.
    async fn start(n: usize, scheme: &str, block_size: usize) -> Self {
        let mut suppliers = Vec::new();
        let mut dirs = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..n {
            let dir = tempfile::tempdir().unwrap();
            supplier::init_data_dir(dir.path(), 2048).unwrap();
            let config = Config {
                metrics: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                ..Config::for_tests(dir.path())
            };
            let node = Supplier::spawn(config).await.unwrap();
            addrs.push(node.local_addr());
            suppliers.push(Some(node));
            dirs.push(dir);
        }
        let home_dir = tempfile::tempdir().unwrap();
        let home = Home::new(home_dir.path().join("alice"));
        home.init(
            &InitOptions {
                user_id: format!("alice@127.0.0.1_{}", addrs[0].port())
                    .parse()
                    .unwrap(),
                id_server: addrs[0].to_string(),
                bootstrap: vec![],
                listen: "127.0.0.1:7700".parse().unwrap(),
            },
            2048,
            None,
        )
        .unwrap();
        let session = Session::open(home.clone(), home.master_key(None).unwrap()).unwrap();
        let entries = session
            .hire(
                &addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                1 << 30,
            )
            .await
            .unwrap();
        let scheme = customer::pipeline::parse_scheme(scheme, n as u32).unwrap();
        SupplierSet {
            data: scheme.data,
            parity: scheme.parity,
            suppliers: entries,
        }
        .save(home.dir())
        .unwrap();
        let mut session = Session::open(home.clone(), home.master_key(None).unwrap()).unwrap();
        session.set_block_size(block_size);
        let keys = session
            .location_keys(&home.master_key_id().unwrap())
            .unwrap();
        Self {
            suppliers,
            dirs,
            addrs,
            _home_dir: home_dir,
            session,
            keys,
            work: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.work.path().join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    async fn put(&self, name: &str, data: &[u8]) -> u64 {
        let (existing, _) = self.session.versions(&self.keys, None).await.unwrap();
        let version = next_versions(&existing)
            .get(&self.object(name))
            .copied()
            .unwrap_or(1);
        self.try_put(name, data, version).await.unwrap()
    }

    /// Uploads `data` as `version` of `name`, whatever the outcome.
    async fn try_put(&self, name: &str, data: &[u8], version: u64) -> Result<u64, TransferError> {
        let local = self.file(&format!("up-{}", name.replace('/', "_")), data);
        self.session
            .upload(
                &self.keys,
                &local,
                &NormalPath::new(name).unwrap(),
                version,
                no_progress(),
            )
            .await
            .map(|uploaded| uploaded.version)
    }

    async fn get(&self, name: &str, version: Option<u64>) -> Result<Vec<u8>, TransferError> {
        let normal = NormalPath::new(name).unwrap();
        let object = self.keys.secrets.object_id(&normal);
        let (versions, unreachable) = self.session.versions(&self.keys, Some(object)).await?;
        let chosen = match version {
            Some(v) => versions.get(&(object, v)).cloned(),
            None => newest(versions.values()).cloned(),
        }
        .ok_or_else(|| TransferError::NotFound(name.into()))?;
        let dest = self
            .work
            .path()
            .join(format!("down-{}", rand::random::<u64>()));
        self.session
            .download(&self.keys, &chosen, &dest, &unreachable, no_progress())
            .await?;
        Ok(std::fs::read(dest).unwrap())
    }

    async fn stop(&mut self, position: usize) {
        if let Some(mut node) = self.suppliers[position].take() {
            node.shutdown().await;
        }
    }

    async fn restart(&mut self, position: usize) {
        self.restart_with(position, |_| {}).await;
    }

    /// Restarts a supplier with its test config changed by `change`.
    async fn restart_with(&mut self, position: usize, change: impl FnOnce(&mut Config)) {
        let mut config = Config {
            listen: self.addrs[position],
            ..Config::for_tests(self.dirs[position].path())
        };
        change(&mut config);
        self.suppliers[position] = Some(Supplier::spawn(config).await.unwrap());
    }

    /// `PutFragment` calls the running suppliers counted, read from their
    /// metrics endpoints as an operator would.
    async fn put_fragment_calls(&self) -> u64 {
        let mut total = 0;
        for node in self.suppliers.iter().flatten() {
            let addr = node.metrics_addr().unwrap();
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut text = String::new();
            tcp.read_to_string(&mut text).await.unwrap();
            total += text
                .lines()
                .filter(|l| {
                    l.starts_with("silt_supplier_requests_total{")
                        && l.contains("method=\"PutFragment\"")
                })
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum::<u64>();
        }
        total
    }

    fn object(&self, name: &str) -> ObjectId {
        self.keys.secrets.object_id(&NormalPath::new(name).unwrap())
    }
}

fn skip() -> Options {
    Options {
        unreadable: Unreadable::Skip,
        ..Options::default()
    }
}

fn random(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}

const SMALL_BLOCK: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_every_shape_round_trip_under_several_schemes() {
    for (n, scheme) in [(2, "1+1"), (4, "2+2"), (6, "4+2")] {
        let net = Net::start(n, scheme, SMALL_BLOCK).await;
        for (name, len) in [
            ("empty", 0),
            ("one-byte", 1),
            ("one-block", SMALL_BLOCK),
            ("multi/block.bin", 3 * SMALL_BLOCK + 12_345),
        ] {
            let data = random(len);
            assert_eq!(net.put(name, &data).await, 1);
            assert_eq!(net.get(name, None).await.unwrap(), data, "{scheme} {name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_of_many_blocks_is_written_whole_while_synced_behind() {
    // Downloads sync and drop what they wrote every 16 blocks; a file of
    // 40 blocks goes through that twice, and must still come back whole.
    let net = Net::start(4, "2+2", SMALL_BLOCK).await;
    let data = random(40 * SMALL_BLOCK + 4321);
    net.put("long.bin", &data).await;
    assert_eq!(net.get("long.bin", None).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_sized_blocks_round_trip() {
    let net = Net::start(6, "4+2", customer::pipeline::DEFAULT_BLOCK_SIZE).await;
    let block = customer::pipeline::DEFAULT_BLOCK_SIZE;
    for (name, len) in [("exact", block), ("multi", 2 * block + 7)] {
        let data = random(len);
        net.put(name, &data).await;
        assert_eq!(net.get(name, None).await.unwrap(), data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_too_large_for_one_message_cross_in_several() {
    // 1+1 with 12 MiB blocks: each fragment is over 12 MiB, so it goes up
    // and comes back as more than one 8 MiB chunk, and must be joined.
    let block = 12 << 20;
    let net = Net::start(2, "1+1", block).await;
    let data = random(block + 4099);
    net.put("big.bin", &data).await;
    assert_eq!(net.get("big.bin", None).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m_suppliers_down_still_download_and_m_plus_one_names_the_missing() {
    let mut net = Net::start(6, "4+2", SMALL_BLOCK).await;
    let data = random(5 * SMALL_BLOCK + 99);
    net.put("doc.bin", &data).await;

    net.stop(1).await;
    net.stop(4).await;
    assert_eq!(net.get("doc.bin", None).await.unwrap(), data);

    net.stop(2).await;
    let err = net.get("doc.bin", None).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, TransferError::Unavailable { .. }), "{text}");
    assert!(text.contains("[1, 2, 4]"), "{text}");
    // No partial file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(net.work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    for position in [1, 2, 4] {
        net.restart(position).await;
    }
    // Connections to the stopped suppliers were never made; a new session
    // reaches the restarted ones.
    let session = Session::open(
        net.session.home().clone(),
        net.session.home().master_key(None).unwrap(),
    )
    .unwrap();
    net.session = session;
    net.session.set_block_size(SMALL_BLOCK);
    assert_eq!(net.get("doc.bin", None).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_serving_corrupt_fragments_is_detected_and_routed_around() {
    let mut net = Net::start(4, "2+2", SMALL_BLOCK).await;
    let data = random(2 * SMALL_BLOCK + 5);
    net.put("photo.jpg", &data).await;

    // Position 0 (a data position, tried first) now serves wrong bytes for
    // block 1, with a hash that matches what it serves.
    net.stop(0).await;
    {
        let store = Store::open(&supplier::db_dir(net.dirs[0].path())).unwrap();
        let owner = net.session.master().public_key().node_id();
        let location = keys::location(&owner, "master");
        let key = keys::fragment(&location, &net.object("photo.jpg").0, 1, 1, 0);
        let mut bytes = store.fragment(&key).unwrap().unwrap().payload;
        bytes[10] ^= 0xff;
        store.danger_replace_fragment(&key, &bytes).unwrap();
    }
    net.restart(0).await;
    assert_eq!(net.get("photo.jpg", None).await.unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_upload_is_a_new_version_and_old_ones_stay_readable() {
    let net = Net::start(2, "1+1", SMALL_BLOCK).await;
    net.put("notes.txt", b"first draft").await;
    assert_eq!(net.put("notes.txt", b"second draft").await, 2);
    assert_eq!(net.get("notes.txt", None).await.unwrap(), b"second draft");
    assert_eq!(net.get("notes.txt", Some(1)).await.unwrap(), b"first draft");

    let (versions, _) = net.session.versions(&net.keys, None).await.unwrap();
    let entries: Vec<_> = catalog(&net.keys, &versions)
        .unwrap()
        .into_iter()
        .map(|listed| listed.entry)
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].path, "notes.txt");
    assert_eq!(entries[0].version, 2);
    assert_eq!(entries[0].versions, vec![1, 2]);
    assert_eq!(entries[0].size, 12);

    net.session
        .remove(&net.keys, &NormalPath::new("notes.txt").unwrap(), None)
        .await
        .unwrap();
    assert!(matches!(
        net.get("notes.txt", None).await,
        Err(TransferError::NotFound(_))
    ));
    let err = net
        .session
        .remove(&net.keys, &NormalPath::new("notes.txt").unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::NotFound(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_ride_with_their_commit_and_large_ones_are_staged_first() {
    let net = Net::start(6, "4+2", 1 << 20).await;
    // 4 KiB: fragments of about 1 KiB travel inside the commit.
    let small = random(4096);
    net.put("small.bin", &small).await;
    assert_eq!(net.put_fragment_calls().await, 0);
    assert_eq!(net.get("small.bin", None).await.unwrap(), small);
    // Three 1 MiB blocks: fragments of 256 KiB are staged one call each.
    let large = random(3 << 20);
    net.put("large.bin", &large).await;
    assert_eq!(net.put_fragment_calls().await, 3 * 6);
    assert_eq!(net.get("large.bin", None).await.unwrap(), large);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_contents_never_reach_suppliers_in_the_clear() {
    let mut net = Net::start(2, "1+1", SMALL_BLOCK).await;
    let name = "tax-return-of-alice-2026.pdf";
    let content = b"THE PLAINTEXT CONTENT MARKER 8c1f".repeat(100);
    net.put(&format!("private/{name}"), &content).await;
    for position in 0..2 {
        net.stop(position).await;
        for file in files_under(net.dirs[position].path()) {
            let bytes = std::fs::read(&file).unwrap();
            for needle in [
                name.as_bytes(),
                b"PLAINTEXT CONTENT MARKER".as_slice(),
                b"private/",
            ] {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{} holds {:?}",
                    file.display(),
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_with_too_few_suppliers_fails() {
    let mut net = Net::start(4, "2+2", SMALL_BLOCK).await;
    let data = random(554);
    net.put("e.sh", &data).await;
    for position in [0, 1, 2] {
        net.stop(position).await;
    }
    let result = net.get("e.sh", None).await;
    assert!(result.is_err(), "read with one fragment of a 2+2 file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_names_the_supplier_it_cannot_reach() {
    let mut net = Net::start(2, "1+1", SMALL_BLOCK).await;
    // The first upload connects to both; then one goes away.
    net.put("first.txt", b"connected").await;
    net.stop(1).await;
    let err = net
        .try_put("second.txt", b"not stored", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("position 1"), "{err}");
    assert!(err.contains(&net.addrs[1].to_string()), "{err}");
    assert!(err.contains("unreachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_whose_disk_is_full_is_named_and_keeps_serving_and_deleting() {
    let mut net = Net::start(2, "1+1", SMALL_BLOCK).await;
    let kept = random(3 * SMALL_BLOCK);
    net.put("kept.bin", &kept).await;
    net.put("old.bin", &random(2 * SMALL_BLOCK)).await;

    // Supplier 1's disk "fills": it must keep more free than the disk has.
    net.stop(1).await;
    let free = supplier::store::disk_free(net.dirs[1].path()).unwrap();
    net.restart_with(1, |config| {
        config.min_free_disk = bytesize::ByteSize::b(free + (1 << 40));
    })
    .await;
    // A large file is staged first: refused before anything is committed.
    let err = net
        .try_put("big.bin", &random(4 * SMALL_BLOCK), 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("position 1"), "{err}");
    assert!(err.contains("disk is nearly full"), "{err}");
    assert!(
        net.get("big.bin", None).await.is_err(),
        "big.bin is visible"
    );
    // A small one rides with its commit: supplier 0 commits it (k = 1, so
    // it is readable), supplier 1 refuses, and the error says so.
    let small = random(100);
    let err = net
        .try_put("small.txt", &small, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("committed on 1 of 2"), "{err}");
    assert!(err.contains("position 1"), "{err}");
    assert!(err.contains("disk is nearly full"), "{err}");
    assert_eq!(net.get("small.txt", None).await.unwrap(), small);
    // What it holds is still served, and the owner can still free space.
    assert_eq!(net.get("kept.bin", None).await.unwrap(), kept);
    net.session
        .remove(&net.keys, &NormalPath::new("old.bin").unwrap(), None)
        .await
        .unwrap();
    assert!(net.get("old.bin", None).await.is_err());

    // Room again: uploads work.
    net.stop(1).await;
    net.restart(1).await;
    let data = random(4 * SMALL_BLOCK);
    net.put("big.bin", &data).await;
    assert_eq!(net.get("big.bin", None).await.unwrap(), data);
}

/// Bytes in a supplier's blob files, where fragment payloads live. A file
/// deleted while this looks counts as gone.
fn blob_file_bytes(data_dir: &Path) -> u64 {
    std::fs::read_dir(supplier::db_dir(data_dir))
        .unwrap()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "blob"))
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_files_gives_the_suppliers_disk_space_back() {
    let net = Net::start(2, "1+1", customer::pipeline::DEFAULT_BLOCK_SIZE).await;
    let block = customer::pipeline::DEFAULT_BLOCK_SIZE;
    let kept = random(block);
    net.put("kept.bin", &kept).await;
    net.put("gone.bin", &random(8 * block)).await;
    let stored = blob_file_bytes(net.dirs[1].path());
    assert!(stored >= 9 * block as u64, "{stored} bytes in blob files");

    net.session
        .remove(&net.keys, &NormalPath::new("gone.bin").unwrap(), None)
        .await
        .unwrap();
    // With no further writes to trigger compactions, the supplier still
    // gives the removed file's space back, soon.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = blob_file_bytes(net.dirs[1].path());
        if now <= 2 * block as u64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} bytes still in blob files after removing {}",
            8 * block
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(net.get("kept.bin", None).await.unwrap(), kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_committed_on_too_few_suppliers_does_not_hide_the_last_whole_one() {
    let mut net = Net::start(4, "2+2", SMALL_BLOCK).await;
    net.put("plan.txt", b"version one, on every supplier").await;
    for position in [1, 2, 3] {
        net.stop(position).await;
    }
    let err = net
        .try_put("plan.txt", b"version two, on one supplier", 2)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransferError::PartialCommit {
                committed: 1,
                total: 4,
                ..
            }
        ),
        "{err}"
    );
    for position in [1, 2, 3] {
        net.restart(position).await;
    }

    // Version 2 is on one supplier, version 1 on all four: the default is
    // the newest version that can be read, and it reads.
    let (versions, unreachable) = net.session.versions(&net.keys, None).await.unwrap();
    assert!(unreachable.is_empty(), "{unreachable:?}");
    let object = net.object("plan.txt");
    assert_eq!(versions[&(object, 2)].positions, vec![0]);
    assert!(!versions[&(object, 2)].readable());
    assert!(versions[&(object, 1)].readable());
    let listed = catalog(&net.keys, &versions).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].entry.version, 1);
    assert_eq!(listed[0].entry.versions, vec![1, 2]);
    assert_eq!(
        net.get("plan.txt", None).await.unwrap(),
        b"version one, on every supplier"
    );
    // Asked for by number, the partial version fails and says why.
    let err = net.get("plan.txt", Some(2)).await.unwrap_err().to_string();
    assert!(err.contains("position"), "{err}");
    // The next upload still goes after the highest number seen.
    assert_eq!(next_versions(&versions)[&object], 3);
    assert_eq!(net.put("plan.txt", b"version three").await, 3);
    assert_eq!(net.get("plan.txt", None).await.unwrap(), b"version three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_manifest_is_left_out_and_hides_nothing_else() {
    let mut net = Net::start(2, "1+1", SMALL_BLOCK).await;
    net.put("kept.txt", b"intact").await;
    net.put("tampered.txt", b"altered on the suppliers").await;

    // Both suppliers now hold a manifest for tampered.txt whose body was
    // changed after it was signed.
    let owner = net.session.master().public_key().node_id();
    let location = keys::location(&owner, "master");
    let object = net.object("tampered.txt");
    for position in [0, 1] {
        net.stop(position).await;
        let store = Store::open(&supplier::db_dir(net.dirs[position].path())).unwrap();
        let raw = store
            .manifests(&location, Some(&object.0), None, 10, usize::MAX)
            .unwrap()
            .manifests
            .remove(0);
        let mut signed = proto::storage::v1::SignedManifest::decode(raw.as_slice()).unwrap();
        let last = signed.body.len() - 1;
        signed.body[last] ^= 1;
        store
            .danger_replace_manifest(
                &keys::manifest(&location, &object.0, 1),
                &signed.encode_to_vec(),
            )
            .unwrap();
        drop(store);
        net.restart(position).await;
    }

    let (versions, _) = net.session.versions(&net.keys, None).await.unwrap();
    let listed = catalog(&net.keys, &versions).unwrap();
    let paths: Vec<_> = listed.iter().map(|l| l.entry.path.as_str()).collect();
    assert_eq!(paths, vec!["kept.txt"]);
    assert_eq!(net.get("kept.txt", None).await.unwrap(), b"intact");
    // Asked for alone, the tampered file names the problem.
    let err = net.get("tampered.txt", None).await.unwrap_err();
    assert!(matches!(err, TransferError::BadManifest { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_keeps_the_mode_of_the_file_it_replaces() {
    use std::os::unix::fs::PermissionsExt;
    let net = Net::start(2, "1+1", SMALL_BLOCK).await;
    net.put("diary.txt", b"private").await;
    let object = net.object("diary.txt");
    let (versions, _) = net.session.versions(&net.keys, Some(object)).await.unwrap();
    let version = newest(versions.values()).unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;

    // A new file gets what the umask gives any new file here.
    let fresh = net.work.path().join("fresh");
    std::fs::write(&fresh, b"").unwrap();
    let new = net.work.path().join("new.txt");
    net.session
        .download(&net.keys, version, &new, &[], no_progress())
        .await
        .unwrap();
    assert_eq!(mode(&new), mode(&fresh));

    // A replaced file keeps its mode.
    let existing = net.work.path().join("existing.txt");
    std::fs::write(&existing, b"old").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).unwrap();
    net.session
        .download(&net.keys, version, &existing, &[], no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&existing).unwrap(), b"private");
    assert_eq!(mode(&existing), 0o640);
}

impl Net {
    /// Starts one more supplier, not hired; returns its index.
    async fn spare(&mut self) -> usize {
        let dir = tempfile::tempdir().unwrap();
        supplier::init_data_dir(dir.path(), 2048).unwrap();
        let node = Supplier::spawn(Config::for_tests(dir.path()))
            .await
            .unwrap();
        self.addrs.push(node.local_addr());
        self.suppliers.push(Some(node));
        self.dirs.push(dir);
        self.suppliers.len() - 1
    }

    fn saved_set(&self) -> SupplierSet {
        SupplierSet::load(self.session.home().dir())
            .unwrap()
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_supplier_is_replaced_and_what_it_held_rebuilt() {
    let mut net = Net::start(4, "2+2", SMALL_BLOCK).await;
    let mut files = Vec::new();
    for (name, len) in [
        ("empty", 0),
        ("note.txt", 1000),
        ("multi/block.bin", 3 * SMALL_BLOCK + 77),
    ] {
        let data = random(len);
        net.put(name, &data).await;
        files.push((name, 1, data));
    }
    let second = random(SMALL_BLOCK + 1);
    assert_eq!(net.put("note.txt", &second).await, 2);
    files.push(("note.txt", 2, second));
    // A location of our own besides `master`.
    let key_id: common::id::KeyId = format!("photos${}", net.session.user()).parse().unwrap();
    net.session
        .home()
        .keystore()
        .unwrap()
        .add_private(
            common::keystore::NewKey {
                key_id: key_id.clone(),
                label: String::new(),
                epoch: 0,
                origin: common::keystore::Origin::Created,
            },
            &common::crypto::PrivateKey::generate(2048).unwrap(),
            None,
        )
        .unwrap();
    let photos = net.session.location_keys(&key_id).unwrap();
    net.session.register_location(&photos).await.unwrap();
    let picture = random(2 * SMALL_BLOCK);
    let local = net.file("picture", &picture);
    let name = NormalPath::new("cat.jpg").unwrap();
    net.session
        .upload(&photos, &local, &name, 1, no_progress())
        .await
        .unwrap();
    let before = net.saved_set();
    let spare = net.spare().await;
    let spare_addr = net.addrs[spare].to_string();

    // Bad inputs change nothing.
    let err = net
        .session
        .replace_supplier(4, &spare_addr, 1 << 30, Options::default(), no_progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no position 4"), "{err}");
    let err = net
        .session
        .replace_supplier(
            1,
            &net.addrs[2].to_string(),
            1 << 30,
            Options::default(),
            no_progress(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("position 2 already"), "{err}");
    assert_eq!(net.saved_set(), before);

    // Position 1 is lost, and so are 2 and 3 for now: with one position
    // left of four (2+2), nothing can be rebuilt, and the error says so.
    for position in [1, 2, 3] {
        net.stop(position).await;
    }
    let err = net
        .session
        .replace_supplier(1, &spare_addr, 1 << 30, Options::default(), no_progress())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, TransferError::TooFewToRebuild { .. }),
        "{text}"
    );
    assert!(
        text.contains("unreachable supplier positions: [1, 2, 3]"),
        "{text}"
    );
    assert_eq!(net.saved_set(), before);

    // With 2 and 3 back, position 1 is rebuilt onto the spare.
    net.restart(2).await;
    net.restart(3).await;
    let stored = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = stored.clone();
    let done = net
        .session
        .replace_supplier(
            1,
            &spare_addr,
            1 << 30,
            Options::default(),
            Arc::new(move |n| {
                counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }),
        )
        .await
        .unwrap();
    assert_eq!(done.locations, 2);
    assert_eq!(done.rebuilt.versions, 5, "{done:?}");
    assert!(done.rebuilt.skipped.is_empty(), "{done:?}");
    assert!(!done.released, "the old supplier is down");
    assert_eq!(
        stored.load(std::sync::atomic::Ordering::Relaxed),
        done.rebuilt.bytes
    );
    let after = net.saved_set();
    assert_eq!(after.suppliers[1].addr, spare_addr);
    assert_eq!(after.suppliers[1].position, 1);
    assert_eq!(
        after.suppliers[1].node_id,
        net.suppliers[spare].as_ref().unwrap().node_id()
    );
    for position in [0, 2, 3] {
        assert_eq!(after.suppliers[position], before.suppliers[position]);
    }

    // Run again onto the same supplier (a repair), it finds everything in
    // place and leaves the set alone.
    let again = net
        .session
        .replace_supplier(1, &spare_addr, 1 << 30, Options::default(), no_progress())
        .await
        .unwrap();
    assert_eq!(
        (again.rebuilt.versions, again.rebuilt.already),
        (0, 5),
        "{again:?}"
    );
    assert_eq!(net.saved_set(), after);

    // Only the new position 1 and position 3 are left: every version of
    // every file still comes back whole.
    net.stop(0).await;
    net.stop(2).await;
    for (name, version, data) in &files {
        assert_eq!(
            &net.get(name, Some(*version)).await.unwrap(),
            data,
            "{name}#{version}"
        );
    }
    let object = photos.secrets.object_id(&name);
    let (versions, _) = net.session.versions(&photos, Some(object)).await.unwrap();
    let dest = net.work.path().join("cat-back.jpg");
    net.session
        .download(
            &photos,
            newest(versions.values()).unwrap(),
            &dest,
            &[0, 2],
            no_progress(),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(dest).unwrap(), picture);

    // The supplier that lost position 1 comes back, still holding every
    // version for position 1. Taken for position 0, it must not count those
    // with fragments as held: they are made again for position 0.
    net.restart(1).await;
    net.restart(2).await;
    let done = net
        .session
        .replace_supplier(
            0,
            &net.addrs[1].to_string(),
            1 << 30,
            Options::default(),
            no_progress(),
        )
        .await
        .unwrap();
    // The empty file has no blocks, so its manifest is all a position
    // holds of it, and that is the same for every position.
    assert_eq!(
        (done.rebuilt.versions, done.rebuilt.already),
        (4, 1),
        "{done:?}"
    );
    net.stop(2).await;
    net.stop(3).await;
    for (name, version, data) in &files {
        assert_eq!(
            &net.get(name, Some(*version)).await.unwrap(),
            data,
            "{name}#{version} from positions 0 and 1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_that_still_answers_is_copied_from_then_released() {
    // Without parity (1+0) the old supplier is the only source there is.
    for (n, scheme) in [(1, "1+0"), (2, "1+1")] {
        let mut net = Net::start(n, scheme, SMALL_BLOCK).await;
        let data = random(2 * SMALL_BLOCK + 3);
        net.put("doc", &data).await;
        let spare = net.spare().await;
        let old = net.session.suppliers().unwrap().suppliers[0].clone();
        let done = net
            .session
            .replace_supplier(
                0,
                &net.addrs[spare].to_string(),
                1 << 30,
                Options {
                    release_old: true,
                    ..Options::default()
                },
                no_progress(),
            )
            .await
            .unwrap();
        assert_eq!(done.rebuilt.versions, 1, "{scheme}: {done:?}");
        assert!(done.released, "{scheme}");
        assert_ne!(net.saved_set().suppliers[0], old);
        // The old supplier no longer has us as a customer.
        let store_dir = supplier::db_dir(net.dirs[0].path());
        net.stop(0).await;
        let store = Store::open(&store_dir).unwrap();
        let owner = net.session.master().public_key().node_id();
        assert!(store.contract(&owner).unwrap().is_none(), "{scheme}");
        drop(store);
        // The new copy serves the file.
        assert_eq!(net.get("doc", None).await.unwrap(), data, "{scheme}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_too_few_answer_with_are_left_out_only_when_asked() {
    let mut net = Net::start(4, "2+2", SMALL_BLOCK).await;
    let data = random(SMALL_BLOCK + 9);
    net.put("kept", &data).await;
    // A version committed on position 0 only, the others being down.
    for position in [1, 2, 3] {
        net.stop(position).await;
    }
    assert!(net.try_put("partial", b"half done", 1).await.is_err());
    for position in [1, 2, 3] {
        net.restart(position).await;
    }
    net.session = Session::open(
        net.session.home().clone(),
        net.session.home().master_key(None).unwrap(),
    )
    .unwrap();
    net.session.set_block_size(SMALL_BLOCK);

    // Every supplier answers, so the partial version can never be read: it
    // is left out, and the old supplier (copied from) is kept, not released.
    let first = net.spare().await;
    let done = net
        .session
        .replace_supplier(
            3,
            &net.addrs[first].to_string(),
            1 << 30,
            Options::default(),
            no_progress(),
        )
        .await
        .unwrap();
    assert_eq!(done.rebuilt.versions, 1, "{done:?}");
    assert_eq!(done.rebuilt.skipped.len(), 1, "{done:?}");
    assert!(
        done.rebuilt.skipped[0].contains("committed on 1 suppliers"),
        "{done:?}"
    );
    assert!(!done.released);

    // With 1 and 2 down, the partial version might be readable once they
    // are back: replacing 1 stops, unless asked to leave such versions out.
    net.stop(1).await;
    net.stop(2).await;
    let before = net.saved_set();
    let second = net.spare().await;
    let second_addr = net.addrs[second].to_string();
    let err = net
        .session
        .replace_supplier(1, &second_addr, 1 << 30, Options::default(), no_progress())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot rebuild partial#1"), "{text}");
    assert!(
        text.contains("unreachable supplier positions: [1, 2]"),
        "{text}"
    );
    assert_eq!(net.saved_set(), before);
    let done = net
        .session
        .replace_supplier(1, &second_addr, 1 << 30, skip(), no_progress())
        .await
        .unwrap();
    // "kept" may have gone over before the stop.
    assert_eq!(done.rebuilt.versions + done.rebuilt.already, 1, "{done:?}");
    assert_eq!(done.rebuilt.skipped.len(), 1, "{done:?}");
    assert!(
        done.rebuilt.skipped[0].contains("only positions [0]"),
        "{done:?}"
    );
    assert!(!done.released);
    assert_eq!(net.saved_set().suppliers[1].addr, second_addr);
    // "kept" reads from the new positions 1 and 3 alone.
    net.stop(0).await;
    assert_eq!(net.get("kept", None).await.unwrap(), data);
}
