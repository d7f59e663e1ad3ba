//! `networking.k8s.io/v1` NetworkPolicy → the policy model, validated as the API server
//! validates it.

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::FieldError;
use crate::labels::Selector;
use crate::model::{
    NamespaceMatch, Peer, Peers, Policy, PolicyId, PolicyKind, PortSpec, PortValue, Ports,
    ProtoMatch, Protocol, Rule, Subject,
};
use crate::parse::{parse_cidr, valid_port_name};

pub fn convert(np: &NetworkPolicy, namespace: &str, name: &str) -> Result<Policy, FieldError> {
    let spec = np
        .spec
        .as_ref()
        .ok_or_else(|| FieldError::new("spec", "missing"))?;
    let subject = Subject::Pods {
        namespace: namespace.to_string(),
        // API reference, podSelector: "An empty podSelector selects all pods in this
        // namespace." (absent is the same as `{}` since it is optional in v1.34.)
        selector: selector(spec.pod_selector.as_ref(), "spec.podSelector")?,
    };
    let (isolates_ingress, isolates_egress) = isolation(spec)?;
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let field = format!("spec.ingress[{i}]");
        let peers = peers(r.from.as_ref(), &format!("{field}.from"), namespace)?;
        let ports = ports(r.ports.as_ref(), &format!("{field}.ports"))?;
        ingress.push(Rule {
            field,
            peers,
            ports,
        });
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let field = format!("spec.egress[{i}]");
        let peers = peers(r.to.as_ref(), &format!("{field}.to"), namespace)?;
        let ports = ports(r.ports.as_ref(), &format!("{field}.ports"))?;
        egress.push(Rule {
            field,
            peers,
            ports,
        });
    }
    // Rules for a direction the policy does not affect are ignored, as upstream does.
    if !isolates_ingress {
        ingress.clear();
    }
    if !isolates_egress {
        egress.clear();
    }
    Ok(Policy {
        id: PolicyId {
            kind: PolicyKind::NetworkPolicy,
            namespace: Some(namespace.to_string()),
            name: name.to_string(),
        },
        subject,
        isolates_ingress,
        isolates_egress,
        ingress,
        egress,
        ingress_deny: Vec::new(),
        egress_deny: Vec::new(),
    })
}

/// Which directions the policy affects (isolates), from `policyTypes` as defaulted.
fn isolation(spec: &NetworkPolicySpec) -> Result<(bool, bool), FieldError> {
    // API reference, policyTypes: "If this field is not specified, it will default based on
    // the existence of ingress or egress rules; policies that contain an egress section are
    // assumed to affect egress, and all policies (whether or not they contain an ingress
    // section) are assumed to affect ingress." The API server's defaulting
    // (SetDefaults_NetworkPolicySpec) is what counts: when `len(policyTypes) == 0` it sets
    // Ingress, plus Egress only when `len(egress) != 0` — so `egress: []` and an empty
    // `policyTypes: []` are defaulted like absent ones.
    Ok(match spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
        None => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
        // API validation: "may not specify more than two policyTypes".
        Some(types) if types.len() > 2 => {
            return Err(FieldError::new(
                "spec.policyTypes",
                format!(
                    "may not specify more than two policyTypes (got {})",
                    types.len()
                ),
            ))
        }
        Some(types) => {
            let mut ingress = false;
            let mut egress = false;
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => {
                        return Err(FieldError::new(
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                        ))
                    }
                }
            }
            (ingress, egress)
        }
    })
}

fn selector(sel: Option<&LabelSelector>, field: &str) -> Result<Selector, FieldError> {
    match sel {
        None => Ok(Selector::default()),
        Some(s) => Selector::compile(s, false)
            .map_err(|e| FieldError::new(format!("{field}.{}", e.field), e.message)),
    }
}

fn peers(
    list: Option<&Vec<NetworkPolicyPeer>>,
    field: &str,
    namespace: &str,
) -> Result<Peers, FieldError> {
    // API reference, ingress.from: "If this field is empty or missing, this rule matches all
    // sources (traffic not restricted by source)." So `from: []` and no `from` both admit
    // everyone; only a non-empty list restricts.
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(Peers::All);
    };
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        out.push(peer(p, &format!("{field}[{i}]"), namespace)?);
    }
    Ok(Peers::List(out))
}

fn peer(p: &NetworkPolicyPeer, field: &str, namespace: &str) -> Result<Peer, FieldError> {
    if let Some(block) = &p.ip_block {
        // API validation: ipBlock may not be combined with the selectors in one peer.
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(FieldError::new(
                field,
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
            ));
        }
        return ip_block(block, &format!("{field}.ipBlock"));
    }
    if p.pod_selector.is_none() && p.namespace_selector.is_none() {
        return Err(FieldError::new(
            field,
            "must specify a peer (podSelector, namespaceSelector or ipBlock)",
        ));
    }
    // API reference, NetworkPolicyPeer.podSelector: "If namespaceSelector is also set, then
    // the NetworkPolicyPeer as a whole selects the pods matching podSelector in the
    // Namespaces selected by NamespaceSelector. Otherwise it selects the pods matching
    // podSelector in the policy's own namespace."
    let pods = match &p.pod_selector {
        None => None,
        Some(s) => Some(selector(Some(s), &format!("{field}.podSelector"))?),
    };
    let namespaces = match &p.namespace_selector {
        None => NamespaceMatch::Same(namespace.to_string()),
        Some(s) => {
            NamespaceMatch::Selector(selector(Some(s), &format!("{field}.namespaceSelector"))?)
        }
    };
    Ok(Peer::Pods { pods, namespaces })
}

fn ip_block(block: &IPBlock, field: &str) -> Result<Peer, FieldError> {
    let cidr = parse_cidr(&block.cidr, false)
        .map_err(|e| FieldError::new(format!("{field}.cidr"), e.to_string()))?;
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let f = format!("{field}.except[{i}]");
        let net = parse_cidr(e, false).map_err(|err| FieldError::new(&f, err.to_string()))?;
        // API validation: "must be a strict subset of `cidr`".
        if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
            return Err(FieldError::new(
                f,
                format!("{e} must be a strict subset of cidr {}", block.cidr),
            ));
        }
        except.push(net);
    }
    Ok(Peer::IpBlock { cidr, except })
}

fn ports(list: Option<&Vec<NetworkPolicyPort>>, field: &str) -> Result<Ports, FieldError> {
    // API reference, ingress.ports: "If this field is empty or missing, this rule matches all
    // ports (traffic not restricted by port)." `ports: [{}]` is not empty: it holds one port
    // entry whose protocol defaults to TCP and whose port is unset, i.e. every TCP port only.
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(Ports::All);
    };
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        out.push(port(p, &format!("{field}[{i}]"))?);
    }
    Ok(Ports::List(out))
}

fn port(p: &NetworkPolicyPort, field: &str) -> Result<PortSpec, FieldError> {
    // API reference, NetworkPolicyPort.protocol: "The protocol (TCP, UDP, or SCTP) which
    // traffic must match. If not specified, this field defaults to TCP."
    let protocol = match p.protocol.as_deref() {
        None => Protocol::Tcp,
        Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(other) => {
            return Err(FieldError::new(
                format!("{field}.protocol"),
                format!("unsupported protocol {other:?} (expected TCP, UDP or SCTP)"),
            ))
        }
    };
    let port = match (&p.port, p.end_port) {
        // "If this field is not provided, this matches all port names and numbers."
        (None, None) => PortValue::All,
        (None, Some(_)) => {
            return Err(FieldError::new(
                format!("{field}.endPort"),
                "endPort requires port to be set",
            ))
        }
        (Some(IntOrString::Int(n)), end) => {
            let start = port_number(i64::from(*n), &format!("{field}.port"))?;
            // API reference, endPort: "indicates that the range of ports from port to endPort
            // if set, inclusive, should be allowed by the policy. This field cannot be defined
            // if the port field is not defined or if the port field is defined as a named
            // (string) port. The endPort must be equal or greater than port."
            let end = match end {
                None => start,
                Some(e) => {
                    let e = port_number(i64::from(e), &format!("{field}.endPort"))?;
                    if e < start {
                        return Err(FieldError::new(
                            format!("{field}.endPort"),
                            format!("endPort {e} is less than port {start}"),
                        ));
                    }
                    e
                }
            };
            PortValue::Range(start, end)
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err(FieldError::new(
                    format!("{field}.endPort"),
                    format!("endPort cannot be used with the named port {name:?}"),
                ));
            }
            // The API accepts a numeric string as a port number too.
            if let Ok(n) = name.parse::<i64>() {
                let n = port_number(n, &format!("{field}.port"))?;
                PortValue::Range(n, n)
            } else {
                valid_port_name(name)
                    .map_err(|e| FieldError::new(format!("{field}.port"), e.to_string()))?;
                PortValue::Named(name.clone())
            }
        }
    };
    Ok(PortSpec {
        protocol: ProtoMatch::One(protocol),
        port,
        http: None,
    })
}

fn port_number(n: i64, field: &str) -> Result<u16, FieldError> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(FieldError::new(
            field,
            format!("port {n} is out of range (1-65535)"),
        )),
    }
}
