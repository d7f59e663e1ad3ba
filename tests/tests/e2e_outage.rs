//! An etcd outage of 60 s costs no packet: a 100 packets/s ping between two nodes loses nothing,
//! and the agents say the store is unreachable, since when. An agent restarted (with a fresh data
//! path) while etcd is down comes up on the peers it persisted and reaches them again. A record
//! written the moment etcd is back reaches the agents within 5 s: they resync.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use wiremesh_lab::{peer_names, unix_now, Host, Lab, LabOptions, CLUSTER_NAME};

const OUTAGE: Duration = Duration::from_secs(60);
const TRAFFIC_SECS: u32 = 80;
const RESYNC_LIMIT: Duration = Duration::from_secs(5);

/// An RFC 3339 time as Unix seconds (GNU `date` parses it).
fn unix_of(rfc3339: &str) -> f64 {
    let out = wiremesh_lab::run(
        Command::new("date").args(["-d", rfc3339, "+%s.%N"]),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("storeHealth.since {rfc3339:?} is not a time: {e}"));
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("date printed {out:?}"))
}

fn store_state(lab: &Lab, node: u8) -> serde_json::Value {
    lab.node(node)
        .agent()
        .status()
        .unwrap_or_else(|e| panic!("status of node-{node}: {e}"))["storeHealth"]
        .clone()
}

#[test]
fn etcd_outage_loses_no_packet_and_agents_resync() {
    common::require_agent();
    let lab = common::lab_with(3, 1, LabOptions::etcd(common::LEASE_TTL));
    common::start_some(&lab, &[1, 2, 3]);
    for (a, b) in [(1, 2), (1, 3), (2, 3), (2, 1), (3, 1)] {
        common::assert_ping(&lab, Host::Pod(a, 1), Host::Pod(b, 1));
    }
    assert_eq!(
        store_state(&lab, 1)["state"],
        "connected",
        "before the outage"
    );

    let (ping, spec) = common::fast_ping(&lab, Host::Pod(1, 1), Host::Pod(3, 1), TRAFFIC_SECS);
    std::thread::sleep(Duration::from_secs(2));
    let log_from = lab.node(1).agent().log_len();
    let outage_start = unix_now();
    let stopped = Instant::now();
    lab.etcd().stop().expect("stop etcd");

    let health = lab
        .node(1)
        .agent()
        .wait_status("storeHealth unreachable", common::LEASE_TTL * 3, |s| {
            s["storeHealth"]["state"] == "unreachable"
        })
        .unwrap_or_else(|e| panic!("{e}"))["storeHealth"]
        .clone();
    eprintln!(
        "node-1 storeHealth {:?} after etcd stopped: {health}",
        stopped.elapsed()
    );
    let since = health["since"]
        .as_str()
        .unwrap_or_else(|| panic!("storeHealth unreachable without `since`: {health}"));
    let since = unix_of(since);
    assert!(
        since >= outage_start - 1.0 && since <= unix_now(),
        "storeHealth.since is {:.1}s from the outage's start",
        since - outage_start
    );
    lab.node(1)
        .agent()
        .wait_log(log_from, "a WARN about etcd", Duration::from_secs(5), |l| {
            l.contains("WARN")
        })
        .unwrap_or_else(|e| panic!("no WARN on node-1 while etcd is down: {e}"));

    restart_node2_during_outage(&lab);

    let left = OUTAGE.saturating_sub(stopped.elapsed());
    std::thread::sleep(left);
    assert_eq!(
        store_state(&lab, 1)["state"],
        "unreachable",
        "node-1 at the end of the outage"
    );
    lab.etcd().start().expect("etcd starts again on its data");
    let back = Instant::now();
    let node9 = json!({
        "nodeName": "node-9", "clusterName": CLUSTER_NAME,
        "publicKey": common::fresh_public_key(),
        "endpoint": "198.18.0.9:51871", "podCIDRs": ["10.244.9.0/24"], "nodeIPs": ["198.18.0.9"],
        "keyEpoch": 1,
    });
    lab.store()
        .write_record(&node9)
        .expect("put node-9 the moment etcd is back");
    eprintln!("etcd back; node-9 written {:?} later", back.elapsed());
    lab.node(1)
        .agent()
        .wait_status(
            "node-9 listed after etcd's return",
            RESYNC_LIMIT.saturating_sub(back.elapsed()),
            |s| peer_names(s).iter().any(|n| n == "node-9"),
        )
        .unwrap_or_else(|e| {
            panic!("node-1 did not resync within {RESYNC_LIMIT:?} of etcd's return: {e}")
        });
    eprintln!(
        "node-1 lists node-9 {:?} after etcd came back",
        back.elapsed()
    );
    for node in [1, 2, 3] {
        lab.node(node)
            .agent()
            .wait_status(
                "storeHealth connected and 3 peers",
                Duration::from_secs(15),
                |s| s["storeHealth"]["state"] == "connected" && wiremesh_lab::peers(s).len() == 3,
            )
            .unwrap_or_else(|e| panic!("after etcd's return: {e}"));
    }

    common::assert_no_loss(ping, &spec, "pod(1) -> pod(3) across a 60 s etcd outage");
    lab.store().remove_record("node-9").expect("delete node-9");
    common::assert_ping(&lab, Host::Pod(2, 1), Host::Pod(3, 1));
}

/// SIGKILL node 2's agent and data path while etcd is down; the restarted agent must come up on
/// its persisted peers (with a WARN) and its pod reach the others again.
fn restart_node2_during_outage(lab: &Lab) {
    let peers_file = lab.node(2).dir().join("state").join("peers.json");
    assert!(peers_file.is_file(), "{} missing", peers_file.display());
    lab.node(2).agent().kill().expect("kill -9 node-2's agent");
    lab.node(2)
        .datapath()
        .stop(Signal::SIGKILL, Duration::from_secs(5))
        .expect("kill -9 node-2's data path");
    let from = lab.node(2).agent().log_len();
    let restarted = Instant::now();
    lab.node(2)
        .agent()
        .start()
        .expect("start node-2's agent while etcd is down");
    let status = lab
        .node(2)
        .agent()
        .wait_status(
            "the agent to answer status with etcd down",
            common::READY,
            |s| wiremesh_lab::peers(s).len() >= 2,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "node-2 restarted during the outage: status with peers {:?} after {:?}, store {}",
        peer_names(&status),
        restarted.elapsed(),
        status["storeHealth"]
    );
    let warn = lab
        .node(2)
        .agent()
        .wait_log(from, "a WARN about etcd", Duration::from_secs(10), |l| {
            l.contains("WARN") && l.contains("etcd")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("node-2: {warn}");
    for (a, b) in [(2, 1), (1, 2), (2, 3)] {
        let took = lab
            .host(Host::Pod(a, 1))
            .wait_reachable(Host::Pod(b, 1).ip(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("after node-2's restart during the outage: {e}"));
        eprintln!("pod({a}) -> pod({b}) answers {took:?} into the attempt");
    }
    assert!(
        lab.node(2).agent().check_running().is_ok(),
        "node-2's agent died during the outage"
    );
}
