//! Benchmark (not a test): the cluster mesh's control plane. C clusters, each with its own real
//! etcd, N simulated agents per cluster in one process; each agent is what the real one runs:
//! its own `EtcdStore` on its cluster's etcd (lease, claim, own record, list + watch,
//! validation) and one read-only `RemoteStore` follower per other cluster.
//!
//!   cargo run --release -p keymgr --example clustermesh_fanout -- 2x32 8x16 32x4
//!
//! For each C×N it measures:
//! * mesh-wide convergence: a new node joins cluster 1 (its store claims, publishes); the time
//!   until every follower of cluster 1, in every agent of every other cluster, has it (median
//!   of 3); baseline: as many plain etcd-client watchers ((C-1)·N, one connection each) on
//!   cluster 1's nodes prefix seeing one put;
//! * memory: the process's RSS added per simulated agent (its store and C-1 followers, with
//!   their views of every cluster's records) and per connection, against one plain watcher.
//!
//! Prints each figure as a ratio to its baseline from the same run. Every wait is bounded.

#[path = "../tests/etcd_server/mod.rs"]
#[allow(dead_code)]
mod etcd_server;

mod common;

use common::rss_bytes;

use std::time::{Duration, Instant};

use etcd_client::{Client, WatchOptions};
use etcd_server::EtcdServer;
use futures::future::join_all;
use keymgr::store::{EtcdConfig, EtcdStore, RemoteStore, Snapshot};
use keymgr::{Admission, NodeRecord, PrivateKey};

const PREFIX: &str = "/wiremesh";
const CONVERGE_WITHIN: Duration = Duration::from_secs(10 * 60);
const JOIN_WITHIN: Duration = Duration::from_secs(60);

fn cluster_name(c: usize) -> String {
    format!("c{}", c + 1)
}

/// Node `i` of cluster `c`: pods 10.`c`.`i`.0/24, underlay 198.18.`c`.`i+1`.
fn record(c: usize, i: usize) -> NodeRecord {
    NodeRecord {
        cluster_name: cluster_name(c),
        pod_cidrs: vec![format!("10.{c}.{i}.0/24").parse().expect("valid CIDR")],
        key_epoch: 1,
        ..NodeRecord::new(
            format!("node-{i}"),
            PrivateKey::generate().public_key(),
            format!("198.18.{c}.{}:51871", i + 1)
                .parse()
                .expect("valid endpoint"),
        )
    }
}

fn config(url: &str) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![url.to_string()],
        prefix: PREFIX.into(),
        tls: None,
        lease_ttl: Duration::from_secs(60),
    }
}

fn nodes_prefix(c: usize) -> String {
    format!("{PREFIX}/v1/{}/nodes/", cluster_name(c))
}

/// `w` plain watchers on cluster 1's nodes prefix: the time one put takes to reach them all,
/// and the memory per watcher.
async fn baseline(url: &str, w: usize) -> (Duration, u64) {
    let before = rss_bytes();
    let mut watchers = Vec::with_capacity(w);
    for _ in 0..w {
        let mut c = Client::connect([url], None).await.expect("connect");
        let options = WatchOptions::new().with_prefix();
        let stream = c
            .watch(nodes_prefix(0), Some(options))
            .await
            .expect("watch");
        watchers.push((c, stream));
    }
    let mem = rss_bytes().saturating_sub(before) / w as u64;
    let mut putter = Client::connect([url], None).await.expect("connect");
    let key = format!("{}baseline", nodes_prefix(0));
    let start = Instant::now();
    putter.put(key.as_str(), "x", None).await.expect("put");
    let waits = watchers.iter_mut().map(|(_, stream)| async move {
        loop {
            match stream.message().await {
                Ok(Some(resp)) if !resp.events().is_empty() => return Instant::now(),
                Ok(Some(_)) => continue,
                other => panic!("watch ended: {other:?}"),
            }
        }
    });
    let last = tokio::time::timeout(JOIN_WITHIN, join_all(waits))
        .await
        .expect("baseline watchers did not all see the put")
        .into_iter()
        .max()
        .expect("at least one watcher");
    putter.delete(key.as_str(), None).await.expect("delete");
    (last - start, mem)
}

/// One simulated agent: its own store and a follower of each other cluster (by index).
struct Agent {
    store: EtcdStore,
    followers: Vec<(usize, RemoteStore)>,
}

/// Starts node `i` of cluster `c` on `urls[c]`, following every other cluster.
async fn agent(urls: &[String], c: usize, i: usize) -> Agent {
    let rec = record(c, i);
    let store = EtcdStore::start(
        config(&urls[c]),
        &cluster_name(c),
        &rec.node_name,
        &format!("bench/{c}/{i}"),
        Snapshot::default(),
        Admission::default(),
    )
    .expect("store config");
    // Under the start-up storm a request can exceed the store's RPC timeout; the store retries
    // by itself, so carry on and let convergence tell.
    let _ = store.claim(Duration::from_secs(30)).await;
    if let Err(e) = store.publish(&rec).await {
        eprintln!("{}/node-{i}: publish pending ({e})", cluster_name(c));
    }
    let followers = (0..urls.len())
        .filter(|&o| o != c)
        .map(|o| {
            let follower = RemoteStore::etcd(
                config(&urls[o]),
                &cluster_name(o),
                Snapshot::default(),
                Admission::default(),
            )
            .expect("follower config");
            (o, follower)
        })
        .collect();
    Agent { store, followers }
}

/// When every snapshot `rxs` holds satisfies `pred`; panics naming `what` after `within`.
async fn wait_all(
    rxs: Vec<tokio::sync::watch::Receiver<std::sync::Arc<Snapshot>>>,
    what: &str,
    within: Duration,
    pred: impl Fn(&Snapshot) -> bool + Copy,
) -> Instant {
    let waits = rxs.into_iter().map(|mut rx| async move {
        loop {
            if pred(&rx.borrow_and_update()) {
                return Instant::now();
            }
            rx.changed().await.expect("store stopped");
        }
    });
    let all = tokio::time::timeout(within, join_all(waits))
        .await
        .unwrap_or_else(|_| panic!("{what}: not reached within {within:?}"));
    all.into_iter().max().unwrap_or_else(Instant::now)
}

/// The followers of cluster `c` in every agent.
fn followers_of(
    agents: &[Agent],
    c: usize,
) -> Vec<tokio::sync::watch::Receiver<std::sync::Arc<Snapshot>>> {
    agents
        .iter()
        .flat_map(|a| &a.followers)
        .filter(|(o, _)| *o == c)
        .map(|(_, f)| f.subscribe())
        .collect()
}

/// The mesh of `urls.len()` clusters × `n` agents: convergence time, the median time for a new
/// node of cluster 1 to reach every other cluster's agents, and the memory per agent.
async fn mesh(urls: &[String], n: usize) -> (Duration, Duration, u64) {
    let before = rss_bytes();
    let start = Instant::now();
    let mut agents = Vec::new();
    for c in 0..urls.len() {
        for i in 0..n {
            agents.push(agent(urls, c, i).await);
        }
    }
    let own: Vec<_> = agents.iter().map(|a| a.store.subscribe()).collect();
    wait_all(own, "every store's own cluster", CONVERGE_WITHIN, |s| {
        s.nodes.len() == n
    })
    .await;
    let all: Vec<_> = agents
        .iter()
        .flat_map(|a| a.followers.iter().map(|(_, f)| f.subscribe()))
        .collect();
    wait_all(all, "every follower's cluster", CONVERGE_WITHIN, |s| {
        s.nodes.len() == n
    })
    .await;
    let converge = start.elapsed();
    let mem = rss_bytes().saturating_sub(before) / agents.len() as u64;

    let mut samples = Vec::new();
    for k in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        let newcomer = agent(&urls[..1], 0, n + k).await;
        let name = format!("node-{}", n + k);
        let last = wait_all(
            followers_of(&agents, 0),
            "the new node in every other cluster",
            JOIN_WITHIN,
            |s| s.nodes.contains_key(&name),
        )
        .await;
        samples.push(last - t0);
        agents.push(newcomer);
    }
    samples.sort();
    for a in agents {
        a.store.abandon();
    }
    (converge, samples[1], mem)
}

/// `CxN` arguments, e.g. `8x16`.
fn sizes() -> Vec<(usize, usize)> {
    let parsed: Vec<(usize, usize)> = std::env::args()
        .skip(1)
        .map(|a| {
            let (c, n) = a.split_once('x').expect("arguments are CxN, e.g. 8x16");
            (c.parse().expect("C"), n.parse().expect("N"))
        })
        .collect();
    if parsed.is_empty() {
        vec![(2, 32), (8, 16), (32, 4)]
    } else {
        parsed
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("| C × N | connections (stores + followers) | baseline: one put → (C-1)·N watchers | new node → every other cluster's agents | ratio | convergence | baseline mem/watcher | mem/agent | mem/connection | ratio |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (c, n) in sizes() {
            let mut servers = Vec::with_capacity(c);
            for _ in 0..c {
                servers.push(EtcdServer::start().await);
            }
            let urls: Vec<String> = servers.iter().map(EtcdServer::url).collect();
            let (base, base_mem) = baseline(&urls[0], (c - 1) * n).await;
            let (converge, join, mem) = mesh(&urls, n).await;
            let connections = c * n * c;
            let per_connection = mem / c as u64;
            println!(
                "| {c} × {n} | {connections} | {:.1} ms | {:.1} ms | {:.2}× | {:.2} s | {} KiB | {} KiB | {} KiB | {:.2}× |",
                base.as_secs_f64() * 1e3,
                join.as_secs_f64() * 1e3,
                join.as_secs_f64() / base.as_secs_f64().max(1e-6),
                converge.as_secs_f64(),
                base_mem / 1024,
                mem / 1024,
                per_connection / 1024,
                per_connection as f64 / base_mem.max(1) as f64,
            );
            drop(servers);
        }
    });
}
