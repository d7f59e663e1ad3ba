//! The verdict cases, on maps compiled from real manifests (see `config_tests::MANIFEST`).

use super::*;
use crate::config::tests::fixture;
use crate::config::L7Config;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn snap() -> Snapshot {
    let (_, _, cfg) = fixture();
    Snapshot::decode(&cfg).expect("decodes")
}

fn req<'a>(method: &'a str, path: &'a str, headers: &[(&'a str, &'a str)]) -> RequestParts<'a> {
    RequestParts {
        method,
        path,
        host: Some("api"),
        headers: headers.to_vec(),
    }
}

const API: &str = "10.0.1.1";
const CLIENT: &str = "10.0.1.2";
const OTHER: &str = "10.0.2.1";
const PLAIN: &str = "10.0.1.3";

fn ingress(s: &Snapshot, from: &str, port: u16, r: &RequestParts<'_>) -> Decision {
    decide(s, Direction::Ingress, ip(API), ip(from), port, r)
}

/// Rules from two policies on the same port are a union: each admits its own requests.
#[test]
fn union_of_two_policies_rules() {
    let s = snap();
    let get = ingress(&s, CLIENT, 80, &req("GET", "/a/x", &[]));
    assert!(get.allowed);
    assert_eq!(
        get.rule.as_deref(),
        Some("method=GET path=/a/.*"),
        "{get:?}"
    );
    assert!(
        get.matched().is_some_and(|f| f.ends_with("rules.http[0]")),
        "{get:?}"
    );
    let post = ingress(&s, CLIENT, 80, &req("POST", "/b", &[("x-token", "t1")]));
    assert!(post.allowed, "{post:?}");
    assert_eq!(
        post.rule.as_deref(),
        Some("method=POST path=/b header X-Token: t1"),
        "{post:?}"
    );
    assert_eq!(post.status(), None);
}

#[test]
fn no_matching_rule_is_denied_with_403() {
    let s = snap();
    for r in [
        req("GET", "/b", &[]),
        req("POST", "/b", &[]),
        req("POST", "/b", &[("x-token", "wrong")]),
        req("DELETE", "/a/x", &[]),
        req("GET", "/a", &[]),
    ] {
        let d = ingress(&s, CLIENT, 80, &r);
        assert!(!d.allowed, "{r:?}");
        assert_eq!(d.reason, Reason::NoRuleMatched);
        assert_eq!(d.status(), Some(403));
    }
    assert_eq!(DENIED_BODY, "Access denied\r\n");
}

/// `other` is allowed GET /a/.* by one policy and denied port 80 by another: deny wins.
#[test]
fn a_deny_entry_beats_an_l7_allow() {
    let s = snap();
    let d = ingress(&s, OTHER, 80, &req("GET", "/a/x", &[]));
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::L4Denied);
    assert_eq!(d.map_allowed, Some(false));
}

#[test]
fn allowed_without_rules_is_unrestricted() {
    let s = snap();
    let d = ingress(&s, PLAIN, 81, &req("PATCH", "/anything", &[]));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reason, Reason::Unrestricted);
}

#[test]
fn not_allowed_at_l4_is_denied() {
    let s = snap();
    // client has no rule on 81; plain none on 80; an outside address none at all.
    for (from, port) in [(CLIENT, 81), (PLAIN, 80), ("8.8.8.8", 80)] {
        let d = ingress(&s, from, port, &req("GET", "/a/x", &[]));
        assert!(!d.allowed, "{from} {port} {d:?}");
        assert_eq!(d.reason, Reason::L4Denied);
    }
}

/// No egress policy selects api: its egress is not isolated, the map allows everything.
#[test]
fn non_isolated_direction_is_unrestricted() {
    let s = snap();
    let d = decide(
        &s,
        Direction::Egress,
        ip(API),
        ip(CLIENT),
        80,
        &req("GET", "/z", &[]),
    );
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.reason, Reason::Unrestricted);
}

/// An endpoint the configuration does not judge (plain has L4 rules only), and any endpoint
/// before a configuration arrives, are denied.
#[test]
fn unknown_local_endpoint_fails_closed() {
    let s = snap();
    let d = decide(
        &s,
        Direction::Ingress,
        ip(PLAIN),
        ip(CLIENT),
        80,
        &req("GET", "/", &[]),
    );
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::UnknownEndpoint);
    let empty = Snapshot::decode(&L7Config::default()).expect("decodes");
    let d = ingress(&empty, CLIENT, 80, &req("GET", "/a/x", &[]));
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::UnknownEndpoint);
}

/// The client's egress rules allow a request and the server is a local pod with HTTP rules of
/// its own: both are applied, since the proxy's upstream is not redirected a second time. The
/// control: the same request to a server without HTTP rules is judged by egress alone.
#[test]
fn an_egress_request_to_a_local_pod_with_http_rules_meets_both() {
    let egress = r#"
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-out, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET}]
"#;
    let text = format!("{}{egress}", crate::config::tests::MANIFEST);
    let bundle = policy::load_with([("t.yaml", text.as_str())], policy::LoadOptions::default())
        .expect("loads");
    let compiled =
        policy::Compiled::build_for(&bundle, policy::Identities::build(&bundle), Some("n1"));
    let s = Snapshot::decode(&L7Config::build(&compiled, &bundle, "n1", 1)).expect("decodes");
    let to = |dst: &str| std::net::SocketAddr::new(ip(dst), 80);
    let both = decide_request(
        &s,
        Direction::Egress,
        ip(CLIENT),
        to(API),
        &req("GET", "/a/x", &[]),
    );
    assert!(both.allowed, "{both:?}");
    let ingress_denies = decide_request(
        &s,
        Direction::Egress,
        ip(CLIENT),
        to(API),
        &req("GET", "/x", &[]),
    );
    assert!(
        !ingress_denies.allowed,
        "api's ingress rules admit only /a/.*"
    );
    assert_eq!(ingress_denies.local.as_deref(), Some("shop/api"));
    let egress_denies = decide_request(
        &s,
        Direction::Egress,
        ip(CLIENT),
        to(API),
        &req("POST", "/b", &[("x-token", "t1")]),
    );
    assert!(
        !egress_denies.allowed,
        "the client's egress rules admit only GET"
    );
    assert_eq!(egress_denies.local.as_deref(), Some("shop/client"));
    let plain = decide_request(
        &s,
        Direction::Egress,
        ip(CLIENT),
        to(PLAIN),
        &req("GET", "/x", &[]),
    );
    assert!(
        plain.allowed,
        "plain has no HTTP rules: egress alone decides: {plain:?}"
    );
}

/// The seed's Istio scenario: `backend-api-policy` targets the Service `backend-api`, so it
/// applies to the backend pod; a root-namespace DENY policy and an AUDIT policy apply too.
const ISTIO: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: production}}
- {apiVersion: v1, kind: Namespace, metadata: {name: monitoring}}
- apiVersion: v1
  kind: Pod
  metadata: {name: backend, namespace: production, labels: {app: backend-api}}
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.1.1}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: frontend, namespace: production, labels: {app: frontend}}
  spec: {nodeName: n2, serviceAccountName: frontend, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.2.1}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: prometheus, namespace: monitoring, labels: {app: prometheus}}
  spec: {nodeName: n2, serviceAccountName: prometheus, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.2.2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: attacker, namespace: production, labels: {app: attacker}}
  spec: {nodeName: n2, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.2.3}]}
- apiVersion: v1
  kind: Service
  metadata: {name: backend-api, namespace: production}
  spec: {selector: {app: backend-api}, ports: [{port: 80, targetPort: 8080}]}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: backend-api-policy, namespace: production}
  spec:
    targetRefs: [{kind: Service, group: "", name: backend-api}]
    action: ALLOW
    rules:
    - from: [{source: {principals: ["cluster.local/ns/production/sa/frontend"]}}]
      to: [{operation: {methods: ["GET"], paths: ["/api/v1/*"]}}]
    - from: [{source: {principals: ["cluster.local/ns/monitoring/sa/prometheus"]}}]
      to: [{operation: {methods: ["GET"], paths: ["/metrics"]}}]
- apiVersion: security.istio.io/v1beta1
  kind: AuthorizationPolicy
  metadata: {name: no-secrets, namespace: istio-system}
  spec:
    action: DENY
    rules: [{to: [{operation: {paths: ["*/secrets"]}}]}]
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: audit-orders, namespace: production}
  spec:
    selector: {matchLabels: {app: backend-api}}
    action: AUDIT
    rules: [{to: [{operation: {paths: ["/api/v1/orders*"]}}]}]
"#;

fn istio_snap(manifest: &str) -> (L7Config, Snapshot) {
    let options = policy::LoadOptions {
        istio_model: policy::IstioModel::Full,
        ..policy::LoadOptions::default()
    };
    let bundle = policy::load_with([("istio.yaml", manifest)], options).expect("loads");
    let compiled =
        policy::Compiled::build_for(&bundle, policy::Identities::build(&bundle), Some("n1"));
    let cfg = L7Config::build(&compiled, &bundle, "n1", 1);
    let snap = Snapshot::decode(&cfg).expect("decodes");
    (cfg, snap)
}

#[test]
fn istio_authorization_policies_decide_after_cilium_with_their_own_403() {
    let (cfg, s) = istio_snap(ISTIO);
    let names: Vec<_> = cfg.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["backend"], "the pod the targeted Service selects");
    let at = |from: &str, method: &str, path: &str| {
        decide(
            &s,
            Direction::Ingress,
            ip("10.0.1.1"),
            ip(from),
            8080,
            &req(method, path, &[]),
        )
    };
    let ok = at("10.0.2.1", "GET", "/api/v1/products?page=2");
    assert!(ok.allowed, "{ok:?}");
    let label = ok.policy_label().expect("a label");
    assert!(
        label.contains("AuthorizationPolicy production/backend-api-policy spec.rules[0]"),
        "{label}"
    );
    assert!(!ok.audited());
    assert!(at("10.0.2.2", "GET", "/metrics").allowed);
    for (from, method, path) in [
        ("10.0.2.1", "POST", "/api/v1/products"), // method not listed
        ("10.0.2.1", "GET", "/metrics"),          // prometheus's path, frontend's principal
        ("10.0.2.2", "GET", "/api/v1/products"),  // frontend's path, prometheus's principal
        ("10.0.2.3", "GET", "/api/v1/products"),  // default service account
        ("198.51.100.7", "GET", "/api/v1/products"), // no pod: no principal
        ("10.0.2.1", "GET", "/api/v1/secrets"),   // the mesh-wide DENY wins over the ALLOW
    ] {
        let d = at(from, method, path);
        assert!(!d.allowed, "{from} {method} {path}: {d:?}");
        assert_eq!(d.reason, Reason::IstioDenied, "{from} {method} {path}");
        assert_eq!(d.denied_body(), "RBAC: access denied");
        assert_eq!(d.status(), Some(403));
    }
    let denied = at("10.0.2.1", "GET", "/api/v1/secrets");
    let label = denied.policy_label().expect("a label");
    assert!(
        label.contains("DENY policy AuthorizationPolicy istio-system/no-secrets"),
        "{label}"
    );
    // AUDIT changes nothing but the record.
    let audited = at("10.0.2.1", "GET", "/api/v1/orders/7");
    assert!(audited.allowed && audited.audited(), "{audited:?}");
}

#[test]
fn without_istio_policies_the_endpoint_is_not_the_proxys() {
    let without: String = ISTIO
        .split("- apiVersion: security.istio.io")
        .next()
        .expect("the first part")
        .to_string();
    let (cfg, s) = istio_snap(&without);
    assert!(cfg.endpoints.is_empty(), "{:?}", cfg.endpoints);
    let d = decide(
        &s,
        Direction::Ingress,
        ip("10.0.1.1"),
        ip("10.0.2.3"),
        8080,
        &req("GET", "/api/v1/products", &[]),
    );
    assert_eq!(d.reason, Reason::UnknownEndpoint);
}

/// Cilium's policy is judged first: what it denies gets Cilium's answer, not Istio's.
#[test]
fn a_request_cilium_denies_gets_ciliums_answer() {
    let cnp = r#"
- apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: only-get, namespace: production}
  spec:
    endpointSelector: {matchLabels: {app: backend-api}}
    ingress:
    - toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET}]}}]
"#;
    let (_, s) = istio_snap(&format!("{ISTIO}{cnp}"));
    let d = decide(
        &s,
        Direction::Ingress,
        ip("10.0.1.1"),
        ip("10.0.2.1"),
        8080,
        &req("POST", "/api/v1/products", &[]),
    );
    assert_eq!(d.reason, Reason::NoRuleMatched);
    assert_eq!(d.denied_body(), DENIED_BODY);
    assert!(d.istio.is_none());
}

/// A connection that is not HTTP, to an endpoint only Istio sends to the proxy, is decided at
/// L4 as ztunnel decides it: a rule without HTTP fields can allow it, one with HTTP fields
/// cannot; an endpoint with Cilium HTTP rules on the port gets no L4 decision (reset).
#[test]
fn a_connection_that_is_not_http_is_decided_by_istio_at_l4() {
    let mixed = r#"
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: mixed, namespace: production}
  spec:
    selector: {matchLabels: {app: backend-api}}
    rules:
    - from: [{source: {principals: ["cluster.local/ns/monitoring/sa/prometheus"]}}]
    - to: [{operation: {methods: [GET]}}]
"#;
    let workloads = ISTIO
        .split("- apiVersion: security.istio.io")
        .next()
        .expect("the first part");
    let (_, s) = istio_snap(&format!("{workloads}{mixed}"));
    let at = |from: &str| decide_opaque(&s, ip("10.0.1.1"), ip(from), 8080);
    let prometheus = at("10.0.2.2").expect("Istio decides");
    assert!(prometheus.allowed, "an L4 rule allows it: {prometheus:?}");
    let frontend = at("10.0.2.1").expect("Istio decides");
    assert!(
        !frontend.allowed,
        "only HTTP rules would allow it: {frontend:?}"
    );
    assert_eq!(frontend.reason, Reason::IstioDenied);
    // A DENY rule that reads HTTP matches every connection seen without a request (fail
    // closed): the mesh-wide `no-secrets` denies Prometheus's too.
    let (_, s) = istio_snap(&format!("{ISTIO}{mixed}"));
    let denied = decide_opaque(&s, ip("10.0.1.1"), ip("10.0.2.2"), 8080).expect("decides");
    assert!(!denied.allowed, "{denied:?}");
    assert!(
        denied
            .policy_label()
            .is_some_and(|l| l.contains("no-secrets")),
        "{denied:?}"
    );

    let cnp = r#"
- apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: only-get, namespace: production}
  spec:
    endpointSelector: {matchLabels: {app: backend-api}}
    ingress:
    - toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET}]}}]
    - toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
"#;
    let (_, s) = istio_snap(&format!("{workloads}{mixed}{cnp}"));
    assert!(decide_opaque(&s, ip("10.0.1.1"), ip("10.0.2.2"), 8080).is_none());
    // Control: another port, without HTTP rules, is Istio's alone.
    assert!(decide_opaque(&s, ip("10.0.1.1"), ip("10.0.2.2"), 9090).is_some());
}
