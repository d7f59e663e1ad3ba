//! Cluster mesh in policy (Cilium's `policy-default-local-cluster`): remote clusters' pods are
//! endpoints labelled with their cluster; a selector without `io.cilium.k8s.policy.cluster`
//! selects only this cluster's pods, one with it selects the named cluster's; identities
//! carry the cluster ID; the compiled maps (what the eBPF programs enforce) agree with the
//! trace.

mod common;

use common::tcp;
use policy::identity::Identities;
use policy::{load_with, Bundle, LoadOptions, Protocol};

/// Namespace `app` with `frontend` and `backend` pods, in cluster `cluster` at 10.244.`n`.x.
fn pods(n: u8) -> String {
    format!(
        r#"
apiVersion: v1
kind: List
items:
- {{apiVersion: v1, kind: Namespace, metadata: {{name: app, labels: {{team: shop}}}}}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: frontend, namespace: app, labels: {{app: frontend}}}}
  spec: {{nodeName: node-{n}, containers: [{{name: c, image: i}}]}}
  status: {{podIPs: [{{ip: 10.244.{n}.10}}]}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: backend, namespace: app, labels: {{app: backend}}}}
  spec: {{nodeName: node-{n}, containers: [{{name: c, image: i}}]}}
  status: {{podIPs: [{{ip: 10.244.{n}.11}}]}}
- apiVersion: v1
  kind: Pod
  metadata: {{name: other, namespace: app, labels: {{app: other}}}}
  spec: {{nodeName: node-{n}, containers: [{{name: c, image: i}}]}}
  status: {{podIPs: [{{ip: 10.244.{n}.12}}]}}
"#
    )
}

fn cluster(name: &str) -> LoadOptions {
    LoadOptions {
        cluster_name: Some(name.into()),
        ..LoadOptions::default()
    }
}

/// c1's pods and `policies`, with c2's pods (its namespace `app` has other labels) added.
fn mesh(policies: &str) -> Bundle {
    let local = format!("{}\n---\n{policies}", pods(1));
    let mut b = load_with([("c1.yaml", local.as_str())], cluster("c1")).expect("c1 loads");
    let remote_text = pods(2).replace("team: shop", "team: remote");
    let remote = load_with([("c2.yaml", remote_text.as_str())], cluster("c2")).expect("c2 loads");
    b.add_remote_cluster("c2", remote);
    b.cluster_ids = [("c1".to_string(), 1), ("c2".to_string(), 2)].into();
    b
}

const ONLY_C2_FRONTEND: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c2}
"#;

const NP_FRONTEND: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend, namespace: app}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
"#;

#[test]
fn a_selector_naming_the_cluster_admits_that_clusters_pods_only() {
    let b = mesh(ONLY_C2_FRONTEND);
    assert_eq!(tcp(&b, "c2/app/frontend", "app/backend", 80), "allowed");
    assert_eq!(tcp(&b, "c2/app/other", "app/backend", 80), "ingress");
    // c1's own frontend: the selector names c2.
    assert_eq!(tcp(&b, "app/frontend", "app/backend", 80), "ingress");
    // By address, as the data path sees it.
    assert_eq!(tcp(&b, "10.244.2.10", "app/backend", 80), "allowed");
    assert_eq!(tcp(&b, "10.244.2.12", "app/backend", 80), "ingress");
}

#[test]
fn a_selector_without_the_cluster_label_selects_the_local_cluster_only() {
    let b = mesh(NP_FRONTEND);
    assert_eq!(tcp(&b, "app/frontend", "app/backend", 80), "allowed");
    assert_eq!(tcp(&b, "c2/app/frontend", "app/backend", 80), "ingress");
    // The same for CiliumNetworkPolicy and for `fromEntities: [cluster]`.
    let cnp = ONLY_C2_FRONTEND.replace(", io.cilium.k8s.policy.cluster: c2", "");
    let b = mesh(&cnp);
    assert_eq!(tcp(&b, "app/frontend", "app/backend", 80), "allowed");
    assert_eq!(tcp(&b, "c2/app/frontend", "app/backend", 80), "ingress");
    let entity = ONLY_C2_FRONTEND.replace(
        "fromEndpoints:\n    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c2}",
        "fromEntities: [cluster]",
    );
    let b = mesh(&entity);
    assert_eq!(tcp(&b, "app/other", "app/backend", 80), "allowed");
    assert_eq!(tcp(&b, "c2/app/other", "app/backend", 80), "ingress");
    // The control: without cluster mesh (no cluster name), the same NetworkPolicy admits any
    // pod labelled frontend, so the tests above do test the cluster rule.
    let text = format!("{}\n---\n{NP_FRONTEND}", pods(1));
    let mut plain = load_with([("c1.yaml", text.as_str())], LoadOptions::default()).unwrap();
    let remote = load_with([("c2.yaml", pods(2).as_str())], LoadOptions::default()).unwrap();
    plain.add_remote_cluster("c2", remote);
    assert_eq!(tcp(&plain, "c2/app/frontend", "app/backend", 80), "allowed");
}

#[test]
fn remote_namespaces_keep_their_own_labels() {
    let by_ns = ONLY_C2_FRONTEND.replace(
        "fromEndpoints:\n    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: c2}",
        "fromEndpoints:\n    - matchLabels: {io.cilium.k8s.namespace.labels.team: remote, io.cilium.k8s.policy.cluster: c2}",
    );
    let b = mesh(&by_ns);
    assert_eq!(tcp(&b, "c2/app/other", "app/backend", 80), "allowed");
    // c1's namespace `app` is labelled shop, not remote.
    assert_eq!(tcp(&b, "app/other", "app/backend", 80), "ingress");
}

#[test]
fn identities_carry_the_cluster_id_and_the_maps_agree() {
    let b = mesh(ONLY_C2_FRONTEND);
    let ids = Identities::build(&b);
    let of = |ip: &str| ids.lookup(ip.parse().unwrap(), Some("node-1"));
    let (local, remote) = (of("10.244.1.10"), of("10.244.2.10"));
    assert!(
        ((1 << 16) + 256..2 << 16).contains(&local),
        "c1's identity {local}"
    );
    assert!(
        ((2 << 16) + 256..3 << 16).contains(&remote),
        "c2's identity {remote}"
    );
    let labels = ids.labels(remote).expect("c2's identity").to_string();
    assert!(
        labels.contains("k8s:io.cilium.k8s.policy.cluster=c2"),
        "{labels}"
    );
    // What the eBPF map says for the backend equals the trace.
    let compiled = policy::Compiled::build(&b);
    let backend = b.endpoint("app", "backend").expect("backend");
    for (ip, want) in [
        ("10.244.2.10", true),
        ("10.244.2.12", false),
        ("10.244.1.10", false),
    ] {
        let verdict = compiled
            .lookup(
                backend,
                policy::Direction::Ingress,
                ip.parse().unwrap(),
                Protocol::Tcp,
                80,
            )
            .expect("the backend has a map");
        assert_eq!(verdict.allowed, want, "{ip}: {verdict:?}");
    }
}

/// A host without pods (a VM with `hostAddress` and `labels`) publishes itself as a Pod with
/// the host-endpoint annotation: selectors match its labels, no endpoint selector makes it a
/// policy subject.
#[test]
fn a_host_endpoint_is_selected_by_its_labels_and_never_a_subject() {
    let vm = r#"
apiVersion: v1
kind: Pod
metadata:
  name: vm-1
  namespace: app
  labels: {role: db-vm}
  annotations: {wiremesh.io/host-endpoint: "true"}
status: {podIPs: [{ip: 10.244.200.1}]}
"#;
    let egress_to_vm = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: frontend}}
  egress:
  - toEndpoints:
    - matchLabels: {role: db-vm}
"#;
    let text = format!("{}\n---\n{vm}\n---\n{egress_to_vm}", pods(1));
    let b = load_with([("c1.yaml", text.as_str())], cluster("c1")).expect("loads");
    let host = b.endpoint("app", "vm-1").expect("the host endpoint");
    assert!(host.host && host.node.is_none(), "{host:?}");
    assert_eq!(tcp(&b, "app/frontend", "app/vm-1", 5432), "allowed");
    assert_eq!(tcp(&b, "app/frontend", "app/backend", 80), "egress");
    // By address, as the data path sees it.
    let ids = Identities::build(&b);
    let id = ids.lookup("10.244.200.1".parse().unwrap(), Some("node-1"));
    let labels = ids.labels(id).expect("the host's identity").to_string();
    assert!(labels.contains("k8s:role=db-vm"), "{labels}");
    // An endpoint selector matching its labels does not make it a subject.
    let isolate_vm = egress_to_vm.replace("app: frontend", "role: db-vm");
    let text = format!("{}\n---\n{vm}\n---\n{isolate_vm}", pods(1));
    let b = load_with([("c1.yaml", text.as_str())], cluster("c1")).expect("loads");
    assert_eq!(tcp(&b, "app/vm-1", "app/backend", 80), "allowed");
}
