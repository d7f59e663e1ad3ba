//! Istio AuthorizationPolicy and PeerAuthentication semantics, each case against Istio's
//! documented behaviour (istio.io reference "Authorization Policy" and "PeerAuthentication"),
//! the seed's examples, and every refusal naming its field.

mod common;

use common::{examples, http, short, tcp};
use policy::istio::{effective_mode, evaluate, IstioDecision, IstioRequest, MtlsMode};
use policy::{load, load_with, render_text, HttpRequest, Identities, LoadOptions};

/// Root namespace istio-system; x/server (app: server, sa server) on n1; x/client (sa client)
/// on n1; y/other (sa default) on n2; Service x/server-svc selects app: server.
const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: x}}
- {apiVersion: v1, kind: Namespace, metadata: {name: y}}
- {apiVersion: v1, kind: Namespace, metadata: {name: istio-system}}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}
- apiVersion: v1
  kind: Node
  metadata: {name: n2}
  status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: server, namespace: x, labels: {app: server}}
  spec: {nodeName: n1, serviceAccountName: server, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.1.1}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: x, labels: {app: client}}
  spec: {nodeName: n1, serviceAccountName: client, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.1.2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: other, namespace: y, labels: {app: client}}
  spec: {nodeName: n2, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.2.1}]}
- apiVersion: v1
  kind: Service
  metadata: {name: server-svc, namespace: x}
  spec: {selector: {app: server}}
"#;

fn bundle(policies: &str) -> policy::Bundle {
    load([("c.yaml", CLUSTER), ("p.yaml", policies)]).unwrap_or_else(|e| panic!("load: {e}"))
}

fn ap(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

/// `GET path` (with `headers`) or, with `method` empty, an L4 connection.
fn req_http(method: &str, path: &str, headers: &[(&str, &str)]) -> Option<HttpRequest> {
    (!method.is_empty()).then(|| HttpRequest {
        method: Some(method.into()),
        path: Some(path.into()),
        host: Some("server.x.svc.cluster.local:8080".into()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

/// The decision at `to` (namespace/pod) for a request from `from` (a pod, or an IP outside the
/// mesh) on port 8080.
fn decide(b: &policy::Bundle, from: &str, to: &str, http: Option<HttpRequest>) -> IstioDecision {
    let (ns, name) = to.split_once('/').expect("ns/name");
    let dst = b.endpoint(ns, name).expect("destination pod");
    let (source_ip, principal, namespace) = match from.split_once('/') {
        Some((ns, name)) => {
            let src = b.endpoint(ns, name).expect("source pod");
            (src.ips[0], Some(b.principal(src)), Some(ns.to_string()))
        }
        None => (from.parse().expect("an IP"), None, None),
    };
    let req = IstioRequest {
        source_ip,
        source_principal: principal,
        source_namespace: namespace,
        destination_ip: dst.ips[0],
        destination_port: 8080,
        http,
    };
    evaluate(&b.authz_for(dst), &req)
}

fn allowed(b: &policy::Bundle, from: &str, method: &str, path: &str) -> bool {
    decide(b, from, "x/server", req_http(method, path, &[])).allowed
}

#[test]
fn deny_wins_over_allow() {
    let b = bundle(
        &(ap("x", "all", "  rules: [{}]")
            + &ap(
                "x",
                "no-x",
                "  action: DENY\n  rules: [{from: [{source: {namespaces: [x]}}]}]",
            )),
    );
    let d = decide(&b, "x/client", "x/server", None);
    assert!(!d.allowed, "{d:?}");
    let by = d.deciding.expect("a deciding rule");
    assert_eq!(by.policy.to_string(), "AuthorizationPolicy x/no-x");
    assert_eq!(by.rule, "spec.rules[0]");
    assert!(decide(&b, "y/other", "x/server", None).allowed);
}

#[test]
fn under_allow_a_request_must_match_some_rule() {
    let b = bundle(&ap(
        "x",
        "client-only",
        "  rules: [{from: [{source: {principals: [cluster.local/ns/x/sa/client]}}]}]",
    ));
    assert!(allowed(&b, "x/client", "GET", "/"));
    let d = decide(&b, "y/other", "x/server", None);
    assert!(!d.allowed && d.deciding.is_none(), "{d:?}");
    // No ALLOW policy applies to y/other: everything is allowed there.
    assert!(decide(&b, "x/server", "y/other", None).allowed);
}

#[test]
fn no_rules_allows_nothing_and_one_empty_rule_allows_everything() {
    let b = bundle(&ap("x", "allow-nothing", "  action: ALLOW"));
    assert!(!allowed(&b, "x/client", "GET", "/"));
    assert!(!allowed(&b, "x/client", "", ""));
    let b = bundle(&ap("x", "allow-all", "  rules: [{}]"));
    assert!(allowed(&b, "x/client", "GET", "/"));
    assert!(allowed(&b, "203.0.113.5", "", ""));
    // A DENY policy without rules denies nothing.
    let b = bundle(&ap("x", "deny-nothing", "  action: DENY"));
    assert!(allowed(&b, "x/client", "GET", "/"));
}

#[test]
fn audit_marks_and_never_decides() {
    let b = bundle(&ap("x", "audit-all", "  action: AUDIT\n  rules: [{}]"));
    let d = decide(&b, "x/client", "x/server", req_http("GET", "/", &[]));
    assert!(d.allowed && d.audited, "{d:?}");
    assert_eq!(d.audited_by.expect("audited by").rule, "spec.rules[0]");
    let b = bundle(
        &(ap("x", "audit-all", "  action: AUDIT\n  rules: [{}]")
            + &ap("x", "allow-nothing", "  action: ALLOW")),
    );
    let d = decide(&b, "x/client", "x/server", None);
    assert!(!d.allowed && d.audited, "{d:?}");
    let b = bundle(&ap(
        "x",
        "audit-y",
        "  action: AUDIT\n  rules: [{from: [{source: {namespaces: [y]}}]}]",
    ));
    assert!(!decide(&b, "x/client", "x/server", None).audited);
}

#[test]
fn root_namespace_policies_apply_mesh_wide() {
    let deny_y = "  action: DENY\n  rules: [{from: [{source: {namespaces: [y]}}]}]";
    let b = bundle(&ap("istio-system", "deny-y", deny_y));
    assert!(!decide(&b, "y/other", "x/server", None).allowed);
    assert!(!decide(&b, "y/other", "x/client", None).allowed);
    // With a selector, a root-namespace policy only selects the root namespace's workloads.
    let sel = format!("  selector: {{matchLabels: {{app: server}}}}\n{deny_y}");
    let b = bundle(&ap("istio-system", "deny-y", &sel));
    assert!(decide(&b, "y/other", "x/server", None).allowed);
    // The root namespace is configurable.
    let options = LoadOptions {
        istio: policy::istio::IstioSettings {
            root_namespace: "mesh-root".into(),
            ..Default::default()
        },
        ..LoadOptions::default()
    };
    let text = ap("mesh-root", "deny-y", deny_y);
    let b = load_with([("c.yaml", CLUSTER), ("p.yaml", text.as_str())], options).expect("load");
    assert!(!decide(&b, "y/other", "x/server", None).allowed);
    let b = bundle(&ap("mesh-root", "deny-y", deny_y));
    assert!(decide(&b, "y/other", "x/server", None).allowed);
}

#[test]
fn namespace_policies_apply_to_their_namespace_only() {
    let b = bundle(&ap("x", "allow-nothing", "  action: ALLOW"));
    assert!(!decide(&b, "y/other", "x/server", None).allowed);
    assert!(!decide(&b, "y/other", "x/client", None).allowed);
    assert!(decide(&b, "x/client", "y/other", None).allowed);
}

#[test]
fn target_refs_select_the_service_pods() {
    for refs in [
        "  targetRefs: [{kind: Service, group: \"\", name: server-svc}]",
        "  targetRef: {kind: Service, name: server-svc}",
    ] {
        let b = bundle(&ap(
            "x",
            "allow-nothing",
            &format!("{refs}\n  action: ALLOW"),
        ));
        assert!(!decide(&b, "x/client", "x/server", None).allowed, "{refs}");
        assert!(decide(&b, "x/server", "x/client", None).allowed, "{refs}");
    }
    // A missing Service selects nothing.
    let b = bundle(&ap(
        "x",
        "p",
        "  targetRefs: [{kind: Service, name: nope}]\n  action: ALLOW",
    ));
    assert!(decide(&b, "x/client", "x/server", None).allowed);
}

#[test]
fn not_paths_and_not_methods() {
    let b = bundle(&ap(
        "x",
        "p",
        "  rules: [{to: [{operation: {notPaths: [\"/admin*\"], notMethods: [DELETE]}}]}]",
    ));
    assert!(allowed(&b, "x/client", "GET", "/home"));
    assert!(!allowed(&b, "x/client", "GET", "/admin/users"));
    assert!(!allowed(&b, "x/client", "DELETE", "/home"));
}

#[test]
fn prefix_suffix_and_exact_paths() {
    let b = bundle(&ap(
        "x",
        "p",
        "  rules: [{to: [{operation: {methods: [GET], paths: [\"/api/*\", \"*.png\", /exact]}}]}]",
    ));
    assert!(allowed(&b, "x/client", "GET", "/api/v1/x"));
    assert!(allowed(&b, "x/client", "GET", "/img/logo.png"));
    assert!(allowed(&b, "x/client", "GET", "/exact?query=1"));
    assert!(!allowed(&b, "x/client", "GET", "/exact/more"));
    assert!(!allowed(&b, "x/client", "GET", "/other"));
    assert!(!allowed(&b, "x/client", "POST", "/api/v1/x"));
}

#[test]
fn hosts_match_case_insensitively_with_or_without_port() {
    let b = bundle(&ap(
        "x",
        "p",
        "  rules: [{to: [{operation: {hosts: [\"Server.X.svc.cluster.local\"]}}]}]",
    ));
    assert!(allowed(&b, "x/client", "GET", "/"));
    let b = bundle(&ap(
        "x",
        "p",
        "  rules: [{to: [{operation: {hosts: [\"*.example.com\"]}}]}]",
    ));
    assert!(!allowed(&b, "x/client", "GET", "/"));
}

#[test]
fn when_on_a_request_header() {
    let b = bundle(&ap(
        "x",
        "p",
        "  rules: [{when: [{key: \"request.headers[X-Token]\", values: [\"secret\"]}]}]",
    ));
    let with =
        |h: &[(&str, &str)]| decide(&b, "x/client", "x/server", req_http("GET", "/", h)).allowed;
    assert!(with(&[("x-token", "secret")]));
    assert!(!with(&[("x-token", "other")]));
    assert!(!with(&[]));
}

#[test]
fn when_on_l4_keys() {
    let b = bundle(&ap(
        "x",
        "p",
        "  rules: [{when: [{key: source.namespace, values: [x]}, {key: destination.port, notValues: [\"9090\"]}, {key: source.ip, values: [10.0.0.0/16]}]}]",
    ));
    assert!(decide(&b, "x/client", "x/server", None).allowed);
    assert!(!decide(&b, "y/other", "x/server", None).allowed);
}

#[test]
fn ip_blocks_and_not_ip_blocks() {
    let b = bundle(&ap(
        "x",
        "p",
        "  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8], notIpBlocks: [10.0.2.0/24]}}]}]",
    ));
    assert!(decide(&b, "x/client", "x/server", None).allowed);
    assert!(!decide(&b, "y/other", "x/server", None).allowed);
    assert!(!decide(&b, "203.0.113.5", "x/server", None).allowed);
    // remoteIpBlocks are the connection's source address here.
    let b = bundle(&ap(
        "x",
        "p",
        "  rules: [{from: [{source: {remoteIpBlocks: [10.0.1.2]}}]}]",
    ));
    assert!(decide(&b, "x/client", "x/server", None).allowed);
    assert!(!decide(&b, "y/other", "x/server", None).allowed);
}

#[test]
fn principals_with_wildcards() {
    let rule = |p: &str| {
        ap(
            "x",
            "p",
            &format!("  rules: [{{from: [{{source: {{principals: [\"{p}\"]}}}}]}}]"),
        )
    };
    let b = bundle(&rule("*"));
    assert!(decide(&b, "y/other", "x/server", None).allowed);
    assert!(
        !decide(&b, "203.0.113.5", "x/server", None).allowed,
        "no principal outside the mesh"
    );
    let b = bundle(&rule("cluster.local/ns/x/*"));
    assert!(decide(&b, "x/client", "x/server", None).allowed);
    assert!(!decide(&b, "y/other", "x/server", None).allowed);
    let b = bundle(&rule("*/sa/default"));
    assert!(decide(&b, "y/other", "x/server", None).allowed);
    assert!(!decide(&b, "x/client", "x/server", None).allowed);
    // The trust domain is configurable.
    let options = LoadOptions {
        istio: policy::istio::IstioSettings {
            trust_domain: "example.org".into(),
            ..Default::default()
        },
        ..LoadOptions::default()
    };
    let text = rule("example.org/ns/x/sa/client");
    let b = load_with([("c.yaml", CLUSTER), ("p.yaml", text.as_str())], options).expect("load");
    assert!(decide(&b, "x/client", "x/server", None).allowed);
}

/// istiod's ztunnel conversion ("L7 policies never match for ALLOW; For DENY they will always
/// match, so it is more restrictive"): at L4, an ALLOW rule with HTTP fields matches nothing,
/// a DENY rule with HTTP fields matches on its L4 fields alone.
#[test]
fn http_rules_seen_at_l4_fail_closed() {
    let b = bundle(&ap(
        "x",
        "p",
        "  rules: [{from: [{source: {namespaces: [x]}}], to: [{operation: {methods: [GET]}}]}]",
    ));
    assert!(b.authz[0].needs_http());
    assert!(!decide(&b, "x/client", "x/server", None).allowed);
    assert!(allowed(&b, "x/client", "GET", "/"));
    let b = bundle(&(ap("x", "all", "  rules: [{}]")
        + &ap("x", "d", "  action: DENY\n  rules: [{from: [{source: {namespaces: [x]}}], to: [{operation: {paths: [/admin], ports: [\"8080\"]}}]}]")));
    assert!(!decide(&b, "x/client", "x/server", None).allowed);
    assert!(decide(&b, "y/other", "x/server", None).allowed);
    assert!(allowed(&b, "x/client", "GET", "/home"));
    assert!(!allowed(&b, "x/client", "GET", "/admin"));
    let l4_only = bundle(&ap(
        "x",
        "p",
        "  rules: [{to: [{operation: {ports: [\"8080\"]}}]}]",
    ));
    assert!(!l4_only.authz[0].needs_http());
}

#[test]
fn v1beta1_loads_as_v1() {
    let spec = "spec:\n  action: DENY\n  rules: [{from: [{source: {notNamespaces: [x]}}], to: [{operation: {notPorts: [\"22\"]}}]}]\n";
    let one = |v: &str| {
        let text = format!("apiVersion: security.istio.io/{v}\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: x}}\n{spec}");
        load([("p.yaml", text.as_str())]).expect("load").authz
    };
    assert_eq!(one("v1"), one("v1beta1"));
    let pa = |v: &str| {
        let text = format!("apiVersion: security.istio.io/{v}\nkind: PeerAuthentication\nmetadata: {{name: p, namespace: x}}\nspec: {{mtls: {{mode: STRICT}}}}\n");
        load([("p.yaml", text.as_str())]).expect("load").peer_authn
    };
    assert_eq!(pa("v1"), pa("v1beta1"));
}

#[test]
fn refusals_name_the_field() {
    let cases = [
        ("  action: CUSTOM\n  provider: {name: ext}", "spec.action: valid Istio, but not supported"),
        ("  action: ALLOW\n  provider: {name: ext}", "spec.provider: valid Istio, but not supported"),
        ("  action: MAYBE", "spec.action: unknown action \"MAYBE\""),
        ("  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]", "spec.rules[0].from[0].source.requestPrincipals: valid Istio, but not supported"),
        ("  rules: [{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]", "spec.rules[0].from[0].source.notRequestPrincipals: valid Istio"),
        ("  rules: [{when: [{key: source.ip, values: [10.0.0.1]}, {key: connection.sni, values: [a]}]}]", "spec.rules[0].when[1].key: valid Istio, but not supported by wiremesh (connection.sni"),
        ("  rules: [{when: [{key: \"request.auth.claims[iss]\", values: [a]}]}]", "spec.rules[0].when[0].key: valid Istio, but not supported by wiremesh (request.auth.claims[iss]"),
        ("  rules: [{when: [{key: experimental.envoy.filters.x, values: [a]}]}]", "spec.rules[0].when[0].key: valid Istio, but not supported by wiremesh (experimental."),
        ("  rules: [{when: [{key: source.user, values: [a]}]}]", "spec.rules[0].when[0].key: unsupported key \"source.user\""),
        ("  rules: [{when: [{key: source.ip}]}]", "spec.rules[0].when[0]: at least one of values or notValues"),
        ("  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]", "spec.targetRefs[0].kind: valid Istio, but not supported"),
        ("  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: se}]", "spec.targetRefs[0].kind: valid Istio"),
        ("  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Service, name: s}]", "spec.selector: selector and targetRefs are mutually exclusive"),
        ("  selector: {matchExpressions: []}", "spec.selector.matchExpressions: unknown field"),
        ("  rules: [{to: [{operation: {method: [GET]}}]}]", "spec.rules[0].to[0].operation.method: unknown field"),
        ("  rules: [{to: [{operation: {ports: [\"http\"]}}]}]", "spec.rules[0].to[0].operation.ports[0]: invalid port"),
        ("  rules: [{to: [{operation: {}}]}]", "spec.rules[0].to[0].operation: `to.operation` must not be empty"),
        ("  rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]", "spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR"),
        ("  rules: [{to: [{operation: {paths: [\"/a/{*}/b\"]}}]}]", "spec.rules[0].to[0].operation.paths[0]: valid Istio"),
    ];
    for (spec, want) in cases {
        let text = ap("x", "p", spec);
        let e = load([("p.yaml", text.as_str())])
            .map(|_| ())
            .expect_err(spec)
            .to_string();
        let want = format!("p.yaml: AuthorizationPolicy x/p: {want}");
        assert!(e.starts_with(&want), "got  {e}\nwant {want}");
    }
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: x}\nspec: {portLevelMtls: {\"8080\": {mode: STRICT}}}\n";
    let e = load([("p.yaml", pa)])
        .map(|_| ())
        .expect_err("portLevelMtls")
        .to_string();
    assert!(
        e.starts_with(
            "p.yaml: PeerAuthentication x/p: spec.portLevelMtls: portLevelMtls requires a selector"
        ),
        "{e}"
    );
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: x}\nspec: {mtls: {mode: SOMETIMES}}\n";
    let e = load([("p.yaml", pa)])
        .map(|_| ())
        .expect_err("mode")
        .to_string();
    assert!(
        e.starts_with("p.yaml: PeerAuthentication x/p: spec.mtls.mode: unknown mode"),
        "{e}"
    );
    let ra = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: x}\nspec: {}\n";
    let e = load([("p.yaml", ra)])
        .map(|_| ())
        .expect_err("RequestAuthentication")
        .to_string();
    assert!(e.contains("RequestAuthentication x/r: kind: security.istio.io/v1 RequestAuthentication is a policy kind wiremesh does not enforce"), "{e}");
}

fn pa(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n")
}

#[test]
fn peer_authentication_precedence_and_port_level() {
    let b = bundle(&(pa("istio-system", "mesh", "  mtls: {mode: STRICT}")
        + &pa("x", "ns", "  mtls: {mode: PERMISSIVE}")
        + &pa(
            "x",
            "server",
            "  selector: {matchLabels: {app: server}}\n  mtls: {mode: DISABLE}\n  portLevelMtls: {8443: {mode: STRICT}, 9000: {mode: UNSET}}",
        )));
    let mode = |ns: &str, name: &str, port: u16| {
        let ep = b.endpoint(ns, name).expect("pod");
        effective_mode(&b.peer_authn, &b.istio, ep, port)
    };
    assert_eq!(mode("x", "server", 8080), MtlsMode::Disable);
    assert_eq!(mode("x", "server", 8443), MtlsMode::Strict);
    assert_eq!(mode("x", "server", 9000), MtlsMode::Disable);
    assert_eq!(mode("x", "client", 8080), MtlsMode::Permissive);
    assert_eq!(mode("y", "other", 8080), MtlsMode::Strict);
    // UNSET inherits; nothing at all is PERMISSIVE.
    let b2 = bundle(
        &(pa("istio-system", "mesh", "  mtls: {mode: STRICT}")
            + &pa("y", "ns", "  mtls: {mode: UNSET}")),
    );
    let other = b2.endpoint("y", "other").expect("pod");
    assert_eq!(
        effective_mode(&b2.peer_authn, &b2.istio, other, 1),
        MtlsMode::Strict
    );
    let b3 = bundle("");
    assert_eq!(
        effective_mode(&b3.peer_authn, &b3.istio, other, 1),
        MtlsMode::Permissive
    );
}

/// STRICT admits what came through the tunnel or from a mesh pod; PERMISSIVE admits all.
#[test]
fn strict_refuses_sources_outside_the_mesh_in_the_trace() {
    let b = bundle(&pa("x", "strict", "  mtls: {mode: STRICT}"));
    assert_eq!(tcp(&b, "203.0.113.5", "x/server", 8080), "istio");
    assert_eq!(tcp(&b, "y/other", "x/server", 8080), "allowed");
    assert_eq!(
        tcp(&b, "198.18.0.2", "x/server", 8080),
        "allowed",
        "a remote node, through the tunnel"
    );
    assert_eq!(
        tcp(&b, "198.18.0.1", "x/server", 8080),
        "allowed",
        "the own node (probes)"
    );
    let b = bundle(&pa("x", "permissive", "  mtls: {mode: PERMISSIVE}"));
    assert_eq!(tcp(&b, "203.0.113.5", "x/server", 8080), "allowed");
}

const SEED: &[&str] = &["production.yaml", "istio.yaml"];

#[test]
fn seed_authorization_policy_through_its_service() {
    let b = examples(SEED);
    let backend = b.endpoint("production", "backend-api").expect("pod");
    assert_eq!(b.authz_for(backend).len(), 1);
    let get = |from: &str, method: &str, path: &str| {
        short(&http(
            &b,
            from,
            "production/backend-api",
            8080,
            method,
            path,
            &[],
        ))
    };
    assert_eq!(
        get("production/frontend", "GET", "/api/v1/products"),
        "allowed"
    );
    assert_eq!(
        get("production/frontend", "GET", "/api/v1/orders/7"),
        "allowed"
    );
    assert_eq!(
        get("production/frontend", "POST", "/api/v1/orders"),
        "istio"
    );
    assert_eq!(get("production/frontend", "GET", "/metrics"), "istio");
    assert_eq!(get("monitoring/prometheus", "GET", "/metrics"), "allowed");
    assert_eq!(
        get("monitoring/prometheus", "GET", "/api/v1/products"),
        "istio"
    );
    assert_eq!(
        get("production/attacker", "GET", "/api/v1/products"),
        "istio"
    );
    let r = http(
        &b,
        "monitoring/prometheus",
        "production/backend-api",
        8080,
        "GET",
        "/metrics",
        &[],
    );
    let text = render_text(&r);
    assert!(
        text.contains(
            "decided by AuthorizationPolicy production/backend-api-policy spec.rules[1] (ALLOW)"
        ),
        "{text}"
    );
    // Without an HTTP request the L7 filter decides each request.
    let r = common::run(
        &b,
        "production/attacker",
        "production/backend-api",
        8080,
        policy::Protocol::Tcp,
    );
    let istio = r.istio.as_ref().expect("istio report");
    assert!(
        istio.needs_http && istio.decision.is_none(),
        "{}",
        render_text(&r)
    );
    assert!(render_text(&r).contains("the L7 filter decides each request"));
    assert_eq!(
        istio.enforced_by.as_deref(),
        Some("L7 proxy (a policy reads HTTP attributes)")
    );
}

/// The trace says who enforces a workload's AuthorizationPolicies: the programs when they read
/// only what an identity and a port fix, the proxy (and why) otherwise.
#[test]
fn the_trace_names_who_enforces_the_authorization_policies() {
    let by = |spec: &str| {
        let b = bundle(&ap("x", "p", spec));
        let r = common::run(&b, "x/client", "x/server", 8080, policy::Protocol::Tcp);
        let istio = r.istio.as_ref().expect("istio report");
        let by = istio.enforced_by.clone().expect("a policy applies");
        assert!(render_text(&r).contains(&format!("enforced by the {by}")));
        by
    };
    assert_eq!(
        by("  rules: [{from: [{source: {namespaces: [x]}}], to: [{operation: {ports: [\"8080\"]}}]}]"),
        "eBPF programs"
    );
    assert_eq!(
        by("  rules: [{from: [{source: {ipBlocks: [10.0.1.0/24]}}]}]"),
        "L7 proxy (a policy matches source or destination addresses)"
    );
    assert_eq!(
        by("  action: AUDIT\n  rules: [{}]"),
        "L7 proxy (an AUDIT policy applies: the proxy records each audited connection)"
    );
}

#[test]
fn seed_cilium_l7_policy() {
    let b = examples(&["production.yaml", "cnp-l7.yaml"]);
    let get = |from: &str, port: u16, method: &str, path: &str| {
        short(&http(
            &b,
            from,
            "production/backend-api",
            port,
            method,
            path,
            &[],
        ))
    };
    assert_eq!(
        get("production/frontend", 8080, "GET", "/api/v1/products"),
        "allowed"
    );
    assert_eq!(
        get("production/frontend", 8080, "GET", "/api/v1/products/42"),
        "allowed"
    );
    assert_eq!(
        get("production/frontend", 8080, "POST", "/api/v1/orders"),
        "allowed"
    );
    assert_eq!(
        get("production/frontend", 8080, "GET", "/api/v1/orders"),
        "l7"
    );
    assert_eq!(
        get("production/frontend", 8080, "POST", "/api/v1/admin"),
        "l7"
    );
    assert_eq!(
        get("production/frontend", 9090, "GET", "/api/v1/products"),
        "ingress"
    );
    assert_eq!(
        get("production/attacker", 8080, "GET", "/api/v1/products"),
        "ingress"
    );
}

#[test]
fn service_accounts_reach_endpoints_principals_and_identities() {
    let b = examples(&["production.yaml"]);
    let ep = |ns: &str, n: &str| b.endpoint(ns, n).expect("pod").clone();
    assert_eq!(ep("production", "frontend").service_account, "frontend");
    assert_eq!(ep("production", "attacker").service_account, "default");
    assert_eq!(
        ep("production", "frontend").labels["io.cilium.k8s.policy.serviceaccount"],
        "frontend"
    );
    assert_eq!(
        b.principal(&ep("monitoring", "prometheus")),
        "cluster.local/ns/monitoring/sa/prometheus"
    );
    // Same pod labels, different accounts: different identities.
    let twins = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, labels: {app: t}}, spec: {serviceAccountName: one}, status: {podIP: 10.1.0.1}}\n- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x, labels: {app: t}}, spec: {serviceAccountName: two}, status: {podIP: 10.1.0.2}}\n- {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: x, labels: {app: t, io.cilium.k8s.policy.serviceaccount: one}}, spec: {serviceAccountName: two}, status: {podIP: 10.1.0.3}}\n";
    let b = load([("t.yaml", twins)]).expect("load");
    let ids = Identities::build(&b);
    let id = |ip: &str| ids.lookup(ip.parse().expect("ip"), None);
    assert_ne!(id("10.1.0.1"), id("10.1.0.2"));
    // A pod's own label cannot claim another account.
    assert_eq!(id("10.1.0.2"), id("10.1.0.3"));
    // The proxy reads a source's principal from the identity the tunnel authenticated.
    let labels = ids.labels(id("10.1.0.2")).expect("identity");
    assert_eq!(
        labels.principal(&b.istio),
        Some(("cluster.local/ns/x/sa/two".to_string(), "x".to_string()))
    );
    assert_eq!(ids.labels(2).expect("world").principal(&b.istio), None);
    // With a cluster name, endpoints carry Cilium's cluster label.
    let options = LoadOptions {
        cluster_name: Some("east".into()),
        ..LoadOptions::default()
    };
    let b = load_with([("t.yaml", twins)], options).expect("load");
    assert_eq!(
        b.endpoints[0].labels["io.cilium.k8s.policy.cluster"],
        "east"
    );
}

#[test]
fn policies_serialise_for_the_proxy_process() {
    let b = examples(SEED);
    let json = serde_json::to_string(&b.authz).expect("serialise");
    let back: Vec<policy::istio::AuthzPolicy> = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, b.authz);
}

mod properties {
    //! Generated policies: an L4-only policy set decides a connection exactly as it decides
    //! any request on it (so the eBPF programs may enforce it without the proxy), and with
    //! HTTP rules an L4 decision is never wider than the decision for any request.

    use super::*;
    use proptest::prelude::*;

    fn source() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "principals: [\"cluster.local/ns/x/*\"]",
            "principals: [\"*\"]",
            "notPrincipals: [\"*/sa/default\"]",
            "namespaces: [y]",
            "notNamespaces: [x]",
            "ipBlocks: [10.0.0.0/16]",
            "notIpBlocks: [10.0.2.0/24]",
        ])
        .prop_map(|s| format!("from: [{{source: {{{s}}}}}]"))
    }

    fn operation(http: bool) -> impl Strategy<Value = String> {
        let mut ops = vec![
            "ports: [\"8080\"]",
            "notPorts: [\"8080\"]",
            "ports: [\"9\"]",
        ];
        if http {
            ops.extend([
                "methods: [GET]",
                "notPaths: [\"/admin*\"]",
                "paths: [\"*.png\"], ports: [\"8080\"]",
                "hosts: [\"server*\"]",
            ]);
        }
        prop::sample::select(ops).prop_map(|s| format!("to: [{{operation: {{{s}}}}}]"))
    }

    fn condition(http: bool) -> impl Strategy<Value = String> {
        let mut keys = vec![
            "{key: source.namespace, values: [x]}",
            "{key: destination.port, notValues: [\"8080\"]}",
            "{key: source.ip, values: [10.0.1.0/24]}",
        ];
        if http {
            keys.push("{key: \"request.headers[x-token]\", values: [\"t*\"]}");
        }
        prop::sample::select(keys).prop_map(|s| format!("when: [{s}]"))
    }

    fn rule(http: bool) -> impl Strategy<Value = String> {
        (
            prop::option::of(source()),
            prop::option::of(operation(http)),
            prop::option::of(condition(http)),
        )
            .prop_map(|(f, t, w)| {
                let parts: Vec<String> = [f, t, w].into_iter().flatten().collect();
                format!("{{{}}}", parts.join(", "))
            })
    }

    fn policies(http: bool) -> impl Strategy<Value = String> {
        let one = (
            prop::sample::select(vec!["ALLOW", "DENY", "AUDIT"]),
            prop::option::of(prop::collection::vec(rule(http), 0..3)),
        );
        prop::collection::vec(one, 1..4).prop_map(|ps| {
            ps.iter()
                .enumerate()
                .map(|(i, (action, rules))| {
                    let rules = rules
                        .as_ref()
                        .map(|r| format!("\n  rules: [{}]", r.join(", ")))
                        .unwrap_or_default();
                    ap("x", &format!("p{i}"), &format!("  action: {action}{rules}"))
                })
                .collect()
        })
    }

    const SOURCES: [&str; 4] = ["x/client", "y/other", "203.0.113.5", "x/server"];

    fn requests() -> Vec<Option<HttpRequest>> {
        vec![
            req_http("GET", "/", &[]),
            req_http("POST", "/admin/x", &[("x-token", "top")]),
            req_http("GET", "/a.png", &[("X-Token", "secret")]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn l4_only_policies_decide_connections_as_requests(text in policies(false)) {
            let b = bundle(&text);
            prop_assert!(b.authz.iter().all(|p| !p.needs_http()));
            for from in SOURCES {
                let l4 = decide(&b, from, "x/server", None);
                for req in requests() {
                    let l7 = decide(&b, from, "x/server", req);
                    prop_assert_eq!(&l4.allowed, &l7.allowed, "{} from {}", text, from);
                    prop_assert_eq!(&l4.audited, &l7.audited, "{} from {}", text, from);
                }
            }
        }

        /// Where the eBPF programs enforce a workload's policies (nothing reads HTTP or an
        /// address, no AUDIT), its authorization map admits exactly the connections Istio's
        /// decision allows, for every source identity and port; elsewhere the proxy does.
        #[test]
        fn the_authorization_map_decides_as_istio_does(text in policies(false)) {
            use policy::istio::l4::{enforcement, needs_proxy, AuthzEnforcement};
            use policy::{Direction, Protocol};
            let b = bundle(&text);
            let server = b.endpoint("x", "server").expect("server");
            let applying = b.authz_for(server);
            let ids = Identities::build(&b);
            let map = match enforcement(&applying, &ids, &b.istio) {
                AuthzEnforcement::None => {
                    prop_assert!(applying.is_empty());
                    return Ok(());
                }
                AuthzEnforcement::Proxy(_) => {
                    prop_assert!(applying.iter().any(|p| needs_proxy(p).is_some()));
                    return Ok(());
                }
                AuthzEnforcement::Programs(map) => map,
            };
            for from in SOURCES {
                let (source_ip, principal, namespace) = match from.split_once('/') {
                    Some((ns, name)) => {
                        let src = b.endpoint(ns, name).expect("source pod");
                        (src.ips[0], Some(b.principal(src)), Some(ns.to_string()))
                    }
                    None => (from.parse().expect("an IP"), None, None),
                };
                let identity = ids.lookup(source_ip, Some("n1"));
                for port in [8080, 9, 1, 443, 65535] {
                    let req = IstioRequest {
                        source_ip,
                        source_principal: principal.clone(),
                        source_namespace: namespace.clone(),
                        destination_ip: server.ips[0],
                        destination_port: port,
                        http: None,
                    };
                    let want = evaluate(&applying, &req).allowed;
                    let got = map.lookup(Direction::Ingress, identity, Protocol::Tcp, port).allowed;
                    prop_assert_eq!(got, want, "{} from {} port {}", text, from, port);
                }
            }
        }

        #[test]
        fn an_l4_decision_is_never_wider_than_a_request_decision(text in policies(true)) {
            let b = bundle(&text);
            for from in SOURCES {
                let l4 = decide(&b, from, "x/server", None);
                for req in requests() {
                    let l7 = decide(&b, from, "x/server", req);
                    prop_assert!(!l4.allowed || l7.allowed, "{} from {}: {:?} vs {:?}", text, from, l4, l7);
                }
            }
        }
    }
}

/// The agent loads every AuthorizationPolicy and PeerAuthentication, L4-only ones included (the
/// eBPF programs enforce those); `Refused` refuses both kinds by their field `kind`.
#[test]
fn the_full_model_accepts_both_kinds_and_refused_refuses_them_by_name() {
    let options = |istio_model| LoadOptions {
        istio_model,
        ..LoadOptions::default()
    };
    let load_as = |model, text: &str| {
        load_with([("p.yaml", text)], options(model))
            .map(|b| (b.authz.len(), b.peer_authn.len()))
            .map_err(|e| e.to_string())
    };
    let http = ap("x", "h", "  rules: [{to: [{operation: {methods: [GET]}}]}]");
    let header = ap(
        "x",
        "w",
        "  rules: [{when: [{key: \"request.headers[x-a]\", values: [b]}]}]",
    );
    let l4 = ap("x", "p", "  rules: [{from: [{source: {namespaces: [y]}}]}]");
    let deny_all = ap("x", "d", "  {}");
    let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: x}\nspec: {mtls: {mode: STRICT}}\n";
    use policy::IstioModel::{Full, Refused};
    for text in [&http, &header, &l4, &deny_all] {
        assert_eq!(load_as(Full, text), Ok((1, 0)), "{text}");
    }
    assert_eq!(load_as(Full, pa), Ok((0, 1)));
    for text in [http.as_str(), pa] {
        let e = load_as(Refused, text).expect_err("refused");
        assert!(e.contains(": kind: valid Istio"), "{e}");
    }
}

/// PeerAuthentication STRICT is compiled into the destination's policy map: a TCP connection
/// from outside the mesh (the world, an outside CIDR identity) to a STRICT port is denied
/// whatever the other policies allow; pods and nodes are the mesh; PERMISSIVE ports, UDP and
/// workloads no STRICT mode covers are untouched.
#[test]
fn strict_mtls_denies_tcp_from_outside_the_mesh_in_the_policy_map() {
    use policy::{Compiled, Direction, Protocol};
    let allow_outside = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
        metadata: {name: outside, namespace: x}\nspec:\n  podSelector: {}\n  \
        ingress: [{from: [{ipBlock: {cidr: 203.0.113.0/24}}, {podSelector: {}, namespaceSelector: {}}]}]\n---\n";
    let verdicts = |policies: &str| {
        let b = bundle(&format!("{allow_outside}{policies}"));
        let compiled = Compiled::build(&b);
        let server = b.endpoint("x", "server").expect("server").clone();
        let client = b.endpoint("y", "other").expect("other").ips[0];
        move |from: &str, proto: Protocol, port: u16| {
            let from: std::net::IpAddr = match from {
                "pod" => client,
                ip => ip.parse().expect("an IP"),
            };
            compiled
                .lookup(&server, Direction::Ingress, from, proto, port)
                .expect("the server's map")
                .allowed
        }
    };
    let tcp = Protocol::Tcp;
    // Control: without a PeerAuthentication the outside range is allowed by the NetworkPolicy.
    let none = verdicts("");
    assert!(none("203.0.113.9", tcp, 8080));

    let strict = verdicts(&pa("x", "ns", "  mtls: {mode: STRICT}"));
    assert!(
        !strict("203.0.113.9", tcp, 8080),
        "an outside CIDR identity"
    );
    assert!(!strict("203.0.113.9", tcp, 1), "every port");
    assert!(
        strict("203.0.113.9", Protocol::Udp, 53),
        "UDP is not Istio's"
    );
    assert!(strict("pod", tcp, 8080), "a mesh pod");

    let port_level = verdicts(&pa(
        "x",
        "server",
        "  selector: {matchLabels: {app: server}}\n  mtls: {mode: STRICT}\n  portLevelMtls: {8080: {mode: PERMISSIVE}}",
    ));
    assert!(port_level("203.0.113.9", tcp, 8080), "the PERMISSIVE port");
    assert!(!port_level("203.0.113.9", tcp, 8079));
    assert!(!port_level("203.0.113.9", tcp, 8081));

    let only_one_port = verdicts(
        &(pa("istio-system", "mesh", "  mtls: {mode: PERMISSIVE}")
            + &pa(
                "x",
                "server",
                "  selector: {matchLabels: {app: server}}\n  portLevelMtls: {9090: {mode: STRICT}}",
            )),
    );
    assert!(!only_one_port("203.0.113.9", tcp, 9090));
    assert!(only_one_port("203.0.113.9", tcp, 8080));
}
