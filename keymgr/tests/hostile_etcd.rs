//! One hostile record in etcd (a real etcd server, one per test): the record in force keeps
//! working and only the newcomer is refused, ordered by the key's `create_revision`, the same for
//! a reader that watched the records arrive and for one that lists them all at once.
#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

#[allow(
    dead_code,
    reason = "helpers shared by every store test; each uses a part"
)]
mod common;
#[allow(
    dead_code,
    reason = "the server serves every store test; each uses a part"
)]
mod etcd_server;

use std::time::Duration;

use common::{bounded_by, wait_for};
use etcd_server::EtcdServer;
use keymgr::store::{ClaimOutcome, EtcdConfig, EtcdStore, Snapshot};
use keymgr::{Admission, NodeRecord, PrivateKey};

const NODES: &str = "/wiremesh/v1/lab/nodes/";

fn rec(name: &str, cidr: &str, endpoint: &str) -> NodeRecord {
    let key = PrivateKey::generate().public_key();
    NodeRecord {
        cluster_name: "lab".into(),
        pod_cidrs: vec![cidr.parse().unwrap()],
        ..NodeRecord::new(name, key, endpoint.parse().unwrap())
    }
}

async fn joined(server: &EtcdServer, record: &NodeRecord) -> EtcdStore {
    let cfg = EtcdConfig {
        endpoints: vec![server.url()],
        lease_ttl: Duration::from_secs(30),
        ..EtcdConfig::default()
    };
    let name = &record.node_name;
    let admission = Admission {
        cluster_pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        local_addresses: vec![record.endpoint.ip()],
    };
    let owner = format!("owner-{name}");
    let s = EtcdStore::start(cfg, "lab", name, &owner, Snapshot::default(), admission).unwrap();
    let claimed = s.claim(Duration::from_secs(5)).await.unwrap();
    assert_eq!(claimed, ClaimOutcome::Claimed);
    s.publish(record).await.unwrap();
    s
}

fn names(snap: &Snapshot) -> Vec<String> {
    snap.nodes.keys().cloned().collect()
}

#[tokio::test]
async fn hostile_keys_are_refused_and_the_records_in_force_stay() {
    bounded_by(Duration::from_secs(60), async {
        let server = EtcdServer::start().await;
        let mut etcd = server.client().await;
        let node1 = rec("node-1", "10.244.1.0/24", "198.18.0.1:51871");
        let s1 = joined(&server, &node1).await;
        let mut rx = s1.subscribe();

        // "node-0" sorts (and is listed) before "node-1": only create_revision keeps node-1.
        let mut epoch = rec("epoch", "10.244.7.0/24", "198.18.0.7:51871");
        epoch.key_epoch = u64::MAX;
        let hostile = [
            rec("node-0", "10.244.1.0/24", "198.18.0.9:51871"),
            rec("all6", "::/0", "198.18.0.10:51871"),
            rec("underlay", "198.18.0.0/15", "203.0.113.1:51871"),
            rec("wide", "10.0.0.0/8", "198.18.0.12:51871"),
            epoch,
        ];
        for r in &hostile {
            let json = serde_json::to_vec(r).unwrap();
            etcd.put(format!("{NODES}{}", r.node_name), json, None)
                .await
                .unwrap();
        }
        let mut all =
            serde_json::to_value(rec("all", "10.244.9.0/24", "198.18.0.13:51871")).unwrap();
        all["podCIDRs"] = serde_json::json!(["0.0.0.0/0"]);
        etcd.put(format!("{NODES}all"), all.to_string(), None)
            .await
            .unwrap();

        let node2 = rec("node-2", "10.244.2.0/24", "198.18.0.2:51871");
        let s2 = joined(&server, &node2).await;
        for (who, rx) in [("watcher", &mut rx), ("lister", &mut s2.subscribe())] {
            let snap = wait_for(rx, Duration::from_secs(5), "node-2", |s| {
                s.nodes.contains_key("node-2")
            })
            .await;
            assert_eq!(names(&snap), ["node-1", "node-2"], "{who}: {snap:?}");
        }

        // Rewriting node-1's key keeps its create_revision, and so its place.
        let moved = NodeRecord {
            endpoint: "198.18.0.1:51872".parse().unwrap(),
            ..node1.clone()
        };
        s1.publish(&moved).await.unwrap();
        let snap = wait_for(
            &mut s2.subscribe(),
            Duration::from_secs(5),
            "rewrite",
            |s| s.nodes.get("node-1") == Some(&moved),
        )
        .await;
        assert_eq!(names(&snap), ["node-1", "node-2"]);

        // Control: node-1's key deleted and created again is younger than the copy, which then
        // wins, so the order above was create_revision and not the name.
        s1.abandon();
        etcd.delete(format!("{NODES}node-1"), None).await.unwrap();
        let json = serde_json::to_vec(&node1).unwrap();
        etcd.put(format!("{NODES}node-1"), json, None)
            .await
            .unwrap();
        let snap = wait_for(&mut s2.subscribe(), Duration::from_secs(5), "node-0", |s| {
            s.nodes.contains_key("node-0")
        })
        .await;
        assert_eq!(names(&snap), ["node-0", "node-2"]);
    })
    .await;
}
