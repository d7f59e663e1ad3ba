//! L7: Istio AuthorizationPolicies enforced by the L7 filter, as a waypoint enforces them, with
//! real HTTP between lab pods. The seed's `backend-api-policy` applied as written (it targets
//! the Service `backend-api`; principals are the clients' ServiceAccounts): the allowed
//! workloads get the server's answer from their own address, everything else gets 403
//! `RBAC: access denied` from wiremesh and never reaches the server (its access log proves
//! it). Across the tunnel and on one node. Then a table of Istio's semantics on one workload.

mod common;

use std::time::{Duration, Instant};

use wiremesh_lab::{namespace_manifest, Host, HttpReply, HttpRequest, HttpServer, Lab, PodSpec};

const PORT: u16 = 8080;
/// How long a policy may take to be in force on the proxy's path.
const SETTLE: Duration = Duration::from_secs(30);
const RBAC_DENIED: &str = "RBAC: access denied";

/// The seed's Istio policy, as written.
const SEED: &str = include_str!("../../policy/examples/istio.yaml");

const BACKEND: Host = Host::Pod(2, 1);
const FRONTEND: Host = Host::Pod(1, 1);
const PROMETHEUS: Host = Host::Pod(1, 2);
const ATTACKER: Host = Host::Pod(1, 3);
/// A frontend on the backend's own node.
const FRONTEND_LOCAL: Host = Host::Pod(2, 2);

fn workloads() -> String {
    let pods = [
        PodSpec::new("production", "backend-api", BACKEND).label("app", "backend-api"),
        PodSpec::new("production", "frontend", FRONTEND)
            .label("app", "frontend")
            .service_account("frontend"),
        PodSpec::new("monitoring", "prometheus", PROMETHEUS)
            .label("app", "prometheus")
            .service_account("prometheus"),
        PodSpec::new("production", "attacker", ATTACKER).label("app", "attacker"),
        PodSpec::new("production", "frontend-2", FRONTEND_LOCAL)
            .label("app", "frontend")
            .service_account("frontend"),
    ];
    let mut docs = vec![
        namespace_manifest("production", &[]),
        namespace_manifest("monitoring", &[]),
    ];
    docs.extend(pods.iter().map(PodSpec::manifest));
    docs.join("---\n")
}

fn send(lab: &Lab, from: Host, req: HttpRequest) -> HttpReply {
    lab.host(from)
        .http(&req)
        .unwrap_or_else(|e| panic!("{} {} from {from}: {e}", req.method, req.url))
}

fn get(lab: &Lab, from: Host, server: &HttpServer, path: &str) -> HttpReply {
    send(
        lab,
        from,
        HttpRequest::new("GET", format!("{}{path}", server.url())),
    )
}

/// Waits until `from`'s `path` gets Istio's 403: the policy is in force on the proxy's path.
fn wait_enforced(lab: &Lab, server: &HttpServer, from: Host, path: &str) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let reply = get(lab, from, server, path);
        if reply.status == 403 && reply.body.trim_end() == RBAC_DENIED {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the AuthorizationPolicy was not enforced within {SETTLE:?}: last reply {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A 2-node lab with the workloads and the backend serving HTTP, with `policies` applied.
fn scenario(policies: &str) -> (Lab, HttpServer) {
    common::require_agent();
    let lab = common::lab(2, 3);
    common::start_mesh(&lab);
    let server = lab
        .http_server(BACKEND, PORT)
        .expect("the backend serves HTTP");
    let agent = lab.node(1).agent();
    agent.apply(&workloads()).expect("apply the workloads");
    agent.apply(policies).expect("apply the Istio policies");
    (lab, server)
}

#[test]
fn the_seeds_authorization_policy_is_enforced_across_the_tunnel_and_on_one_node() {
    let (lab, server) = scenario(SEED);
    wait_enforced(&lab, &server, ATTACKER, "/api/v1/products");
    let before = server.requests().len();

    let mut expected = Vec::new();
    for client in [FRONTEND, FRONTEND_LOCAL] {
        let ip = client.ip();
        for path in ["/api/v1/products", "/api/v1/products/42?page=2"] {
            let reply = get(&lab, client, &server, path);
            // The server logs the path without its query.
            let logged = path.split('?').next().unwrap_or(path);
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (200, format!("GET {logged} from {ip}\n").as_str()),
                "GET {path} from {client}: the server's own answer, the client's address kept"
            );
            expected.push(format!("GET {logged} from {ip}"));
        }
        for (method, path) in [
            ("POST", "/api/v1/products"), // a method the rule does not list
            ("GET", "/metrics"),          // Prometheus's path, not the frontend's
            ("GET", "/api/v2/products"),  // outside /api/v1/*
        ] {
            let req = HttpRequest::new(method, format!("{}{path}", server.url()));
            let reply = send(&lab, client, req);
            assert_eq!(
                (reply.status, reply.body.trim_end()),
                (403, RBAC_DENIED),
                "{method} {path} from {client} is denied by wiremesh with Istio's answer"
            );
        }
    }
    let metrics = get(&lab, PROMETHEUS, &server, "/metrics");
    assert_eq!(
        metrics.status, 200,
        "Prometheus scrapes /metrics: {metrics:?}"
    );
    expected.push(format!("GET /metrics from {}", PROMETHEUS.ip()));
    for (client, path) in [
        (PROMETHEUS, "/api/v1/products"),
        (ATTACKER, "/api/v1/products"),
        (ATTACKER, "/metrics"),
    ] {
        let reply = get(&lab, client, &server, path);
        assert_eq!(
            (reply.status, reply.body.trim_end()),
            (403, RBAC_DENIED),
            "GET {path} from {client}"
        );
    }
    // A path a server would resolve elsewhere is refused before any rule is matched.
    let dotted = get(&lab, FRONTEND, &server, "/api/v1/../../metrics");
    assert_eq!(dotted.status, 400, "{dotted:?}");

    let reached: Vec<String> = server.requests().split_off(before);
    assert_eq!(
        reached, expected,
        "exactly the allowed requests reached the server, from the clients' own addresses"
    );
}

/// One request of the semantics table: client, method, path, headers, the status it must get.
type Case = (
    Host,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
);

/// Istio's evaluation order and matchers on one workload, through the real redirect: DENY
/// before ALLOW (a root-namespace DENY applies mesh-wide), a request no ALLOW rule matches is
/// denied, AUDIT changes nothing but the flow's verdict, notPaths / notMethods / prefix and
/// suffix paths, `when` on a request header, ipBlocks and namespaces. A policy this agent
/// cannot enforce (L4 attributes only) is refused by name and leaves the ones in force
/// untouched.
#[test]
fn istios_semantics_hold_through_the_filter() {
    let frontend = FRONTEND.ip();
    let policies = format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: backend-readers, namespace: production}}
spec:
  selector: {{matchLabels: {{app: backend-api}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{namespaces: [production]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/api/*"], notPaths: ["/api/internal*"]}}}}]
  - to: [{{operation: {{paths: ["*.json"], notMethods: [DELETE]}}}}]
    from: [{{source: {{ipBlocks: ["{frontend}/32"]}}}}]
  - to: [{{operation: {{methods: [POST], paths: [/canary]}}}}]
    when: [{{key: "request.headers[x-canary]", values: ["yes"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: no-secrets, namespace: istio-system}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["*/secrets"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: audit-orders, namespace: production}}
spec:
  selector: {{matchLabels: {{app: backend-api}}}}
  action: AUDIT
  rules: [{{to: [{{operation: {{paths: ["/api/orders*"]}}}}]}}]
"#
    );
    let (lab, server) = scenario(&format!(
        "{}---\n{policies}",
        namespace_manifest("istio-system", &[])
    ));
    wait_enforced(&lab, &server, FRONTEND, "/api/secrets");

    let cases: &[Case] = &[
        (FRONTEND, "GET", "/api/products", &[], 200),
        (ATTACKER, "GET", "/api/products", &[], 200), // the namespace matches
        (PROMETHEUS, "GET", "/api/products", &[], 403), // another namespace
        (FRONTEND, "GET", "/api/internal/x", &[], 403), // notPaths
        (FRONTEND, "POST", "/api/products", &[], 403), // methods
        (FRONTEND, "GET", "/api/secrets", &[], 403),  // DENY before ALLOW
        (FRONTEND, "PUT", "/data/report.json", &[], 200), // suffix, ipBlock
        (FRONTEND, "DELETE", "/data/report.json", &[], 403), // notMethods
        (ATTACKER, "GET", "/data/report.json", &[], 403), // outside the ipBlock
        (PROMETHEUS, "POST", "/canary", &[("x-canary", "yes")], 200), // when
        (PROMETHEUS, "POST", "/canary", &[("x-canary", "no")], 403),
        (PROMETHEUS, "POST", "/canary", &[], 403),
        (FRONTEND, "GET", "/api/orders/7", &[], 200), // audited, still allowed
    ];
    let before = server.requests().len();
    let mut failures = Vec::new();
    let mut expected = Vec::new();
    for (client, method, path, headers, want) in cases {
        let mut req = HttpRequest::new(method, format!("{}{path}", server.url()));
        for (k, v) in *headers {
            req = req.header(k, v);
        }
        let reply = send(&lab, *client, req);
        if reply.status != *want {
            failures.push(format!(
                "{method} {path} {headers:?} from {client}: {} (want {want})",
                reply.status
            ));
        }
        if *want == 200 {
            expected.push(format!("{method} {path} from {}", client.ip()));
        } else if reply.body.trim_end() != RBAC_DENIED {
            failures.push(format!("{method} {path}: body {:?}", reply.body));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let reached: Vec<String> = server.requests().split_off(before);
    assert_eq!(
        reached, expected,
        "only the allowed requests reached the server"
    );

    // The audited request is an AUDIT flow naming the policy, the DENY a DROPPED one.
    let agent = lab.node(2).agent();
    // The agent relays the proxy's records as they come (a long poll): wait for the last one.
    let audited_seen =
        |flows: &[serde_json::Value]| flows.iter().any(|f| f["l7"]["path"] == "/api/orders/7");
    let flows = agent
        .observe_json_until(
            &["--protocol", "http"],
            Duration::from_secs(10),
            audited_seen,
        )
        .expect("wiremesh observe");
    let audited = flows
        .iter()
        .find(|f| f["l7"]["path"] == "/api/orders/7")
        .unwrap_or_else(|| panic!("no flow of the audited request within 10 s in {flows:#?}"));
    assert_eq!(audited["verdict"], "AUDIT", "{audited}");
    assert!(
        audited["policy"]
            .as_str()
            .is_some_and(|p| p.contains("audit-orders")),
        "{audited}"
    );
    let denied = flows
        .iter()
        .find(|f| f["l7"]["path"] == "/api/secrets" && f["verdict"] == "DROPPED")
        .unwrap_or_else(|| panic!("no flow of the denied request in {flows:#?}"));
    assert!(
        denied["policy"]
            .as_str()
            .is_some_and(|p| p.contains("istio-system/no-secrets")),
        "{denied}"
    );

    // What this agent cannot enforce (CUSTOM: an external authorizer) is refused by name, and
    // nothing in force changes.
    let custom = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
        metadata: {name: ext-authz, namespace: production}\n\
        spec: {action: CUSTOM, provider: {name: opa}, rules: [{to: [{operation: {paths: [/api/*]}}]}]}\n";
    let err = lab
        .node(1)
        .agent()
        .apply(custom)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("spec.action"),
        "the refusal names spec.action: {err}"
    );
    let still = get(&lab, ATTACKER, &server, "/api/products");
    assert_eq!(
        still.status, 200,
        "the policies in force are unchanged: {still:?}"
    );
}

/// PeerAuthentication, where "mTLS" means "came through the tunnel from a mesh node, or from a
/// mesh pod of the same node". Node-3 runs no agent: it is outside the mesh, and reaches
/// node-2's pods straight over the underlay. Under PERMISSIVE it is served (the control);
/// under STRICT its connections are dropped by the eBPF programs while a mesh pod across the
/// tunnel is still served; back to PERMISSIVE it is served again.
#[test]
fn peer_authentication_strict_refuses_a_client_outside_the_mesh() {
    common::require_agent();
    let lab = common::lab(3, 1);
    for node in [1, 2] {
        lab.node(node).agent().start().expect("start an agent");
    }
    for node in [1, 2] {
        let agent = lab.node(node).agent();
        agent
            .wait_peer_count(1, common::CONVERGE)
            .unwrap_or_else(|e| panic!("node-{node}: the mesh did not converge: {e}"));
    }
    let backend = Host::Pod(2, 1);
    let mesh_client = Host::Pod(1, 1);
    let outside = Host::Node(3);
    lab.node(3)
        .bypass_tunnel(2)
        .expect("route node-2's pods over the underlay from node-3");
    let server = lab.http_server(backend, PORT).expect("the backend serves");
    let pods = [
        PodSpec::new("production", "backend-api", backend).label("app", "backend-api"),
        PodSpec::new("production", "frontend", mesh_client).label("app", "frontend"),
    ];
    let mut docs = vec![namespace_manifest("production", &[])];
    docs.extend(pods.iter().map(PodSpec::manifest));
    let agent = lab.node(1).agent();
    agent
        .apply(&docs.join("---\n"))
        .expect("apply the workloads");
    let mode = |mode: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
             metadata: {{name: default, namespace: production}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
        )
    };
    let until = |from: Host, want: u16, what: &str| {
        let deadline = Instant::now() + SETTLE;
        loop {
            let reply = get(&lab, from, &server, "/api/v1/products");
            if reply.status == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: GET from {from} still answered {} after {SETTLE:?}",
                reply.status
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };

    agent.apply(&mode("PERMISSIVE")).expect("apply PERMISSIVE");
    until(
        outside,
        200,
        "PERMISSIVE serves a client outside the mesh (the control)",
    );
    agent.apply(&mode("STRICT")).expect("apply STRICT");
    until(outside, 0, "STRICT drops a client outside the mesh");
    let mesh = get(&lab, mesh_client, &server, "/api/v1/products");
    assert_eq!(
        mesh.status, 200,
        "STRICT serves a mesh pod through the tunnel: {mesh:?}"
    );
    agent
        .apply(&mode("PERMISSIVE"))
        .expect("apply PERMISSIVE again");
    until(outside, 200, "PERMISSIVE again");
}

/// Only the frontend's account, only port 8080: attributes a connection carries, no HTTP.
const L4_ONLY: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-l4, namespace: production}
spec:
  selector: {matchLabels: {app: backend-api}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/production/sa/frontend"]}}]
    to: [{operation: {ports: ["8080"]}}]
"#;

/// An AUDIT policy on the same workload: audited connections must be recorded one by one, so
/// the proxy becomes the workload's waypoint.
const AUDIT_ALL: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: backend-audit, namespace: production}
spec:
  selector: {matchLabels: {app: backend-api}}
  action: AUDIT
  rules: [{}]
"#;

/// What the node's proxy has judged since it started.
fn proxy_judged(lab: &Lab, node: u8) -> u64 {
    let stats = lab
        .node(node)
        .agent()
        .proxy_stats()
        .unwrap_or_else(|e| panic!("the proxy's stats on node-{node}: {e}"));
    ["forwarded", "dropped", "audit", "error"]
        .iter()
        .map(|k| {
            stats[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k} in {stats}"))
        })
        .sum()
}

/// An AuthorizationPolicy with only L4 attributes (principals, ports) is enforced by the eBPF
/// programs, as ztunnel enforces it: the frontend (across the tunnel and on the backend's node)
/// gets the server's answer, Prometheus and the attacker never connect (the programs count
/// `authz-deny`), and neither node's proxy judges a single connection. Control: an AUDIT
/// policy on the same workload makes the proxy its waypoint — the attacker now gets Istio's 403
/// from the proxy and the proxy's counters move, so the counters read above were live.
#[test]
fn l4_only_policies_are_enforced_by_the_programs_without_the_proxy() {
    let (lab, server) = scenario(L4_ONLY);
    let deadline = Instant::now() + SETTLE;
    loop {
        let reply = get(&lab, ATTACKER, &server, "/");
        if reply.status == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the L4 AuthorizationPolicy was not enforced within {SETTLE:?}: last reply {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let before = server.requests().len();
    let mut expected = Vec::new();
    for client in [FRONTEND, FRONTEND_LOCAL] {
        let reply = get(&lab, client, &server, "/api/v1/products");
        let ip = client.ip();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, format!("GET /api/v1/products from {ip}\n").as_str()),
            "{client}: the frontend's account is allowed on 8080"
        );
        expected.push(format!("GET /api/v1/products from {ip}"));
    }
    for client in [PROMETHEUS, ATTACKER] {
        let reply = get(&lab, client, &server, "/metrics");
        assert_eq!(
            reply.status, 0,
            "{client}: no ALLOW rule matches, the connection is refused: {reply:?}"
        );
    }
    assert_eq!(
        server.requests().split_off(before),
        expected,
        "only the frontend's requests reached the server"
    );
    for node in [1, 2] {
        assert_eq!(
            proxy_judged(&lab, node),
            0,
            "node-{node}'s proxy saw a connection"
        );
    }
    let metrics = lab.node(2).agent().metrics().expect("node-2 metrics");
    let authz_drops: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("wiremesh_policy_packets_total{endpoint=\"production/backend-api\"")
                && l.contains("reason=\"authz-deny\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        authz_drops > 0,
        "the programs count the refused connections as authz-deny:\n{metrics}"
    );

    let refused = |flows: &[serde_json::Value]| {
        flows
            .iter()
            .any(|f| f["dropReason"] == "Authorization denied" && f["l7"].is_null())
    };
    let flows = lab
        .node(2)
        .agent()
        .observe_json_until(
            &["--verdict", "DROPPED", "--to-pod", "production/backend-api"],
            Duration::from_secs(10),
            refused,
        )
        .expect("wiremesh observe");
    let drop = flows
        .iter()
        .find(|f| f["dropReason"] == "Authorization denied")
        .unwrap_or_else(|| panic!("no authorization drop in {flows:#?}"));
    assert!(
        drop["policy"]
            .as_str()
            .is_some_and(|p| p.contains("production/backend-l4")),
        "the drop names the AuthorizationPolicy: {drop}"
    );

    // Control: the proxy becomes the waypoint and judges the same traffic.
    lab.node(1)
        .agent()
        .apply(AUDIT_ALL)
        .expect("apply the AUDIT policy");
    wait_enforced(&lab, &server, ATTACKER, "/metrics");
    let reply = get(&lab, FRONTEND, &server, "/api/v1/products");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        proxy_judged(&lab, 2) > 0,
        "control: as the waypoint, node-2's proxy judged the requests"
    );
}
