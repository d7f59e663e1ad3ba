//! The seeds' policies from the policy issue, loaded from `examples/` through the file loader.

mod common;

use common::{examples, examples_l7_model, examples_with, http, run, short, tcp, udp};
use policy::{render_text, Protocol};

const NP: &[&str] = &[
    "cluster.yaml",
    "default-deny.yaml",
    "frontend-backend.yaml",
    "backend-egress.yaml",
    "monitoring.yaml",
];

#[test]
fn loader_keeps_services_for_istio_target_refs() {
    let b = examples(NP);
    assert!(b.notes.is_empty(), "{:?}", b.notes);
    let svc = &b.services["shop/backend"];
    assert!(svc.selector.is_some(), "{svc:?}");
    assert_eq!(b.endpoints.len(), 6);
    assert_eq!(b.nodes.len(), 2);
}

#[test]
fn default_deny_and_allow_dns() {
    let b = examples(&["cluster.yaml", "default-deny.yaml"]);
    // Every shop pod may resolve names, over UDP and TCP, at kube-dns only.
    assert_eq!(
        udp(&b, "shop/frontend", "kube-system/coredns", 53),
        "allowed"
    );
    assert_eq!(
        tcp(&b, "shop/frontend", "kube-system/coredns", 53),
        "allowed"
    );
    assert_eq!(udp(&b, "shop/frontend", "8.8.8.8", 53), "egress");
    // Nothing else leaves or enters shop pods.
    assert_eq!(tcp(&b, "shop/frontend", "shop/backend", 8080), "egress");
    assert_eq!(
        tcp(&b, "monitoring/prometheus", "shop/backend", 9090),
        "ingress"
    );
    // kube-system is not isolated.
    assert_eq!(
        tcp(&b, "monitoring/prometheus", "kube-system/coredns", 9153),
        "allowed"
    );
}

#[test]
fn frontend_to_backend_8080() {
    let b = examples(NP);
    let r = run(&b, "shop/frontend", "shop/backend", 8080, Protocol::Tcp);
    assert_eq!(short(&r), "allowed", "{}", render_text(&r));
    assert!(r
        .ingress
        .allowed_by
        .iter()
        .any(|a| a.policy == "NetworkPolicy shop/backend-from-frontend"
            && a.rule == "spec.ingress[0]"));
    assert_eq!(tcp(&b, "shop/frontend", "shop/backend", 8081), "egress");
    assert_eq!(udp(&b, "shop/frontend", "shop/backend", 8080), "egress");
    assert_eq!(tcp(&b, "shop/redis", "shop/backend", 8080), "egress");
}

#[test]
fn backend_egress() {
    let b = examples(NP);
    // redis on 6379 (named port on redis's side).
    assert_eq!(tcp(&b, "shop/backend", "shop/redis", 6379), "allowed");
    assert_eq!(tcp(&b, "shop/frontend", "shop/redis", 6379), "egress");
    // the database range on 5432 only.
    assert_eq!(tcp(&b, "shop/backend", "10.100.3.4", 5432), "allowed");
    assert_eq!(tcp(&b, "shop/backend", "10.100.3.4", 443), "egress");
    assert_eq!(tcp(&b, "shop/backend", "10.101.3.4", 5432), "egress");
    // HTTPS to the internet, not to private ranges.
    assert_eq!(tcp(&b, "shop/backend", "93.184.216.34", 443), "allowed");
    for private in ["10.1.2.3", "172.16.5.5", "172.31.255.255", "192.168.1.1"] {
        assert_eq!(tcp(&b, "shop/backend", private, 443), "egress", "{private}");
    }
    assert_eq!(tcp(&b, "shop/backend", "172.32.0.1", 443), "allowed");
    // DNS.
    assert_eq!(
        udp(&b, "shop/backend", "kube-system/coredns", 53),
        "allowed"
    );
}

#[test]
fn monitoring_namespace_and_pod_selector() {
    let b = examples(NP);
    let r = run(
        &b,
        "monitoring/prometheus",
        "shop/backend",
        9090,
        Protocol::Tcp,
    );
    assert_eq!(short(&r), "allowed", "{}", render_text(&r));
    assert_eq!(
        tcp(&b, "monitoring/prometheus", "shop/frontend", 9090),
        "allowed"
    );
    assert_eq!(
        tcp(&b, "monitoring/prometheus", "shop/backend", 9091),
        "ingress"
    );
    // Same pod labels in the wrong namespace: the AND of the two selectors excludes it.
    assert_eq!(tcp(&b, "shop/impostor", "shop/backend", 9090), "egress");
    let r = run(&b, "shop/impostor", "shop/backend", 9090, Protocol::Tcp);
    assert_eq!(r.ingress.verdict, policy::Verdict::Denied);
}

#[test]
fn from_own_node_is_allowed() {
    let b = examples(NP);
    // backend runs on node-2.
    assert_eq!(tcp(&b, "198.18.0.2", "shop/backend", 8080), "allowed");
    assert_eq!(tcp(&b, "198.18.0.1", "shop/backend", 8080), "ingress");
}

#[test]
fn cnp_example_with_http_rules_is_refused_without_the_l7_filter() {
    // Without the L7 filter enforcing the port alone would allow every method and path, so
    // the loader refuses the policy by name.
    let e = examples_with(&["cluster.yaml", "cnp-l3l4.yaml"], common::without_l7())
        .expect_err("HTTP rules must be refused")
        .to_string();
    assert!(
        e.contains("cnp-l3l4.yaml: CiliumNetworkPolicy shop/backend-l3l4: spec.ingress[0].toPorts[0].rules.http: ")
            && e.contains("not enforced"),
        "{e}"
    );
}

#[test]
fn cnp_l3_l4_example() {
    let b = examples_l7_model(&["cluster.yaml", "cnp-l3l4.yaml"]);
    let r = run(&b, "shop/frontend", "shop/backend", 8080, Protocol::Tcp);
    assert_eq!(short(&r), "allowed");
    assert_eq!(r.ingress.l7_rules.len(), 2, "{}", render_text(&r));
    assert_eq!(tcp(&b, "shop/frontend", "shop/backend", 80), "ingress");
    assert_eq!(tcp(&b, "shop/redis", "shop/backend", 8080), "ingress");
    // ICMP echo from nodes.
    assert_eq!(
        short(&run(&b, "198.18.0.1", "shop/backend", 8, Protocol::Icmp)),
        "allowed"
    );
    assert_eq!(
        short(&run(&b, "shop/frontend", "shop/backend", 8, Protocol::Icmp)),
        "ingress"
    );
    // Egress: DNS over ANY protocol, HTTPS outside 10/8, deny wins for 203.0.113.0/24.
    assert_eq!(
        udp(&b, "shop/backend", "kube-system/coredns", 53),
        "allowed"
    );
    assert_eq!(
        tcp(&b, "shop/backend", "kube-system/coredns", 53),
        "allowed"
    );
    assert_eq!(tcp(&b, "shop/backend", "1.1.1.1", 443), "allowed");
    assert_eq!(tcp(&b, "shop/backend", "10.100.0.1", 443), "egress");
    let r = run(&b, "shop/backend", "203.0.113.9", 443, Protocol::Tcp);
    assert_eq!(short(&r), "egress");
    assert_eq!(r.egress.denied_by[0].rule, "spec.egressDeny[0]");
    // CIDR rules do not select cluster endpoints.
    assert_eq!(tcp(&b, "shop/backend", "shop/redis", 443), "egress");
}

#[test]
fn cnp_http_rules_in_trace() {
    let b = examples_l7_model(&["cluster.yaml", "cnp-l3l4.yaml"]);
    let ok = http(
        &b,
        "shop/frontend",
        "shop/backend",
        8080,
        "GET",
        "/api/items",
        &[],
    );
    assert_eq!(short(&ok), "allowed");
    assert_eq!(ok.l7_matched, Some(true));
    assert_eq!(
        short(&http(
            &b,
            "shop/frontend",
            "shop/backend",
            8080,
            "DELETE",
            "/api/items",
            &[]
        )),
        "l7"
    );
    assert_eq!(
        short(&http(
            &b,
            "shop/frontend",
            "shop/backend",
            8080,
            "GET",
            "/admin",
            &[]
        )),
        "l7"
    );
    assert_eq!(
        short(&http(
            &b,
            "shop/frontend",
            "shop/backend",
            8080,
            "POST",
            "/api/orders",
            &[]
        )),
        "l7"
    );
    assert_eq!(
        short(&http(
            &b,
            "shop/frontend",
            "shop/backend",
            8080,
            "POST",
            "/api/orders",
            &[("x-tenant", "shop")]
        )),
        "allowed"
    );
}

#[test]
fn text_and_json_rendering() {
    let b = examples(NP);
    let r = run(&b, "shop/frontend", "shop/backend", 8081, Protocol::Tcp);
    let text = render_text(&r);
    assert!(
        text.starts_with("verdict: denied (by the source's egress policy)"),
        "{text}"
    );
    assert!(
        text.contains("selected by: NetworkPolicy shop/default-deny"),
        "{text}"
    );
    let json = serde_json::to_value(&r).expect("serialise");
    assert_eq!(json["verdict"], "denied");
    assert_eq!(json["deniedBy"], "egress");
    assert_eq!(json["egress"]["endpoint"], "shop/frontend");
    let r = run(&b, "shop/frontend", "shop/backend", 8080, Protocol::Tcp);
    let json = serde_json::to_value(&r).expect("serialise");
    assert_eq!(json["deniedBy"], serde_json::Value::Null);
}
