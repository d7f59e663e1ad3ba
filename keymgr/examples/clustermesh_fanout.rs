//! Benchmark (not a test): the cluster mesh's control plane. C clusters, each with its own real
//! etcd (its own ports and data directory), N simulated agents per cluster in one process; each
//! agent is what the real one runs: its own `EtcdStore` on its cluster's etcd (lease, claim, own
//! record, list + watch, validation) and one read-only `RemoteStore` follower per other cluster,
//! admitting only that cluster's pod pool.
//!
//!   cargo run --release -p keymgr --example clustermesh_fanout -- 2x32 8x32 32x4
//!
//! Each C×N runs in a child process of its own, so that memory freed by one size is not reused
//! by the next. In it:
//! * baseline: (C-1)·N plain etcd-client watchers (one per (agent, remote cluster) pair, each on
//!   its own connection) on a cluster-1 prefix; the time from one put until all have seen it
//!   (median of 3) and the RSS added per watcher. They stay open, idle, until the end, so the
//!   mesh does not reuse their memory;
//! * start-up: all C·N stores (each claims, publishes, until every store holds its N records),
//!   then all C·N·(C-1) followers (until every follower holds its cluster's N records); the RSS
//!   added per store and per follower;
//! * mesh-wide convergence: a new node in cluster 1 (its store started and claimed first); the
//!   time from its publish until every follower of cluster 1, in every agent of every other
//!   cluster, has it in its snapshot (median of 3).
//!
//! Prints one table row per size, each figure beside its ratio to the baseline of the same run.
//! Every wait is bounded: a size that cannot finish ends with a message and the next one runs.

#[path = "../tests/etcd_server/mod.rs"]
#[allow(dead_code)]
mod etcd_server;

mod common;

use common::rss_bytes;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, WatchOptions, WatchStream};
use etcd_server::EtcdServer;
use futures::future::join_all;
use ipnet::IpNet;
use keymgr::store::{ClaimOutcome, EtcdConfig, EtcdStore, RemoteStore, Snapshot};
use keymgr::{Admission, NodeRecord, PrivateKey};

const PREFIX: &str = "/wiremesh";
/// The baseline watchers' prefix: the same shape as the mesh's, but never written by it.
const BASELINE_PREFIX: &str = "/baseline";
/// Bound on each start-up phase (every store, then every follower, converged).
const CONVERGE_WITHIN: Duration = Duration::from_secs(10 * 60);
/// Bound on one change (a put, a new node) reaching every watcher or follower.
const JOIN_WITHIN: Duration = Duration::from_secs(60);
/// Bound on one whole size, enforced by the child itself; the parent waits a minute longer.
const RUN_WITHIN: Duration = Duration::from_secs(25 * 60);
const SAMPLES: usize = 3;
const DEFAULT_SIZES: [(usize, usize); 3] = [(2, 32), (8, 32), (32, 4)];

fn cluster_name(c: usize) -> String {
    format!("c{}", c + 1)
}

/// Cluster `c`'s pod pool, 10.`c`.0.0/16.
fn pool(c: usize) -> IpNet {
    format!("10.{c}.0.0/16").parse().expect("valid pool")
}

/// What an agent admits from cluster `c`: pod CIDRs inside its pool.
fn admission(c: usize) -> Admission {
    Admission {
        cluster_pod_cidrs: vec![pool(c)],
        local_addresses: vec![],
    }
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

type Receiver = tokio::sync::watch::Receiver<Arc<Snapshot>>;

/// When every snapshot in `rxs` satisfies `pred`; panics naming `what` after `within`.
async fn wait_all(
    rxs: Vec<Receiver>,
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

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Plain watchers on one etcd, kept open (idle) for as long as this lives.
struct Baseline {
    fan_out: Duration,
    mem_per_watcher: u64,
    _watchers: Vec<(Client, WatchStream)>,
}

/// `w` plain watchers on cluster 1's baseline prefix, each on its own connection: the median
/// time one put (a node record's JSON) takes to reach them all, and the memory per watcher.
async fn baseline(url: &str, w: usize) -> Baseline {
    let prefix = format!("{BASELINE_PREFIX}/v1/{}/nodes/", cluster_name(0));
    let before = rss_bytes();
    let mut watchers = Vec::with_capacity(w);
    for _ in 0..w {
        let mut c = Client::connect([url], None).await.expect("connect");
        let options = WatchOptions::new().with_prefix();
        let stream = c
            .watch(prefix.as_str(), Some(options))
            .await
            .expect("watch");
        watchers.push((c, stream));
    }
    let mem_per_watcher = rss_bytes().saturating_sub(before) / w as u64;
    let mut putter = Client::connect([url], None).await.expect("connect");
    let mut samples = Vec::with_capacity(SAMPLES);
    for k in 0..SAMPLES {
        let value = serde_json::to_vec(&record(0, k)).expect("encode record");
        let start = Instant::now();
        let put = putter.put(format!("{prefix}node-{k}"), value, None);
        put.await.expect("put");
        let waits = watchers.iter_mut().map(|(_, stream)| async move {
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if !resp.events().is_empty() => return Instant::now(),
                    Ok(Some(_)) => continue,
                    other => panic!("baseline watch ended: {other:?}"),
                }
            }
        });
        let last = tokio::time::timeout(JOIN_WITHIN, join_all(waits))
            .await
            .unwrap_or_else(|_| panic!("baseline: a put did not reach {w} watchers"))
            .into_iter()
            .max()
            .expect("at least one watcher");
        samples.push(last - start);
    }
    Baseline {
        fan_out: median(samples),
        mem_per_watcher,
        _watchers: watchers,
    }
}

/// Starts the store of node `i` of cluster `c` on `url`: claims its name and publishes its
/// record. Under the start-up storm a request can exceed the store's RPC timeout; the store
/// retries by itself (the record stays wanted), so it carries on and lets convergence tell.
async fn store(url: &str, c: usize, i: usize) -> (EtcdStore, NodeRecord) {
    let rec = record(c, i);
    let store = EtcdStore::start(
        config(url),
        &cluster_name(c),
        &rec.node_name,
        &format!("bench/{c}/{i}"),
        Snapshot::default(),
        admission(c),
    )
    .expect("store config");
    match store.claim(Duration::from_secs(30)).await {
        Ok(ClaimOutcome::Claimed) => {}
        Ok(ClaimOutcome::Unreachable { error }) => {
            eprintln!("{}/node-{i}: claim pending ({error})", cluster_name(c));
        }
        Err(e) => panic!("{}/node-{i}: claim refused: {e}", cluster_name(c)),
    }
    if let Err(e) = store.publish(&rec).await {
        eprintln!("{}/node-{i}: publish pending ({e})", cluster_name(c));
    }
    (store, rec)
}

/// The followers an agent of cluster `c` runs: one per other cluster, by index.
fn followers(urls: &[String], c: usize) -> Vec<(usize, RemoteStore)> {
    (0..urls.len())
        .filter(|&o| o != c)
        .map(|o| {
            let f = RemoteStore::etcd(
                config(&urls[o]),
                &cluster_name(o),
                Snapshot::default(),
                admission(o),
            )
            .expect("follower config");
            (o, f)
        })
        .collect()
}

/// What one size measured.
struct Figures {
    base: Baseline,
    stores_up: Duration,
    followers_up: Duration,
    mem_per_store: u64,
    mem_per_follower: u64,
    join: Duration,
}

/// Times from a new cluster-1 node's publish until every follower of cluster 1 holds it (each
/// new node's store is started and has claimed its name first).
async fn joins(url: &str, agents: &[Vec<(usize, RemoteStore)>], n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(SAMPLES);
    let mut newcomers = Vec::with_capacity(SAMPLES);
    for k in 0..SAMPLES {
        // Let the previous sample's fan-out settle: each sample is one change on a quiet mesh.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rec = record(0, n + k);
        let store = EtcdStore::start(
            config(url),
            &cluster_name(0),
            &rec.node_name,
            &format!("bench/0/{}", n + k),
            Snapshot::default(),
            admission(0),
        )
        .expect("store config");
        let claimed = store.claim(JOIN_WITHIN).await;
        assert!(
            matches!(claimed, Ok(ClaimOutcome::Claimed)),
            "new node {}: claim failed: {claimed:?}",
            rec.node_name
        );
        let rxs: Vec<Receiver> = agents
            .iter()
            .flatten()
            .filter(|(o, _)| *o == 0)
            .map(|(_, f)| f.subscribe())
            .collect();
        let t0 = Instant::now();
        store.publish(&rec).await.expect("publish the new node");
        let what = format!("{} in every other cluster", rec.node_name);
        let name = rec.node_name.as_str();
        let last = wait_all(rxs, &what, JOIN_WITHIN, |s| s.nodes.contains_key(name)).await;
        samples.push(last - t0);
        newcomers.push(store);
    }
    newcomers.into_iter().for_each(EtcdStore::abandon);
    samples
}

/// One size, on fresh etcd servers (killed when this returns or is dropped).
async fn run(c: usize, n: usize) -> Figures {
    let mut servers = Vec::with_capacity(c);
    for _ in 0..c {
        servers.push(EtcdServer::start().await);
    }
    let urls: Vec<String> = servers.iter().map(EtcdServer::url).collect();
    let base = baseline(&urls[0], (c - 1) * n).await;

    let before = rss_bytes();
    let start = Instant::now();
    let mut stores = Vec::with_capacity(c * n);
    for (cluster, url) in urls.iter().enumerate() {
        for i in 0..n {
            stores.push(store(url, cluster, i).await.0);
        }
    }
    let rxs = stores.iter().map(EtcdStore::subscribe).collect();
    let what = format!("{n} records in every store");
    wait_all(rxs, &what, CONVERGE_WITHIN, |s| s.nodes.len() == n).await;
    let stores_up = start.elapsed();
    let with_stores = rss_bytes();

    let start = Instant::now();
    let agents: Vec<_> = (0..c * n).map(|a| followers(&urls, a / n)).collect();
    let rxs = agents
        .iter()
        .flatten()
        .map(|(_, f)| f.subscribe())
        .collect();
    let what = format!("{n} records in every follower");
    wait_all(rxs, &what, CONVERGE_WITHIN, |s| s.nodes.len() == n).await;
    let followers_up = start.elapsed();
    let with_followers = rss_bytes();

    let join = median(joins(&urls[0], &agents, n).await);
    stores.into_iter().for_each(EtcdStore::abandon);
    Figures {
        base,
        stores_up,
        followers_up,
        mem_per_store: with_stores.saturating_sub(before) / (c * n) as u64,
        mem_per_follower: with_followers.saturating_sub(with_stores) / (c * n * (c - 1)) as u64,
        join,
    }
}

const HEADER: &str = "| C × N | agents | connections | baseline: put → (C-1)·N watchers | new node → every other cluster's agents | ratio | start-up: stores, then followers | mem/watcher | mem/follower | ratio | mem/agent (store + C-1 followers) | ratio to C watchers |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

fn row(c: usize, n: usize, f: &Figures) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let kib = |b: u64| b as f64 / 1024.0;
    let watcher = f.base.mem_per_watcher.max(1) as f64;
    let agent = f.mem_per_store + (c as u64 - 1) * f.mem_per_follower;
    format!(
        "| {c} × {n} | {} | {} + {} | {:.1} ms | {:.1} ms | {:.2}× | {:.1} s, {:.1} s | {:.0} KiB | {:.0} KiB | {:.2}× | {:.0} KiB | {:.2}× |",
        c * n,
        c * n * c,
        (c - 1) * n,
        ms(f.base.fan_out),
        ms(f.join),
        ms(f.join) / ms(f.base.fan_out).max(1e-3),
        f.stores_up.as_secs_f64(),
        f.followers_up.as_secs_f64(),
        kib(f.base.mem_per_watcher),
        kib(f.mem_per_follower),
        f.mem_per_follower as f64 / watcher,
        kib(agent),
        agent as f64 / (c as f64 * watcher),
    )
}

/// Runs one size in this process and prints its row; exits non-zero if it cannot finish.
fn one(c: usize, n: usize) {
    assert!(
        (2..=255).contains(&c) && (1..=250).contains(&n),
        "C must be 2..=255 and N 1..=250 (pod CIDRs are 10.C.N.0/24)"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // On timeout the run is dropped, and with it its etcd servers.
    match rt.block_on(async { tokio::time::timeout(RUN_WITHIN, run(c, n)).await }) {
        Ok(figures) => println!("{}", row(c, n, &figures)),
        Err(_) => {
            eprintln!("{c} × {n}: not finished within {RUN_WITHIN:?}; stopped");
            std::process::exit(1);
        }
    }
    // The stores' tasks may still be winding down; they hold nothing worth waiting for.
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// Runs one size in a child process, so that each size starts with a fresh heap.
fn child(c: usize, n: usize) {
    let exe = std::env::current_exe().expect("this program's path");
    let mut child = Command::new(exe)
        .args(["--one", &format!("{c}x{n}")])
        .spawn()
        .expect("start the child for one size");
    let deadline = Instant::now() + RUN_WITHIN + Duration::from_secs(60);
    loop {
        match child.try_wait().expect("wait for the child") {
            Some(status) if status.success() => return,
            Some(status) => {
                println!("| {c} × {n} | did not finish ({status}); its error is above |");
                return;
            }
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_secs(1)),
            None => {
                let pid = child.id();
                let _ = child.kill();
                let _ = child.wait();
                println!(
                    "| {c} × {n} | killed (PID {pid}) after {RUN_WITHIN:?}: its etcd servers may \
                     be left running; find them with `pgrep -P 1 -a etcd` |"
                );
                return;
            }
        }
    }
}

fn parse_size(arg: &str) -> (usize, usize) {
    let (c, n) = arg
        .split_once('x')
        .unwrap_or_else(|| panic!("{arg}: sizes are CxN, e.g. 8x32"));
    let number = |s: &str| {
        s.parse()
            .unwrap_or_else(|_| panic!("{arg}: sizes are CxN, e.g. 8x32"))
    };
    (number(c), number(n))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, size] = args.as_slice() {
        if flag == "--one" {
            let (c, n) = parse_size(size);
            one(c, n);
            return;
        }
    }
    let sizes: Vec<(usize, usize)> = if args.is_empty() {
        DEFAULT_SIZES.to_vec()
    } else {
        args.iter().map(|a| parse_size(a)).collect()
    };
    println!("{HEADER}");
    for (c, n) in sizes {
        child(c, n);
    }
}
