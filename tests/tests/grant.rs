//! Granting a share to a user whose daemon is online: the five steps, what
//! the member can do afterwards, and the deliveries and audits a daemon
//! refuses.

use std::sync::Arc;

use common::crypto::{PrivateKey, Purpose};
use common::id::{KeyId, UserId};
use common::keystore::{NewKey, Origin, Restored};
use common::sealed::{self, KIND_GRANT};
use customer::grant::GrantError;
use customer::pipeline::NormalPath;
use customer::session::{LocationKeys, Session};
use customer::suppliers::SupplierSet;
use customer::transfer::newest;
use prost::Message;
use proto::peer::v1::peer_client::PeerClient;
use proto::peer::v1::{AuditPrivateKeyRequest, AuditPublicKeyRequest, DeliverRequest};
use tests::TestNet;

/// A raw client of the daemon at `addr`, as `from` (who must prove its
/// master key in the handshake).
async fn daemon_client(
    from: &Session,
    addr: std::net::SocketAddr,
    to: &Session,
) -> PeerClient<tonic::transport::Channel> {
    let dialer = customer::dialer(from.master()).unwrap();
    let connection = dialer
        .connect(&addr.to_string(), Some(to.master().public_key().node_id()))
        .await
        .unwrap();
    PeerClient::new(connection.channel)
}

/// A grant of `key` as `key_id`, sealed by `from` (as `sender`) to `to`.
fn sealed_grant(
    from: &Session,
    sender: &UserId,
    to: &Session,
    key_id: &str,
    key: &PrivateKey,
) -> DeliverRequest {
    let grant = proto::common::v1::Grant {
        key_id: key_id.to_owned(),
        private_key: key.to_pkcs8_der().unwrap().to_vec(),
        epoch: 0,
        label: String::new(),
        file_names: Vec::new(),
    };
    let envelope = sealed::seal(
        sender,
        from.master(),
        to.user(),
        to.master().public_key(),
        KIND_GRANT,
        &grant.encode_to_vec(),
        common::unix_now(),
    )
    .unwrap();
    DeliverRequest {
        message: Some(envelope.to_proto()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_member_reads_the_share_and_forged_grants_are_refused() {
    let net = TestNet::spawn(3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut alice = net.customer("alice").await.unwrap();
    let entries = alice.hire(&net.addrs(), 1 << 28).await.unwrap();
    let set = SupplierSet {
        data: 2,
        parity: 1,
        suppliers: entries,
    };
    set.save(alice.home().dir()).unwrap();
    alice.set_suppliers(set);
    alice.set_block_size(64 * 1024);
    alice.publish_suppliers().await.unwrap();

    // Alice's share, with one file in it.
    let key_id: KeyId = format!("holiday${}", alice.user()).parse().unwrap();
    let share_key = PrivateKey::generate(2048).unwrap();
    alice
        .home()
        .keystore()
        .unwrap()
        .add_private(
            NewKey {
                key_id: key_id.clone(),
                label: "summer".into(),
                epoch: 0,
                origin: Origin::Created,
            },
            &share_key,
            None,
        )
        .unwrap();
    let keys: LocationKeys = alice.location_keys(&key_id).unwrap();
    alice.register_location(&keys).await.unwrap();
    let photo: Vec<u8> = (0..150_000).map(|_| rand::random::<u8>()).collect();
    let local = dir.path().join("beach.jpg");
    std::fs::write(&local, &photo).unwrap();
    let path = NormalPath::new("beach.jpg").unwrap();
    alice
        .upload(&keys, &local, &path, 1, Arc::new(|_| {}))
        .await
        .unwrap();

    // Bob's daemon is online: the grant goes through all five steps.
    let (mut bob, bob_daemon) = net.customer_with_daemon("bob").await.unwrap();
    // Bob hires suppliers of his own after his daemon started; it backs
    // up the keys it receives there.
    let entries = bob.hire(&net.addrs(), 1 << 28).await.unwrap();
    let bob_set = SupplierSet {
        data: 1,
        parity: 2,
        suppliers: entries,
    };
    bob_set.save(bob.home().dir()).unwrap();
    bob.set_suppliers(bob_set);
    let granted = alice.grant(&keys, bob.user()).await.unwrap();
    assert_eq!(granted.endpoint, bob_daemon.local_addr().to_string());
    assert_eq!(granted.files, 1);
    let (_, meta) = bob.home().keystore().unwrap().load_public(&key_id).unwrap();
    assert_eq!(meta.origin, Origin::ReceivedFrom(alice.user().clone()));
    assert_eq!(meta.label, "summer");
    // Granting again changes nothing.
    alice.grant(&keys, bob.user()).await.unwrap();
    // The received key reaches Bob's key backup without his doing.
    let backed_up = async {
        let mut pace = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            pace.tick().await;
            if let Ok(restored) = bob.restore_keys().await
                && restored
                    .keys
                    .iter()
                    .any(|r| matches!(r, Restored::Held(meta) if meta.key_id == key_id))
            {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), backed_up)
        .await
        .expect("the daemon never backed up the received key");

    // Bob reads the share with the key he was given.
    let bob_keys = bob.location_keys(&key_id).unwrap();
    bob.enter(&bob_keys).await.unwrap();
    let (versions, unreachable) = bob.versions(&bob_keys, None).await.unwrap();
    let version = newest(versions.values()).unwrap().clone();
    let out = dir.path().join("bob.jpg");
    bob.download(&bob_keys, &version, &out, &unreachable, Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), photo);

    // Carol runs no daemon: the grant stops at step 1, and she gets nothing.
    let carol = net.customer("carol").await.unwrap();
    let err = alice.grant(&keys, carol.user()).await.unwrap_err();
    assert!(matches!(err, GrantError::Offline { .. }), "{err}");
    assert!(err.to_string().contains("step 1"), "{err}");
    // Only an owner grants, and never the master location.
    let err = bob.grant(&bob_keys, carol.user()).await.unwrap_err();
    assert!(
        err.to_string().contains("only its owner grants it"),
        "{err}"
    );
    let master = alice
        .location_keys(&alice.home().master_key_id().unwrap())
        .unwrap();
    let err = alice.grant(&master, bob.user()).await.unwrap_err();
    assert!(err.to_string().contains("never shared"), "{err}");

    // Mallory cannot slip a key into Bob's keystore under Alice's name:
    // not as a grant of her own for Alice's share ...
    let mallory = net.customer("mallory").await.unwrap();
    let addr = bob_daemon.local_addr();
    let mut client = daemon_client(&mallory, addr, &bob).await;
    let fake: KeyId = format!("diary${}", alice.user()).parse().unwrap();
    let forged = PrivateKey::generate(2048).unwrap();
    let status = client
        .deliver(sealed_grant(
            &mallory,
            mallory.user(),
            &bob,
            &fake.to_string(),
            &forged,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(status.message().contains("of its sender's own"), "{status}");
    // ... nor claiming to be Alice.
    let status = client
        .deliver(sealed_grant(
            &mallory,
            alice.user(),
            &bob,
            &fake.to_string(),
            &forged,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(status.message().contains("by its sender only"), "{status}");
    // ... nor relaying a grant Alice really sealed and signed.
    let genuine = sealed_grant(&alice, alice.user(), &bob, &fake.to_string(), &forged);
    let status = client.deliver(genuine).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(status.message().contains("by its sender only"), "{status}");
    assert!(!bob.home().keystore().unwrap().contains(&fake));
    // Nor replace the key Bob holds with one of the same name.
    let mut from_alice = daemon_client(&alice, addr, &bob).await;
    let status = from_alice
        .deliver(sealed_grant(
            &alice,
            alice.user(),
            &bob,
            &key_id.to_string(),
            &forged,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status}");

    // Only Alice may ask Bob to prove he holds her share's key.
    let nonce = vec![7u8; 32];
    let request = || AuditPrivateKeyRequest {
        key_id: key_id.to_string(),
        nonce: nonce.clone(),
    };
    let status = client.audit_private_key(request()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    let signature = from_alice
        .audit_private_key(request())
        .await
        .unwrap()
        .into_inner()
        .signature;
    let message = common::audit::peer_proof(
        &alice.master().public_key().node_id(),
        &bob.master().public_key().node_id(),
        &key_id,
        &nonce,
    );
    share_key
        .public_key()
        .verify(Purpose::Audit, &message, &signature)
        .unwrap();
    let status = from_alice
        .audit_private_key(AuditPrivateKeyRequest {
            key_id: key_id.to_string(),
            nonce: vec![1; 4],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");

    // Public-key audits: Bob's master key for anyone, the share's key only
    // for Alice (and the same refusal whether or not Bob holds it).
    let digest = |key: &common::crypto::PublicKey| {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(&nonce);
        hasher.update(key.spki_der());
        hasher.finalize().to_vec()
    };
    let public_request = |key_id: &KeyId| AuditPublicKeyRequest {
        key_id: key_id.to_string(),
        nonce: nonce.clone(),
    };
    let bob_master = KeyId::master(bob.user().clone());
    let answer = client
        .audit_public_key(public_request(&bob_master))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.digest, digest(bob.master().public_key()));
    for unknown_or_held in [&key_id, &fake] {
        let status = client
            .audit_public_key(public_request(unknown_or_held))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
        assert!(status.message().contains("only a key's owner"), "{status}");
    }
    let answer = from_alice
        .audit_public_key(public_request(&key_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.digest, digest(share_key.public_key()));

    // A stranger who keeps asking is cut off before the daemon does any
    // more RSA work for it.
    let mut exhausted = None;
    for _ in 0..30 {
        if let Err(status) = client
            .audit_private_key(AuditPrivateKeyRequest {
                key_id: bob_master.to_string(),
                nonce: nonce.clone(),
            })
            .await
        {
            exhausted = Some(status);
            break;
        }
    }
    let status = exhausted.expect("never limited");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    // Alice, another peer, is still served.
    from_alice
        .audit_public_key(public_request(&key_id))
        .await
        .unwrap();

    bob_daemon.shutdown().await;
    let err = alice.grant(&keys, bob.user()).await.unwrap_err();
    assert!(err.to_string().contains("step 1"), "{err}");
}
