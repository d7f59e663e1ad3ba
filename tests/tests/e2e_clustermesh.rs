//! Cluster mesh: clusters with a store each (an etcd server per cluster, or a directory per
//! cluster) linked into one encrypted mesh by their `clusterMesh` config.
//!
//! * Two clusters × two nodes on their own etcd: every pod reaches every other, across clusters
//!   too (ping and TCP); a key rotation in c2 under 100 pps ping from c1 loses nothing; c2's
//!   etcd down for 30 s loses nothing, `clustermesh status` on c1 says so with the time it went
//!   down, and c2's changes after it returns reach c1 within seconds.
//! * Conflicts and joins at run time (dir stores, three clusters, the third unlinked at start):
//!   a cluster reusing c2's ID, or overlapping c1's pool, is refused (status names both sides)
//!   while c1 <-> c2 ping loses nothing; c3 linked by SIGHUP becomes reachable; unlinked
//!   again, its peers go and strict mode drops traffic to it rather than sending it in clear.
//! * The underlay carries no cross-cluster pod traffic in clear (with the bypass control).

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use wiremesh_lab::{marker, peer_names, Host, Lab, LabOptions, Ping};

/// Nodes per cluster.
const NODES: u8 = 2;

fn mesh_lab(nodes: u8, options: LabOptions) -> Lab {
    common::lab_with(nodes, 1, options)
}

/// `wiremesh clustermesh status --json` on node `node`.
fn clustermesh_status(lab: &Lab, node: u8) -> Value {
    let bin = wiremesh_lab::agent_binary().expect("the wiremesh binary");
    let mut cmd = lab.node(node).cmd(bin);
    cmd.args(["clustermesh", "status", "--json"]);
    let out = wiremesh_lab::run(&mut cmd, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("clustermesh status on node-{node}: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("clustermesh status JSON ({e}): {out}"))
}

/// The entry for cluster `name` in node `node`'s `clustermesh status`.
fn remote_status(lab: &Lab, node: u8, name: &str) -> Option<Value> {
    let status = clustermesh_status(lab, node);
    status["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// Polls node `node`'s entry for cluster `name` until `pred` holds.
fn wait_remote(
    lab: &Lab,
    node: u8,
    name: &str,
    what: &str,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let entry = remote_status(lab, node, name);
        if let Some(e) = entry.as_ref().filter(|e| pred(e)) {
            return e.clone();
        }
        if Instant::now() >= deadline {
            lab.node(node).agent().dump_logs();
            panic!("node-{node}: {what} within {within:?}; cluster {name}: {entry:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every running agent lists exactly the peers its links give it.
fn wait_converged(lab: &Lab, nodes: impl IntoIterator<Item = u8>) {
    for node in nodes {
        let mut want = lab.expected_peers(node);
        want.sort();
        lab.node(node)
            .agent()
            .wait_status(&format!("peers {want:?}"), common::CONVERGE, |s| {
                let mut got = peer_names(s);
                got.sort();
                got == want
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

fn start(lab: &Lab) {
    lab.start_agents(common::READY)
        .unwrap_or_else(|e| panic!("starting agents: {e}"));
    wait_converged(lab, lab.node_ids());
}

/// Ping and TCP between every pair of pods, across clusters too.
fn every_pair_reaches(lab: &Lab) {
    let pods = lab.all_pods();
    let mut failures = Vec::new();
    for &a in &pods {
        for &b in pods.iter().filter(|&&b| b != a) {
            if let Err(e) = common::check_ping(lab, a, b) {
                failures.push(format!("ping {a} -> {b}: {e}"));
                continue;
            }
            let data = format!("from {a} to {b}");
            match lab.host(a).tcp_send(b, data.as_bytes(), common::TRAFFIC) {
                Ok(got) if got == data.as_bytes() => {}
                Ok(got) => failures.push(format!("TCP {a} -> {b} delivered {got:?}")),
                Err(e) => failures.push(format!("TCP {a} -> {b}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn two_clusters_on_their_own_etcd_reach_rotate_and_ride_out_an_outage() {
    common::require_agent();
    let options = LabOptions::etcd(common::LEASE_TTL).clusters(2);
    let lab = mesh_lab(NODES, options);
    start(&lab);
    let status = clustermesh_status(&lab, 1);
    assert_eq!(status["local"]["name"], "c1", "{status}");
    assert_eq!(status["local"]["id"], 1, "{status}");
    let c2 = remote_status(&lab, 1, "c2").expect("c2 in node-1's clustermesh status");
    assert_eq!(c2["state"], "admitted", "{c2}");
    assert_eq!(c2["connected"], true, "{c2}");
    assert_eq!(c2["nodes"], u64::from(NODES), "{c2}");
    every_pair_reaches(&lab);
    rotation_in_c2_loses_nothing(&lab);
    c2_store_outage_loses_nothing(&lab);
}

/// Both of c2's nodes rotate their keys while a pod of c1 pings a pod of each at 100 pps; c1's
/// nodes end up with the new keys.
fn rotation_in_c2_loses_nothing(lab: &Lab) {
    let (a, b) = (*lab.cluster_nodes(2).start(), *lab.cluster_nodes(2).end());
    let (p1, ping1) = common::fast_ping(lab, Host::Pod(1, 1), Host::Pod(a, 1), 15);
    let (p2, ping2) = common::fast_ping(lab, Host::Pod(2, 1), Host::Pod(b, 1), 15);
    std::thread::sleep(Duration::from_secs(2));
    for node in [a, b] {
        lab.node(node)
            .agent()
            .rotate_keys(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("rotating node-{node}'s key: {e}"));
    }
    common::assert_no_loss(p1, &ping1, "key rotation in c2");
    common::assert_no_loss(p2, &ping2, "key rotation in c2");
    for node in [a, b] {
        let (key, epoch) = common::key_and_epoch(lab, node);
        assert!(epoch >= 1, "node-{node} did not rotate");
        for viewer in lab.cluster_nodes(1) {
            let name = lab.peer_name(viewer, node);
            lab.node(viewer)
                .agent()
                .wait_status(&format!("{name} with its new key"), common::CONVERGE, |s| {
                    wiremesh_lab::peer(s, &name).is_some_and(|p| p["publicKey"] == key)
                })
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

/// c2's etcd stops for 30 s under ping both ways; c1 reports the outage, and after it a key
/// rotation in c2 (a change only c2's store carries) reaches c1.
fn c2_store_outage_loses_nothing(lab: &Lab) {
    let c2_node = *lab.cluster_nodes(2).start();
    let (p1, ping1) = common::fast_ping(lab, Host::Pod(1, 1), Host::Pod(c2_node, 1), 40);
    let (p2, ping2) = common::fast_ping(lab, Host::Pod(c2_node, 1), Host::Pod(1, 1), 40);
    std::thread::sleep(Duration::from_secs(2));
    let etcd = lab.cluster_etcd(2);
    etcd.stop().expect("stopping c2's etcd");
    let down = Instant::now();
    let entry = wait_remote(
        lab,
        1,
        "c2",
        "c2 shown unreachable",
        Duration::from_secs(15),
        |c| c["connected"] == false && c["since"].is_string(),
    );
    eprintln!("during the outage node-1 shows: {entry}");
    assert_eq!(
        entry["nodes"],
        u64::from(NODES),
        "c2's nodes stay peers: {entry}"
    );
    assert!(entry["lastError"].is_string(), "{entry}");
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    etcd.start().expect("starting c2's etcd again");
    let back = Instant::now();
    wait_remote(
        lab,
        1,
        "c2",
        "c2 connected again",
        Duration::from_secs(15),
        |c| c["connected"] == true,
    );
    eprintln!("c2 connected again after {:?}", back.elapsed());
    common::assert_no_loss(p1, &ping1, "c2's etcd down for 30 s");
    common::assert_no_loss(p2, &ping2, "c2's etcd down for 30 s");
    // Resync: a change in c2 after the outage reaches c1.
    lab.node(c2_node)
        .agent()
        .rotate_keys(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("rotating node-{c2_node}'s key after the outage: {e}"));
    let (key, _) = common::key_and_epoch(lab, c2_node);
    let name = lab.peer_name(1, c2_node);
    lab.node(1)
        .agent()
        .wait_status(
            "c2's rotation after the outage",
            Duration::from_secs(10),
            |s| wiremesh_lab::peer(s, &name).is_some_and(|p| p["publicKey"] == key),
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn conflicting_clusters_are_refused_and_a_third_joins_and_leaves_at_run_time() {
    common::require_agent();
    let lab = mesh_lab(
        1,
        LabOptions::default()
            .default_route()
            .clusters(3)
            .unlinked(3),
    );
    start(&lab);
    let (c1, c2, c3) = (1u8, 2u8, 3u8);
    assert!(
        remote_status(&lab, c1, "c3").is_none(),
        "c3 is not linked at start"
    );
    let (p, ping) = common::fast_ping(&lab, Host::Pod(c1, 1), Host::Pod(c2, 1), 30);
    std::thread::sleep(Duration::from_secs(1));

    // A cluster reusing c2's ID, and one overlapping c1's pool: both refused, naming both sides.
    let mut dup_id = lab.cluster_section(c3);
    dup_id.id = 2;
    let mut overlap = lab.cluster_section(c3);
    overlap.name = "c4".into();
    overlap.id = 4;
    overlap.pod_cidrs = lab.cluster_section(c1).pod_cidrs.clone();
    // The local pool as another cluster's: refused by node-1 (it overlaps its own).
    let mesh = vec![lab.cluster_section(c2), dup_id, overlap];
    lab.node(c1)
        .agent()
        .set_cluster_mesh(mesh)
        .expect("reloading node-1");
    let refused = wait_remote(
        &lab,
        c1,
        "c3",
        "c3 (ID 2) refused",
        Duration::from_secs(10),
        |c| c["state"] == "refused",
    );
    let why = refused["refusal"].as_str().unwrap_or_default();
    assert!(
        why.contains("\"c2\"") && why.contains("\"c3\""),
        "{refused}"
    );
    let refused = wait_remote(&lab, c1, "c4", "c4 refused", Duration::from_secs(10), |c| {
        c["state"] == "refused"
    });
    let why = refused["refusal"].as_str().unwrap_or_default();
    assert!(
        why.contains("\"c1\"") && why.contains("\"c4\""),
        "{refused}"
    );
    let c2_entry = remote_status(&lab, c1, "c2").expect("c2 still listed");
    assert_eq!(c2_entry["state"], "admitted", "{c2_entry}");
    let log = lab.node(c1).agent().log();
    assert!(
        log.contains("refused cluster c3") && log.contains("refused cluster c4"),
        "each refusal is a WARN naming the cluster"
    );
    common::assert_no_loss(p, &ping, "refused clusters added on reload");

    // c3 linked both ways at run time (SIGHUP): reachable from c1 and c2.
    lab.link_clusters(c1, c3).expect("linking c1 and c3");
    lab.link_clusters(c2, c3).expect("linking c2 and c3");
    wait_converged(&lab, lab.node_ids());
    for (a, b) in [(c1, c3), (c3, c1), (c2, c3)] {
        common::assert_ping(&lab, Host::Pod(a, 1), Host::Pod(b, 1));
    }

    // c3 unlinked from c1: its peer goes, and strict mode drops c1's traffic to it (the nodes
    // have a default route to the switch: without the guard it would leave in clear).
    lab.unlink_clusters(c1, c3).expect("unlinking c1 and c3");
    wait_converged(&lab, [c1]);
    let guard = lab.node(c1).guard();
    let before = guard
        .counter("egress_ipv4")
        .expect("strict mode's egress counter");
    let result = lab
        .host(Host::Pod(c1, 1))
        .ping(
            &Ping::new(Host::Pod(c3, 1).ip())
                .count(3)
                .interval(Duration::from_millis(100)),
        )
        .expect("ping runs");
    assert_eq!(
        result.received, 0,
        "c3 unlinked but still reached: {result}"
    );
    let after = guard
        .counter("egress_ipv4")
        .expect("strict mode's egress counter");
    assert!(
        after >= before + 3,
        "c1's 3 pings to unlinked c3 were not dropped by strict mode ({before} -> {after})"
    );
}

#[test]
fn cross_cluster_traffic_never_crosses_the_underlay_in_the_clear() {
    common::require_agent();
    // Strict mode off: the control routes pod traffic around the tunnel (e2e_strict covers
    // strict mode).
    let lab = mesh_lab(1, LabOptions::default().clusters(2).strict_mode(false));
    start(&lab);
    let (a, b) = (Host::Pod(1, 1), Host::Pod(2, 1));
    common::assert_ping(&lab, a, b);
    let mark = marker();
    let report = exchange(&lab, a, b, &mark, "tunnel");
    eprintln!("tunnel capture: {}", report.summary());
    assert!(
        !report.marker_found,
        "marker in the clear:\n{}",
        report.summary()
    );
    assert!(
        report.other.is_empty(),
        "non-WireGuard traffic between nodes:\n{}",
        report.summary()
    );
    assert!(
        report.wireguard > 0,
        "no WireGuard captured:\n{}",
        report.summary()
    );
    lab.node(1).bypass_tunnel(2).expect("bypass on node 1");
    lab.node(2).bypass_tunnel(1).expect("bypass on node 2");
    let control = exchange(&lab, a, b, &mark, "control");
    assert!(
        control.marker_found,
        "the detector missed the marker:\n{}",
        control.summary()
    );
}

fn exchange(lab: &Lab, a: Host, b: Host, mark: &[u8; 16], name: &str) -> wiremesh_lab::LeakReport {
    let capture = lab.switch().capture(name).expect("tcpdump on the underlay");
    for (from, to) in [(a, b), (b, a)] {
        let got = lab
            .host(from)
            .tcp_send(to, mark, common::TRAFFIC)
            .unwrap_or_else(|e| panic!("TCP {from} -> {to}: {e}"));
        assert_eq!(got, mark, "TCP {from} -> {to}");
        let ping = Ping::new(to.ip())
            .count(3)
            .interval(Duration::from_millis(100))
            .pattern(mark);
        let r = lab.host(from).ping(&ping).expect("ping runs");
        assert!(r.all_received(), "ping {from} -> {to}: {r}");
    }
    capture
        .stop()
        .expect("tcpdump stops")
        .analyze(mark)
        .expect("capture decodes")
}

/// Cross-cluster policy: c1's backend admits only c2's frontend, named by the cluster label;
/// c2's other pod and c1's own frontend are refused; a NetworkPolicy without the cluster label
/// admits c1's frontend and not c2's. Enforced by the eBPF programs on c1's node, traced by
/// `policy trace` as `c2/app/frontend`.
#[test]
fn cross_cluster_policy_selects_by_cluster_label() {
    use wiremesh_lab::{namespace_with_pods, PodSpec, Proto};
    common::require_agent();
    let lab = common::lab_with(1, 2, LabOptions::default().clusters(2));
    start(&lab);
    let pod = |ns: &str, name: &str, host: Host, app: &str| {
        PodSpec::new(ns, name, host).label("app", app)
    };
    let backend = pod("app", "backend", Host::Pod(1, 1), "backend");
    let c1_frontend = pod("app", "frontend", Host::Pod(1, 2), "frontend");
    let c2_frontend = pod("app", "frontend", Host::Pod(2, 1), "frontend");
    let c2_other = pod("app", "other", Host::Pod(2, 2), "other");
    let c1 = namespace_with_pods("app", &[backend.clone(), c1_frontend.clone()]);
    let c2 = namespace_with_pods("app", &[c2_frontend.clone(), c2_other.clone()]);
    lab.node(1)
        .agent()
        .apply(&c1)
        .expect("c1's pods applied in c1");
    lab.node(2)
        .agent()
        .apply(&c2)
        .expect("c2's pods applied in c2");
    let _servers = lab
        .serve(&[Host::Pod(1, 1)], &[8080], &[])
        .expect("echo server");
    let to = backend.ip();
    let probes = [
        (Host::Pod(2, 1), to, 8080, Proto::Tcp),
        (Host::Pod(2, 2), to, 8080, Proto::Tcp),
        (Host::Pod(1, 2), to, 8080, Proto::Tcp),
    ];
    let probe = |want: [bool; 3], what: &str| {
        let got = lab.probe_until(
            &probes,
            &want,
            Duration::from_millis(500),
            Duration::from_secs(15),
        );
        assert_eq!(
            got, want,
            "{what}: c2/frontend, c2/other, c1/frontend -> c1/backend"
        );
    };
    // The control: without a policy every probe gets through.
    probe([true, true, true], "no policy");
    let c2_entry = wait_remote(
        &lab,
        1,
        "c2",
        "c2's two pods known",
        Duration::from_secs(15),
        |c| c["endpoints"] == 2,
    );
    assert_eq!(
        c2_entry["identities"], 2,
        "frontend and other differ: {c2_entry}"
    );

    let only_c2_frontend = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
        metadata: {name: backend, namespace: app}\nspec:\n\
        \x20 endpointSelector: {matchLabels: {app: backend}}\n  ingress:\n\
        \x20 - fromEndpoints:\n    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c2}\n";
    lab.node(1)
        .agent()
        .apply(only_c2_frontend)
        .expect("CNP applied in c1");
    probe([true, false, false], "CNP admitting c2's frontend only");
    let trace = |from: &str| {
        lab.node(1)
            .agent()
            .trace(&["--from", from, "--to", "app/backend", "--port", "8080"])
            .unwrap_or_else(|e| panic!("trace from {from}: {e}"))
    };
    let allowed = trace("c2/app/frontend");
    assert!(allowed.contains("allowed"), "{allowed}");
    let denied = trace("c2/app/other");
    assert!(denied.contains("denied"), "{denied}");
    lab.node(1)
        .agent()
        .delete(only_c2_frontend)
        .expect("CNP deleted");

    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
        metadata: {name: backend, namespace: app}\nspec:\n\
        \x20 podSelector: {matchLabels: {app: backend}}\n  ingress:\n\
        \x20 - from:\n    - podSelector: {matchLabels: {app: frontend}}\n";
    lab.node(1)
        .agent()
        .apply(np)
        .expect("NetworkPolicy applied in c1");
    probe(
        [false, false, true],
        "NetworkPolicy without a cluster label",
    );
}
