//! The Kubernetes manifests of `deploy/kubernetes`, as `kubectl kustomize` renders them, parsed
//! into k8s-openapi types so tests can check them against the binary and the lab can hand
//! their RBAC to the fake API server.
//!
//! Parsing is strict where k8s-openapi is not: its types ignore unknown fields, so a misspelt
//! key (`hostNetwrk: true`) would silently vanish. Every document is deserialised, serialised
//! back and compared with what was rendered; a field that did not survive the round trip is an
//! error naming the kind, the name and the JSON path. A kind not listed in [`Document`] is an
//! error too. This module only reads: it never applies anything to a cluster.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Secret, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The ConfigMap holding the agent's config, and its key.
pub const CONFIG_MAP: &str = "wiremesh-config";
pub const CONFIG_KEY: &str = "agent.yaml";
/// The agent's DaemonSet (its container: `wiremesh`) and the data path's (its container:
/// `datapath`).
pub const AGENT_DAEMONSET: &str = "wiremesh";
pub const DATAPATH_DAEMONSET: &str = "wiremesh-datapath";
pub const DATAPATH_CONTAINER: &str = "datapath";

/// `deploy/kubernetes` in this source tree (the default kustomization).
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// One rendered document, typed by its kind.
#[derive(Debug, Clone)]
pub enum Document {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    ConfigMap(ConfigMap),
    Secret(Secret),
    DaemonSet(Box<DaemonSet>),
    CustomResourceDefinition(Box<CustomResourceDefinition>),
}

/// A document that could not be taken as its type.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest document {index}: not YAML: {message}")]
    Yaml { index: usize, message: String },
    #[error("manifest document {index}: no kind")]
    NoKind { index: usize },
    #[error("{kind} {name}: kind not expected in deploy/kubernetes")]
    UnexpectedKind { kind: String, name: String },
    #[error("{kind} {name}: {message}")]
    Type {
        kind: String,
        name: String,
        message: String,
    },
    #[error("{kind} {name}: field(s) not in the {kind} schema (misspelt?): {}", .paths.join(", "))]
    UnknownFields {
        kind: String,
        name: String,
        paths: Vec<String>,
    },
}

/// A rendered kustomization: its text and every document, typed.
#[derive(Debug, Clone)]
pub struct Rendered {
    text: String,
    /// Each document as rendered (JSON), beside its typed form.
    documents: Vec<(Value, Document)>,
}

/// Runs `kubectl kustomize dir` and parses what it prints. Panics, naming the directory, if
/// kubectl is missing, fails, or renders a document that [`parse`] refuses.
pub fn render(dir: &Path) -> Rendered {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl kustomize {}: cannot run kubectl ({e}); install kubectl \
                 (scripts/install-deps.sh: Debian package kubernetes-client)",
                dir.display()
            )
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed ({}): {}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)
        .unwrap_or_else(|e| panic!("kubectl kustomize {}: output not UTF-8: {e}", dir.display()));
    parse(&text).unwrap_or_else(|e| panic!("kubectl kustomize {}: {e}", dir.display()))
}

/// Parses a multi-document YAML stream of the kinds in [`Document`], refusing unknown kinds
/// and fields (see the module header).
pub fn parse(text: &str) -> Result<Rendered, ManifestError> {
    let mut documents = Vec::new();
    for (index, doc) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| ManifestError::Yaml {
            index,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let typed = typed(index, &value)?;
        documents.push((value, typed));
    }
    Ok(Rendered {
        text: text.to_owned(),
        documents,
    })
}

fn typed(index: usize, value: &Value) -> Result<Document, ManifestError> {
    let kind = value["kind"]
        .as_str()
        .ok_or(ManifestError::NoKind { index })?;
    Ok(match kind {
        "Namespace" => Document::Namespace(strict(value)?),
        "ServiceAccount" => Document::ServiceAccount(strict(value)?),
        "ClusterRole" => Document::ClusterRole(strict(value)?),
        "ClusterRoleBinding" => Document::ClusterRoleBinding(strict(value)?),
        "Role" => Document::Role(strict(value)?),
        "RoleBinding" => Document::RoleBinding(strict(value)?),
        "ConfigMap" => Document::ConfigMap(strict(value)?),
        "Secret" => Document::Secret(strict(value)?),
        "DaemonSet" => Document::DaemonSet(strict(value)?),
        "CustomResourceDefinition" => Document::CustomResourceDefinition(strict(value)?),
        other => {
            return Err(ManifestError::UnexpectedKind {
                kind: other.into(),
                name: name_of(value),
            })
        }
    })
}

fn name_of(value: &Value) -> String {
    let name = value["metadata"]["name"].as_str().unwrap_or("<no name>");
    match value["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.into(),
    }
}

/// `value` as `T`, with every field of `value` surviving a round trip through `T`.
fn strict<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, ManifestError> {
    let kind = value["kind"].as_str().unwrap_or_default().to_owned();
    let name = name_of(value);
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| ManifestError::Type {
        kind: kind.clone(),
        name: name.clone(),
        message: e.to_string(),
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| ManifestError::Type {
        kind: kind.clone(),
        name: name.clone(),
        message: format!("serialising back: {e}"),
    })?;
    let mut paths = Vec::new();
    lost(value, &back, "", &mut paths);
    if paths.is_empty() {
        Ok(typed)
    } else {
        Err(ManifestError::UnknownFields { kind, name, paths })
    }
}

/// Appends to `out` the JSON path of everything in `original` that `back` does not hold
/// (a dropped field) or holds otherwise (a changed value).
pub fn lost(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o {
                let at = format!("{path}.{key}");
                match b.get(key) {
                    Some(v) => lost(value, v, &at, out),
                    None => out.push(at),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            for (i, value) in o.iter().enumerate() {
                let at = format!("{path}[{i}]");
                match b.get(i) {
                    Some(v) => lost(value, v, &at, out),
                    None => out.push(at),
                }
            }
        }
        (o, b) if o == b => {}
        (Value::Number(o), Value::Number(b)) if o.as_f64() == b.as_f64() => {}
        _ => out.push(format!("{path} (as {original}, read back as {back})")),
    }
}

impl Rendered {
    /// The text `kubectl kustomize` printed.
    pub fn rendered_text(&self) -> &str {
        &self.text
    }

    pub fn documents(&self) -> impl Iterator<Item = &Document> {
        self.documents.iter().map(|(_, d)| d)
    }

    /// The agent's DaemonSet ([`AGENT_DAEMONSET`]).
    pub fn daemonset(&self) -> &DaemonSet {
        self.daemonset_named(AGENT_DAEMONSET)
    }

    /// The DaemonSet `name`. Panics unless there is exactly one.
    pub fn daemonset_named(&self, name: &str) -> &DaemonSet {
        one(self.documents().filter_map(|d| match d {
            Document::DaemonSet(ds) if ds.metadata.name.as_deref() == Some(name) => {
                Some(ds.as_ref())
            }
            _ => None,
        }))
        .unwrap_or_else(|n| panic!("deploy/kubernetes: {n} DaemonSets {name}, expected one"))
    }

    /// Every DaemonSet's name.
    pub fn daemonset_names(&self) -> Vec<&str> {
        self.documents()
            .filter_map(|d| match d {
                Document::DaemonSet(ds) => ds.metadata.name.as_deref(),
                _ => None,
            })
            .collect()
    }

    /// The agent's ConfigMap ([`CONFIG_MAP`]).
    pub fn config_map(&self) -> &ConfigMap {
        self.documents()
            .find_map(|d| match d {
                Document::ConfigMap(cm) if cm.metadata.name.as_deref() == Some(CONFIG_MAP) => {
                    Some(cm)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("deploy/kubernetes: no ConfigMap {CONFIG_MAP}"))
    }

    /// The agent's config file, as the ConfigMap holds it.
    pub fn agent_yaml(&self) -> &str {
        self.config_map()
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_KEY))
            .unwrap_or_else(|| panic!("ConfigMap {CONFIG_MAP}: no data key {CONFIG_KEY}"))
    }

    /// The one ClusterRole. Panics unless there is exactly one.
    pub fn cluster_role(&self) -> &ClusterRole {
        one(self.documents().filter_map(|d| match d {
            Document::ClusterRole(r) => Some(r),
            _ => None,
        }))
        .unwrap_or_else(|n| panic!("deploy/kubernetes: {n} ClusterRoles, expected exactly one"))
    }

    /// Every Role (namespaced).
    pub fn roles(&self) -> Vec<&Role> {
        self.documents()
            .filter_map(|d| match d {
                Document::Role(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    pub fn crds(&self) -> Vec<&CustomResourceDefinition> {
        self.documents()
            .filter_map(|d| match d {
                Document::CustomResourceDefinition(c) => Some(c.as_ref()),
                _ => None,
            })
            .collect()
    }

    /// The RBAC documents (roles, bindings and service accounts) as YAML, `---` between
    /// them: what the fake API server's `--rbac` reads.
    pub fn rbac_yaml(&self) -> String {
        let mut out = String::new();
        for (value, doc) in &self.documents {
            let rbac = matches!(
                doc,
                Document::ServiceAccount(_)
                    | Document::ClusterRole(_)
                    | Document::ClusterRoleBinding(_)
                    | Document::Role(_)
                    | Document::RoleBinding(_)
            );
            if rbac {
                let yaml = yaml_serde::to_string(value).expect("a JSON value is valid YAML");
                if !out.is_empty() {
                    out.push_str("---\n");
                }
                let _ = write!(out, "{yaml}");
            }
        }
        out
    }
}

/// The pod template of the DaemonSet.
pub fn pod(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .template
        .spec
        .as_ref()
        .unwrap_or_else(|| panic!("DaemonSet {:?}: no spec.template.spec", ds.metadata.name))
}

/// Asserts the pod runs on every node: `system-node-critical`, and a toleration of every taint.
pub fn assert_runs_on_every_node(ds: &DaemonSet) {
    let spec = pod(ds);
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical"),
        "DaemonSet {:?}: priorityClassName",
        ds.metadata.name
    );
    let every_taint =
        spec.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        });
    assert!(
        every_taint,
        "DaemonSet {:?}: tolerations {:?}",
        ds.metadata.name, spec.tolerations
    );
}

/// The agent's container (named `wiremesh`).
pub fn agent_container(ds: &DaemonSet) -> &Container {
    container(ds, "wiremesh")
}

/// The pod's container `name`.
pub fn container<'a>(ds: &'a DaemonSet, name: &str) -> &'a Container {
    pod(ds)
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| {
            panic!(
                "DaemonSet {:?}: no container named {name}",
                ds.metadata.name
            )
        })
}

/// The pod's volume `name`.
pub fn volume<'a>(ds: &'a DaemonSet, name: &str) -> &'a Volume {
    pod(ds)
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| {
            panic!(
                "DaemonSet {:?}: volumeMount {name} has no volume",
                ds.metadata.name
            )
        })
}

/// The mount of the `wiremesh` container holding `path` (the deepest one), its read-only flag and its volume.
pub fn mount_of<'a>(ds: &'a DaemonSet, path: &Path) -> Option<(PathBuf, bool, &'a Volume)> {
    mount_in(ds, agent_container(ds), path)
}

/// The mount of container `c` of `ds` holding `path` (the deepest one), its read-only flag and
/// its volume.
pub fn mount_in<'a>(
    ds: &'a DaemonSet,
    c: &'a Container,
    path: &Path,
) -> Option<(PathBuf, bool, &'a Volume)> {
    c.volume_mounts
        .iter()
        .flatten()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .map(|m| {
            let read_only = m.read_only.unwrap_or(false);
            (PathBuf::from(&m.mount_path), read_only, volume(ds, &m.name))
        })
}

/// The capabilities scripts/systemd/wiremesh.service grants (bounding and ambient sets).
pub fn systemd_capabilities() -> BTreeSet<String> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/systemd/wiremesh.service");
    let text = std::fs::read_to_string(&unit).unwrap_or_else(|e| panic!("{}: {e}", unit.display()));
    let caps: BTreeSet<String> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("CapabilityBoundingSet=")
                .or_else(|| l.strip_prefix("AmbientCapabilities="))
        })
        .flat_map(str::split_whitespace)
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect();
    assert!(
        !caps.is_empty(),
        "{}: no capabilities found",
        unit.display()
    );
    caps
}

/// The only item, or how many there were.
fn one<T>(mut items: impl Iterator<Item = T>) -> Result<T, usize> {
    match (items.next(), items.next()) {
        (Some(item), None) => Ok(item),
        (None, _) => Err(0),
        (Some(_), Some(_)) => Err(2 + items.count()),
    }
}
