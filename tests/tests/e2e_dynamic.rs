//! Removing a node's record from the store removes that peer everywhere within 2 s without
//! disturbing traffic between the others; putting it back restores the node.

mod common;

use std::time::{Duration, Instant};

use wiremesh_lab::{node_name, peer_names, pod_ip, Host, Ping, PingResult};

const REMOVAL_LIMIT: Duration = Duration::from_secs(2);

#[test]
fn record_removal_and_return_change_only_that_peer() {
    common::require_agent();
    let lab = common::lab(3, 1);
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(3, 1));
    let node3 = node_name(3);

    let ping = Ping::new(pod_ip(2, 1))
        .count(300)
        .interval(Duration::from_millis(20));
    let mut background = lab
        .host(Host::Pod(1, 1))
        .spawn_ping(&ping)
        .expect("background ping starts");
    std::thread::sleep(Duration::from_secs(1));

    let saved = lab
        .store()
        .remove_record(&node3)
        .expect("remove node-3's record");
    let removed = Instant::now();
    let mut last = Vec::new();
    let elapsed = loop {
        let listed: Vec<bool> = [1, 2]
            .iter()
            .map(|&n| {
                let status = lab
                    .node(n)
                    .agent()
                    .status()
                    .unwrap_or_else(|e| panic!("status of node-{n}: {e}"));
                last.push(format!("node-{n}: {:?}", peer_names(&status)));
                peer_names(&status).contains(&node3)
            })
            .collect();
        if listed.iter().all(|l| !l) {
            break removed.elapsed();
        }
        assert!(
            removed.elapsed() < REMOVAL_LIMIT * 3,
            "node-3 still listed {:?} after removing its record; last peers: {:?}",
            removed.elapsed(),
            &last[last.len().saturating_sub(2)..]
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "node-3 gone from node-1's and node-2's status {elapsed:?} after its record was removed"
    );
    assert!(
        elapsed < REMOVAL_LIMIT,
        "node-3 disappeared from status only after {elapsed:?}"
    );

    background
        .wait_timeout(ping.deadline() + Duration::from_secs(5))
        .expect("background ping finishes");
    let result = PingResult::parse(&background.log()).expect("background ping summary");
    assert_eq!(result.sent, 300, "background ping: {}", background.log());
    assert_eq!(
        result.lost(),
        0,
        "node-1 -> node-2 traffic lost packets while node-3 was removed: {result}"
    );

    lab.store()
        .write_record_bytes(&node3, &saved)
        .expect("restore node-3's record");
    for node in [1, 2] {
        lab.node(node)
            .agent()
            .wait_status("node-3 listed again", Duration::from_secs(5), |s| {
                peer_names(s).contains(&node3)
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    lab.host(Host::Pod(1, 1))
        .wait_reachable(pod_ip(3, 1), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("node-3's pod unreachable after its record returned: {e}"));
}
