//! The cluster objects policy is made of — Namespaces, Pods (the endpoints), Nodes,
//! NetworkPolicies, CiliumNetworkPolicies and CiliumClusterwideNetworkPolicies — kept in the
//! same store as the node records, so every agent sees the same ones.
//!
//! An object is stored as its manifest (JSON) under a name derived from `kind`, namespace and
//! name; this module neither parses policy nor judges it (the agent validates the whole set with
//! the `policy` crate before anything is written, and keeps the set in force when a stored one
//! does not load). The dir store keeps one file per object in `<dir>/objects/`, etcd one key per
//! object under `<prefix>/v1/<cluster>/objects/`; with Kubernetes they are the API server's own
//! resources, listed and watched there (and written with kubectl, not by wiremesh).

pub(super) mod dir;
pub(super) mod etcd;
mod kubernetes;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

pub use dir::DirObjects;
pub use etcd::EtcdObjects;
pub use kubernetes::KubeObjects;

use super::{EtcdConfig, KubeConfig, StoreError};

/// Which object: `kind`, namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    /// `kind namespace/name` or `kind name`, as error messages name resources.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl ObjectRef {
    /// Reads `kind`, `metadata.name` and `metadata.namespace` of a manifest. Namespaced kinds
    /// without a namespace are in `default`, as with kubectl. The error names the field.
    pub fn of(manifest: &Value) -> Result<Self, ObjectRefError> {
        let kind = manifest
            .get("kind")
            .and_then(Value::as_str)
            .ok_or(ObjectRefError::NoKind)?;
        // The kinds stored are the ones the policy loader reads: one list, in `policy::kinds`.
        let Some(policy::kinds::Kind {
            kind, namespaced, ..
        }) = policy::kinds::by_name(kind).copied()
        else {
            let known: Vec<&str> = policy::kinds::KINDS.iter().map(|k| k.kind).collect();
            return Err(ObjectRefError::KindNotStored {
                kind: kind.to_string(),
                known: known.join(", "),
            });
        };
        let meta = manifest.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        check_name("metadata.name", name)?;
        let namespace = match meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
        {
            _ if !namespaced => String::new(),
            None | Some("") => "default".to_string(),
            Some(ns) => {
                check_name("metadata.namespace", ns)?;
                ns.to_string()
            }
        };
        Ok(Self {
            kind: kind.to_string(),
            namespace,
            name: name.to_string(),
        })
    }

    /// `Kind/namespace/name` with `_` for no namespace: the suffix of an etcd key.
    fn key_suffix(&self) -> String {
        let ns = if self.namespace.is_empty() {
            "_"
        } else {
            &self.namespace
        };
        format!("{}/{ns}/{}", self.kind, self.name)
    }

    fn from_key_suffix(suffix: &str) -> Option<Self> {
        let mut parts = suffix.split('/');
        let (kind, ns, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let namespace = if ns == "_" { "" } else { ns };
        Some(Self {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        })
    }

    /// `Kind_namespace_name.json` (`_` cannot occur in Kubernetes names): a dir store file.
    fn file_name(&self) -> String {
        format!("{}_{}_{}.json", self.kind, self.namespace, self.name)
    }

    fn from_file_name(file: &str) -> Option<Self> {
        let stem = file.strip_suffix(".json")?;
        let mut parts = stem.splitn(3, '_');
        let (kind, namespace, name) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Self {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

/// Names are DNS subdomains (`policy::names`): `/` and `_` never occur, so the etcd key and the
/// file name of an object name no other.
fn check_name(field: &'static str, name: &str) -> Result<(), ObjectRefError> {
    if policy::names::is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(ObjectRefError::Name {
            field,
            name: name.to_string(),
        })
    }
}

/// Why a manifest names no object wiremesh stores.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectRefError {
    #[error("field kind: missing or not a string")]
    NoKind,
    #[error("field kind: {kind:?} is not stored by wiremesh (one of {known})")]
    KindNotStored { kind: String, known: String },
    #[error("field {field}: {name:?} is not a valid name (lowercase RFC 1123 subdomain)")]
    Name { field: &'static str, name: String },
}

impl ObjectRefError {
    /// Whether the manifest is refused for its kind (and not for its name): `apply` skips such
    /// an object with a note when it names a kind at all.
    pub fn is_about_kind(&self) -> bool {
        matches!(self, Self::NoKind | Self::KindNotStored { .. })
    }
}

/// Why an entry of the dir or etcd store is not an object (the text is what `unreadable` holds).
#[derive(Debug, thiserror::Error)]
pub enum StoredObjectError {
    #[error("{0}")]
    Read(#[source] std::io::Error),
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error(transparent)]
    Ref(#[from] ObjectRefError),
    #[error("holds {object}, which belongs in {file}")]
    MisplacedFile { object: ObjectRef, file: String },
    #[error("holds {object}, which belongs under {key}")]
    MisplacedKey { object: ObjectRef, key: String },
}

/// One stored object: its manifest as JSON text, and where it is kept (a file, an etcd key)
/// for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub origin: String,
    pub manifest: String,
}

/// Every object in the store at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectSet {
    pub objects: BTreeMap<ObjectRef, StoredObject>,
    /// Entries the store holds that are not objects (a stray file or key), by origin: reported,
    /// never loaded.
    pub unreadable: BTreeMap<String, String>,
    /// Whether this is the store's content (`false` until the first listing: an agent that
    /// just restarted must not take "nothing yet" for "no policy").
    pub synced: bool,
}

/// A label set that needs an identity number: its canonical key, the number to try first (every
/// node tries the same ones in the same order) and the range (`first..end`) to allocate from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub key: String,
    pub preferred: u32,
    pub first: u32,
    pub end: u32,
}

/// The outcome of trying to create one allocation.
pub(super) enum Claim {
    Ours,
    HeldBy(String),
}

/// Most numbers one allocation tries before giving up.
const MAX_PROBES: usize = 4096;

/// Where the cluster's objects are kept, chosen with the node store.
pub enum ObjectStore {
    Dir(DirObjects),
    Etcd(Box<EtcdObjects>),
    /// Objects are the Kubernetes API's own resources, followed there; wiremesh does not write
    /// them (kubectl does), but allocates identities there.
    Kubernetes(Box<KubeObjects>),
    /// A store that holds no objects (so no policy) and takes none.
    Unsupported {
        why: String,
    },
}

impl ObjectStore {
    pub fn dir(store_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self::Dir(DirObjects::open(&store_dir.join("objects"))?))
    }

    /// Must be called inside a tokio runtime.
    pub fn etcd(config: &EtcdConfig, cluster: &str) -> Result<Self, StoreError> {
        Ok(Self::Etcd(Box::new(EtcdObjects::start(config, cluster)?)))
    }

    /// Must be called inside a tokio runtime.
    pub fn kubernetes(config: &KubeConfig) -> Result<Self, StoreError> {
        Ok(Self::Kubernetes(Box::new(KubeObjects::start(config)?)))
    }

    /// Every object, updated as the store changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ObjectSet>> {
        match self {
            Self::Dir(s) => s.subscribe(),
            Self::Etcd(s) => s.subscribe(),
            Self::Kubernetes(s) => s.subscribe(),
            Self::Unsupported { .. } => {
                let none = ObjectSet {
                    synced: true,
                    ..ObjectSet::default()
                };
                watch::channel(Arc::new(none)).1
            }
        }
    }

    /// Writes `objects` (manifests as JSON) and removes `deletes`, all or nothing where the
    /// backend allows (one etcd transaction; the dir store writes each file atomically).
    pub async fn write(
        &self,
        objects: Vec<(ObjectRef, String)>,
        deletes: Vec<ObjectRef>,
    ) -> Result<(), StoreError> {
        match self {
            Self::Dir(s) => s.write(objects, deletes).await,
            Self::Etcd(s) => s.write(objects, deletes).await,
            Self::Kubernetes(s) => Err(StoreError::Config {
                field: "store.kind",
                value: s.describe(),
                reason: "objects are the Kubernetes API's own: apply and delete them with kubectl",
            }),
            Self::Unsupported { why } => Err(StoreError::Config {
                field: "store.kind",
                value: why.clone(),
                reason: "this store does not take objects from wiremesh apply/delete",
            }),
        }
    }

    /// Gives each of `wanted` a number cluster-wide: the number already allocated to its key, or
    /// the first free one from its preferred number on, created so that two agents racing for a
    /// number never both get it (an etcd transaction on the key's absence; an exclusive link in
    /// the dir store; a ConfigMap created with POST in Kubernetes). No two keys ever share a
    /// number. Returns key → number.
    pub async fn allocate(&self, wanted: Vec<Wanted>) -> Result<BTreeMap<String, u32>, StoreError> {
        let mut table = match self {
            Self::Dir(s) => s.identities().await?,
            Self::Etcd(s) => s.identities().await?,
            Self::Kubernetes(s) => s.identities().await?,
            Self::Unsupported { .. } => return Ok(BTreeMap::new()),
        };
        let mut by_key: BTreeMap<String, u32> =
            table.iter().map(|(id, key)| (key.clone(), *id)).collect();
        let mut out = BTreeMap::new();
        for w in wanted {
            if let Some(id) = by_key.get(&w.key) {
                out.insert(w.key, *id);
                continue;
            }
            let span = w.end.saturating_sub(w.first).max(1);
            let mut id = w.preferred.clamp(w.first, w.end.saturating_sub(1));
            let mut found = None;
            for _ in 0..MAX_PROBES {
                let holder = match table.get(&id) {
                    Some(holder) => holder.clone(),
                    None => match self.claim(id, &w.key).await? {
                        Claim::Ours => w.key.clone(),
                        Claim::HeldBy(holder) => holder,
                    },
                };
                table.insert(id, holder.clone());
                if holder == w.key {
                    found = Some(id);
                    break;
                }
                id = w.first + (id - w.first + 1) % span;
            }
            let Some(id) = found else {
                return Err(StoreError::Config {
                    field: "identities",
                    value: w.key,
                    reason: "no free identity number near its preferred one",
                });
            };
            by_key.insert(w.key.clone(), id);
            out.insert(w.key, id);
        }
        Ok(out)
    }

    async fn claim(&self, id: u32, key: &str) -> Result<Claim, StoreError> {
        match self {
            Self::Dir(s) => s.claim(id, key).await,
            Self::Etcd(s) => s.claim(id, key).await,
            Self::Kubernetes(s) => s.claim(id, key).await,
            Self::Unsupported { .. } => Ok(Claim::Ours),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Dir(s) => format!("dir:{}", s.path().display()),
            Self::Etcd(s) => s.describe().to_string(),
            Self::Kubernetes(s) => s.describe(),
            Self::Unsupported { why } => why.clone(),
        }
    }
}

/// Another cluster's objects, followed read-only for the cluster mesh (the agent uses its Pods
/// and Namespaces): the type has no way to write or allocate.
pub struct RemoteObjects(ObjectStore);

impl RemoteObjects {
    /// `cluster`'s objects in the etcd at `config`. Must be called inside a tokio runtime.
    pub fn etcd(config: &EtcdConfig, cluster: &str) -> Result<Self, StoreError> {
        ObjectStore::etcd(config, cluster).map(Self)
    }

    /// The objects of the dir store `store_dir` (another cluster's), which must already hold
    /// them: nothing is created there.
    pub fn dir(store_dir: &Path) -> Result<Self, StoreError> {
        let path = store_dir.join("objects");
        if !path.is_dir() {
            return Err(StoreError::Io {
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no objects directory (another cluster's store is never created here)",
                ),
                path,
            });
        }
        Ok(Self(ObjectStore::Dir(DirObjects::open(&path)?)))
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ObjectSet>> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_come_from_the_manifest_with_kubectl_defaults() {
        let np = serde_json::json!({"kind": "NetworkPolicy", "metadata": {"name": "deny"}});
        let r = ObjectRef::of(&np).unwrap();
        assert_eq!(r.namespace, "default");
        assert_eq!(r.to_string(), "NetworkPolicy default/deny");
        let ns =
            serde_json::json!({"kind": "Namespace", "metadata": {"name": "x", "namespace": "y"}});
        assert_eq!(ObjectRef::of(&ns).unwrap().to_string(), "Namespace x");
        let cm = serde_json::json!({"kind": "ConfigMap", "metadata": {"name": "s"}});
        assert!(ObjectRef::of(&cm)
            .unwrap_err()
            .to_string()
            .contains("\"ConfigMap\""));
        let bad = serde_json::json!({"kind": "Pod", "metadata": {"name": "A_b"}});
        assert!(ObjectRef::of(&bad)
            .unwrap_err()
            .to_string()
            .contains("metadata.name"));
        let none = serde_json::json!({"kind": "Pod", "metadata": {}});
        assert!(ObjectRef::of(&none)
            .unwrap_err()
            .to_string()
            .contains("metadata.name"));
    }

    #[test]
    fn key_and_file_names_round_trip() {
        for r in [
            ObjectRef {
                kind: "Pod".into(),
                namespace: "x".into(),
                name: "a.b-c".into(),
            },
            ObjectRef {
                kind: "Namespace".into(),
                namespace: String::new(),
                name: "x".into(),
            },
        ] {
            assert_eq!(ObjectRef::from_key_suffix(&r.key_suffix()), Some(r.clone()));
            assert_eq!(ObjectRef::from_file_name(&r.file_name()), Some(r.clone()));
        }
        assert_eq!(ObjectRef::from_key_suffix("Pod/x"), None);
        assert_eq!(ObjectRef::from_file_name("Pod_x.json"), None);
    }

    /// The texts `apply` prints and the agent logs, word for word.
    #[test]
    fn refusals_read_as_before() {
        let of = |v: serde_json::Value| ObjectRef::of(&v).unwrap_err().to_string();
        assert_eq!(
            of(serde_json::json!({"metadata": {"name": "a"}})),
            "field kind: missing or not a string"
        );
        assert_eq!(
            of(serde_json::json!({"kind": "ConfigMap", "metadata": {"name": "a"}})),
            "field kind: \"ConfigMap\" is not stored by wiremesh (one of Namespace, Node, Pod, \
             NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, Service, \
             AuthorizationPolicy, PeerAuthentication)"
        );
        assert_eq!(
            of(serde_json::json!({"kind": "Pod", "metadata": {"name": "a", "namespace": "X"}})),
            "field metadata.namespace: \"X\" is not a valid name (lowercase RFC 1123 subdomain)"
        );
        let cm = serde_json::json!({"kind": "ConfigMap", "metadata": {"name": "a"}});
        assert!(ObjectRef::of(&cm).unwrap_err().is_about_kind());
        let bad = serde_json::json!({"kind": "Pod", "metadata": {"name": "A"}});
        assert!(!ObjectRef::of(&bad).unwrap_err().is_about_kind());
    }

    /// Object names follow Kubernetes' DNS-1123 subdomain (`policy::names`): `-` or `.` at
    /// either end of a label, which this store's own check let through, is refused now.
    #[test]
    fn names_kubernetes_refuses_are_refused() {
        for bad in ["-a", "a-", "a..b", ".a", "a.", "-"] {
            let pod = serde_json::json!({"kind": "Pod", "metadata": {"name": bad}});
            assert_eq!(
                ObjectRef::of(&pod),
                Err(ObjectRefError::Name {
                    field: "metadata.name",
                    name: bad.to_string()
                })
            );
        }
        let long_label = "a".repeat(100);
        let pod = serde_json::json!({"kind": "Pod", "metadata": {"name": long_label}});
        assert!(ObjectRef::of(&pod).is_ok());
    }
}
