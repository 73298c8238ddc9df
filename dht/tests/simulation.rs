//! Lookup convergence in a simulated network of 1,000 nodes, in process.
//!
//! Every node has its own routing table (k = 20), filled by meeting a random
//! sample of 600 of the other nodes in a random order, so its far buckets
//! hold a random k of their range and its near buckets most of theirs. A
//! lookup runs the real [`Query`] state machine against the other nodes'
//! tables: each request is answered by the callee's `closest(target, k)`,
//! replies are delivered in a random order, and some nodes are down (their
//! requests time out) or refuse (their requests fail at once). Everything is
//! driven by a seeded RNG and a virtual clock, so every run is the same.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use common::id::NodeId;
use dht::kbucket::{self, RoutingTable};
use dht::query::{self, Action, Query, QueryResult, Versioned};
use dht::record::RecordKey;
use dht::{Contact, Key};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

const NODES: usize = 1000;
const SAMPLE: usize = 600;
const K: usize = 20;
const ALPHA: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Never answers: requests time out.
    Down,
    /// Refuses at once: requests fail.
    Refusing,
    /// Answers every request.
    Up,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Value(u64);

impl Versioned for Value {
    fn sequence(&self) -> u64 {
        self.0
    }
}

struct Network {
    ids: Vec<NodeId>,
    by_id: HashMap<NodeId, usize>,
    tables: Vec<RoutingTable>,
    start: Instant,
}

impl Network {
    fn build(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let ids: Vec<NodeId> = (0..NODES)
            .map(|_| NodeId::from_array(rng.random()))
            .collect();
        let by_id = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let start = Instant::now();
        let tables = (0..NODES)
            .map(|me| {
                let mut table = RoutingTable::new(ids[me], kbucket::Config::default(), start);
                let mut others: Vec<usize> = (0..NODES).filter(|&i| i != me).collect();
                others.shuffle(&mut rng);
                for &other in &others[..SAMPLE] {
                    // A full bucket asks for a liveness check, which every
                    // old contact passes here: the first k met stay.
                    table.insert(contact(ids[other]), start);
                }
                table
            })
            .collect();
        Self {
            ids,
            by_id,
            tables,
            start,
        }
    }

    /// The `K` nodes closest to `target` among those `keep` accepts.
    fn true_closest(&self, target: &Key, keep: impl Fn(usize) -> bool) -> Vec<NodeId> {
        let mut all: Vec<usize> = (0..NODES).filter(|&i| keep(i)).collect();
        all.sort_by_key(|&i| target.distance(&Key::from(self.ids[i])));
        all.truncate(K);
        all.into_iter().map(|i| self.ids[i]).collect()
    }
}

static NETWORK: LazyLock<Network> = LazyLock::new(|| Network::build(0x5117));

fn contact(id: NodeId) -> Contact {
    Contact::new(id, Vec::new()).unwrap()
}

/// Runs one lookup from `origin` to the end, answering requests from the
/// simulated nodes in a random order. `holds` says which nodes answer a
/// FIND_VALUE with a value.
fn run(
    net: &Network,
    mut query: Query<Value>,
    health: &dyn Fn(usize) -> Health,
    holds: &dyn Fn(usize) -> Option<Value>,
    rng: &mut StdRng,
) -> QueryResult<Value> {
    let target = query.target();
    let mut now = net.start;
    let mut pending: Vec<usize> = Vec::new();
    let mut asked = BTreeSet::new();
    loop {
        match query.next_action(now) {
            Action::Send { peer, .. } => {
                assert!(query.in_flight() <= ALPHA, "more than alpha in flight");
                let callee = net.by_id[&peer.id()];
                assert!(asked.insert(callee), "node {callee} asked twice");
                match health(callee) {
                    Health::Up | Health::Refusing => pending.push(callee),
                    // Never answers; the query times it out.
                    Health::Down => {}
                }
            }
            Action::Wait { until } => {
                assert!(until > now, "wait must move time forward");
                if pending.is_empty() {
                    now = until;
                    continue;
                }
                let callee = pending.swap_remove(rng.random_range(0..pending.len()));
                now += Duration::from_millis(rng.random_range(1..200));
                let id = net.ids[callee];
                if health(callee) == Health::Refusing {
                    assert!(query.on_failure(&id, now));
                    continue;
                }
                let (closer, value) = match holds(callee) {
                    Some(value) => (Vec::new(), Some(value)),
                    None => (net.tables[callee].closest(&target, K), None),
                };
                assert!(query.on_response(&id, closer, value, now));
            }
            Action::Finished(result) => return result,
        }
    }
}

fn find_node(net: &Network, origin: usize, target: Key) -> Query<Value> {
    let seeds = net.tables[origin].closest(&target, K);
    Query::find_node(
        target,
        net.ids[origin],
        seeds,
        query::Config::default(),
        net.start,
    )
}

fn ids(contacts: &[Contact]) -> Vec<NodeId> {
    contacts.iter().map(Contact::id).collect()
}

#[test]
fn every_lookup_finds_the_true_k_closest() {
    let net = &*NETWORK;
    let mut rng = StdRng::seed_from_u64(1);
    let mut known_at_start = 0;
    for round in 0..150 {
        let origin = rng.random_range(0..NODES);
        // Some targets are node IDs: the node itself must come first.
        let target = if round % 5 == 0 {
            Key::from(net.ids[rng.random_range(0..NODES)])
        } else {
            Key::from_array(rng.random())
        };
        let result = run(
            net,
            find_node(net, origin, target),
            &|_| Health::Up,
            &|_| None,
            &mut rng,
        );
        let want = net.true_closest(&target, |i| i != origin);
        assert_eq!(ids(&result.closest), want, "round {round}");
        assert!(!result.stats.gave_up);
        assert_eq!(result.stats.failures + result.stats.timeouts, 0);
        // Only the k closest seen are asked, so a healthy lookup asks about
        // k nodes plus the few it passed on the way.
        assert!(
            result.stats.requests <= K + K / 2,
            "round {round}: {} requests",
            result.stats.requests
        );
        let seeds = net.tables[origin].closest(&target, K);
        known_at_start += ids(&seeds).iter().filter(|id| want.contains(id)).count();
    }
    // The lookups did real work: the origin's own table knew few of the answers.
    assert!(known_at_start < 150 * K / 4, "{known_at_start}");
}

#[test]
fn lookups_route_around_nodes_that_are_down_or_refuse() {
    let net = &*NETWORK;
    let mut rng = StdRng::seed_from_u64(2);
    // 10% of the nodes are down and 5% refuse, chosen once.
    let health: Vec<Health> = (0..NODES)
        .map(|_| match rng.random_range(0..100) {
            0..10 => Health::Down,
            10..15 => Health::Refusing,
            _ => Health::Up,
        })
        .collect();
    let mut timeouts = 0;
    for round in 0..100 {
        let origin = rng.random_range(0..NODES);
        let target = Key::from_array(rng.random());
        let result = run(
            net,
            find_node(net, origin, target),
            &|i| health[i],
            &|_| None,
            &mut rng,
        );
        let want = net.true_closest(&target, |i| i != origin && health[i] == Health::Up);
        assert_eq!(ids(&result.closest), want, "round {round}");
        assert!(!result.stats.gave_up);
        timeouts += result.stats.timeouts;
    }
    assert!(timeouts > 0, "the simulation never exercised a timeout");
}

#[test]
fn find_value_returns_the_value_and_asks_fewer_nodes() {
    let net = &*NETWORK;
    let mut rng = StdRng::seed_from_u64(3);
    for round in 0..40 {
        let key: RecordKey = format!("suppliers/user{round}@id-a").parse().unwrap();
        let target = key.position();
        // The record sits on the k closest nodes; a quarter of them hold an
        // older copy.
        let holders = net.true_closest(&target, |_| true);
        let holds = |i: usize| -> Option<Value> {
            let rank = holders.iter().position(|id| *id == net.ids[i])?;
            Some(Value(if rank % 4 == 0 { 6 } else { 7 }))
        };
        let origin = loop {
            let origin = rng.random_range(0..NODES);
            if holds(origin).is_none() {
                break origin;
            }
        };
        let seeds = net.tables[origin].closest(&target, K);
        let query = Query::find_value(
            key,
            net.ids[origin],
            seeds,
            query::Config::default(),
            net.start,
        );
        let result = run(net, query, &|_| Health::Up, &holds, &mut rng);
        let value = result.value.clone().expect("the value is found");
        for holder in result.holders.iter().chain(&result.outdated) {
            assert!(holds(net.by_id[&holder.id()]).is_some());
        }
        for stale in &result.outdated {
            assert_eq!(holds(net.by_id[&stale.id()]), Some(Value(6)));
            assert_eq!(
                value,
                Value(7),
                "an outdated copy is reported only under a newer one"
            );
        }
        for holder in &result.holders {
            assert_eq!(holds(net.by_id[&holder.id()]), Some(value.clone()));
        }
        // Stopping at the first value asks fewer nodes than a full lookup.
        let full = run(
            net,
            find_node(net, origin, target),
            &|_| Health::Up,
            &|_| None,
            &mut rng,
        );
        assert!(
            result.stats.requests < full.stats.requests,
            "round {round}: {} >= {}",
            result.stats.requests,
            full.stats.requests
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn lookups_converge_from_any_node_to_any_target(
        origin in 0..NODES,
        target in any::<[u8; 32]>(),
        delivery_seed in any::<u64>(),
    ) {
        let net = &*NETWORK;
        let target = Key::from_array(target);
        let mut rng = StdRng::seed_from_u64(delivery_seed);
        let result = run(
            net,
            find_node(net, origin, target),
            &|_| Health::Up,
            &|_| None,
            &mut rng,
        );
        prop_assert_eq!(ids(&result.closest), net.true_closest(&target, |i| i != origin));
    }
}
