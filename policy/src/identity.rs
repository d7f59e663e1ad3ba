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
        namespace: String,
        labels: Labels,
        ns_labels: Labels,
        named_ports: NamedPorts,
        cidrs: BTreeSet<IpNet>,
    },
    /// An outside address range: `reserved:world` plus its `cidr:` labels.
    Cidr { cidrs: BTreeSet<IpNet> },
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
        }
        f.write_str(&parts.join(","))
    }
}

/// What an address resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CacheEntry {
    Identity(IdentityId),
    /// A node's address: `host` seen from that node, `remote-node` from any other.
    Node(String),
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

impl Identities {
    pub fn build(bundle: &Bundle) -> Self {
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
        let containing = |ip: IpAddr| -> BTreeSet<IpNet> {
            prefixes
                .iter()
                .filter(|p| p.contains(&ip))
                .copied()
                .collect()
        };
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
            let ns_labels = bundle.namespace_labels(&ep.namespace);
            for ip in &ep.ips {
                let labels = IdentityLabels::Endpoint {
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
        let mut taken = HashSet::new();
        for labels in endpoint_sets {
            let id = stable_id(&labels, FIRST_ENDPOINT, FIRST_CIDR, &mut taken);
            ids.insert(labels, id);
        }
        for prefix in &prefixes {
            let labels = IdentityLabels::Cidr {
                cidrs: prefixes
                    .iter()
                    .filter(|p| p.contains(prefix))
                    .copied()
                    .collect(),
            };
            let id = match ids.by_labels.get(&labels) {
                Some(id) => *id,
                None => {
                    let id = stable_id(&labels, FIRST_CIDR, IdentityId::MAX, &mut taken);
                    ids.insert(labels, id);
                    id
                }
            };
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
        for node in bundle.nodes.values() {
            for ip in &node.ips {
                ids.put(IpNet::from(*ip), CacheEntry::Node(node.name.clone()));
            }
        }
        ids
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
                Some(CacheEntry::Node(name)) => {
                    return if Some(name.as_str()) == local_node {
                        HOST
                    } else {
                        REMOTE_NODE
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
    // FNV-1a over the canonical (sorted maps) rendering of the labels.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("{labels:?}").bytes() {
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
mod stable_id_tests {
    use super::*;

    fn endpoint(app: &str) -> IdentityLabels {
        IdentityLabels::Endpoint {
            namespace: "x".into(),
            labels: Labels::from([("app".to_string(), app.to_string())]),
            ns_labels: Labels::new(),
            named_ports: NamedPorts::new(),
            cidrs: BTreeSet::new(),
        }
    }

    #[test]
    fn numbers_survive_other_label_sets_coming_and_going() {
        let mut taken = HashSet::new();
        let a = stable_id(&endpoint("a"), FIRST_ENDPOINT, FIRST_CIDR, &mut taken);
        let mut taken = HashSet::new();
        for other in ["0", "b", "c", "aa"] {
            stable_id(&endpoint(other), FIRST_ENDPOINT, FIRST_CIDR, &mut taken);
        }
        let again = stable_id(&endpoint("a"), FIRST_ENDPOINT, FIRST_CIDR, &mut taken);
        assert_eq!(a, again);
        assert!((FIRST_ENDPOINT..FIRST_CIDR).contains(&a));
    }

    #[test]
    fn collisions_take_the_next_free_number() {
        let mut taken = HashSet::from([FIRST_CIDR - 1]);
        let l = endpoint("a");
        let first = stable_id(&l, FIRST_ENDPOINT, FIRST_CIDR, &mut HashSet::new());
        taken.insert(first);
        let second = stable_id(&l, FIRST_ENDPOINT, FIRST_CIDR, &mut taken);
        assert_ne!(first, second);
        assert!((FIRST_ENDPOINT..FIRST_CIDR).contains(&second));
    }
}
