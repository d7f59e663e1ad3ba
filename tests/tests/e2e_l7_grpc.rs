//! L7 for gRPC: a CiliumNetworkPolicy whose `rules.http` allow `POST /demo.Greeter/SayHello`
//! only, enforced by the proxy on a real gRPC service (tonic, cleartext HTTP/2) through the real
//! redirect: the allowed method gets the server's reply with status OK, the other method gets
//! `PERMISSION_DENIED` (`grpc-status: 7`) from wiremesh and never reaches the server (its access
//! log proves it). Across the tunnel and on one node. The control: before the policy, the same
//! denied call reaches the server and is answered, so the log would show it if it got through.

mod common;

use std::time::{Duration, Instant};

use wiremesh_lab::{namespace_with_pods, GrpcOutcome, GrpcServer, Host, Lab, PodSpec};

const PORT: u16 = 50051;
/// How long a policy may take to be in force on the proxy's path.
const SETTLE: Duration = Duration::from_secs(30);
const HELLO: &str = "SayHello";
const GOODBYE: &str = "SayGoodbye";
/// gRPC status codes (`google.rpc.Code`).
const OK: i64 = 0;
const PERMISSION_DENIED: i64 = 7;

const GREETER_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: greeter-grpc-policy, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: greeter}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: greeter-client}}]
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - {method: POST, path: /demo.Greeter/SayHello}
"#;

const SERVER: Host = Host::Pod(2, 1);
const CLIENT: Host = Host::Pod(1, 1);
/// A client on the server's own node.
const CLIENT_LOCAL: Host = Host::Pod(2, 2);

fn workloads() -> String {
    let pods = [
        PodSpec::new("production", "greeter", SERVER).label("app", "greeter"),
        PodSpec::new("production", "client", CLIENT).label("app", "greeter-client"),
        PodSpec::new("production", "client-2", CLIENT_LOCAL).label("app", "greeter-client"),
    ];
    namespace_with_pods("production", &pods)
}

fn call(lab: &Lab, from: Host, server: &GrpcServer, method: &str) -> GrpcOutcome {
    lab.host(from)
        .grpc_call(server, method, &from.to_string())
        .unwrap_or_else(|e| panic!("{method} from {from}: {e}"))
}

/// Waits until the method the policy denies gets PERMISSION_DENIED: the proxy is on the path.
fn wait_enforced(lab: &Lab, server: &GrpcServer) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let outcome = call(lab, CLIENT, server, GOODBYE);
        if outcome.code == PERMISSION_DENIED {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gRPC rules were not enforced within {SETTLE:?}: last outcome {outcome:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn grpc_methods_are_allowed_and_denied_by_path_across_the_tunnel_and_on_one_node() {
    common::require_agent();
    let lab = common::lab(2, 2);
    common::start_mesh(&lab);
    let server = lab
        .grpc_server(SERVER, PORT)
        .expect("the server serves gRPC");
    lab.node(1)
        .agent()
        .apply(&workloads())
        .expect("apply the workloads");

    // The control: with no policy yet, both methods reach the server and are answered.
    for client in [CLIENT, CLIENT_LOCAL] {
        for method in [HELLO, GOODBYE] {
            let outcome = call(&lab, client, &server, method);
            assert_eq!(
                (outcome.code, outcome.reply.as_str()),
                (
                    OK,
                    format!("{method} {client} from {}", client.ip()).as_str()
                ),
                "{method} from {client} before any policy: {outcome:?}"
            );
        }
    }
    let goodbye_line = |client: Host| format!("/demo.Greeter/{GOODBYE} from {}", client.ip());
    assert!(
        server.calls().contains(&goodbye_line(CLIENT)),
        "the control: the server logs a {GOODBYE} that reached it: {:?}",
        server.calls()
    );

    lab.node(1)
        .agent()
        .apply(GREETER_POLICY)
        .expect("apply greeter-grpc-policy");
    wait_enforced(&lab, &server);
    let before = server.calls().len();

    let mut expected = Vec::new();
    for client in [CLIENT, CLIENT_LOCAL] {
        let ip = client.ip();
        let hello = call(&lab, client, &server, HELLO);
        assert_eq!(
            (hello.code, hello.reply.as_str()),
            (OK, format!("{HELLO} {client} from {ip}").as_str()),
            "{HELLO} from {client}: the server's own reply, the client's address kept: {hello:?}"
        );
        expected.push(format!("/demo.Greeter/{HELLO} from {ip}"));

        let goodbye = call(&lab, client, &server, GOODBYE);
        assert_eq!(
            (
                goodbye.code,
                goodbye.message.as_str(),
                goodbye.reply.as_str()
            ),
            (PERMISSION_DENIED, "Access denied", ""),
            "{GOODBYE} from {client} is denied by wiremesh itself: {goodbye:?}"
        );
    }
    let reached = server.calls().split_off(before);
    assert_eq!(
        reached, expected,
        "exactly the allowed calls reached the server, from the clients' own addresses"
    );
    observe_shows_grpc(&lab);
}

/// `wiremesh observe` on the server's node records the gRPC calls as HTTP flows: the allowed
/// method forwarded with HTTP status 200, the denied one dropped by the policy.
fn observe_shows_grpc(lab: &Lab) {
    let path = |m: &str| format!("/demo.Greeter/{m}");
    let both = |flows: &[serde_json::Value]| {
        [HELLO, GOODBYE]
            .iter()
            .all(|m| flows.iter().any(|f| f["l7"]["path"] == path(m)))
    };
    let flows = lab
        .node(2)
        .agent()
        .observe_json_until(&["--protocol", "http"], Duration::from_secs(10), both)
        .expect("wiremesh observe");
    assert!(
        flows.iter().any(|f| f["verdict"] == "FORWARDED"
            && f["l7"]["method"] == "POST"
            && f["l7"]["path"] == path(HELLO)
            && f["l7"]["status"] == 200),
        "no forwarded {HELLO} in {flows:#?}"
    );
    let denied = flows
        .iter()
        .find(|f| f["verdict"] == "DROPPED" && f["l7"]["path"] == path(GOODBYE))
        .unwrap_or_else(|| panic!("no denied {GOODBYE} in {flows:#?}"));
    assert_eq!(denied["dropReason"], "Policy denied", "{denied}");
}
