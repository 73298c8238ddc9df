//! The storage, mailbox and operations surface of a supplier, over real
//! loopback mutual TLS and a real RocksDB store.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use common::audit;
use common::crypto::{PrivateKey, Purpose};
use common::digest::FragmentHash;
use common::envelope::Envelope;
use common::id::{KeyId, UserId};
use common::identity::{IdentityDocument, SignedIdentity};
use common::manifest::{BlockFragments, Manifest, ObjectId, Scheme, SignedManifest};
use common::tls::TlsIdentity;
use net::Dialer;
use proto::common::v1::Location;
use proto::identity::v1::PublishIdentityRequest;
use proto::identity::v1::identity_client::IdentityClient;
use proto::mailbox::v1::mailbox_client::MailboxClient;
use proto::mailbox::v1::{AckRequest, FetchRequest, PostRequest};
use proto::storage::v1::storage_client::StorageClient;
use proto::storage::v1::{
    ChallengeRequest, CommitManifestRequest, DeleteRequest, Event, EventKind, FragmentHeader,
    FragmentRef, GetFragmentRequest, HireRequest, InlineFragment, KeyRegistration,
    ListManifestsRequest, OfferRequest, ProveRequest, PutFragmentRequest, RegisterKeyRequest,
    ReleaseRequest, SubscribeRequest, get_fragment_response, put_fragment_request,
};
use supplier::{Config, Supplier};
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::Channel;

static KEYS: LazyLock<Vec<PrivateKey>> = LazyLock::new(|| {
    (0..5)
        .map(|_| PrivateKey::generate(2048).unwrap())
        .collect()
});
const ALICE: usize = 0;
const BOB: usize = 1;
const MALLORY: usize = 2;
const SHARE: usize = 3;
const OTHER_SHARE: usize = 4;

const WAIT: Duration = Duration::from_secs(10);

/// The identity host the test nodes serve names for: every test customer is
/// `name@id-test`, and publishes its identity to the node it talks to.
const ID_HOST: &str = "id-test";

fn test_config(dir: &std::path::Path) -> Config {
    Config {
        identity_host: Some(ID_HOST.into()),
        ..Config::for_tests(dir)
    }
}

struct Node {
    supplier: Supplier,
    dir: TempDir,
}

impl Node {
    async fn start() -> Self {
        Self::start_with(|c| c).await
    }

    async fn start_with(adjust: impl FnOnce(Config) -> Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        supplier::init_data_dir(dir.path(), 2048).unwrap();
        let supplier = Supplier::spawn(adjust(test_config(dir.path())))
            .await
            .unwrap();
        Self { supplier, dir }
    }

    /// A node on the data directory a killed supplier process left.
    async fn reopen(dir: TempDir) -> Self {
        let supplier = Supplier::spawn(test_config(dir.path())).await.unwrap();
        Self { supplier, dir }
    }

    async fn restart(&mut self) {
        self.supplier.shutdown().await;
        self.supplier = Supplier::spawn(test_config(self.dir.path())).await.unwrap();
    }
}

/// A customer: a master key, its identity and a dialer.
struct Customer {
    key: &'static PrivateKey,
    user: UserId,
    identity: SignedIdentity,
    dialer: Dialer,
}

impl Customer {
    fn new(index: usize, name: &str) -> Self {
        Self::with_user(index, format!("{name}@{ID_HOST}").parse().unwrap())
    }

    /// A customer with key `index` whose identity claims `user`.
    fn with_user(index: usize, user: UserId) -> Self {
        let key = &KEYS[index];
        let identity = SignedIdentity::sign(
            IdentityDocument {
                user_id: user.clone(),
                master_key: key.public_key().clone(),
                endpoints: vec![],
                revision: 1,
                created_unix: 1,
            },
            key,
        )
        .unwrap();
        let dialer = Dialer::new(Arc::new(TlsIdentity::generate(key).unwrap()));
        Self {
            key,
            user,
            identity,
            dialer,
        }
    }

    /// A channel to `node`, whose identity role now holds our identity.
    async fn channel(&self, node: &Node) -> Channel {
        let addr = node.supplier.local_addr().to_string();
        let channel = self
            .dialer
            .connect(&addr, Some(node.supplier.node_id()))
            .await
            .unwrap()
            .channel;
        self.publish(&channel).await;
        channel
    }

    /// Publishes our identity on `channel`'s node (idempotent).
    async fn publish(&self, channel: &Channel) {
        IdentityClient::new(channel.clone())
            .publish(PublishIdentityRequest {
                document: Some(self.identity.to_proto()),
            })
            .await
            .unwrap();
    }

    async fn storage(&self, node: &Node) -> StorageClient<Channel> {
        StorageClient::new(self.channel(node).await)
    }

    /// [`Customer::storage`] for a supplier process at `addr`.
    async fn storage_at(&self, addr: &str) -> StorageClient<Channel> {
        let channel = self.dialer.connect(addr, None).await.unwrap().channel;
        self.publish(&channel).await;
        StorageClient::new(channel)
    }

    async fn hire(
        &self,
        client: &mut StorageClient<Channel>,
        quota: u64,
    ) -> Result<u64, tonic::Status> {
        client
            .hire(HireRequest {
                identity: Some(self.identity.to_proto()),
                quota_bytes: quota,
            })
            .await
            .map(|r| r.into_inner().used_bytes)
    }

    fn location(&self, alias: &str) -> Location {
        Location {
            owner: self.user.to_string(),
            alias: alias.into(),
        }
    }

    fn key_id(&self, alias: &str) -> KeyId {
        format!("{alias}${}", self.user).parse().unwrap()
    }
}

fn fragment_ref(location: &Location, object: u8, version: u64, block: u64) -> FragmentRef {
    FragmentRef {
        location: Some(location.clone()),
        object_id: vec![object; 32],
        version,
        block,
        position: 0,
    }
}

/// The digests new versions use.
const NEW: FragmentHash = FragmentHash::Blake3;

async fn put(
    client: &mut StorageClient<Channel>,
    reference: FragmentRef,
    data: &[u8],
) -> Result<(), tonic::Status> {
    put_with(client, reference, NEW, data).await
}

async fn put_with(
    client: &mut StorageClient<Channel>,
    reference: FragmentRef,
    hash: FragmentHash,
    data: &[u8],
) -> Result<(), tonic::Status> {
    let digest = hash.digest(data).to_vec();
    put_raw(
        client,
        reference,
        data.len() as u64,
        (digest, hash.to_wire()),
        data,
    )
    .await
}

/// Uploads `data` under a header declaring `size` and `(digest, hash)`.
async fn put_raw(
    client: &mut StorageClient<Channel>,
    reference: FragmentRef,
    size: u64,
    (digest, hash): (Vec<u8>, i32),
    data: &[u8],
) -> Result<(), tonic::Status> {
    let mut messages = vec![PutFragmentRequest {
        part: Some(put_fragment_request::Part::Header(FragmentHeader {
            fragment: Some(reference),
            size,
            digest,
            hash,
        })),
    }];
    messages.extend(data.chunks(100_000).map(|chunk| PutFragmentRequest {
        part: Some(put_fragment_request::Part::Chunk(chunk.to_vec().into())),
    }));
    client
        .put_fragment(tokio_stream::iter(messages))
        .await
        .map(|_| ())
}

async fn get(
    client: &mut StorageClient<Channel>,
    reference: FragmentRef,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = client
        .get_fragment(GetFragmentRequest {
            fragment: Some(reference),
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        if let Some(get_fragment_response::Part::Chunk(chunk)) = message.part {
            data.extend_from_slice(&chunk);
        }
    }
    Ok(data)
}

/// A 1+0 manifest over `blocks`, signed by `location_key` and the writer.
fn manifest(
    location: KeyId,
    writer: &Customer,
    location_key: &PrivateKey,
    object: u8,
    version: u64,
    blocks: &[&[u8]],
) -> proto::storage::v1::SignedManifest {
    manifest_with(NEW, location, writer, location_key, object, version, blocks)
}

/// [`manifest`] with fragment digests of `hash`.
fn manifest_with(
    hash: FragmentHash,
    location: KeyId,
    writer: &Customer,
    location_key: &PrivateKey,
    object: u8,
    version: u64,
    blocks: &[&[u8]],
) -> proto::storage::v1::SignedManifest {
    let manifest = Manifest {
        location,
        object_id: ObjectId([object; 32]),
        version,
        epoch: 0,
        writer: writer.user.clone(),
        scheme: Scheme { data: 1, parity: 0 },
        wrapped_file_key: vec![1; 32],
        sealed_metadata: vec![2; 32],
        blocks: blocks
            .iter()
            .map(|b| BlockFragments {
                digests: vec![hash.digest(b)],
                fragment_size: b.len() as u64,
            })
            .collect(),
        fragment_hash: hash,
        created_unix: 1,
    };
    SignedManifest::sign(&manifest, location_key, writer.key)
        .unwrap()
        .to_proto()
}

/// Asserts that a call was refused with `code` and a message naming `words`.
fn assert_refused(status: &tonic::Status, code: Code, words: &str) {
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(words), "{}", status.message());
}

async fn commit(
    client: &mut StorageClient<Channel>,
    writer: &Customer,
    location: &Location,
    signed: proto::storage::v1::SignedManifest,
) -> Result<(), tonic::Status> {
    commit_carrying(client, writer, location, signed, Vec::new()).await
}

/// A commit that carries `fragments` (block index, bytes) for position 0.
async fn commit_carrying(
    client: &mut StorageClient<Channel>,
    writer: &Customer,
    location: &Location,
    signed: proto::storage::v1::SignedManifest,
    fragments: Vec<(u64, Vec<u8>)>,
) -> Result<(), tonic::Status> {
    client
        .commit_manifest(CommitManifestRequest {
            manifest: Some(signed),
            position: 0,
            writer_identity: Some(writer.identity.to_proto()),
            location: Some(location.clone()),
            fragments: fragments
                .into_iter()
                .map(|(block, data)| InlineFragment {
                    block,
                    data: data.into(),
                })
                .collect(),
        })
        .await
        .map(|_| ())
}

async fn list(
    client: &mut StorageClient<Channel>,
    location: &Location,
) -> Result<usize, tonic::Status> {
    Ok(client
        .list_manifests(ListManifestsRequest {
            location: Some(location.clone()),
            ..Default::default()
        })
        .await?
        .into_inner()
        .manifests
        .len())
}

async fn register_share(
    owner: &Customer,
    client: &mut StorageClient<Channel>,
    alias: &str,
    key: &PrivateKey,
) {
    register_share_at(owner, client, alias, key, 0).await;
}

/// Registers `key` for the share `alias` at `epoch` (a rotation when higher
/// than the registered one).
async fn register_share_at(
    owner: &Customer,
    client: &mut StorageClient<Channel>,
    alias: &str,
    key: &PrivateKey,
    epoch: u64,
) {
    let registration = KeyRegistration {
        key_id: owner.key_id(alias).to_string(),
        public_key: key.public_key().spki_der().to_vec(),
        epoch,
        issued_unix: 1 + epoch as i64,
    };
    let envelope = Envelope::seal_message(owner.key, Purpose::KeyRegister, &registration).unwrap();
    client
        .register_key(RegisterKeyRequest {
            registration: Some(envelope.to_proto()),
        })
        .await
        .unwrap();
}

/// Challenges and proves possession of `key` for `location` on `client`'s connection.
async fn prove(
    client: &mut StorageClient<Channel>,
    member: &Customer,
    location: &Location,
    key_id: &KeyId,
    key: &PrivateKey,
) -> Result<(), tonic::Status> {
    let challenge = client
        .challenge(ChallengeRequest {
            location: Some(location.clone()),
        })
        .await?
        .into_inner();
    let supplier = common::id::NodeId::from_slice(&challenge.supplier_id).unwrap();
    let message = audit::supplier_proof(
        &supplier,
        &member.key.public_key().node_id(),
        key_id,
        challenge.epoch,
        &challenge.nonce,
    );
    client
        .prove(ProveRequest {
            location: Some(location.clone()),
            epoch: challenge.epoch,
            nonce: challenge.nonce,
            signature: key.sign(Purpose::Audit, &message).unwrap(),
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn an_owner_stores_lists_reads_and_deletes_and_a_restart_keeps_commits() {
    let mut node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let mut client = alice.storage(&node).await;
    let offer = client
        .offer(OfferRequest { requested_bytes: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offer.available_bytes, 1 << 30);
    assert_eq!(alice.hire(&mut client, 10 << 20).await.unwrap(), 0);
    // Her own quota is promised, yet hers to take again: a hire replaces it.
    let offer = client
        .offer(OfferRequest { requested_bytes: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(offer.available_bytes, (1 << 30) - (10 << 20));
    assert_eq!(offer.max_contract_bytes, 1 << 30);
    assert_eq!(alice.hire(&mut client, 1 << 30).await.unwrap(), 0);
    assert_eq!(alice.hire(&mut client, 10 << 20).await.unwrap(), 0);

    let master = alice.location("master");
    let blocks: Vec<Vec<u8>> = vec![(0..300_000u32).map(|i| i as u8).collect(), vec![7; 1000]];
    for (i, block) in blocks.iter().enumerate() {
        put(&mut client, fragment_ref(&master, 1, 1, i as u64), block)
            .await
            .unwrap();
    }
    let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
    let signed = manifest(alice.key_id("master"), &alice, alice.key, 1, 1, &refs);
    commit(&mut client, &alice, &master, signed.clone())
        .await
        .unwrap();
    // Committing the same manifest again is harmless.
    commit(&mut client, &alice, &master, signed).await.unwrap();
    assert_eq!(list(&mut client, &master).await.unwrap(), 1);
    for (i, block) in blocks.iter().enumerate() {
        assert_eq!(
            &get(&mut client, fragment_ref(&master, 1, 1, i as u64))
                .await
                .unwrap(),
            block
        );
    }

    node.restart().await;
    let mut client = alice.storage(&node).await;
    assert_eq!(list(&mut client, &master).await.unwrap(), 1);
    assert_eq!(
        get(&mut client, fragment_ref(&master, 1, 1, 0))
            .await
            .unwrap(),
        blocks[0]
    );

    client
        .delete(DeleteRequest {
            location: Some(master.clone()),
            object_id: vec![1; 32],
            version: 0,
        })
        .await
        .unwrap();
    assert_eq!(list(&mut client, &master).await.unwrap(), 0);
    let err = get(&mut client, fragment_ref(&master, 1, 1, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        alice.hire(&mut client, 10 << 20).await.unwrap(),
        0,
        "the quota is given back"
    );
}

#[tokio::test]
async fn a_stranger_is_refused_on_every_method() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let mallory = Customer::new(MALLORY, "mallory");
    let mut owner = alice.storage(&node).await;
    alice.hire(&mut owner, 10 << 20).await.unwrap();
    register_share(&alice, &mut owner, "photos", &KEYS[SHARE]).await;
    let master = alice.location("master");
    put(&mut owner, fragment_ref(&master, 1, 1, 0), b"data")
        .await
        .unwrap();
    commit(
        &mut owner,
        &alice,
        &master,
        manifest(alice.key_id("master"), &alice, alice.key, 1, 1, &[b"data"]),
    )
    .await
    .unwrap();

    let mut client = mallory.storage(&node).await;
    mallory.hire(&mut client, 1 << 20).await.unwrap();
    for location in [alice.location("master"), alice.location("photos")] {
        let denied = |result: Result<(), tonic::Status>| {
            let status = result.unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        };
        denied(put(&mut client, fragment_ref(&location, 1, 2, 0), b"evil").await);
        denied(
            get(&mut client, fragment_ref(&location, 1, 1, 0))
                .await
                .map(|_| ()),
        );
        denied(list(&mut client, &location).await.map(|_| ()));
        denied(
            client
                .delete(DeleteRequest {
                    location: Some(location.clone()),
                    object_id: vec![1; 32],
                    version: 0,
                })
                .await
                .map(|_| ()),
        );
        denied(
            client
                .subscribe(SubscribeRequest {
                    location: Some(location.clone()),
                })
                .await
                .map(|_| ()),
        );
        let signed = manifest(
            format!("{}${}", location.alias, alice.user)
                .parse()
                .unwrap(),
            &mallory,
            mallory.key,
            1,
            2,
            &[b"evil"],
        );
        denied(commit(&mut client, &mallory, &location, signed).await);
    }
    // A challenge for the master location is refused outright; for a share
    // it is issued, but a proof with the wrong key earns nothing.
    let status = client
        .challenge(ChallengeRequest {
            location: Some(alice.location("master")),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let photos = alice.location("photos");
    let err = prove(
        &mut client,
        &mallory,
        &photos,
        &alice.key_id("photos"),
        mallory.key,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        list(&mut client, &photos).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // The owner's data is untouched.
    assert_eq!(
        get(&mut owner, fragment_ref(&master, 1, 1, 0))
            .await
            .unwrap(),
        b"data"
    );
}

#[tokio::test]
async fn a_proven_member_reads_writes_and_subscribes_but_cannot_delete() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let bob = Customer::new(BOB, "bob");
    let mut owner = alice.storage(&node).await;
    alice.hire(&mut owner, 10 << 20).await.unwrap();
    register_share(&alice, &mut owner, "photos", &KEYS[SHARE]).await;
    let photos = alice.location("photos");
    let key_id = alice.key_id("photos");

    let mut member = bob.storage(&node).await;
    prove(&mut member, &bob, &photos, &key_id, &KEYS[SHARE])
        .await
        .unwrap();
    put(&mut member, fragment_ref(&photos, 2, 1, 0), b"from bob")
        .await
        .unwrap();
    let signed = manifest(key_id.clone(), &bob, &KEYS[SHARE], 2, 1, &[b"from bob"]);
    commit(&mut member, &bob, &photos, signed).await.unwrap();
    assert_eq!(list(&mut member, &photos).await.unwrap(), 1);
    assert_eq!(
        get(&mut member, fragment_ref(&photos, 2, 1, 0))
            .await
            .unwrap(),
        b"from bob"
    );
    // Bytes written by members count against the owner's quota.
    assert_eq!(alice.hire(&mut owner, 10 << 20).await.unwrap(), 8);
    let status = member
        .delete(DeleteRequest {
            location: Some(photos.clone()),
            object_id: vec![2; 32],
            version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // A manifest signed with another key than the location's is refused.
    put(&mut member, fragment_ref(&photos, 3, 1, 0), b"x")
        .await
        .unwrap();
    let forged = manifest(key_id.clone(), &bob, &KEYS[OTHER_SHARE], 3, 1, &[b"x"]);
    let status = commit(&mut member, &bob, &photos, forged)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A grant is per connection: a fresh connection must prove again.
    let mut fresh = bob.storage(&node).await;
    assert_eq!(
        list(&mut fresh, &photos).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

/// `writer`, connected without publishing its identity and proven with the
/// share key, stages one fragment and commits it as a version signed under
/// its name.
async fn commit_as_member(
    node: &Node,
    writer: &Customer,
    location: &Location,
    key_id: &KeyId,
) -> Result<(), tonic::Status> {
    let mut member = StorageClient::new(channel_without_publishing(writer, node).await);
    prove(&mut member, writer, location, key_id, &KEYS[SHARE]).await?;
    put(&mut member, fragment_ref(location, 2, 1, 0), b"by mallory").await?;
    let signed = manifest(key_id.clone(), writer, &KEYS[SHARE], 2, 1, &[b"by mallory"]);
    commit(&mut member, writer, location, signed).await
}

#[tokio::test]
async fn a_writer_signs_only_under_its_own_registered_name() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let bob = Customer::new(BOB, "bob");
    let mut owner = alice.storage(&node).await;
    alice.hire(&mut owner, 10 << 20).await.unwrap();
    register_share(&alice, &mut owner, "photos", &KEYS[SHARE]).await;
    let photos = alice.location("photos");
    let key_id = alice.key_id("photos");
    // Bob's name is registered (to his key) on the node's identity role.
    bob.storage(&node).await;

    // Mallory holds the share key too, and signs her version as bob.
    let as_bob = Customer::with_user(MALLORY, bob.user.clone());
    let status = commit_as_member(&node, &as_bob, &photos, &key_id)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("another key"), "{status:?}");

    // A name nobody registered is refused with what to do about it.
    let ghost = Customer::with_user(MALLORY, format!("ghost@{ID_HOST}").parse().unwrap());
    let status = commit_as_member(&node, &ghost, &photos, &key_id)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("not registered"), "{status:?}");
    assert_eq!(list(&mut owner, &photos).await.unwrap(), 0);

    // A name whose identity server cannot be reached is not this
    // supplier's fault: the refusal says which server, and is no
    // "unavailable" that a customer would pin on the supplier.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let remote = Customer::with_user(MALLORY, format!("far@127.0.0.1_{closed}").parse().unwrap());
    let status = commit_as_member(&node, &remote, &photos, &key_id)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("cannot confirm the name"),
        "{status:?}"
    );

    // Once registered under her own name, the same member commits.
    let mallory = Customer::new(MALLORY, "mallory");
    let mut member = mallory.storage(&node).await;
    prove(&mut member, &mallory, &photos, &key_id, &KEYS[SHARE])
        .await
        .unwrap();
    let signed = manifest(
        key_id.clone(),
        &mallory,
        &KEYS[SHARE],
        2,
        1,
        &[b"by mallory"],
    );
    commit(&mut member, &mallory, &photos, signed)
        .await
        .unwrap();
    // And again (the supplier now remembers her name).
    put(&mut member, fragment_ref(&photos, 3, 1, 0), b"again")
        .await
        .unwrap();
    let signed = manifest(key_id.clone(), &mallory, &KEYS[SHARE], 3, 1, &[b"again"]);
    commit(&mut member, &mallory, &photos, signed)
        .await
        .unwrap();
    assert_eq!(list(&mut member, &photos).await.unwrap(), 2);

    // The owner signs under the name it hired under, not another of its own.
    let alias = Customer::with_user(ALICE, format!("alias@{ID_HOST}").parse().unwrap());
    alias.channel(&node).await;
    let master = alice.location("master");
    put(&mut owner, fragment_ref(&master, 4, 1, 0), b"owner")
        .await
        .unwrap();
    let signed = manifest(
        alice.key_id("master"),
        &alias,
        &KEYS[ALICE],
        4,
        1,
        &[b"owner"],
    );
    let status = commit(&mut owner, &alias, &master, signed)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn replayed_and_misbound_proofs_are_refused() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let bob = Customer::new(BOB, "bob");
    let mut owner = alice.storage(&node).await;
    alice.hire(&mut owner, 10 << 20).await.unwrap();
    register_share(&alice, &mut owner, "photos", &KEYS[SHARE]).await;
    let photos = alice.location("photos");
    let key_id = alice.key_id("photos");
    let bob_id = bob.key.public_key().node_id();
    let mut member = bob.storage(&node).await;

    let challenge = |client: &mut StorageClient<Channel>| {
        let mut client = client.clone();
        let photos = photos.clone();
        async move {
            client
                .challenge(ChallengeRequest {
                    location: Some(photos),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let prove_with = |client: &mut StorageClient<Channel>, nonce: Vec<u8>, message: Vec<u8>| {
        let mut client = client.clone();
        let photos = photos.clone();
        async move {
            client
                .prove(ProveRequest {
                    location: Some(photos),
                    epoch: 0,
                    nonce,
                    signature: KEYS[SHARE].sign(Purpose::Audit, &message).unwrap(),
                })
                .await
        }
    };

    // A good proof, then the same proof again.
    let c = challenge(&mut member).await;
    let supplier = common::id::NodeId::from_slice(&c.supplier_id).unwrap();
    let good = audit::supplier_proof(&supplier, &bob_id, &key_id, 0, &c.nonce);
    prove_with(&mut member, c.nonce.clone(), good.clone())
        .await
        .unwrap();
    let replay = prove_with(&mut member, c.nonce.clone(), good)
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::PermissionDenied);

    // Made for another supplier.
    let c = challenge(&mut member).await;
    let other_supplier = KEYS[MALLORY].public_key().node_id();
    let message = audit::supplier_proof(&other_supplier, &bob_id, &key_id, 0, &c.nonce);
    assert!(prove_with(&mut member, c.nonce, message).await.is_err());

    // Made for another requester.
    let c = challenge(&mut member).await;
    let message = audit::supplier_proof(
        &supplier,
        &KEYS[MALLORY].public_key().node_id(),
        &key_id,
        0,
        &c.nonce,
    );
    assert!(prove_with(&mut member, c.nonce, message).await.is_err());

    // A nonce issued on another connection.
    let mut other_connection = bob.storage(&node).await;
    let c = challenge(&mut other_connection).await;
    let message = audit::supplier_proof(&supplier, &bob_id, &key_id, 0, &c.nonce);
    assert!(prove_with(&mut member, c.nonce, message).await.is_err());

    // A made-up nonce.
    let message = audit::supplier_proof(&supplier, &bob_id, &key_id, 0, &[9; 32]);
    assert!(prove_with(&mut member, vec![9; 32], message).await.is_err());
}

#[tokio::test]
async fn key_registrations_must_be_signed_by_the_owner() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let mallory = Customer::new(MALLORY, "mallory");
    let mut owner = alice.storage(&node).await;
    alice.hire(&mut owner, 1 << 20).await.unwrap();
    let mut client = mallory.storage(&node).await;
    mallory.hire(&mut client, 1 << 20).await.unwrap();

    let registration = KeyRegistration {
        key_id: alice.key_id("photos").to_string(),
        public_key: KEYS[OTHER_SHARE].public_key().spki_der().to_vec(),
        epoch: 0,
        issued_unix: 1,
    };
    // Signed by Mallory for Alice's location.
    let forged = Envelope::seal_message(mallory.key, Purpose::KeyRegister, &registration).unwrap();
    let status = client
        .register_key(RegisterKeyRequest {
            registration: Some(forged.to_proto()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Alice's own registration relayed by Mallory.
    let genuine = Envelope::seal_message(alice.key, Purpose::KeyRegister, &registration).unwrap();
    let status = client
        .register_key(RegisterKeyRequest {
            registration: Some(genuine.to_proto()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Signed for another purpose.
    let wrong = Envelope::seal_message(alice.key, Purpose::Manifest, &registration).unwrap();
    let status = owner
        .register_key(RegisterKeyRequest {
            registration: Some(wrong.to_proto()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Nothing was registered: a proof with the forged key earns nothing.
    let photos = alice.location("photos");
    assert!(
        prove(
            &mut client,
            &mallory,
            &photos,
            &alice.key_id("photos"),
            &KEYS[OTHER_SHARE]
        )
        .await
        .is_err()
    );
    owner
        .register_key(RegisterKeyRequest {
            registration: Some(genuine.to_proto()),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn commits_check_every_staged_hash_and_unclaimed_fragments_are_collected() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let mut client = alice.storage(&node).await;
    alice.hire(&mut client, 10 << 20).await.unwrap();
    let master = alice.location("master");

    put(&mut client, fragment_ref(&master, 1, 1, 0), b"block zero")
        .await
        .unwrap();
    // The manifest claims other bytes for block 0.
    let wrong = manifest(
        alice.key_id("master"),
        &alice,
        alice.key,
        1,
        1,
        &[b"block ZERO"],
    );
    let status = commit(&mut client, &alice, &master, wrong)
        .await
        .unwrap_err();
    assert_refused(&status, Code::FailedPrecondition, "does not match");
    // The manifest claims a block that was never uploaded.
    let missing = manifest(
        alice.key_id("master"),
        &alice,
        alice.key,
        1,
        1,
        &[b"block zero", b"one"],
    );
    let status = commit(&mut client, &alice, &master, missing)
        .await
        .unwrap_err();
    assert!(status.message().contains("block 1"), "{}", status.message());
    assert_eq!(list(&mut client, &master).await.unwrap(), 0);
    let err = get(&mut client, fragment_ref(&master, 1, 1, 0))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "staged fragments are not readable"
    );

    // Nobody commits it: the collector frees it.
    assert_eq!(alice.hire(&mut client, 10 << 20).await.unwrap(), 10);
    let freed = tokio::time::timeout(WAIT, async {
        while alice.hire(&mut client, 10 << 20).await.unwrap() != 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the staged fragment was never collected");
}

#[tokio::test]
async fn versions_with_sha256_digests_still_commit_and_read_but_never_mix() {
    // Customers from before BLAKE3 upload SHA-256 digests; such versions
    // commit and read back as before.
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let mut client = alice.storage(&node).await;
    alice.hire(&mut client, 10 << 20).await.unwrap();
    let master = alice.location("master");
    let old = FragmentHash::Sha256;
    put_with(
        &mut client,
        fragment_ref(&master, 1, 1, 0),
        old,
        b"old block",
    )
    .await
    .unwrap();
    let signed = manifest_with(
        old,
        alice.key_id("master"),
        &alice,
        alice.key,
        1,
        1,
        &[b"old block"],
    );
    commit(&mut client, &alice, &master, signed).await.unwrap();
    assert_eq!(
        get(&mut client, fragment_ref(&master, 1, 1, 0))
            .await
            .unwrap(),
        b"old block"
    );

    // A fragment staged with one algorithm never satisfies a manifest that
    // names the other, even for the same bytes.
    put_with(
        &mut client,
        fragment_ref(&master, 2, 1, 0),
        old,
        b"same bytes",
    )
    .await
    .unwrap();
    let signed = manifest(
        alice.key_id("master"),
        &alice,
        alice.key,
        2,
        1,
        &[b"same bytes"],
    );
    let status = commit(&mut client, &alice, &master, signed)
        .await
        .unwrap_err();
    assert_refused(&status, Code::FailedPrecondition, "does not match");
}

#[tokio::test]
async fn a_commit_can_carry_its_fragments_and_each_is_checked() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let mut client = alice.storage(&node).await;
    alice.hire(&mut client, 5000).await.unwrap();
    let master = alice.location("master");
    let signed = |object: u8, blocks: &[&[u8]]| {
        manifest(alice.key_id("master"), &alice, alice.key, object, 1, blocks)
    };

    // Fragments that do not match the manifest, that it does not list, or
    // that come twice are refused, and nothing is committed or charged.
    let zero: &[u8] = b"zero";
    let big = vec![7u8; (supplier::service::storage::MAX_INLINE_BYTES + 1) as usize];
    let cases = [
        (
            zero,
            vec![(0, b"ZERO".to_vec())],
            "does not match the manifest",
        ),
        (zero, vec![(1, zero.to_vec())], "block 1"),
        (zero, vec![(0, zero.to_vec()), (0, zero.to_vec())], "twice"),
        (big.as_slice(), vec![(0, big.clone())], "PutFragment"),
    ];
    for (block, carried, words) in cases {
        let status = commit_carrying(&mut client, &alice, &master, signed(1, &[block]), carried)
            .await
            .unwrap_err();
        assert_refused(&status, Code::InvalidArgument, words);
    }
    assert_eq!(list(&mut client, &master).await.unwrap(), 0);
    assert_eq!(alice.hire(&mut client, 5000).await.unwrap(), 0);

    // Two blocks: one carried, one uploaded first. Both read back.
    put(&mut client, fragment_ref(&master, 2, 1, 1), b"one")
        .await
        .unwrap();
    let two_blocks = signed(2, &[b"zero", b"one"]);
    commit_carrying(
        &mut client,
        &alice,
        &master,
        two_blocks.clone(),
        vec![(0, b"zero".to_vec())],
    )
    .await
    .unwrap();
    assert_eq!(list(&mut client, &master).await.unwrap(), 1);
    assert_eq!(
        get(&mut client, fragment_ref(&master, 2, 1, 0))
            .await
            .unwrap(),
        b"zero"
    );
    assert_eq!(
        get(&mut client, fragment_ref(&master, 2, 1, 1))
            .await
            .unwrap(),
        b"one"
    );
    // A retry of the same commit is accepted and charges nothing more.
    commit_carrying(
        &mut client,
        &alice,
        &master,
        two_blocks,
        vec![(0, b"zero".to_vec())],
    )
    .await
    .unwrap();
    assert_eq!(alice.hire(&mut client, 5000).await.unwrap(), 7);
    // Another manifest for that version is refused as such, whatever it
    // carries, and charges nothing.
    let status = commit_carrying(
        &mut client,
        &alice,
        &master,
        signed(2, &[b"ZERO", b"one"]),
        vec![(0, b"ZERO".to_vec())],
    )
    .await
    .unwrap_err();
    assert_refused(&status, Code::FailedPrecondition, "already committed");
    assert_eq!(alice.hire(&mut client, 5000).await.unwrap(), 7);

    // Carried fragments count against the quota like uploaded ones.
    let large = vec![3u8; 6000];
    let status = commit_carrying(
        &mut client,
        &alice,
        &master,
        signed(3, &[&large]),
        vec![(0, large.clone())],
    )
    .await
    .unwrap_err();
    assert_refused(&status, Code::ResourceExhausted, "quota");
    assert_eq!(list(&mut client, &master).await.unwrap(), 1);
}

#[tokio::test]
async fn hire_needs_the_name_registered_to_the_callers_key() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let mut client = alice.storage(&node).await;
    alice.hire(&mut client, 1 << 20).await.unwrap();

    // Mallory signs a document claiming alice's name with her own key.
    let impostor = Customer::with_user(MALLORY, alice.user.clone());
    let channel = channel_without_publishing(&impostor, &node).await;
    let status = impostor
        .hire(&mut StorageClient::new(channel), 1 << 20)
        .await
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "registered to another key");

    // A name its identity server has never seen is refused, and says what
    // to do; once published, the hire goes through.
    let carol = Customer::new(BOB, "carol");
    let mut carols = StorageClient::new(channel_without_publishing(&carol, &node).await);
    let status = carol.hire(&mut carols, 1 << 20).await.unwrap_err();
    assert_refused(&status, Code::FailedPrecondition, "publish the identity");
    let mut carols = carol.storage(&node).await;
    carol.hire(&mut carols, 1 << 20).await.unwrap();

    // A name on an identity server that cannot be reached cannot be
    // confirmed.
    let dave = Customer::with_user(OTHER_SHARE, "dave@127.0.0.1_1".parse().unwrap());
    let mut daves = StorageClient::new(channel_without_publishing(&dave, &node).await);
    let status = dave.hire(&mut daves, 1 << 20).await.unwrap_err();
    assert_refused(&status, Code::Unavailable, "cannot confirm the name");
}

async fn channel_without_publishing(customer: &Customer, node: &Node) -> Channel {
    customer
        .dialer
        .connect(
            &node.supplier.local_addr().to_string(),
            Some(node.supplier.node_id()),
        )
        .await
        .unwrap()
        .channel
}

#[tokio::test]
async fn a_supplier_takes_no_more_customers_than_its_operator_allows() {
    let node = Node::start_with(|c| Config {
        max_customers: 1,
        ..c
    })
    .await;
    let alice = Customer::new(ALICE, "alice");
    let bob = Customer::new(BOB, "bob");
    let mut client = alice.storage(&node).await;
    alice.hire(&mut client, 1 << 20).await.unwrap();
    let mut other = bob.storage(&node).await;
    let offered = |client: &mut StorageClient<Channel>| {
        let mut client = client.clone();
        async move {
            client
                .offer(OfferRequest { requested_bytes: 1 })
                .await
                .unwrap()
                .into_inner()
                .available_bytes
        }
    };
    // A full house offers a newcomer nothing, and its customer the rest.
    assert_eq!(offered(&mut other).await, 0);
    assert!(offered(&mut client).await > 0);
    let status = bob.hire(&mut other, 1 << 20).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("no more customers"), "{status:?}");
    // The customer it has may still change its contract.
    alice.hire(&mut client, 2 << 20).await.unwrap();
    // Once that one leaves, there is room again.
    client.release(ReleaseRequest {}).await.unwrap();
    bob.hire(&mut other, 1 << 20).await.unwrap();
}

#[tokio::test]
async fn quota_and_capacity_limits_refuse_cleanly() {
    let node = Node::start_with(|c| Config {
        capacity: bytesize::ByteSize::b(5000),
        ..c
    })
    .await;
    let alice = Customer::new(ALICE, "alice");
    let bob = Customer::new(BOB, "bob");
    let mut client = alice.storage(&node).await;
    let status = alice.hire(&mut client, 10_000).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    alice.hire(&mut client, 3000).await.unwrap();
    let mut other = bob.storage(&node).await;
    assert_eq!(
        bob.hire(&mut other, 3000).await.unwrap_err().code(),
        Code::ResourceExhausted
    );

    let master = alice.location("master");
    put(&mut client, fragment_ref(&master, 1, 1, 0), &[1; 2000])
        .await
        .unwrap();
    commit(
        &mut client,
        &alice,
        &master,
        manifest(
            alice.key_id("master"),
            &alice,
            alice.key,
            1,
            1,
            &[&[1; 2000]],
        ),
    )
    .await
    .unwrap();
    let status = put(&mut client, fragment_ref(&master, 2, 1, 0), &[2; 1500])
        .await
        .unwrap_err();
    assert_refused(&status, Code::ResourceExhausted, "quota");
    // Nothing was corrupted.
    assert_eq!(
        get(&mut client, fragment_ref(&master, 1, 1, 0))
            .await
            .unwrap(),
        vec![1; 2000]
    );
    assert_eq!(alice.hire(&mut client, 3000).await.unwrap(), 2000);
}

#[tokio::test]
async fn malformed_requests_get_invalid_argument() {
    let node = Node::start_with(|c| Config {
        max_fragment: bytesize::ByteSize::kib(64),
        ..c
    })
    .await;
    let alice = Customer::new(ALICE, "alice");
    let mut client = alice.storage(&node).await;
    alice.hire(&mut client, 10 << 20).await.unwrap();
    let master = alice.location("master");

    let code = |r: Result<(), tonic::Status>| r.unwrap_err().code();
    // A chunk before the header.
    let chunk_first = vec![PutFragmentRequest {
        part: Some(put_fragment_request::Part::Chunk(vec![1, 2, 3].into())),
    }];
    assert_eq!(
        code(
            client
                .put_fragment(tokio_stream::iter(chunk_first))
                .await
                .map(|_| ())
        ),
        Code::InvalidArgument
    );
    // More bytes than declared, fewer, and a wrong hash.
    let data = vec![5u8; 100];
    let hash = (NEW.digest(&data).to_vec(), NEW.to_wire());
    assert_eq!(
        code(
            put_raw(
                &mut client,
                fragment_ref(&master, 1, 1, 0),
                50,
                hash.clone(),
                &data
            )
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            put_raw(
                &mut client,
                fragment_ref(&master, 1, 1, 0),
                200,
                hash.clone(),
                &data
            )
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            put_raw(
                &mut client,
                fragment_ref(&master, 1, 1, 0),
                100,
                (vec![0; 32], NEW.to_wire()),
                &data
            )
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            put_raw(
                &mut client,
                fragment_ref(&master, 1, 1, 0),
                100,
                (vec![0; 3], NEW.to_wire()),
                &data
            )
            .await
        ),
        Code::InvalidArgument
    );
    // An algorithm no one defined, and a SHA-256 digest declared as BLAKE3.
    for (digest, hash) in [
        (NEW.digest(&data).to_vec(), 7),
        (FragmentHash::Sha256.digest(&data).to_vec(), NEW.to_wire()),
    ] {
        let status = put_raw(
            &mut client,
            fragment_ref(&master, 1, 1, 0),
            100,
            (digest, hash),
            &data,
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    // Oversized.
    assert_eq!(
        code(
            put(
                &mut client,
                fragment_ref(&master, 1, 1, 0),
                &vec![0; 100_000]
            )
            .await
        ),
        Code::ResourceExhausted
    );
    // Bad references.
    let mut bad = fragment_ref(&master, 1, 1, 0);
    bad.object_id = vec![1; 5];
    assert_eq!(
        code(get(&mut client, bad).await.map(|_| ())),
        Code::InvalidArgument
    );
    let mut bad = fragment_ref(&master, 1, 1, 0);
    bad.version = 0;
    assert_eq!(
        code(get(&mut client, bad).await.map(|_| ())),
        Code::InvalidArgument
    );
    for (owner, alias) in [
        ("not a user", "master"),
        (alice.user.to_string().as_str(), "../x"),
        ("", ""),
    ] {
        let location = Location {
            owner: owner.into(),
            alias: alias.into(),
        };
        assert_eq!(
            code(list(&mut client, &location).await.map(|_| ())),
            Code::InvalidArgument
        );
    }
    assert_eq!(
        code(
            client
                .list_manifests(ListManifestsRequest {
                    location: Some(master.clone()),
                    page_token: vec![1, 2, 3],
                    ..Default::default()
                })
                .await
                .map(|_| ())
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            client
                .commit_manifest(CommitManifestRequest {
                    location: Some(master.clone()),
                    ..Default::default()
                })
                .await
                .map(|_| ())
        ),
        Code::InvalidArgument
    );
    let garbage = proto::storage::v1::SignedManifest {
        body: vec![0xff; 40],
        location_signature: vec![1; 256],
        writer_signature: vec![2; 256],
    };
    assert_eq!(
        code(commit(&mut client, &alice, &master, garbage).await),
        Code::InvalidArgument
    );
    // The supplier still works.
    put(&mut client, fragment_ref(&master, 1, 1, 0), b"fine")
        .await
        .unwrap();
}

#[tokio::test]
async fn owner_and_member_subscribers_hear_commits_and_deletes() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let bob = Customer::new(BOB, "bob");
    let mut owner = alice.storage(&node).await;
    alice.hire(&mut owner, 10 << 20).await.unwrap();
    register_share(&alice, &mut owner, "photos", &KEYS[SHARE]).await;
    let photos = alice.location("photos");
    let mut member = bob.storage(&node).await;
    prove(
        &mut member,
        &bob,
        &photos,
        &alice.key_id("photos"),
        &KEYS[SHARE],
    )
    .await
    .unwrap();

    let subscribe = |client: &mut StorageClient<Channel>| {
        let mut client = client.clone();
        let photos = photos.clone();
        async move {
            client
                .subscribe(SubscribeRequest {
                    location: Some(photos),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let mut owner_events = subscribe(&mut owner).await;
    let mut member_events = subscribe(&mut member).await;

    put(&mut member, fragment_ref(&photos, 4, 1, 0), b"hello")
        .await
        .unwrap();
    let signed = manifest(
        alice.key_id("photos"),
        &bob,
        &KEYS[SHARE],
        4,
        1,
        &[b"hello"],
    );
    commit(&mut member, &bob, &photos, signed).await.unwrap();
    for events in [&mut owner_events, &mut member_events] {
        let event = next_event(events, Duration::from_secs(1)).await;
        assert_eq!(event.kind(), EventKind::Commit);
        assert_eq!(event.object_id, vec![4; 32]);
        assert_eq!(event.version, 1);
    }
    owner
        .delete(DeleteRequest {
            location: Some(photos.clone()),
            object_id: vec![4; 32],
            version: 1,
        })
        .await
        .unwrap();
    for events in [&mut owner_events, &mut member_events] {
        let event = next_event(events, Duration::from_secs(1)).await;
        assert_eq!(event.kind(), EventKind::Delete);
    }

    // The owner rotates the share's key (a revocation): the member's
    // subscription, proved under the old key, ends at the next event.
    put(&mut member, fragment_ref(&photos, 5, 1, 0), b"before")
        .await
        .unwrap();
    let signed = manifest(
        alice.key_id("photos"),
        &bob,
        &KEYS[SHARE],
        5,
        1,
        &[b"before"],
    );
    commit(&mut member, &bob, &photos, signed).await.unwrap();
    for events in [&mut owner_events, &mut member_events] {
        assert_eq!(next_event(events, WAIT).await.kind(), EventKind::Commit);
    }
    register_share_at(&alice, &mut owner, "photos", &KEYS[OTHER_SHARE], 1).await;
    owner
        .delete(DeleteRequest {
            location: Some(photos.clone()),
            object_id: vec![5; 32],
            version: 1,
        })
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut owner_events, WAIT).await.kind(),
        EventKind::Delete
    );
    let status = tokio::time::timeout(WAIT, member_events.message())
        .await
        .expect("the member's stream ends in time")
        .unwrap_err();
    assert_refused(&status, Code::PermissionDenied, "prove possession again");
    assert!(member_events.message().await.unwrap_or(None).is_none());
}

/// The next event on a subscription, within `within`.
async fn next_event(events: &mut tonic::Streaming<Event>, within: Duration) -> Event {
    tokio::time::timeout(within, events.message())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn mailboxes_deliver_to_the_recipient_only() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let bob = Customer::new(BOB, "bob");
    let mallory = Customer::new(MALLORY, "mallory");
    let mut storage = bob.storage(&node).await;
    bob.hire(&mut storage, 1 << 20).await.unwrap();

    let message = Envelope::seal(alice.key, Purpose::Message, b"sealed grant".to_vec()).unwrap();
    let mut from_alice = MailboxClient::new(alice.channel(&node).await);
    from_alice
        .post(PostRequest {
            recipient: bob.user.to_string(),
            message: Some(message.to_proto()),
        })
        .await
        .unwrap();
    // Unknown recipients and oversized messages are refused.
    let status = from_alice
        .post(PostRequest {
            recipient: "carol@id-test".into(),
            message: Some(message.to_proto()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let huge = Envelope::seal(alice.key, Purpose::Message, vec![0; 100_000]).unwrap();
    let status = from_alice
        .post(PostRequest {
            recipient: bob.user.to_string(),
            message: Some(huge.to_proto()),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);

    // Mallory's mailbox is hers, not Bob's.
    let mut as_mallory = MailboxClient::new(mallory.channel(&node).await);
    let fetched = as_mallory
        .fetch(FetchRequest { max_messages: 10 })
        .await
        .unwrap()
        .into_inner();
    assert!(fetched.messages.is_empty());

    let mut as_bob = MailboxClient::new(bob.channel(&node).await);
    let fetched = as_bob
        .fetch(FetchRequest { max_messages: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.messages.len(), 1);
    let received = &fetched.messages[0];
    assert_eq!(
        received.sender_node_id,
        alice.key.public_key().node_id().as_bytes().to_vec()
    );
    let envelope = Envelope::from_proto(received.message.clone().unwrap(), 1 << 16).unwrap();
    assert_eq!(
        envelope
            .open(alice.key.public_key(), Purpose::Message)
            .unwrap(),
        b"sealed grant"
    );

    // Mallory cannot ack Bob's message away; Bob can.
    as_mallory
        .ack(AckRequest {
            message_ids: vec![received.message_id.clone()],
        })
        .await
        .unwrap();
    assert_eq!(
        as_bob
            .fetch(FetchRequest { max_messages: 10 })
            .await
            .unwrap()
            .into_inner()
            .messages
            .len(),
        1
    );
    as_bob
        .ack(AckRequest {
            message_ids: vec![received.message_id.clone()],
        })
        .await
        .unwrap();
    assert!(
        as_bob
            .fetch(FetchRequest { max_messages: 10 })
            .await
            .unwrap()
            .into_inner()
            .messages
            .is_empty()
    );
}

#[tokio::test]
async fn metrics_and_health_answer() {
    let node = Node::start_with(|c| Config {
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..c
    })
    .await;
    let alice = Customer::new(ALICE, "alice");
    let mallory = Customer::new(MALLORY, "mallory");
    let mut client = alice.storage(&node).await;
    alice.hire(&mut client, 1 << 20).await.unwrap();
    let master = alice.location("master");
    put(&mut client, fragment_ref(&master, 1, 1, 0), b"abc")
        .await
        .unwrap();
    commit(
        &mut client,
        &alice,
        &master,
        manifest(alice.key_id("master"), &alice, alice.key, 1, 1, &[b"abc"]),
    )
    .await
    .unwrap();
    let mut stranger = mallory.storage(&node).await;
    assert!(list(&mut stranger, &master).await.is_err());

    let mut health = tonic_health::pb::health_client::HealthClient::new(alice.channel(&node).await);
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "silt.storage.v1.Storage".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let addr = node.supplier.metrics_addr().unwrap();
    let text = http_get(addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for needle in [
        "silt_supplier_requests_total{method=\"CommitManifest\",code=\"Ok\"} 1",
        "silt_supplier_requests_total{method=\"ListManifests\",code=\"PermissionDenied\"} 1",
        "silt_supplier_auth_failures_total 1",
        "silt_supplier_stored_bytes 3",
        "silt_supplier_fragments 1",
        "silt_supplier_subscriptions 0",
        "silt_supplier_dht_contacts",
        "silt_supplier_dht_records",
        "silt_supplier_dht_lookups",
        "silt_supplier_dht_lookup_seconds",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // The disk gauges carry real figures (this test's disk has room) once
    // the collector has run.
    let gauge = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("missing {name} in\n{text}"))
            .parse()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = http_get(addr, "/metrics").await;
        gauge(&text, "silt_supplier_fragment_file_bytes");
        if gauge(&text, "silt_supplier_disk_free_bytes") > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no disk figures in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(http_get(addr, "/other").await.starts_with("HTTP/1.1 404"));
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    text
}

/// Runs `silt-supplier` on `dir` as a process, to be killed, and returns it
/// with the address it listens on.
fn supplier_process(dir: &std::path::Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let config = dir.join("test.toml");
    std::fs::write(
        &config,
        format!("identity_server = true\nidentity_host = \"{ID_HOST}\"\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_silt-supplier"))
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--data",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The node logs its bound address; read it from stderr, and keep
    // draining stderr so the node never blocks on a full pipe.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("supplier listening")
                && let Some(rest) = line.split("addr=").nth(1)
                && let Some(addr) = rest.split_whitespace().next()
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(WAIT)
        .expect("the supplier never said where it listens");
    (child, addr)
}

#[tokio::test]
async fn a_supplier_killed_mid_upload_shows_no_partial_version() {
    let dir = tempfile::tempdir().unwrap();
    supplier::init_data_dir(dir.path(), 2048).unwrap();
    let (mut child, addr) = supplier_process(dir.path());

    let alice = Customer::new(ALICE, "alice");
    let mut client = alice.storage_at(&addr).await;
    alice.hire(&mut client, 10 << 20).await.unwrap();
    let master = alice.location("master");
    // Block 0 of a two-block version is staged; then the process dies.
    put(&mut client, fragment_ref(&master, 1, 1, 0), b"first block")
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let restarted = Node::reopen(dir).await;
    let mut client = alice.storage(&restarted).await;
    assert_eq!(list(&mut client, &master).await.unwrap(), 0);
    assert_eq!(
        get(&mut client, fragment_ref(&master, 1, 1, 0))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

/// Sends raw bytes as the request of a unary method.
#[derive(Debug, Default, Clone)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

#[tokio::test]
async fn undecodable_and_oversized_messages_get_clear_codes() {
    let node = Node::start().await;
    let alice = Customer::new(ALICE, "alice");
    let channel = alice.channel(&node).await;
    let call = |bytes: Vec<u8>, path: &'static str| {
        let channel = channel.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(64 << 20);
            grpc.ready().await.unwrap();
            grpc.unary(
                tonic::Request::new(bytes),
                http::uri::PathAndQuery::from_static(path),
                RawCodec,
            )
            .await
        }
    };
    for path in [
        "/silt.storage.v1.Storage/ListManifests",
        "/silt.storage.v1.Storage/Hire",
        "/silt.identity.v1.Identity/Publish",
        "/silt.mailbox.v1.Mailbox/Post",
    ] {
        // A field header with a length running past the end.
        let status = call(vec![0x0a, 0xff, 0xff, 0x03, 1, 2], path)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
    }
    let status = call(
        vec![0; 20 << 20 | 1],
        "/silt.storage.v1.Storage/ListManifests",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Arbitrary bytes never take the node down.
    let mut seed = 7u64;
    for _ in 0..200 {
        let len = (seed % 300) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|i| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407 + i as u64);
                (seed >> 33) as u8
            })
            .collect();
        let _ = call(bytes, "/silt.storage.v1.Storage/CommitManifest").await;
    }
    let mut client = alice.storage(&node).await;
    alice.hire(&mut client, 1 << 20).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_large_fragments_survive_a_kill_and_usage_is_recounted() {
    let dir = tempfile::tempdir().unwrap();
    supplier::init_data_dir(dir.path(), 2048).unwrap();
    let (mut child, addr) = supplier_process(dir.path());
    let alice = Customer::new(ALICE, "alice");
    let mut client = alice.storage_at(&addr).await;
    alice.hire(&mut client, 64 << 20).await.unwrap();
    let master = alice.location("master");
    let data =
        |len: usize, seed: u8| -> Vec<u8> { (0..len).map(|i| (i % 251) as u8 ^ seed).collect() };
    // Large fragments are staged without the WAL. Object 1's add up to
    // more than a commit writes again, so its commit flushes; object 2's
    // one fragment is written again by its commit; object 3's is small.
    let versions: [(u8, Vec<Vec<u8>>); 3] = [
        (1, vec![data(3 << 20, 1), data(2 << 20, 2)]),
        (2, vec![data(512 << 10, 3)]),
        (3, vec![data(100, 4)]),
    ];
    let mut committed = 0;
    for (object, blocks) in &versions {
        for (block, bytes) in blocks.iter().enumerate() {
            put(
                &mut client,
                fragment_ref(&master, *object, 1, block as u64),
                bytes,
            )
            .await
            .unwrap();
            committed += bytes.len() as u64;
        }
        let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
        let signed = manifest(alice.key_id("master"), &alice, alice.key, *object, 1, &refs);
        commit(&mut client, &alice, &master, signed).await.unwrap();
    }
    // Staged, never committed: one large fragment, unlogged, then a small
    // one whose logged write records a total that counts the large one.
    put(
        &mut client,
        fragment_ref(&master, 4, 1, 0),
        &data(1 << 20, 5),
    )
    .await
    .unwrap();
    put(&mut client, fragment_ref(&master, 4, 1, 1), &data(10, 6))
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let restarted = Node::reopen(dir).await;
    let mut client = alice.storage(&restarted).await;
    assert_eq!(list(&mut client, &master).await.unwrap(), 3);
    for (object, blocks) in &versions {
        for (block, bytes) in blocks.iter().enumerate() {
            let got = get(&mut client, fragment_ref(&master, *object, 1, block as u64))
                .await
                .unwrap();
            assert!(got == *bytes, "object {object} block {block} differs");
        }
    }
    // The unlogged staged fragment died with the process, while the small
    // one's WAL entry (written, not synced) outlived it, with a contract
    // total that counted both. The total was recounted from what is stored.
    let used = alice.hire(&mut client, 64 << 20).await.unwrap();
    assert_eq!(used, committed + 10);
}
