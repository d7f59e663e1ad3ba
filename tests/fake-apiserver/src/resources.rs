//! The resources the fake API server serves: one table, read by routing, discovery, storage and
//! the in-process helpers. It must never hold state.

/// One served resource.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// Empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// Served by a CustomResourceDefinition, which tests can "uninstall" per group.
    pub crd: bool,
    /// `kubectl get` short names.
    pub short_names: &'static [&'static str],
}

impl Resource {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn res(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> Resource {
    let crd = matches!(group.as_bytes(), b"cilium.io" | b"security.istio.io");
    Resource {
        group,
        version,
        plural,
        kind,
        namespaced,
        crd,
        short_names,
    }
}

/// Everything served: what `policy::kinds::KINDS` lists (the agent's object store follows each
/// of them) plus `configmaps` (the store's claims).
pub const RESOURCES: [Resource; 10] = [
    res("", "v1", "nodes", "Node", false, &["no"]),
    res("", "v1", "namespaces", "Namespace", false, &["ns"]),
    res("", "v1", "pods", "Pod", true, &["po"]),
    res("", "v1", "services", "Service", true, &["svc"]),
    res("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
    res(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        &["netpol", "np"],
    ),
    res(
        "cilium.io",
        "v2",
        "ciliumnetworkpolicies",
        "CiliumNetworkPolicy",
        true,
        &["cnp", "ciliumnp"],
    ),
    res(
        "cilium.io",
        "v2",
        "ciliumclusterwidenetworkpolicies",
        "CiliumClusterwideNetworkPolicy",
        false,
        &["ccnp"],
    ),
    res(
        "security.istio.io",
        "v1",
        "authorizationpolicies",
        "AuthorizationPolicy",
        true,
        &["ap"],
    ),
    res(
        "security.istio.io",
        "v1",
        "peerauthentications",
        "PeerAuthentication",
        true,
        &["pa"],
    ),
];

/// The resource of `kind`, whatever its group.
pub fn of_kind(kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

/// The resource at `group`/`version`/`plural` in API paths.
pub fn at(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The `group/version`s served, the core `v1` first.
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in &RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind the agent's object store follows (`policy::kinds::KINDS`) is served, under
    /// the apiVersion, plural and scope it follows.
    #[test]
    fn serves_every_followed_kind() {
        for k in &policy::kinds::KINDS {
            let r = of_kind(k.kind).unwrap_or_else(|| panic!("{} is not served", k.kind));
            assert_eq!(r.api_version(), k.api_version, "{}", k.kind);
            assert_eq!(
                (r.plural, r.namespaced, r.crd),
                (k.plural, k.namespaced, k.crd)
            );
        }
        assert!(at("", "v1", "configmaps").is_some_and(|r| r.namespaced));
    }
}
