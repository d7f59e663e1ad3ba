//! The objects the policy benchmark applies: a `bench` namespace with a client pod (node 1) and
//! a server pod (node 2), and one NetworkPolicy selecting the server with N ingress rules.
//!
//! Two rules keep the measured traffic flowing: the client may reach the server on the iperf3
//! port range, and on this step's marker port (a port no earlier step allowed, so the first
//! connection that gets through shows the new policy is enforced). The rest are distinct
//! rules as a real cluster accumulates them: each its own port, from a /32 ipBlock (a CIDR
//! identity and an ipcache entry of its own) or from the client's labels, TCP or UDP, so that
//! the server's compiled map holds about one entry per rule.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use wiremesh_lab::{namespace_manifest, Host, PodSpec};

pub const NAMESPACE: &str = "bench";
pub const POLICY_NAME: &str = "bench";
/// The iperf3 servers' ports (the lab hands them out from 20000 up) and the echo server that
/// proves the range is open before each run.
pub const IPERF_PORTS: (u16, u16) = (20_000, 29_999);
pub const RANGE_CHECK_PORT: u16 = 29_999;
/// Filler rule `i` allows port `FILLER_BASE + i`.
const FILLER_BASE: u16 = 30_000;
/// Step `s` allows the client on `MARKER_BASE + s`.
pub const MARKER_BASE: u16 = 50_000;
/// Filler ports must stay below the markers.
pub const MAX_RULES: usize = (MARKER_BASE - FILLER_BASE) as usize;

pub fn client() -> PodSpec {
    PodSpec::new(NAMESPACE, "client", Host::Pod(1, 1)).label("app", "client")
}

pub fn server() -> PodSpec {
    PodSpec::new(NAMESPACE, "server", Host::Pod(2, 1)).label("app", "server")
}

/// The Namespace and both Pods, as (origin, manifest) pairs.
pub fn base_objects() -> Vec<(String, String)> {
    vec![
        ("namespace".into(), namespace_manifest(NAMESPACE, &[])),
        ("pod client".into(), client().manifest()),
        ("pod server".into(), server().manifest()),
    ]
}

/// The NetworkPolicy with `rules` ingress rules (at least 1): the iperf3 range first, then the
/// marker port (if `rules` ≥ 2), then fillers.
pub fn network_policy(rules: usize, marker: u16) -> String {
    const CLIENT: &str = "{podSelector: {matchLabels: {app: client}}}";
    let mut out = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: {POLICY_NAME}, namespace: {NAMESPACE}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n  \
         - {{from: [{CLIENT}], ports: [{{protocol: TCP, port: {}, endPort: {}}}]}}\n",
        IPERF_PORTS.0, IPERF_PORTS.1
    );
    if rules >= 2 {
        let _ = writeln!(
            out,
            "  - {{from: [{CLIENT}], ports: [{{protocol: TCP, port: {marker}}}]}}"
        );
    }
    for i in 2..rules {
        let port = FILLER_BASE + u16::try_from(i).unwrap_or(u16::MAX);
        let (hi, lo) = (i / 256, i % 256);
        let peer = match i % 4 {
            0 => format!("{{ipBlock: {{cidr: 172.20.{hi}.{lo}/32}}}}"),
            1 => format!("{{ipBlock: {{cidr: 172.21.{hi}.{lo}/32}}}}"),
            2 => CLIENT.to_owned(),
            _ => "{namespaceSelector: {matchLabels: {ns: bench}}, podSelector: {matchLabels: {app: client}}}"
                .to_owned(),
        };
        let proto = if i % 2 == 0 { "TCP" } else { "UDP" };
        let _ = writeln!(
            out,
            "  - {{from: [{peer}], ports: [{{protocol: {proto}, port: {port}}}]}}"
        );
    }
    out
}

/// The cost of one full policy recompute, in this process, over the objects the agent holds.
#[derive(Debug, Clone, Copy)]
pub struct Recompute {
    /// `policy::load` (YAML → model), median.
    pub load: Duration,
    /// `policy::Compiled::build` (identities + every endpoint's map), median.
    pub compile: Duration,
    /// This process's CPU time for load + build (10 ms ticks), median: less disturbed than
    /// wall time by other work on the machine.
    pub cpu: Duration,
    /// Entries in the server's compiled map.
    pub entries: usize,
    pub samples: usize,
}

/// Times `policy::load` + `Compiled::build` up to `repeats` times (fewer if one pass takes
/// longer than `budget`), median of each.
pub fn recompute(rules: usize, repeats: usize, budget: Duration) -> anyhow::Result<Recompute> {
    let mut objects = base_objects();
    if rules > 0 {
        objects.push(("policy".into(), network_policy(rules, MARKER_BASE)));
    }
    let (mut loads, mut compiles, mut cpus, mut entries) = (Vec::new(), Vec::new(), Vec::new(), 0);
    let cpu_now =
        || crate::bench::procstat::sample(std::process::id()).map_or(Duration::ZERO, |s| s.cpu);
    let started = Instant::now();
    while loads.len() < repeats.max(1) && (loads.is_empty() || started.elapsed() < budget) {
        let cpu_before = cpu_now();
        let t = Instant::now();
        let bundle = policy::load(objects.iter().map(|(o, m)| (o.as_str(), m.as_str())))?;
        loads.push(t.elapsed());
        let t = Instant::now();
        let compiled = policy::Compiled::build(&bundle);
        compiles.push(t.elapsed());
        cpus.push(cpu_now().saturating_sub(cpu_before));
        entries = compiled
            .maps
            .get(&server().qualified())
            .map_or(0, |m| m.iter().count());
        std::hint::black_box(&compiled);
    }
    Ok(Recompute {
        samples: loads.len(),
        load: median(&mut loads),
        compile: median(&mut compiles),
        cpu: median(&mut cpus),
        entries,
    })
}

pub fn median<T: Ord + Copy + Default>(v: &mut [T]) -> T {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_loads_and_compiles_to_about_one_entry_per_rule() {
        for rules in [1, 2, 10, 1000] {
            let r = recompute(rules, 1, Duration::ZERO).expect("loads");
            // The iperf3 range is a handful of port prefixes; the host and every rule add one.
            assert!(
                r.entries >= rules && r.entries <= rules + 12,
                "{rules} rules: {} entries",
                r.entries
            );
        }
    }

    #[test]
    fn no_policy_leaves_the_server_unisolated() {
        let r = recompute(0, 1, Duration::ZERO).expect("loads");
        assert!(r.entries <= 4, "{} entries", r.entries);
    }
}
