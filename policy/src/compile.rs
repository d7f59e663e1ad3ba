//! Compiling policies into per-endpoint policy maps, as the data path will consult them.
//!
//! A map is keyed like Cilium's BPF policy map: (direction, remote identity, protocol, port
//! prefix), where identity 0 and protocol 0 are wildcards and a port range is stored as the
//! few power-of-two-aligned prefixes that cover it (port/prefix-length, prefix 0 = any port).
//! A lookup probes {identity, any} × {protocol, any} × 17 prefix lengths = at most 68 hash
//! lookups, whatever the number of rules: rule count only grows the map, never the probes.
//! Deny entries win over allow entries among everything the probes find. The map itself is
//! [`map`]; this module decides what goes in it, and must never put in an entry that the
//! trace evaluator (`eval`) would not grant: both use the same peer matcher.

mod map;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

pub use map::{range_prefixes, Entry, Key, MapVerdict, PolicyMap};
use map::{ANY, ANY_PROTO};

use crate::eval::{node_subject_matches, peer_matches, subject_matches, CidrTest, Class, View};
use crate::identity::{Identities, IdentityId, IdentityLabels, HOST, REMOTE_NODE};
use crate::model::{
    Bundle, Direction, Endpoint, NamedPorts, Peer, Peers, Policy, PortSpec, PortValue, Ports,
    Protocol,
};

/// Identities plus every endpoint's map: what the agent pushes to the data path.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub identities: Identities,
    /// `namespace/name` → its map.
    pub maps: BTreeMap<String, PolicyMap>,
    /// Node name → the map of its host endpoint, for every node a `nodeSelector` policy
    /// selects (a node no such policy selects is not a host endpoint: nothing is enforced).
    pub host_maps: BTreeMap<String, PolicyMap>,
}

impl Compiled {
    pub fn build(bundle: &Bundle) -> Self {
        Self::build_with(bundle, Identities::build(bundle))
    }

    /// Compiles every endpoint's map against `identities` (e.g. allocated cluster-wide with
    /// [`Identities::build_with`]).
    pub fn build_with(bundle: &Bundle, identities: Identities) -> Self {
        Self::build_for(bundle, identities, None)
    }

    /// [`Compiled::build_with`] for the endpoints and host endpoint of node `node` only (all
    /// when `None`): what one agent enforces. Identities still cover the whole cluster.
    pub fn build_for(bundle: &Bundle, identities: Identities, node: Option<&str>) -> Self {
        let index = PeerIndex::new(&identities);
        let ctx = Ctx {
            ids: &identities,
            index: &index,
        };
        let on_node = |n: Option<&str>| node.is_none() || n == node;
        let no_ips: Vec<IpAddr> = Vec::new();
        let host_ips = |n: Option<&str>| {
            n.and_then(|n| bundle.nodes.get(n))
                .map_or(no_ips.as_slice(), |n| n.ips.as_slice())
        };
        let maps = bundle
            .endpoints
            .iter()
            .filter(|ep| on_node(ep.node.as_deref()))
            .map(|ep| {
                let selecting = bundle
                    .policies
                    .iter()
                    .filter(|p| subject_matches(p, bundle, ep))
                    .collect();
                let subject = Subject {
                    own_ports: &ep.named_ports,
                    host_ips: host_ips(ep.node.as_deref()),
                };
                let mut map = compile_subject(&ctx, selecting, &subject);
                add_strict_mtls(&mut map, bundle, ep, &identities);
                (ep.qualified_name(), map)
            })
            .collect();
        let no_ports = NamedPorts::new();
        let host_maps = bundle
            .nodes
            .values()
            .filter(|n| on_node(Some(&n.name)))
            .filter_map(|node| {
                let selecting: Vec<&Policy> = bundle
                    .policies
                    .iter()
                    .filter(|p| node_subject_matches(p, node))
                    .collect();
                let subject = Subject {
                    own_ports: &no_ports,
                    host_ips: &node.ips,
                };
                (!selecting.is_empty()).then(|| {
                    (
                        node.name.clone(),
                        compile_subject(&ctx, selecting, &subject),
                    )
                })
            })
            .collect();
        Self {
            identities,
            maps,
            host_maps,
        }
    }

    /// The verdict for `local` in `dir` with a remote at `remote_ip`.
    pub fn lookup(
        &self,
        local: &Endpoint,
        dir: Direction,
        remote_ip: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<MapVerdict> {
        let map = self.maps.get(&local.qualified_name())?;
        let id = self.identities.lookup(remote_ip, local.node.as_deref());
        Some(map.lookup(dir, id, protocol, port))
    }
}

/// What an identity is, as a peer matcher sees it; `host_ips` are the addresses `host` stands
/// for in the map being compiled (the endpoint's own node).
fn view_of_identity<'a>(labels: &'a IdentityLabels, host_ips: &'a [IpAddr]) -> View<'a> {
    match labels {
        IdentityLabels::Reserved(HOST) => View {
            class: Class::Host,
            cidr: CidrTest::Every(host_ips),
            named_ports: None,
        },
        IdentityLabels::Reserved(id) => View {
            class: if *id == REMOTE_NODE {
                Class::RemoteNode
            } else {
                Class::World
            },
            cidr: CidrTest::Address(None),
            named_ports: None,
        },
        IdentityLabels::RemoteNode { cidrs } => View {
            class: Class::RemoteNode,
            cidr: CidrTest::Labels(cidrs),
            named_ports: None,
        },
        IdentityLabels::Endpoint {
            namespace,
            labels,
            ns_labels,
            named_ports,
            cidrs,
            ..
        } => View {
            class: Class::Endpoint {
                namespace,
                labels,
                ns_labels,
            },
            cidr: CidrTest::Labels(cidrs),
            named_ports: Some(named_ports),
        },
        IdentityLabels::Cidr { cidrs } => View {
            class: Class::World,
            cidr: CidrTest::Labels(cidrs),
            named_ports: None,
        },
    }
}

/// The map of one endpoint (a pod, or a node's host endpoint) from the policies selecting it;
/// `own_ports` are its named ports (ingress named ports resolve on it).
/// Identities by the policy prefixes in their CIDR labels: an `ipBlock` / `fromCIDR` peer can
/// only match an identity whose labels hold its prefix, so such peers look up their candidates
/// here instead of testing every identity (10,000 CIDR rules × thousands of identities).
struct PeerIndex {
    by_cidr: HashMap<IpNet, Vec<IdentityId>>,
}

impl PeerIndex {
    fn new(ids: &Identities) -> Self {
        let mut by_cidr: HashMap<IpNet, Vec<IdentityId>> = HashMap::new();
        for (id, labels) in ids.iter() {
            if let IdentityLabels::Endpoint { cidrs, .. }
            | IdentityLabels::Cidr { cidrs }
            | IdentityLabels::RemoteNode { cidrs } = labels
            {
                for net in cidrs {
                    by_cidr.entry(*net).or_default().push(id);
                }
            }
        }
        Self { by_cidr }
    }

    /// The identities that may match one of `peers` (a superset; `None`: any identity may).
    /// `host` carries no CIDR labels (it stands for the local node's addresses), so it is
    /// always a candidate.
    fn candidates(&self, peers: &[Peer]) -> Option<BTreeSet<IdentityId>> {
        let mut out = BTreeSet::from([HOST]);
        for peer in peers {
            let (Peer::IpBlock { cidr, .. } | Peer::Cidr { cidr, .. }) = peer else {
                return None;
            };
            out.extend(self.by_cidr.get(cidr).into_iter().flatten().copied());
        }
        Some(out)
    }
}

struct Ctx<'a> {
    ids: &'a Identities,
    index: &'a PeerIndex,
}

/// The endpoint (or host endpoint) a map is compiled for.
struct Subject<'a> {
    /// Its named ports (ingress named ports resolve on it).
    own_ports: &'a NamedPorts,
    /// The addresses of its node: what `host` stands for in its map.
    host_ips: &'a [IpAddr],
}

/// The identities matching any of `peers`, with their named ports.
fn matching<'a>(
    ctx: &Ctx<'a>,
    peers: &[Peer],
    host_ips: &'a [IpAddr],
) -> Vec<(IdentityId, Option<&'a NamedPorts>)> {
    let test = |(id, labels): (IdentityId, &'a IdentityLabels)| {
        let view = view_of_identity(labels, host_ips);
        peers
            .iter()
            .any(|p| peer_matches(p, &view))
            .then_some((id, view.named_ports))
    };
    match ctx.index.candidates(peers) {
        Some(ids) => ids
            .into_iter()
            .filter_map(|id| ctx.ids.labels(id).map(|l| (id, l)))
            .filter_map(test)
            .collect(),
        None => ctx.ids.iter().filter_map(test).collect(),
    }
}

fn compile_subject<'a>(ctx: &Ctx<'a>, selecting: Vec<&Policy>, subject: &Subject<'a>) -> PolicyMap {
    let own_ports = subject.own_ports;
    let ids = ctx.ids;
    let mut map = PolicyMap::default();
    for dir in [Direction::Ingress, Direction::Egress] {
        let wildcard = |identity| Key {
            direction: dir,
            identity,
            protocol: ANY_PROTO,
            port: 0,
            prefix: 0,
        };
        if !selecting.iter().any(|p| p.isolates(dir)) {
            map.add(wildcard(ANY), false, None);
        }
        if dir == Direction::Ingress {
            // Traffic from the endpoint's own node is always allowed (see eval.rs).
            map.add(wildcard(HOST), false, None);
        }
        for policy in &selecting {
            for (rules, deny) in [
                (policy.allow_rules(dir), false),
                (policy.deny_rules(dir), true),
            ] {
                for rule in rules {
                    let targets: Vec<(IdentityId, Option<&NamedPorts>)> = match &rule.peers {
                        Peers::All => vec![(ANY, None)],
                        Peers::List(peers) => matching(ctx, peers, subject.host_ips),
                    };
                    for (identity, remote_ports) in targets {
                        let named = match dir {
                            Direction::Ingress => Some(own_ports),
                            Direction::Egress => remote_ports,
                        };
                        add_ports(&mut map, dir, identity, &rule.ports, named, deny, ids);
                    }
                }
            }
        }
    }
    map
}

/// Istio `PeerAuthentication` STRICT on `ep`, where "mTLS" means "came through the tunnel from
/// a mesh node or from a mesh pod of this node": a TCP connection from a source outside the
/// mesh (`world`, or an outside CIDR identity) to a port in STRICT mode is denied — deny
/// entries, so no allow rule can admit it, whatever Cilium's or Kubernetes' policy says. Pods,
/// nodes and this host are the mesh. Ports in PERMISSIVE or DISABLE mode get nothing. UDP is
/// not Istio's: untouched.
fn add_strict_mtls(map: &mut PolicyMap, bundle: &Bundle, ep: &Endpoint, ids: &Identities) {
    use crate::istio::{effective_mode, MtlsMode};
    if bundle.peer_authn.is_empty() {
        return;
    }
    let mode = |port: u16| effective_mode(&bundle.peer_authn, &bundle.istio, ep, port);
    // Every port a `portLevelMtls` names; every other port has the workload's own mode.
    let named: BTreeSet<u16> = bundle
        .peer_authn
        .iter()
        .flat_map(|p| p.port_level.keys().copied())
        .collect();
    let Some(other) = (1..=u16::MAX).find(|p| !named.contains(p)) else {
        return;
    };
    let strict = |port: u16| mode(port) == MtlsMode::Strict;
    let ranges: Vec<(u16, u16)> = if strict(other) {
        // All ports but the named ones that are not STRICT.
        let mut ranges = Vec::new();
        let mut lo: u32 = 0;
        for &p in named.iter().filter(|&&p| !strict(p)) {
            if u32::from(p) > lo {
                ranges.push((lo as u16, p - 1));
            }
            lo = u32::from(p) + 1;
        }
        if lo <= u32::from(u16::MAX) {
            ranges.push((lo as u16, u16::MAX));
        }
        ranges
    } else {
        named
            .iter()
            .filter(|&&p| strict(p))
            .map(|&p| (p, p))
            .collect()
    };
    let outside = ids.iter().filter_map(|(id, labels)| match labels {
        IdentityLabels::Reserved(crate::identity::WORLD) | IdentityLabels::Cidr { .. } => Some(id),
        _ => None,
    });
    let outside: Vec<IdentityId> = outside
        .chain([crate::identity::WORLD])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for &(lo, hi) in &ranges {
        for (port, prefix) in range_prefixes(lo, hi) {
            for &identity in &outside {
                let key = Key {
                    direction: Direction::Ingress,
                    identity,
                    protocol: Protocol::Tcp.number(),
                    port,
                    prefix,
                };
                map.add(key, true, None);
            }
        }
    }
}

fn add_ports(
    map: &mut PolicyMap,
    dir: Direction,
    identity: IdentityId,
    ports: &Ports,
    named: Option<&NamedPorts>,
    deny: bool,
    ids: &Identities,
) {
    let key = |protocol: u8, port: u16, prefix: u8| Key {
        direction: dir,
        identity,
        protocol,
        port,
        prefix,
    };
    let specs: &[PortSpec] = match ports {
        Ports::All => {
            map.add(key(ANY_PROTO, 0, 0), deny, None);
            return;
        }
        Ports::List(specs) => specs,
    };
    for spec in specs {
        let http = if deny { None } else { spec.http.clone() };
        match &spec.port {
            PortValue::All => {
                for p in spec.protocol.protocols() {
                    map.add(key(p.number(), 0, 0), deny, http.clone());
                }
            }
            PortValue::Range(lo, hi) => {
                for p in spec.protocol.protocols() {
                    for (port, prefix) in range_prefixes(*lo, *hi) {
                        map.add(key(p.number(), port, prefix), deny, http.clone());
                    }
                }
            }
            PortValue::Named(name) => {
                // With identity ANY (every peer) on egress there is no single destination
                // pod to resolve the name on: add every number the name has on any endpoint,
                // keyed to that endpoint's identity.
                if named.is_none() && identity == ANY && dir == Direction::Egress {
                    for (id, labels) in ids.iter() {
                        if let IdentityLabels::Endpoint { named_ports, .. } = labels {
                            if let Some((p, n)) = named_ports.get(name) {
                                if spec.protocol.contains(*p) {
                                    map.add(
                                        Key {
                                            identity: id,
                                            ..key(p.number(), *n, 16)
                                        },
                                        deny,
                                        http.clone(),
                                    );
                                }
                            }
                        }
                    }
                    continue;
                }
                if let Some((p, n)) = named.and_then(|n| n.get(name)) {
                    if spec.protocol.contains(*p) {
                        map.add(key(p.number(), *n, 16), deny, http.clone());
                    }
                }
            }
        }
    }
}
