//! The object store and cluster-wide identity allocation against the real backends: a real
//! etcd server (Debian's etcd-server, started by the test) and a dir store shared by several
//! allocators. Allocators race for the same numbers on purpose.
#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

#[allow(dead_code, reason = "shared helpers; this file uses part of them")]
mod common;
#[allow(dead_code, reason = "shared helpers; this file uses part of them")]
mod etcd_server;

use std::sync::Arc;
use std::time::Duration;

use etcd_server::EtcdServer;
use keymgr::store::objects::{ObjectRef, ObjectStore};
use keymgr::store::EtcdConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dir_allocators_never_share_a_number() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<_> = (0..4)
        .map(|_| Arc::new(ObjectStore::dir(dir.path()).unwrap()))
        .collect();
    let allocated = common::race_allocators(&stores).await;
    // Allocations persist: a later allocator reuses them.
    let again = stores[0].allocate(common::colliding_wants()).await.unwrap();
    assert_eq!(again, allocated);
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
    common::race_allocators(&stores).await;

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
