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
    let before = lab.status(2).expect("status of node-2")["publicKey"].clone();
    assert!(before.is_string(), "node-2 status has no publicKey");
    let key_file = lab.key_path(2);
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

    lab.kill_agent(2).expect("kill -9 node-2's agent");
    lab.start_agent(2).expect("restart node-2's agent");
    let restarted = Instant::now();
    let after = lab
        .wait_status(2, "the restarted agent to answer", common::READY, |_| true)
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
    let forward = lab.wait_reachable(
        a,
        b.ip(),
        RECOVERY_LIMIT.saturating_sub(restarted.elapsed()),
    );
    if let Err(e) = forward {
        let reverse = lab.wait_reachable(b, a.ip(), Duration::from_secs(5));
        let after_reverse = lab.wait_reachable(a, b.ip(), Duration::from_secs(5));
        panic!(
            "{a} -> {b} not restored within {RECOVERY_LIMIT:?} of the restart: {e}\n\
             diagnosis: then {b} -> {a}: {reverse:?}; then {a} -> {b} again: {after_reverse:?}"
        );
    }
    let left = RECOVERY_LIMIT.saturating_sub(restarted.elapsed());
    lab.wait_reachable(b, a.ip(), left).unwrap_or_else(|e| {
        panic!("{b} -> {a} not restored within {RECOVERY_LIMIT:?} of the restart: {e}")
    });
    common::assert_ping(&lab, a, b);
}
