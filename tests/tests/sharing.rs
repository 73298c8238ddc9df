//! Sharing by handing over a share's private key: the member finds the
//! owner's suppliers through the DHT, proves to each that it holds the key,
//! and then reads and writes the share there. Whoever lacks the key gets
//! nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::crypto::PrivateKey;
use common::id::KeyId;
use common::keystore::{NewKey, Origin};
use customer::pipeline::NormalPath;
use customer::session::{LocationKeys, Session, SessionError};
use customer::suppliers::SupplierSet;
use customer::transfer::{TransferError, newest, next_versions};
use proto::common::v1::Location;
use proto::storage::v1::ListManifestsRequest;
use proto::storage::v1::storage_client::StorageClient;
use tests::{Options, TestNet};

/// Hires the first `count` suppliers of `net` for `customer`, one of them
/// for parity, and publishes the set.
async fn hire(net: &TestNet, customer: &mut Session, count: usize) -> SupplierSet {
    let entries = customer.hire(&net.addrs()[..count], 1 << 28).await.unwrap();
    let set = SupplierSet {
        data: entries.len() as u32 - 1,
        parity: 1,
        suppliers: entries,
    };
    set.save(customer.home().dir()).unwrap();
    customer.set_suppliers(set.clone());
    customer.set_block_size(64 * 1024);
    customer.publish_suppliers().await.unwrap();
    set
}

/// Alice's share `holiday`, registered with her suppliers, and its key.
async fn holiday(alice: &Session) -> (LocationKeys, PrivateKey) {
    let key_id: KeyId = format!("holiday${}", alice.user()).parse().unwrap();
    let key = PrivateKey::generate(2048).unwrap();
    let keys = give(alice, &key_id, &key);
    assert!(alice.register_location(&keys).await.unwrap().is_empty());
    (keys, key)
}

/// Stores `key` under `key_id` in `customer`'s keystore, as an import.
fn give(customer: &Session, key_id: &KeyId, key: &PrivateKey) -> LocationKeys {
    customer
        .home()
        .keystore()
        .unwrap()
        .add_private(
            NewKey {
                key_id: key_id.clone(),
                label: String::new(),
                epoch: 0,
                origin: Origin::Imported,
            },
            key,
            None,
        )
        .unwrap();
    customer.location_keys(key_id).unwrap()
}

/// Uploads `data` as the next version of `path`.
async fn put(customer: &Session, keys: &LocationKeys, dir: &Path, path: &str, data: &[u8]) -> u64 {
    let local = dir.join(format!("{}-upload", customer.user().user()));
    std::fs::write(&local, data).unwrap();
    let path = NormalPath::new(path).unwrap();
    let (existing, _) = customer.versions(keys, None).await.unwrap();
    let version = next_versions(&existing)
        .get(&keys.secrets.object_id(&path))
        .copied()
        .unwrap_or(1);
    customer
        .upload(keys, &local, &path, version, Arc::new(|_| {}))
        .await
        .unwrap()
        .version
}

/// Downloads the newest version of `path`.
async fn get(customer: &Session, keys: &LocationKeys, dir: &Path, path: &str) -> Vec<u8> {
    let object = keys.secrets.object_id(&NormalPath::new(path).unwrap());
    let (versions, unreachable) = customer.versions(keys, Some(object)).await.unwrap();
    let version = newest(versions.values()).expect("a version").clone();
    let out = dir.join(format!("{}-download", customer.user().user()));
    customer
        .download(keys, &version, &out, &unreachable, Arc::new(|_| {}))
        .await
        .unwrap();
    std::fs::read(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_reads_and_writes_a_share_and_a_stranger_gets_nothing() {
    let mut net = TestNet::spawn(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut alice = net.customer("alice").await.unwrap();
    hire(&net, &mut alice, 3).await;
    let (owner_keys, key) = holiday(&alice).await;
    let key_id = owner_keys.key_id.clone();
    let photo: Vec<u8> = (0..200_000).map(|_| rand::random::<u8>()).collect();
    put(&alice, &owner_keys, dir.path(), "beach.jpg", &photo).await;
    // Her master location is hers alone.
    let secret: Vec<u8> = b"diary".to_vec();
    let master_keys = alice
        .location_keys(&alice.home().master_key_id().unwrap())
        .unwrap();
    put(&alice, &master_keys, dir.path(), "diary.txt", &secret).await;

    // Bob, who has suppliers of his own (two of Alice's), is handed the key.
    let mut bob = net.customer("bob").await.unwrap();
    let bob_own = hire(&net, &mut bob, 2).await;
    let bob_keys = give(&bob, &key_id, &key);
    bob.enter(&bob_keys).await.unwrap();
    assert_eq!(bob.share(), Some(&key_id));
    assert_eq!(
        bob.suppliers().unwrap().suppliers,
        alice.suppliers().unwrap().suppliers
    );
    assert_eq!(get(&bob, &bob_keys, dir.path(), "beach.jpg").await, photo);

    // He writes too, on Alice's suppliers, and she reads what he wrote.
    let note = b"the sea was cold".to_vec();
    assert_eq!(
        put(&bob, &bob_keys, dir.path(), "notes/bob.txt", &note).await,
        1
    );
    let (versions, _) = alice.versions(&owner_keys, None).await.unwrap();
    let written = versions
        .values()
        .find(|v| v.manifest.writer == *bob.user())
        .expect("Bob's version is listed for Alice");
    assert_eq!(written.positions, vec![0, 1, 2]);
    assert_eq!(
        get(&alice, &owner_keys, dir.path(), "notes/bob.txt").await,
        note
    );
    // A new version of Alice's file by Bob supersedes hers for both.
    let edited: Vec<u8> = photo.iter().rev().copied().collect();
    assert_eq!(
        put(&bob, &bob_keys, dir.path(), "beach.jpg", &edited).await,
        2
    );
    assert_eq!(
        get(&alice, &owner_keys, dir.path(), "beach.jpg").await,
        edited
    );

    // Only the owner deletes, and a member's session does not touch its
    // own supplier set.
    let path = NormalPath::new("beach.jpg").unwrap();
    let err = bob.remove(&bob_keys, &path, None).await.unwrap_err();
    assert!(matches!(err, TransferError::NotOwner(_)), "{err}");
    let err = bob.publish_suppliers().await.unwrap_err();
    assert!(err.to_string().contains("share of"), "{err}");
    // Back in his own location he has his own suppliers again, and their
    // file never changed.
    let bob_master = bob
        .location_keys(&bob.home().master_key_id().unwrap())
        .unwrap();
    bob.enter(&bob_master).await.unwrap();
    assert_eq!(bob.share(), None);
    assert_eq!(bob.suppliers().unwrap(), &bob_own);
    assert_eq!(
        SupplierSet::load(bob.home().dir()).unwrap().as_ref(),
        Some(&bob_own)
    );
    bob.enter(&bob_keys).await.unwrap();
    // Alice's master location stays closed to him.
    let err = bob
        .location_keys(&KeyId::master(alice.user().clone()))
        .unwrap_err();
    assert!(err.to_string().contains("only they can read"), "{err}");

    // Carol holds a key under the same name that is not Alice's: every
    // supplier refuses her proof, and she learns nothing.
    let mut carol = net.customer("carol").await.unwrap();
    let forged = give(&carol, &key_id, &PrivateKey::generate(2048).unwrap());
    carol.enter(&forged).await.unwrap();
    let err = carol.versions(&forged, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("proof refused") && text.contains("may not be the one"),
        "{text}"
    );

    // A share whose owner published no supplier list cannot be entered.
    let dave = net.customer("dave").await.unwrap();
    let orphan: KeyId = format!("lost${}", dave.user()).parse().unwrap();
    let orphan_keys = give(&carol, &orphan, &PrivateKey::generate(2048).unwrap());
    let err = carol.enter(&orphan_keys).await.unwrap_err();
    assert!(
        matches!(err, SessionError::Dht(ref m) if m.contains("no supplier list")),
        "{err}"
    );
    // Alice deletes the share. With a supplier down no file is deleted,
    // since its files could not all be named.
    net.stop(2).await;
    let err = alice.delete_share(&owner_keys).await.unwrap_err();
    assert!(
        matches!(err, TransferError::ShareNotDeleted { ref reason, .. } if reason.contains("no file was deleted")),
        "{err}"
    );
    let (versions, _) = alice.versions(&owner_keys, None).await.unwrap();
    assert_eq!(versions.len(), 3);
    net.restart(2).await.unwrap();
    let deleted = alice.delete_share(&owner_keys).await.unwrap();
    assert_eq!((deleted.files, deleted.suppliers), (2, 3));
    let (versions, unreachable) = alice.versions(&owner_keys, None).await.unwrap();
    assert!(versions.is_empty() && unreachable.is_empty());
    // Again: nothing left to do, and it says so by succeeding.
    assert_eq!(alice.delete_share(&owner_keys).await.unwrap().files, 0);
    // Bob, proving afresh, is refused by every supplier.
    bob.enter(&bob_keys).await.unwrap();
    let err = bob.versions(&bob_keys, None).await.unwrap_err();
    assert!(err.to_string().contains("not authorized"), "{err}");
    // Bob cannot delete Alice's share, nor Alice her master location.
    let err = bob.delete_share(&bob_keys).await.unwrap_err();
    assert!(matches!(err, TransferError::NotOwner(_)), "{err}");
    let err = alice.delete_share(&master_keys).await.unwrap_err();
    assert!(err.to_string().contains("not a share"), "{err}");

    // Back in her own location, Carol (who hired no one) is told so.
    let own = carol
        .location_keys(&carol.home().master_key_id().unwrap())
        .unwrap();
    carol.enter(&own).await.unwrap();
    assert_eq!(carol.share(), None);
    assert!(matches!(
        carol.suppliers().unwrap_err(),
        SessionError::NoSuppliers
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_proofs_are_renewed_while_a_transfer_holds_its_connections() {
    let grant_ttl = Duration::from_secs(1);
    let net = TestNet::spawn_with(2, Options { grant_ttl }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut alice = net.customer("alice").await.unwrap();
    hire(&net, &mut alice, 2).await;
    let (owner_keys, key) = holiday(&alice).await;
    put(&alice, &owner_keys, dir.path(), "beach.jpg", b"sand").await;

    let mut bob = net.customer("bob").await.unwrap();
    let bob_keys = give(&bob, &owner_keys.key_id, &key);
    bob.enter(&bob_keys).await.unwrap();
    // A client taken once, as an upload or a download holds its clients
    // for as long as it runs: calls on it keep working for three grant
    // lifetimes.
    let mut client = StorageClient::new(bob.channel(0).await.unwrap());
    let request = || ListManifestsRequest {
        location: Some(Location {
            owner: alice.user().to_string(),
            alias: "holiday".into(),
        }),
        page_size: 100,
        ..ListManifestsRequest::default()
    };
    let start = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut calls = 0;
    while start.elapsed() < 3 * grant_ttl {
        pace.tick().await;
        let listed = client.list_manifests(request()).await;
        let listed = listed
            .unwrap_or_else(|status| panic!("call {calls} after {:?}: {status}", start.elapsed()));
        assert_eq!(listed.into_inner().manifests.len(), 1);
        calls += 1;
    }
    // Whereas a connection nobody proves on is refused once its grant
    // lapsed: leaving the share stops the renewals.
    let channel = bob.channel(0).await.unwrap();
    let mut idle = StorageClient::new(channel);
    let own = bob
        .location_keys(&bob.home().master_key_id().unwrap())
        .unwrap();
    bob.enter(&own).await.unwrap();
    let refused = tokio::time::timeout(3 * grant_ttl, async {
        loop {
            pace.tick().await;
            if let Err(status) = idle.list_manifests(request()).await {
                return status;
            }
        }
    })
    .await
    .expect("the grant never lapsed");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("prove possession"), "{refused}");
}
