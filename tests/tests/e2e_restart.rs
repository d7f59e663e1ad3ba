//! An agent killed with SIGKILL and started again keeps its identity (the key file) and restores
//! pod-to-pod traffic within 10 s.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use wiremesh_lab::Host;

const RECOVERY_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn killed_agent_restarts_with_the_same_key_and_traffic_recovers() {
    common::require_agent();
    let lab = common::lab(2, 1);
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    let before = lab.node(2).agent().status().expect("status of node-2")["publicKey"].clone();
    assert!(before.is_string(), "node-2 status has no publicKey");
    let key_file = lab.node(2).key_path();
    let mode = std::fs::metadata(&key_file)
        .unwrap_or_else(|e| panic!("{}: {e}", key_file.display()))
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "{} has mode {:o}",
        key_file.display(),
        mode & 0o777
    );

    lab.node(2).agent().kill().expect("kill -9 node-2's agent");
    lab.node(2).agent().start().expect("restart node-2's agent");
    let restarted = Instant::now();
    let after = lab
        .node(2)
        .agent()
        .wait_status("the restarted agent to answer", common::READY, |_| true)
        .unwrap_or_else(|e| panic!("{e}"))["publicKey"]
        .clone();
    assert_eq!(
        after, before,
        "node-2's public key changed across a restart"
    );

    // The surviving node speaks first: it still holds a session the restarted agent forgot, which
    // is the case a restart has to handle (the restarted side's own traffic would start a fresh
    // handshake anyway).
    let (a, b) = (Host::Pod(1, 1), Host::Pod(2, 1));
    let forward = lab
        .host(a)
        .wait_reachable(b.ip(), RECOVERY_LIMIT.saturating_sub(restarted.elapsed()));
    if let Err(e) = forward {
        let reverse = lab.host(b).wait_reachable(a.ip(), Duration::from_secs(5));
        let after_reverse = lab.host(a).wait_reachable(b.ip(), Duration::from_secs(5));
        panic!(
            "{a} -> {b} not restored within {RECOVERY_LIMIT:?} of the restart: {e}\n\
             diagnosis: then {b} -> {a}: {reverse:?}; then {a} -> {b} again: {after_reverse:?}"
        );
    }
    let left = RECOVERY_LIMIT.saturating_sub(restarted.elapsed());
    lab.host(b)
        .wait_reachable(a.ip(), left)
        .unwrap_or_else(|e| {
            panic!("{b} -> {a} not restored within {RECOVERY_LIMIT:?} of the restart: {e}")
        });
    common::assert_ping(&lab, a, b);
}
