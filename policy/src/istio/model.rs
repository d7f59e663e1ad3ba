//! The normalised Istio policy model: what `convert.rs` and `peer.rs` produce from manifests and
//! what `eval.rs` evaluates. Every type is serde Serialize + Deserialize so that the agent can
//! ship the policies applying to a workload to the proxy process as they are; this file must
//! never hold a field whose meaning differs from the manifest's (the converter refuses those).

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::labels::Labels;

/// The Istio settings of a mesh: where mesh-wide policies live and how principals are spelt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IstioSettings {
    /// Policies without a selector in this namespace apply to the whole mesh.
    pub root_namespace: String,
    /// `<trustDomain>/ns/<ns>/sa/<sa>` is a workload's principal.
    pub trust_domain: String,
}

impl Default for IstioSettings {
    fn default() -> Self {
        Self {
            root_namespace: "istio-system".into(),
            trust_domain: "cluster.local".into(),
        }
    }
}

impl IstioSettings {
    /// The principal of service account `sa` in namespace `ns`.
    pub fn principal(&self, ns: &str, sa: &str) -> String {
        format!("{}/ns/{ns}/sa/{sa}", self.trust_domain)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum IstioKind {
    AuthorizationPolicy,
    PeerAuthentication,
}

/// `Kind namespace/name`, as traces and errors name a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IstioId {
    pub kind: IstioKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for IstioId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            IstioKind::AuthorizationPolicy => "AuthorizationPolicy",
            IstioKind::PeerAuthentication => "PeerAuthentication",
        };
        write!(f, "{kind} {}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        })
    }
}

/// Which workloads a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workloads {
    /// No selector in the root namespace: every workload of the mesh.
    Mesh,
    /// No selector: every workload of the policy's namespace.
    Namespace,
    /// `selector.matchLabels` over the pod labels, in the policy's namespace.
    Selector(Labels),
    /// `targetRefs` to Services of the policy's namespace (their names): the pods their
    /// `spec.selector` selects there.
    Services(Vec<String>),
}

/// Istio's string match: `abc` exact, `abc*` prefix, `*abc` suffix, `*` any non-empty value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Present,
}

impl fmt::Display for StrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrMatch::Exact(s) => f.write_str(s),
            StrMatch::Prefix(s) => write!(f, "{s}*"),
            StrMatch::Suffix(s) => write!(f, "*{s}"),
            StrMatch::Present => f.write_str("*"),
        }
    }
}

/// `rules[].from[].source`. An empty list is an unset field (as in Istio's protobuf API).
/// `remoteIpBlocks` are matched against the connection's source address like `ipBlocks`:
/// wiremesh reads no PROXY protocol and no `X-Forwarded-For`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceMatch {
    pub principals: Vec<StrMatch>,
    pub not_principals: Vec<StrMatch>,
    pub namespaces: Vec<StrMatch>,
    pub not_namespaces: Vec<StrMatch>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
    pub remote_ip_blocks: Vec<IpNet>,
    pub not_remote_ip_blocks: Vec<IpNet>,
}

/// `rules[].to[].operation`; hosts are kept lower-case (matched case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationMatch {
    pub hosts: Vec<StrMatch>,
    pub not_hosts: Vec<StrMatch>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<StrMatch>,
    pub not_methods: Vec<StrMatch>,
    pub paths: Vec<StrMatch>,
    pub not_paths: Vec<StrMatch>,
}

impl OperationMatch {
    /// Whether it reads the HTTP request (everything but ports).
    pub fn needs_http(&self) -> bool {
        [
            &self.hosts,
            &self.not_hosts,
            &self.methods,
            &self.not_methods,
            &self.paths,
            &self.not_paths,
        ]
        .iter()
        .any(|v| !v.is_empty())
    }
}

/// A `when[]` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConditionKey {
    /// `request.headers[<name>]` (the name as written; matched case-insensitively).
    Header(String),
    /// `source.ip` and `remote.ip` (the same here, as `remoteIpBlocks`).
    SourceIp,
    SourceNamespace,
    SourcePrincipal,
    DestinationIp,
    DestinationPort,
}

/// A `when[]` condition's values, typed by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Values {
    Str(Vec<StrMatch>),
    Ip(Vec<IpNet>),
    Port(Vec<u16>),
}

impl Values {
    pub fn is_empty(&self) -> bool {
        match self {
            Values::Str(v) => v.is_empty(),
            Values::Ip(v) => v.is_empty(),
            Values::Port(v) => v.is_empty(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub key: ConditionKey,
    pub values: Values,
    pub not_values: Values,
}

/// One `rules[i]`: all of `from`, `to` and `when` must match; an empty list is unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzRule {
    /// `spec.rules[1]`, for traces.
    pub field: String,
    pub from: Vec<SourceMatch>,
    pub to: Vec<OperationMatch>,
    pub when: Vec<Condition>,
}

impl AuthzRule {
    /// Whether it reads the HTTP request: an operation on hosts, methods or paths, or a
    /// condition on a request header.
    pub fn needs_http(&self) -> bool {
        self.to.iter().any(OperationMatch::needs_http)
            || self
                .when
                .iter()
                .any(|c| matches!(c.key, ConditionKey::Header(_)))
    }
}

/// An AuthorizationPolicy (CUSTOM refused by the converter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzPolicy {
    pub id: IstioId,
    pub action: Action,
    pub workloads: Workloads,
    /// No rules (no `rules` field, or `rules: []`, the same in Istio's API): an ALLOW policy
    /// then allows nothing, a DENY or AUDIT policy matches nothing. `rules: [{}]` is one rule
    /// that matches every request.
    pub rules: Vec<AuthzRule>,
}

impl AuthzPolicy {
    /// Whether any rule reads the HTTP request: such a policy is enforced by the L7 filter,
    /// the others by the eBPF programs.
    pub fn needs_http(&self) -> bool {
        self.rules.iter().any(AuthzRule::needs_http)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MtlsMode {
    /// Inherit from the parent level (workload → namespace → mesh → PERMISSIVE).
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        })
    }
}

/// A PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAuthn {
    pub id: IstioId,
    /// `None`: no selector (namespace-wide, or mesh-wide in the root namespace).
    pub selector: Option<Labels>,
    pub mode: MtlsMode,
    /// `portLevelMtls`: workload port → mode (only with a selector, as Istio validates).
    pub port_level: BTreeMap<u16, MtlsMode>,
}
