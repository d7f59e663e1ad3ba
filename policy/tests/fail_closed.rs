//! No silent widening: what wiremesh cannot enforce as written is refused by the loader (and so
//! by `apply`, the agent and the offline trace) with the file, resource and field named; what
//! restricts nothing beyond L4 is accepted as that L4 rule; NetworkPolicy defaulting and
//! `ipBlock` over node addresses follow the upstream API.

mod common;

use common::{tcp, udp, without_l7, yaml};
use policy::{load, load_with, Compiled, Direction, Protocol};

/// Two nodes (n1 with a second, external address), pod x/a on n1, pod x/b on n2.
const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: x}}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  status: {addresses: [{type: InternalIP, address: 198.18.0.1}, {type: ExternalIP, address: 192.0.2.1}]}
- apiVersion: v1
  kind: Node
  metadata: {name: n2}
  status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, labels: {pod: a}}
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.244.1.10}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: b, namespace: x, labels: {pod: b}}
  spec: {nodeName: n2, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.244.2.10}]}
"#;

fn err(doc: &str) -> String {
    match load([("p.yaml", doc)]) {
        Ok(_) => panic!("expected a refusal for:\n{doc}"),
        Err(e) => e.to_string(),
    }
}

fn cnp(spec: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: c, namespace: x}}\nspec:\n  endpointSelector: {{}}\n{spec}\n")
}

fn np(spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n{spec}\n")
}

fn with(policy: &str) -> policy::Bundle {
    yaml(&format!("{CLUSTER}\n---\n{policy}"))
}

/// HTTP rules load by default (the L7 filter enforces them); loaded for a node without the
/// filter (`l7_model` off) they are refused by name.
#[test]
fn http_rules_are_refused_naming_the_field_without_the_l7_filter() {
    let accepted =
        cnp("  ingress: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: [{method: GET}]}}]}]");
    load([("p.yaml", accepted.as_str())]).expect("HTTP rules load by default");
    let err = |doc: &str| match load_with([("p.yaml", doc)], without_l7()) {
        Ok(_) => panic!("expected a refusal for:\n{doc}"),
        Err(e) => e.to_string(),
    };
    let e = err(&cnp(
        "  ingress: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: [{method: GET}]}}]}]",
    ));
    assert!(
        e.starts_with("p.yaml: CiliumNetworkPolicy x/c: spec.ingress[0].toPorts[0].rules.http: valid Cilium, but HTTP rules are not enforced"),
        "{e}"
    );
    // Egress, a second port rule, and a clusterwide policy's specs[i] are named the same way.
    let e = err(&cnp("  egress: [{toPorts: [{ports: [{port: \"53\"}]}, {ports: [{port: \"80\"}], rules: {http: [{}]}}]}]"));
    assert!(
        e.contains("CiliumNetworkPolicy x/c: spec.egress[0].toPorts[1].rules.http: "),
        "{e}"
    );
    let e = err("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cc}\nspecs:\n- endpointSelector: {}\n  ingress: [{toPorts: [{rules: {http: [{path: /a}]}}]}]\n");
    assert!(
        e.contains(
            "CiliumClusterwideNetworkPolicy cc: specs[0].ingress[0].toPorts[0].rules.http: "
        ),
        "{e}"
    );
    // Kafka and generic L7 were already refused by name; an empty http list restricts nothing.
    let e = err(&cnp(
        "  ingress: [{toPorts: [{ports: [{port: \"9092\"}], rules: {kafka: [{topic: t}]}}]}]",
    ));
    assert!(
        e.contains("spec.ingress[0].toPorts[0].rules.kafka: valid Cilium, but not supported"),
        "{e}"
    );
    let b = with(&cnp(
        "  ingress: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: []}}]}]",
    ));
    assert_eq!(tcp(&b, "x/b", "x/a", 80), "allowed");
    assert_eq!(tcp(&b, "x/b", "x/a", 81), "ingress");
}

#[test]
fn entities_that_select_nothing_here_are_refused_in_deny_and_allow_rules() {
    for entity in ["kube-apiserver", "health", "init", "unmanaged", "ingress"] {
        for (field, verb) in [
            ("egressDeny", "deny"),
            ("ingressDeny", "deny"),
            ("egress", "allow"),
        ] {
            let key = if field.starts_with("ingress") {
                "fromEntities"
            } else {
                "toEntities"
            };
            let e = err(&cnp(&format!("  {field}: [{{{key}: [{entity}]}}]")));
            let want = format!("CiliumNetworkPolicy x/c: spec.{field}[0].{key}[0]: valid Cilium, but entity \"{entity}\" selects nothing");
            assert!(
                e.contains(&want) && e.contains(&format!("would {verb} nothing")),
                "{e}"
            );
        }
    }
    // The world of one family would be matched as the world of both.
    for entity in ["world-ipv4", "world-ipv6"] {
        let e = err(&cnp(&format!("  egress: [{{toEntities: [{entity}]}}]")));
        assert!(e.contains(&format!("spec.egress[0].toEntities[0]: valid Cilium, but wiremesh does not tell the world's address families apart; entity \"{entity}\" is refused")), "{e}");
    }
    // The entities wiremesh implements still load, in deny rules too.
    let b = with(&cnp(
        "  enableDefaultDeny: {egress: false}\n  egressDeny: [{toEntities: [remote-node]}]",
    ));
    assert_eq!(tcp(&b, "x/a", "198.18.0.2", 10250), "egress");
    assert_eq!(tcp(&b, "x/a", "8.8.8.8", 443), "allowed");
}

#[test]
fn dns_rules_allowing_every_query_are_their_l4_rule() {
    let dns_star = cnp("  egress:\n  - toEndpoints: [{matchLabels: {pod: b}}]\n    toPorts: [{ports: [{port: \"53\", protocol: ANY}], rules: {dns: [{matchPattern: \"*\"}]}}]");
    let l4 = cnp("  egress:\n  - toEndpoints: [{matchLabels: {pod: b}}]\n    toPorts: [{ports: [{port: \"53\", protocol: ANY}]}]");
    let (with_dns, plain) = (with(&dns_star), with(&l4));
    for (to, port) in [("x/b", 53), ("x/b", 54), ("8.8.8.8", 53)] {
        for proto in [Protocol::Udp, Protocol::Tcp] {
            let r = |b| common::short(&common::run(b, "x/a", to, port, proto));
            assert_eq!(r(&with_dns), r(&plain), "{to} {port}/{proto}");
        }
    }
    assert_eq!(udp(&with_dns, "x/a", "x/b", 53), "allowed");
    assert_eq!(udp(&with_dns, "x/a", "8.8.8.8", 53), "egress");
    let a = with_dns.endpoint("x", "a").expect("x/a");
    let (m1, m2) = (Compiled::build(&with_dns), Compiled::build(&plain));
    let (v1, v2) = (
        m1.maps.get("x/a").expect("map"),
        m2.maps.get("x/a").expect("map"),
    );
    assert_eq!(v1.len(), v2.len(), "the same map as the L4 rule");
    let ip = "10.244.2.10".parse().expect("ip");
    let looked = m1
        .lookup(a, Direction::Egress, ip, Protocol::Udp, 53)
        .expect("map");
    assert!(looked.allowed && looked.http.is_none());
    // Anything narrower would need a DNS proxy: refused with the entry named.
    for narrower in [
        "{matchName: example.com}",
        "{matchPattern: \"*.example.com\"}",
        "{matchPattern: \"*\", matchName: a.b}",
    ] {
        let e = err(&cnp(&format!("  egress: [{{toPorts: [{{ports: [{{port: \"53\"}}], rules: {{dns: [{{matchPattern: \"*\"}}, {narrower}]}}}}]}}]")));
        assert!(e.contains("spec.egress[0].toPorts[0].rules.dns[1]: valid Cilium, but wiremesh has no DNS proxy"), "{e}");
    }
    let e = err(&cnp("  ingress: [{toPorts: [{ports: [{port: \"53\"}], rules: {dns: [{matchPattern: \"*\"}]}}]}]"));
    assert!(
        e.contains(
            "spec.ingress[0].toPorts[0].rules.dns: DNS rules restrict the queries a pod sends"
        ),
        "{e}"
    );
    let e = err(&cnp("  egressDeny: [{toPorts: [{ports: [{port: \"53\"}], rules: {dns: [{matchPattern: \"*\"}]}}]}]"));
    assert!(
        e.contains("spec.egressDeny[0].toPorts[0].rules: L7 rules are not allowed in deny rules"),
        "{e}"
    );
}

#[test]
fn policy_kinds_wiremesh_does_not_enforce_are_refused_by_name() {
    for (api, kind) in [
        ("security.istio.io/v1", "RequestAuthentication"),
        ("security.istio.io/v1beta1", "RequestAuthentication"),
        ("policy.networking.k8s.io/v1alpha1", "AdminNetworkPolicy"),
        (
            "policy.networking.k8s.io/v1alpha1",
            "BaselineAdminNetworkPolicy",
        ),
        ("cilium.io/v2", "CiliumEgressGatewayPolicy"),
        ("crd.projectcalico.org/v1", "GlobalNetworkPolicy"),
    ] {
        let doc = format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: deny-all, namespace: x}}\nspec: {{action: DENY}}\n");
        let e = err(&doc);
        // Not a kind wiremesh knows the scope of: named as namespaced, as kubectl would.
        let resource = format!("{kind} x/deny-all");
        assert!(
            e.starts_with(&format!(
                "p.yaml: {resource}: kind: {api} {kind} is a policy kind wiremesh does not enforce"
            )),
            "{e}"
        );
    }
    // Objects that are not policies are still skipped with a note; Services are loaded (Istio
    // targetRefs resolve through them).
    let b = yaml("apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: x}\n");
    assert_eq!(b.notes.len(), 1, "{:?}", b.notes);
    assert!(
        b.notes[0].contains("skipped apps/v1 Deployment x/d"),
        "{:?}",
        b.notes
    );
    assert!(b.services.contains_key("x/s"));
}

// API server defaulting (SetDefaults_NetworkPolicySpec): with no policyTypes, Ingress always,
// Egress only when len(egress) != 0.
#[test]
fn empty_egress_without_policy_types_is_not_an_egress_policy() {
    for spec in [
        "  egress: []",
        "  egress: []\n  policyTypes: []",
        "  policyTypes: []",
    ] {
        let b = with(&np(spec));
        assert_eq!(
            tcp(&b, "x/a", "8.8.8.8", 443),
            "allowed",
            "{spec}: egress not isolated"
        );
        assert_eq!(
            tcp(&b, "x/b", "x/a", 80),
            "ingress",
            "{spec}: ingress isolated"
        );
    }
    let b = with(&np("  egress: [{}]"));
    assert_eq!(
        tcp(&b, "x/a", "8.8.8.8", 443),
        "allowed",
        "egress: [{{}}] allows all"
    );
    let b = with(&np("  egress: [{to: [{podSelector: {}}]}]"));
    assert_eq!(tcp(&b, "x/a", "8.8.8.8", 443), "egress");
    let b = with(&np("  policyTypes: [Egress]\n  egress: []"));
    assert_eq!(
        tcp(&b, "x/a", "8.8.8.8", 443),
        "egress",
        "explicit Egress isolates"
    );
    assert_eq!(
        tcp(&b, "x/b", "x/a", 80),
        "egress",
        "x/b is isolated for egress too"
    );
    let e = err(&np("  policyTypes: [Ingress, Egress, Ingress]"));
    assert!(
        e.contains("spec.policyTypes: may not specify more than two policyTypes"),
        "{e}"
    );
}

// NetworkPolicy ipBlock: "a particular IP CIDR range to allow"; node addresses are addresses.
// Cilium's CIDR rules, by contrast, "do not apply to traffic where both sides of the
// connection are ... an IP belonging to a node in the cluster".
#[test]
fn np_ip_block_selects_node_addresses_and_cilium_cidr_does_not() {
    let b = with(&np(
        "  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/15}}]}]",
    ));
    assert_eq!(
        tcp(&b, "198.18.0.2", "x/a", 80),
        "allowed",
        "remote node in the block"
    );
    assert_eq!(tcp(&b, "198.18.0.1", "x/b", 80), "allowed");
    let b = with(&np(
        "  ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/15, except: [198.18.0.2/32]}}]}]",
    ));
    assert_eq!(tcp(&b, "198.18.0.2", "x/a", 80), "ingress", "excepted node");
    assert_eq!(tcp(&b, "198.18.0.1", "x/b", 80), "allowed");
    // Egress to the pod's own node: `host` is one identity for all n1's addresses, so a block
    // selects it only if it covers every one of them (never more than the block says).
    let b = with(&np(
        "  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 198.18.0.0/15}}]}]",
    ));
    assert_eq!(
        tcp(&b, "x/b", "198.18.0.2", 10250),
        "allowed",
        "x/b's own node, one address"
    );
    assert_eq!(
        tcp(&b, "x/b", "198.18.0.1", 10250),
        "allowed",
        "a remote node"
    );
    assert_eq!(
        tcp(&b, "x/a", "198.18.0.1", 10250),
        "egress",
        "192.0.2.1 is n1's too"
    );
    let b = with(&np(
        "  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 192.0.0.0/4}}]}]",
    ));
    assert_eq!(
        tcp(&b, "x/a", "192.0.2.1", 10250),
        "allowed",
        "every n1 address is covered"
    );
    assert_eq!(tcp(&b, "x/a", "198.18.0.1", 10250), "allowed");
    // The compiled map agrees, through the identity of each node address.
    let c = Compiled::build(&b);
    let a = b.endpoint("x", "a").expect("x/a");
    let bb = b.endpoint("x", "b").expect("x/b");
    let ip = |s: &str| s.parse().expect("ip");
    let allowed = |ep, to: &str| {
        c.lookup(ep, Direction::Egress, ip(to), Protocol::Tcp, 1)
            .expect("map")
            .allowed
    };
    assert!(allowed(a, "198.18.0.1") && allowed(a, "192.0.2.1") && !allowed(a, "8.8.8.8"));
    assert!(allowed(bb, "198.18.0.1") && allowed(bb, "198.18.0.2"));
    // Cilium: CIDR rules select no node; entities do.
    let b = with(&cnp("  ingress: [{fromCIDR: [198.18.0.0/15]}]"));
    assert_eq!(tcp(&b, "198.18.0.2", "x/a", 80), "ingress");
    let b = with(&cnp(
        "  ingress: [{fromCIDR: [198.18.0.0/15]}, {fromEntities: [remote-node]}]",
    ));
    assert_eq!(tcp(&b, "198.18.0.2", "x/a", 80), "allowed");
    let c = Compiled::build(&b);
    let from_node = c
        .lookup(a, Direction::Ingress, ip("198.18.0.2"), Protocol::Tcp, 80)
        .expect("map");
    assert!(
        from_node.allowed,
        "a remote node with CIDR labels is still remote-node"
    );
}

/// Cilium `headerMatches` are match-only here: `{name, value}` must be present and equal;
/// `mismatch` actions (LOG, ADD, DELETE, REPLACE) and `secret` are refused by name.
#[test]
fn header_matches_are_match_only() {
    let policy = cnp("  ingress: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: [{method: GET, headerMatches: [{name: X-Token, value: abc}]}]}}]}]");
    let b = with(&policy);
    let get = |headers: &[(&str, &str)]| {
        common::short(&common::http(&b, "x/b", "x/a", 80, "GET", "/", headers))
    };
    assert_eq!(get(&[("x-token", "abc")]), "allowed");
    assert_eq!(get(&[("x-token", "abd")]), "l7");
    assert_eq!(get(&[]), "l7");
    for (extra, name) in [
        ("mismatch: LOG", "mismatch"),
        ("secret: {name: s}", "secret"),
    ] {
        let e = err(&cnp(&format!("  ingress: [{{toPorts: [{{ports: [{{port: \"80\"}}], rules: {{http: [{{headerMatches: [{{name: X-Token, value: abc, {extra}}}]}}]}}}}]}}]")));
        assert!(
            e.contains(&format!("spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].{name}: valid Cilium, but not supported")),
            "{e}"
        );
    }
}

/// HTTP rules in a host policy are refused naming the field: the L7 proxy serves pods, and the
/// programs would drop every connection to the port. The control: the same rule in a pod
/// policy loads.
#[test]
fn http_rules_in_a_host_policy_are_refused() {
    let rule = "  ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{method: GET}]}}]}]";
    let host = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: h}}\n\
         spec:\n  nodeSelector: {{matchLabels: {{role: edge}}}}\n{rule}\n"
    );
    let e = err(&host);
    assert!(
        e.contains("spec.ingress[0].toPorts[0].rules.http: HTTP rules in a host policy"),
        "{e}"
    );
    let pods = host.replace("nodeSelector", "endpointSelector");
    load([("p.yaml", pods.as_str())]).expect("the same rule for pods loads");
}
