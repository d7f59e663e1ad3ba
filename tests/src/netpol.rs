//! The model of the upstream Kubernetes network-policy e2e suite (`test/e2e/network/netpol`) in
//! the lab: namespaces x, y and z, each with pods a, b and c that serve TCP 80 and 81 and UDP 80
//! behind the named container ports `serve-80-tcp`, `serve-81-tcp` and `serve-80-udp`, spread
//! over the lab's nodes so that every namespace has pairs on one node and pairs across the
//! tunnel. Expectations are truth tables written the upstream way — a default for every pair,
//! then overrides by namespace or pod — and observed tables come from real connections.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::addr::Host;
use crate::lab::Lab;
use crate::policy::{namespace_manifest, render_matrix, PodSpec, Proto};

pub const NETPOL_NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const NETPOL_PODS: [&str; 3] = ["a", "b", "c"];
/// The ports every model pod serves.
pub const NETPOL_TCP_PORTS: [u16; 2] = [80, 81];
pub const NETPOL_UDP_PORTS: [u16; 1] = [80];

/// The nine pods `x/a` … `z/c`, in that order.
#[derive(Debug, Clone)]
pub struct NetpolModel {
    pods: Vec<PodSpec>,
}

impl NetpolModel {
    /// Places pod number `i` (in `x/a` … `z/c` order) on node `1 + i % nodes`, so neighbours in
    /// the list are on different nodes. Needs `nodes × pods-per-node ≥ 9` lab pod slots.
    pub fn new(nodes: u8) -> Self {
        let mut pods = Vec::new();
        for ns in NETPOL_NAMESPACES {
            for name in NETPOL_PODS {
                let i = u8::try_from(pods.len()).expect("nine pods");
                let host = Host::Pod(1 + i % nodes, 1 + i / nodes);
                pods.push(netpol_pod(ns, name, host));
            }
        }
        Self { pods }
    }

    pub fn pods(&self) -> &[PodSpec] {
        &self.pods
    }

    /// `x/a` … `z/c`.
    pub fn names(&self) -> Vec<String> {
        self.pods.iter().map(PodSpec::qualified).collect()
    }

    /// The pod `ns/name`; panics on a name outside the model (a typo in a test).
    pub fn pod(&self, qualified: &str) -> &PodSpec {
        self.pods
            .iter()
            .find(|p| p.qualified() == qualified)
            .unwrap_or_else(|| panic!("{qualified} is not a pod of the netpol model"))
    }

    pub fn hosts(&self) -> Vec<Host> {
        self.pods.iter().map(|p| p.host).collect()
    }

    /// The Namespaces (labelled `ns: <name>`) and Pods, as one multi-document manifest.
    pub fn manifests(&self) -> String {
        let mut docs: Vec<String> = NETPOL_NAMESPACES
            .iter()
            .map(|ns| namespace_manifest(ns, &[]))
            .collect();
        docs.extend(self.pods.iter().map(PodSpec::manifest));
        docs.join("---\n")
    }
}

/// A model pod: labelled `pod: <name>`, with the upstream named ports.
pub fn netpol_pod(namespace: &str, name: &str, host: Host) -> PodSpec {
    PodSpec::new(namespace, name, host)
        .port("serve-80-tcp", Proto::Tcp, 80)
        .port("serve-81-tcp", Proto::Tcp, 81)
        .port("serve-80-udp", Proto::Udp, 80)
}

/// A truth table over named pods: whether `from` may connect to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    names: Vec<String>,
    allowed: Vec<bool>,
}

impl Reachability {
    /// Every pair set to `default`.
    pub fn new(names: &[String], default: bool) -> Self {
        Self {
            names: names.to_vec(),
            allowed: vec![default; names.len() * names.len()],
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn get(&self, from: usize, to: usize) -> bool {
        self.allowed[from * self.names.len() + to]
    }

    pub fn set(&mut self, from: usize, to: usize, allowed: bool) {
        let n = self.names.len();
        self.allowed[from * n + to] = allowed;
    }

    /// Sets every pair whose source matches `from` and destination matches `to`. A pattern is
    /// `*` (every pod), a namespace (`x`) or a pod (`x/a`); a pattern that matches nothing
    /// panics (a typo in a test).
    pub fn expect(mut self, from: &str, to: &str, allowed: bool) -> Self {
        let froms = self.matching(from);
        let tos = self.matching(to);
        for &i in &froms {
            for &j in &tos {
                self.set(i, j, allowed);
            }
        }
        self
    }

    /// Every pair into `to`.
    pub fn all_ingress(self, to: &str, allowed: bool) -> Self {
        self.expect("*", to, allowed)
    }

    /// Every pair out of `from`.
    pub fn all_egress(self, from: &str, allowed: bool) -> Self {
        self.expect(from, "*", allowed)
    }

    fn matching(&self, pattern: &str) -> Vec<usize> {
        let found: Vec<usize> = self
            .names
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                pattern == "*"
                    || n.as_str() == pattern
                    || n.split_once('/').is_some_and(|(ns, _)| ns == pattern)
            })
            .map(|(i, _)| i)
            .collect();
        assert!(!found.is_empty(), "{pattern:?} matches no pod");
        found
    }

    /// Pairs that differ from `other`, ignoring the diagonal (a pod's connection to itself
    /// stays inside its network namespace, as upstream's `ignoreLoopback`).
    pub fn mismatches(&self, other: &Reachability) -> usize {
        let n = self.names.len();
        (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|&(i, j)| i != j && self.get(i, j) != other.get(i, j))
            .count()
    }

    /// `self` as expected and `observed` side by side (the diagonal is not probed and shown
    /// as expected).
    pub fn render_against(&self, observed: &Reachability) -> String {
        let tables = render_matrix(&self.names, &|i, j| self.get(i, j), &|i, j| {
            if i == j {
                self.get(i, j)
            } else {
                observed.get(i, j)
            }
        });
        format!("{tables}(a pod to itself is not probed)\n")
    }
}

impl Lab {
    /// Observed reachability of every (port, protocol) in `cases` over every ordered pair of
    /// `model`'s pods (not a pod to itself), probed all at once.
    pub fn netpol_reachability(
        &self,
        model: &NetpolModel,
        cases: &[(u16, Proto)],
        timeout: Duration,
    ) -> Vec<Reachability> {
        let pods = model.pods();
        let mut probes: Vec<(Host, Ipv4Addr, u16, Proto)> = Vec::new();
        for &(port, proto) in cases {
            for from in pods {
                for to in pods {
                    if from.host != to.host {
                        probes.push((from.host, to.ip(), port, proto));
                    }
                }
            }
        }
        let mut got = self.probe_all(&probes, timeout).into_iter();
        let names = model.names();
        cases
            .iter()
            .map(|_| {
                let mut r = Reachability::new(&names, true);
                for i in 0..pods.len() {
                    for j in 0..pods.len() {
                        if i != j {
                            r.set(i, j, got.next().unwrap_or(false));
                        }
                    }
                }
                r
            })
            .collect()
    }
}
