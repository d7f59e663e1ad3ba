//! Key rotation is make-before-break: across ten consecutive `wiremesh keys rotate` (alternating
//! nodes) and one where both nodes rotate at once, a 100 packets/s ping loses nothing and a TCP
//! stream never stalls for more than 1 s; afterwards both keys are new, both epochs advanced by
//! the number of rotations, and each node sees the other's key in use as published. Once with the
//! dir store and once with etcd (announcements travel differently), one after the other so the
//! two runs never compete for the CPU.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use wiremesh_lab::{node_name, pod_ip, Host, KeyRotation, Lab, LabOptions};

/// How long the ping and the TCP stream run; the rotations must be over well before.
const TRAFFIC_SECS: u32 = 30;
const ROTATE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_STALL: Duration = Duration::from_secs(1);

/// Parses `Rotated: key epoch N, public key K`.
fn parse_rotated(out: &str) -> (u64, String) {
    let line = out
        .lines()
        .find(|l| l.starts_with("Rotated: key epoch "))
        .unwrap_or_else(|| panic!("`keys rotate` printed no `Rotated:` line: {out:?}"));
    let rest = line.trim_start_matches("Rotated: key epoch ");
    let (epoch, key) = rest
        .split_once(", public key ")
        .unwrap_or_else(|| panic!("unexpected `Rotated:` line: {line:?}"));
    let epoch = epoch
        .parse()
        .unwrap_or_else(|_| panic!("epoch in {line:?}"));
    (epoch, key.trim().to_owned())
}

fn rotate(lab: &Lab, node: u8) -> (u64, String, Duration) {
    let start = Instant::now();
    let out = lab
        .node(node)
        .agent()
        .rotate_keys(ROTATE_TIMEOUT)
        .unwrap_or_else(|e| panic!("`wiremesh keys rotate` on node-{node}: {e}"));
    let (epoch, key) = parse_rotated(&out);
    (epoch, key, start.elapsed())
}

/// Serialises the two runs: each is a 100 packets/s ping plus a 20 Mbit/s stream through the
/// userspace data path, and two at once on a small machine would measure the machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn rotations_lose_no_packet_and_stall_no_stream() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    rotations_under_load(LabOptions::default());
}

#[test]
fn rotations_on_etcd_lose_no_packet_and_stall_no_stream() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    rotations_under_load(LabOptions::etcd(common::LEASE_TTL));
}

fn rotations_under_load(options: LabOptions) {
    common::require_agent();
    let options = options.key_rotation(KeyRotation::manual(Duration::from_secs(30)));
    let lab = common::lab_with(2, 1, options);
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    common::assert_ping(&lab, Host::Pod(2, 1), Host::Pod(1, 1));
    let start_keys = [
        common::key_and_epoch(&lab, 1),
        common::key_and_epoch(&lab, 2),
    ];

    let (server, port) = lab
        .host(Host::Pod(2, 1))
        .iperf_server()
        .expect("iperf3 server starts");
    let stream = lab
        .host(Host::Pod(1, 1))
        .iperf_client(
            pod_ip(2, 1),
            port,
            Duration::from_secs(u64::from(TRAFFIC_SECS)),
            "20M",
        )
        .expect("iperf3 client starts");
    let (ping, ping_spec) = common::fast_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1), TRAFFIC_SECS);
    let traffic_start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));

    let mut expected = [start_keys[0].1, start_keys[1].1];
    let mut last_key = [String::new(), String::new()];
    for i in 0..10u8 {
        let node = 1 + i % 2;
        let (epoch, key, took) = rotate(&lab, node);
        let idx = usize::from(node - 1);
        expected[idx] += 1;
        eprintln!(
            "rotation {}: node-{node} -> epoch {epoch} in {took:?}",
            i + 1
        );
        assert_eq!(
            epoch,
            expected[idx],
            "node-{node}'s epoch after rotation {}",
            i + 1
        );
        assert_ne!(key, last_key[idx], "node-{node} rotated to the key it had");
        last_key[idx] = key;
        std::thread::sleep(Duration::from_secs(1));
    }
    let both = std::thread::scope(|s| {
        let a = s.spawn(|| rotate(&lab, 1));
        let b = s.spawn(|| rotate(&lab, 2));
        [a.join(), b.join()]
    });
    for (idx, result) in both.into_iter().enumerate() {
        let (epoch, key, took) = result.unwrap_or_else(|_| panic!("concurrent rotation panicked"));
        expected[idx] += 1;
        eprintln!(
            "concurrent rotation: node-{} -> epoch {epoch} in {took:?}",
            idx + 1
        );
        assert_eq!(
            epoch,
            expected[idx],
            "node-{}'s epoch after the concurrent rotation",
            idx + 1
        );
        last_key[idx] = key;
    }
    let rotations_took = traffic_start.elapsed();
    assert!(
        rotations_took + Duration::from_secs(3) < Duration::from_secs(u64::from(TRAFFIC_SECS)),
        "the rotations took {rotations_took:?}, so the {TRAFFIC_SECS} s of traffic did not cover \
         them all"
    );

    common::assert_no_loss(ping, &ping_spec, "pod(1) -> pod(2) across 11 rotations");
    let report = stream
        .finish(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("iperf3 stream: {e}"));
    drop(server);
    let (stall, at) = report.longest_stall();
    eprintln!(
        "TCP stream: {} bytes received, {} retransmits, longest stall {stall:?} at {at:.2}s",
        report.bytes_received, report.retransmits
    );
    assert!(report.error.is_none(), "iperf3 error: {:?}", report.error);
    assert!(report.bytes_received > 0, "the TCP stream moved no data");
    assert!(
        stall <= MAX_STALL,
        "the TCP stream stalled for {stall:?} from {at:.2}s into the run (limit {MAX_STALL:?})"
    );

    for node in [1u8, 2] {
        let idx = usize::from(node - 1);
        let (key, epoch) = common::key_and_epoch(&lab, node);
        assert_ne!(key, start_keys[idx].0, "node-{node}'s key did not change");
        assert_eq!(
            key, last_key[idx],
            "node-{node}'s status key vs the last `Rotated:` line"
        );
        assert_eq!(epoch, expected[idx], "node-{node}'s key epoch");
        let other = 3 - node;
        let view = wait_other_matches(&lab, node, other);
        eprintln!("node-{node} --all-nodes: {view}");
    }
}

/// Waits until `node`'s `--all-nodes` view shows itself as `thisNode` and `other` as `matches`.
fn wait_other_matches(lab: &Lab, node: u8, other: u8) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = lab
            .node(node)
            .agent()
            .all_nodes_status()
            .unwrap_or_else(|e| panic!("--all-nodes on node-{node}: {e}"));
        let state = |name: String| {
            nodes
                .iter()
                .find(|n| n["nodeName"].as_str() == Some(name.as_str()))
                .and_then(|n| n["keyState"].as_str().map(str::to_owned))
        };
        let (me, them) = (state(node_name(node)), state(node_name(other)));
        if me.as_deref() == Some("thisNode") && them.as_deref() == Some("matches") {
            return Value::Array(nodes).to_string();
        }
        assert!(
            Instant::now() < deadline,
            "node-{node}'s --all-nodes: itself {me:?}, node-{other} {them:?} (want thisNode, \
             matches): {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
