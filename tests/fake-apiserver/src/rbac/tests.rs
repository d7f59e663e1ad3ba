//! The RBAC evaluator, one rule feature at a time, each with a request it must deny.

use super::*;

const RBAC: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: wiremesh, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: wiremesh}
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch, patch]
- apiGroups: [cilium.io]
  resources: [ciliumnetworkpolicies, ciliumclusterwidenetworkpolicies]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [wiremesh-claims]
  verbs: [get, update]
- apiGroups: [""]
  resources: [pods/status]
  verbs: [patch]
- apiGroups: ["*"]
  resources: ["*/scale"]
  verbs: [get]
- nonResourceURLs: ["/metrics", "/logs/*"]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: wiremesh}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: wiremesh}
subjects:
- {kind: ServiceAccount, name: wiremesh, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: everything}
rules:
- apiGroups: ["*"]
  resources: ["*"]
  verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cm-writer, namespace: team}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cm-writer, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-writer}
subjects:
- {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: admins, namespace: lab}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: everything}
subjects:
- {kind: Group, name: lab-admins, apiGroup: rbac.authorization.k8s.io}
- {kind: ServiceAccount, name: robot}
"#;

const SA: &str = "system:serviceaccount:kube-system:wiremesh";

fn authorizer() -> Authorizer {
    Authorizer::from_yaml(RBAC).expect("RBAC fixture loads")
}

fn req(user: &str, verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    Attributes {
        user: user.into(),
        groups: vec!["system:authenticated".into()],
        verb: verb.into(),
        api_group: group.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        namespace: ns.into(),
        name: name.into(),
        path: String::new(),
    }
}

fn allowed(a: &Attributes) -> bool {
    authorizer().authorize(a) == Decision::Allow
}

#[test]
fn verbs_and_resources_of_a_cluster_role_binding() {
    assert!(allowed(&req(SA, "patch", "", "nodes", "", "node-1")));
    assert!(allowed(&req(SA, "watch", "", "nodes", "", "")));
    assert!(!allowed(&req(SA, "delete", "", "nodes", "", "node-1")));
    assert!(!allowed(&req(SA, "list", "", "pods", "", "")));
    assert!(!allowed(&req("someone-else", "get", "", "nodes", "", "n")));
}

#[test]
fn api_groups_must_match() {
    let cnp = "ciliumnetworkpolicies";
    assert!(allowed(&req(SA, "list", "cilium.io", cnp, "a", "")));
    assert!(!allowed(&req(SA, "list", "", cnp, "a", "")));
    assert!(!allowed(&req(
        SA,
        "list",
        "networking.k8s.io",
        "networkpolicies",
        "",
        ""
    )));
}

#[test]
fn resource_names_limit_named_verbs() {
    let cm = "configmaps";
    assert!(allowed(&req(
        SA,
        "get",
        "",
        cm,
        "kube-system",
        "wiremesh-claims"
    )));
    assert!(allowed(&req(
        SA,
        "update",
        "",
        cm,
        "kube-system",
        "wiremesh-claims"
    )));
    assert!(!allowed(&req(SA, "get", "", cm, "kube-system", "other")));
    // A list has no name: a rule with resourceNames never grants it.
    assert!(!allowed(&req(SA, "list", "", cm, "kube-system", "")));
}

#[test]
fn subresources_match_exactly_or_by_star() {
    assert!(allowed(&req(SA, "patch", "", "pods/status", "a", "p")));
    assert!(!allowed(&req(SA, "patch", "", "pods", "a", "p")));
    assert!(!allowed(&req(SA, "patch", "", "nodes/status", "", "n")));
    assert!(allowed(&req(
        SA,
        "get",
        "apps",
        "deployments/scale",
        "a",
        "d"
    )));
    assert!(!allowed(&req(
        SA,
        "update",
        "apps",
        "deployments/scale",
        "a",
        "d"
    )));
}

#[test]
fn non_resource_urls_exact_and_prefix() {
    let mut a = req(SA, "get", "", "", "", "");
    a.path = "/metrics".into();
    assert!(allowed(&a));
    a.path = "/logs/kubelet.log".into();
    assert!(allowed(&a));
    a.path = "/metricsz".into();
    assert!(!allowed(&a));
    a.path = "/metrics".into();
    a.verb = "post".into();
    assert!(!allowed(&a));
}

#[test]
fn role_binding_grants_only_in_its_namespace() {
    assert!(allowed(&req(
        "alice",
        "create",
        "",
        "configmaps",
        "team",
        ""
    )));
    assert!(!allowed(&req(
        "alice",
        "create",
        "",
        "configmaps",
        "other",
        ""
    )));
    assert!(!allowed(&req("alice", "create", "", "configmaps", "", "")));
    assert!(!allowed(&req(
        "alice",
        "delete",
        "",
        "configmaps",
        "team",
        "x"
    )));
}

#[test]
fn role_binding_to_a_cluster_role_and_groups_and_service_accounts() {
    let mut a = req("bob", "delete", "", "pods", "lab", "p");
    assert!(!allowed(&a));
    a.groups.push("lab-admins".into());
    assert!(allowed(&a));
    a.namespace = "elsewhere".into();
    assert!(
        !allowed(&a),
        "the ClusterRole is granted only in the binding's namespace"
    );
    // A ServiceAccount subject without a namespace is the binding's namespace's.
    assert!(allowed(&req(
        "system:serviceaccount:lab:robot",
        "get",
        "",
        "pods",
        "lab",
        "p"
    )));
    assert!(!allowed(&req(
        "system:serviceaccount:other:robot",
        "get",
        "",
        "pods",
        "lab",
        "p"
    )));
    // Cluster-scoped resources are out of a RoleBinding's reach.
    let mut n = req("bob", "get", "", "nodes", "", "n");
    n.groups.push("lab-admins".into());
    assert!(!allowed(&n));
}

#[test]
fn masters_and_discovery() {
    let mut a = req("root", "delete", "", "nodes", "", "n");
    assert!(!allowed(&a));
    a.groups.push("system:masters".into());
    assert!(allowed(&a));
    let mut d = req("nobody", "get", "", "", "", "");
    for path in [
        "/api",
        "/api/v1",
        "/apis",
        "/apis/cilium.io/v2",
        "/version",
        "/openapi/v2",
    ] {
        d.path = path.into();
        assert!(allowed(&d), "{path}");
    }
    d.path = "/metrics".into();
    assert!(!allowed(&d));
    d.path = "/api".into();
    d.groups.clear();
    assert!(!allowed(&d), "discovery is for authenticated users only");
}

#[test]
fn denial_messages_read_like_the_real_ones() {
    let a = req(SA, "delete", "", "nodes", "", "node-1");
    assert_eq!(
        authorizer().authorize(&a),
        Decision::Deny(
            "nodes \"node-1\" is forbidden: User \"system:serviceaccount:kube-system:wiremesh\" \
             cannot delete resource \"nodes\" in API group \"\" at the cluster scope"
                .into()
        )
    );
    let a = req(
        "alice",
        "list",
        "cilium.io",
        "ciliumnetworkpolicies",
        "team",
        "",
    );
    assert_eq!(
        forbidden_message(&a),
        "ciliumnetworkpolicies is forbidden: User \"alice\" cannot list resource \
         \"ciliumnetworkpolicies\" in API group \"cilium.io\" in the namespace \"team\""
    );
}

#[test]
fn other_kinds_are_ignored_and_bad_rbac_objects_named() {
    let empty =
        Authorizer::from_yaml("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\n")
            .expect("non-RBAC documents load");
    assert!(empty.authorize(&req(SA, "get", "", "nodes", "", "n")) != Decision::Allow);
    let bad = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\n\
               metadata: {name: broken}\nrules: 7\n";
    let err = Authorizer::from_yaml(bad)
        .expect_err("rules must be a list")
        .to_string();
    assert!(err.contains("ClusterRole \"broken\""), "{err}");
}
