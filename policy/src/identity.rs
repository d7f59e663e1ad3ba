//! Security identities and the IP → identity cache.
//!
//! As in Cilium, every distinct label set gets one numeric identity: an endpoint's labels are
//! its pod labels, `k8s:io.kubernetes.pod.namespace=<ns>` and its namespace's labels as
//! `k8s:io.cilium.k8s.namespace.labels.<key>=<value>`. Two things are folded into the label
//! set beyond Cilium's, so that the compiled map can be exact where NetworkPolicy is defined
//! per pod rather than per label set:
//! * the `cidr:` labels of every policy prefix containing the address (Cilium gives CIDR
//!   identities these labels; we give them to pod addresses too, because an `ipBlock` also
//!   selects pods by address) — an endpoint identity is therefore per (labels, address
//!   prefixes), and a dual-stack pod may have one identity per family;
//! * the pod's named ports, which NetworkPolicy resolves on the destination pod.
//!
//! A node's address is `host` on that node; elsewhere it is `remote-node`, or, when it lies in
//! policy prefixes, a remote-node identity carrying their `cidr:` labels (a NetworkPolicy
//! `ipBlock` selects node addresses; Cilium CIDR rules still do not).
//!
//! Reserved identities use Cilium's numbers; endpoint identities start at 256 (Cilium's
//! first cluster-scoped identity) and CIDR identities at 2^24 (Cilium's local scope).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::labels::Labels;
use crate::model::{cilium_labels, Bundle, NamedPorts, Peer, Peers};

pub type IdentityId = u32;

pub const HOST: IdentityId = 1;
pub const WORLD: IdentityId = 2;
pub const REMOTE_NODE: IdentityId = 6;
const FIRST_ENDPOINT: IdentityId = 256;
const FIRST_CIDR: IdentityId = 1 << 24;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdentityLabels {
    /// `reserved:host`, `reserved:world`, `reserved:remote-node`.
    Reserved(IdentityId),
    Endpoint {
        /// With cluster mesh, the ID of the endpoint's cluster: its identity number carries it
        /// (`id << 16 | 256..65535`, as Cilium's), so identities are unique mesh-wide.
        cluster_id: Option<u8>,
        namespace: String,
        labels: Labels,
        ns_labels: Labels,
        named_ports: NamedPorts,
        cidrs: BTreeSet<IpNet>,
    },
    /// An outside address range: `reserved:world` plus its `cidr:` labels.
    Cidr { cidrs: BTreeSet<IpNet> },
    /// A node address inside policy prefixes, seen from another node: `reserved:remote-node`
    /// plus its `cidr:` labels (never empty), so that a NetworkPolicy `ipBlock` can select it
    /// while it stays a remote node to everything else.
    RemoteNode { cidrs: BTreeSet<IpNet> },
}

impl IdentityLabels {
    /// The Istio principal of an endpoint identity (from its namespace and its
    /// `io.cilium.k8s.policy.serviceaccount` label), `None` for any other: what the proxy
    /// reads for a source address the tunnel authenticated.
    pub fn principal(&self, istio: &crate::istio::IstioSettings) -> Option<(String, String)> {
        let IdentityLabels::Endpoint {
            namespace, labels, ..
        } = self
        else {
            return None;
        };
        let sa = labels.get(crate::model::SERVICE_ACCOUNT_LABEL)?;
        Some((istio.principal(namespace, sa), namespace.clone()))
    }

    /// The numbers an identity of these labels is allocated from (`first..end`); `None` for
    /// reserved identities.
    pub fn allocation_range(&self) -> Option<(IdentityId, IdentityId)> {
        match self {
            IdentityLabels::Reserved(_) => None,
            IdentityLabels::Endpoint {
                cluster_id: Some(c),
                ..
            } => {
                let base = IdentityId::from(*c) << 16;
                Some((base + FIRST_ENDPOINT, base + (1 << 16)))
            }
            IdentityLabels::Endpoint { .. } => Some((FIRST_ENDPOINT, FIRST_CIDR)),
            IdentityLabels::Cidr { .. } | IdentityLabels::RemoteNode { .. } => {
                Some((FIRST_CIDR, IdentityId::MAX))
            }
        }
    }

    /// Where a search for a free number for these labels starts (their hash in the range), so
    /// that every node tries the same numbers in the same order.
    pub fn preferred_id(&self) -> Option<IdentityId> {
        let (first, end) = self.allocation_range()?;
        Some(stable_id(self, first, end, &mut HashSet::new()))
    }

    /// The canonical text of the labels (Cilium's label list, plus named ports, which name
    /// destination ports and so distinguish identities here): the key of a cluster-wide
    /// allocation.
    pub fn key(&self) -> String {
        let mut key = self.to_string();
        if let IdentityLabels::Endpoint { named_ports, .. } = self {
            for (name, (proto, port)) in named_ports {
                key.push_str(&format!(",port:{name}={proto}/{port}"));
            }
        }
        key
    }
}

impl fmt::Display for IdentityLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        match self {
            IdentityLabels::Reserved(HOST) => parts.push("reserved:host".into()),
            IdentityLabels::Reserved(REMOTE_NODE) => parts.push("reserved:remote-node".into()),
            IdentityLabels::Reserved(_) => parts.push("reserved:world".into()),
            IdentityLabels::Endpoint {
                namespace,
                labels,
                ns_labels,
                cidrs,
                ..
            } => {
                for (k, v) in cilium_labels(namespace, labels, ns_labels) {
                    parts.push(format!("k8s:{k}={v}"));
                }
                parts.extend(cidrs.iter().map(|c| format!("cidr:{c}")));
            }
            IdentityLabels::Cidr { cidrs } => {
                parts.push("reserved:world".into());
                parts.extend(cidrs.iter().map(|c| format!("cidr:{c}")));
            }
            IdentityLabels::RemoteNode { cidrs } => {
                parts.push("reserved:remote-node".into());
                parts.extend(cidrs.iter().map(|c| format!("cidr:{c}")));
            }
        }
        f.write_str(&parts.join(","))
    }
}

/// What an address resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CacheEntry {
    Identity(IdentityId),
    /// A node's address: `host` seen from that node, this identity (`remote-node`, or a
    /// remote-node identity with the address's policy prefixes) from any other.
    Node(String, IdentityId),
}

/// Identities and the longest-prefix-match IP cache.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    by_labels: BTreeMap<IdentityLabels, IdentityId>,
    by_id: BTreeMap<IdentityId, IdentityLabels>,
    /// Per prefix length (0..=128): prefix → entry. A lookup probes at most 33 (IPv4) or 129
    /// (IPv6) hash maps, whatever the number of entries.
    cache: Vec<HashMap<IpNet, CacheEntry>>,
}

/// Every prefix the policies name (`ipBlock`, `toCIDR`, `toCIDRSet` and their exceptions).
fn policy_prefixes(bundle: &Bundle) -> BTreeSet<IpNet> {
    let mut prefixes = BTreeSet::new();
    for policy in &bundle.policies {
        let rules = [
            &policy.ingress,
            &policy.egress,
            &policy.ingress_deny,
            &policy.egress_deny,
        ];
        for rule in rules.into_iter().flatten() {
            let Peers::List(peers) = &rule.peers else {
                continue;
            };
            for peer in peers {
                if let Peer::IpBlock { cidr, except } | Peer::Cidr { cidr, except } = peer {
                    prefixes.insert(*cidr);
                    prefixes.extend(except.iter().copied());
                }
            }
        }
    }
    prefixes
}

/// Each policy prefix under its network address, so that the prefixes containing an address or
/// another prefix are found with one lookup per prefix length (33 or 129), not by testing every
/// prefix: 10,000 /32 ipBlocks would otherwise cost 10^8 tests.
struct PrefixIndex {
    by_network: HashMap<IpNet, Vec<IpNet>>,
}

impl PrefixIndex {
    fn new(prefixes: &BTreeSet<IpNet>) -> Self {
        let mut by_network: HashMap<IpNet, Vec<IpNet>> = HashMap::new();
        for p in prefixes {
            by_network.entry(p.trunc()).or_default().push(*p);
        }
        Self { by_network }
    }

    /// The policy prefixes containing `addr/len`.
    fn supernets(&self, addr: IpAddr, len: u8) -> BTreeSet<IpNet> {
        (0..=len)
            .filter_map(|l| IpNet::new(addr, l).ok())
            .filter_map(|net| self.by_network.get(&net.trunc()))
            .flatten()
            .copied()
            .collect()
    }
}

impl Identities {
    /// Identities numbered locally (see [`stable_id`]).
    pub fn build(bundle: &Bundle) -> Self {
        Self::build_with(bundle, &|_| None)
    }

    /// Identities with the numbers `assigned` gives (a cluster-wide allocation); label sets it
    /// has no number for are numbered locally, around the assigned ones.
    pub fn build_with(
        bundle: &Bundle,
        assigned: &dyn Fn(&IdentityLabels) -> Option<IdentityId>,
    ) -> Self {
        let prefixes = policy_prefixes(bundle);
        let index = PrefixIndex::new(&prefixes);
        let containing = |ip: IpAddr| index.supernets(ip, IpNet::from(ip).prefix_len());
        let mut ids = Self {
            cache: vec![HashMap::new(); 129],
            ..Self::default()
        };
        for id in [HOST, WORLD, REMOTE_NODE] {
            ids.insert(IdentityLabels::Reserved(id), id);
        }
        // Deterministic numbering: sorted label sets.
        let mut endpoint_sets = BTreeSet::new();
        let mut endpoint_ips = Vec::new();
        for ep in &bundle.endpoints {
            let ns_labels = bundle.endpoint_namespace_labels(ep);
            for ip in &ep.ips {
                let cluster = ep.cluster.as_ref().or(bundle.local_cluster.as_ref());
                let labels = IdentityLabels::Endpoint {
                    cluster_id: cluster.and_then(|c| bundle.cluster_ids.get(c).copied()),
                    namespace: ep.namespace.clone(),
                    labels: ep.labels.clone(),
                    ns_labels: ns_labels.clone(),
                    named_ports: ep.named_ports.clone(),
                    cidrs: containing(*ip),
                };
                endpoint_sets.insert(labels.clone());
                endpoint_ips.push((*ip, labels));
            }
        }
        // A node address inside policy prefixes gets a remote-node identity with them, so an
        // `ipBlock` can tell it from other nodes' addresses.
        let mut node_ips = Vec::new();
        for node in bundle.nodes.values() {
            for ip in &node.ips {
                let cidrs = containing(*ip);
                let labels = (!cidrs.is_empty()).then_some(IdentityLabels::RemoteNode { cidrs });
                if let Some(l) = &labels {
                    endpoint_sets.insert(l.clone());
                }
                node_ips.push((node.name.clone(), *ip, labels));
            }
        }
        let cidr_sets: Vec<(IpNet, IdentityLabels)> = prefixes
            .iter()
            .map(|prefix| {
                let cidrs = index.supernets(prefix.addr(), prefix.prefix_len());
                (*prefix, IdentityLabels::Cidr { cidrs })
            })
            .collect();
        let wanted: BTreeSet<&IdentityLabels> = endpoint_sets
            .iter()
            .chain(cidr_sets.iter().map(|(_, l)| l))
            .collect();
        ids.number(wanted, assigned);
        for (prefix, labels) in &cidr_sets {
            let id = ids.by_labels[labels];
            ids.put(*prefix, CacheEntry::Identity(id));
        }
        for default in ["0.0.0.0/0", "::/0"] {
            let net: IpNet = default.parse().expect("literal prefix");
            if !prefixes.contains(&net) {
                ids.put(net, CacheEntry::Identity(WORLD));
            }
        }
        // Endpoint and node addresses are full-length prefixes: they override a policy
        // prefix of the same length, which only ever stood for an outside address.
        for (ip, labels) in endpoint_ips {
            let id = ids.by_labels[&labels];
            ids.put(IpNet::from(ip), CacheEntry::Identity(id));
        }
        for (name, ip, labels) in node_ips {
            let remote = labels.map_or(REMOTE_NODE, |l| ids.by_labels[&l]);
            ids.put(IpNet::from(ip), CacheEntry::Node(name, remote));
        }
        ids
    }

    /// Numbers every label set of `wanted`: assigned numbers first, so that local numbering
    /// steps around them.
    fn number(
        &mut self,
        wanted: BTreeSet<&IdentityLabels>,
        assigned: &dyn Fn(&IdentityLabels) -> Option<IdentityId>,
    ) {
        let mut taken = HashSet::new();
        let mut local = Vec::new();
        for labels in wanted {
            let range = labels.allocation_range();
            match assigned(labels) {
                Some(id)
                    if range.is_some_and(|(a, b)| (a..b).contains(&id)) && taken.insert(id) =>
                {
                    self.insert(labels.clone(), id);
                }
                _ => local.push(labels),
            }
        }
        for labels in local {
            if let Some((first, end)) = labels.allocation_range() {
                let id = stable_id(labels, first, end, &mut taken);
                self.insert(labels.clone(), id);
            }
        }
    }

    fn insert(&mut self, labels: IdentityLabels, id: IdentityId) {
        self.by_labels.insert(labels.clone(), id);
        self.by_id.insert(id, labels);
    }

    fn put(&mut self, net: IpNet, entry: CacheEntry) {
        self.cache[usize::from(net.prefix_len())].insert(net, entry);
    }

    /// The identity of `ip` as seen from `local_node`.
    pub fn lookup(&self, ip: IpAddr, local_node: Option<&str>) -> IdentityId {
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        for len in (0..=max).rev() {
            let Ok(net) = IpNet::new(ip, len) else {
                continue;
            };
            match self.cache[usize::from(len)].get(&net.trunc()) {
                None => {}
                Some(CacheEntry::Identity(id)) => return *id,
                Some(CacheEntry::Node(name, remote)) => {
                    return if Some(name.as_str()) == local_node {
                        HOST
                    } else {
                        *remote
                    }
                }
            }
        }
        WORLD
    }

    pub fn labels(&self, id: IdentityId) -> Option<&IdentityLabels> {
        self.by_id.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (IdentityId, &IdentityLabels)> {
        self.by_id.iter().map(|(id, l)| (*id, l))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// An identity number in `first..end` derived from the labels' hash, so that a label set keeps
/// its number when others come and go (a renumbered identity would briefly miss its policy
/// entries while the maps are rewritten), and every node with the same objects computes the
/// same numbers. Collisions move to the next free number; callers visit label sets in sorted
/// order, so that is deterministic too.
fn stable_id(
    labels: &IdentityLabels,
    first: IdentityId,
    end: IdentityId,
    taken: &mut HashSet<IdentityId>,
) -> IdentityId {
    // FNV-1a over the canonical key of the labels.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in labels.key().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let span = u64::from(end - first);
    let mut id = first + IdentityId::try_from(hash % span).unwrap_or(0);
    while !taken.insert(id) {
        id = if id + 1 >= end { first } else { id + 1 };
    }
    id
}

#[cfg(test)]
mod tests;
