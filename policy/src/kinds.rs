//! Which Kubernetes object kinds wiremesh reads, and which policy kinds it refuses: the one
//! table of both, used by the manifest loader and by the stores (which keep only the kinds
//! listed here, under names derived from them; the Kubernetes store follows them at the API
//! paths derived from their group, version and plural).
//!
//! A policy kind wiremesh does not enforce is refused by name, never skipped: a user who applies
//! an Istio RequestAuthentication and sees it accepted believes it is in force. Objects that are
//! not policies (Deployments, ConfigMaps) are skipped with a note, so that a
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
    /// Core `v1 Service`: only its `spec.selector`, which Istio `targetRefs` resolve through.
    Service,
    AuthorizationPolicy,
    PeerAuthentication,
}

/// One kind wiremesh loads: the apiVersion it is read under (and its group and version apart),
/// its name, its resource name in API paths, its scope, and whether a CRD serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub object: ObjectKind,
    /// `group/version`, or `version` for the core group.
    pub api_version: &'static str,
    /// Empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The resource name in API paths (`/api/v1/namespaces/x/pods`).
    pub plural: &'static str,
    pub namespaced: bool,
    /// Served by a CustomResourceDefinition, which a cluster may not have installed.
    pub crd: bool,
    /// Other apiVersions manifests may use for the same objects (the API server serves them
    /// all; the Kubernetes store follows `api_version`).
    pub also_accepted: &'static [&'static str],
}

/// Every kind wiremesh loads and stores.
pub const KINDS: [Kind; 9] = [
    Kind {
        object: ObjectKind::Namespace,
        api_version: "v1",
        group: "",
        version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        crd: false,
        also_accepted: &[],
    },
    Kind {
        object: ObjectKind::Node,
        api_version: "v1",
        group: "",
        version: "v1",
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        crd: false,
        also_accepted: &[],
    },
    Kind {
        object: ObjectKind::Pod,
        api_version: "v1",
        group: "",
        version: "v1",
        kind: "Pod",
        plural: "pods",
        namespaced: true,
        crd: false,
        also_accepted: &[],
    },
    Kind {
        object: ObjectKind::NetworkPolicy,
        api_version: "networking.k8s.io/v1",
        group: "networking.k8s.io",
        version: "v1",
        kind: "NetworkPolicy",
        plural: "networkpolicies",
        namespaced: true,
        crd: false,
        also_accepted: &[],
    },
    Kind {
        object: ObjectKind::CiliumNetworkPolicy,
        api_version: "cilium.io/v2",
        group: "cilium.io",
        version: "v2",
        kind: "CiliumNetworkPolicy",
        plural: "ciliumnetworkpolicies",
        namespaced: true,
        crd: true,
        also_accepted: &[],
    },
    Kind {
        object: ObjectKind::CiliumClusterwideNetworkPolicy,
        api_version: "cilium.io/v2",
        group: "cilium.io",
        version: "v2",
        kind: "CiliumClusterwideNetworkPolicy",
        plural: "ciliumclusterwidenetworkpolicies",
        namespaced: false,
        crd: true,
        also_accepted: &[],
    },
    Kind {
        object: ObjectKind::Service,
        api_version: "v1",
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
        namespaced: true,
        crd: false,
        also_accepted: &[],
    },
    Kind {
        object: ObjectKind::AuthorizationPolicy,
        api_version: "security.istio.io/v1",
        group: "security.istio.io",
        version: "v1",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        namespaced: true,
        crd: true,
        also_accepted: &["security.istio.io/v1beta1"],
    },
    Kind {
        object: ObjectKind::PeerAuthentication,
        api_version: "security.istio.io/v1",
        group: "security.istio.io",
        version: "v1",
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        namespaced: true,
        crd: true,
        also_accepted: &["security.istio.io/v1beta1"],
    },
];

/// The loaded kind named `kind` (whatever its apiVersion).
pub fn by_name(kind: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// The loaded kind of `api_version`/`kind`: its own apiVersion or one it also accepts.
pub fn loaded(api_version: &str, kind: &str) -> Option<&'static Kind> {
    by_name(kind).filter(|k| k.api_version == api_version || k.also_accepted.contains(&api_version))
}

/// API groups all of whose kinds are access policy.
const POLICY_GROUPS: [&str; 2] = [
    // Istio RequestAuthentication (JWT: not enforced); AuthorizationPolicy and
    // PeerAuthentication are loaded, under the versions the table names.
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
    if loaded(api_version, kind).is_some() {
        return None;
    }
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
            ("security.istio.io/v1alpha1", "AuthorizationPolicy"),
            ("security.istio.io/v1alpha1", "PeerAuthentication"),
            ("security.istio.io/v1", "RequestAuthentication"),
            ("security.istio.io/v1beta1", "RequestAuthentication"),
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
            ("security.istio.io/v1", "AuthorizationPolicy"),
            ("security.istio.io/v1beta1", "PeerAuthentication"),
            ("v1", "ConfigMap"),
            ("apps/v1", "Deployment"),
            ("networking.k8s.io/v1", "Ingress"),
            ("cilium.io/v2alpha1", "CiliumCIDRGroup"),
            ("networking.istio.io/v1", "VirtualService"),
        ] {
            assert_eq!(refusal(v, k), None, "{v} {k}");
        }
    }

    /// The built-in kinds' entries are what k8s-openapi says of them; the Cilium ones follow
    /// the same rules (apiVersion is group/version, plural is the lowercase kind + "ies"/"s").
    #[test]
    fn the_table_agrees_with_the_api_definitions() {
        use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        use k8s_openapi::Resource;
        fn of<R: Resource>() -> (
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
        ) {
            (
                R::API_VERSION,
                R::GROUP,
                R::VERSION,
                R::KIND,
                R::URL_PATH_SEGMENT,
            )
        }
        let row = |k: &Kind| (k.api_version, k.group, k.version, k.kind, k.plural);
        let by = |o: ObjectKind| KINDS.iter().find(|k| k.object == o).expect("in the table");
        assert_eq!(row(by(ObjectKind::Namespace)), of::<Namespace>());
        assert_eq!(row(by(ObjectKind::Node)), of::<Node>());
        assert_eq!(row(by(ObjectKind::Pod)), of::<Pod>());
        assert_eq!(row(by(ObjectKind::NetworkPolicy)), of::<NetworkPolicy>());
        assert_eq!(row(by(ObjectKind::Service)), of::<Service>());
        for k in KINDS {
            let joined = if k.group.is_empty() {
                k.version.to_string()
            } else {
                format!("{}/{}", k.group, k.version)
            };
            assert_eq!(k.api_version, joined, "{}", k.kind);
            assert!(k
                .plural
                .starts_with(&k.kind.to_lowercase()[..k.kind.len() - 1]));
            assert_eq!(
                k.crd,
                k.group == "cilium.io" || k.group == "security.istio.io",
                "{}",
                k.kind
            );
        }
    }

    /// Istio serves both versions of its security kinds; a manifest may use either.
    #[test]
    fn istio_kinds_load_under_v1_and_v1beta1_only() {
        for k in ["AuthorizationPolicy", "PeerAuthentication"] {
            for v in ["security.istio.io/v1", "security.istio.io/v1beta1"] {
                assert_eq!(loaded(v, k).map(|k| k.kind), Some(k), "{v} {k}");
            }
            assert_eq!(loaded("security.istio.io/v1alpha1", k), None);
            let (field, _) = refusal("security.istio.io/v1alpha1", k).expect("refused");
            assert_eq!(field, "apiVersion");
        }
        assert_eq!(
            loaded("security.istio.io/v1", "RequestAuthentication"),
            None
        );
        let (field, _) = refusal("security.istio.io/v1", "RequestAuthentication").expect("refused");
        assert_eq!(field, "kind");
    }

    #[test]
    fn names_are_unique() {
        for k in KINDS {
            assert_eq!(by_name(k.kind), Some(&k));
        }
    }
}
