//! Lookup latency and success rate on loopback networks of 50 and 200 DHT
//! nodes, each its own tonic server over real mutual TLS.
//!
//! Run it with
//!
//! ```text
//! CARGO_TARGET_DIR=$HOME/.cache/silt/target cargo bench -p dht --bench lookup
//! ```
//!
//! (`cargo bench` builds with the release profile; `dht` does not depend on
//! RocksDB, so this does not rebuild it.) It prints figures and asserts
//! nothing.
//!
//! For each size it measures, from random nodes, one after the other:
//!
//! - FIND_NODE of a random node's ID: success when the result holds that
//!   node;
//! - GET of one of ten `suppliers/` records published beforehand: success
//!   when the record comes back at the published sequence.
//!
//! Nodes use the default Kademlia parameters (k = 20, α = 3), and a signer
//! resolver that knows the ten users, so a GET is one FIND_VALUE.

#[path = "../tests/harness/network.rs"]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::crypto::PrivateKey;
use common::id::UserId;
use dht::Key;
use dht::node::Config;
use dht::record::{Record, RecordKey};
use dht::signer::StaticSigners;
use harness::{ServerNode, Setup};
use prost::Message as _;

const SIZES: [usize; 2] = [50, 200];
const LOOKUPS: usize = 200;
const USERS: usize = 10;

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started = Instant::now();
        let largest = SIZES.iter().copied().max().unwrap_or(0);
        let keys = harness::keys(largest + 1);
        println!("{} 2048-bit keys in {:.1?}", keys.len(), started.elapsed());
        let (node_keys, user_key) = keys.split_at(largest);
        for size in SIZES {
            bench(&node_keys[..size], &user_key[0]).await?;
        }
        Ok(())
    })
}

async fn bench(keys: &[PrivateKey], user_key: &PrivateKey) -> Result<()> {
    let users: Vec<UserId> = (0..USERS)
        .map(|i| format!("user{i}@id-bench").parse())
        .collect::<Result<_, _>>()?;
    let mut signers = StaticSigners::new();
    for user in &users {
        signers.insert(user.clone(), user_key.public_key().node_id());
    }
    let setup = Setup::new(
        |config: &mut Config| {
            config.request_timeout = Duration::from_secs(5);
            // 200 nodes in one process share one file descriptor limit.
            config.max_connections = 32;
        },
        Arc::new(signers),
    );
    let started = Instant::now();
    let nodes = harness::network(keys, &setup, 16).await?;
    println!(
        "\n{} nodes started and joined in {:.1?}",
        nodes.len(),
        started.elapsed()
    );

    let expires = common::unix_now() + 3600;
    for user in &users {
        let record = suppliers_record(user_key, user, expires)?;
        let from = &nodes[rand::random_range(0..nodes.len())];
        from.handle.put(&record).await?;
    }

    let mut find = Figures::default();
    for _ in 0..LOOKUPS {
        let from = &nodes[rand::random_range(0..nodes.len())];
        let target = nodes[rand::random_range(0..nodes.len())].handle.node_id();
        let started = Instant::now();
        let found = from.handle.find_node(Key::from(target)).await;
        let ok = found.is_ok_and(|contacts| {
            target == from.handle.node_id() || contacts.iter().any(|c| c.id() == target)
        });
        find.add(started.elapsed(), ok);
    }
    find.print("FIND_NODE", nodes.len());

    let mut get = Figures::default();
    for _ in 0..LOOKUPS {
        let from = &nodes[rand::random_range(0..nodes.len())];
        let key = RecordKey::suppliers(users[rand::random_range(0..users.len())].clone());
        let started = Instant::now();
        let found = from.handle.get(&key).await;
        get.add(
            started.elapsed(),
            matches!(found, Ok(Some(record)) if record.sequence() == 1),
        );
    }
    get.print("GET", nodes.len());

    stop(&nodes).await;
    Ok(())
}

async fn stop(nodes: &[ServerNode]) {
    for node in nodes {
        node.stop().await;
    }
}

fn suppliers_record(
    key: &PrivateKey,
    user: &UserId,
    expires_unix: i64,
) -> Result<common::envelope::Envelope> {
    // No identity record is needed: the resolver knows the users.
    let list = proto::dht::v1::SupplierList {
        user_id: user.to_string(),
        data: 1,
        parity: 1,
        suppliers: Vec::new(),
    };
    Record::seal(
        key,
        &RecordKey::suppliers(user.clone()),
        1,
        expires_unix,
        list.encode_to_vec(),
    )
    .context("seal")
}

#[derive(Default)]
struct Figures {
    latencies: Vec<Duration>,
    successes: usize,
}

impl Figures {
    fn add(&mut self, latency: Duration, ok: bool) {
        self.latencies.push(latency);
        if ok {
            self.successes += 1;
        }
    }

    fn print(&mut self, what: &str, nodes: usize) {
        self.latencies.sort();
        let n = self.latencies.len();
        let at = |q: f64| {
            let index = ((q * n as f64).ceil() as usize).clamp(1, n.max(1)) - 1;
            self.latencies.get(index).copied().unwrap_or_default()
        };
        println!(
            "{what:>9} on {nodes:>3} nodes: {n} lookups, p50 {:.1?}, p99 {:.1?}, max {:.1?}, success {:.1}%",
            at(0.50),
            at(0.99),
            self.latencies.last().copied().unwrap_or_default(),
            100.0 * self.successes as f64 / n.max(1) as f64,
        );
    }
}
