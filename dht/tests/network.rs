//! DHT nodes over real loopback mutual TLS: a 50-node network with a
//! customer, bad records, expiry and node loss; bootstrap seeds resolved by
//! hickory from a DNS server inside the test; the service's trust rules;
//! and a signer resolver that fails.
//!
//! Keys are 2048-bit and made once for the whole binary. No test uses a
//! fixed port or the internet, and every wait is a polled condition with a
//! deadline.

#[path = "harness/network.rs"]
mod harness;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::crypto::PrivateKey;
use common::envelope::Envelope;
use common::id::{NodeId, UserId};
use common::identity::{IdentityDocument, SignedIdentity};
use common::tls::TlsIdentity;
use common::unix_now;
use dht::node::{Config, SeedResolver};
use dht::record::{Record, RecordKey};
use dht::signer::{NoSigners, Resolving, SignerResolver, StaticSigners, Unresolved};
use dht::{Contact, Key, NodeError};
use harness::{ServerNode, Setup, eventually};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record as DnsRecord, RecordType};
use net::Dialer;
use prost::Message as _;
use proto::dht::v1::dht_client::DhtClient;
use proto::dht::v1::{
    FindNodeRequest, FindValueRequest, NodeContact, PingRequest, StoreRequest, SupplierList,
};
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;

/// Server nodes in the big network.
const NODES: usize = 50;
/// Replication in the tests: a small network may lower `k`.
const K: usize = 10;

/// One key per server node, then the users alice, bob and mallory.
static KEYS: LazyLock<Vec<PrivateKey>> = LazyLock::new(|| harness::keys(NODES + 3));

fn alice() -> &'static PrivateKey {
    &KEYS[NODES]
}

fn bob() -> &'static PrivateKey {
    &KEYS[NODES + 1]
}

fn mallory() -> &'static PrivateKey {
    &KEYS[NODES + 2]
}

fn node_id(key: &PrivateKey) -> NodeId {
    key.public_key().node_id()
}

/// Short timers, so that republishing, refreshing and sweeping happen
/// within the test.
fn tune(config: &mut Config) {
    config.k = NonZeroUsize::new(K).expect("k");
    config.request_timeout = Duration::from_secs(3);
    config.lookup_timeout = Duration::from_secs(20);
    config.refresh_interval = Duration::from_secs(10);
    config.republish_interval = Duration::from_secs(3);
    config.expire_interval = Duration::from_secs(1);
    config.bootstrap_retry = Duration::from_secs(2);
}

fn user(name: &str) -> UserId {
    format!("{name}@id-a").parse().expect("user id")
}

fn identity_record(key: &PrivateKey, name: &str, sequence: u64, expires_unix: i64) -> Envelope {
    let document = IdentityDocument {
        user_id: user(name),
        master_key: key.public_key().clone(),
        endpoints: vec!["127.0.0.1:7700".into()],
        revision: 1,
        created_unix: unix_now(),
    };
    let signed = SignedIdentity::sign(document, key).expect("sign identity");
    Record::seal(
        key,
        &RecordKey::identity(user(name)),
        sequence,
        expires_unix,
        signed.to_proto().encode_to_vec(),
    )
    .expect("seal")
}

fn supplier_list(name: &str, suppliers: &[Contact]) -> Vec<u8> {
    SupplierList {
        user_id: user(name).to_string(),
        data: 1,
        parity: 1,
        suppliers: suppliers.iter().map(Contact::to_proto).collect(),
    }
    .encode_to_vec()
}

fn suppliers_record(
    signer: &PrivateKey,
    name: &str,
    sequence: u64,
    expires_unix: i64,
    value: Vec<u8>,
) -> Envelope {
    Record::seal(
        signer,
        &RecordKey::suppliers(user(name)),
        sequence,
        expires_unix,
        value,
    )
    .expect("seal")
}

/// A dialer that calls nodes directly, as a client-mode node would.
fn probe(key: &PrivateKey) -> Result<Dialer> {
    Ok(Dialer::new(Arc::new(TlsIdentity::generate(key)?))
        .with_connect_timeout(Duration::from_secs(5)))
}

async fn raw_client(dialer: &Dialer, node: &ServerNode) -> Result<DhtClient<Channel>> {
    let connection = dialer
        .connect(&node.addr.to_string(), Some(node.handle.node_id()))
        .await?;
    Ok(DhtClient::new(connection.channel))
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(5));
    request
}

async fn raw_store(
    dialer: &Dialer,
    node: &ServerNode,
    record: proto::common::v1::Envelope,
) -> Result<std::result::Result<(), tonic::Status>> {
    let mut client = raw_client(dialer, node).await?;
    Ok(client
        .store(request(StoreRequest {
            sender: None,
            record: Some(record),
        }))
        .await
        .map(|_| ()))
}

async fn raw_find_value(
    dialer: &Dialer,
    node: &ServerNode,
    key: &RecordKey,
) -> Result<Option<proto::common::v1::Envelope>> {
    let mut client = raw_client(dialer, node).await?;
    let reply = client
        .find_value(request(FindValueRequest {
            sender: None,
            key: key.to_string(),
        }))
        .await?
        .into_inner();
    Ok(reply.record)
}

/// Checks that every node in `nodes` finds the record of `key` at
/// `sequence`, signed by `signer`.
async fn found_everywhere(
    nodes: &[&ServerNode],
    key: &RecordKey,
    sequence: u64,
    signer: NodeId,
) -> Result<()> {
    let mut lookups = JoinSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let handle = node.handle.clone();
        let key = key.clone();
        lookups.spawn(async move { (i, handle.get(&key).await) });
    }
    let mut missing = Vec::new();
    while let Some(joined) = lookups.join_next().await {
        let (i, found) = joined?;
        match found.with_context(|| format!("get from node {i}"))? {
            Some(record) if record.sequence() == sequence && record.signer() == signer => {}
            Some(record) => bail!("node {i} found {record:?}, not sequence {sequence}"),
            None => missing.push(i),
        }
    }
    ensure!(missing.is_empty(), "{key} not found from nodes {missing:?}");
    Ok(())
}

/// The indices of `nodes` sorted by distance to `target`.
fn by_distance(nodes: &[&ServerNode], target: &Key) -> Vec<usize> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| target.distance(&Key::from(nodes[i].handle.node_id())));
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_over_mutual_tls() -> Result<()> {
    harness::init_tracing();
    let setup = Setup::new(tune, Arc::new(NoSigners));
    let nodes = harness::network(&KEYS[..NODES], &setup, 8).await?;
    let all: Vec<&ServerNode> = nodes.iter().collect();
    for (i, node) in nodes.iter().enumerate() {
        let stats = node.handle.stats().await?;
        ensure!(
            stats.contacts >= K,
            "node {i} knows only {} nodes",
            stats.contacts
        );
    }

    // A customer (client mode) joins through one node and publishes its
    // identity, a friend's identity, and its supplier list twice.
    let customer = harness::client(alice(), &setup)?;
    ensure!(customer.bootstrap(vec![nodes[7].addr.to_string()]).await? == 1);
    let expires = unix_now() + 3600;
    customer
        .put(&identity_record(alice(), "alice", 1, expires))
        .await?;
    customer
        .put(&identity_record(bob(), "bob", 1, expires))
        .await?;
    let list = supplier_list("alice", &[nodes[1].contact(), nodes[2].contact()]);
    let first = suppliers_record(alice(), "alice", 1, expires, list.clone());
    let report = customer.put(&first).await?;
    ensure!(!report.local, "a client keeps no copy");
    ensure!(
        report.remote >= K / 2,
        "only {} nodes stored it",
        report.remote
    );
    let second = suppliers_record(alice(), "alice", 2, expires, list);
    customer.put(&second).await?;
    // A client is in no routing table.
    for node in &nodes {
        let contacts = node.handle.find_node(Key::from(node_id(alice()))).await?;
        ensure!(contacts.iter().all(|c| c.id() != node_id(alice())));
    }

    let alice_key = RecordKey::suppliers(user("alice"));
    found_everywhere(&all, &alice_key, 2, node_id(alice())).await?;
    ensure!(customer.get(&alice_key).await?.map(|r| r.sequence()) == Some(2));

    // Bad records are refused by Store and never returned by FindValue.
    let dialer = probe(mallory())?;
    let bob_key = RecordKey::suppliers(user("bob"));
    let bob_closest: Vec<&ServerNode> = by_distance(&all, &bob_key.position())
        .into_iter()
        .take(K)
        .map(|i| all[i])
        .chain([all[0]])
        .collect();
    let bob_list = supplier_list("bob", &[nodes[3].contact()]);
    let mut bad_signature = suppliers_record(bob(), "bob", 1, expires, bob_list.clone()).to_proto();
    let last = bad_signature.body.len() - 1;
    bad_signature.body[last] ^= 1;
    let mut oversized_value = bob_list.clone();
    oversized_value.extend(padding(70 * 1024));
    let bad = [
        ("a bad signature", bad_signature),
        (
            "a far-future expiry",
            suppliers_record(bob(), "bob", 1, unix_now() + 49 * 3600, bob_list.clone()).to_proto(),
        ),
        (
            "an oversized value",
            suppliers_record(bob(), "bob", 1, expires, oversized_value).to_proto(),
        ),
        (
            "another user's signature",
            suppliers_record(mallory(), "bob", 1, expires, bob_list.clone()).to_proto(),
        ),
    ];
    for (what, wire) in &bad {
        for node in &bob_closest {
            let refused = raw_store(&dialer, node, wire.clone()).await?;
            match refused {
                Err(status) if status.code() == Code::InvalidArgument => {}
                other => bail!("a record with {what} got {other:?}"),
            }
        }
        let envelope = Envelope::from_proto(wire.clone(), 1 << 20)?;
        match customer.put(&envelope).await {
            Err(NodeError::Record(_)) => {}
            other => bail!("put of a record with {what} gave {other:?}"),
        }
    }
    // The older supplier list, sent to the nodes holding the newer one.
    let mut holders = 0;
    for node in &nodes {
        if node.handle.local_record(&alice_key).await?.is_some() {
            holders += 1;
            match raw_store(&dialer, node, first.to_proto()).await? {
                Err(status) if status.code() == Code::FailedPrecondition => {}
                other => bail!("a lower sequence got {other:?}"),
            }
        }
    }
    ensure!(holders >= K, "only {holders} nodes hold {alice_key}");
    match customer.put(&first).await {
        Err(NodeError::NotStored { .. }) => {}
        other => bail!("put of a lower sequence gave {other:?}"),
    }
    for (i, node) in nodes.iter().enumerate() {
        ensure!(
            raw_find_value(&dialer, node, &bob_key).await?.is_none(),
            "node {i} returned a refused record"
        );
        if let Some(wire) = raw_find_value(&dialer, node, &alice_key).await? {
            let record = Record::verify(wire, unix_now(), Some(node_id(alice())))?;
            ensure!(
                record.sequence() == 2,
                "node {i} returned sequence {}",
                record.sequence()
            );
        }
    }

    // A record with a short expiry disappears once it expires.
    let short = suppliers_record(bob(), "bob", 1, unix_now() + 8, bob_list);
    customer.put(&short).await?;
    ensure!(
        nodes[0].handle.get(&bob_key).await?.is_some(),
        "the short-lived record was not found"
    );
    eventually(
        "the short-lived record to expire everywhere",
        Duration::from_secs(30),
        || {
            let nodes = &nodes;
            let bob_key = &bob_key;
            async move {
                for node in nodes {
                    if node.handle.local_record(bob_key).await?.is_some() {
                        return Ok(false);
                    }
                }
                Ok(nodes[0].handle.get(bob_key).await?.is_none())
            }
        },
    )
    .await?;
    // A quarter of the nodes stop, among them the three closest to alice's
    // record, and the customer that published it goes away.
    let order = by_distance(&all, &alice_key.position());
    let mut victims: BTreeSet<usize> = order[..3].iter().copied().collect();
    for i in (1..NODES).step_by(4) {
        if victims.len() >= NODES / 4 {
            break;
        }
        victims.insert(i);
    }
    customer.shutdown().await;
    for &i in &victims {
        nodes[i].stop().await;
    }
    let live: Vec<&ServerNode> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !victims.contains(i))
        .map(|(_, node)| node)
        .collect();
    ensure!(live.len() == NODES - NODES / 4);
    found_everywhere(&live, &alice_key, 2, node_id(alice())).await?;

    // Republishing puts the record on the closest live nodes again.
    let closest_live: Vec<&ServerNode> = by_distance(&live, &alice_key.position())
        .into_iter()
        .take(K)
        .map(|i| live[i])
        .collect();
    eventually(
        "the closest live nodes to hold the record",
        Duration::from_secs(60),
        || {
            let closest_live = &closest_live;
            let alice_key = &alice_key;
            async move {
                for node in closest_live {
                    if node
                        .handle
                        .local_record(alice_key)
                        .await?
                        .map(|r| r.sequence())
                        != Some(2)
                    {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        },
    )
    .await?;
    found_everywhere(&live, &alice_key, 2, node_id(alice())).await?;

    for node in &nodes {
        node.stop().await;
    }
    Ok(())
}

/// `len` bytes of an unknown protobuf field (number 15), which decoders
/// skip.
fn padding(len: usize) -> Vec<u8> {
    let mut out = vec![(15 << 3) | 2];
    let mut n = len;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.resize(out.len() + len, 0);
    out
}

/// A DNS server on a loopback UDP port that knows one zone: `seed.silt.test`
/// (A, 127.0.0.1) and `_silt._tcp.silt.test` (SRV to `seed.silt.test` at the
/// seed's port). Every other name is NXDOMAIN.
struct DnsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DnsServer {
    async fn spawn(seed_port: u16) -> Result<Self> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = socket.local_addr()?;
        let host = Name::from_ascii("seed.silt.test.")?;
        let srv = Name::from_ascii("_silt._tcp.silt.test.")?;
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
                reply.metadata.recursion_desired = query.metadata.recursion_desired;
                reply.metadata.recursion_available = true;
                reply.metadata.authoritative = true;
                let mut known = false;
                for question in &query.queries {
                    let name = question.name();
                    if *name == host {
                        known = true;
                        if question.query_type() == RecordType::A {
                            reply.add_answer(DnsRecord::from_rdata(
                                host.clone(),
                                60,
                                RData::A(A(Ipv4Addr::LOCALHOST)),
                            ));
                        }
                    } else if *name == srv {
                        known = true;
                        if question.query_type() == RecordType::SRV {
                            reply.add_answer(DnsRecord::from_rdata(
                                srv.clone(),
                                60,
                                RData::SRV(SRV::new(0, 5, seed_port, host.clone())),
                            ));
                        }
                    }
                    reply.add_query(question.clone());
                }
                if !known {
                    reply.metadata.response_code = ResponseCode::NXDomain;
                }
                if let Ok(bytes) = reply.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        Ok(Self { addr, task })
    }

    /// A seed resolver that asks only this server.
    fn resolver(&self) -> SeedResolver {
        let mut connection = ConnectionConfig::udp();
        connection.port = self.addr.port();
        let server = NameServerConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST), true, vec![connection]);
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_secs(2);
        options.attempts = 1;
        SeedResolver::with_config(ResolverConfig::from_name_servers(vec![server]), options)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_resolve_through_hickory_from_a_local_dns_server() -> Result<()> {
    harness::init_tracing();
    let plain = Setup::new(tune, Arc::new(NoSigners));
    let seed = ServerNode::spawn(&KEYS[0], &plain).await?;
    ensure!(
        seed.handle.bootstrap(Vec::new()).await? == 0,
        "no seeds: a new network"
    );
    let dns = DnsServer::spawn(seed.addr.port()).await?;
    let resolver = dns.resolver();
    let expected = vec![format!("127.0.0.1:{}", seed.addr.port())];

    // The resolver alone: an A record, an SRV record, and a missing name.
    ensure!(
        resolver
            .resolve(&format!("seed.silt.test:{}", seed.addr.port()))
            .await?
            == expected
    );
    ensure!(resolver.resolve("silt.test").await? == expected);
    ensure!(matches!(
        resolver.resolve("nowhere.silt.test:7700").await,
        Err(NodeError::Seed { .. })
    ));

    // Nodes that join by name learn the seed's ID from the handshake.
    let setup = plain.clone().with_seeds(resolver);
    let by_name = ServerNode::spawn(&KEYS[1], &setup).await?;
    let seeds = vec![format!("seed.silt.test:{}", seed.addr.port())];
    ensure!(by_name.handle.bootstrap(seeds).await? == 1);
    let by_srv = ServerNode::spawn(&KEYS[2], &setup).await?;
    ensure!(by_srv.handle.bootstrap(vec!["silt.test".into()]).await? == 1);
    for (joined, other) in [(&by_name, &seed), (&by_srv, &by_name), (&by_srv, &seed)] {
        let target = other.handle.node_id();
        let found = joined.handle.find_node(Key::from(target)).await?;
        ensure!(
            found.iter().any(|c| c.id() == target),
            "{target:?} not found"
        );
    }

    // A seed that does not resolve fails the bootstrap cleanly.
    let lonely = ServerNode::spawn(&KEYS[3], &setup).await?;
    match lonely
        .handle
        .bootstrap(vec!["nowhere.silt.test:7700".into()])
        .await
    {
        Err(NodeError::Bootstrap { tried: 1 }) => {}
        other => bail!("bootstrap through a missing name gave {other:?}"),
    }
    for node in [&seed, &by_name, &by_srv, &lonely] {
        node.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_trusts_only_the_handshake() -> Result<()> {
    harness::init_tracing();
    let signers = StaticSigners::new().with(user("alice"), node_id(alice()));
    let setup = Setup::new(tune, Arc::new(signers));
    let server = ServerNode::spawn(&KEYS[4], &setup).await?;
    server.handle.bootstrap(Vec::new()).await?;
    let other = ServerNode::spawn(&KEYS[5], &setup).await?;
    let caller_key = &KEYS[6];
    let dialer = probe(caller_key)?;
    let mut client = raw_client(&dialer, &server).await?;

    // A sender that names another node is refused, and not added.
    let status = client
        .ping(request(PingRequest {
            sender: Some(other.contact().to_proto()),
        }))
        .await
        .expect_err("a foreign sender");
    ensure!(status.code() == Code::InvalidArgument, "{status:?}");
    ensure!(server.handle.stats().await?.contacts == 0);

    // An empty sender (a client-mode node) is served but never added.
    let reply = client
        .ping(request(PingRequest { sender: None }))
        .await?
        .into_inner();
    ensure!(reply.responder == Some(server.contact().to_proto()));
    let empty = NodeContact {
        node_id: Vec::new(),
        endpoints: Vec::new(),
    };
    client
        .find_node(request(FindNodeRequest {
            sender: Some(empty),
            target: vec![0; 32],
        }))
        .await?;
    ensure!(server.handle.stats().await?.contacts == 0);

    // The caller's own contact is added.
    let own = Contact::new(node_id(caller_key), vec!["127.0.0.1:9".into()])?;
    client
        .ping(request(PingRequest {
            sender: Some(own.to_proto()),
        }))
        .await?;
    // The node actor adds it after the reply went out.
    eventually("the caller's contact", Duration::from_secs(10), || async {
        Ok(server.handle.stats().await?.contacts == 1)
    })
    .await?;

    // Malformed requests.
    let status = client
        .find_node(request(FindNodeRequest {
            sender: None,
            target: vec![0; 31],
        }))
        .await
        .expect_err("short target");
    ensure!(status.code() == Code::InvalidArgument, "{status:?}");
    let status = client
        .find_value(request(FindValueRequest {
            sender: None,
            key: "suppliers/Not Valid".into(),
        }))
        .await
        .expect_err("bad key");
    ensure!(status.code() == Code::InvalidArgument, "{status:?}");
    let status = client
        .store(request(StoreRequest {
            sender: None,
            record: None,
        }))
        .await
        .expect_err("no record");
    ensure!(status.code() == Code::InvalidArgument, "{status:?}");

    // The owner's resolver vouches for alice; nobody knows carol.
    let expires = unix_now() + 600;
    let alice_record = suppliers_record(alice(), "alice", 1, expires, supplier_list("alice", &[]));
    ensure!(
        raw_store(&dialer, &server, alice_record.to_proto())
            .await?
            .is_ok()
    );
    let alice_key = RecordKey::suppliers(user("alice"));
    let held = raw_find_value(&dialer, &server, &alice_key)
        .await?
        .context("alice's record is served")?;
    ensure!(Record::verify(held, unix_now(), Some(node_id(alice())))?.sequence() == 1);
    let carol = suppliers_record(bob(), "carol", 1, expires, supplier_list("carol", &[]));
    match raw_store(&dialer, &server, carol.to_proto()).await? {
        Err(status) if status.code() == Code::FailedPrecondition => {}
        other => bail!("a record of an unknown user got {other:?}"),
    }
    ensure!(
        raw_find_value(&dialer, &server, &RecordKey::suppliers(user("carol")))
            .await?
            .is_none()
    );

    // Anyone may store a self-certifying `identity/` record, but one key
    // gets only a few names here: filling the store takes many keys.
    for i in 0..dht::record::MAX_RECORDS_PER_STRANGER {
        let name = format!("made-up{i}");
        let record = identity_record(mallory(), &name, 1, expires);
        ensure!(
            raw_store(&dialer, &server, record.to_proto())
                .await?
                .is_ok(),
            "stranger's record {i} was refused"
        );
    }
    let one_more = identity_record(mallory(), "one-more", 1, expires);
    match raw_store(&dialer, &server, one_more.to_proto()).await? {
        Err(status)
            if status.code() == Code::ResourceExhausted
                && status.message().contains("this signer has as many records") => {}
        other => bail!("a stranger's fifth record got {other:?}"),
    }
    ensure!(
        raw_find_value(&dialer, &server, &RecordKey::identity(user("one-more")))
            .await?
            .is_none()
    );

    server.stop().await;
    other.stop().await;
    Ok(())
}

/// A resolver whose database is down for alice and never answers for bob;
/// it knows nobody else.
#[derive(Debug)]
struct Unreliable;

impl SignerResolver for Unreliable {
    fn resolve<'a>(&'a self, who: &'a UserId) -> Resolving<'a> {
        if who == &user("alice") {
            Box::pin(std::future::ready(Err(Unresolved::new("database is down"))))
        } else if who == &user("bob") {
            Box::pin(std::future::pending())
        } else {
            Box::pin(std::future::ready(Ok(None)))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_cannot_answer_is_never_taken_for_no_pin() -> Result<()> {
    harness::init_tracing();
    // A short resolver timeout, well inside the probe's 5 s deadline.
    let quick = |config: &mut Config| {
        tune(config);
        config.request_timeout = Duration::from_secs(1);
    };
    let setup = Setup::new(quick, Arc::new(Unreliable));
    let server = ServerNode::spawn(&KEYS[7], &setup).await?;
    server.handle.bootstrap(Vec::new()).await?;
    let dialer = probe(&KEYS[8])?;
    let expires = unix_now() + 600;

    // Mallory's self-certifying claims to alice's and bob's names would be
    // believed if a failed or silent resolver meant "no pin": both are
    // refused as for now unavailable, and nothing is stored.
    for name in ["alice", "bob"] {
        let squat = identity_record(mallory(), name, 1, expires);
        match raw_store(&dialer, &server, squat.to_proto()).await? {
            Err(status)
                if status.code() == Code::Unavailable
                    && status.message().contains("cannot check the signer") => {}
            other => bail!("{name}'s squatted identity got {other:?}"),
        }
        let key = RecordKey::identity(user(name));
        ensure!(raw_find_value(&dialer, &server, &key).await?.is_none());
        match server.handle.get(&key).await {
            Err(NodeError::SignerUnavailable { user: who, .. }) if who == user(name) => {}
            other => bail!("getting {name}'s identity gave {other:?}"),
        }
        match server.handle.get(&RecordKey::suppliers(user(name))).await {
            Err(NodeError::SignerUnavailable { .. }) => {}
            other => bail!("getting {name}'s suppliers gave {other:?}"),
        }
    }

    // A user the resolver answers "unknown" for still falls back to the
    // DHT's identity record, as designed.
    let carol = identity_record(bob(), "carol", 1, expires);
    ensure!(raw_store(&dialer, &server, carol.to_proto()).await?.is_ok());
    let list = suppliers_record(bob(), "carol", 1, expires, supplier_list("carol", &[]));
    ensure!(raw_store(&dialer, &server, list.to_proto()).await?.is_ok());
    let found = server
        .handle
        .get(&RecordKey::suppliers(user("carol")))
        .await?
        .context("carol's supplier list")?;
    ensure!(found.signer() == node_id(bob()));

    server.stop().await;
    Ok(())
}
