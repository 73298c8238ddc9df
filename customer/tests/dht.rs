//! Finding suppliers and other users' supplier lists through the DHT that
//! the suppliers run, over real loopback mutual TLS.

use std::time::Duration;

use customer::home::{Home, InitOptions};
use customer::session::Session;
use customer::suppliers::SupplierSet;
use supplier::{Config, Supplier};
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(30);

struct Network {
    suppliers: Vec<Supplier>,
    _dirs: Vec<TempDir>,
}

/// `n` suppliers; the first starts the DHT, the others join through it.
async fn network(n: usize) -> Network {
    let mut suppliers: Vec<Supplier> = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        supplier::init_data_dir(dir.path(), 2048).unwrap();
        let mut config = Config::for_tests(dir.path());
        if i > 0 {
            config.bootstrap = vec![suppliers[0].local_addr().to_string()];
        }
        suppliers.push(Supplier::spawn(config).await.unwrap());
        dirs.push(dir);
    }
    // Wait until the first node knows every other one.
    let first = suppliers[0].dht().unwrap().clone();
    tokio::time::timeout(WAIT, async {
        while first.stats().await.unwrap().contacts < n - 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the suppliers never joined one DHT");
    // Joining took lookups, which the node counts for operators.
    let joined = suppliers[1].dht().unwrap().stats().await.unwrap();
    assert!(joined.lookups >= 1, "{joined:?}");
    Network {
        suppliers,
        _dirs: dirs,
    }
}

fn customer(dir: &TempDir, name: &str, net: &Network) -> Session {
    let seed = net.suppliers[0].local_addr();
    let home = Home::new(dir.path().join(name));
    home.init(
        &InitOptions {
            user_id: format!("{name}@127.0.0.1_{}", seed.port()).parse().unwrap(),
            id_server: seed.to_string(),
            bootstrap: vec![seed.to_string()],
            listen: "127.0.0.1:7700".parse().unwrap(),
        },
        2048,
        None,
    )
    .unwrap();
    Session::open(home.clone(), home.master_key(None).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppliers_are_found_hired_and_published_through_the_dht() {
    let net = network(6).await;
    let dir = tempfile::tempdir().unwrap();

    let mut alice = customer(&dir, "alice", &net);
    alice.ensure_published().await.unwrap();
    let found = alice.find_suppliers(4).await.unwrap();
    assert_eq!(found.len(), 4);
    let ids: Vec<_> = net.suppliers.iter().map(|s| s.node_id()).collect();
    assert!(found.iter().all(|(id, _)| ids.contains(id)));
    let addrs: Vec<String> = found.iter().map(|(_, addr)| addr.clone()).collect();
    let entries = alice.hire(&addrs, 1 << 20).await.unwrap();
    let set = SupplierSet {
        data: 2,
        parity: 2,
        suppliers: entries,
    };
    set.save(alice.home().dir()).unwrap();
    alice.set_suppliers(set.clone());
    assert!(alice.publish_suppliers().await.unwrap() >= 4);

    // Bob finds Alice's suppliers, checked against her identity.
    let bob = customer(&dir, "bob", &net);
    let list = bob.suppliers_of(alice.user()).await.unwrap();
    assert_eq!(list.user_id, alice.user().to_string());
    assert_eq!((list.data, list.parity), (2, 2));
    let listed: Vec<_> = list
        .suppliers
        .iter()
        .map(|c| common::id::NodeId::from_slice(&c.node_id).unwrap())
        .collect();
    let hired: Vec<_> = set.suppliers.iter().map(|s| s.node_id).collect();
    assert_eq!(listed, hired);

    // Each of Alice's suppliers holds a copy, to republish it.
    let key = dht::record::RecordKey::suppliers(alice.user().clone());
    for supplier in &net.suppliers {
        if hired.contains(&supplier.node_id()) {
            let held = supplier.dht().unwrap().local_record(&key).await.unwrap();
            assert!(
                held.is_some(),
                "supplier {} holds no copy",
                supplier.node_id().fmt_short()
            );
        }
    }

    // A user nobody can vouch for gets a clear error naming them.
    let err = bob
        .suppliers_of(&"carol@127.0.0.1_1".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("carol@127.0.0.1_1"), "{err}");
    // A known user who never published a list.
    let err = alice.suppliers_of(bob.user()).await.unwrap_err();
    assert!(err.to_string().contains("bob@"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_hires_by_count_and_shows_the_dht() {
    let net = network(5).await;
    let dir = tempfile::tempdir().unwrap();
    let seed = net.suppliers[0].local_addr().to_string();
    let silt = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_silt"))
            .args(args)
            .env("SILT_HOME", dir.path().join("alice"))
            .env_remove("SILT_PASSPHRASE")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    silt(&[
        "--json",
        "init",
        "--name",
        "alice",
        "--id-server",
        &seed,
        "--bootstrap",
        &seed,
        "--key-size",
        "2048",
    ]);
    let hired = silt(&["--json", "suppliers", "hire", "--count", "4"]);
    assert_eq!(hired["scheme"], "2+2");
    assert_eq!(hired["suppliers"].as_array().unwrap().len(), 4);
    assert!(hired["published_to"].as_u64().unwrap() >= 4, "{hired}");
    let status = silt(&["--json", "status"]);
    assert_eq!(status["dht"]["joined"], true);
    assert_eq!(status["dht"]["supplier_list_found"], true, "{status}");
    assert!(
        status["suppliers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["online"] == true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_resolve_through_the_dht_when_the_identity_server_is_down() {
    let mut net = network(5).await;
    let dir = tempfile::tempdir().unwrap();
    let alice = customer(&dir, "alice", &net);
    alice.ensure_published().await.unwrap();
    assert!(alice.publish_identity_record().await.unwrap() >= 1);

    // Bob's seed is a supplier that stays up; the identity server goes down.
    let home = Home::new(dir.path().join("bob"));
    home.init(
        &InitOptions {
            user_id: "bob@127.0.0.1_1".parse().unwrap(),
            id_server: "127.0.0.1:1".into(),
            bootstrap: vec![net.suppliers[1].local_addr().to_string()],
            listen: "127.0.0.1:7700".parse().unwrap(),
        },
        2048,
        None,
    )
    .unwrap();
    let bob = Session::open(home.clone(), home.master_key(None).unwrap()).unwrap();
    net.suppliers[0].shutdown().await;
    let key = bob.master_key_of(alice.user()).await.unwrap();
    assert_eq!(&key, alice.master().public_key());
    // And the key is now pinned.
    assert!(home.pins().get(alice.user()).unwrap().is_some());
}
