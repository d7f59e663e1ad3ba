//! One hostile Node against the Kubernetes store, served by an in-process FAKE API server
//! (`fake-apiserver`: no real API server can be installed on the project's machines; the fake
//! sets `creationTimestamp` on create, in whole seconds, as the real one does). The Node in force
//! keeps working and only the newcomer is refused, ordered by `creationTimestamp`, the same for a
//! reader that watched the Nodes arrive and one that lists them all at once.
#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

#[allow(
    dead_code,
    reason = "helpers shared by every store test; each uses a part"
)]
mod common;

use std::time::Duration;

use common::{bounded_by, wait_for};
use k8s_openapi::api::core::v1::Node;
use keymgr::store::{ClaimOutcome, KubeConfig, KubeStore, Snapshot};
use keymgr::{Admission, PrivateKey};
use wiremesh_fake_apiserver::{kubelet_node, FakeApiServer};

async fn joined(server: &FakeApiServer, name: &str, n: u8) -> KubeStore {
    if server.node(name).is_none() {
        server.create_node(kubelet_node(name, n));
    }
    let cfg = KubeConfig {
        kubeconfig: Some(server.kubeconfig(None)),
        heartbeat: Duration::from_millis(300),
        owner_ttl: Duration::from_secs(3),
    };
    let admission = Admission {
        cluster_pod_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ],
        local_addresses: vec![format!("198.18.0.{n}").parse().unwrap()],
    };
    let owner = format!("owner-{name}");
    let s = KubeStore::start(cfg, "lab", name, &owner, Snapshot::default(), admission).unwrap();
    assert_eq!(
        s.claim(Duration::from_secs(5)).await.unwrap(),
        ClaimOutcome::Claimed
    );
    let key = PrivateKey::generate().public_key();
    let endpoint = format!("198.18.0.{n}:51871").parse().unwrap();
    s.publish(&keymgr::NodeRecord::new(name, key, endpoint))
        .await
        .unwrap();
    s
}

/// A Node published by hand (annotations only), whose pod CIDRs are `cidrs`.
fn hostile(name: &str, n: u8, cidrs: &[&str]) -> Node {
    let mut node = kubelet_node(name, n);
    let spec = node.spec.as_mut().unwrap();
    spec.pod_cidr = Some(cidrs[0].into());
    spec.pod_cidrs = Some(cidrs.iter().map(|c| c.to_string()).collect());
    let key = PrivateKey::generate().public_key().to_base64();
    node.metadata.annotations = Some(
        [
            ("wiremesh.io/wg-pub-key".into(), key),
            (
                "wiremesh.io/wg-endpoint".into(),
                format!("198.18.1.{n}:51871"),
            ),
        ]
        .into(),
    );
    node
}

fn names(snap: &Snapshot) -> Vec<String> {
    snap.nodes.keys().cloned().collect()
}

#[tokio::test]
async fn hostile_nodes_are_refused_and_the_nodes_in_force_stay() {
    bounded_by(Duration::from_secs(60), async {
        let server = FakeApiServer::start().await;
        let s1 = joined(&server, "node-1", 1).await;
        let mut rx = s1.subscribe();
        // creationTimestamp has whole seconds: let the newcomers be a second younger.
        tokio::time::sleep(Duration::from_millis(1100)).await;

        // "a-copy" sorts before "node-1": only creationTimestamp keeps node-1 in force.
        server.create_node(hostile("a-copy", 21, &["10.244.1.0/24", "fd00:10:21::/64"]));
        server.create_node(hostile("all", 22, &["0.0.0.0/0"]));
        server.create_node(hostile("underlay", 23, &["198.18.0.0/15"]));
        server.create_node(hostile("wide", 24, &["10.0.0.0/8"]));
        let mut epoch = hostile("epoch", 25, &["10.244.25.0/24"]);
        let annotations = epoch.metadata.annotations.as_mut().unwrap();
        annotations.insert("wiremesh.io/wg-key-epoch".into(), u64::MAX.to_string());
        server.create_node(epoch);

        let s2 = joined(&server, "node-2", 2).await;
        for (who, rx) in [("watcher", &mut rx), ("lister", &mut s2.subscribe())] {
            let snap = wait_for(rx, Duration::from_secs(5), "node-2", |s| {
                s.nodes.contains_key("node-2")
            })
            .await;
            assert_eq!(names(&snap), ["node-1", "node-2"], "{who}: {snap:?}");
        }

        // Control: node-1's Node deleted and created again is younger than the copy, which
        // then wins, so the order above was creationTimestamp and not the name.
        drop(s1);
        server.delete_node("node-1");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let _s1 = joined(&server, "node-1", 1).await;
        let snap = wait_for(&mut s2.subscribe(), Duration::from_secs(5), "a-copy", |s| {
            s.nodes.contains_key("a-copy")
        })
        .await;
        assert_eq!(names(&snap), ["a-copy", "node-2"]);
    })
    .await;
}
