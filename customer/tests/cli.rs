//! The `silt` binary as a new user runs it: init, identity and key commands
//! against a real identity server (an in-process supplier over loopback
//! mutual TLS).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use supplier::{Config, Supplier};
use tempfile::TempDir;

/// An identity server on an ephemeral loopback port.
struct IdServer {
    node: Supplier,
    dir: TempDir,
}

impl IdServer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        supplier::init_data_dir(dir.path(), 2048).unwrap();
        let node = Supplier::spawn(Config::for_tests(dir.path()))
            .await
            .unwrap();
        Self { node, dir }
    }

    /// Restarts on the same port, keeping the data.
    async fn restart(&mut self) {
        let addr = self.node.local_addr();
        self.node.shutdown().await;
        let config = Config {
            listen: addr,
            ..Config::for_tests(self.dir.path())
        };
        self.node = Supplier::spawn(config).await.unwrap();
    }

    fn addr(&self) -> String {
        self.node.local_addr().to_string()
    }
}

/// Runs `silt` with `home` and returns its output.
fn silt(home: &Path, args: &[&str]) -> Output {
    silt_with(home, args, &[])
}

fn silt_with(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_silt"));
    command
        .args(args)
        .env("SILT_HOME", home)
        .env_remove("SILT_PASSPHRASE")
        .env_remove("SILT_PASSPHRASE_FILE")
        .env_remove("RUST_LOG")
        .env_remove("GLIBC_TUNABLES")
        .stdin(std::process::Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn fails(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json(output: &Output) -> Value {
    serde_json::from_str(&ok(output)).unwrap()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    all.sort();
    all
}

fn init(home: &Path, name: &str, server: &str) -> Value {
    json(&silt(
        home,
        &[
            "--json",
            "init",
            "--name",
            name,
            "--id-server",
            server,
            "--key-size",
            "2048",
        ],
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_creates_a_private_master_key_and_a_published_identity_once() {
    let server = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");

    // The default key size, as a new user would run it.
    let out = ok(&silt(
        &home,
        &["init", "--name", "alice", "--id-server", &server.addr()],
    ));
    assert!(out.contains("created identity alice@127.0.0.1_"), "{out}");
    assert!(out.contains("3072-bit RSA"), "{out}");
    assert!(out.contains("published to"), "{out}");

    let keys = files(&home.join("keys"));
    let master: Vec<_> = keys
        .iter()
        .filter(|p| p.to_string_lossy().contains("master$alice@"))
        .collect();
    assert_eq!(master.len(), 1);
    assert_eq!(
        fs::metadata(master[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::metadata(home.join("identity"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let text = fs::read_to_string(master[0]).unwrap();
    assert!(text.contains("BEGIN PRIVATE KEY"));

    let shown = json(&silt(&home, &["--json", "identity", "show"]));
    assert_eq!(shown["published"], true);
    assert_eq!(shown["key_bits"], 3072);
    let node_id = shown["node_id"].as_str().unwrap().to_owned();

    // A second init refuses and changes nothing.
    let before = fs::read(master[0]).unwrap();
    let err = fails(&silt(
        &home,
        &["init", "--name", "alice", "--id-server", &server.addr()],
    ));
    assert!(err.contains("already initialised"), "{err}");
    assert_eq!(fs::read(master[0]).unwrap(), before);
    let shown = json(&silt(&home, &["--json", "identity", "show"]));
    assert_eq!(shown["node_id"], node_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_name_is_refused_and_nothing_is_kept() {
    let server = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    init(&dir.path().join("alice"), "alice", &server.addr());

    let mallory = dir.path().join("mallory");
    let err = fails(&silt(
        &mallory,
        &[
            "init",
            "--name",
            "alice",
            "--id-server",
            &server.addr(),
            "--key-size",
            "2048",
        ],
    ));
    assert!(err.contains("already taken"), "{err}");
    assert!(!mallory.join("identity").exists());
    assert!(!mallory.join("config.toml").exists());
    assert!(
        files(&mallory.join("keys"))
            .iter()
            .all(|p| !p.to_string_lossy().contains("master$"))
    );
    // The name is free to try again under another name.
    init(&mallory, "mallory", &server.addr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_keeps_the_identity_and_publish_catches_up() {
    let mut server = IdServer::start().await;
    let addr = server.addr();
    server.node.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    let output = silt(
        &home,
        &[
            "init",
            "--name",
            "alice",
            "--id-server",
            &addr,
            "--key-size",
            "2048",
        ],
    );
    ok(&output);
    let warning = String::from_utf8_lossy(&output.stderr);
    assert!(warning.contains("unreachable"), "{warning}");
    assert!(warning.contains("silt identity publish"), "{warning}");
    assert_eq!(
        json(&silt(&home, &["--json", "identity", "show"]))["published"],
        false
    );

    // Publishing while the server is down fails with a clear error.
    let err = fails(&silt(&home, &["identity", "publish"]));
    assert!(err.contains("unreachable"), "{err}");

    server.restart().await;
    let out = ok(&silt(&home, &["identity", "publish"]));
    assert!(out.contains("published alice@"), "{out}");
    assert_eq!(
        json(&silt(&home, &["--json", "identity", "show"]))["published"],
        true
    );
    // Publishing again is idempotent.
    ok(&silt(&home, &["identity", "publish"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_listed_and_deleted_and_bad_aliases_write_nothing() {
    let server = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    init(&home, "alice", &server.addr());

    let created = json(&silt(
        &home,
        &[
            "--json", "key", "create", "photos", "--label", "trip", "--size", "2048",
        ],
    ));
    assert!(
        created["key_id"]
            .as_str()
            .unwrap()
            .starts_with("photos$alice@")
    );
    let random = json(&silt(&home, &["--json", "key", "create", "--size", "2048"]));
    let random_id = random["key_id"].as_str().unwrap().to_owned();
    let alias = random_id.split('$').next().unwrap();
    assert!(
        alias.starts_with("share_") && alias.len() == 6 + 32,
        "{alias}"
    );

    let listed = json(&silt(&home, &["--json", "key", "list"]));
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.iter().any(|id| id.starts_with("master$alice@")));
    assert!(ids.iter().any(|id| id.starts_with("photos$alice@")));
    assert!(ids.contains(&random_id.as_str()));
    let photos = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"].as_str().unwrap().starts_with("photos"))
        .unwrap();
    assert_eq!(photos["label"], "trip");
    assert_eq!(photos["origin"], "created");
    assert_eq!(photos["epoch"], 0);
    assert_eq!(photos["bits"], 2048);

    // Bad aliases: a clear message, and nothing written.
    let before = files(&home.join("keys"));
    let long = "a".repeat(51);
    for (bad, why) in [
        ("../x", "must start with a lowercase letter"),
        ("A", "3 to 50"),
        ("ab", "3 to 50"),
        (long.as_str(), "3 to 50"),
        ("master", "identity key"),
        ("photos", "already exists"),
    ] {
        let err = fails(&silt(&home, &["key", "create", bad, "--size", "2048"]));
        assert!(err.contains(why), "{bad}: {err}");
    }
    let err = fails(&silt(&home, &["key", "create", "fine", "--size", "1024"]));
    assert!(err.contains("2048, 3072 or 4096"), "{err}");
    assert_eq!(files(&home.join("keys")), before);

    // Deleting: a private key only when confirmed (no terminal here, so
    // --yes), by alias; the master key is refused; unknown keys are named.
    let err = fails(&silt(&home, &["key", "delete", "photos"]));
    assert!(err.contains("pass --yes"), "{err}");
    assert_eq!(files(&home.join("keys")), before);
    ok(&silt(&home, &["key", "delete", "photos", "--yes"]));
    let err = fails(&silt(&home, &["key", "delete", "photos"]));
    assert!(err.contains("no key photos$alice@"), "{err}");
    let err = fails(&silt(&home, &["key", "delete", "master"]));
    assert!(err.contains("cannot be deleted"), "{err}");
    let listed = json(&silt(&home, &["--json", "key", "list"]));
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);

    // Errors are JSON too with --json, and the exit code is non-zero.
    let output = silt(&home, &["--json", "key", "delete", "nosuchkey"]);
    assert!(!output.status.success());
    let error: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(error["error"].as_str().unwrap().contains("no key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_prints_public_parts_and_guards_private_ones() {
    let server = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice");
    let bob = dir.path().join("bob");
    init(&alice, "alice", &server.addr());
    init(&bob, "bob", &server.addr());
    ok(&silt(
        &alice,
        &[
            "key", "create", "photos", "--label", "trip", "--size", "2048",
        ],
    ));

    let public = ok(&silt(&alice, &["key", "export", "photos"]));
    assert!(public.contains("Silt-Key-Id: photos$alice@"), "{public}");
    assert!(
        public.contains("BEGIN PUBLIC KEY") && !public.contains("PRIVATE"),
        "{public}"
    );

    // Private export needs confirmation: refused without a terminal or --yes.
    let err = fails(&silt(&alice, &["key", "export", "photos", "--private"]));
    assert!(err.contains("--yes"), "{err}");
    let private = ok(&silt(
        &alice,
        &["key", "export", "photos", "--private", "--yes"],
    ));
    assert!(private.contains("BEGIN PRIVATE KEY"));
    // The master key never leaves unencrypted.
    let err = fails(&silt(
        &alice,
        &["key", "export", "master", "--private", "--yes"],
    ));
    assert!(err.contains("identity backup"), "{err}");

    // Bob imports Alice's public key as it was exported.
    let file = dir.path().join("photos.pub");
    fs::write(&file, &public).unwrap();
    let imported = json(&silt(
        &bob,
        &["--json", "key", "import", file.to_str().unwrap()],
    ));
    assert!(
        imported["key_id"]
            .as_str()
            .unwrap()
            .starts_with("photos$alice@")
    );
    assert_eq!(imported["kind"], "public");
    assert_eq!(imported["label"], "trip");
    assert_eq!(imported["origin"], "imported");
    // Importing twice is refused; a file without a key is named.
    let err = fails(&silt(&bob, &["key", "import", file.to_str().unwrap()]));
    assert!(err.contains("already exists"), "{err}");
    let junk = dir.path().join("junk.pem");
    fs::write(&junk, "hello").unwrap();
    let err = fails(&silt(&bob, &["key", "import", junk.to_str().unwrap()]));
    assert!(err.contains("no PEM key"), "{err}");
    // A private key imports under the name the user gives.
    let file = dir.path().join("photos.key");
    fs::write(
        &file,
        private
            .lines()
            .filter(|l| !l.starts_with("Silt-Key-Id"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let err = fails(&silt(&bob, &["key", "import", file.to_str().unwrap()]));
    assert!(err.contains("--as"), "{err}");
    let alice_id = json(&silt(&alice, &["--json", "identity", "show"]))["user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let imported = json(&silt(
        &bob,
        &[
            "--json",
            "key",
            "import",
            file.to_str().unwrap(),
            "--as",
            &format!("holiday${alice_id}"),
        ],
    ));
    assert_eq!(imported["kind"], "private");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_the_same_node_id_and_a_wrong_passphrase_fails_cleanly() {
    let server = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice");
    let created = init(&alice, "alice", &server.addr());
    let backup = dir.path().join("alice.backup");
    let pass = [("SILT_PASSPHRASE", "correct horse battery")];

    let err = fails(&silt(
        &alice,
        &["identity", "backup", "--out", backup.to_str().unwrap()],
    ));
    assert!(err.contains("passphrase"), "{err}");
    ok(&silt_with(
        &alice,
        &["identity", "backup", "--out", backup.to_str().unwrap()],
        &pass,
    ));
    assert_eq!(
        fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !fs::read_to_string(&backup)
            .unwrap()
            .contains("BEGIN PRIVATE KEY")
    );
    let err = fails(&silt_with(
        &alice,
        &["identity", "backup", "--out", backup.to_str().unwrap()],
        &pass,
    ));
    assert!(err.contains("already exists"), "{err}");

    let laptop = dir.path().join("laptop");
    let err = fails(&silt_with(
        &laptop,
        &["identity", "restore", backup.to_str().unwrap()],
        &[("SILT_PASSPHRASE", "wrong")],
    ));
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(!laptop.join("identity").exists());

    let restored = json(&silt_with(
        &laptop,
        &["--json", "identity", "restore", backup.to_str().unwrap()],
        &pass,
    ));
    assert_eq!(restored["node_id"], created["node_id"]);
    let shown = json(&silt(&laptop, &["--json", "identity", "show"]));
    assert_eq!(shown["node_id"], created["node_id"]);
    assert_eq!(shown["user_id"], created["user_id"]);
    // The restored home works: it can publish (same key, same revision).
    ok(&silt(&laptop, &["identity", "publish"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_master_key_needs_its_passphrase() {
    let server = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    let pass_file = dir.path().join("pass");
    fs::write(&pass_file, "a good passphrase\n").unwrap();
    let pass_arg = pass_file.to_str().unwrap();
    let created = json(&silt(
        &home,
        &[
            "--json",
            "--passphrase-file",
            pass_arg,
            "init",
            "--name",
            "alice",
            "--id-server",
            &server.addr(),
            "--key-size",
            "2048",
            "--protect",
        ],
    ));
    assert_eq!(created["protected"], true);
    assert_eq!(created["published"], true);
    let master = files(&home.join("keys"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".private"))
        .unwrap();
    assert!(
        fs::read_to_string(master)
            .unwrap()
            .contains("BEGIN ENCRYPTED PRIVATE KEY")
    );

    // Listing and showing need no passphrase; using the key does.
    ok(&silt(&home, &["key", "list"]));
    assert_eq!(
        json(&silt(&home, &["--json", "identity", "show"]))["protected"],
        true
    );
    let err = fails(&silt(&home, &["identity", "publish"]));
    assert!(err.contains("passphrase"), "{err}");
    let err = fails(&silt_with(
        &home,
        &["identity", "publish"],
        &[("SILT_PASSPHRASE", "nope")],
    ));
    assert!(err.contains("wrong passphrase"), "{err}");
    ok(&silt(
        &home,
        &["--passphrase-file", pass_arg, "identity", "publish"],
    ));
}

/// `silt` moves data in blocks and fragments of megabytes; with glibc's
/// default thresholds each was mapped and zeroed afresh (see
/// `common::allocator`). A user's own `GLIBC_TUNABLES` wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_allocator_is_tuned_unless_glibc_tunables_sets_it() {
    let home = tempfile::tempdir().unwrap();
    let debug = ("RUST_LOG", "debug");
    let output = silt_with(home.path(), &["key", "list"], &[debug]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tuning=Applied"), "{stderr}");

    let mine = ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536");
    let output = silt_with(home.path(), &["key", "list"], &[debug, mine]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tuning=OperatorSettings"), "{stderr}");
    assert!(!stderr.contains("tuning=Applied"), "{stderr}");
}

#[test]
fn bad_init_input_gets_clear_errors_and_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    for (args, why) in [
        (
            vec!["init", "--name", "Al", "--id-server", "127.0.0.1"],
            "invalid user name",
        ),
        (
            vec!["init", "--name", "alice", "--id-server", "bad host"],
            "invalid identity host",
        ),
        (
            vec!["init", "--name", "alice", "--id-server", "127.0.0.1:0"],
            "port",
        ),
        (
            vec![
                "init",
                "--name",
                "alice",
                "--id-server",
                "127.0.0.1",
                "--key-size",
                "1000",
            ],
            "2048, 3072 or 4096",
        ),
    ] {
        let err = fails(&silt(&home, &args));
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(!home.join("identity").exists());
    }
    let err = fails(&silt(&home, &["identity", "show"]));
    assert!(err.contains("not initialised"), "{err}");
    let err = fails(&silt(&home, &["key", "list"]));
    assert!(err.contains("not initialised"), "{err}");
    assert!(!home.join("keys").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_ls_rm_from_the_command_line() {
    let server = IdServer::start().await;
    let other = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    init(&home, "alice", &server.addr());
    let err = fails(&silt(&home, &["put", "/etc/hostname"]));
    assert!(err.contains("no suppliers are hired"), "{err}");
    let hired = json(&silt(
        &home,
        &[
            "--json",
            "suppliers",
            "hire",
            "--supplier",
            &server.addr(),
            "--supplier",
            &other.addr(),
        ],
    ));
    assert_eq!(hired["scheme"], "1+1");
    let listed = json(&silt(&home, &["--json", "suppliers", "list"]));
    assert_eq!(listed["suppliers"][1]["online"], true);

    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let file = dir.path().join("report.bin");
    fs::write(&file, &data).unwrap();
    let put = json(&silt(
        &home,
        &["--json", "put", file.to_str().unwrap(), "docs/report.bin"],
    ));
    assert_eq!(put["files"][0]["version"], 1);
    ok(&silt(
        &home,
        &["put", file.to_str().unwrap(), "docs/report.bin"],
    ));

    let listing = json(&silt(&home, &["--json", "ls"]));
    assert_eq!(listing["files"][0]["path"], "docs/report.bin");
    assert_eq!(listing["files"][0]["version"], 2);
    assert_eq!(listing["files"][0]["size"], 100_000);

    let out = dir.path().join("copy.bin");
    ok(&silt(
        &home,
        &["get", "docs/report.bin#1", out.to_str().unwrap()],
    ));
    assert_eq!(fs::read(&out).unwrap(), data);
    let err = fails(&silt(
        &home,
        &["get", "docs/nothing.bin", out.to_str().unwrap()],
    ));
    assert!(
        err.contains("no file or directory docs/nothing.bin"),
        "{err}"
    );

    ok(&silt(&home, &["rm", "docs/report.bin"]));
    let listing = json(&silt(&home, &["--json", "ls"]));
    assert_eq!(listing["files"].as_array().unwrap().len(), 0);
    let err = fails(&silt(&home, &["rm", "docs/report.bin"]));
    assert!(err.contains("no file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supplier_is_replaced_from_the_command_line() {
    let mut first = IdServer::start().await;
    let second = IdServer::start().await;
    let spare = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    init(&home, "alice", &first.addr());
    let err = fails(&silt(&home, &["suppliers", "replace", "0"]));
    assert!(err.contains("no suppliers are hired"), "{err}");
    ok(&silt(
        &home,
        &[
            "suppliers",
            "hire",
            "--supplier",
            &first.addr(),
            "--supplier",
            &second.addr(),
        ],
    ));
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 241) as u8).collect();
    let file = dir.path().join("notes.bin");
    fs::write(&file, &data).unwrap();
    ok(&silt(&home, &["put", file.to_str().unwrap(), "notes.bin"]));

    let err = fails(&silt(
        &home,
        &["suppliers", "replace", "7", "--supplier", &spare.addr()],
    ));
    assert!(err.contains("there is no position 7"), "{err}");
    let err = fails(&silt(
        &home,
        &["suppliers", "replace", "1", "--supplier", &first.addr()],
    ));
    assert!(err.contains("position 0 already"), "{err}");

    let replaced = json(&silt(
        &home,
        &[
            "--json",
            "suppliers",
            "replace",
            "1",
            "--supplier",
            &spare.addr(),
            "--release-old",
        ],
    ));
    assert_eq!(replaced["versions_rebuilt"], 1, "{replaced}");
    assert_eq!(replaced["released"], true, "{replaced}");
    assert_eq!(replaced["new"]["addr"], spare.addr());
    let listed = json(&silt(&home, &["--json", "suppliers", "list"]));
    assert_eq!(listed["suppliers"][1]["addr"], spare.addr());

    // The first supplier goes away: the rebuilt copy alone serves the file.
    first.node.shutdown().await;
    let out = dir.path().join("back.bin");
    ok(&silt(&home, &["get", "notes.bin", out.to_str().unwrap()]));
    assert_eq!(fs::read(&out).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_is_created_handed_over_and_used_from_the_command_line() {
    let server = IdServer::start().await;
    let other = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice");
    init(&alice, "alice", &server.addr());
    // Without suppliers there is nowhere to share from, and no key is made.
    let err = fails(&silt(&alice, &["share", "create", "holiday"]));
    assert!(err.contains("no suppliers are hired"), "{err}");
    let listed = json(&silt(&alice, &["--json", "share", "list"]));
    assert_eq!(listed["shares"].as_array().unwrap().len(), 0);
    ok(&silt(
        &alice,
        &[
            "suppliers",
            "hire",
            "--supplier",
            &server.addr(),
            "--supplier",
            &other.addr(),
        ],
    ));
    for (alias, expected) in [
        ("master", "identity key's alias"),
        ("Not An Alias", "alias"),
    ] {
        let err = fails(&silt(&alice, &["share", "create", alias]));
        assert!(err.contains(expected), "{alias}: {err}");
    }
    let created = json(&silt(
        &alice,
        &["--json", "share", "create", "holiday", "--size", "2048"],
    ));
    assert_eq!(created["created"], true, "{created}");
    assert_eq!(created["registered"], 2, "{created}");
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    assert!(key_id.starts_with("holiday$alice@"), "{key_id}");
    // Again: the same key, registered again rather than replaced.
    let again = json(&silt(&alice, &["--json", "share", "create", "holiday"]));
    assert_eq!(again["created"], false, "{again}");
    assert_eq!(again["key_id"], key_id.as_str());

    let photo: Vec<u8> = (0..90_000u32).map(|i| (i % 239) as u8).collect();
    let file = dir.path().join("beach.jpg");
    fs::write(&file, &photo).unwrap();
    ok(&silt(
        &alice,
        &[
            "put",
            file.to_str().unwrap(),
            &format!("{key_id}:photos/beach.jpg"),
        ],
    ));
    let export = dir.path().join("holiday.pem");
    fs::write(
        &export,
        ok(&silt(
            &alice,
            &["key", "export", "--private", "--yes", &key_id],
        )),
    )
    .unwrap();

    // Bob imports the key and works in the share, on Alice's suppliers.
    let bob = dir.path().join("bob");
    ok(&silt(
        &bob,
        &[
            "init",
            "--name",
            "bob",
            "--id-server",
            &server.addr(),
            "--bootstrap",
            &server.addr(),
            "--key-size",
            "2048",
        ],
    ));
    ok(&silt(&bob, &["key", "import", export.to_str().unwrap()]));
    let shares = json(&silt(&bob, &["--json", "share", "list"]));
    assert_eq!(shares["shares"][0]["key_id"], key_id.as_str(), "{shares}");
    assert_eq!(shares["shares"][0]["mine"], false, "{shares}");
    let listing = json(&silt(&bob, &["--json", "ls", &format!("{key_id}:")]));
    assert_eq!(listing["files"][0]["path"], "photos/beach.jpg", "{listing}");
    let out = dir.path().join("bob-beach.jpg");
    ok(&silt(
        &bob,
        &[
            "get",
            &format!("{key_id}:photos/beach.jpg"),
            out.to_str().unwrap(),
        ],
    ));
    assert_eq!(fs::read(&out).unwrap(), photo);
    let note = dir.path().join("note.txt");
    fs::write(&note, b"see you there").unwrap();
    ok(&silt(
        &bob,
        &["put", note.to_str().unwrap(), &format!("{key_id}:note.txt")],
    ));
    let err = fails(&silt(&bob, &["rm", &format!("{key_id}:note.txt")]));
    assert!(err.contains("only the owner"), "{err}");
    let listing = json(&silt(&alice, &["--json", "ls", &format!("{key_id}:")]));
    let paths: Vec<&str> = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["note.txt", "photos/beach.jpg"], "{listing}");
    let status = json(&silt(&alice, &["--json", "status"]));
    assert_eq!(status["shares"]["yours"], 1, "{status}");
    let status = json(&silt(&bob, &["--json", "status"]));
    assert_eq!(status["shares"]["shared_with_you"], 1, "{status}");

    // Carol was given nothing.
    let carol = dir.path().join("carol");
    init(&carol, "carol", &server.addr());
    let err = fails(&silt(&carol, &["ls", &format!("{key_id}:")]));
    assert!(err.contains("no key holiday$alice@"), "{err}");

    // Deleting: only the owner, and only when confirmed.
    let err = fails(&silt(&bob, &["share", "delete", &key_id, "--yes"]));
    assert!(err.contains("only its owner deletes it"), "{err}");
    let err = fails(&silt(&alice, &["share", "delete", "holiday"]));
    assert!(err.contains("pass --yes"), "{err}");
    let err = fails(&silt(&alice, &["share", "delete", "nothing", "--yes"]));
    assert!(err.contains("no key nothing$alice@"), "{err}");
    let deleted = json(&silt(
        &alice,
        &["--json", "share", "delete", "holiday", "--yes"],
    ));
    assert_eq!(deleted["files"], 2, "{deleted}");
    assert_eq!(deleted["suppliers"], 2, "{deleted}");
    let shares = json(&silt(&alice, &["--json", "share", "list"]));
    assert_eq!(shares["shares"].as_array().unwrap().len(), 0);
    let err = fails(&silt(&bob, &["ls", &format!("{key_id}:")]));
    assert!(err.contains("not authorized for this location"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_is_granted_to_a_running_daemon_from_the_command_line() {
    use std::io::BufRead;

    let server = IdServer::start().await;
    let other = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice");
    init(&alice, "alice", &server.addr());
    ok(&silt(
        &alice,
        &[
            "suppliers",
            "hire",
            "--supplier",
            &server.addr(),
            "--supplier",
            &other.addr(),
        ],
    ));
    let created = json(&silt(
        &alice,
        &["--json", "share", "create", "holiday", "--size", "2048"],
    ));
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    let file = dir.path().join("plan.txt");
    fs::write(&file, b"meet at noon").unwrap();
    ok(&silt(
        &alice,
        &["put", file.to_str().unwrap(), &format!("{key_id}:plan.txt")],
    ));

    // Bob's daemon needs an address his identity can advertise: a port
    // this test binds and lets go of for it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bob = dir.path().join("bob");
    let listen = format!("127.0.0.1:{port}");
    let bob_id = json(&silt(
        &bob,
        &[
            "--json",
            "init",
            "--name",
            "bob",
            "--id-server",
            &server.addr(),
            "--bootstrap",
            &server.addr(),
            "--listen",
            &listen,
            "--key-size",
            "2048",
        ],
    ))["user_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let status = json(&silt(&bob, &["--json", "status"]));
    assert_eq!(status["daemon"]["running"], false, "{status}");
    // Not running yet: the grant stops at its first step.
    let err = fails(&silt(&alice, &["share", "grant", "holiday", &bob_id]));
    assert!(
        err.contains("step 1") && err.contains("silt daemon"),
        "{err}"
    );
    let err = fails(&silt(&alice, &["share", "grant", "holiday", "not a user"]));
    assert!(err.contains("is not a user ID"), "{err}");

    /// Kills the daemon if the test ends early.
    struct Running(Option<std::process::Child>);
    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(child) = &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_silt"))
        .args(["daemon"])
        .env("SILT_HOME", &bob)
        .env_remove("SILT_PASSPHRASE")
        .env_remove("SILT_PASSPHRASE_FILE")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = daemon.stdout.take().unwrap();
    let pid = daemon.id();
    let mut running = Running(Some(daemon));
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        }),
    )
    .await
    .expect("the daemon never said it was listening")
    .unwrap()
    .unwrap();
    assert!(first.contains(&format!("listening on {listen}")), "{first}");

    let status = json(&silt(&bob, &["--json", "status"]));
    assert_eq!(status["daemon"]["running"], true, "{status}");
    assert_eq!(status["daemon"]["endpoint"], listen.as_str(), "{status}");
    let granted = json(&silt(
        &alice,
        &["--json", "share", "grant", "holiday", &bob_id],
    ));
    assert_eq!(granted["files"], 1, "{granted}");
    assert_eq!(granted["endpoint"], listen.as_str(), "{granted}");
    let members = json(&silt(&alice, &["--json", "share", "members", "holiday"]));
    assert_eq!(members["members"][0]["user"], bob_id.as_str(), "{members}");
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    // Granting again records Bob once.
    ok(&silt(&alice, &["share", "grant", "holiday", &bob_id]));
    let members = json(&silt(&alice, &["--json", "share", "members", "holiday"]));
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    let err = fails(&silt(&bob, &["share", "members", &key_id]));
    assert!(err.contains("only its owner"), "{err}");
    let err = fails(&silt(&alice, &["share", "members", "nothing"]));
    assert!(err.contains("no key"), "{err}");
    let shares = json(&silt(&bob, &["--json", "share", "list"]));
    assert_eq!(shares["shares"][0]["key_id"], key_id.as_str(), "{shares}");
    assert!(
        shares["shares"][0]["origin"]
            .as_str()
            .unwrap()
            .starts_with("received from alice@"),
        "{shares}"
    );
    let out = dir.path().join("bob-plan.txt");
    ok(&silt(
        &bob,
        &["get", &format!("{key_id}:plan.txt"), out.to_str().unwrap()],
    ));
    assert_eq!(fs::read(&out).unwrap(), b"meet at noon");

    // Audits: Bob holds both halves of the share's key, and his master key.
    let bob_master = format!("master${bob_id}");
    for args in [
        vec!["--json", "key", "audit", "holiday", &bob_id, "--private"],
        vec!["--json", "key", "audit", &key_id, &bob_id],
        vec!["--json", "key", "audit", &bob_master, &bob_id, "--private"],
        vec!["--json", "key", "audit", &bob_master, &bob_id],
    ] {
        let audited = json(&silt(&alice, &args));
        assert_eq!(audited["matches"], true, "{args:?}: {audited}");
        assert_eq!(audited["endpoint"], listen.as_str(), "{audited}");
    }
    // A key he was never given; one he holds under the same ID but that
    // is another key; and audits that cannot be made.
    let secret = json(&silt(
        &alice,
        &["--json", "share", "create", "secret", "--size", "2048"],
    ))["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let err = fails(&silt(
        &alice,
        &["key", "audit", "secret", &bob_id, "--private"],
    ));
    assert!(
        err.contains("refused") && err.contains("no such private key"),
        "{err}"
    );
    ok(&silt(&bob, &["key", "create", "decoy", "--size", "2048"]));
    let decoy: String = ok(&silt(&bob, &["key", "export", "decoy"]))
        .lines()
        .filter(|line| !line.starts_with("Silt-"))
        .map(|line| format!("{line}\n"))
        .collect();
    let decoy_file = dir.path().join("decoy.pem");
    fs::write(&decoy_file, decoy).unwrap();
    ok(&silt(
        &bob,
        &[
            "key",
            "import",
            decoy_file.to_str().unwrap(),
            "--as",
            &secret,
        ],
    ));
    let err = fails(&silt(&alice, &["key", "audit", "secret", &bob_id]));
    assert!(err.contains("does not hold the same"), "{err}");
    let err = fails(&silt(&alice, &["key", "audit", "master", &bob_id]));
    assert!(err.contains("audit it with them"), "{err}");
    // A master key never pinned would be compared with itself.
    let err = fails(&silt(
        &alice,
        &["key", "audit", "master$carol@nowhere", "carol@nowhere"],
    ));
    assert!(err.contains("no key is pinned"), "{err}");
    let err = fails(&silt(&alice, &["key", "audit", "holiday", "not a user"]));
    assert!(err.contains("not a user ID"), "{err}");

    // SIGTERM stops it cleanly.
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut daemon = running.0.take().unwrap();
    let status = tokio::task::spawn_blocking(move || daemon.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_laptop_gets_its_suppliers_keys_and_files_back() {
    let server = IdServer::start().await;
    let other = IdServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice");
    init(&alice, "alice", &server.addr());
    let err = fails(&silt(&alice, &["key", "backup"]));
    assert!(err.contains("no suppliers are hired"), "{err}");
    ok(&silt(
        &alice,
        &[
            "suppliers",
            "hire",
            "--supplier",
            &server.addr(),
            "--supplier",
            &other.addr(),
        ],
    ));
    let err = fails(&silt(&alice, &["key", "restore"]));
    assert!(err.contains("there is no key backup"), "{err}");
    let err = fails(&silt(&alice, &["suppliers", "recover"]));
    assert!(err.contains("has its suppliers already"), "{err}");

    // A file in the master location and one in a share.
    let created = json(&silt(
        &alice,
        &["--json", "share", "create", "album", "--size", "2048"],
    ));
    let album = created["key_id"].as_str().unwrap().to_owned();
    // A new share's key is backed up at once.
    assert_eq!(created["key_backup_version"], 1, "{created}");
    let notes: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
    let photo: Vec<u8> = (0..70_000u32).map(|i| (i % 233) as u8).collect();
    fs::write(dir.path().join("notes.txt"), &notes).unwrap();
    fs::write(dir.path().join("photo.jpg"), &photo).unwrap();
    let notes_path = dir.path().join("notes.txt");
    let photo_path = dir.path().join("photo.jpg");
    ok(&silt(&alice, &["put", notes_path.to_str().unwrap()]));
    ok(&silt(
        &alice,
        &[
            "put",
            photo_path.to_str().unwrap(),
            &format!("{album}:photo.jpg"),
        ],
    ));

    let backed_up = json(&silt(&alice, &["--json", "key", "backup"]));
    assert_eq!(backed_up["keys"], 1, "{backed_up}");
    assert_eq!(backed_up["version"], 2, "{backed_up}");
    // The backup is not one of the user's files.
    let listing = json(&silt(&alice, &["--json", "ls"]));
    let paths: Vec<_> = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["notes.txt"]);
    let pass = [("SILT_PASSPHRASE", "correct horse battery")];
    let identity_backup = dir.path().join("alice.backup");
    ok(&silt_with(
        &alice,
        &[
            "identity",
            "backup",
            "--out",
            identity_backup.to_str().unwrap(),
        ],
        &pass,
    ));

    // The laptop is lost. On a new one: the identity, then the suppliers
    // from the DHT, then the keys from the suppliers.
    let laptop = dir.path().join("laptop");
    let restored = json(&silt_with(
        &laptop,
        &[
            "--json",
            "identity",
            "restore",
            identity_backup.to_str().unwrap(),
            "--bootstrap",
            &server.addr(),
        ],
        &pass,
    ));
    assert_eq!(restored["suppliers"]["scheme"], "1+1", "{restored}");
    for position in 0..2 {
        assert_eq!(
            restored["suppliers"]["suppliers"][position]["online"], true,
            "{restored}"
        );
    }
    let copy = dir.path().join("notes.copy");
    ok(&silt(
        &laptop,
        &["get", "notes.txt", copy.to_str().unwrap()],
    ));
    assert_eq!(fs::read(&copy).unwrap(), notes);
    let err = fails(&silt(&laptop, &["get", &format!("{album}:photo.jpg"), "x"]));
    assert!(err.contains("no key"), "{err}");
    // A backup from here now would drop the share's key: refused.
    let err = fails(&silt(&laptop, &["key", "backup"]));
    assert!(
        err.contains(&album) && err.contains("silt key restore"),
        "{err}"
    );

    let report = json(&silt(&laptop, &["--json", "key", "restore"]));
    assert_eq!(report["version"], 2, "{report}");
    assert_eq!(report["keys"][0]["key_id"], album.as_str(), "{report}");
    assert_eq!(report["keys"][0]["outcome"], "added", "{report}");
    let key_file = laptop.join(format!("keys/{album}.private"));
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(files(&laptop.join("keys")).iter().all(|p| {
        !p.file_name()
            .unwrap()
            .to_string_lossy()
            .contains("key-backup")
    }));
    let copy = dir.path().join("photo.copy");
    ok(&silt(
        &laptop,
        &["get", &format!("{album}:photo.jpg"), copy.to_str().unwrap()],
    ));
    assert_eq!(fs::read(&copy).unwrap(), photo);
    // Again: nothing to add, nothing replaced.
    let report = json(&silt(&laptop, &["--json", "key", "restore"]));
    assert_eq!(report["keys"][0]["outcome"], "held", "{report}");

    // A key deleted on purpose: the next backup is refused until told to
    // leave it out. A deleted share leaves the backup by itself.
    ok(&silt(&alice, &["key", "create", "extra", "--size", "2048"]));
    ok(&silt(&alice, &["key", "backup"]));
    ok(&silt(&alice, &["key", "delete", "extra", "--yes"]));
    let err = fails(&silt(&alice, &["key", "backup"]));
    assert!(
        err.contains("extra$alice@") && err.contains("--prune"),
        "{err}"
    );
    ok(&silt(&alice, &["key", "backup", "--prune"]));
    ok(&silt(&alice, &["share", "delete", "album", "--yes"]));
    let report = json(&silt(&alice, &["--json", "key", "restore"]));
    assert_eq!(report["keys"].as_array().unwrap().len(), 0, "{report}");

    // A home restored without seeds cannot look for its suppliers, and
    // says what to do.
    let second = dir.path().join("second");
    ok(&silt_with(
        &second,
        &["identity", "restore", identity_backup.to_str().unwrap()],
        &pass,
    ));
    let err = fails(&silt(&second, &["suppliers", "recover"]));
    assert!(err.contains("no seeds"), "{err}");
    let err = fails(&silt(&second, &["ls"]));
    assert!(err.contains("silt suppliers recover"), "{err}");
}
