//! What every end-to-end test does first, and the timeouts they share.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

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
        lab.wait_peer_count(node, others, CONVERGE)
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
    lab.wait_reachable(from, to.ip(), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let ping = wiremesh_lab::Ping::new(to.ip())
        .count(5)
        .interval(Duration::from_millis(50));
    let result = lab.ping_from(from, &ping).map_err(|e| e.to_string())?;
    if result.all_received() {
        Ok(())
    } else {
        Err(format!(
            "after the first reply, a run of 5 lost packets: {result}"
        ))
    }
}
