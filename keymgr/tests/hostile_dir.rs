//! One hostile record in the dir store: the record in force keeps working and only the newcomer
//! is refused, whatever reader and whatever order of discovery, and the order is the node's
//! first publish (its `.<node>.since` marker), not the latest rewrite.
#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

#[allow(
    dead_code,
    reason = "helpers shared by every store test; each uses a part"
)]
mod common;

use std::path::Path;
use std::time::Duration;

use common::{bounded_by, wait_for};
use keymgr::store::{DirStore, Snapshot};
use keymgr::{Admission, NodeRecord, PrivateKey};

fn rec(name: &str, cidr: &str, endpoint: &str) -> NodeRecord {
    let key = PrivateKey::generate().public_key();
    NodeRecord {
        cluster_name: "lab".into(),
        pod_cidrs: vec![cidr.parse().unwrap()],
        ..NodeRecord::new(name, key, endpoint.parse().unwrap())
    }
}

fn admission() -> Admission {
    Admission {
        cluster_pod_cidrs: vec!["10.244.0.0/16".parse().unwrap(), "::/0".parse().unwrap()],
        local_addresses: vec!["198.18.0.1".parse().unwrap()],
    }
}

/// Writes `json` as `<name>.json` by hand (no marker), as a hostile writer would.
fn write_by_hand(dir: &Path, name: &str, json: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.json"))).unwrap();
}

fn names(snap: &Snapshot) -> Vec<String> {
    snap.nodes.keys().cloned().collect()
}

#[tokio::test]
async fn hostile_files_are_refused_and_the_records_in_force_stay() {
    bounded_by(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path(), admission()).unwrap();
        let mut rx = store.subscribe();
        let node1 = rec("node-1", "10.244.1.0/24", "198.18.0.1:51871");
        store.publish(&node1).await.unwrap();
        let node2 = rec("node-2", "10.244.2.0/24", "198.18.0.2:51871");
        write_by_hand(dir.path(), "node-2", &serde_json::to_vec(&node2).unwrap());
        wait_for(&mut rx, Duration::from_secs(2), "node-1 and node-2", |s| {
            s.nodes.len() == 2
        })
        .await;
        // Change times are the kernel's coarse clock: let it tick before the newcomers.
        tokio::time::sleep(Duration::from_millis(20)).await;

        // "a-copy" sorts before "node-1": only seniority can keep node-1 in force.
        let copy = rec("a-copy", "10.244.1.0/24", "198.18.0.9:51871");
        let mut epoch = rec("epoch", "10.244.7.0/24", "198.18.0.7:51871");
        epoch.key_epoch = u64::MAX;
        let hostile: Vec<(&str, Vec<u8>)> = vec![
            ("a-copy", serde_json::to_vec(&copy).unwrap()),
            (
                "all",
                serde_json::to_vec(&rec("all", "0.0.0.0/0", "198.18.0.10:51871")).unwrap(),
            ),
            (
                "all6",
                serde_json::to_vec(&rec("all6", "::/0", "198.18.0.11:51871")).unwrap(),
            ),
            (
                "underlay",
                serde_json::to_vec(&rec("underlay", "198.18.0.0/15", "203.0.113.1:51871")).unwrap(),
            ),
            (
                "wide",
                serde_json::to_vec(&rec("wide", "10.0.0.0/8", "198.18.0.12:51871")).unwrap(),
            ),
            ("epoch", serde_json::to_vec(&epoch).unwrap()),
            ("big", vec![b' '; 70 * 1024]),
        ];
        for (name, json) in &hostile {
            write_by_hand(dir.path(), name, json);
        }
        let ok = rec("node-3", "10.244.3.0/24", "198.18.0.3:51871");
        write_by_hand(dir.path(), "node-3", &serde_json::to_vec(&ok).unwrap());
        let snap = wait_for(&mut rx, Duration::from_secs(2), "node-3", |s| {
            s.nodes.contains_key("node-3")
        })
        .await;
        assert_eq!(names(&snap), ["node-1", "node-2", "node-3"], "{snap:?}");
        assert_eq!(snap.nodes.get("node-1"), Some(&node1));

        // A fresh reader lists everything at once, in directory order: the same verdict.
        let fresh = DirStore::open(dir.path(), admission()).unwrap();
        assert_eq!(
            names(&fresh.subscribe().borrow()),
            ["node-1", "node-2", "node-3"]
        );

        // node-1 rewrites its record (a restart, a rotation): it keeps its place.
        let moved = NodeRecord {
            endpoint: "198.18.0.1:51872".parse().unwrap(),
            ..node1.clone()
        };
        store.publish(&moved).await.unwrap();
        let snap = wait_for(&mut rx, Duration::from_secs(2), "node-1 rewritten", |s| {
            s.nodes.get("node-1") == Some(&moved)
        })
        .await;
        assert!(!snap.nodes.contains_key("a-copy"), "{snap:?}");

        // The marker is what keeps it: without it node-1 publishes as a newcomer, and the older
        // copy wins. (This is the detector of the checks above: the order is not by name.)
        std::fs::remove_file(dir.path().join(".node-1.since")).unwrap();
        store.publish(&node1).await.unwrap();
        let snap = wait_for(&mut rx, Duration::from_secs(2), "a-copy in force", |s| {
            s.nodes.contains_key("a-copy")
        })
        .await;
        assert!(!snap.nodes.contains_key("node-1"), "{snap:?}");
    })
    .await;
}
