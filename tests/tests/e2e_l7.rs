//! L7: CiliumNetworkPolicy `rules.http` enforced in the packet path by the proxy, with real
//! HTTP between lab pods: allowed requests get the server's answer (and the server sees the
//! client pod's own address), denied ones get 403 `Access denied` from wiremesh and never reach
//! the server (its access log proves it), and a workload the policy does not admit at all is
//! dropped at L4. Across the tunnel and on one node.

mod common;

use std::time::{Duration, Instant};

use wiremesh_lab::{namespace_with_pods, Host, HttpReply, HttpRequest, HttpServer, Lab, PodSpec};

const PORT: u16 = 8080;
/// How long a policy may take to be in force on the proxy's path.
const SETTLE: Duration = Duration::from_secs(30);

/// The backend's policy as a Cilium user writes it: the frontend may list and read products
/// and place orders, nothing else.
const BACKEND_L7_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-l7-policy, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend-api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/api/v1/products.*"}
        - {method: POST, path: /api/v1/orders}
"#;

const BACKEND: Host = Host::Pod(2, 1);
const FRONTEND: Host = Host::Pod(1, 1);
const ATTACKER: Host = Host::Pod(1, 2);
/// A frontend on the backend's own node.
const FRONTEND_LOCAL: Host = Host::Pod(2, 2);

fn workloads() -> String {
    let pods = [
        PodSpec::new("production", "backend-api", BACKEND).label("app", "backend-api"),
        PodSpec::new("production", "frontend", FRONTEND).label("app", "frontend"),
        PodSpec::new("production", "attacker", ATTACKER).label("app", "attacker"),
        PodSpec::new("production", "frontend-2", FRONTEND_LOCAL).label("app", "frontend"),
    ];
    namespace_with_pods("production", &pods)
}

fn get(lab: &Lab, from: Host, server: &HttpServer, path: &str) -> HttpReply {
    send(
        lab,
        from,
        HttpRequest::new("GET", format!("{}{path}", server.url())),
    )
}

fn send(lab: &Lab, from: Host, req: HttpRequest) -> HttpReply {
    lab.host(from)
        .http(&req)
        .unwrap_or_else(|e| panic!("{} {} from {from}: {e}", req.method, req.url))
}

/// Waits until a request the policy denies gets wiremesh's 403: the proxy is on the path.
fn wait_enforced(lab: &Lab, server: &HttpServer) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let reply = get(lab, FRONTEND, server, "/settle/probe");
        if reply.status == 403 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the HTTP rules were not enforced within {SETTLE:?}: last reply {reply:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A 2-node lab with the workloads, the backend serving HTTP and backend-l7-policy in force.
fn scenario() -> (Lab, HttpServer) {
    common::require_agent();
    let lab = common::lab(2, 2);
    common::start_mesh(&lab);
    let server = lab
        .http_server(BACKEND, PORT)
        .expect("the backend serves HTTP");
    lab.node(1)
        .agent()
        .apply(&workloads())
        .expect("apply the workloads");
    lab.node(1)
        .agent()
        .apply(BACKEND_L7_POLICY)
        .expect("apply backend-l7-policy");
    wait_enforced(&lab, &server);
    (lab, server)
}

#[test]
fn cilium_http_rules_are_enforced_across_the_tunnel_and_on_one_node() {
    let (lab, server) = scenario();
    let before = server.requests().len();

    let mut expected = Vec::new();
    for client in [FRONTEND, FRONTEND_LOCAL] {
        let ip = client.ip();
        for path in ["/api/v1/products", "/api/v1/products/42"] {
            let reply = get(&lab, client, &server, path);
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (200, format!("GET {path} from {ip}\n").as_str()),
                "GET {path} from {client}: the server's own answer, the client's address kept"
            );
            expected.push(format!("GET {path} from {ip}"));
        }
        let order = HttpRequest::new("POST", format!("{}/api/v1/orders", server.url()))
            .header("Content-Type", "application/json")
            .body(br#"{"item": 42}"#);
        let reply = send(&lab, client, order);
        assert_eq!(
            reply.status, 200,
            "POST /api/v1/orders from {client}: {reply:?}"
        );
        expected.push(format!("POST /api/v1/orders from {ip} body 12"));

        for (method, path) in [
            ("GET", "/api/v1/admin"),
            ("DELETE", "/api/v1/products"),
            ("POST", "/api/v1/products"),
        ] {
            let req = HttpRequest::new(method, format!("{}{path}", server.url()));
            let reply = send(&lab, client, req);
            assert_eq!(
                (reply.status, reply.body.trim_end()),
                (403, "Access denied"),
                "{method} {path} from {client} is denied by wiremesh itself"
            );
        }
    }
    let denied_l4 = get(&lab, ATTACKER, &server, "/api/v1/products");
    assert_eq!(
        denied_l4.status, 0,
        "a workload no rule admits is dropped at L4, never answered: {denied_l4:?}"
    );

    let reached: Vec<String> = server.requests().split_off(before);
    assert_eq!(
        reached, expected,
        "exactly the allowed requests reached the server, from the clients' own addresses"
    );
    observe_shows_the_scenario(&lab);
}

/// `wiremesh observe` on the backend's node shows the forwarded and the denied HTTP requests
/// with the right pods, and the attacker's L4 drop; its filters select exactly those; the JSON
/// carries the fields the issue names.
fn observe_shows_the_scenario(lab: &Lab) {
    let agent = lab.node(2).agent();
    let json = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["-o", "json", "--last", "1000"];
        all.extend_from_slice(args);
        let out = agent.observe(&all).expect("wiremesh observe");
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    // The agent relays the proxy's records by long poll: wait until both requests are in.
    let both = |flows: &[serde_json::Value]| {
        ["/api/v1/products", "/api/v1/admin"]
            .iter()
            .all(|p| flows.iter().any(|f| f["l7"]["path"] == *p))
    };
    let http = agent
        .observe_json_until(
            &["--protocol", "http", "--to-pod", "production/backend-api"],
            Duration::from_secs(10),
            both,
        )
        .expect("wiremesh observe");
    let forwarded = http.iter().find(|f| {
        f["verdict"] == "FORWARDED"
            && f["l7"]["path"] == "/api/v1/products"
            && f["l7"]["status"] == 200
    });
    let forwarded = forwarded.unwrap_or_else(|| panic!("no forwarded GET in {http:#?}"));
    assert_eq!(forwarded["source"]["namespace"], "production");
    assert_eq!(forwarded["l7"]["method"], "GET");
    assert!(forwarded["l7"]["latencyMs"].is_number(), "{forwarded}");
    assert!(forwarded["time"].is_string() && forwarded["l4"]["port"] == PORT);
    let denied = http
        .iter()
        .find(|f| f["verdict"] == "DROPPED" && f["l7"]["path"] == "/api/v1/admin")
        .unwrap_or_else(|| panic!("no denied GET /api/v1/admin in {http:#?}"));
    assert_eq!(denied["l7"]["status"], 403);
    assert!(denied["dropReason"].is_string(), "{denied}");

    let l4 = json(&["--verdict", "DROPPED", "--from-pod", "production/attacker"]);
    let drop = l4
        .iter()
        .find(|f| f["l7"].is_null() && f["l4"]["port"] == PORT)
        .unwrap_or_else(|| panic!("no L4 drop of the attacker in {l4:#?}"));
    assert_eq!(drop["destination"]["pod"], "backend-api");
    assert_eq!(drop["dropReason"], "Policy denied");
    assert!(
        drop["policy"]
            .as_str()
            .is_some_and(|p| p.contains("backend-l7-policy")),
        "the drop names the policy: {drop}"
    );
    // The filters exclude: no HTTP flow among TCP ones, none from the attacker among forwarded.
    assert!(json(&["--protocol", "tcp"])
        .iter()
        .all(|f| f["l7"].is_null()));
    assert!(json(&[
        "--verdict",
        "FORWARDED",
        "--from-pod",
        "production/attacker"
    ])
    .is_empty());
    assert!(json(&["--http-status", "4xx"])
        .iter()
        .all(|f| f["l7"]["status"]
            .as_u64()
            .is_some_and(|s| (400..500).contains(&s))));

    let table = agent
        .observe(&["--last", "1000"])
        .expect("wiremesh observe");
    assert!(table.starts_with("TIMESTAMP"), "{table}");
    assert!(
        table.lines().any(|l| l.contains("production/frontend")
            && l.contains("production/backend-api")
            && l.contains("L7/HTTP")
            && l.contains("FORWARDED GET /api/v1/products => 200")),
        "{table}"
    );
}

/// `count` requests sent back to back: (path, status, when it was answered) of each.
fn load(
    lab: &Lab,
    server: &HttpServer,
    paths: &[&str],
    count: usize,
) -> Vec<(String, u16, Instant)> {
    (0..count)
        .map(|i| {
            let path = paths[i % paths.len()];
            let status = get(lab, FRONTEND, server, path).status;
            (path.to_string(), status, Instant::now())
        })
        .collect()
}

/// The proxy is not the agent: while the backend node's agent is killed with SIGKILL and
/// started again, a client's requests keep getting their answers — the allowed ones the
/// server's, the denied ones wiremesh's 403 — and none fails. Then a policy change under load:
/// a path the new policy denies gets 403 within 1 s of `apply` returning.
#[test]
fn requests_are_judged_across_an_agent_kill_and_a_policy_change_applies_within_a_second() {
    let (lab, server) = scenario();
    let (killed, results) = std::thread::scope(|s| {
        let client = s.spawn(|| load(&lab, &server, &["/api/v1/products", "/api/v1/admin"], 120));
        std::thread::sleep(Duration::from_millis(500));
        lab.node(2).agent().kill().expect("kill -9 node-2's agent");
        let killed = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        lab.node(2)
            .agent()
            .start()
            .expect("start node-2's agent again");
        (killed, client.join().expect("the client"))
    });
    let while_down = results
        .iter()
        .filter(|(_, _, at)| *at > killed && at.duration_since(killed) < Duration::from_secs(1))
        .count();
    assert!(
        while_down > 0,
        "the control: some requests were answered while the agent was dead"
    );
    let wrong: Vec<&(String, u16, Instant)> = results
        .iter()
        .filter(|(path, status, _)| *status != if path == "/api/v1/admin" { 403 } else { 200 })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests got another answer across the agent's kill and restart: {wrong:?}",
        wrong.len(),
        results.len()
    );

    // Only orders from now on: products become denied.
    let orders_only = BACKEND_L7_POLICY.replace(
        "        - {method: GET, path: \"/api/v1/products.*\"}\n",
        "",
    );
    assert_ne!(orders_only, BACKEND_L7_POLICY, "the edit took");
    lab.node(1)
        .agent()
        .apply(&orders_only)
        .expect("apply the narrower policy");
    let applied = Instant::now();
    loop {
        let status = get(&lab, FRONTEND, &server, "/api/v1/products").status;
        if status == 403 {
            break;
        }
        assert_eq!(status, 200, "until the change, the old policy answers");
        assert!(
            applied.elapsed() < Duration::from_secs(1),
            "GET /api/v1/products still allowed {:?} after the policy change",
            applied.elapsed()
        );
    }
}
