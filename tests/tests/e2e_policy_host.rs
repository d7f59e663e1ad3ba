//! A host endpoint: a CiliumClusterwideNetworkPolicy with a `nodeSelector` governs what reaches
//! node-2 itself through the tunnel (its pod gateway address 10.244.2.1, which node-1's pods reach
//! over WireGuard), enforced by the eBPF programs on node-2's WireGuard device. Pod traffic that
//! the same device forwards is left to the pods' own policy. Deleting the policy detaches the
//! programs again. And policy over the etcd store, across an agent restart.

mod common;

use std::time::Duration;

use wiremesh_lab::{namespace_manifest, node_gateway, Host, Lab, PodSpec, Proto};

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
    lab.apply(1, &objects).expect("apply objects");
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

    lab.apply(2, HOST_POLICY).expect("apply the host policy");
    let want = [true, false, false, true];
    let got = settle(&lab, &probes, &want);
    if got != want {
        lab.dump_logs();
    }
    assert_eq!(
        got, want,
        "a→host:80, a→host:81, c→host:80, c→d:81 (forwarded)"
    );

    lab.delete(1, HOST_POLICY).expect("delete the host policy");
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
    lab.apply(1, &objects).expect("apply objects");
    lab.apply(1, policy).expect("apply the policy");
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
    lab.kill_agent(2).expect("kill -9 node-2's agent");
    lab.start_agent(2).expect("restart it");
    lab.wait_status(2, "the restarted agent", common::READY, |_| true)
        .expect("restarted agent answers");
    assert_eq!(
        lab.probe_all(&probes, PROBE),
        want,
        "enforcement holds across the restart"
    );
    let out = lab.trace(2, &["--from", "demo/c", "--to", "demo/b", "--port", "80"]);
    assert!(out.expect("online trace").contains("denied"));
}
