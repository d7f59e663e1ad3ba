//! An in-place upgrade of the data path loses nothing: node-1 runs v1 (the workspace binary),
//! pods ping each other across the tunnel at 100 packets/s both ways, node-1's agent is stopped
//! and started again from a v2 binary (the same source built with `WIREMESH_VERSION` set); the
//! v2 agent finds the v1 data path, starts `wiremesh datapath --take-over`, and the v2 data path
//! takes the interface, sockets and peers over. Asserted: 0 pings lost, `encrypt status` on
//! node-1 names v2's data path with a new PID, the v1 data path is gone, node-2 has a fresh
//! handshake. The control run proves the detector: the same restart with the data path killed
//! instead of handed over loses pings.
//!
//! The v2 binary: see [`common::versions::v2_binary`].

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::versions::{v2_binary, version_of};

use wiremesh_lab::{agent_binary, Host};

const TRAFFIC_SECS: u32 = 25;

fn use_binary(bin: &Path) {
    std::env::set_var("WIREMESH_BIN", bin);
}

/// node-2's latest handshake with node-1, as its status shows it (RFC 3339).
fn last_handshake(lab: &wiremesh_lab::Lab) -> String {
    let node2 = lab.node(2).agent().status().expect("node-2 status");
    let peer =
        wiremesh_lab::peer(&node2, &wiremesh_lab::node_name(1)).expect("node-2 lists node-1");
    peer["lastHandshake"]
        .as_str()
        .unwrap_or_else(|| panic!("node-2 has no handshake with node-1: {peer}"))
        .to_string()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_data_path_upgrade_loses_no_packet_and_killing_it_instead_does() {
    common::require_agent();
    let v1 = agent_binary().expect("the v1 binary");
    let v1 = v1.canonicalize().unwrap_or(v1);
    let v1_version = version_of(&v1);
    let (v2, v2_version) = v2_binary(&v1_version);
    use_binary(&v1);

    let lab = common::lab(2, 1);
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    common::assert_ping(&lab, Host::Pod(2, 1), Host::Pod(1, 1));
    let old_pid = lab
        .node(1)
        .datapath()
        .pid()
        .expect("node-1 runs a data path process");
    let status = lab.node(1).agent().status().expect("node-1 status");
    assert_eq!(
        status["datapathProcess"]["version"].as_str(),
        Some(v1_version.as_str()),
        "node-1's data path before the upgrade: {status}"
    );

    let handshake_before = last_handshake(&lab);

    // The upgrade, under traffic both ways.
    let there = common::fast_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1), TRAFFIC_SECS);
    let back = common::fast_ping(&lab, Host::Pod(2, 1), Host::Pod(1, 1), TRAFFIC_SECS);
    std::thread::sleep(Duration::from_secs(3));
    let from = lab.node(1).agent().log_len();
    lab.node(1).agent().stop().expect("stopping node-1's agent");
    use_binary(&v2);
    lab.node(1)
        .agent()
        .start()
        .expect("starting node-1's v2 agent");
    lab.node(1)
        .agent()
        .wait_log(from, "\"agent ready\"", common::READY, |l| {
            l.contains("agent ready")
        })
        .unwrap_or_else(|e| panic!("the v2 agent: {e}"));
    let status = lab
        .node(1)
        .agent()
        .wait_status("node-1 to run v2's data path", common::READY, |s| {
            s["datapathProcess"]["version"].as_str() == Some(v2_version.as_str())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let new_pid = status["datapathProcess"]["pid"].as_u64().expect("a PID");
    assert_ne!(
        new_pid,
        u64::from(old_pid),
        "the data path was not replaced"
    );
    let text = lab.node(1).agent().status_text().expect("status text");
    assert!(
        text.contains(&format!(
            "Data path: userspace {v2_version} (pid {new_pid})"
        )),
        "encrypt status:\n{text}"
    );
    common::assert_no_loss(
        there.0,
        &there.1,
        "pod(1) -> pod(2) across the data path upgrade",
    );
    common::assert_no_loss(
        back.0,
        &back.1,
        "pod(2) -> pod(1) across the data path upgrade",
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    while pid_alive(old_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !pid_alive(old_pid),
        "the v1 data path (pid {old_pid}) is still running"
    );
    // RFC 3339 in UTC to the second: later times sort later.
    let handshake_after = last_handshake(&lab);
    assert!(
        handshake_after > handshake_before,
        "node-2 has no new handshake with node-1 ({handshake_before} before, {handshake_after} after)"
    );

    // The control run: the same restart, the data path killed instead of handed over.
    let there = common::fast_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1), 15);
    std::thread::sleep(Duration::from_secs(2));
    lab.node(1).agent().stop().expect("stopping node-1's agent");
    lab.node(1)
        .datapath()
        .stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5))
        .expect("killing node-1's data path");
    use_binary(&v1);
    lab.node(1)
        .agent()
        .start()
        .expect("starting node-1's v1 agent");
    let log = common::finish_ping(there.0, &there.1);
    let sent = log.summary.map_or(0, |s| s.sent);
    let lost = log.missing(sent).len();
    eprintln!("control run: {lost} of {sent} pings lost without the handover");
    assert!(
        lost > 0,
        "the control run lost nothing: the loss counter sees nothing"
    );
}

/// A successor that takes the offer and goes away before attaching (it crashed, or its pod was
/// deleted) leaves the data path serving: it reads its UDP sockets again, same process, same
/// sessions. The detector: while the would-be successor holds the offer, node-1's pod gets no
/// reply (the data path stopped reading UDP), so the test did trigger a handover.
#[test]
fn a_successor_that_fails_before_taking_over_leaves_the_data_path_serving() {
    common::require_agent();
    let lab = common::lab(2, 1);
    common::start_mesh(&lab);
    let (a, b) = (Host::Pod(1, 1), Host::Pod(2, 1));
    common::assert_ping(&lab, a, b);
    let pid = lab.node(1).datapath().pid().expect("node-1's data path");
    let socket = lab
        .layout()
        .node_dir(1)
        .join("run")
        .join(wiremesh_datapath::handover::SOCKET_NAME);
    let ping = common::fast_ping(&lab, a, b, 8);
    std::thread::sleep(Duration::from_secs(1));
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let (offer, sockets) =
        wiremesh_datapath::handover::receive_offer(&mut stream).expect("the handover offer");
    eprintln!("took the offer of {offer:?}, then failing");
    drop(sockets);
    std::thread::sleep(Duration::from_secs(3));
    drop(stream);
    let log = common::finish_ping(ping.0, &ping.1);
    let missing = log.missing(log.summary.map_or(0, |s| s.sent)).len();
    assert!(
        log.longest_gap() >= Duration::from_secs(2) || missing > 0,
        "no gap while the offer was held ({:?}, none missing): the data path never handed \
         over, so the test proves nothing",
        log.longest_gap()
    );
    common::assert_ping(&lab, a, b);
    common::assert_ping(&lab, b, a);
    assert_eq!(
        lab.node(1).datapath().pid(),
        Some(pid),
        "node-1's data path was replaced"
    );
}
