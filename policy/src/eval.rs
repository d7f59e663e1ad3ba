//! The direct semantic evaluator: which policies select an endpoint, and which of their rules
//! admit or deny one remote peer on one protocol and port. It answers traces; the compiled
//! policy map (`compile.rs`) must agree with it (property test in `tests/consistency.rs`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::http::HttpRule;
use crate::labels::{Labels, Source};
use crate::model::{
    cilium_labels, Bundle, Direction, Endpoint, Entity, NamedPorts, NamespaceMatch, Peer, Peers,
    Policy, PolicyId, PortSpec, PortValue, Ports, Protocol, Subject,
};

/// What the other end of a connection is, from one endpoint's point of view.
#[derive(Debug, Clone, Copy)]
pub enum Remote<'a> {
    Endpoint {
        endpoint: &'a Endpoint,
        ip: Option<IpAddr>,
    },
    /// A node; `own` when it is the node the local endpoint runs on; `ips` all its addresses.
    Node {
        name: &'a str,
        ip: IpAddr,
        ips: &'a [IpAddr],
        own: bool,
    },
    World(IpAddr),
}

/// What a peer is matched against: either a concrete remote (evaluator) or a security
/// identity (compiler). CIDR membership is an address test for the former and a lookup in
/// the identity's CIDR labels for the latter.
pub(crate) struct View<'a> {
    pub class: Class<'a>,
    pub cidr: CidrTest<'a>,
    /// The remote's named ports, when it is an endpoint (egress named ports resolve on it).
    pub named_ports: Option<&'a NamedPorts>,
}

pub(crate) enum Class<'a> {
    Endpoint {
        namespace: &'a str,
        labels: &'a Labels,
        ns_labels: &'a Labels,
    },
    Host,
    RemoteNode,
    World,
}

pub(crate) enum CidrTest<'a> {
    Address(Option<IpAddr>),
    Labels(&'a BTreeSet<IpNet>),
    /// The local node, which the data path knows as one identity (`host`) for all its
    /// addresses: in a block only if every one of them is (never when it has none), so that
    /// allowing `host` never allows an address the block leaves out.
    Every(&'a [IpAddr]),
}

impl CidrTest<'_> {
    fn in_block(&self, cidr: &IpNet, except: &[IpNet]) -> bool {
        let address = |ip: &IpAddr| cidr.contains(ip) && !except.iter().any(|e| e.contains(ip));
        match self {
            CidrTest::Address(ip) => ip.as_ref().is_some_and(address),
            CidrTest::Labels(set) => set.contains(cidr) && !except.iter().any(|e| set.contains(e)),
            CidrTest::Every(ips) => !ips.is_empty() && ips.iter().all(address),
        }
    }
}

pub(crate) fn subject_matches(policy: &Policy, bundle: &Bundle, ep: &Endpoint) -> bool {
    if ep.host {
        // A host's policy is a host policy (`nodeSelector`): no endpoint selector selects it.
        return false;
    }
    match &policy.subject {
        Subject::Pods {
            namespace,
            selector,
        } => &ep.namespace == namespace && selector.matches(&ep.labels, &Source::K8s),
        Subject::Endpoints(sel) => {
            let ns_labels = bundle.endpoint_namespace_labels(ep);
            sel.matches(
                &cilium_labels(&ep.namespace, &ep.labels, &ns_labels),
                &Source::K8s,
            )
        }
        Subject::Nodes(_) => false,
    }
}

/// Whether `policy` selects `node`'s host endpoint (Cilium `nodeSelector`, over the node's
/// labels).
pub(crate) fn node_subject_matches(policy: &Policy, node: &crate::model::Node) -> bool {
    match &policy.subject {
        Subject::Nodes(sel) => sel.matches(&node.labels, &Source::K8s),
        _ => false,
    }
}

fn reserved_labels(name: &str) -> Labels {
    Labels::from([(name.to_string(), String::new())])
}

pub(crate) fn peer_matches(peer: &Peer, view: &View<'_>) -> bool {
    match (peer, &view.class) {
        // API reference, NetworkPolicyPeer: podSelector and namespaceSelector in one peer
        // select "the pods matching podSelector in the Namespaces selected by
        // NamespaceSelector"; neither selects anything outside the cluster's pods.
        (
            Peer::Pods { pods, namespaces },
            Class::Endpoint {
                namespace,
                labels,
                ns_labels,
            },
        ) => {
            let ns_ok = match namespaces {
                NamespaceMatch::Same(ns) => ns == namespace,
                NamespaceMatch::Selector(sel) => sel.matches(ns_labels, &Source::K8s),
            };
            ns_ok
                && pods
                    .as_ref()
                    .is_none_or(|s| s.matches(labels, &Source::K8s))
        }
        (Peer::Pods { .. }, _) => false,
        // ipBlock matches every address in it: pods' (upstream conformance tests select pods
        // by ipBlock), nodes' and outside ones.
        (Peer::IpBlock { cidr, except }, _) => view.cidr.in_block(cidr, except),
        (
            Peer::Endpoints(sel),
            Class::Endpoint {
                namespace,
                labels,
                ns_labels,
            },
        ) => sel.matches(&cilium_labels(namespace, labels, ns_labels), &Source::K8s),
        (Peer::Endpoints(sel), reserved) => {
            let name = match reserved {
                Class::Host => "host",
                Class::RemoteNode => "remote-node",
                _ => "world",
            };
            sel.names_reserved() && sel.matches(&reserved_labels(name), &Source::Reserved)
        }
        // Cilium docs: "CIDR rules do not apply to traffic where both sides of the connection
        // are either managed by Cilium or use an IP belonging to a node in the cluster."
        (Peer::Cidr { cidr, except }, Class::World) => view.cidr.in_block(cidr, except),
        (Peer::Cidr { .. }, _) => false,
        (Peer::Entity(e), class) => matches!(
            (e, class),
            (Entity::All, _)
                | (Entity::World, Class::World)
                | (
                    Entity::Cluster,
                    Class::Endpoint { .. } | Class::Host | Class::RemoteNode
                )
                | (Entity::Host, Class::Host)
                | (Entity::RemoteNode, Class::RemoteNode)
        ),
    }
}

pub(crate) fn port_matches(
    spec: &PortSpec,
    protocol: Protocol,
    port: u16,
    named: Option<&NamedPorts>,
) -> bool {
    if !spec.protocol.contains(protocol) {
        return false;
    }
    match &spec.port {
        PortValue::All => true,
        PortValue::Range(a, b) => (*a..=*b).contains(&port),
        // API reference, NetworkPolicyPort.port: "this can either be a numerical or named
        // port on a pod"; the name is looked up on the destination pod, with its protocol.
        PortValue::Named(name) => named
            .and_then(|n| n.get(name))
            .is_some_and(|(p, n)| *p == protocol && *n == port),
    }
}

/// One rule that matched.
#[derive(Debug, Clone)]
pub struct RuleHit {
    pub policy: PolicyId,
    /// `spec.ingress[0]`.
    pub rule: String,
    /// The L7 rules of the matching port entries; `None` when at least one matching entry
    /// leaves L7 unrestricted.
    pub http: Option<Vec<HttpRule>>,
}

/// The outcome for one endpoint in one direction.
#[derive(Debug, Clone, Default)]
pub struct DirectionEval {
    /// Policies that select the endpoint and isolate it in this direction.
    pub isolated_by: Vec<PolicyId>,
    /// The remote is the endpoint's own node (ingress: always allowed).
    pub own_node: bool,
    pub allowed_by: Vec<RuleHit>,
    pub denied_by: Vec<RuleHit>,
}

impl DirectionEval {
    pub fn isolated(&self) -> bool {
        !self.isolated_by.is_empty()
    }

    /// Cilium: deny wins over any allow. Kubernetes: a non-isolated pod allows everything,
    /// an isolated one what the union of its policies allows.
    pub fn allowed(&self) -> bool {
        self.denied_by.is_empty()
            && (!self.isolated() || self.own_node || !self.allowed_by.is_empty())
    }

    /// The L7 rules that constrain an allowed connection: `None` if unrestricted.
    pub fn l7_rules(&self) -> Option<Vec<HttpRule>> {
        if !self.isolated() || self.own_node {
            return None;
        }
        let mut out = Vec::new();
        for hit in &self.allowed_by {
            out.extend(hit.http.clone()?);
        }
        Some(out)
    }
}

pub(crate) fn view_of<'a>(remote: &Remote<'a>, ns_labels: &'a Labels) -> View<'a> {
    match *remote {
        Remote::Endpoint { endpoint, ip } => View {
            class: Class::Endpoint {
                namespace: &endpoint.namespace,
                labels: &endpoint.labels,
                ns_labels,
            },
            cidr: CidrTest::Address(ip),
            named_ports: Some(&endpoint.named_ports),
        },
        Remote::Node { ip, ips, own, .. } => View {
            class: if own { Class::Host } else { Class::RemoteNode },
            cidr: if own {
                CidrTest::Every(ips)
            } else {
                CidrTest::Address(Some(ip))
            },
            named_ports: None,
        },
        Remote::World(ip) => View {
            class: Class::World,
            cidr: CidrTest::Address(Some(ip)),
            named_ports: None,
        },
    }
}

/// Evaluates `local`'s policies in `dir` against `remote` on `protocol`/`port` (for ICMP,
/// `port` is the ICMP type).
pub fn evaluate(
    bundle: &Bundle,
    local: &Endpoint,
    dir: Direction,
    remote: &Remote<'_>,
    protocol: Protocol,
    port: u16,
) -> DirectionEval {
    let ns_labels = match remote {
        Remote::Endpoint { endpoint, .. } => bundle.endpoint_namespace_labels(endpoint),
        _ => Labels::new(),
    };
    let view = view_of(remote, &ns_labels);
    let named = match dir {
        Direction::Ingress => Some(&local.named_ports),
        Direction::Egress => view.named_ports,
    };
    let mut out = DirectionEval {
        // Kubernetes docs: "traffic to and from the node where a Pod is running is always
        // allowed" — applied to ingress from the node, as Cilium's allow-localhost does.
        own_node: dir == Direction::Ingress && matches!(remote, Remote::Node { own: true, .. }),
        ..DirectionEval::default()
    };
    for policy in &bundle.policies {
        if !subject_matches(policy, bundle, local) {
            continue;
        }
        if policy.isolates(dir) && !out.isolated_by.contains(&policy.id) {
            out.isolated_by.push(policy.id.clone());
        }
        for (rules, deny) in [
            (policy.allow_rules(dir), false),
            (policy.deny_rules(dir), true),
        ] {
            for rule in rules {
                let peer_ok = match &rule.peers {
                    Peers::All => true,
                    Peers::List(peers) => peers.iter().any(|p| peer_matches(p, &view)),
                };
                if !peer_ok {
                    continue;
                }
                let hit = match &rule.ports {
                    Ports::All => Some(None),
                    Ports::List(specs) => {
                        let matching: Vec<&PortSpec> = specs
                            .iter()
                            .filter(|s| port_matches(s, protocol, port, named))
                            .collect();
                        if matching.is_empty() {
                            None
                        } else if matching.iter().any(|s| s.http.is_none()) {
                            Some(None)
                        } else {
                            Some(Some(
                                matching
                                    .iter()
                                    .flat_map(|s| s.http.clone().unwrap_or_default())
                                    .collect(),
                            ))
                        }
                    }
                };
                let Some(http) = hit else { continue };
                let hit = RuleHit {
                    policy: policy.id.clone(),
                    rule: rule.field.clone(),
                    http: if deny { None } else { http },
                };
                if deny {
                    out.denied_by.push(hit);
                } else {
                    out.allowed_by.push(hit);
                }
            }
        }
    }
    out
}
