//! The object store and cluster-wide identity allocation against the real backends: a real
//! etcd server (Debian's etcd-server, started by the test) and a dir store shared by several
//! allocators. Allocators race for the same numbers on purpose.
#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

#[allow(
    dead_code,
    reason = "the server harness is shared; this file uses part of it"
)]
mod etcd_server;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_server::EtcdServer;
use keymgr::store::objects::{ObjectRef, ObjectStore, Wanted};
use keymgr::store::EtcdConfig;

/// Eight label sets that all prefer the same few numbers, so allocators collide.
fn wanted() -> Vec<Wanted> {
    (0..8)
        .map(|i| Wanted {
            key: format!("k8s:app=a{i}"),
            preferred: 300 + (i % 3),
            first: 256,
            end: 1 << 24,
        })
        .collect()
}

/// Every allocator got a number for every key, all agree, and no number holds two keys.
fn check_agreement(results: &[BTreeMap<String, u32>]) {
    let first = &results[0];
    assert_eq!(first.len(), 8, "{first:?}");
    for r in results {
        assert_eq!(r, first, "allocators disagree");
    }
    let numbers: BTreeSet<u32> = first.values().copied().collect();
    assert_eq!(
        numbers.len(),
        first.len(),
        "a number holds two label sets: {first:?}"
    );
}

async fn race(stores: Vec<Arc<ObjectStore>>) -> Vec<BTreeMap<String, u32>> {
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(async move {
                let mut w = wanted();
                // Different orders make the races real.
                if i % 2 == 1 {
                    w.reverse();
                }
                s.allocate(w).await.unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dir_allocators_never_share_a_number() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<_> = (0..4)
        .map(|_| Arc::new(ObjectStore::dir(dir.path()).unwrap()))
        .collect();
    let results = race(stores.clone()).await;
    check_agreement(&results);
    // Allocations persist: a later allocator reuses them.
    let again = stores[0].allocate(wanted()).await.unwrap();
    assert_eq!(again, results[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_allocators_never_share_a_number_and_objects_round_trip() {
    let server = EtcdServer::start().await;
    let config = EtcdConfig {
        endpoints: vec![server.url()],
        ..EtcdConfig::default()
    };
    let stores: Vec<_> = (0..4)
        .map(|_| Arc::new(ObjectStore::etcd(&config, "lab").unwrap()))
        .collect();
    let results = race(stores.clone()).await;
    check_agreement(&results);

    // An object written through one store reaches another's subscribers.
    let pod = serde_json::json!({"kind": "Pod", "metadata": {"name": "a", "namespace": "x"}});
    let r = ObjectRef::of(&pod).unwrap();
    let mut rx = stores[3].subscribe();
    stores[0]
        .write(vec![(r.clone(), pod.to_string())], vec![])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !rx.borrow_and_update().objects.contains_key(&r) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("the object reaches the other store within 5 s");
    assert!(rx.borrow().synced);
}
