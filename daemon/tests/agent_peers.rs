#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

//! The agent's peer reconciler in process, against the real userspace data path (in this test
//! process, on a TUN device) and an in-memory store snapshot, inside a network namespace of its
//! own: store changes become WireGuard peers and routes, this node's own record never becomes a
//! peer, and what is in force is saved for the next start. Also how the agent re-attaches to a
//! running data path whose key is not the key file's.
//!
//! Needs root (a network namespace and a TUN device); fails, never skips, without it.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::IpNet;
use keymgr::{NodeRecord, PrivateKey, PublicKey, Snapshot};
use tokio::sync::watch;
use wiremesh::agent::peers::Reconciler;
use wiremesh::agent::persist::PeerFile;
use wiremesh::agent::rotation::OwnKey;
use wiremesh_datapath::netlink::Netlink;
use wiremesh_datapath::{userspace, Datapath};

const INTERFACE: &str = "wmtest0";

fn record(name: &str, key: PublicKey, underlay: &str, pods: &str) -> NodeRecord {
    NodeRecord {
        pod_cidrs: vec![pods.parse().expect("pod CIDR")],
        ..NodeRecord::new(
            name,
            key,
            format!("{underlay}:51871").parse().expect("endpoint"),
        )
    }
}

fn snapshot(records: &[&NodeRecord]) -> Snapshot {
    let nodes: BTreeMap<String, NodeRecord> = records
        .iter()
        .map(|r| (r.node_name.clone(), (*r).clone()))
        .collect();
    Snapshot {
        nodes: nodes.into(),
    }
}

async fn routed_into(netlink: &Netlink, ip: &str, ifindex: u32) -> bool {
    let ip: IpAddr = ip.parse().expect("ip");
    matches!(netlink.route_to(ip).await, Ok(Some(r)) if r.ifindex == ifindex)
}

#[test]
fn store_changes_become_peers_and_routes() {
    common::in_netns("agent_peers", || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(reconcile_in_netns());
    });
}

async fn reconcile_in_netns() {
    let state_dir = tempfile::tempdir().expect("tempdir");
    let own = PrivateKey::generate();
    let handle =
        userspace::start(INTERFACE, own.clone(), 51871, true).expect("userspace data path");
    let datapath = Arc::new(Datapath::Userspace(handle));
    let netlink = Netlink::connect().expect("netlink");
    let ifindex = netlink.link_index(INTERFACE).await.expect("the TUN device");
    netlink.set_up(ifindex, 1420).await.expect("link up");

    let (_own_tx, own_rx) = watch::channel(OwnKey {
        public: own.public_key(),
        epoch: 0,
        created: SystemTime::now(),
        next: None,
        next_rotation: None,
    });
    let (names_tx, names_rx) = watch::channel(Arc::new(HashMap::new()));
    let (view_tx, view_rx) = watch::channel(None);
    let mut peers = Reconciler {
        datapath: datapath.clone(),
        netlink: netlink.clone(),
        interface: INTERFACE.into(),
        ifindex,
        instance: None,
        self_name: "node-1".into(),
        own: own_rx,
        keepalive: 0,
        peers: BTreeMap::new(),
        routes: BTreeSet::new(),
        names: names_tx,
        peer_file: PeerFile::new(state_dir.path()),
        own_record_seen: false,
        view: view_tx,
    };

    let node1 = record("node-1", own.public_key(), "198.18.0.1", "10.244.1.0/24");
    let (k2, k3) = (PrivateKey::generate(), PrivateKey::generate());
    let node2 = record("node-2", k2.public_key(), "198.18.0.2", "10.244.2.0/24");
    let node3 = record("node-3", k3.public_key(), "198.18.0.3", "10.244.3.0/24");
    // A record that claims this node's key under another name must never become a peer.
    let thief = record("node-9", own.public_key(), "198.18.0.9", "10.244.9.0/24");

    peers
        .reconcile(&snapshot(&[&node1, &node2, &node3, &thief]))
        .await
        .expect("the data path answers");
    let state = datapath.get().await.expect("get");
    let keys: BTreeSet<PublicKey> = state.peers.iter().map(|p| p.public_key).collect();
    assert_eq!(
        keys,
        BTreeSet::from([k2.public_key(), k3.public_key()]),
        "exactly the other nodes are peers"
    );
    let p2 = state
        .peers
        .iter()
        .find(|p| p.public_key == k2.public_key())
        .expect("node-2's peer");
    let want: Vec<IpNet> = vec!["10.244.2.0/24".parse().expect("net")];
    assert_eq!(p2.allowed_ips, want, "node-2's pod CIDR is its allowed IPs");
    assert_eq!(p2.endpoint, Some(node2.endpoint));
    assert!(routed_into(&netlink, "10.244.2.7", ifindex).await);
    assert!(routed_into(&netlink, "10.244.3.7", ifindex).await);
    assert!(
        !routed_into(&netlink, "10.244.9.7", ifindex).await,
        "the impostor's CIDR is not routed into the tunnel"
    );
    assert!(
        !routed_into(&netlink, "10.244.1.7", ifindex).await,
        "this node's own pod CIDR is not routed into the tunnel"
    );
    assert_eq!(names_rx.borrow().len(), 2, "status names both peers' keys");
    assert!(
        view_rx.borrow().is_some(),
        "metrics get a view of the data path"
    );
    let saved = PeerFile::new(state_dir.path()).load();
    assert_eq!(
        saved.keys().cloned().collect::<Vec<_>>(),
        ["node-2", "node-3"],
        "the peers in force are saved for the next start"
    );

    // node-3 leaves the store: its peer and route go, node-2's session is not touched.
    peers
        .reconcile(&snapshot(&[&node1, &node2]))
        .await
        .expect("the data path answers");
    let state = datapath.get().await.expect("get");
    let keys: Vec<PublicKey> = state.peers.iter().map(|p| p.public_key).collect();
    assert_eq!(keys, vec![k2.public_key()]);
    assert!(routed_into(&netlink, "10.244.2.7", ifindex).await);
    assert!(
        !routed_into(&netlink, "10.244.3.7", ifindex).await,
        "a removed peer's route is removed"
    );
    assert_eq!(PeerFile::new(state_dir.path()).load().len(), 1);
}

/// An agent that starts next to a running data path holding the key file's key only as its
/// staged successor (the previous agent committed a rotation on disk, then died before the
/// switch) makes that key the data path's own, keeping the sessions made with it; left alone,
/// the node would publish a key its data path does not answer to. The control: a data path
/// already using the file's key keeps its staged successor untouched.
#[test]
fn an_agent_attaching_to_a_data_path_promotes_the_key_it_only_staged() {
    common::in_netns("agent_peers", || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(attach_after_a_commit());
    });
}

async fn attach_after_a_commit() {
    use wiremesh::agent::start::{self, Origin};
    use wiremesh_datapath::listen::{Access, Limits};
    use wiremesh_datapath::model::SetRequest;
    use wiremesh_datapath::uapi::server::UapiServer;

    const ATTACH: &str = "wmattach0";
    let (old, new, later) = (
        PrivateKey::generate(),
        PrivateKey::generate(),
        PrivateKey::generate(),
    );
    let handle = userspace::start(ATTACH, old.clone(), 51871, true).expect("userspace data path");
    let datapath = Arc::new(Datapath::Userspace(handle));
    let _uapi = UapiServer::bind(ATTACH, datapath.clone(), Access::default(), Limits::UAPI)
        .expect("the data path's UAPI socket");
    let stage = |key: &PrivateKey| SetRequest {
        next_private_key: Some(Some(key.clone())),
        ..SetRequest::default()
    };
    datapath
        .set(stage(&new))
        .await
        .expect("stage the successor");

    let config = wiremesh::config::Config::parse(
        &format!(
            "nodeName: node-1\nnodeIPs: [198.18.0.1]\npodCIDRs: [10.244.1.0/24]\n\
             clusterPodCIDRs: [10.244.0.0/16]\ninterface: {ATTACH}\ndatapath: userspace\n"
        ),
        std::path::Path::new("agent_peers.yaml"),
    )
    .expect("config");
    let netlink = Netlink::connect().expect("netlink");
    let exited = Arc::new(tokio::sync::Notify::new());
    let keys = |state: &wiremesh_datapath::model::DeviceState| {
        (
            state.private_key.as_ref().map(PrivateKey::public_key),
            state.next_public_key,
        )
    };

    // The key file holds `new` (committed); the data path still runs on `old`.
    let started = start::start(&config, &netlink, &new, 1420, &exited, None)
        .await
        .expect("attach to the running data path");
    assert_eq!(started.origin, Origin::Attached);
    let state = datapath.get().await.expect("get");
    assert_eq!(
        keys(&state),
        (Some(new.public_key()), None),
        "the staged key was promoted"
    );

    // The control: a data path on the file's key keeps the successor it staged.
    datapath.set(stage(&later)).await.expect("stage again");
    start::start(&config, &netlink, &new, 1420, &exited, None)
        .await
        .expect("attach again");
    let state = datapath.get().await.expect("get");
    assert_eq!(
        keys(&state),
        (Some(new.public_key()), Some(later.public_key()))
    );
}
