//! Istio `security.istio.io` AuthorizationPolicy and PeerAuthentication as written (v1 and
//! v1beta1 have the same schema): serde input types only, every struct refusing unknown fields
//! so that a misspelt or newer field is an error naming it, never silently dropped. Meaning
//! is given in `convert.rs` and `peer.rs`; this file must never interpret a value.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole object; only `spec` is read (metadata was read by the loader).
#[derive(Debug, Deserialize)]
pub struct Object<S> {
    #[serde(default)]
    pub spec: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default, rename = "matchLabels")]
    pub match_labels: Option<BTreeMap<String, String>>,
}

/// `targetRef` / `targetRefs[i]` (Gateway API `PolicyTargetReference`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default)]
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, rename = "targetRef")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, rename = "targetRefs")]
    pub target_refs: Option<Vec<TargetRef>>,
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub provider: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Option<Vec<From>>,
    #[serde(default)]
    pub to: Option<Vec<To>>,
    #[serde(default)]
    pub when: Option<Vec<Condition>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    #[serde(default)]
    pub source: Option<Source>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Option<Vec<String>>,
    #[serde(default)]
    pub not_principals: Option<Vec<String>>,
    #[serde(default)]
    pub request_principals: Option<Vec<String>>,
    #[serde(default)]
    pub not_request_principals: Option<Vec<String>>,
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub not_namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub not_ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub remote_ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub not_remote_ip_blocks: Option<Vec<String>>,
    #[serde(default)]
    pub service_accounts: Option<Vec<String>>,
    #[serde(default)]
    pub not_service_accounts: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    #[serde(default)]
    pub operation: Option<Operation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub not_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub ports: Option<Vec<String>>,
    #[serde(default)]
    pub not_ports: Option<Vec<String>>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub not_methods: Option<Vec<String>>,
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub not_paths: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
    #[serde(default)]
    pub not_values: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<Mtls>,
    #[serde(default)]
    pub port_level_mtls: Option<BTreeMap<PortKey, Mtls>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    #[serde(default)]
    pub mode: Option<String>,
}

/// A `portLevelMtls` key: a number in YAML, a string in JSON (the Kubernetes store).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(untagged)]
pub enum PortKey {
    Int(i64),
    Str(String),
}
