//! The agent's peer reconciler in process, against the real userspace data path (in this test
//! process, on a TUN device) and an in-memory store snapshot, inside a network namespace of its
//! own: store changes become WireGuard peers and routes, this node's own record never becomes a
//! peer, and what is in force is saved for the next start.
//!
//! Needs root (a network namespace and a TUN device); fails, never skips, without it.

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

/// Runs `body` on a thread of its own inside a new network namespace (threads it creates, such
/// as the data path's, are born in it too).
fn in_netns<F: FnOnce() + Send + 'static>(body: F) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "agent_peers needs root (a network namespace and a TUN device): run as root, e.g. via scripts/test.sh"
    );
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): a network namespace for the test");
        body();
    })
    .join()
    .expect("the test thread");
}

async fn routed_into(netlink: &Netlink, ip: &str, ifindex: u32) -> bool {
    let ip: IpAddr = ip.parse().expect("ip");
    matches!(netlink.route_to(ip).await, Ok(Some(r)) if r.ifindex == ifindex)
}

#[test]
fn store_changes_become_peers_and_routes() {
    in_netns(|| {
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
    let handle = userspace::start(INTERFACE, own.clone(), 51871).expect("userspace data path");
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
        ifindex,
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
