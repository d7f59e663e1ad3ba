//! One hostile store record must not evict or hijack anyone: records claiming `0.0.0.0/0`,
//! `::/0`, the underlay (198.18.0.0/24 and /15) and a copy of node-1's pod CIDR are written into
//! the store one after another while pods of the three running nodes ping each other at 50/s.
//! Each is refused with a WARN naming it, every existing node keeps its peers and routes, and
//! not one ping is lost. The copy is the regression control: when an overlap refused both
//! records, node-1 dropped out of its peers' lists (and its pods' pings were lost).

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremesh_lab::{
    node_name, peer_names, pod_cidr, pod_ip, Host, Lab, LabOptions, NodeKind, Ping, PingResult,
    CLUSTER_NAME, WG_IFACE,
};

/// How long a refusal may take to show in the agents' logs.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);
/// 50 pings per second per pair.
const PING_INTERVAL: Duration = Duration::from_millis(20);

/// A hostile record named `name` claiming `cidrs`, with an unused underlay endpoint and a fresh
/// key, so that only the pod CIDRs make it hostile.
fn hostile(name: &str, cidrs: &[&str]) -> Value {
    json!({
        "nodeName": name,
        "clusterName": CLUSTER_NAME,
        "publicKey": common::fresh_public_key(),
        "endpoint": "198.18.0.200:51871",
        "podCIDRs": cidrs,
        "nodeIPs": ["198.18.0.200"],
    })
}

/// Waits until every node's agent log has a refusal WARN naming `name`, and returns one line.
fn wait_refused(lab: &Lab, name: &str) -> String {
    let deadline = Instant::now() + REFUSED_WITHIN;
    let mut last = String::new();
    loop {
        let mut lines = Vec::new();
        for node in lab.node_ids() {
            let log = std::fs::read_to_string(lab.node(node).log_path(NodeKind::Agent))
                .unwrap_or_default();
            // `node` is a string field: the log quotes it.
            let field = format!("node=\"{name}\"");
            let line = log
                .lines()
                .find(|l| l.contains("WARN") && l.contains("refused") && l.contains(&field));
            match line {
                Some(l) => lines.push(l.to_owned()),
                None => last = format!("node-{node} has not logged the refusal of {name}"),
            }
        }
        if lines.len() == usize::from(lab.nodes()) {
            return lines.swap_remove(0);
        }
        assert!(
            Instant::now() < deadline,
            "{last} within {REFUSED_WITHIN:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every node lists exactly the other two as peers and routes their pod CIDRs into the tunnel,
/// and no hostile range is routed there (other routes, such as a strict-mode route for the whole
/// cluster pool, may share the device).
fn assert_mesh_intact(lab: &Lab, hostile: &[&str], after: &str) {
    for node in lab.node_ids() {
        let status = lab
            .node(node)
            .agent()
            .status()
            .unwrap_or_else(|e| panic!("status of node-{node}: {e}"));
        let mut peers = peer_names(&status);
        peers.sort();
        let others: Vec<String> = lab
            .node_ids()
            .filter(|&n| n != node)
            .map(node_name)
            .collect();
        assert_eq!(peers, others, "node-{node}'s peers after {after}");
        let mut tunnelled = Vec::new();
        for family in ["-4", "-6"] {
            let routes = lab
                .host(Host::Node(node))
                .ip(&[family, "route", "show", "dev", WG_IFACE])
                .unwrap_or_else(|e| panic!("{family} routes of node-{node}: {e}"));
            let dests = routes.lines().filter_map(|l| l.split_whitespace().next());
            tunnelled.extend(dests.map(str::to_owned));
        }
        for other in lab.node_ids().filter(|&n| n != node) {
            let cidr = pod_cidr(other);
            assert!(
                tunnelled.contains(&cidr),
                "node-{node} lost its tunnel route to {cidr} after {after}: {tunnelled:?}"
            );
        }
        for bad in hostile
            .iter()
            .map(|c| if c.ends_with("/0") { "default" } else { c })
        {
            assert!(
                !tunnelled.iter().any(|r| r == bad),
                "node-{node} routes the hostile {bad} into the tunnel after {after}"
            );
        }
    }
}

fn hostile_records_are_refused_without_losing_a_ping(lab: &Lab) {
    common::start_mesh(lab);
    let pairs = [(1, 2), (2, 3), (3, 1)];
    for (from, to) in pairs {
        common::assert_ping(lab, Host::Pod(from, 1), Host::Pod(to, 1));
    }
    let copy = pod_cidr(1);
    let records: [(&str, &str); 5] = [
        ("all", "0.0.0.0/0"),
        ("all6", "::/0"),
        ("underlay", "198.18.0.0/24"),
        ("underlay15", "198.18.0.0/15"),
        // Sorts before node-1: only the order of the store keeps node-1 in force.
        ("a-copy", &copy),
    ];
    // The copy's range is node-1's own route: only the peer list can tell them apart.
    let hostile_cidrs: Vec<&str> = records
        .iter()
        .map(|(_, c)| *c)
        .filter(|c| *c != copy)
        .collect();
    // Long enough to cover every write and check, bounded: 50/s for 30 s per pair.
    let ping = |to| Ping::new(to).count(1500).interval(PING_INTERVAL);
    let mut background: Vec<_> = pairs
        .iter()
        .map(|&(from, to)| {
            let p = ping(pod_ip(to, 1));
            let bg = lab
                .host(Host::Pod(from, 1))
                .spawn_ping(&p)
                .unwrap_or_else(|e| panic!("background ping {from} -> {to}: {e}"));
            (from, to, p, bg)
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    for (name, cidr) in records {
        lab.store()
            .write_record(&hostile(name, &[cidr]))
            .unwrap_or_else(|e| panic!("writing the hostile record {name}: {e}"));
        let line = wait_refused(lab, name);
        eprintln!("{name} ({cidr}) refused: {line}");
        assert!(line.contains("field"), "the refusal names no field: {line}");
        if name == "a-copy" {
            assert!(
                line.contains("of node node-1"),
                "the refusal of the copy names no conflicting record: {line}"
            );
        }
        // The control: an overlap that refused both records would take node-1 off here.
        assert_mesh_intact(lab, &hostile_cidrs, &format!("writing {name}"));
    }

    for (from, to, p, bg) in &mut background {
        bg.wait_timeout(p.deadline() + Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("background ping {from} -> {to} finishes: {e}"));
        let result = PingResult::parse(&bg.log())
            .unwrap_or_else(|e| panic!("ping {from} -> {to} summary: {e}\n{}", bg.log()));
        assert_eq!(result.sent, 1500, "ping {from} -> {to}: {}", bg.log());
        assert_eq!(
            result.lost(),
            0,
            "pod ping {from} -> {to} lost packets while hostile records were written: {result}"
        );
    }
    assert_mesh_intact(lab, &hostile_cidrs, "the pings");
}

#[test]
fn hostile_records_in_the_dir_store_are_refused_without_losing_a_ping() {
    common::require_agent();
    let lab = common::lab(3, 1);
    hostile_records_are_refused_without_losing_a_ping(&lab);
}

#[test]
fn hostile_records_in_etcd_are_refused_without_losing_a_ping() {
    common::require_agent();
    let lab = common::lab_with(3, 1, LabOptions::etcd(common::LEASE_TTL));
    hostile_records_are_refused_without_losing_a_ping(&lab);
}
