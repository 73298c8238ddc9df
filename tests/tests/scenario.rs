//! Whole-system scenarios on the harness: eight suppliers, 5+3, customers
//! that find suppliers through the DHT and lose three of them.

use std::sync::Arc;

use customer::pipeline::NormalPath;
use customer::suppliers::SupplierSet;
use customer::transfer::next_versions;
use tests::TestNet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_suppliers_five_plus_three_survive_three_losses() {
    let mut net = TestNet::spawn(8).await.unwrap();
    let mut alice = net.customer("alice").await.unwrap();

    // Hire every supplier the DHT knows, 5+3 (the default for eight).
    let found = alice.find_suppliers(8).await.unwrap();
    let addrs: Vec<String> = found.into_iter().map(|(_, addr)| addr).collect();
    let entries = alice.hire(&addrs, 1 << 30).await.unwrap();
    let scheme = customer::pipeline::default_scheme(8).unwrap();
    assert_eq!((scheme.data, scheme.parity), (5, 3));
    let set = SupplierSet {
        data: scheme.data,
        parity: scheme.parity,
        suppliers: entries,
    };
    set.save(alice.home().dir()).unwrap();
    alice.set_suppliers(set.clone());
    alice.set_block_size(64 * 1024);
    alice.publish_suppliers().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000).map(|_| rand::random::<u8>()).collect();
    let local = dir.path().join("report.pdf");
    std::fs::write(&local, &data).unwrap();
    let keys = alice
        .location_keys(&alice.home().master_key_id().unwrap())
        .unwrap();
    let path = NormalPath::new("work/report.pdf").unwrap();
    let (existing, _) = alice.versions(&keys, None).await.unwrap();
    let version = next_versions(&existing)
        .get(&keys.secrets.object_id(&path))
        .copied()
        .unwrap_or(1);
    alice
        .upload(&keys, &local, &path, version, Arc::new(|_| {}))
        .await
        .unwrap();

    // Three suppliers go away, whichever positions they held (the first
    // one stays: it is the identity server and the DHT seed).
    let positions: Vec<usize> = set
        .suppliers
        .iter()
        .map(|s| net.addrs().iter().position(|a| a == &s.addr).unwrap())
        .filter(|&i| i != 0)
        .collect();
    for &i in positions.iter().take(3) {
        net.stop(i).await;
    }
    let (versions, unreachable) = alice
        .versions(&keys, Some(keys.secrets.object_id(&path)))
        .await
        .unwrap();
    assert_eq!(unreachable.len(), 3);
    let newest = versions.values().next().unwrap().clone();
    let out = dir.path().join("copy.pdf");
    alice
        .download(&keys, &newest, &out, &unreachable, Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // Bob, who never met Alice, finds her suppliers through the DHT.
    let bob = net.customer("bob").await.unwrap();
    let list = bob.suppliers_of(alice.user()).await.unwrap();
    assert_eq!(list.suppliers.len(), 8);

    for &i in positions.iter().take(3) {
        net.restart(i).await.unwrap();
    }
}
