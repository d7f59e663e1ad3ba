//! The etcd store against a real etcd server (one per test, on its own ports).
#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod common;
mod etcd_server;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{bounded_by, count_absences, outage_keeps_the_last_snapshot, wait_for, wait_health};
use etcd_client::PutOptions;
use etcd_server::EtcdServer;
use keymgr::store::{
    ClaimOutcome, EtcdConfig, EtcdStore, EtcdTls, Snapshot, StoreError, StoreHealth,
};
use keymgr::{Admission, NodeRecord, PrivateKey};

const NODES: &str = "/wiremesh/v1/lab/nodes/";

fn rec(name: &str, n: u8) -> NodeRecord {
    let key = PrivateKey::generate().public_key();
    NodeRecord {
        cluster_name: "lab".into(),
        pod_cidrs: vec![format!("10.244.{n}.0/24").parse().unwrap()],
        node_ips: vec![format!("198.18.0.{n}").parse().unwrap()],
        ..NodeRecord::new(name, key, format!("198.18.0.{n}:51871").parse().unwrap())
    }
}

fn config(url: String, lease_ttl: Duration) -> EtcdConfig {
    EtcdConfig {
        endpoints: vec![url],
        lease_ttl,
        ..EtcdConfig::default()
    }
}

fn store(url: String, node: &str, owner: &str, ttl_secs: u64) -> EtcdStore {
    let cfg = config(url, Duration::from_secs(ttl_secs));
    EtcdStore::start(
        cfg,
        "lab",
        node,
        owner,
        Snapshot::default(),
        Admission::default(),
    )
    .unwrap()
}

/// A store that has claimed its name and published `record`.
async fn joined(server: &EtcdServer, record: &NodeRecord, ttl_secs: u64) -> EtcdStore {
    let name = &record.node_name;
    let s = store(server.url(), name, &format!("owner-{name}"), ttl_secs);
    assert_eq!(
        s.claim(Duration::from_secs(5)).await.unwrap(),
        ClaimOutcome::Claimed
    );
    s.publish(record).await.unwrap();
    s
}

/// Every test is bounded in time, whatever goes wrong inside.
async fn bounded(test: impl Future<Output = ()>) {
    bounded_by(Duration::from_secs(90), test).await;
}

#[tokio::test]
async fn stores_converge_and_a_late_node_shows_up_within_2s() {
    bounded(async {
        let server = EtcdServer::start().await;
        let (r1, r2, r3) = (rec("node-1", 1), rec("node-2", 2), rec("node-3", 3));
        let s1 = joined(&server, &r1, 30).await;
        let s2 = joined(&server, &r2, 30).await;
        for s in [&s1, &s2] {
            let both = |snap: &Snapshot| {
                snap.nodes.get("node-1") == Some(&r1) && snap.nodes.get("node-2") == Some(&r2)
            };
            wait_for(&mut s.subscribe(), Duration::from_secs(5), "both", both).await;
        }
        assert_eq!(
            s1.describe(),
            format!("etcd:{}/wiremesh/v1/lab/nodes", server.url())
        );

        let s3 = joined(&server, &r3, 30).await;
        for s in [&s1, &s2, &s3] {
            let three = |snap: &Snapshot| snap.nodes.get("node-3") == Some(&r3);
            let snap = wait_for(&mut s.subscribe(), Duration::from_secs(2), "node-3", three).await;
            assert_eq!(snap.nodes.len(), 3);
        }
    })
    .await;
}

#[tokio::test]
async fn a_killed_agents_record_expires_with_its_lease_and_close_removes_at_once() {
    bounded(async {
        let server = EtcdServer::start().await;
        let s1 = joined(&server, &rec("node-1", 1), 30).await;
        let s2 = joined(&server, &rec("node-2", 2), 30).await;
        let s3 = joined(&server, &rec("node-3", 3), 2).await;
        let mut rx = s1.subscribe();
        wait_for(&mut rx, Duration::from_secs(5), "3 nodes", |s| {
            s.nodes.len() == 3
        })
        .await;

        let killed = Instant::now();
        s3.abandon();
        let gone = |s: &Snapshot| !s.nodes.contains_key("node-3");
        wait_for(&mut rx, Duration::from_secs(2 + 3), "node-3 expired", gone).await;
        // Not revoked: the record outlived the agent until the lease ran out.
        assert!(killed.elapsed() >= Duration::from_secs(1), "{killed:?}");

        let closed = Instant::now();
        s2.close().await;
        let gone = |s: &Snapshot| !s.nodes.contains_key("node-2");
        wait_for(&mut rx, Duration::from_secs(2), "node-2 removed", gone).await;
        assert!(closed.elapsed() < Duration::from_secs(30));
        assert!(rx.borrow().nodes.contains_key("node-1"));
    })
    .await;
}

/// An agent killed and started again within its lease TTL claims its name before it has a
/// record to publish (its data path comes up in between). Its peers must keep seeing its record
/// all along: a record that leaves and comes back makes them drop the peer, its routes and its
/// sessions (one ping lost per restart in the lab).
#[tokio::test]
async fn a_restarted_agents_record_never_leaves_while_it_reclaims_its_name() {
    bounded(async {
        let server = EtcdServer::start().await;
        let (r1, r2) = (rec("node-1", 1), rec("node-2", 2));
        let s1 = joined(&server, &r1, 30).await;
        let s2 = joined(&server, &r2, 30).await;
        let mut rx = s1.subscribe();
        let has = |s: &Snapshot| s.nodes.get("node-2") == Some(&r2);
        wait_for(&mut rx, Duration::from_secs(5), "node-2", has).await;
        let absent = count_absences(s1.subscribe(), "node-2");
        for round in 1..=3 {
            s2_restart(&server, &r2, round).await;
        }
        drop(s2);
        assert_eq!(
            absent.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "node-1 saw node-2's record leave while node-2's agent restarted"
        );
        assert_eq!(rx.borrow().nodes.get("node-2"), Some(&r2));
    })
    .await;
}

/// Kills node-2's agent (`abandon`: its lease stays), starts another with the same owner id,
/// claims, waits as long as a data path start may take, then publishes the same record.
async fn s2_restart(server: &EtcdServer, r2: &NodeRecord, round: u32) {
    let s = store(server.url(), "node-2", "owner-node-2", 30);
    let claimed = s.claim(Duration::from_secs(5)).await.unwrap();
    assert_eq!(claimed, ClaimOutcome::Claimed, "restart {round}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.publish(r2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.abandon();
}

#[tokio::test]
async fn a_node_name_held_by_another_owner_is_refused_and_the_same_owner_takes_over() {
    bounded(async {
        let server = EtcdServer::start().await;
        let mut etcd = server.client().await;
        let owner_key = "/wiremesh/v1/lab/owners/node-5";
        let first = rec("node-5", 5);
        let a = store(server.url(), "node-5", "agent-a", 30);
        assert_eq!(
            a.claim(Duration::from_secs(5)).await.unwrap(),
            ClaimOutcome::Claimed
        );
        a.publish(&first).await.unwrap();

        let b = store(server.url(), "node-5", "agent-b", 30);
        let err = b.claim(Duration::from_secs(5)).await.unwrap_err();
        let StoreError::NodeNameTaken { node, owner } = &err else {
            panic!("expected NodeNameTaken, got {err}");
        };
        assert_eq!((node.as_str(), owner.as_str()), ("node-5", "agent-a"));
        assert!(err.to_string().contains("lease TTL"), "{err}");
        assert!(matches!(
            b.publish(&rec("node-5", 6)).await,
            Err(StoreError::NodeNameTaken { .. })
        ));
        drop(b);
        let kv = etcd.get(format!("{NODES}node-5"), None).await.unwrap();
        let stored: NodeRecord = serde_json::from_slice(kv.kvs()[0].value()).unwrap();
        assert_eq!(
            stored, first,
            "another owner's record must not be overwritten"
        );

        // kill -9 of agent-a, restarted at once: long before its 30 s lease expires.
        let old_lease = etcd.get(owner_key, None).await.unwrap().kvs()[0].lease();
        a.abandon();
        let a2 = store(server.url(), "node-5", "agent-a", 30);
        assert_eq!(
            a2.claim(Duration::from_secs(5)).await.unwrap(),
            ClaimOutcome::Claimed
        );
        let mut second = first.clone();
        second.endpoint = "198.18.0.55:51871".parse().unwrap();
        a2.publish(&second).await.unwrap();
        let mut rx = a2.subscribe();
        wait_for(&mut rx, Duration::from_secs(2), "new endpoint", |s| {
            s.nodes.get("node-5") == Some(&second)
        })
        .await;
        let owner = etcd.get(owner_key, None).await.unwrap().kvs()[0].clone();
        let record = etcd
            .get(format!("{NODES}node-5"), None)
            .await
            .unwrap()
            .kvs()[0]
            .clone();
        assert_eq!(owner.value(), b"agent-a");
        assert_ne!(owner.lease(), old_lease);
        assert_eq!(record.lease(), owner.lease(), "both keys on the new lease");
        let old = etcd.lease_time_to_live(old_lease, None).await;
        assert!(old.map_or(true, |r| r.ttl() <= 0), "old lease not revoked");

        // A record for another node name is refused before it reaches etcd.
        let err = a2.publish(&rec("node-6", 6)).await.unwrap_err();
        assert!(err.to_string().contains("node-6"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn losing_the_name_later_is_reported_as_a_conflict() {
    bounded(async {
        let server = EtcdServer::start().await;
        let mut etcd = server.client().await;
        let owner_key = "/wiremesh/v1/lab/owners/node-1";
        let s1 = joined(&server, &rec("node-1", 1), 30).await;
        // The lease expires (as during a long partition) and another agent takes the name.
        let lease = etcd.get(owner_key, None).await.unwrap().kvs()[0].lease();
        etcd.lease_revoke(lease).await.unwrap();
        etcd.put(owner_key, "intruder", None).await.unwrap();
        let conflict =
            |h: &StoreHealth| matches!(h, StoreHealth::Conflict { owner } if owner == "intruder");
        wait_health(s1.health(), Duration::from_secs(15), conflict).await;
        let kv = etcd.get(format!("{NODES}node-1"), None).await.unwrap();
        assert!(
            kv.kvs().is_empty(),
            "the record must not be re-put under another owner"
        );
    })
    .await;
}

#[tokio::test]
async fn an_outage_keeps_the_last_peers_and_changes_show_within_5s_after_it() {
    bounded(async {
        let mut server = EtcdServer::start().await;
        let (r1, r2) = (rec("node-1", 1), rec("node-2", 2));
        let s1 = joined(&server, &r1, 30).await;
        let s2 = joined(&server, &r2, 30).await;
        let mut rx = s1.subscribe();
        wait_for(&mut rx, Duration::from_secs(5), "both", |s| {
            s.nodes.len() == 2
        })
        .await;

        server.kill();
        let healths = [s1.health(), s2.health()];
        outage_keeps_the_last_snapshot(healths, Duration::from_secs(15), &rx, 2).await;
        let mut r2b = r2.clone();
        r2b.endpoint = "198.18.0.22:51871".parse().unwrap();
        let err = s2.publish(&r2b).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains(&server.url()), "{err}");

        server.run().await;
        let back = Instant::now();
        // Written by another client while the stores' watchers are still disconnected.
        let r9 = rec("node-9", 9);
        let mut etcd = server.client().await;
        let json = serde_json::to_vec(&r9).unwrap();
        etcd.put(format!("{NODES}node-9"), json, None)
            .await
            .unwrap();
        wait_for(
            &mut rx,
            Duration::from_secs(5),
            "node-9 and node-2's new endpoint",
            |s| s.nodes.get("node-9") == Some(&r9) && s.nodes.get("node-2") == Some(&r2b),
        )
        .await;
        assert!(back.elapsed() < Duration::from_secs(5));
        wait_health(s2.health(), Duration::from_secs(5), |h| {
            *h == StoreHealth::Connected
        })
        .await;

        let mut r2c = r2.clone();
        r2c.endpoint = "198.18.0.23:51871".parse().unwrap();
        s2.publish(&r2c).await.unwrap();
        wait_for(&mut rx, Duration::from_secs(5), "node-2's endpoint", |s| {
            s.nodes.get("node-2") == Some(&r2c)
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_frozen_server_is_detected_and_recovered_from() {
    bounded(async {
        let server = EtcdServer::start().await;
        let (r1, r2) = (rec("node-1", 1), rec("node-2", 2));
        let s1 = joined(&server, &r1, 3).await;
        let _s2 = joined(&server, &r2, 3).await;
        let mut rx = s1.subscribe();
        wait_for(&mut rx, Duration::from_secs(5), "both", |s| {
            s.nodes.len() == 2
        })
        .await;

        server.signal("-STOP");
        let down = |h: &StoreHealth| matches!(h, StoreHealth::Unreachable { .. });
        wait_health(s1.health(), Duration::from_secs(10), down).await;
        assert_eq!(rx.borrow().nodes.len(), 2, "the last snapshot must be kept");
        server.signal("-CONT");
        wait_health(s1.health(), Duration::from_secs(10), |h| {
            *h == StoreHealth::Connected
        })
        .await;
        // Whatever etcd did with the old leases while frozen, both records are back.
        wait_for(&mut rx, Duration::from_secs(10), "both again", |s| {
            s.nodes.get("node-1") == Some(&r1) && s.nodes.get("node-2") == Some(&r2)
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn start_does_not_wait_for_etcd_and_claims_once_it_is_up() {
    bounded(async {
        let mut server = EtcdServer::reserve();
        let persisted = Snapshot {
            nodes: [("node-8".to_string(), rec("node-8", 8))]
                .into_iter()
                .collect(),
        };
        let started = Instant::now();
        let cfg = config(server.url(), Duration::from_secs(30));
        let s1 = EtcdStore::start(
            cfg,
            "lab",
            "node-1",
            "owner-1",
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
        let r1 = rec("node-1", 1);
        assert!(matches!(
            s1.publish(&r1).await,
            Err(StoreError::Unavailable { .. })
        ));

        server.run().await;
        let mut rx = s1.subscribe();
        wait_for(&mut rx, Duration::from_secs(5), "own record only", |s| {
            s.nodes.len() == 1 && s.nodes.get("node-1") == Some(&r1)
        })
        .await;
        assert_eq!(
            s1.claim(Duration::from_secs(1)).await.unwrap(),
            ClaimOutcome::Claimed
        );
    })
    .await;
}

#[tokio::test]
async fn tls_with_a_client_certificate_connects_and_without_one_does_not() {
    bounded(async {
        let server = EtcdServer::start_tls().await;
        let mut cfg = config(server.url(), Duration::from_secs(30));
        cfg.tls = Some(server.tls_files());
        let s1 = EtcdStore::start(
            cfg.clone(),
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
        let r1 = rec("node-1", 1);
        s1.publish(&r1).await.unwrap();
        let own = |s: &Snapshot| s.nodes.get("node-1") == Some(&r1);
        wait_for(
            &mut s1.subscribe(),
            Duration::from_secs(2),
            "own record",
            own,
        )
        .await;

        let mut anonymous = cfg;
        anonymous.tls = Some(EtcdTls {
            cert: None,
            key: None,
            ..server.tls_files()
        });
        let s2 = EtcdStore::start(
            anonymous,
            "lab",
            "node-2",
            "o-2",
            Snapshot::default(),
            Admission::default(),
        )
        .unwrap();
        let outcome = s2.claim(Duration::from_millis(1500)).await.unwrap();
        assert!(
            matches!(outcome, ClaimOutcome::Unreachable { .. }),
            "{outcome:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn invalid_records_put_directly_are_refused_and_others_kept() {
    bounded(async {
        let server = EtcdServer::start().await;
        let mut etcd = server.client().await;
        let s1 = joined(&server, &rec("node-1", 1), 30).await;
        let r6 = rec("node-6", 6);
        etcd.put(
            format!("{NODES}node-6"),
            serde_json::to_vec(&r6).unwrap(),
            None,
        )
        .await
        .unwrap();
        let mut rx = s1.subscribe();
        wait_for(&mut rx, Duration::from_secs(5), "node-6", |s| {
            s.nodes.len() == 2
        })
        .await;

        let mut zero = serde_json::to_value(rec("node-7", 7)).unwrap();
        zero["publicKey"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
        let misnamed = serde_json::to_vec(&rec("node-3", 3)).unwrap();
        let puts: [(&str, Vec<u8>); 4] = [
            ("node-7", zero.to_string().into_bytes()),
            ("node-8", misnamed),
            ("node-6", b"{ not json".to_vec()),
            ("node-9", serde_json::to_vec(&rec("node-9", 9)).unwrap()),
        ];
        for (name, value) in puts {
            etcd.put(format!("{NODES}{name}"), value, Some(PutOptions::new()))
                .await
                .unwrap();
        }
        let snap = wait_for(&mut rx, Duration::from_secs(5), "node-9", |s| {
            s.nodes.contains_key("node-9")
        })
        .await;
        let names: Vec<&String> = snap.nodes.keys().collect();
        assert_eq!(
            names,
            ["node-1", "node-9"],
            "bad records must be dropped, good ones kept"
        );
    })
    .await;
}

/// Another cluster's store, as the cluster mesh reads it: records show up, an outage keeps the
/// last ones and heals by itself, and the follower never writes a key (no lease, no claim).
#[tokio::test]
async fn a_remote_follower_reads_another_clusters_records_and_never_writes() {
    bounded(async {
        let mut server = EtcdServer::start().await;
        let r1 = rec("node-1", 1);
        let s1 = joined(&server, &r1, 30).await;
        let admission = Admission {
            cluster_pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            local_addresses: vec![],
        };
        let follower = keymgr::store::RemoteStore::etcd(
            config(server.url(), Duration::from_secs(30)),
            "lab",
            Snapshot::default(),
            admission,
        )
        .unwrap();
        let mut rx = follower.subscribe();
        wait_for(&mut rx, Duration::from_secs(5), "node-1", |s| {
            s.nodes.get("node-1") == Some(&r1)
        })
        .await;
        assert_eq!(
            follower.describe(),
            format!("etcd:{}/wiremesh/v1/lab/nodes", server.url())
        );
        // A record outside the admitted pool is refused, as for a local store.
        let mut outside = rec("node-7", 7);
        outside.pod_cidrs = vec!["10.99.0.0/24".parse().unwrap()];
        let mut etcd = server.client().await;
        let put = |r: &NodeRecord| {
            (
                format!("{NODES}{}", r.node_name),
                serde_json::to_vec(r).unwrap(),
            )
        };
        let (k, v) = put(&outside);
        etcd.put(k, v, None).await.unwrap();
        let r2 = rec("node-2", 2);
        let (k, v) = put(&r2);
        etcd.put(k, v, None).await.unwrap();
        let snap = wait_for(&mut rx, Duration::from_secs(5), "node-2", |s| {
            s.nodes.contains_key("node-2")
        })
        .await;
        assert!(!snap.nodes.contains_key("node-7"), "{snap:?}");

        server.kill();
        let down = |h: &StoreHealth| matches!(h, StoreHealth::Unreachable { .. });
        wait_health(follower.health(), Duration::from_secs(15), down).await;
        assert_eq!(rx.borrow().nodes.len(), 2, "the last snapshot must be kept");
        server.run().await;
        wait_health(follower.health(), Duration::from_secs(10), |h| {
            *h == StoreHealth::Connected
        })
        .await;

        // Every key in etcd was written by the test or by node-1's own store: the follower
        // holds no lease and wrote nothing.
        wait_health(s1.health(), Duration::from_secs(10), |h| {
            *h == StoreHealth::Connected
        })
        .await;
        let mut etcd = server.client().await;
        let all = etcd
            .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        let keys: Vec<String> = all
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        let expected = [
            "/wiremesh/v1/lab/nodes/node-1",
            "/wiremesh/v1/lab/nodes/node-2",
            "/wiremesh/v1/lab/nodes/node-7",
            "/wiremesh/v1/lab/owners/node-1",
        ];
        assert_eq!(keys, expected);
        let leases = etcd.leases().await.unwrap();
        assert_eq!(leases.leases().len(), 1, "only node-1's own lease");
        drop(s1);
    })
    .await;
}
