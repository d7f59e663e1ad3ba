//! Benchmark (not a test): how fast a key rotation reaches every node, and what each node's
//! control plane costs, with N simulated agents in one process against one real etcd.
//!
//!   cargo run --release -p keymgr --example etcd_fanout -- 100 1000
//!
//! For each N it starts a fresh etcd (Debian's etcd-server, as the tests do), then:
//! * baseline: N plain etcd-client watchers (one connection each) on the nodes prefix, and the
//!   time from one put until all N have seen it;
//! * wiremesh: N `EtcdStore`s (lease, claim, own record, list + watch, validation), the time
//!   until all have converged on N records, then the time from node 0 publishing a rotated key
//!   until every other store's snapshot carries it (3 runs, median), and the resident memory
//!   added per simulated node (whole-process RSS delta / N, which includes each node's view of
//!   all N records).
//!
//! Prints each wiremesh figure as a ratio to its baseline from the same run.

#[path = "../tests/etcd_server/mod.rs"]
#[allow(dead_code)]
mod etcd_server;

mod common;

use common::rss_bytes;

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, WatchOptions};
use futures::future::join_all;
use keymgr::store::{ClaimOutcome, EtcdConfig, EtcdStore};
use keymgr::{NodeRecord, PrivateKey, Snapshot};

const CLUSTER: &str = "bench";
const PREFIX: &str = "/wiremesh";
/// Bounds on each wait, so that a run that cannot finish ends with a message.
const CONVERGE_WITHIN: Duration = Duration::from_secs(20 * 60);
const ROTATE_WITHIN: Duration = Duration::from_secs(60);

fn record(i: usize) -> NodeRecord {
    let endpoint = format!("198.18.{}.{}:51871", i / 250, i % 250 + 1)
        .parse()
        .expect("valid endpoint");
    NodeRecord {
        cluster_name: CLUSTER.into(),
        pod_cidrs: vec![format!("10.{}.{}.0/24", i / 256, i % 256)
            .parse()
            .expect("valid CIDR")],
        key_epoch: 1,
        ..NodeRecord::new(
            format!("node-{i}"),
            PrivateKey::generate().public_key(),
            endpoint,
        )
    }
}

fn nodes_prefix() -> String {
    format!("{PREFIX}/v1/{CLUSTER}/nodes/")
}

/// N raw watchers; returns the fan-out latency of one put and the memory per watcher.
async fn baseline(url: &str, n: usize) -> (Duration, u64) {
    let before = rss_bytes();
    let mut watchers = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Client::connect([url], None).await.expect("connect");
        let stream = c
            .watch(nodes_prefix(), Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch");
        watchers.push((c, stream));
    }
    let mem = rss_bytes().saturating_sub(before) / n as u64;
    let mut putter = Client::connect([url], None).await.expect("connect");
    let start = Instant::now();
    putter
        .put(format!("{}baseline", nodes_prefix()), "x", None)
        .await
        .expect("put");
    let waits = watchers.iter_mut().map(|(_, stream)| async move {
        loop {
            match stream.message().await {
                Ok(Some(resp)) if !resp.events().is_empty() => return Instant::now(),
                Ok(Some(_)) => continue,
                other => panic!("watch ended: {other:?}"),
            }
        }
    });
    let last = tokio::time::timeout(ROTATE_WITHIN, join_all(waits))
        .await
        .expect("baseline watchers did not all see the put")
        .into_iter()
        .max()
        .expect("at least one watcher");
    putter
        .delete(format!("{}baseline", nodes_prefix()), None)
        .await
        .expect("delete");
    (last - start, mem)
}

/// When every store but `skip` satisfies `pred`; panics (naming `what`) after `within`, so a
/// run that cannot converge ends instead of hanging.
async fn wait_all(
    stores: &[EtcdStore],
    skip: usize,
    what: &str,
    within: Duration,
    pred: impl Fn(&Snapshot) -> bool + Copy,
) -> Instant {
    let waits = stores
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, s)| {
            let mut rx = s.subscribe();
            async move {
                loop {
                    if pred(&rx.borrow_and_update()) {
                        return Instant::now();
                    }
                    rx.changed().await.expect("store stopped");
                }
            }
        });
    let all = tokio::time::timeout(within, join_all(waits))
        .await
        .unwrap_or_else(|_| panic!("{what}: not reached within {within:?}"));
    all.into_iter().max().unwrap_or_else(Instant::now)
}

async fn wiremesh(url: &str, n: usize) -> (Duration, Duration, u64) {
    let config = EtcdConfig {
        endpoints: vec![url.to_string()],
        prefix: PREFIX.into(),
        tls: None,
        lease_ttl: Duration::from_secs(60),
    };
    let before = rss_bytes();
    let start = Instant::now();
    let mut stores = Vec::with_capacity(n);
    let mut records = Vec::with_capacity(n);
    for i in 0..n {
        let rec = record(i);
        let owner = format!("bench/{i}");
        let store = EtcdStore::start(
            config.clone(),
            CLUSTER,
            &rec.node_name,
            &owner,
            Snapshot::default(),
            keymgr::Admission::default(),
        )
        .expect("store config");
        // Under the start-up storm a request can exceed the store's RPC timeout; the store then
        // retries by itself (the record stays wanted), so carry on and let convergence tell.
        match store.claim(Duration::from_secs(30)).await.expect("claim") {
            ClaimOutcome::Claimed => {}
            ClaimOutcome::Unreachable { error } => eprintln!("node-{i}: claim pending ({error})"),
        }
        if let Err(e) = store.publish(&rec).await {
            eprintln!("node-{i}: publish pending ({e})");
        }
        stores.push(store);
        records.push(rec);
    }
    let everywhere = format!("{n} records in every store");
    wait_all(&stores, usize::MAX, &everywhere, CONVERGE_WITHIN, |s| {
        s.nodes.len() == n
    })
    .await;
    let converge = start.elapsed();
    let mem = rss_bytes().saturating_sub(before) / n as u64;

    let mut samples = Vec::new();
    for _ in 0..3 {
        // Let the previous sample's fan-out settle, so each sample is one change on a quiet
        // cluster.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut rotated = records[0].clone();
        rotated.public_key = PrivateKey::generate().public_key();
        rotated.key_epoch += 1;
        let key = rotated.public_key;
        let t0 = Instant::now();
        stores[0]
            .publish(&rotated)
            .await
            .expect("publish rotated key");
        let last = wait_all(
            &stores,
            0,
            "rotated key everywhere",
            ROTATE_WITHIN,
            move |s| s.nodes.get("node-0").is_some_and(|r| r.public_key == key),
        )
        .await;
        samples.push(last - t0);
        records[0] = rotated;
    }
    samples.sort();
    for s in stores {
        s.abandon();
    }
    (samples[1], converge, mem)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are node counts, e.g. 100 1000"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000]
    } else {
        sizes
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("| N | baseline fan-out | wiremesh rotation → all applied | ratio | convergence (N records everywhere) | baseline mem/watcher | wiremesh mem/node | ratio |");
        println!("|---|---|---|---|---|---|---|---|");
        for n in sizes {
            let server = Arc::new(etcd_server::EtcdServer::start().await);
            let url = server.url();
            let (base, base_mem) = baseline(&url, n).await;
            let (rotation, converge, mem) = wiremesh(&url, n).await;
            println!(
                "| {n} | {:.1} ms | {:.1} ms | {:.2}× | {:.2} s | {} KiB | {} KiB | {:.2}× |",
                base.as_secs_f64() * 1e3,
                rotation.as_secs_f64() * 1e3,
                rotation.as_secs_f64() / base.as_secs_f64().max(1e-6),
                converge.as_secs_f64(),
                base_mem / 1024,
                mem / 1024,
                mem as f64 / base_mem.max(1) as f64,
            );
        }
    });
}
