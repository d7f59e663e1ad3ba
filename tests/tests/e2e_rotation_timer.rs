//! The timer-driven key rotation (`keyRotation.interval`), which `e2e_rotation` (manual
//! `wiremesh keys rotate`) never exercises: with a 6 s interval, both nodes rotate on their own,
//! at times they choose, several times each, while pod(1) pings pod(2) at 100/s. Proves that
//! nothing is lost and that each node's key epoch advanced by at least 3 and its key changed.

mod common;

use std::time::Duration;

use wiremesh_lab::{Host, KeyRotation, LabOptions};

const INTERVAL: Duration = Duration::from_secs(6);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
const TRAFFIC_SECS: u32 = 40;
const MIN_ROTATIONS: u64 = 3;

#[test]
fn timer_driven_rotations_lose_no_packet() {
    common::require_agent();
    let options = LabOptions::default().key_rotation(KeyRotation {
        interval: INTERVAL,
        commit_timeout: COMMIT_TIMEOUT,
    });
    let lab = common::lab_with(2, 1, options);
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    common::assert_ping(&lab, Host::Pod(2, 1), Host::Pod(1, 1));

    let (ping, spec) = common::fast_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1), TRAFFIC_SECS);
    let start = [
        common::key_and_epoch(&lab, 1),
        common::key_and_epoch(&lab, 2),
    ];
    eprintln!("at the start of the ping: {start:?}");
    common::assert_no_loss(
        ping,
        &spec,
        &format!("pod(1) -> pod(2) across timer-driven rotations every {INTERVAL:?}"),
    );
    for node in [1u8, 2] {
        let (key, epoch) = common::key_and_epoch(&lab, node);
        let (start_key, start_epoch) = &start[usize::from(node - 1)];
        eprintln!("node-{node}: epoch {start_epoch} -> {epoch}");
        assert!(
            epoch >= start_epoch + MIN_ROTATIONS,
            "node-{node}'s key epoch went from {start_epoch} to {epoch} in {TRAFFIC_SECS} s with \
             keyRotation.interval {INTERVAL:?}; want at least {MIN_ROTATIONS} rotations"
        );
        assert_ne!(&key, start_key, "node-{node}'s key did not change");
    }
    common::assert_ping(&lab, Host::Pod(2, 1), Host::Pod(1, 1));
}
