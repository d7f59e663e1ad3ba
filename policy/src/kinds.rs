//! Which Kubernetes object kinds wiremesh reads, and which policy kinds it refuses: the one
//! list of both, used by the manifest loader and by the store (which keeps only the kinds
//! listed here, under names derived from them).
//!
//! A policy kind wiremesh does not enforce is refused by name, never skipped: a user who applies
//! an Istio DENY policy and sees it accepted believes it is in force. Objects that are not
//! policies (Services, Deployments, ConfigMaps) are skipped with a note, so that a
//! `kubectl get -A -o yaml` dump loads. This module must never widen the set of kinds that is
//! skipped: a kind that may restrict traffic belongs among the refused.

/// A kind wiremesh loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Namespace,
    Node,
    Pod,
    NetworkPolicy,
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
}

/// One kind wiremesh loads: the apiVersion it is read under, its name and scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub object: ObjectKind,
    pub api_version: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

/// Every kind wiremesh loads and stores.
pub const KINDS: [Kind; 6] = [
    kind(ObjectKind::Namespace, "v1", "Namespace", false),
    kind(ObjectKind::Node, "v1", "Node", false),
    kind(ObjectKind::Pod, "v1", "Pod", true),
    kind(
        ObjectKind::NetworkPolicy,
        "networking.k8s.io/v1",
        "NetworkPolicy",
        true,
    ),
    kind(
        ObjectKind::CiliumNetworkPolicy,
        "cilium.io/v2",
        "CiliumNetworkPolicy",
        true,
    ),
    kind(
        ObjectKind::CiliumClusterwideNetworkPolicy,
        "cilium.io/v2",
        "CiliumClusterwideNetworkPolicy",
        false,
    ),
];

const fn kind(
    object: ObjectKind,
    api_version: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Kind {
    Kind {
        object,
        api_version,
        kind,
        namespaced,
    }
}

/// The loaded kind named `kind` (whatever its apiVersion).
pub fn by_name(kind: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// API groups all of whose kinds are access policy.
const POLICY_GROUPS: [&str; 2] = [
    // Istio AuthorizationPolicy, PeerAuthentication, RequestAuthentication.
    "security.istio.io",
    // AdminNetworkPolicy, BaselineAdminNetworkPolicy, ClusterNetworkPolicy.
    "policy.networking.k8s.io",
];

/// Why an object of `api_version`/`kind` that wiremesh does not load must be refused rather
/// than skipped, as (field to name, message): `Some` for a policy kind (any `*NetworkPolicy` of any group — another
/// apiVersion of a loaded one, Calico's, Antrea's —, every kind of Istio's security group and
/// of the network policy API group, Cilium's other `*Policy` kinds such as
/// CiliumEgressGatewayPolicy and CiliumLocalRedirectPolicy, which decide where traffic may go
/// or which address it leaves with).
pub fn refusal(api_version: &str, kind: &str) -> Option<(&'static str, String)> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let policy = kind.ends_with("NetworkPolicy")
        || POLICY_GROUPS.contains(&group)
        || (group == "cilium.io" && kind.ends_with("Policy"));
    if !policy {
        return None;
    }
    Some(match by_name(kind) {
        Some(k) => (
            "apiVersion",
            format!(
                "{api_version} is not supported for {kind} (use {}); refused rather than \
             skipped, since skipping a policy changes what is allowed",
                k.api_version
            ),
        ),
        None => (
            "kind",
            format!(
                "{api_version} {kind} is a policy kind wiremesh does not enforce; refused rather \
             than skipped, since skipping it would leave what it denies allowed"
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_refused_and_other_objects_are_not() {
        for (v, k) in [
            ("security.istio.io/v1", "AuthorizationPolicy"),
            ("security.istio.io/v1beta1", "PeerAuthentication"),
            ("security.istio.io/v1", "RequestAuthentication"),
            ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"),
            (
                "policy.networking.k8s.io/v1alpha1",
                "BaselineAdminNetworkPolicy",
            ),
            ("networking.k8s.io/v1beta1", "NetworkPolicy"),
            ("cilium.io/v2alpha1", "CiliumNetworkPolicy"),
            ("cilium.io/v2", "CiliumEgressGatewayPolicy"),
            ("cilium.io/v2", "CiliumLocalRedirectPolicy"),
            ("crd.projectcalico.org/v1", "GlobalNetworkPolicy"),
            ("crd.antrea.io/v1beta1", "ClusterNetworkPolicy"),
        ] {
            let (_, why) = refusal(v, k).unwrap_or_else(|| panic!("{v} {k} must be refused"));
            assert!(why.contains(v), "{why}");
        }
        for (v, k) in [
            ("v1", "Service"),
            ("v1", "ConfigMap"),
            ("apps/v1", "Deployment"),
            ("networking.k8s.io/v1", "Ingress"),
            ("cilium.io/v2alpha1", "CiliumCIDRGroup"),
            ("networking.istio.io/v1", "VirtualService"),
        ] {
            assert_eq!(refusal(v, k), None, "{v} {k}");
        }
    }

    #[test]
    fn names_are_unique() {
        for k in KINDS {
            assert_eq!(by_name(k.kind), Some(&k));
        }
    }
}
