//! Remote clusters' objects for the policy loop (pure). The loop takes one object set; with a
//! cluster mesh it is this cluster's set plus, for every admitted remote cluster, its Pods and
//! Namespaces under the kind `<cluster>/<Kind>` (never a real kind: they contain a `/`), and
//! one scope entry naming this cluster and every cluster's ID. [`split`] takes such a set apart
//! again when it is loaded — also a saved one after a restart, which therefore keeps the
//! remote endpoints it was enforced with.

use std::collections::BTreeMap;
use std::sync::Arc;

use keymgr::store::objects::{ObjectRef, ObjectSet, StoredObject};
use serde::{Deserialize, Serialize};

/// The kind of the scope entry.
const SCOPE_KIND: &str = "wiremesh.io/ClusterMeshScope";
/// The kinds taken from a remote cluster: who its endpoints are, not its policies (those apply
/// in its own cluster).
const REMOTE_KINDS: [&str; 2] = ["Pod", "Namespace"];

/// This cluster's name and every admitted cluster's ID, this one's included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub local: String,
    pub ids: BTreeMap<String, u8>,
}

/// What the cluster mesh hands the policy loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshObjects {
    /// `Some` with a cluster mesh (`clusterID` set).
    pub scope: Option<Scope>,
    /// Each admitted remote cluster's objects, as its store last listed them.
    pub clusters: BTreeMap<String, Arc<ObjectSet>>,
}

/// `local` with `mesh` folded in; `local` itself when there is no cluster mesh.
pub fn combine(local: &Arc<ObjectSet>, mesh: &MeshObjects) -> Arc<ObjectSet> {
    let Some(scope) = &mesh.scope else {
        return local.clone();
    };
    let mut out = ObjectSet::clone(local);
    let scope_ref = ObjectRef {
        kind: SCOPE_KIND.into(),
        namespace: String::new(),
        name: "scope".into(),
    };
    let manifest = serde_json::to_string(scope).unwrap_or_default();
    let origin = "clusterMesh".to_string();
    out.objects
        .insert(scope_ref, StoredObject { origin, manifest });
    for (cluster, set) in &mesh.clusters {
        let wanted = set
            .objects
            .iter()
            .filter(|(r, _)| REMOTE_KINDS.contains(&r.kind.as_str()));
        for (r, o) in wanted {
            let r = ObjectRef {
                kind: format!("{cluster}/{}", r.kind),
                ..r.clone()
            };
            let o = StoredObject {
                origin: format!("cluster {cluster}: {}", o.origin),
                manifest: o.manifest.clone(),
            };
            out.objects.insert(r, o);
        }
    }
    Arc::new(out)
}

/// A combined set taken apart.
#[derive(Debug, Default)]
pub struct Parts<'a> {
    /// This cluster's objects: (origin, manifest).
    pub local: Vec<(&'a str, &'a str)>,
    pub scope: Option<Scope>,
    /// Each remote cluster's Pods and Namespaces: (origin, manifest).
    pub remote: BTreeMap<&'a str, Vec<(&'a str, &'a str)>>,
}

pub fn split(set: &ObjectSet) -> Parts<'_> {
    let mut parts = Parts::default();
    for (r, o) in &set.objects {
        let text = (o.origin.as_str(), o.manifest.as_str());
        if r.kind == SCOPE_KIND {
            parts.scope = serde_json::from_str(&o.manifest).ok();
        } else if let Some((cluster, _)) = r.kind.split_once('/') {
            parts.remote.entry(cluster).or_default().push(text);
        } else {
            parts.local.push(text);
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(objects: &[(&str, &str, &str)]) -> Arc<ObjectSet> {
        let objects = objects
            .iter()
            .map(|(kind, name, manifest)| {
                let r = ObjectRef {
                    kind: kind.to_string(),
                    namespace: "app".into(),
                    name: name.to_string(),
                };
                let o = StoredObject {
                    origin: format!("{kind}/{name}"),
                    manifest: manifest.to_string(),
                };
                (r, o)
            })
            .collect();
        Arc::new(ObjectSet {
            objects,
            synced: true,
            ..ObjectSet::default()
        })
    }

    #[test]
    fn remote_pods_and_namespaces_travel_with_the_scope_and_come_apart_again() {
        let local = set(&[
            ("Pod", "a", "local pod"),
            ("NetworkPolicy", "p", "local np"),
        ]);
        let remote = set(&[
            ("Pod", "b", "remote pod"),
            ("Namespace", "app", "remote ns"),
            ("CiliumNetworkPolicy", "q", "remote policy"),
        ]);
        // Without a cluster mesh the set is the local one, untouched.
        let none = MeshObjects {
            clusters: [("c2".to_string(), remote.clone())].into(),
            ..MeshObjects::default()
        };
        assert!(Arc::ptr_eq(&combine(&local, &none), &local));

        let scope = Scope {
            local: "c1".into(),
            ids: [("c1".to_string(), 1), ("c2".to_string(), 2)].into(),
        };
        let mesh = MeshObjects {
            scope: Some(scope.clone()),
            ..none
        };
        let combined = combine(&local, &mesh);
        assert!(combined.synced);
        let parts = split(&combined);
        assert_eq!(parts.scope, Some(scope));
        let manifests =
            |v: &[(&str, &str)]| v.iter().map(|(_, m)| m.to_string()).collect::<Vec<_>>();
        assert_eq!(manifests(&parts.local), ["local np", "local pod"]);
        // The remote policy stays in its cluster.
        assert_eq!(manifests(&parts.remote["c2"]), ["remote ns", "remote pod"]);
        assert!(parts.remote["c2"]
            .iter()
            .all(|(o, _)| o.starts_with("cluster c2: ")));
    }
}
