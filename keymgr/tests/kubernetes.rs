//! The Kubernetes store against an in-process FAKE API server (`fake-apiserver`): no real
//! Kubernetes API server can be installed on the project's machines, so these tests exercise the
//! store through the real REST + watch protocol for `v1/nodes` (list, watch with
//! resourceVersion, bookmarks and 410 Gone, get, merge patch with resourceVersion preconditions
//! and 409 Conflict, delete), reached through a generated kubeconfig file. What a real API
//! server adds (admission, RBAC, strategic merge of lists, server-side apply) is not covered.
#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{bounded_by, count_absences, outage_keeps_the_last_snapshot, wait_for, wait_health};
use keymgr::store::{ClaimOutcome, KubeConfig, KubeStore, Snapshot, StoreError, StoreHealth};
use keymgr::{Admission, NodeRecord, PrivateKey};
use serde_json::json;
use wiremesh_fake_apiserver::{kubelet_node, FakeApiServer};

fn rec(name: &str, n: u8) -> NodeRecord {
    let key = PrivateKey::generate().public_key();
    NodeRecord::new(name, key, format!("198.18.0.{n}:51871").parse().unwrap())
}

/// `published` as its peers see it: cluster from config, CIDRs and IPs from the Node.
fn seen(published: &NodeRecord, n: u8) -> NodeRecord {
    NodeRecord {
        cluster_name: "lab".into(),
        pod_cidrs: vec![
            format!("10.244.{n}.0/24").parse().unwrap(),
            format!("fd00:10:{n}::/64").parse().unwrap(),
        ],
        node_ips: vec![format!("198.18.0.{n}").parse().unwrap()],
        ..published.clone()
    }
}

fn config(server: &FakeApiServer, heartbeat_ms: u64, ttl_ms: u64) -> KubeConfig {
    KubeConfig {
        kubeconfig: Some(server.kubeconfig(None)),
        heartbeat: Duration::from_millis(heartbeat_ms),
        owner_ttl: Duration::from_millis(ttl_ms),
    }
}

fn store(server: &FakeApiServer, node: &str, owner: &str) -> KubeStore {
    let cfg = config(server, 300, 3000);
    KubeStore::start(
        cfg,
        "lab",
        node,
        owner,
        Snapshot::default(),
        Admission::default(),
    )
    .unwrap()
}

/// A store that has claimed its Node (created here, as kubelet would) and published `record`.
async fn joined(server: &FakeApiServer, record: &NodeRecord, n: u8) -> KubeStore {
    let name = &record.node_name;
    if server.node(name).is_none() {
        server.create_node(kubelet_node(name, n));
    }
    let s = store(server, name, &format!("owner-{name}"));
    assert_eq!(
        s.claim(Duration::from_secs(5)).await.unwrap(),
        ClaimOutcome::Claimed
    );
    s.publish(record).await.unwrap();
    s
}

fn annotations(server: &FakeApiServer, name: &str) -> std::collections::BTreeMap<String, String> {
    let node = server.node(name).unwrap();
    node.metadata.annotations.unwrap_or_default()
}

/// Every test is bounded in time, whatever goes wrong inside.
async fn bounded(test: impl Future<Output = ()>) {
    bounded_by(Duration::from_secs(60), test).await;
}

#[tokio::test]
async fn two_agents_publish_and_see_each_other_with_cidrs_and_ips_from_the_node() {
    bounded(async {
        let server = FakeApiServer::start().await;
        let (r1, r2) = (rec("node-1", 1), rec("node-2", 2));
        let s1 = joined(&server, &r1, 1).await;
        let s2 = joined(&server, &r2, 2).await;
        let (e1, e2) = (seen(&r1, 1), seen(&r2, 2));
        for s in [&s1, &s2] {
            let both = |snap: &Snapshot| {
                snap.nodes.get("node-1") == Some(&e1) && snap.nodes.get("node-2") == Some(&e2)
            };
            wait_for(&mut s.subscribe(), Duration::from_secs(5), "both", both).await;
        }
        assert_eq!(s1.describe(), format!("kubernetes:{}", server.url()));
        let a = annotations(&server, "node-1");
        assert_eq!(a["wiremesh.io/wg-pub-key"], r1.public_key.to_base64());
        assert_eq!(a["wiremesh.io/wg-endpoint"], "198.18.0.1:51871");
        assert_eq!(a["wiremesh.io/owner"], "owner-node-1");
        assert!(humantime::parse_rfc3339(&a["wiremesh.io/heartbeat"]).is_ok());
        assert!(!a.contains_key("wiremesh.io/wg-next-pub-key"));
        let node = server.node("node-1").unwrap();
        assert_eq!(
            node.metadata.labels.unwrap()["kubernetes.io/hostname"],
            "node-1",
            "kubelet's labels are kept"
        );
    })
    .await;
}

#[tokio::test]
async fn nodes_added_changed_and_deleted_directly_show_within_2s_and_410_relists() {
    bounded(async {
        let server = FakeApiServer::start().await;
        let s1 = joined(&server, &rec("node-1", 1), 1).await;
        let mut rx = s1.subscribe();
        let r3 = rec("node-3", 3);
        let mut n3 = kubelet_node("node-3", 3);
        n3.metadata.annotations = Some(
            [
                ("wiremesh.io/wg-pub-key".into(), r3.public_key.to_base64()),
                ("wiremesh.io/wg-endpoint".into(), r3.endpoint.to_string()),
            ]
            .into(),
        );
        server.create_node(n3);
        let e3 = seen(&r3, 3);
        wait_for(&mut rx, Duration::from_secs(2), "node-3 added", |s| {
            s.nodes.get("node-3") == Some(&e3)
        })
        .await;

        let endpoint =
            json!({"metadata": {"annotations": {"wiremesh.io/wg-endpoint": "198.18.0.33:51871"}}});
        server.patch_node("node-3", endpoint);
        wait_for(&mut rx, Duration::from_secs(2), "node-3's endpoint", |s| {
            s.nodes.get("node-3").map(|r| r.endpoint.to_string())
                == Some("198.18.0.33:51871".into())
        })
        .await;

        // The history is compacted past this store's resourceVersion: its next watch gets 410
        // Gone and must relist to learn the change.
        let endpoint =
            json!({"metadata": {"annotations": {"wiremesh.io/wg-endpoint": "198.18.0.34:51871"}}});
        server.patch_node_compacting("node-3", endpoint);
        wait_for(
            &mut rx,
            Duration::from_secs(5),
            "change behind a 410",
            |s| {
                s.nodes.get("node-3").map(|r| r.endpoint.to_string())
                    == Some("198.18.0.34:51871".into())
            },
        )
        .await;

        server.delete_node("node-3");
        let snap = wait_for(&mut rx, Duration::from_secs(2), "node-3 deleted", |s| {
            !s.nodes.contains_key("node-3")
        })
        .await;
        assert!(snap.nodes.contains_key("node-1"));
    })
    .await;
}

#[tokio::test]
async fn a_key_rotation_is_seen_by_peers_in_both_steps() {
    bounded(async {
        let server = FakeApiServer::start().await;
        let mut r1 = rec("node-1", 1);
        r1.key_epoch = 1;
        r1.key_created = Some("2026-01-01T00:00:00Z".into());
        let s1 = joined(&server, &r1, 1).await;
        let _s2 = joined(&server, &rec("node-2", 2), 2).await;
        let mut rx = _s2.subscribe();

        let next = PrivateKey::generate().public_key();
        let staged = NodeRecord {
            next_public_key: Some(next),
            ..r1.clone()
        };
        s1.publish(&staged).await.unwrap();
        let e = seen(&staged, 1);
        wait_for(&mut rx, Duration::from_secs(2), "successor key", |s| {
            s.nodes.get("node-1") == Some(&e)
        })
        .await;

        let committed = NodeRecord {
            public_key: next,
            next_public_key: None,
            key_epoch: 2,
            key_created: Some("2026-02-01T00:00:00Z".into()),
            ..r1.clone()
        };
        s1.publish(&committed).await.unwrap();
        let e = seen(&committed, 1);
        wait_for(&mut rx, Duration::from_secs(2), "committed key", |s| {
            s.nodes.get("node-1") == Some(&e)
        })
        .await;
        let a = annotations(&server, "node-1");
        assert_eq!(a["wiremesh.io/wg-key-epoch"], "2");
        assert!(!a.contains_key("wiremesh.io/wg-next-pub-key"), "{a:?}");
    })
    .await;
}

#[tokio::test]
async fn conflicts_are_retried_and_other_writers_changes_kept() {
    bounded(async {
        let server = FakeApiServer::start().await;
        let r1 = rec("node-1", 1);
        let s1 = joined(&server, &r1, 1).await;
        // kubelet (or anyone) changes the Node: the store's resourceVersion is now stale.
        server.patch_node(
            "node-1",
            json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "z1"},
                                "annotations": {"example.com/other": "kept"}}}),
        );
        server.fail_next_patches(2);
        let before = server.patches();
        let mut r1b = r1.clone();
        r1b.endpoint = "198.18.0.11:51871".parse().unwrap();
        s1.publish(&r1b).await.unwrap();
        assert!(
            server.patches() >= before + 3,
            "two forced 409s, then success"
        );
        let node = server.node("node-1").unwrap();
        let a = node.metadata.annotations.unwrap();
        assert_eq!(a["wiremesh.io/wg-endpoint"], "198.18.0.11:51871");
        assert_eq!(a["example.com/other"], "kept");
        assert_eq!(
            node.metadata.labels.unwrap()["topology.kubernetes.io/zone"],
            "z1"
        );
        let e = seen(&r1b, 1);
        wait_for(&mut s1.subscribe(), Duration::from_secs(2), "own", |s| {
            s.nodes.get("node-1") == Some(&e)
        })
        .await;
    })
    .await;
}

/// The etcd store once lost a restarted agent's record while the agent re-claimed its name
/// before publishing (the claim moved to a new lease and the old one, still holding the record,
/// was revoked). Here the claim is the owner and heartbeat annotations, patched by merge, so the
/// record annotations stay: checked all the same, since peers that see the record leave drop
/// the peer with its routes and sessions.
#[tokio::test]
async fn a_restarted_agents_record_never_leaves_while_it_reclaims_its_name() {
    bounded(async {
        let server = FakeApiServer::start().await;
        let (r1, r2) = (rec("node-1", 1), rec("node-2", 2));
        let s1 = joined(&server, &r1, 1).await;
        let s2 = joined(&server, &r2, 2).await;
        let mut rx = s1.subscribe();
        let has = |s: &Snapshot| s.nodes.get("node-2") == Some(&seen(&r2, 2));
        wait_for(&mut rx, Duration::from_secs(5), "node-2", has).await;
        let absent = count_absences(s1.subscribe(), "node-2");
        s2.abandon();
        for round in 1..=3 {
            let s = store(&server, "node-2", "owner-node-2");
            let claimed = s.claim(Duration::from_secs(5)).await.unwrap();
            assert_eq!(claimed, ClaimOutcome::Claimed, "restart {round}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            s.publish(&r2).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            s.abandon();
        }
        assert_eq!(
            absent.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "node-1 saw node-2's record leave while node-2's agent restarted"
        );
        assert_eq!(rx.borrow().nodes.get("node-2"), Some(&seen(&r2, 2)));
    })
    .await;
}

#[tokio::test]
async fn a_live_owner_keeps_the_name_and_a_dead_ones_claim_lapses_after_the_ttl() {
    bounded(async {
        let server = FakeApiServer::start().await;
        server.create_node(kubelet_node("node-5", 5));
        let ttl = 1500;
        let start = |owner: &str| {
            let cfg = config(&server, 200, ttl);
            KubeStore::start(
                cfg,
                "lab",
                "node-5",
                owner,
                Snapshot::default(),
                Admission::default(),
            )
            .unwrap()
        };
        let first = rec("node-5", 5);
        let a = start("agent-a");
        assert_eq!(
            a.claim(Duration::from_secs(5)).await.unwrap(),
            ClaimOutcome::Claimed
        );
        a.publish(&first).await.unwrap();

        let b = start("agent-b");
        let err = b.claim(Duration::from_secs(5)).await.unwrap_err();
        let StoreError::NodeNameTaken { node, owner } = &err else {
            panic!("expected NodeNameTaken, got {err}");
        };
        assert_eq!((node.as_str(), owner.as_str()), ("node-5", "agent-a"));
        assert!(matches!(
            b.publish(&rec("node-5", 6)).await,
            Err(StoreError::NodeNameTaken { .. })
        ));
        // a keeps heartbeating: well past the TTL, b still has not taken over.
        tokio::time::sleep(Duration::from_millis(2 * ttl)).await;
        assert!(matches!(*b.health().borrow(), StoreHealth::Conflict { .. }));
        let ann = annotations(&server, "node-5");
        assert_eq!(ann["wiremesh.io/owner"], "agent-a");
        assert_eq!(ann["wiremesh.io/wg-pub-key"], first.public_key.to_base64());

        let killed = Instant::now();
        a.abandon();
        wait_health(b.health(), Duration::from_millis(ttl + 3000), |h| {
            *h == StoreHealth::Connected
        })
        .await;
        assert!(
            killed.elapsed() >= Duration::from_millis(ttl - 1000),
            "{killed:?}"
        );
        assert_eq!(
            b.claim(Duration::from_secs(1)).await.unwrap(),
            ClaimOutcome::Claimed
        );
        let second = rec("node-5", 5);
        b.publish(&second).await.unwrap();
        assert_eq!(
            annotations(&server, "node-5")["wiremesh.io/owner"],
            "agent-b"
        );

        // A graceful close releases the name at once.
        b.close().await;
        assert!(!annotations(&server, "node-5").contains_key("wiremesh.io/owner"));
        let c = start("agent-c");
        assert_eq!(
            c.claim(Duration::from_secs(2)).await.unwrap(),
            ClaimOutcome::Claimed
        );
    })
    .await;
}

#[tokio::test]
async fn an_outage_keeps_the_last_peers_and_changes_show_within_5s_after_it() {
    bounded(async {
        let mut server = FakeApiServer::start().await;
        let (r1, r2) = (rec("node-1", 1), rec("node-2", 2));
        let s1 = joined(&server, &r1, 1).await;
        let s2 = joined(&server, &r2, 2).await;
        let mut rx = s1.subscribe();
        wait_for(&mut rx, Duration::from_secs(5), "both", |s| {
            s.nodes.len() == 2
        })
        .await;

        server.stop();
        let healths = [s1.health(), s2.health()];
        outage_keeps_the_last_snapshot(healths, Duration::from_secs(10), &rx, 2).await;
        let mut r2b = r2.clone();
        r2b.endpoint = "198.18.0.22:51871".parse().unwrap();
        let err = s2.publish(&r2b).await.unwrap_err();
        assert!(matches!(err, StoreError::KubeUnavailable { .. }), "{err}");
        assert!(err.to_string().contains(&server.url()), "{err}");
        // Changed behind the stores' backs while they cannot watch.
        let r9 = rec("node-9", 9);
        let mut n9 = kubelet_node("node-9", 9);
        n9.metadata.annotations = Some(
            [
                ("wiremesh.io/wg-pub-key".into(), r9.public_key.to_base64()),
                ("wiremesh.io/wg-endpoint".into(), r9.endpoint.to_string()),
            ]
            .into(),
        );
        server.create_node(n9);

        server.restart().await;
        let back = Instant::now();
        let (e9, e2b) = (seen(&r9, 9), seen(&r2b, 2));
        wait_for(
            &mut rx,
            Duration::from_secs(5),
            "node-9 and node-2's new endpoint",
            |s| s.nodes.get("node-9") == Some(&e9) && s.nodes.get("node-2") == Some(&e2b),
        )
        .await;
        assert!(back.elapsed() < Duration::from_secs(5));
        wait_health(s1.health(), Duration::from_secs(5), |h| {
            *h == StoreHealth::Connected
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn invalid_annotations_are_refused_and_others_kept() {
    bounded(async {
        let server = FakeApiServer::start().await;
        let s1 = joined(&server, &rec("node-1", 1), 1).await;
        let mut rx = s1.subscribe();
        let zero = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        for (name, n, key) in [("node-6", 6, "not base64!"), ("node-7", 7, zero)] {
            let mut node = kubelet_node(name, n);
            node.metadata.annotations = Some(
                [
                    ("wiremesh.io/wg-pub-key".into(), key.into()),
                    (
                        "wiremesh.io/wg-endpoint".into(),
                        format!("198.18.0.{n}:51871"),
                    ),
                ]
                .into(),
            );
            server.create_node(node);
        }
        // Same pod CIDRs and InternalIP as node-1, created later: only node-8 is refused.
        let r8 = rec("node-8", 8);
        let mut n8 = kubelet_node("node-8", 1);
        n8.metadata.annotations = Some(
            [
                ("wiremesh.io/wg-pub-key".into(), r8.public_key.to_base64()),
                ("wiremesh.io/wg-endpoint".into(), r8.endpoint.to_string()),
            ]
            .into(),
        );
        server.create_node(n8);
        let r9 = rec("node-9", 9);
        let s9 = joined(&server, &r9, 9).await;
        let snap = wait_for(&mut rx, Duration::from_secs(5), "node-9", |s| {
            s.nodes.contains_key("node-9")
        })
        .await;
        assert_eq!(
            snap.nodes.keys().collect::<Vec<_>>(),
            ["node-1", "node-9"],
            "{snap:?}"
        );
        server.delete_node("node-8");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(s1.subscribe().borrow().nodes.len(), 2);
        drop(s9);
    })
    .await;
}

#[tokio::test]
async fn start_does_not_wait_for_the_api_server_nor_for_kubelet() {
    bounded(async {
        let mut server = FakeApiServer::start().await;
        server.stop();
        let persisted = Snapshot {
            nodes: [("node-8".to_string(), seen(&rec("node-8", 8), 8))]
                .into_iter()
                .collect(),
        };
        let started = Instant::now();
        let cfg = config(&server, 300, 3000);
        let s1 = KubeStore::start(
            cfg,
            "lab",
            "node-1",
            "o-1",
            persisted.clone(),
            Admission::default(),
        )
        .unwrap();
        let outcome = s1.claim(Duration::from_millis(500)).await.unwrap();
        assert!(
            matches!(outcome, ClaimOutcome::Unreachable { .. }),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(**s1.subscribe().borrow(), persisted);

        // Up, but kubelet has not registered the Node yet.
        server.restart().await;
        let outcome = s1.claim(Duration::from_millis(1500)).await.unwrap();
        let ClaimOutcome::Unreachable { error } = outcome else {
            panic!("claimed a Node that does not exist: {outcome:?}");
        };
        assert!(error.contains("kubelet"), "{error}");

        server.create_node(kubelet_node("node-1", 1));
        assert_eq!(
            s1.claim(Duration::from_secs(5)).await.unwrap(),
            ClaimOutcome::Claimed
        );
        let r1 = rec("node-1", 1);
        s1.publish(&r1).await.unwrap();
        let e1 = seen(&r1, 1);
        wait_for(
            &mut s1.subscribe(),
            Duration::from_secs(2),
            "own only",
            |s| s.nodes.len() == 1 && s.nodes.get("node-1") == Some(&e1),
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_bearer_token_file_authenticates_and_kubeconfig_is_inferred_from_the_env() {
    bounded(async {
        let server = FakeApiServer::start_with_token("s3cret-token").await;
        server.create_node(kubelet_node("node-1", 1));
        server.create_node(kubelet_node("node-2", 2));
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("token");
        std::fs::write(&good, "s3cret-token").unwrap();
        let bad = dir.path().join("bad-token");
        std::fs::write(&bad, "wrong").unwrap();

        // The service-account path: a token read from a file (kube::Config::incluster() reads
        // /var/run/secrets/kubernetes.io/serviceaccount/token the same way, over HTTPS only).
        // No other test reads $KUBECONFIG: they all name their kubeconfig.
        std::env::set_var("KUBECONFIG", server.kubeconfig(Some(&good)));
        let cfg = KubeConfig {
            kubeconfig: None,
            ..config(&server, 300, 3000)
        };
        let s1 = KubeStore::start(
            cfg,
            "lab",
            "node-1",
            "o-1",
            Snapshot::default(),
            Admission::default(),
        )
        .unwrap();
        assert_eq!(
            s1.claim(Duration::from_secs(5)).await.unwrap(),
            ClaimOutcome::Claimed
        );
        s1.publish(&rec("node-1", 1)).await.unwrap();

        let cfg = KubeConfig {
            kubeconfig: Some(server.kubeconfig(Some(&bad))),
            ..config(&server, 300, 3000)
        };
        let s2 = KubeStore::start(
            cfg,
            "lab",
            "node-2",
            "o-2",
            Snapshot::default(),
            Admission::default(),
        )
        .unwrap();
        let outcome = s2.claim(Duration::from_millis(1500)).await.unwrap();
        let ClaimOutcome::Unreachable { error } = outcome else {
            panic!("a wrong token was accepted: {outcome:?}");
        };
        assert!(
            error.contains("401") || error.contains("Unauthorized"),
            "{error}"
        );
    })
    .await;
}
