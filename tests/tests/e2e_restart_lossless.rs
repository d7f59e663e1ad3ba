//! The agent is only the control plane: killing it with SIGKILL and starting it again a second
//! later, four times, alternating the receiving node (node-2) and the sending node (node-1),
//! while a pod pings across the tunnel at 100 packets/s, loses no packet (the separate data path
//! keeps every session) and keeps each node's key. Once on the dir store and once on etcd (where
//! the restarted agent re-claims its name and re-binds its record to a new lease), one after the
//! other so the two runs never compete for the CPU. A loss names each lost `icmp_seq` and where
//! it fell relative to the kills and restarts.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wiremesh_lab::{Host, Lab, LabOptions};

const TRAFFIC_SECS: u32 = 60;
/// Receiving node, sending node, receiving, sending.
const KILLED: [u8; 4] = [2, 1, 2, 1];
/// How long each agent stays dead, as in the independent lab that found the loss.
const DOWN: Duration = Duration::from_secs(1);
/// Traffic after each restart before the next kill, so that a late effect of one restart (a
/// store event, a resync) falls before the next kill.
const SETTLE: Duration = Duration::from_secs(5);

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn agent_kills_lose_no_packet_on_dir() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    kills_under_ping(LabOptions::default());
}

#[test]
fn agent_kills_lose_no_packet_on_etcd() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    kills_under_ping(LabOptions::etcd(common::LEASE_TTL));
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What each node is before the kills: its key, key epoch and data path process.
struct Before {
    key: String,
    epoch: u64,
    datapath: u32,
}

fn before(lab: &Lab, node: u8) -> Before {
    let (key, epoch) = common::key_and_epoch(lab, node);
    let datapath = lab
        .node(node)
        .datapath()
        .pid()
        .unwrap_or_else(|| panic!("node-{node} runs a data path process"));
    Before {
        key,
        epoch,
        datapath,
    }
}

fn kills_under_ping(options: LabOptions) {
    common::require_agent();
    let store = if options.uses_etcd() { "etcd" } else { "dir" };
    let lab = common::lab_with(2, 1, options);
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    common::assert_ping(&lab, Host::Pod(2, 1), Host::Pod(1, 1));
    let nodes = [before(&lab, 1), before(&lab, 2)];

    let (ping, spec) = common::fast_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1), TRAFFIC_SECS);
    let start = Instant::now();
    let mut events = vec![(unix_now(), "the ping's start".to_string())];
    std::thread::sleep(Duration::from_secs(2));
    for (i, &node) in KILLED.iter().enumerate() {
        let round = i + 1;
        let role = if node == 2 { "receiving" } else { "sending" };
        let from = lab.node(node).agent().log_len();
        lab.node(node)
            .agent()
            .kill()
            .unwrap_or_else(|e| panic!("kill -9 node-{node}'s agent: {e}"));
        events.push((unix_now(), format!("kill {round} (node-{node}, {role})")));
        std::thread::sleep(DOWN);
        lab.node(node)
            .agent()
            .start()
            .unwrap_or_else(|e| panic!("restart node-{node}'s agent: {e}"));
        events.push((unix_now(), format!("restart {round} (node-{node})")));
        restarted(&lab, node, from, &nodes, round);
        events.push((unix_now(), format!("ready {round} (node-{node})")));
        std::thread::sleep(SETTLE);
    }
    let took = start.elapsed();
    assert!(
        took + Duration::from_secs(2) < Duration::from_secs(u64::from(TRAFFIC_SECS)),
        "the kills took {took:?}, longer than the {TRAFFIC_SECS} s of traffic"
    );
    let context = format!(
        "pod(1) -> pod(2) on the {store} store across {} agent kill -9 + restarts",
        KILLED.len()
    );
    let log = common::finish_ping(ping, &spec);
    let sent = log.summary.map_or(0, |s| s.sent);
    let losses = log.explain_losses(sent, &events);
    eprintln!(
        "{store}: {} of {sent} pings lost{}",
        losses.len(),
        losses
            .iter()
            .map(|l| format!("\n  {l}"))
            .collect::<String>()
    );
    assert!(
        losses.is_empty(),
        "{context}: {} of {sent} pings lost:\n  {}",
        losses.len(),
        losses.join("\n  ")
    );
    assert_eq!(sent, spec.count, "ping sent {sent} of {}", spec.count);
    for node in [1, 2] {
        let b = &nodes[usize::from(node) - 1];
        assert_eq!(
            common::key_and_epoch(&lab, node),
            (b.key.clone(), b.epoch),
            "node-{node}'s key or key epoch changed"
        );
    }
}

/// Waits until the restarted agent on `node` is ready and lists its peer by key, and checks it
/// kept its key and re-attached to the data path that was running.
fn restarted(lab: &Lab, node: u8, from: usize, nodes: &[Before; 2], round: usize) {
    let me = &nodes[usize::from(node) - 1];
    let other = &nodes[2 - usize::from(node)];
    let other_name = wiremesh_lab::node_name(3 - node);
    lab.node(node)
        .agent()
        .wait_log(from, "\"agent ready\"", common::READY, |l| {
            l.contains("agent ready")
        })
        .unwrap_or_else(|e| panic!("restart {round}: {e}"));
    let status = lab
        .node(node)
        .agent()
        .wait_status(
            "the restarted agent to name its peer with its key epoch",
            common::READY,
            |s| {
                wiremesh_lab::peer(s, &other_name).is_some_and(|p| {
                    p["publicKey"].as_str() == Some(other.key.as_str()) && p["keyEpoch"].is_u64()
                })
            },
        )
        .unwrap_or_else(|e| panic!("restart {round}: {e}"));
    assert_eq!(
        status["publicKey"].as_str(),
        Some(me.key.as_str()),
        "node-{node}'s key changed across restart {round}"
    );
    assert_eq!(
        lab.node(node).datapath().pid(),
        Some(me.datapath),
        "restart {round}: node-{node}'s agent did not re-attach to the running data path"
    );
}
