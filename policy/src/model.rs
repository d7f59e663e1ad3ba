//! The normalised policy model that NetworkPolicy, CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy are all translated into, and the [`Bundle`] of everything
//! loaded (Istio policies in their own model, `crate::istio`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::http::HttpRule;
use crate::istio::{AuthzPolicy, IstioSettings, PeerAuthn};
use crate::labels::{Labels, Selector};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Sctp,
        Protocol::Icmp,
        Protocol::Icmpv6,
    ];

    /// IANA protocol number, as the data path sees it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Icmp => 1,
            Protocol::Icmpv6 => 58,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            "ICMP" => Some(Protocol::Icmp),
            "ICMPV6" => Some(Protocol::Icmpv6),
            _ => None,
        }
    }

    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmpv6)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    NetworkPolicy,
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        })
    }
}

/// `kind namespace/name` (or `kind name` when cluster-scoped), as error messages and traces
/// name a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Which endpoints a policy applies to.
#[derive(Debug, Clone)]
pub enum Subject {
    /// NetworkPolicy `spec.podSelector`: pods of `namespace` whose own labels match.
    Pods {
        namespace: String,
        selector: Selector,
    },
    /// Cilium `endpointSelector`, over the endpoint's Cilium labels (pod labels plus the
    /// namespace labels Cilium folds in); the namespace requirement of a namespaced CNP is
    /// already part of the selector.
    Endpoints(Selector),
    /// Cilium `nodeSelector`: the host endpoints of the nodes whose labels match (compiled
    /// into `Compiled::host_maps`; a trace does not report host endpoints yet).
    Nodes(Selector),
}

/// Cilium entities (`fromEntities` / `toEntities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entity {
    World,
    Cluster,
    Host,
    RemoteNode,
    All,
}

/// Who a rule admits.
#[derive(Debug, Clone)]
pub enum Peer {
    /// NetworkPolicy `podSelector` and/or `namespaceSelector` (AND'ed within one peer).
    Pods {
        pods: Option<Selector>,
        namespaces: NamespaceMatch,
    },
    /// NetworkPolicy `ipBlock`: matches any address in `cidr` outside `except`, pod
    /// addresses included.
    IpBlock {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
    /// Cilium `fromEndpoints`/`toEndpoints`.
    Endpoints(Selector),
    /// Cilium `fromCIDR(Set)`/`toCIDR(Set)`: outside-world addresses only.
    Cidr {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
    Entity(Entity),
}

#[derive(Debug, Clone)]
pub enum NamespaceMatch {
    /// No `namespaceSelector`: the policy's own namespace.
    Same(String),
    /// A `namespaceSelector` over namespace labels (`{}` selects every namespace).
    Selector(Selector),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtoMatch {
    One(Protocol),
    /// Cilium `ANY` (TCP, UDP and SCTP).
    AnyL4,
}

impl ProtoMatch {
    pub fn protocols(self) -> Vec<Protocol> {
        match self {
            ProtoMatch::One(p) => vec![p],
            ProtoMatch::AnyL4 => vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp],
        }
    }

    pub fn contains(self, p: Protocol) -> bool {
        match self {
            ProtoMatch::One(q) => p == q,
            ProtoMatch::AnyL4 => matches!(p, Protocol::Tcp | Protocol::Udp | Protocol::Sctp),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortValue {
    /// Every port (or, for ICMP, every type).
    All,
    /// Inclusive range; ICMP types are carried here too.
    Range(u16, u16),
    /// A named container port, resolved on the destination pod.
    Named(String),
}

#[derive(Debug, Clone)]
pub struct PortSpec {
    pub protocol: ProtoMatch,
    pub port: PortValue,
    /// Cilium `rules.http`; `None` leaves L7 unrestricted.
    pub http: Option<Vec<HttpRule>>,
}

#[derive(Debug, Clone)]
pub enum Peers {
    /// Every peer, inside or outside the cluster.
    All,
    /// Any of these (possibly none).
    List(Vec<Peer>),
}

#[derive(Debug, Clone)]
pub enum Ports {
    /// Every protocol and port, ICMP included.
    All,
    /// Any of these.
    List(Vec<PortSpec>),
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// Where the rule is in its manifest (`spec.ingress[1]`), for traces.
    pub field: String,
    pub peers: Peers,
    pub ports: Ports,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub id: PolicyId,
    pub subject: Subject,
    /// Whether selected endpoints are isolated (default deny) for ingress / egress.
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    pub ingress_deny: Vec<Rule>,
    pub egress_deny: Vec<Rule>,
}

impl Policy {
    pub fn isolates(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }

    pub fn allow_rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn deny_rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress_deny,
            Direction::Egress => &self.egress_deny,
        }
    }
}

/// A named container port.
pub type NamedPorts = BTreeMap<String, (Protocol, u16)>;

/// A pod that policy applies to (not host-network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node: Option<String>,
    pub ips: Vec<IpAddr>,
    pub named_ports: NamedPorts,
    /// The Pod's `spec.serviceAccountName` (`default` when unset): its Istio principal is
    /// `<trustDomain>/ns/<namespace>/sa/<service_account>`. Also in `labels` under
    /// [`SERVICE_ACCOUNT_LABEL`], as Cilium puts it, so that identities differ by account.
    pub service_account: String,
    /// The remote cluster it is in (cluster mesh); `None`: this cluster. Its `node` is then
    /// `<cluster>/<node>`, never one of this cluster's nodes.
    pub cluster: Option<String>,
    /// A host without pods (a VM or bare-metal machine that joined with `hostAddress` and
    /// `labels`; its Pod object carries [`HOST_ENDPOINT_ANNOTATION`]): a peer with an identity
    /// that selectors match, never a policy subject (its own policy is a host policy, selected
    /// by `nodeSelector`) and no node's local endpoint.
    pub host: bool,
}

impl Endpoint {
    /// `namespace/name`, or `cluster/namespace/name` for a remote cluster's endpoint.
    pub fn qualified_name(&self) -> String {
        match &self.cluster {
            Some(c) => format!("{c}/{}/{}", self.namespace, self.name),
            None => format!("{}/{}", self.namespace, self.name),
        }
    }
}

/// A node: its name, labels and addresses (learnt from `kind: Node`, pods' `status.hostIPs`
/// and host-network pods).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
}

/// A core `v1 Service`: only what Istio `targetRefs` need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `spec.selector`; `None` for a Service without one (its endpoints are managed by hand:
    /// it selects no pod here).
    pub selector: Option<Labels>,
}

/// Everything loaded from manifests: the input of `trace` and of the compiler.
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    /// Namespace name → labels (with `kubernetes.io/metadata.name`, which the API server
    /// always sets).
    pub namespaces: BTreeMap<String, Labels>,
    pub endpoints: Vec<Endpoint>,
    pub nodes: BTreeMap<String, Node>,
    pub policies: Vec<Policy>,
    /// Host-network pods (`namespace/name`): not endpoints, their addresses are their node's.
    pub host_network_pods: std::collections::BTreeSet<String>,
    /// What the loader skipped, for the user to see.
    pub notes: Vec<String>,
    /// Istio AuthorizationPolicies (enforced at the destination workload).
    pub authz: Vec<AuthzPolicy>,
    /// Istio PeerAuthentications.
    pub peer_authn: Vec<PeerAuthn>,
    /// Services by `namespace/name` (for `targetRefs`).
    pub services: BTreeMap<String, Service>,
    /// The root namespace and trust domain the Istio policies were loaded with.
    pub istio: IstioSettings,
    /// With cluster mesh, this cluster's name (every endpoint carries [`CLUSTER_LABEL`]).
    pub local_cluster: Option<String>,
    /// Cluster mesh: each cluster's ID (this one's included), which endpoint identities carry.
    pub cluster_ids: BTreeMap<String, u8>,
    /// Remote clusters' namespaces: cluster → namespace → labels.
    pub remote_namespaces: BTreeMap<String, BTreeMap<String, Labels>>,
}

impl Bundle {
    /// The labels of namespace `ns`; a namespace with no manifest still has its
    /// `kubernetes.io/metadata.name` label.
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        self.namespaces
            .get(ns)
            .cloned()
            .unwrap_or_else(|| Labels::from([(METADATA_NAME.to_string(), ns.to_string())]))
    }

    /// The labels of `ep`'s namespace, in its own cluster.
    pub fn endpoint_namespace_labels(&self, ep: &Endpoint) -> Labels {
        let remote = ep.cluster.as_ref().map(|c| {
            self.remote_namespaces
                .get(c)
                .and_then(|nss| nss.get(&ep.namespace))
                .cloned()
                .unwrap_or_else(|| {
                    Labels::from([(METADATA_NAME.to_string(), ep.namespace.clone())])
                })
        });
        remote.unwrap_or_else(|| self.namespace_labels(&ep.namespace))
    }

    /// This cluster's endpoint `namespace/name`.
    pub fn endpoint(&self, namespace: &str, name: &str) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.cluster.is_none() && e.namespace == namespace && e.name == name)
    }

    /// Remote cluster `cluster`'s endpoint `namespace/name`.
    pub fn remote_endpoint(&self, cluster: &str, namespace: &str, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| {
            e.cluster.as_deref() == Some(cluster) && e.namespace == namespace && e.name == name
        })
    }

    /// Adds remote cluster `cluster`'s endpoints and namespaces, loaded (with `cluster` as
    /// the cluster name) from its store: nothing else of it (its policies apply in its own
    /// cluster). Its endpoints' nodes become `<cluster>/<node>`.
    pub fn add_remote_cluster(&mut self, cluster: &str, remote: Bundle) {
        for mut ep in remote.endpoints {
            ep.cluster = Some(cluster.to_string());
            ep.node = ep.node.map(|n| format!("{cluster}/{n}"));
            self.endpoints.push(ep);
        }
        self.remote_namespaces
            .insert(cluster.to_string(), remote.namespaces);
    }

    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.ips.contains(&ip))
    }

    pub fn node_by_ip(&self, ip: IpAddr) -> Option<&Node> {
        self.nodes.values().find(|n| n.ips.contains(&ip))
    }

    /// The AuthorizationPolicies that apply to `workload`.
    pub fn authz_for(&self, workload: &Endpoint) -> Vec<&AuthzPolicy> {
        self.authz
            .iter()
            .filter(|p| p.applies_to(workload, self))
            .collect()
    }

    /// The Istio principal of `workload`.
    pub fn principal(&self, workload: &Endpoint) -> String {
        self.istio
            .principal(&workload.namespace, &workload.service_account)
    }
}

pub const METADATA_NAME: &str = "kubernetes.io/metadata.name";
/// On the Pod object a host's agent publishes for itself (see [`Endpoint::host`]).
pub const HOST_ENDPOINT_ANNOTATION: &str = "wiremesh.io/host-endpoint";
/// The label Cilium gives every endpoint for its service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// The label Cilium gives every endpoint for its cluster (with cluster mesh).
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// The label Cilium gives every endpoint for its namespace.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The prefix under which Cilium folds namespace labels into endpoint labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// An endpoint's labels as Cilium sees them: its own, its namespace, and its namespace's
/// labels under `io.cilium.k8s.namespace.labels.`.
pub fn cilium_labels(namespace: &str, pod_labels: &Labels, ns_labels: &Labels) -> Labels {
    let mut out = pod_labels.clone();
    out.insert(POD_NAMESPACE_LABEL.to_string(), namespace.to_string());
    for (k, v) in ns_labels {
        out.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
    }
    out
}
