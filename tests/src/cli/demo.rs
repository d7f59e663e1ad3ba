//! `wiremesh-lab demo`: the end-to-end story in one run, readable as it scrolls by.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use wiremesh_lab::{
    marker, namespace_manifest, Host, HttpRequest, Lab, Ping, PodSpec, Proto, WG_IFACE, WG_PORT,
};

use super::{check_interrupted, section};

const READY: Duration = Duration::from_secs(20);
const CONVERGE: Duration = Duration::from_secs(20);
const REACH: Duration = Duration::from_secs(10);
const TRAFFIC: Duration = Duration::from_secs(30);
const TRANSFER_BYTES: usize = 4 * 1024 * 1024;

pub fn run(nodes: u8, pods: u8) -> anyhow::Result<()> {
    ensure!(
        nodes >= 2 && pods >= 1,
        "the demo needs at least 2 nodes with 1 pod each"
    );
    section(&format!("Building a lab: {nodes} nodes × {pods} pods"));
    let lab = Lab::new(nodes, pods).context("building the lab")?;
    println!("lab {} in {}", lab.prefix(), lab.dir().display());
    let result = steps(&lab);
    if result.is_err() {
        section("Agent logs (tails)");
        lab.dump_logs();
    }
    section("Tearing down");
    drop(lab);
    if result.is_ok() {
        println!("\nDEMO PASSED");
    }
    result
}

fn steps(lab: &Lab) -> anyhow::Result<()> {
    section("Starting one agent per node");
    lab.start_agents(READY).context("starting agents")?;
    for node in lab.node_ids() {
        println!(
            "node-{node}: agent pid {}",
            lab.node(node)
                .agent()
                .pid()
                .map_or("?".into(), |p| p.to_string())
        );
    }
    check_interrupted()?;

    section("Waiting for every node to learn every other node from the store");
    let start = Instant::now();
    for node in lab.node_ids() {
        lab.node(node)
            .agent()
            .wait_peer_count(usize::from(lab.nodes()) - 1, CONVERGE)?;
    }
    println!("converged in {:.1?}", start.elapsed());
    check_interrupted()?;

    section("Pod-to-pod ping across every node pair");
    for a in lab.node_ids() {
        for b in lab.node_ids().filter(|&b| b != a) {
            let (from, to) = (Host::Pod(a, 1), Host::Pod(b, lab.pods()));
            let first = lab.host(from).wait_reachable(to.ip(), REACH)?;
            let result = lab.host(from).ping(
                &Ping::new(to.ip())
                    .count(5)
                    .interval(Duration::from_millis(100)),
            )?;
            println!(
                "{from:>14} {:<12} -> {to:>14} {:<12} {result} (first reply after {first:.1?})",
                from.ip(),
                to.ip()
            );
            ensure!(
                result.all_received(),
                "ping {from} -> {to} lost packets: {result}"
            );
            check_interrupted()?;
        }
    }

    section("TCP transfer across the tunnel");
    let (from, to) = (Host::Pod(1, 1), Host::Pod(2, 1));
    let start = Instant::now();
    lab.host(from).tcp_transfer(to, TRANSFER_BYTES, TRAFFIC)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{from} -> {to}: {} MiB intact in {secs:.2} s ({:.0} Mbit/s including setup)",
        TRANSFER_BYTES / (1024 * 1024),
        TRANSFER_BYTES as f64 * 8.0 / secs / 1e6
    );
    check_interrupted()?;

    section("wiremesh encrypt status (node-1)");
    print!("{}", lab.node(1).agent().status_text()?);
    section(&format!("wg show {WG_IFACE} (node-1)"));
    print!("{}", lab.node(1).wg_show()?);
    check_interrupted()?;

    prove_encryption(lab)?;
    check_interrupted()?;
    network_policy(lab)?;
    check_interrupted()?;
    http_policy(lab)
}

const HTTP_POLICY: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-http, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: \"8000\", protocol: TCP}]
      rules:
        http: [{method: GET, path: \"/api/.*\"}]
";

/// A CiliumNetworkPolicy with HTTP rules: the backend's node sends the frontend's connections to
/// port 8000 through its L7 filter, which forwards `GET /api/...` and answers everything else
/// with 403 itself; `wiremesh observe` on that node shows both requests.
fn http_policy(lab: &Lab) -> anyhow::Result<()> {
    section("HTTP policy: the frontend may only GET /api/... on TCP 8000 (the L7 filter)");
    let frontend = Host::Pod(1, 1);
    let backend = Host::Pod(2, 1);
    let server = lab.http_server(backend, 8000)?;
    print!(
        "$ wiremesh apply -f http-policy.yaml\n{HTTP_POLICY}{}",
        lab.node(1).agent().apply(HTTP_POLICY)?
    );
    let get = |path: &str| {
        let req = HttpRequest::new("GET", format!("{}{path}", server.url()));
        lab.host(frontend).http(&req)
    };
    let deadline = Instant::now() + REACH;
    while get("/admin/settle")?.status != 403 {
        ensure!(
            Instant::now() < deadline,
            "the HTTP rules were not in force within {REACH:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut answers = Vec::new();
    for path in ["/api/products", "/admin/users"] {
        let reply = get(path)?;
        println!(
            "demo/frontend ({frontend}) GET {path} -> {} {}",
            reply.status,
            reply.body.trim_end()
        );
        answers.push(reply.status);
    }
    ensure!(
        answers == [200, 403],
        "HTTP rules not enforced as written: GET /api/products, /admin/users = {answers:?}"
    );
    let reached = server.requests();
    ensure!(
        !reached.iter().any(|r| r.contains("/admin/users")),
        "a denied request reached the server: {reached:?}"
    );
    println!("the backend's access log: {reached:?}");
    let agent = lab.node(2).agent();
    let seen =
        |flows: &[serde_json::Value]| flows.iter().any(|f| f["l7"]["path"] == "/admin/users");
    agent.observe_json_until(&["--protocol", "http"], REACH, seen)?;
    println!("\n$ wiremesh observe --protocol http --last 4   (node-2)");
    print!("{}", agent.observe(&["--protocol", "http", "--last", "4"])?);
    Ok(())
}

const BACKEND_POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backend-from-frontend, namespace: demo}
spec:
  podSelector: {matchLabels: {app: backend}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: frontend}}}]
    ports: [{protocol: TCP, port: 8080}]
";

/// A NetworkPolicy applied with `wiremesh apply`, enforced by eBPF on the destination pod's
/// veth: the frontend gets through the tunnel to the backend, another pod does not.
fn network_policy(lab: &Lab) -> anyhow::Result<()> {
    section("Network policy: only the frontend may reach the backend on TCP 8080");
    let frontend = PodSpec::new("demo", "frontend", Host::Pod(1, 1)).label("app", "frontend");
    let other = PodSpec::new("demo", "other", Host::Pod(lab.nodes(), 1)).label("app", "other");
    let backend = PodSpec::new("demo", "backend", Host::Pod(2, 1)).label("app", "backend");
    let objects = [
        namespace_manifest("demo", &[]),
        frontend.manifest(),
        other.manifest(),
        backend.manifest(),
    ]
    .join("---\n");
    let _servers = lab.serve(&[backend.host], &[8080], &[])?;
    print!(
        "$ wiremesh apply -f cluster.yaml\n{}",
        lab.node(1).agent().apply(&objects)?
    );
    print!(
        "$ wiremesh apply -f policy.yaml\n{BACKEND_POLICY}{}",
        lab.node(1).agent().apply(BACKEND_POLICY)?
    );
    let probes = [
        (frontend.host, backend.ip(), 8080, Proto::Tcp),
        (other.host, backend.ip(), 8080, Proto::Tcp),
    ];
    let got = lab.probe_until(&probes, &[true, false], Duration::from_millis(800), REACH);
    for (from, ok) in [&frontend, &other].iter().zip(&got) {
        let verdict = if *ok { "connected" } else { "blocked" };
        println!(
            "{} ({}) -> demo/backend ({}) TCP 8080: {verdict}",
            from.qualified(),
            from.host,
            backend.host
        );
    }
    ensure!(
        got == [true, false],
        "policy not enforced as written: frontend, other -> backend:8080 = {got:?}"
    );
    for from in ["demo/frontend", "demo/other"] {
        println!("\n$ wiremesh policy trace --from {from} --to demo/backend --port 8080");
        print!(
            "{}",
            lab.node(2).agent().trace(&[
                "--from",
                from,
                "--to",
                "demo/backend",
                "--port",
                "8080"
            ])?
        );
    }
    let broken = BACKEND_POLICY.replace("port: 8080", "port: 80800");
    let out = lab.node(1).agent().objects_cmd("apply", &broken)?;
    println!("\n$ wiremesh apply -f broken.yaml   (refused; the policy in force is unchanged)");
    print!("{}", String::from_utf8_lossy(&out.stderr));
    ensure!(!out.status.success(), "an invalid policy was accepted");
    Ok(())
}

fn prove_encryption(lab: &Lab) -> anyhow::Result<()> {
    let mark = marker();
    let text = String::from_utf8_lossy(&mark).into_owned();
    section(&format!(
        "Proving encryption: sending marker {text:?} pod-to-pod while capturing the underlay"
    ));
    let report = send_marker_captured(lab, &mark, "demo-tunnel")?;
    print!("{}", report.summary());
    ensure!(
        !report.marker_found,
        "the marker crossed the underlay in the clear"
    );
    ensure!(
        report.other.is_empty(),
        "traffic other than WireGuard UDP port {WG_PORT} crossed the underlay"
    );
    ensure!(
        report.wireguard > 0,
        "no WireGuard traffic captured: the capture saw nothing"
    );
    println!("marker absent; only UDP port {WG_PORT} between node addresses (plus ARP)");
    check_interrupted()?;

    section(
        "Strict mode: the same marker routed around the tunnel (plain routes over the underlay)",
    );
    lab.node(1).bypass_tunnel(2)?;
    lab.node(2).bypass_tunnel(1)?;
    let guarded = bypassed_marker(lab, &mark);
    let control = guarded.and_then(|g| {
        print!("{}", g.summary());
        ensure!(!g.marker_found, "strict mode let the marker out in clear");
        println!(
            "marker absent: the strict-mode guard dropped it (node-1: {})",
            lab.node(1)
                .agent()
                .status_text()?
                .lines()
                .find(|l| l.contains("Strict mode"))
                .unwrap_or("?")
                .trim()
        );
        section("Control: the same with the guard removed (agents stopped, table deleted)");
        for node in [1, 2] {
            lab.node(node).agent().stop()?;
            lab.node(node).guard().delete()?;
        }
        send_marker_captured(lab, &mark, "demo-control")
    });
    lab.node(1).remove_bypass(2)?;
    lab.node(2).remove_bypass(1)?;
    let control = control?;
    print!("{}", control.summary());
    if !control.marker_found {
        bail!("the detector missed the cleartext marker, so the check above proves nothing");
    }
    println!("marker FOUND in cleartext: the detector works, so its absence above is meaningful");
    section(
        "Restarting the two agents (they re-attach to their data paths and re-install the guard)",
    );
    for node in [1, 2] {
        lab.node(node).agent().start()?;
        lab.node(node)
            .agent()
            .wait_status("the agent to answer status", READY, |s| {
                s["strictMode"]["installed"] == true
            })?;
    }
    lab.host(Host::Pod(1, 1))
        .wait_reachable(Host::Pod(2, 1).ip(), REACH)?;
    Ok(())
}

/// Pings with the marker over the bypass while capturing: strict mode must drop them all.
fn bypassed_marker(lab: &Lab, mark: &[u8; 16]) -> anyhow::Result<wiremesh_lab::LeakReport> {
    let capture = lab.switch().capture("demo-guarded")?;
    let ping = lab.host(Host::Pod(1, 1)).ping(
        &Ping::new(Host::Pod(2, 1).ip())
            .count(3)
            .interval(Duration::from_millis(100))
            .pattern(mark),
    )?;
    println!("ping over the bypass: {ping}");
    Ok(capture.stop()?.analyze(mark)?)
}

fn send_marker_captured(
    lab: &Lab,
    mark: &[u8; 16],
    name: &str,
) -> anyhow::Result<wiremesh_lab::LeakReport> {
    let (from, to) = (Host::Pod(1, 1), Host::Pod(2, 1));
    let capture = lab.switch().capture(name)?;
    let got = lab.host(from).tcp_send(to, mark, TRAFFIC)?;
    ensure!(got == mark, "marker did not arrive intact over TCP");
    let ping = lab.host(from).ping(
        &Ping::new(to.ip())
            .count(3)
            .interval(Duration::from_millis(100))
            .pattern(mark),
    )?;
    ensure!(ping.all_received(), "ping with the marker payload: {ping}");
    let file = capture.stop()?;
    println!("capture: {}", file.path().display());
    Ok(file.analyze(mark)?)
}
