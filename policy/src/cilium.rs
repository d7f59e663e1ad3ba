//! The `cilium.io/v2` CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy `spec` subset we
//! model, as serde types (no crate provides them).
//!
//! Every struct denies unknown fields, so a typo (`fromEndpoint`) is an error rather than a
//! rule silently widened or narrowed. Valid Cilium fields that wiremesh does not enforce are
//! listed explicitly and refused by name in `cnp.rs` ("not supported"), never ignored: ignoring
//! `toFQDNs` or `fromRequires` would change what a policy allows. Only `description`, `labels`
//! and `log`, which change no verdict, are accepted and ignored.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;
use yaml_serde::Value;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    pub endpoint_selector: Option<LabelSelector>,
    pub node_selector: Option<LabelSelector>,
    pub ingress: Option<Vec<IngressRule>>,
    pub ingress_deny: Option<Vec<IngressRule>>,
    pub egress: Option<Vec<EgressRule>>,
    pub egress_deny: Option<Vec<EgressRule>>,
    pub enable_default_deny: Option<DefaultDeny>,
    #[allow(dead_code, reason = "accepted and ignored: it changes no verdict")]
    pub description: Option<String>,
    #[allow(dead_code, reason = "accepted and ignored: it changes no verdict")]
    pub labels: Option<Value>,
    #[allow(dead_code, reason = "accepted and ignored: it changes no verdict")]
    pub log: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    pub ingress: Option<bool>,
    pub egress: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    pub from_entities: Option<Vec<String>>,
    pub to_ports: Option<Vec<PortRule>>,
    pub icmps: Option<Vec<IcmpRule>>,
    // Valid Cilium, refused as unsupported.
    pub from_requires: Option<Value>,
    pub from_groups: Option<Value>,
    pub from_nodes: Option<Value>,
    pub authentication: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    pub to_entities: Option<Vec<String>>,
    pub to_ports: Option<Vec<PortRule>>,
    pub icmps: Option<Vec<IcmpRule>>,
    // Valid Cilium, refused as unsupported.
    pub to_requires: Option<Value>,
    pub to_services: Option<Value>,
    #[serde(rename = "toFQDNs")]
    pub to_fqdns: Option<Value>,
    pub to_groups: Option<Value>,
    pub to_nodes: Option<Value>,
    pub authentication: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrRule {
    pub cidr: Option<String>,
    pub except: Option<Vec<String>>,
    // Valid Cilium, refused as unsupported.
    pub cidr_group_ref: Option<Value>,
    pub cidr_group_selector: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    pub ports: Option<Vec<PortProtocol>>,
    pub rules: Option<L7Rules>,
    // Valid Cilium, refused as unsupported.
    #[serde(rename = "terminatingTLS")]
    pub terminating_tls: Option<Value>,
    #[serde(rename = "originatingTLS")]
    pub originating_tls: Option<Value>,
    pub server_names: Option<Value>,
    pub listener: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    /// Cilium types this as a string ("80", "http"); YAML integers are accepted too.
    pub port: Option<StrOrInt>,
    pub end_port: Option<i64>,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum StrOrInt {
    Int(i64),
    Str(String),
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L7Rules {
    pub http: Option<Vec<HttpRuleSpec>>,
    // Valid Cilium, refused as unsupported.
    pub kafka: Option<Value>,
    pub dns: Option<Value>,
    pub l7proto: Option<Value>,
    pub l7: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRuleSpec {
    pub method: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub headers: Option<Vec<String>>,
    pub header_matches: Option<Vec<HeaderMatch>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: Option<String>,
    // Valid Cilium, refused as unsupported.
    pub mismatch: Option<Value>,
    pub secret: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct IcmpRule {
    pub fields: Option<Vec<IcmpField>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpField {
    pub family: Option<String>,
    #[serde(rename = "type")]
    pub icmp_type: StrOrInt,
}

/// The part of a CNP/CCNP object we read: `spec` and/or `specs`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CiliumPolicyBody {
    pub spec: Option<RuleSpec>,
    pub specs: Option<Vec<RuleSpec>>,
}
