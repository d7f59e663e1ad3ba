//! The trace evaluator and the compiled policy maps must agree: random small clusters and
//! policy sets (NetworkPolicy and Cilium, loaded through the manifest loader) and random
//! queries get the same per-direction verdict and the same L7 rules from (a) the direct
//! evaluator and (b) identity + LPM cache + policy-map lookup. The L7 model is loaded (HTTP
//! rules, which `load` refuses until an L7 filter enforces them) so that it stays covered.
//! Node addresses inside and outside `ipBlock`s, and a node with two addresses of which a
//! block may cover one, check that an `ipBlock` selects node addresses the same way in both.

use std::collections::BTreeSet;
use std::net::IpAddr;

use policy::eval::{evaluate, Remote};
use policy::{load_with, Bundle, Compiled, Direction, LoadOptions, Protocol};
use proptest::prelude::*;
use serde_json::{json, Value};

/// A small deterministic generator driven by proptest's seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).expect("small")
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAMESPACES: &[&str] = &["ns-a", "ns-b", "ns-c"];
const CIDRS: &[(&str, &[&str])] = &[
    ("10.244.0.0/16", &["10.244.1.0/24"]),
    ("10.244.1.0/24", &["10.244.1.10/32"]),
    ("0.0.0.0/0", &["10.0.0.0/8", "198.18.0.0/15"]),
    ("8.8.8.0/24", &[]),
    ("198.18.0.0/15", &[]),
    ("10.244.2.11/32", &[]),
    ("198.18.0.1/32", &[]),
    ("192.0.2.0/24", &[]),
];

fn selector(g: &mut Gen, cilium: bool) -> Value {
    let key = if cilium && g.chance(20) {
        "k8s:app"
    } else {
        "app"
    };
    match g.below(6) {
        0 => json!({}),
        1 | 2 => json!({"matchLabels": {key: g.pick(&["x", "y"])}}),
        3 => {
            json!({"matchExpressions": [{"key": "tier", "operator": g.pick(&["In", "NotIn"]), "values": ["web"]}]})
        }
        4 => {
            json!({"matchExpressions": [{"key": "tier", "operator": g.pick(&["Exists", "DoesNotExist"])}]})
        }
        _ => {
            if cilium {
                json!({"matchLabels": {"io.kubernetes.pod.namespace": g.pick(NAMESPACES)}})
            } else {
                json!({"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]})
            }
        }
    }
}

fn ns_selector(g: &mut Gen) -> Value {
    match g.below(3) {
        0 => json!({}),
        1 => json!({"matchLabels": {"env": g.pick(&["prod", "dev"])}}),
        _ => json!({"matchLabels": {"kubernetes.io/metadata.name": g.pick(NAMESPACES)}}),
    }
}

fn np_port(g: &mut Gen) -> Value {
    let mut p = serde_json::Map::new();
    if g.chance(60) {
        p.insert("protocol".into(), json!(g.pick(&["TCP", "UDP", "SCTP"])));
    }
    match g.below(4) {
        0 => {}
        1 => {
            p.insert("port".into(), json!(g.pick(&[53, 80, 443, 8080])));
        }
        2 => {
            p.insert("port".into(), json!(g.pick(&[53, 80])));
            p.insert("endPort".into(), json!(g.pick(&[443, 8080])));
        }
        _ => {
            p.insert("port".into(), json!(g.pick(&["http", "dns"])));
        }
    }
    Value::Object(p)
}

fn np(g: &mut Gen, i: usize) -> Value {
    let ns = g.pick(NAMESPACES);
    let mut spec = serde_json::Map::new();
    spec.insert("podSelector".into(), selector(g, false));
    match g.below(4) {
        0 => {}
        1 => {
            spec.insert("policyTypes".into(), json!(["Ingress"]));
        }
        2 => {
            spec.insert("policyTypes".into(), json!(["Egress"]));
        }
        _ => {
            spec.insert("policyTypes".into(), json!(["Ingress", "Egress"]));
        }
    }
    for (dir, peer_key) in [("ingress", "from"), ("egress", "to")] {
        if g.chance(30) {
            continue;
        }
        let mut rules = Vec::new();
        for _ in 0..g.below(3) {
            let mut rule = serde_json::Map::new();
            match g.below(4) {
                0 => {}
                1 => {
                    rule.insert(peer_key.into(), json!([]));
                }
                _ => {
                    let mut peers = Vec::new();
                    for _ in 0..=g.below(2) {
                        peers.push(match g.below(4) {
                            0 => json!({"podSelector": selector(g, false)}),
                            1 => json!({"namespaceSelector": ns_selector(g)}),
                            2 => json!({"podSelector": selector(g, false), "namespaceSelector": ns_selector(g)}),
                            _ => {
                                let (cidr, except) = *g.pick(CIDRS);
                                json!({"ipBlock": {"cidr": cidr, "except": except}})
                            }
                        });
                    }
                    rule.insert(peer_key.into(), json!(peers));
                }
            }
            match g.below(4) {
                0 => {}
                1 => {
                    rule.insert("ports".into(), json!([]));
                }
                2 => {
                    rule.insert("ports".into(), json!([{}]));
                }
                _ => {
                    let ports: Vec<Value> = (0..=g.below(2)).map(|_| np_port(g)).collect();
                    rule.insert("ports".into(), json!(ports));
                }
            }
            rules.push(Value::Object(rule));
        }
        spec.insert(dir.into(), json!(rules));
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": format!("np-{i}"), "namespace": ns}, "spec": spec})
}

fn cnp_rule(g: &mut Gen, ingress: bool, deny: bool) -> Value {
    let p = if ingress { "from" } else { "to" };
    let mut rule = serde_json::Map::new();
    match g.below(5) {
        0 => {}
        1 => {
            rule.insert(format!("{p}Endpoints"), json!([selector(g, true)]));
        }
        2 => {
            let (cidr, except) = *g.pick(CIDRS);
            rule.insert(
                format!("{p}CIDRSet"),
                json!([{"cidr": cidr, "except": except}]),
            );
        }
        3 => {
            rule.insert(format!("{p}CIDR"), json!([g.pick(CIDRS).0]));
        }
        _ => {
            let e = g.pick(&["world", "cluster", "host", "remote-node", "all"]);
            rule.insert(format!("{p}Entities"), json!([e]));
        }
    }
    match g.below(4) {
        0 => {}
        1 => {
            rule.insert(
                "icmps".into(),
                json!([{"fields": [{"type": g.pick(&[0, 8])}]}]),
            );
        }
        _ => {
            let mut port = serde_json::Map::new();
            port.insert(
                "port".into(),
                json!(g.pick(&["80", "0", "53", "http", "8000"])),
            );
            if port["port"] == "8000" {
                port.insert("endPort".into(), json!(8080));
            }
            if g.chance(60) {
                port.insert("protocol".into(), json!(g.pick(&["TCP", "UDP", "ANY"])));
            }
            let mut pr = json!({"ports": [port]});
            if !deny && g.chance(40) {
                pr["rules"] = json!({"http": [{"method": g.pick(&["GET", "POST"])}]});
            }
            rule.insert("toPorts".into(), json!([pr]));
        }
    }
    Value::Object(rule)
}

fn cnp(g: &mut Gen, i: usize) -> Value {
    let clusterwide = g.chance(25);
    let mut spec = serde_json::Map::new();
    spec.insert("endpointSelector".into(), selector(g, true));
    for (field, ingress, deny) in [
        ("ingress", true, false),
        ("egress", false, false),
        ("ingressDeny", true, true),
        ("egressDeny", false, true),
    ] {
        let n = if deny {
            usize::from(g.chance(30))
        } else {
            g.below(3)
        };
        let rules: Vec<Value> = (0..n).map(|_| cnp_rule(g, ingress, deny)).collect();
        if !rules.is_empty() {
            spec.insert(field.into(), json!(rules));
        }
    }
    if g.chance(15) {
        spec.insert("enableDefaultDeny".into(), json!({"ingress": false}));
    }
    let mut meta = json!({"name": format!("cnp-{i}")});
    if !clusterwide {
        meta["namespace"] = json!(g.pick(NAMESPACES));
    }
    let kind = if clusterwide {
        "CiliumClusterwideNetworkPolicy"
    } else {
        "CiliumNetworkPolicy"
    };
    json!({"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta, "spec": spec})
}

fn cluster(g: &mut Gen) -> String {
    let mut docs = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns-a", "labels": {"env": "prod"}}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns-b", "labels": {"env": "dev"}}}),
    ];
    for n in 1..=2 {
        let mut addresses = vec![json!({"type": "InternalIP", "address": format!("198.18.0.{n}")})];
        if g.chance(50) {
            addresses.push(json!({"type": "ExternalIP", "address": format!("192.0.2.{n}")}));
        }
        docs.push(
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("n{n}")},
            "status": {"addresses": addresses}}),
        );
    }
    for i in 0..=g.below(6) {
        let node = 1 + g.below(2);
        let mut labels = serde_json::Map::new();
        labels.insert("app".into(), json!(g.pick(&["x", "y"])));
        if g.chance(50) {
            labels.insert("tier".into(), json!(g.pick(&["web", "db"])));
        }
        let mut ports = Vec::new();
        if g.chance(60) {
            ports.push(json!({"name": "http", "containerPort": g.pick(&[80, 8080])}));
        }
        if g.chance(40) {
            ports.push(
                json!({"name": "dns", "containerPort": 53, "protocol": g.pick(&["UDP", "TCP"])}),
            );
        }
        docs.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": g.pick(NAMESPACES), "labels": labels},
            "spec": {"nodeName": format!("n{node}"), "containers": [{"name": "c", "image": "i", "ports": ports}]},
            "status": {"podIPs": [{"ip": format!("10.244.{node}.{}", 10 + i)}]}}));
    }
    for i in 0..=g.below(4) {
        docs.push(if g.chance(50) { np(g, i) } else { cnp(g, i) });
    }
    docs.iter().map(|d| format!("---\n{d}\n")).collect()
}

fn remote<'a>(b: &'a Bundle, ip: IpAddr, local_node: Option<&str>) -> Remote<'a> {
    if let Some(ep) = b.endpoint_by_ip(ip) {
        return Remote::Endpoint {
            endpoint: ep,
            ip: Some(ip),
        };
    }
    match b.node_by_ip(ip) {
        Some(n) => Remote::Node {
            name: &n.name,
            ip,
            ips: &n.ips,
            own: Some(n.name.as_str()) == local_node,
        },
        None => Remote::World(ip),
    }
}

fn l7_fields(rules: Option<Vec<policy::http::HttpRule>>) -> Option<BTreeSet<String>> {
    rules.map(|r| r.into_iter().map(|r| r.field).collect())
}

fn check(seed: u64) -> Result<(), TestCaseError> {
    let mut g = Gen(seed | 1);
    let text = cluster(&mut g);
    let l7_model = LoadOptions::default();
    let bundle = load_with([("gen.yaml", text.as_str())], l7_model).map_err(|e| {
        TestCaseError::fail(format!("generated manifests do not load: {e}\n{text}"))
    })?;
    let compiled = Compiled::build(&bundle);
    let mut addrs: Vec<IpAddr> = bundle
        .endpoints
        .iter()
        .flat_map(|e| e.ips.clone())
        .collect();
    for extra in [
        "8.8.8.8",
        "1.2.3.4",
        "10.9.9.9",
        "198.18.0.1",
        "198.18.0.2",
        "192.0.2.1",
        "192.0.2.2",
        "10.244.1.200",
        "10.244.2.11",
    ] {
        addrs.push(extra.parse().expect("literal"));
    }
    for _ in 0..40 {
        let local = g.pick(&bundle.endpoints);
        let dir = *g.pick(&[Direction::Ingress, Direction::Egress]);
        let ip = *g.pick(&addrs);
        if local.ips.contains(&ip) {
            continue;
        }
        let proto = *g.pick(&Protocol::ALL);
        let port = *g.pick(&[0u16, 8, 53, 80, 443, 8000, 8080, 8081]);
        let r = remote(&bundle, ip, local.node.as_deref());
        let e = evaluate(&bundle, local, dir, &r, proto, port);
        let m = compiled
            .lookup(local, dir, ip, proto, port)
            .ok_or_else(|| TestCaseError::fail("no map for endpoint"))?;
        let eval_l7 = if e.allowed() {
            l7_fields(e.l7_rules())
        } else {
            None
        };
        let map_l7 = l7_fields(m.http.clone());
        prop_assert!(
            e.allowed() == m.allowed && eval_l7 == map_l7,
            "{} {dir} {ip} {proto}/{port}: evaluator {} {:?} ({:?}), map {} {:?}\n{text}",
            local.qualified_name(),
            e.allowed(),
            eval_l7,
            e,
            m.allowed,
            map_l7
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn evaluator_and_compiled_map_agree(seed in any::<u64>()) {
        check(seed)?;
    }
}
