//! Node 3 runs stock wireguard-go configured with `wg`, not the agent: the agents on nodes 1 and 2
//! peer with it from its store record, pods on both sides reach each other, and `wg show` on a
//! wiremesh node reports handshakes and transfer for its peers. 64 MiB cross between wiremesh
//! and wireguard-go intact in both directions (offloads on, unless `WIREMESH_LAB_OFFLOAD=off`).

mod common;

use serde_json::Value;
use wiremesh_lab::{node_name, parse_wg_show, peer, Host, Lab};

fn public_key(lab: &Lab, node: u8) -> String {
    let status = lab
        .node(node)
        .agent()
        .status()
        .unwrap_or_else(|e| panic!("status of node-{node}: {e}"));
    status["publicKey"]
        .as_str()
        .unwrap_or_else(|| panic!("node-{node} status has no publicKey: {status}"))
        .to_owned()
}

fn assert_handshakes(lab: &Lab, node: u8, keys: &[(&str, &str)]) {
    let text = lab
        .node(node)
        .wg_show()
        .unwrap_or_else(|e| panic!("wg show on node-{node}: {e}"));
    let peers = parse_wg_show(&text);
    for (name, key) in keys {
        let peer = peers
            .iter()
            .find(|p| p.public_key == *key)
            .unwrap_or_else(|| {
                panic!("wg show on node-{node} does not list {name} ({key}):\n{text}")
            });
        assert!(
            peer.field("latest handshake").is_some(),
            "no handshake with {name} on node-{node}:\n{text}"
        );
        assert!(
            peer.field("transfer").is_some(),
            "no transfer line for {name} on node-{node}:\n{text}"
        );
    }
}

/// Bulk TCP both ways between a wiremesh node and the wireguard-go node: with offloads on,
/// wiremesh reads super-packets from its TUN and sends segmented runs; wireguard-go must
/// receive nothing but valid WireGuard datagrams, and what it sends must be coalesced intact.
fn bulk_both_ways(lab: &Lab) {
    const BYTES: u64 = 64 << 20;
    for (from, to) in [
        (Host::Pod(1, 1), Host::Pod(3, 1)),
        (Host::Pod(3, 1), Host::Pod(1, 1)),
    ] {
        let bulk = lab
            .host(from)
            .bulk_transfer(to, BYTES, common::TRAFFIC * 4)
            .unwrap_or_else(|e| panic!("64 MiB {from} -> {to}: {e}"));
        eprintln!("64 MiB {from} -> {to} in {:?}", bulk.took);
        assert!(
            bulk.intact(),
            "64 MiB {from} -> {to} arrived changed: sent sha256 {}, received {}",
            bulk.sent_sha256,
            bulk.received_sha256
        );
    }
}

#[test]
fn agents_interoperate_with_wireguard_go() {
    common::require_agent();
    let lab = common::lab(3, 2);
    for node in [1, 2] {
        lab.node(node)
            .agent()
            .start()
            .unwrap_or_else(|e| panic!("starting agent on node-{node}: {e}"));
    }
    for node in [1, 2] {
        lab.node(node)
            .agent()
            .wait_peer_count(1, common::CONVERGE)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let k3 = lab
        .node(3)
        .start_wireguard_go(common::CONVERGE)
        .unwrap_or_else(|e| panic!("wireguard-go on node-3: {e}"));
    for node in [1, 2] {
        let status = lab
            .node(node)
            .agent()
            .wait_peer_count(2, common::CONVERGE)
            .unwrap_or_else(|e| panic!("{e}"));
        let listed = peer(&status, &node_name(3))
            .and_then(|p| p.get("publicKey"))
            .and_then(Value::as_str);
        assert_eq!(
            listed,
            Some(k3.as_str()),
            "node-{node} lists node-3 with another key: {status}"
        );
    }

    for node in [1, 2] {
        common::assert_ping(&lab, Host::Pod(3, 1), Host::Pod(node, 1));
        common::assert_ping(&lab, Host::Pod(node, 2), Host::Pod(3, 2));
    }
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    bulk_both_ways(&lab);

    let (k1, k2) = (public_key(&lab, 1), public_key(&lab, 2));
    assert_handshakes(&lab, 1, &[("node-2", &k2), ("node-3 (wireguard-go)", &k3)]);
    assert_handshakes(&lab, 3, &[("node-1", &k1), ("node-2", &k2)]);
}
