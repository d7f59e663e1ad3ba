//! Three agents, two pods each: every pod pair across nodes reaches each other by ping and TCP,
//! in both directions.

mod common;

use wiremesh_lab::Host;

const TRANSFER_BYTES: usize = 1024 * 1024;

#[test]
fn pods_reach_each_other_across_every_node_pair() {
    common::require_agent();
    let lab = common::lab(3, 2);
    common::start_mesh(&lab);

    let mut failures = Vec::new();
    for a in lab.node_ids() {
        for b in lab.node_ids().filter(|&b| b != a) {
            let (from, to) = (Host::Pod(a, 1), Host::Pod(b, 2));
            if let Err(e) = common::check_ping(&lab, from, to) {
                failures.push(format!("ping {from} -> {to}: {e}"));
            }
            let (from, to) = (Host::Pod(a, 2), Host::Pod(b, 1));
            if let Err(e) = lab
                .host(from)
                .tcp_transfer(to, TRANSFER_BYTES, common::TRAFFIC)
            {
                failures.push(format!("TCP {from} -> {to}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 12 checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
