//! Loading Kubernetes manifests (multi-document YAML, `kind: List`) into a [`Bundle`].
//!
//! The kinds loaded are [`crate::kinds::KINDS`]. A policy kind wiremesh does not enforce
//! (Istio RequestAuthentication, AdminNetworkPolicy, a policy kind under an API version we do
//! not understand) is an error naming it ([`crate::kinds::refusal`]): skipping a policy would
//! make apply and the trace answer for a cluster that is not the one described. Other kinds are
//! skipped with a note in [`Bundle::notes`], so that a `kubectl get ... -A -o yaml` dump with
//! ConfigMaps in it loads. Services and Istio kinds are read in [`istio`].

mod istio;
mod pod;

use pod::{named_ports, status_ips};

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Node as K8sNode, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use yaml_serde::Value;

use crate::cilium::CiliumPolicyBody;
use crate::error::{FieldError, LoadError};
use crate::istio::IstioSettings;
use crate::kinds::{self, ObjectKind};
use crate::labels::Labels;
use crate::model::{
    Bundle, Endpoint, Node, PolicyId, PolicyKind, CLUSTER_LABEL, METADATA_NAME,
    SERVICE_ACCOUNT_LABEL,
};
use crate::{cnp, np, strict};

/// Loads manifests given as (file name, contents) pairs, refusing whatever wiremesh cannot
/// enforce as written. The file name is only used in messages; this crate reads no files.
pub fn load<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Bundle, LoadError> {
    load_with(files, LoadOptions::default())
}

/// How [`load_with`] reads manifests.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Accept CiliumNetworkPolicy `rules.http` (default: yes; the L7 filter enforces them).
    /// Off, they are refused by name, for a node that runs no L7 filter.
    pub l7_model: bool,
    /// Which of Istio's AuthorizationPolicy and PeerAuthentication are accepted into the
    /// model (default: all). What an agent does not enforce it refuses by name: a policy
    /// accepted and not enforced is worse than one refused.
    pub istio_model: IstioModel,
    /// Istio's root namespace and trust domain (default `istio-system`, `cluster.local`).
    pub istio: IstioSettings,
    /// With cluster mesh, this cluster's name: every endpoint then carries Cilium's
    /// `io.cilium.k8s.policy.cluster=<name>` label (default: none).
    pub cluster_name: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            l7_model: true,
            istio_model: IstioModel::Full,
            istio: IstioSettings::default(),
            cluster_name: None,
        }
    }
}

/// How much of Istio's security API [`load_with`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IstioModel {
    /// Neither kind (field `kind` refused), for a node that enforces no Istio policy.
    Refused,
    /// Both kinds, as the agent enforces them: PeerAuthentication as deny entries in the eBPF
    /// policy maps, AuthorizationPolicies that read only the connection in the eBPF programs
    /// (as ztunnel does), the others in the L7 filter (as a waypoint does).
    Full,
}

/// [`load`] with `options`.
pub fn load_with<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
    options: LoadOptions,
) -> Result<Bundle, LoadError> {
    let mut loader = Loader {
        bundle: Bundle {
            istio: options.istio.clone(),
            local_cluster: options.cluster_name.clone(),
            ..Bundle::default()
        },
        options,
        seen: BTreeMap::new(),
    };
    for (file, text) in files {
        loader.file(file, text)?;
    }
    let mut bundle = loader.bundle;
    if let Some(cluster) = bundle.local_cluster.clone() {
        crate::cluster::default_local_cluster(&mut bundle.policies, &cluster);
    }
    Ok(bundle)
}

struct Loader {
    options: LoadOptions,
    bundle: Bundle,
    /// `kind namespace/name` → file it came from, to refuse duplicates.
    seen: BTreeMap<String, String>,
}

struct Doc<'a> {
    file: &'a str,
    document: usize,
}

impl Doc<'_> {
    fn error(&self, message: impl Into<String>) -> LoadError {
        LoadError::Document {
            file: self.file.to_string(),
            document: self.document,
            message: message.into(),
        }
    }
}

/// One object of a loaded kind: where it is and what it is called in messages.
struct Object<'a> {
    doc: &'a Doc<'a>,
    name: String,
    namespace: String,
    /// `Kind namespace/name`, or `Kind name` for a cluster-scoped kind.
    qualified: String,
}

impl Object<'_> {
    fn invalid(&self, e: FieldError) -> LoadError {
        LoadError::Invalid {
            file: self.doc.file.to_string(),
            resource: self.qualified.clone(),
            field: e.field,
            message: e.message,
        }
    }
}

impl Loader {
    fn file(&mut self, file: &str, text: &str) -> Result<(), LoadError> {
        for (i, de) in yaml_serde::Deserializer::from_str(text).enumerate() {
            let doc = Doc {
                file,
                document: i + 1,
            };
            let value = <Value as serde::Deserialize>::deserialize(de).map_err(|source| {
                LoadError::Yaml {
                    file: file.to_string(),
                    document: i + 1,
                    source,
                }
            })?;
            self.object(&doc, value)?;
        }
        Ok(())
    }

    fn object(&mut self, doc: &Doc<'_>, value: Value) -> Result<(), LoadError> {
        if value.is_null() {
            return Ok(());
        }
        let Value::Mapping(map) = &value else {
            return Err(doc.error("not a Kubernetes object (expected a mapping)"));
        };
        let get = |k: &str| map.get(k).and_then(Value::as_str);
        let (Some(api_version), Some(kind)) = (get("apiVersion"), get("kind")) else {
            return Err(doc.error("missing apiVersion or kind"));
        };
        let (api_version, kind) = (api_version.to_string(), kind.to_string());
        if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
            let items = match map.get("items") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Sequence(items)) => items.clone(),
                Some(_) => return Err(doc.error(format!("{kind}: items is not a list"))),
            };
            for item in items {
                self.object(doc, item)?;
            }
            return Ok(());
        }
        let meta = map.get("metadata");
        let meta_str = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
        let Some(name) = meta_str("name").map(str::to_string) else {
            return Err(doc.error(format!("{kind}: metadata.name is missing")));
        };
        // A namespaced object without a namespace goes where kubectl would put it by default.
        let namespace = meta_str("namespace").unwrap_or("default").to_string();
        let loaded = kinds::loaded(&api_version, &kind);
        let qualified = match loaded.or_else(|| kinds::by_name(&kind)) {
            Some(k) if !k.namespaced => format!("{kind} {name}"),
            _ => format!("{kind} {namespace}/{name}"),
        };
        let object = Object {
            doc,
            name,
            namespace,
            qualified,
        };
        let Some(loaded) = loaded else {
            if let Some((field, why)) = kinds::refusal(&api_version, &kind) {
                return Err(object.invalid(FieldError::new(field, why)));
            }
            self.bundle.notes.push(format!(
                "{}: skipped {api_version} {}",
                doc.file, object.qualified
            ));
            return Ok(());
        };
        self.typed_object(object, loaded.object, value)
    }

    /// Loads an object of a kind wiremesh reads, as its typed form.
    fn typed_object(
        &mut self,
        object: Object<'_>,
        kind: ObjectKind,
        value: Value,
    ) -> Result<(), LoadError> {
        match kind {
            ObjectKind::Namespace => self.namespace(object, value),
            ObjectKind::Node => self.node(object, value),
            ObjectKind::Pod => {
                let pod: Pod = typed(value).map_err(|e| object.invalid(e))?;
                self.claim(object.doc, &object.qualified)?;
                let invalid = |e| object.invalid(e);
                self.pod(pod, object.namespace.clone(), object.name.clone())
                    .map_err(invalid)
            }
            ObjectKind::NetworkPolicy => {
                let spec_in = value.get("spec").cloned();
                self.network_policy(object, spec_in, value)
            }
            ObjectKind::CiliumNetworkPolicy | ObjectKind::CiliumClusterwideNetworkPolicy => {
                let clusterwide = kind == ObjectKind::CiliumClusterwideNetworkPolicy;
                self.cilium(object, clusterwide, value)
            }
            ObjectKind::Service => self.service(object, value),
            ObjectKind::AuthorizationPolicy | ObjectKind::PeerAuthentication
                if self.options.istio_model == IstioModel::Refused =>
            {
                Err(object.invalid(FieldError::new(
                    "kind",
                    "valid Istio, but this wiremesh agent does not enforce Istio policies yet; \
                     refused rather than accepted and left unenforced",
                )))
            }
            ObjectKind::AuthorizationPolicy => self.authorization_policy(object, value),
            ObjectKind::PeerAuthentication => self.peer_authentication(object, value),
        }
    }

    fn namespace(&mut self, object: Object<'_>, value: Value) -> Result<(), LoadError> {
        let ns: Namespace = typed(value).map_err(|e| object.invalid(e))?;
        self.claim(object.doc, &object.qualified)?;
        let mut labels: BTreeMap<String, String> =
            ns.metadata.labels.unwrap_or_default().into_iter().collect();
        // The API server sets this label on every namespace.
        labels.insert(METADATA_NAME.to_string(), object.name.clone());
        self.bundle.namespaces.insert(object.name, labels);
        Ok(())
    }

    fn node(&mut self, object: Object<'_>, value: Value) -> Result<(), LoadError> {
        let node: K8sNode = typed(value).map_err(|e| object.invalid(e))?;
        self.claim(object.doc, &object.qualified)?;
        let entry = self.node_entry(&object.name);
        entry.labels = node
            .metadata
            .labels
            .unwrap_or_default()
            .into_iter()
            .collect();
        let addresses = node.status.and_then(|s| s.addresses).unwrap_or_default();
        for (i, a) in addresses.iter().enumerate() {
            if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
                let ip = parse_ip(&a.address).map_err(|e| {
                    object.invalid(FieldError::new(
                        format!("status.addresses[{i}].address"),
                        e.message,
                    ))
                })?;
                push_unique(&mut entry.ips, ip);
            }
        }
        Ok(())
    }

    fn network_policy(
        &mut self,
        object: Object<'_>,
        spec_in: Option<Value>,
        value: Value,
    ) -> Result<(), LoadError> {
        let invalid = |e| object.invalid(e);
        let policy: NetworkPolicy = typed(value).map_err(invalid)?;
        if let (Some(spec_in), Some(spec)) = (spec_in, &policy.spec) {
            let parsed = serde_json::to_value(spec)
                .map_err(|e| invalid(FieldError::new("spec", e.to_string())))?;
            if let Some(field) = strict::unknown_field(&spec_in, &parsed, "spec") {
                return Err(invalid(FieldError::new(field, "unknown field")));
            }
        }
        let p = np::convert(&policy, &object.namespace, &object.name).map_err(invalid)?;
        self.claim(object.doc, &object.qualified)?;
        self.bundle.policies.push(p);
        Ok(())
    }

    fn cilium(
        &mut self,
        object: Object<'_>,
        clusterwide: bool,
        value: Value,
    ) -> Result<(), LoadError> {
        let invalid = |e| object.invalid(e);
        let body: CiliumPolicyBody = typed(value).map_err(invalid)?;
        let ns = (!clusterwide).then_some(object.namespace.as_str());
        let id = PolicyId {
            kind: if clusterwide {
                PolicyKind::CiliumClusterwideNetworkPolicy
            } else {
                PolicyKind::CiliumNetworkPolicy
            },
            namespace: ns.map(str::to_string),
            name: object.name.clone(),
        };
        let mut specs = Vec::new();
        if let Some(spec) = &body.spec {
            specs.push((spec, "spec".to_string()));
        }
        for (i, spec) in body.specs.iter().flatten().enumerate() {
            specs.push((spec, format!("specs[{i}]")));
        }
        if specs.is_empty() {
            return Err(invalid(FieldError::new(
                "spec",
                "one of spec or specs is required",
            )));
        }
        let mut converted = Vec::new();
        for (spec, base) in specs {
            converted.push(
                cnp::convert(spec, id.clone(), ns, &base, self.options.l7_model)
                    .map_err(invalid)?,
            );
        }
        self.claim(object.doc, &object.qualified)?;
        self.bundle.policies.extend(converted);
        Ok(())
    }

    fn claim(&mut self, doc: &Doc<'_>, qualified: &str) -> Result<(), LoadError> {
        if let Some(first) = self.seen.get(qualified) {
            return Err(LoadError::Duplicate {
                file: doc.file.to_string(),
                resource: qualified.to_string(),
                first_file: first.clone(),
            });
        }
        self.seen
            .insert(qualified.to_string(), doc.file.to_string());
        Ok(())
    }

    fn node_entry(&mut self, name: &str) -> &mut Node {
        self.bundle
            .nodes
            .entry(name.to_string())
            .or_insert_with(|| Node {
                name: name.to_string(),
                ..Node::default()
            })
    }

    fn pod(&mut self, pod: Pod, namespace: String, name: String) -> Result<(), FieldError> {
        let host = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::model::HOST_ENDPOINT_ANNOTATION))
            .is_some_and(|v| v == "true");
        let spec = pod.spec.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        let node = spec.node_name.clone();
        let host_ips = status_ips(
            status.host_ips.iter().flatten().map(|h| h.ip.as_str()),
            status.host_ip.as_deref(),
            ("status.hostIPs", "status.hostIP"),
        )?;
        let ips = status_ips(
            status.pod_ips.iter().flatten().map(|p| p.ip.as_str()),
            status.pod_ip.as_deref(),
            ("status.podIPs", "status.podIP"),
        )?;
        let host_network = spec.host_network == Some(true);
        if let Some(node) = &node {
            let entry = self.node_entry(node);
            for ip in &host_ips {
                push_unique(&mut entry.ips, *ip);
            }
            // A host-network pod's addresses are its node's.
            if host_network {
                for ip in &ips {
                    push_unique(&mut entry.ips, *ip);
                }
            }
        }
        let qualified = format!("{namespace}/{name}");
        if host_network {
            self.bundle.host_network_pods.insert(qualified);
            return Ok(());
        }
        // Finished pods hold no address any more; upstream policy ignores them.
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            self.bundle.notes.push(format!(
                "Pod {qualified}: phase {:?}, not an endpoint",
                status.phase
            ));
            return Ok(());
        }
        let named_ports = named_ports(&spec)?;
        // Kubernetes admission sets `default` when no account is named.
        let service_account = spec
            .service_account_name
            .clone()
            .or_else(|| spec.service_account.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let mut labels: Labels = pod
            .metadata
            .labels
            .unwrap_or_default()
            .into_iter()
            .collect();
        // As Cilium does; set after the pod's own labels so a pod cannot claim another account.
        labels.insert(SERVICE_ACCOUNT_LABEL.to_string(), service_account.clone());
        if let Some(cluster) = &self.options.cluster_name {
            labels.insert(CLUSTER_LABEL.to_string(), cluster.clone());
        }
        self.bundle.endpoints.push(Endpoint {
            host,
            cluster: None,
            namespace,
            name,
            labels,
            node,
            ips,
            named_ports,
            service_account,
        });
        Ok(())
    }
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        FieldError::new(
            if field == "." {
                "(root)".to_string()
            } else {
                field
            },
            e.into_inner().to_string(),
        )
    })
}

fn parse_ip(s: &str) -> Result<IpAddr, FieldError> {
    s.parse()
        .map_err(|_| FieldError::new("", format!("invalid IP address {s:?}")))
}

fn push_unique(v: &mut Vec<IpAddr>, ip: IpAddr) {
    if !v.contains(&ip) {
        v.push(ip);
    }
}
