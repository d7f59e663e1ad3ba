//! The fake API server as a process, driven by the real `kubectl` over HTTPS with bearer tokens
//! and RBAC enforced: create, read back, replace and delete a Namespace, a Node, a
//! CiliumNetworkPolicy and a NetworkPolicy from files; a restart from the state file keeps
//! them; a user whose ClusterRole lacks `patch` on nodes is refused with 403, and the audit log
//! records it. Needs `kubectl` on PATH (fails, never skips, without it).
#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod process;

use process::{kubectl_path, Lab, Server};
use serde_json::Value;
use wiremesh_fake_apiserver::rbac::{Authorizer, Decision};
use wiremesh_fake_apiserver::{audit, AuditRecord};

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: lab\n";

const NODE: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels: {kubernetes.io/hostname: node-1}
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [10.244.1.0/24, fd00:10:1::/64]
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.1}
  - {type: Hostname, address: node-1}
";

const CNP: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: lab}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
";

const NP: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: lab}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

/// The ClusterRole of the agent as the project ships it, less `patch` on nodes.
const RBAC: &str = "\
apiVersion: v1
kind: ServiceAccount
metadata: {name: wiremesh, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: wiremesh}
rules:
- apiGroups: ['']
  resources: [nodes, namespaces, pods, services]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: wiremesh}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: wiremesh}
subjects:
- {kind: ServiceAccount, name: wiremesh, namespace: kube-system}
";

const AGENT: &str = "system:serviceaccount:kube-system:wiremesh";

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("kubectl printed no JSON ({e}):\n{out}"))
}

#[test]
fn kubectl_creates_replaces_and_deletes_through_tls_tokens_and_rbac() {
    let kubectl = kubectl_path();
    let lab = Lab::new(RBAC);
    let mut server = Server::start(&lab);
    let admin = lab.kubeconfig(&server, "admin-token");
    let files = [
        ("ns.yaml", NAMESPACE),
        ("node.yaml", NODE),
        ("cnp.yaml", CNP),
        ("np.yaml", NP),
    ];
    for (name, text) in files {
        let file = lab.write(name, text);
        let out = lab.kubectl_ok(
            &kubectl,
            &admin,
            &["create", "--validate=false", "-f", &file],
        );
        assert!(out.contains("created"), "create {name}: {out}");
    }
    let again = lab.kubectl(
        &kubectl,
        &admin,
        &["create", "--validate=false", "-f", &lab.path("np.yaml")],
    );
    assert!(
        again.stderr.contains("AlreadyExists") || again.stderr.contains("already exists"),
        "{again:?}"
    );

    let node = json_of(&lab.kubectl_ok(&kubectl, &admin, &["get", "node", "node-1", "-o", "json"]));
    assert_eq!(node["spec"]["podCIDRs"][1], "fd00:10:1::/64", "{node}");
    assert_eq!(
        node["status"]["addresses"][0]["address"], "198.18.0.1",
        "{node}"
    );
    assert!(
        node["metadata"]["uid"].is_string() && node["metadata"]["creationTimestamp"].is_string()
    );
    let nodes = json_of(&lab.kubectl_ok(&kubectl, &admin, &["get", "nodes", "-o", "json"]));
    assert_eq!(nodes["items"].as_array().map(Vec::len), Some(1), "{nodes}");
    let cnps = lab.kubectl_ok(&kubectl, &admin, &["get", "cnp", "-A"]);
    assert!(cnps.contains("lab") && cnps.contains("web"), "{cnps}");
    let np = json_of(&lab.kubectl_ok(
        &kubectl,
        &admin,
        &["get", "np", "-n", "lab", "deny-all", "-o", "json"],
    ));
    assert_eq!(
        np["spec"]["policyTypes"],
        serde_json::json!(["Ingress"]),
        "{np}"
    );

    let replaced = NP.replace("[Ingress]", "[Ingress, Egress]");
    let file = lab.write("np.yaml", &replaced);
    let out = lab.kubectl_ok(
        &kubectl,
        &admin,
        &["replace", "--validate=false", "-f", &file],
    );
    assert!(out.contains("replaced"), "{out}");
    let np = json_of(&lab.kubectl_ok(
        &kubectl,
        &admin,
        &["get", "np", "-n", "lab", "deny-all", "-o", "json"],
    ));
    assert_eq!(
        np["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"]),
        "{np}"
    );
    assert_eq!(np["metadata"]["generation"], 2, "{np}");

    // Stopped (SIGTERM: exit 0) and started again from the state file: nothing lost.
    let ca = std::fs::read(lab.path("tls/ca.crt")).unwrap();
    server.stop();
    let mut server = Server::start(&lab);
    let ca_again = std::fs::read(lab.path("tls/ca.crt")).unwrap();
    assert_eq!(ca, ca_again, "the CA is reused on restart");
    let admin = lab.kubeconfig(&server, "admin-token");
    let nodes = lab.kubectl_ok(&kubectl, &admin, &["get", "nodes", "-o", "json"]);
    assert_eq!(
        json_of(&nodes)["items"][0]["spec"]["podCIDRs"][0],
        "10.244.1.0/24",
        "{nodes}"
    );
    let np = json_of(&lab.kubectl_ok(
        &kubectl,
        &admin,
        &["get", "np", "-n", "lab", "deny-all", "-o", "json"],
    ));
    assert_eq!(
        np["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"]),
        "{np}"
    );

    // The agent may read Nodes but not patch them.
    let agent = lab.kubeconfig(&server, "agent-token");
    lab.kubectl_ok(&kubectl, &agent, &["get", "nodes", "-o", "json"]);
    let patch = [
        "patch",
        "node",
        "node-1",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"annotations":{"a":"b"}}}"#,
    ];
    let refused = lab.kubectl(&kubectl, &agent, &patch);
    assert!(!refused.ok, "patch must be refused: {refused:?}");
    let want = format!(
        "nodes \"node-1\" is forbidden: User \"{AGENT}\" cannot patch resource \"nodes\" in API \
         group \"\" at the cluster scope"
    );
    assert!(
        refused.stderr.contains("(Forbidden)") && refused.stderr.contains(&want),
        "{refused:?}"
    );
    let bad_token = lab.kubeconfig(&server, "no-such-token");
    let unauthorized = lab.kubectl(&kubectl, &bad_token, &["get", "nodes"]);
    assert!(
        unauthorized.stderr.contains("Unauthorized"),
        "{unauthorized:?}"
    );

    let out = lab.kubectl_ok(&kubectl, &admin, &["delete", "-f", &lab.path("np.yaml")]);
    assert!(out.contains("deleted"), "{out}");
    for name in ["cnp.yaml", "node.yaml", "ns.yaml"] {
        lab.kubectl_ok(&kubectl, &admin, &["delete", "-f", &lab.path(name)]);
    }
    let gone = lab.kubectl(&kubectl, &admin, &["get", "node", "node-1"]);
    assert!(
        gone.stderr.contains("NotFound") || gone.stderr.contains("not found"),
        "{gone:?}"
    );
    server.stop();

    audit_log_records_the_refusal(&lab);
}

/// The refused patch is in the audit log, and replaying the log against the role with `patch`
/// granted allows it while every request that was allowed stays allowed.
fn audit_log_records_the_refusal(lab: &Lab) {
    let records = audit::read(&lab.audit()).unwrap();
    let refused: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.user == AGENT && r.verb == "patch" && r.resource == "nodes")
        .collect();
    assert_eq!(refused.len(), 1, "{records:#?}");
    assert_eq!((refused[0].code, refused[0].name.as_str()), (403, "node-1"));
    let with_patch = RBAC.replace(
        "resources: [nodes, namespaces, pods, services]\n  verbs: [get, list, watch]",
        "resources: [nodes, namespaces, pods, services]\n  verbs: [get, list, watch, patch]",
    );
    let authorizer = Authorizer::from_yaml(&with_patch).unwrap();
    assert_eq!(
        authorizer.authorize(&refused[0].attributes()),
        Decision::Allow
    );
    let as_served = Authorizer::from_yaml(RBAC).unwrap();
    for r in records.iter().filter(|r| r.user == AGENT && r.code < 400) {
        assert_eq!(
            as_served.authorize(&r.attributes()),
            Decision::Allow,
            "{r:?}"
        );
    }
}
