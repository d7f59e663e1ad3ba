//! What every end-to-end test does first, and the timeouts they share.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod versions;

use std::time::Duration;

use wiremesh_lab::{Host, Lab};

/// An agent answers `encrypt status` within this long of being started.
pub const READY: Duration = Duration::from_secs(20);
/// Agents learn every peer from the dir store within this long.
pub const CONVERGE: Duration = Duration::from_secs(20);
/// A single TCP transfer or ping run finishes within this long.
pub const TRAFFIC: Duration = Duration::from_secs(30);

/// Root and every tool, or a panic that says what is missing: a missing prerequisite fails the
/// test, it never skips it.
pub fn require_prerequisites() {
    if let Err(e) = wiremesh_lab::preflight() {
        panic!("end-to-end test prerequisites missing: {e}");
    }
}

/// [`require_prerequisites`] plus the agent binary.
pub fn require_agent() {
    require_prerequisites();
    if let Err(e) = wiremesh_lab::agent_binary() {
        panic!("{e}");
    }
}

pub fn lab(nodes: u8, pods: u8) -> Lab {
    Lab::new(nodes, pods).unwrap_or_else(|e| panic!("building a {nodes}-node lab: {e}"))
}

/// Starts every agent and waits until each lists every other node as a peer.
pub fn start_mesh(lab: &Lab) {
    lab.start_agents(READY)
        .unwrap_or_else(|e| panic!("starting agents: {e}"));
    let others = usize::from(lab.nodes()) - 1;
    for node in lab.node_ids() {
        lab.node(node)
            .agent()
            .wait_peer_count(others, CONVERGE)
            .unwrap_or_else(|e| panic!("mesh did not converge: {e}"));
    }
}

/// Pings `to` from `from` until it answers (the first packet to a peer triggers the handshake),
/// then asserts a short run loses nothing.
pub fn assert_ping(lab: &Lab, from: Host, to: Host) {
    if let Err(e) = check_ping(lab, from, to) {
        panic!("ping {from} -> {to}: {e}");
    }
}

/// [`assert_ping`] as a result, for tests that collect every failure before panicking.
pub fn check_ping(lab: &Lab, from: Host, to: Host) -> Result<(), String> {
    lab.host(from)
        .wait_reachable(to.ip(), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let ping = wiremesh_lab::Ping::new(to.ip())
        .count(5)
        .interval(Duration::from_millis(50));
    let result = lab.host(from).ping(&ping).map_err(|e| e.to_string())?;
    if result.all_received() {
        Ok(())
    } else {
        Err(format!(
            "after the first reply, a run of 5 lost packets: {result}"
        ))
    }
}

/// The lease TTL the etcd tests configure.
pub const LEASE_TTL: Duration = Duration::from_secs(5);

pub fn lab_with(nodes: u8, pods: u8, options: wiremesh_lab::LabOptions) -> Lab {
    let what = format!("{options:?}");
    Lab::with_options(nodes, pods, options)
        .unwrap_or_else(|e| panic!("building a {nodes}-node lab ({what}): {e}"))
}

/// Starts the agents of `nodes` and waits until each lists the others of them as peers.
pub fn start_some(lab: &Lab, nodes: &[u8]) {
    for &n in nodes {
        lab.node(n)
            .agent()
            .start()
            .unwrap_or_else(|e| panic!("starting node-{n}'s agent: {e}"));
    }
    for &n in nodes {
        lab.node(n)
            .agent()
            .wait_status("the agent to answer status", READY, |_| true)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for &n in nodes {
        lab.node(n)
            .agent()
            .wait_peer_count(nodes.len() - 1, CONVERGE)
            .unwrap_or_else(|e| panic!("mesh of {nodes:?} did not converge: {e}"));
    }
}

/// A fresh valid public key (from `wg genkey | wg pubkey`), for records of nodes that do not run.
pub fn fresh_public_key() -> String {
    use std::process::Command;
    let private = wiremesh_lab::run(Command::new("wg").arg("genkey"), Duration::from_secs(5))
        .expect("wg genkey");
    let mut cmd = Command::new("wg");
    cmd.arg("pubkey");
    let out = wiremesh_lab::output(&mut cmd, Some(private.as_bytes()), Duration::from_secs(5))
        .expect("wg pubkey");
    assert!(out.status.success(), "wg pubkey failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The `publicKey` and `keyEpoch` of node `node`'s status.
pub fn key_and_epoch(lab: &Lab, node: u8) -> (String, u64) {
    let s = lab
        .node(node)
        .agent()
        .status()
        .unwrap_or_else(|e| panic!("status of node-{node}: {e}"));
    let key = s["publicKey"].as_str().unwrap_or_default().to_owned();
    let epoch = s["keyEpoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("node-{node} status has no numeric keyEpoch: {s}"));
    (key, epoch)
}

/// A 100 packets/s ping from `from` to `to` for `secs` seconds, logging every reply.
pub fn fast_ping(
    lab: &Lab,
    from: Host,
    to: Host,
    secs: u32,
) -> (wiremesh_lab::BgProcess, wiremesh_lab::Ping) {
    let ping = wiremesh_lab::Ping::new(to.ip())
        .count(secs * 100)
        .interval(Duration::from_millis(10))
        .per_reply();
    let proc = lab
        .host(from)
        .spawn_ping(&ping)
        .unwrap_or_else(|e| panic!("starting ping {from} -> {to}: {e}"));
    (proc, ping)
}

/// Waits for a [`fast_ping`] to end by itself and returns its log, which has a summary.
pub fn finish_ping(
    mut proc: wiremesh_lab::BgProcess,
    ping: &wiremesh_lab::Ping,
) -> wiremesh_lab::PingLog {
    // ping's own pacing slips under load (it sends late rather than skipping), hence twice
    // its nominal duration.
    proc.wait_timeout(ping.deadline() * 2 + Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("ping did not finish: {e}"));
    let log = wiremesh_lab::PingLog::parse(&proc.log());
    if log.summary.is_none() {
        panic!("no ping summary: {}", wiremesh_lab::tail(&proc.log(), 20));
    }
    log
}

/// Waits for a [`fast_ping`] to end by itself and asserts that every packet was answered;
/// `context` says what happened meanwhile.
pub fn assert_no_loss(
    proc: wiremesh_lab::BgProcess,
    ping: &wiremesh_lab::Ping,
    context: &str,
) -> wiremesh_lab::PingLog {
    let log = finish_ping(proc, ping);
    let summary = log.summary.expect("finish_ping checked the summary");
    let missing = log.missing(summary.sent);
    eprintln!(
        "ping {}: {summary}, longest gap between replies {:?}",
        ping.to,
        log.longest_gap()
    );
    assert_eq!(
        summary.sent, ping.count,
        "ping sent {summary} of {}",
        ping.count
    );
    assert!(
        summary.all_received() && missing.is_empty(),
        "{context}: {} of {} pings lost (first missing icmp_seq {:?}); longest gap {:?}",
        summary.lost(),
        summary.sent,
        &missing[..missing.len().min(20)],
        log.longest_gap()
    );
    log
}
