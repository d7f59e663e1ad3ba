//! The configuration the agent pushes to the proxy (JSON over the control socket, and the
//! proxy's state file): this node's endpoints that have HTTP rules, each with its WHOLE policy
//! map (so a lookup here gives exactly `PolicyMap::lookup`'s union and deny semantics), the
//! IP → identity cache, and every pod of the cluster for flow display. Built purely from the
//! policy crate's compiled output; decoded (and every regex recompiled) by [`crate::snapshot`].
//! It must never drop or merge map entries: the proxy has to agree with the eBPF maps.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use policy::compile::{Entry, Key};
use policy::http::{HttpRule, Pattern};
use policy::identity::IdentityLabels;
use policy::istio::{AuthzPolicy, IstioSettings};
use policy::{Bundle, Compiled, Direction, Endpoint};
use serde::{Deserialize, Serialize};

/// The whole configuration of one proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Config {
    /// Chosen by the agent; reported back by `GET /v1/config/version`.
    pub version: u64,
    pub endpoints: Vec<L7Endpoint>,
    /// Prefix → identity; the longest prefix containing an address wins, no match is `world`.
    pub ipcache: Vec<(IpNet, u32)>,
    /// Every pod of the cluster (for flow records and Istio principals).
    pub pods: Vec<PodInfo>,
    /// How Istio principals are spelt (the trust domain).
    #[serde(default)]
    pub istio: IstioSettings,
}

/// A local endpoint whose traffic the proxy judges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7Endpoint {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub identity: u32,
    /// The endpoint's full policy map.
    pub entries: Vec<WireEntry>,
    /// The Istio AuthorizationPolicies that apply to the endpoint, as the policy crate
    /// models them (the proxy evaluates them with `policy::istio::evaluate`).
    #[serde(default)]
    pub istio: Vec<AuthzPolicy>,
}

/// A pod anywhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub identity: u32,
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "serviceAccount")]
    pub service_account: String,
}

/// Policy-map direction on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireDirection {
    Ingress,
    Egress,
}

/// One `(Key, Entry)` of a `PolicyMap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    pub direction: WireDirection,
    pub identity: u32,
    pub protocol: u8,
    pub port: u16,
    pub prefix: u8,
    #[serde(default)]
    pub deny: bool,
    #[serde(default)]
    pub allow: bool,
    /// `None`: L7 unrestricted for this allow entry.
    #[serde(default)]
    pub http: Option<Vec<WireRule>>,
}

/// One `HttpRule`, its patterns as source text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireRule {
    /// Where the rule is in its manifest (shown in flows as the deciding policy).
    pub field: String,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: Vec<(String, Option<String>)>,
}

/// Why a configuration was refused (the one in force stays).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration JSON at {path}: {message}")]
    Json { path: String, message: String },
    #[error("endpoint {endpoint}: {field}: invalid regular expression {pattern:?}: {message}")]
    Pattern {
        endpoint: String,
        field: String,
        pattern: String,
        message: String,
    },
    #[error("endpoint {endpoint}: {field}: port prefix length {prefix} is above 16")]
    Prefix {
        endpoint: String,
        field: String,
        prefix: u8,
    },
    #[error("address {ip} belongs to both endpoint {first} and endpoint {second}")]
    DuplicateIp {
        ip: IpAddr,
        first: String,
        second: String,
    },
}

/// The ServiceAccount of a pod (`spec.serviceAccountName`, `default` when unset).
pub fn service_account_of(endpoint: &Endpoint) -> String {
    endpoint.service_account.clone()
}

impl L7Config {
    /// The configuration of the proxy on `node`: its endpoints whose map has at least one
    /// allow entry with HTTP rules or to which Istio AuthorizationPolicies apply, each with its
    /// whole map and those policies.
    pub fn build(compiled: &Compiled, bundle: &Bundle, node: &str, version: u64) -> L7Config {
        let ids = &compiled.identities;
        let identity = |ep: &Endpoint| {
            ep.ips
                .first()
                .map_or(policy::identity::WORLD, |ip| ids.lookup(*ip, Some(node)))
        };
        let endpoints = bundle
            .endpoints
            .iter()
            .filter(|ep| ep.node.as_deref() == Some(node))
            .filter_map(|ep| {
                let map = compiled.maps.get(&ep.qualified_name())?;
                let has_http = map.iter().any(|(_, e)| e.allow && e.http.is_some());
                let istio: Vec<AuthzPolicy> = bundle.authz_for(ep).into_iter().cloned().collect();
                (has_http || !istio.is_empty()).then(|| L7Endpoint {
                    namespace: ep.namespace.clone(),
                    name: ep.name.clone(),
                    ips: ep.ips.clone(),
                    identity: identity(ep),
                    entries: encode_map(map.iter()),
                    istio,
                })
            })
            .collect();
        let pods = bundle
            .endpoints
            .iter()
            .map(|ep| PodInfo {
                namespace: ep.namespace.clone(),
                name: ep.name.clone(),
                ips: ep.ips.clone(),
                identity: identity(ep),
                labels: ep.labels.clone(),
                service_account: service_account_of(ep),
            })
            .collect();
        L7Config {
            version,
            endpoints,
            ipcache: ipcache(compiled, bundle, node),
            pods,
            istio: bundle.istio.clone(),
        }
    }
}

/// The identity cache as seen from `node`, equal in meaning to `Identities::lookup` (the same
/// construction as the eBPF ipcache's: CIDR identities at their own prefix, endpoint and node
/// addresses as full-length entries).
fn ipcache(compiled: &Compiled, bundle: &Bundle, node: &str) -> Vec<(IpNet, u32)> {
    let ids = &compiled.identities;
    let mut out: HashMap<IpNet, u32> = HashMap::new();
    for (id, labels) in ids.iter() {
        if let IdentityLabels::Cidr { cidrs } = labels {
            if let Some(own) = cidrs.iter().max_by_key(|net| net.prefix_len()) {
                out.insert(own.trunc(), id);
            }
        }
    }
    let addrs = bundle
        .endpoints
        .iter()
        .flat_map(|ep| ep.ips.iter())
        .chain(bundle.nodes.values().flat_map(|n| n.ips.iter()));
    for ip in addrs {
        out.insert(IpNet::from(*ip), ids.lookup(*ip, Some(node)));
    }
    let mut v: Vec<(IpNet, u32)> = out.into_iter().collect();
    v.sort();
    v
}

fn encode_map<'a>(entries: impl Iterator<Item = (&'a Key, &'a Entry)>) -> Vec<WireEntry> {
    let mut out: Vec<WireEntry> = entries
        .map(|(k, e)| WireEntry {
            direction: match k.direction {
                Direction::Ingress => WireDirection::Ingress,
                Direction::Egress => WireDirection::Egress,
            },
            identity: k.identity,
            protocol: k.protocol,
            port: k.port,
            prefix: k.prefix,
            deny: e.deny,
            allow: e.allow,
            http: e
                .http
                .as_ref()
                .map(|rules| rules.iter().map(encode_rule).collect()),
        })
        .collect();
    // Deterministic output: the same policy gives the same bytes (and state file).
    out.sort_by_key(|e| {
        (
            e.direction == WireDirection::Egress,
            e.identity,
            e.protocol,
            e.port,
            e.prefix,
        )
    });
    out
}

fn encode_rule(r: &HttpRule) -> WireRule {
    let src = |p: &Option<Pattern>| p.as_ref().map(|p| p.source.clone());
    WireRule {
        field: r.field.clone(),
        method: src(&r.method),
        path: src(&r.path),
        host: src(&r.host),
        headers: r.headers.clone(),
    }
}

/// Decodes one endpoint's entries back into a `PolicyMap`, recompiling every pattern.
pub fn decode_map(ep: &L7Endpoint) -> Result<policy::PolicyMap, ConfigError> {
    let endpoint = format!("{}/{}", ep.namespace, ep.name);
    let mut entries = Vec::with_capacity(ep.entries.len());
    for (i, w) in ep.entries.iter().enumerate() {
        if w.prefix > 16 {
            return Err(ConfigError::Prefix {
                endpoint,
                field: format!("entries[{i}].prefix"),
                prefix: w.prefix,
            });
        }
        let http = match &w.http {
            None => None,
            Some(rules) => Some(
                rules
                    .iter()
                    .enumerate()
                    .map(|(j, r)| decode_rule(r, &endpoint, &format!("entries[{i}].http[{j}]")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let key = Key {
            direction: match w.direction {
                WireDirection::Ingress => Direction::Ingress,
                WireDirection::Egress => Direction::Egress,
            },
            identity: w.identity,
            protocol: w.protocol,
            port: w.port,
            prefix: w.prefix,
        };
        let entry = Entry {
            deny: w.deny,
            allow: w.allow,
            http,
        };
        entries.push((key, entry));
    }
    Ok(policy::PolicyMap::from_entries(entries))
}

fn decode_rule(r: &WireRule, endpoint: &str, at: &str) -> Result<HttpRule, ConfigError> {
    let pattern = |name: &str, p: &Option<String>| -> Result<Option<Pattern>, ConfigError> {
        let Some(src) = p else { return Ok(None) };
        Pattern::new(src)
            .map(Some)
            .map_err(|e| ConfigError::Pattern {
                endpoint: endpoint.to_string(),
                field: format!("{at}.{name}"),
                pattern: src.clone(),
                message: e.to_string(),
            })
    };
    Ok(HttpRule {
        field: r.field.clone(),
        method: pattern("method", &r.method)?,
        path: pattern("path", &r.path)?,
        host: pattern("host", &r.host)?,
        headers: r.headers.clone(),
    })
}

/// Parses the JSON text of a configuration, naming the field at fault.
pub fn parse(bytes: &[u8]) -> Result<L7Config, ConfigError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Json {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

#[cfg(test)]
#[path = "config_tests.rs"]
pub(crate) mod tests;
