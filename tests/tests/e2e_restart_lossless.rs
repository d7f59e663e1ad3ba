//! The agent is only the control plane: killing it with SIGKILL and starting it again, three
//! times, while a pod pings across the tunnel at 100 packets/s, loses no packet (the separate
//! data path keeps every session) and keeps the node's key.

mod common;

use std::time::{Duration, Instant};

use wiremesh_lab::Host;

const TRAFFIC_SECS: u32 = 40;
const RESTARTS: usize = 3;

#[test]
fn agent_restarts_lose_no_packet() {
    common::require_agent();
    let lab = common::lab(2, 1);
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    common::assert_ping(&lab, Host::Pod(2, 1), Host::Pod(1, 1));
    let (key_before, epoch_before) = common::key_and_epoch(&lab, 2);
    let node1_key = common::key_and_epoch(&lab, 1).0;
    let datapath = lab
        .datapath_pid(2)
        .expect("node-2 runs a data path process");

    let (ping, spec) = common::fast_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1), TRAFFIC_SECS);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    for round in 1..=RESTARTS {
        lab.kill_agent(2).expect("kill -9 node-2's agent");
        let from = lab.agent_log_len(2);
        let killed = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        lab.start_agent(2).expect("restart node-2's agent");
        lab.wait_log(2, from, "\"agent ready\"", common::READY, |l| {
            l.contains("agent ready")
        })
        .unwrap_or_else(|e| panic!("restart {round}: {e}"));
        let status = lab
            .wait_status(
                2,
                "the restarted agent to list node-1's key",
                common::READY,
                |s| {
                    wiremesh_lab::peers(s)
                        .iter()
                        .any(|p| p["publicKey"].as_str() == Some(node1_key.as_str()))
                },
            )
            .unwrap_or_else(|e| panic!("restart {round}: {e}"));
        eprintln!(
            "restart {round}: ready again {:?} after the kill",
            killed.elapsed()
        );
        assert_eq!(
            status["publicKey"].as_str(),
            Some(key_before.as_str()),
            "node-2's key changed across restart {round}"
        );
        assert_eq!(
            lab.datapath_pid(2),
            Some(datapath),
            "restart {round}: the agent did not re-attach to the running data path"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    let took = start.elapsed();
    assert!(
        took + Duration::from_secs(2) < Duration::from_secs(u64::from(TRAFFIC_SECS)),
        "the restarts took {took:?}, longer than the {TRAFFIC_SECS} s of traffic"
    );
    common::assert_no_loss(
        ping,
        &spec,
        "pod(1) -> pod(2) across 3 agent SIGKILL + restarts",
    );
    let (key_after, epoch_after) = common::key_and_epoch(&lab, 2);
    assert_eq!(key_after, key_before, "node-2's public key changed");
    assert_eq!(epoch_after, epoch_before, "node-2's key epoch changed");
    // A re-attached agent must know its peers as store nodes again, not only as device peers.
    lab.wait_status(
        2,
        "the re-attached agent to name node-1 with its key epoch",
        Duration::from_secs(10),
        |s| wiremesh_lab::peer(s, "node-1").is_some_and(|p| p["keyEpoch"].is_u64()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
