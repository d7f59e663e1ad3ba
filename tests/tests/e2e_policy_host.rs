//! A host endpoint: a CiliumClusterwideNetworkPolicy with a `nodeSelector` governs what reaches
//! node-2 itself through the tunnel (its pod gateway address 10.244.2.1, which node-1's pods reach
//! over WireGuard), enforced by the eBPF programs on node-2's WireGuard device. Pod traffic that
//! the same device forwards is left to the pods' own policy. Deleting the policy detaches the
//! programs again. And policy over the etcd store, across an agent restart; and on the new
//! WireGuard device of a restarted data path.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use wiremesh_lab::{namespace_manifest, node_gateway, Host, Lab, PodSpec, Proto, WG_IFACE};

const PROBE: Duration = Duration::from_millis(800);
const SETTLE: Duration = Duration::from_secs(15);

const HOST_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: node-2-host}
spec:
  nodeSelector: {matchLabels: {kubernetes.io/hostname: node-2}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

fn settle(
    lab: &Lab,
    probes: &[(Host, std::net::Ipv4Addr, u16, Proto)],
    want: &[bool],
) -> Vec<bool> {
    lab.probe_until(probes, want, PROBE, SETTLE)
}

#[test]
fn node_selector_policy_guards_the_host_through_the_tunnel() {
    common::require_agent();
    let lab = common::lab(2, 2);
    common::start_mesh(&lab);
    let a = PodSpec::new("demo", "a", Host::Pod(1, 1)).label("app", "a");
    let c = PodSpec::new("demo", "c", Host::Pod(1, 2)).label("app", "c");
    let d = PodSpec::new("demo", "d", Host::Pod(2, 1)).label("app", "d");
    let objects = [
        namespace_manifest("demo", &[]),
        a.manifest(),
        c.manifest(),
        d.manifest(),
    ]
    .join("---\n");
    lab.node(1).agent().apply(&objects).expect("apply objects");
    let _servers = lab
        .serve(
            &[Host::Node(2), Host::Pod(2, 1), Host::Pod(1, 1)],
            &[80, 81],
            &[],
        )
        .expect("echo servers");

    let host2 = node_gateway(2);
    let probes = [
        (a.host, host2, 80, Proto::Tcp),
        (a.host, host2, 81, Proto::Tcp),
        (c.host, host2, 80, Proto::Tcp),
        // Forwarded pod traffic through the same device: not the host's.
        (c.host, d.ip(), 81, Proto::Tcp),
    ];
    let open = [true; 4];
    let got = settle(&lab, &probes, &open);
    assert_eq!(got, open, "everything is open before the host policy");

    lab.node(2)
        .agent()
        .apply(HOST_POLICY)
        .expect("apply the host policy");
    let want = [true, false, false, true];
    let got = settle(&lab, &probes, &want);
    if got != want {
        lab.dump_logs();
    }
    assert_eq!(
        got, want,
        "a→host:80, a→host:81, c→host:80, c→d:81 (forwarded)"
    );

    lab.node(1)
        .agent()
        .delete(HOST_POLICY)
        .expect("delete the host policy");
    let got = settle(&lab, &probes, &open);
    assert_eq!(
        got, open,
        "everything is open again once the policy is deleted"
    );
}

/// The same path on the etcd store: objects applied through node-1's agent are stored in etcd,
/// node-2's agent learns them by watch and allocates identities there, and its enforcement
/// survives a restart of its agent (the objects are listed again before the maps are touched).
#[test]
fn policy_travels_through_etcd() {
    common::require_agent();
    let lab = common::lab_with(2, 2, wiremesh_lab::LabOptions::etcd(common::LEASE_TTL));
    common::start_mesh(&lab);
    let a = PodSpec::new("demo", "a", Host::Pod(1, 1)).label("app", "a");
    let c = PodSpec::new("demo", "c", Host::Pod(1, 2)).label("app", "c");
    let b = PodSpec::new("demo", "b", Host::Pod(2, 1)).label("app", "b");
    let objects = [
        namespace_manifest("demo", &[]),
        a.manifest(),
        b.manifest(),
        c.manifest(),
    ]
    .join("---\n");
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                  metadata: {name: b-from-a, namespace: demo}\n\
                  spec:\n  podSelector: {matchLabels: {app: b}}\n  \
                  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]\n";
    lab.node(1).agent().apply(&objects).expect("apply objects");
    lab.node(1).agent().apply(policy).expect("apply the policy");
    let _servers = lab.serve(&[b.host], &[80], &[]).expect("echo server");
    let probes = [
        (a.host, b.ip(), 80, Proto::Tcp),
        (c.host, b.ip(), 80, Proto::Tcp),
    ];
    let want = [true, false];
    assert_eq!(
        settle(&lab, &probes, &want),
        want,
        "a→b allowed, c→b denied"
    );
    lab.node(2).agent().kill().expect("kill -9 node-2's agent");
    lab.node(2).agent().start().expect("restart it");
    lab.node(2)
        .agent()
        .wait_status("the restarted agent", common::READY, |_| true)
        .expect("restarted agent answers");
    assert_eq!(
        lab.probe_all(&probes, PROBE),
        want,
        "enforcement holds across the restart"
    );
    let out = lab
        .node(2)
        .agent()
        .trace(&["--from", "demo/c", "--to", "demo/b", "--port", "80"]);
    assert!(out.expect("online trace").contains("denied"));
}

/// A data path restart: `kill -9` of node-2's data path takes its TUN device (and the host
/// programs' tc filters) with it; the agent starts a new one, whose device has a new ifindex.
/// The host programs are on the new device before any peer is configured on it, so a prober
/// knocking on the denied port the whole time never gets through, and the allowed one works
/// again within a bounded time.
#[test]
fn host_policy_follows_a_restarted_data_path() {
    common::require_agent();
    let lab = common::lab(2, 2);
    common::start_mesh(&lab);
    let a = PodSpec::new("demo", "a", Host::Pod(1, 1)).label("app", "a");
    let c = PodSpec::new("demo", "c", Host::Pod(1, 2)).label("app", "c");
    let objects = [namespace_manifest("demo", &[]), a.manifest(), c.manifest()].join("---\n");
    lab.node(1).agent().apply(&objects).expect("apply objects");
    let _servers = lab
        .serve(&[Host::Node(2)], &[80, 81], &[])
        .expect("echo servers");
    let host2 = node_gateway(2);
    let probes = [
        (a.host, host2, 80, Proto::Tcp),
        (a.host, host2, 81, Proto::Tcp),
        (c.host, host2, 80, Proto::Tcp),
    ];
    // Control: the probes that the policy denies do open without it.
    assert_eq!(
        settle(&lab, &probes, &[true; 3]),
        [true; 3],
        "open before the policy"
    );
    lab.node(2)
        .agent()
        .apply(HOST_POLICY)
        .expect("apply the host policy");
    let want = [true, false, false];
    assert_eq!(
        settle(&lab, &probes, &want),
        want,
        "enforced before the restart"
    );
    let before = lab.node(2).ifindex(WG_IFACE).expect("WireGuard ifindex");
    assert!(lab
        .node(2)
        .policy_hooks(WG_IFACE)
        .expect("tc filters")
        .both());

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let to = SocketAddr::from((host2, 81));
    let prober = {
        let (stop, opened) = (stop.clone(), opened.clone());
        lab.host(a.host).spawn_in(move || {
            while !stop.load(Ordering::Relaxed) {
                if std::net::TcpStream::connect_timeout(&to, PROBE).is_ok() {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })
    };
    let old_pid = lab
        .node(2)
        .datapath()
        .pid()
        .expect("node-2's data path runs");
    lab.node(2)
        .datapath()
        .stop(Signal::SIGKILL, Duration::from_secs(5))
        .expect("kill -9 the data path");
    let deadline = Instant::now() + SETTLE;
    while lab.node(2).datapath().pid().is_none_or(|p| p == old_pid) {
        assert!(
            Instant::now() < deadline,
            "the agent did not restart the data path within {SETTLE:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = settle(&lab, &probes, &want);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    prober.join().expect("prober thread").expect("prober");
    if got != want {
        lab.dump_logs();
    }
    assert_eq!(got, want, "enforced again after the data path restart");
    let after = lab.node(2).ifindex(WG_IFACE).expect("WireGuard ifindex");
    assert_ne!(
        before, after,
        "the restarted data path has a new WireGuard device"
    );
    assert!(
        lab.node(2)
            .policy_hooks(WG_IFACE)
            .expect("tc filters")
            .both(),
        "the host programs are on the new device"
    );
    assert_eq!(
        opened.load(Ordering::Relaxed),
        0,
        "a→host:81 (denied) opened while the data path restarted"
    );
}
