//! The eBPF policy enforcement against the real kernel with real packets.
//!
//! Two network namespaces joined by a veth: `H` plays the node and pod `a` (10.244.0.1 on
//! the host-side end `vh`), `P` is pod `b` (10.244.0.2). The programs are attached to `vh`, so
//! they enforce pod b's policy: tc egress of `vh` is b's ingress. Needs root and eBPF; fails
//! (never skips) without them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use policy::compile::Key;
use policy::{Compiled, Direction};
use wiremesh_enforce::{Desired, Enforcer, Reason};

const A: &str = "10.244.0.1";
const B: &str = "10.244.0.2";

/// Namespace demo with pods a and b at `a_ip` and `b_ip`, and b isolated for ingress.
fn cluster(a_ip: &str, b_ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: demo}}
---
apiVersion: v1
kind: Pod
metadata: {{name: a, namespace: demo, labels: {{app: a}}}}
spec: {{containers: [{{name: c, image: i}}]}}
status: {{podIPs: [{{ip: "{a_ip}"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: b, namespace: demo, labels: {{app: b}}}}
spec: {{containers: [{{name: c, image: i}}]}}
status: {{podIPs: [{{ip: "{b_ip}"}}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: b-default-deny, namespace: demo}}
spec: {{podSelector: {{matchLabels: {{app: b}}}}, policyTypes: [Ingress]}}
"#
    )
}

const ALLOW_8080: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a-8080, namespace: demo}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{protocol: TCP, port: 8080}]}]
"#;

const UNRELATED: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a-9000-range, namespace: demo}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{protocol: UDP, port: 9000, endPort: 9100}]}]
"#;

/// Two namespaces and a veth; removed on drop, also when the test fails.
struct Lab {
    host: String,
    pod: String,
    bpffs: PathBuf,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn new() -> Self {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "enforce_netns needs root (netns, tc, bpf): run as root, e.g. via scripts/test.sh"
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "wme{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            host: format!("{tag}-h"),
            pod: format!("{tag}-p"),
            bpffs: std::env::temp_dir().join(format!("{tag}-bpffs")),
        };
        let (h, p) = (lab.host.as_str(), lab.pod.as_str());
        sh(&["ip", "netns", "add", h]);
        sh(&["ip", "netns", "add", p]);
        sh(&[
            "ip", "-n", h, "link", "add", "vh", "type", "veth", "peer", "name", "vp", "netns", p,
        ]);
        sh(&[
            "ip",
            "-n",
            h,
            "addr",
            "add",
            &format!("{A}/24"),
            "dev",
            "vh",
        ]);
        sh(&[
            "ip",
            "-n",
            p,
            "addr",
            "add",
            &format!("{B}/24"),
            "dev",
            "vp",
        ]);
        for (ns, dev) in [(h, "vh"), (p, "vp"), (h, "lo"), (p, "lo")] {
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        // A private BPF filesystem: pins of parallel runs never meet.
        wiremesh_enforce::ensure_bpf_fs(&lab.bpffs)
            .expect("mount a BPF filesystem (is bpf() available?)");
        lab
    }

    fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("wiremesh")
    }

    /// Moves the calling thread into namespace `ns`.
    fn enter(ns: &str) {
        let f = File::open(format!("/run/netns/{ns}")).expect("netns file");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }

    fn ping(&self) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.host, "ping", "-c1", "-W1", B])
            .output()
            .expect("ping")
            .status
            .success()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.bpffs, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.bpffs);
        for ns in [&self.host, &self.pod] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Echo servers in the pod namespace on the given ports; they live until the process ends
/// (the namespace's removal closes them).
fn serve(ns: &str, ports: &[u16]) {
    serve_on(ns, B, ports);
}

fn serve_on(ns: &str, ip: &'static str, ports: &[u16]) {
    for &port in ports {
        let ns = ns.to_string();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            Lab::enter(&ns);
            let ip: std::net::IpAddr = ip.parse().expect("ip");
            let listener = TcpListener::bind((ip, port)).expect("bind");
            tx.send(()).expect("ready");
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                thread::spawn(move || {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server ready");
    }
}

fn connect(port: u16) -> Option<TcpStream> {
    connect_to(B.parse().expect("ip"), port)
}

fn connect_to(ip: std::net::IpAddr, port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::new(ip, port);
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(700)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    Some(s)
}

fn echo(s: &mut TcpStream, msg: &[u8]) -> bool {
    let mut buf = vec![0u8; msg.len()];
    s.write_all(msg).is_ok() && s.read_exact(&mut buf).is_ok() && buf == msg
}

const A6: &str = "fd00:244::1";
const B6: &str = "fd00:244::2";

/// The same policy over IPv6 only: ICMPv6 neighbour discovery must pass (or nothing would),
/// TCP is judged by the policy, echo requests are denied, replies ride connection tracking.
#[test]
fn enforces_policy_over_ipv6() {
    let lab = Lab::new();
    for (ns, dev, ip) in [(&lab.host, "vh", A6), (&lab.pod, "vp", B6)] {
        sh(&[
            "ip",
            "-n",
            ns,
            "-6",
            "addr",
            "add",
            &format!("{ip}/64"),
            "dev",
            dev,
            "nodad",
        ]);
    }
    serve_on(&lab.pod, B6, &[8080, 8081]);
    Lab::enter(&lab.host);
    let b6: std::net::IpAddr = B6.parse().expect("ip");
    let deadline = Instant::now() + Duration::from_secs(5);
    while connect_to(b6, 8081).is_none() {
        assert!(
            Instant::now() < deadline,
            "the IPv6 lab works before enforcement"
        );
    }

    let mut enf = Enforcer::open(&lab.pin_dir()).expect("load the eBPF programs");
    let ifindex = enf.attach("vh").expect("attach");
    enf.apply(&desired(&[&cluster(A6, B6), ALLOW_8080], ifindex))
        .expect("apply");
    // Forget the neighbour so that reaching b needs neighbour discovery through the programs.
    sh(&["ip", "-n", &lab.host, "-6", "neigh", "flush", "all"]);
    let mut held = connect_to(b6, 8080).expect("TCP 8080 over IPv6 is allowed");
    assert!(
        echo(&mut held, b"hello6"),
        "replies of the allowed connection flow"
    );
    assert!(
        connect_to(b6, 8081).is_none(),
        "TCP 8081 over IPv6 is denied"
    );
    let ping6 = Command::new("ip")
        .args(["netns", "exec", &lab.host, "ping", "-6", "-c1", "-W1", B6])
        .output()
        .expect("ping");
    assert!(!ping6.status.success(), "ICMPv6 echo is denied");
    assert!(count(&enf, ifindex, true, Reason::NoPolicy) >= 2);
    assert!(count(&enf, ifindex, false, Reason::CtReply) > 0);
    let nd = count(&enf, ifindex, true, Reason::Icmp6NeighbourDiscovery)
        + count(&enf, ifindex, false, Reason::Icmp6NeighbourDiscovery);
    assert!(
        nd > 0,
        "neighbour discovery went through the programs and passed"
    );
    enf.detach("vh").expect("detach");
}

fn desired(manifests: &[&str], ifindex: u32) -> Desired {
    let text = manifests.join("\n---\n");
    let bundle = policy::load([("inline.yaml", text.as_str())]).expect("manifest loads");
    let compiled = Compiled::build(&bundle);
    let ifindexes = BTreeMap::from([("demo/b".to_string(), ifindex)]);
    let d = Desired::from_compiled(
        &compiled.identities,
        &compiled.maps,
        &bundle,
        None,
        &ifindexes,
    );
    assert!(d.unknown_endpoints.is_empty(), "{:?}", d.unknown_endpoints);
    d
}

fn count(enf: &Enforcer, ifindex: u32, ingress: bool, reason: Reason) -> u64 {
    enf.counters()
        .expect("counters")
        .iter()
        .filter(|c| c.ifindex == ifindex && c.ingress == ingress && c.reason == reason)
        .map(|c| c.packets)
        .sum()
}

#[test]
fn enforces_policy_statefully_on_a_real_veth() {
    let lab = Lab::new();
    serve(&lab.pod, &[8080, 8081]);
    Lab::enter(&lab.host);
    assert!(
        connect(8081).is_some() && lab.ping(),
        "the lab works before enforcement"
    );

    let pin = lab.pin_dir();
    let mut enf = Enforcer::open(&pin).expect("load the eBPF programs");
    let ifindex = enf.attach("vh").expect("attach");

    // Attached, no endpoint config yet: fail closed.
    assert!(connect(8080).is_none(), "no endpoint config must drop");
    assert!(count(&enf, ifindex, true, Reason::NoEndpoint) > 0);

    let policy = desired(&[&cluster(A, B), ALLOW_8080], ifindex);
    enf.apply(&policy).expect("apply");
    let mut held = connect(8080).expect("TCP 8080 from a is allowed");
    assert!(
        echo(&mut held, b"hello"),
        "replies of the allowed connection flow"
    );
    assert!(connect(8081).is_none(), "TCP 8081 is denied");
    assert!(!lab.ping(), "ICMP is denied");
    assert!(
        count(&enf, ifindex, true, Reason::NoPolicy) >= 2,
        "drops counted as no-policy"
    );
    assert!(
        count(&enf, ifindex, false, Reason::CtReply) > 0,
        "replies pass as ct-reply"
    );
    assert!(count(&enf, ifindex, true, Reason::PolicyAllow) > 0);

    // An unrelated rule is added: the established connection is untouched.
    enf.apply(&desired(&[&cluster(A, B), ALLOW_8080, UNRELATED], ifindex))
        .expect("apply");
    assert!(
        echo(&mut held, b"still here"),
        "established connection survives the update"
    );

    // Simulated agent restart: the enforcer goes away, the filters and pinned maps stay. A
    // prober keeps knocking on the denied port throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let leaks = Arc::new(AtomicUsize::new(0));
    let prober = {
        let (stop, leaks, ns) = (stop.clone(), leaks.clone(), lab.host.clone());
        thread::spawn(move || {
            Lab::enter(&ns);
            let mut tries = 0;
            while !stop.load(Ordering::Relaxed) {
                let addr: SocketAddr = format!("{B}:8081").parse().expect("addr");
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    leaks.fetch_add(1, Ordering::Relaxed);
                }
                tries += 1;
            }
            tries
        })
    };
    drop(enf);
    assert!(connect(8080).is_some(), "allowed while no agent runs");
    let mut enf = Enforcer::open(&pin).expect("re-open from pins");
    assert_eq!(enf.attach("vh").expect("re-attach"), ifindex);
    enf.apply(&desired(&[&cluster(A, B), ALLOW_8080, UNRELATED], ifindex))
        .expect("re-apply");
    assert!(
        echo(&mut held, b"after restart"),
        "established connection survives the restart"
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let tries = prober.join().expect("prober");
    assert!(tries > 0);
    assert_eq!(
        leaks.load(Ordering::Relaxed),
        0,
        "a denied port was reachable during the restart"
    );

    // A full policy map: the endpoint fails closed (allowed traffic too) and the caller gets
    // an error to count; the next good apply recovers.
    let mut flood = desired(&[&cluster(A, B), ALLOW_8080], ifindex);
    for i in 0..300_000u32 {
        let key = Key {
            direction: Direction::Egress,
            identity: 1_000_000 + i,
            protocol: 6,
            port: 1,
            prefix: 16,
        };
        flood
            .policy
            .insert(wiremesh_enforce::policy_key(ifindex, &key), 1);
    }
    let err = enf
        .apply(&flood)
        .expect_err("the policy map holds 262144 entries");
    assert!(
        matches!(&err, wiremesh_enforce::EnforceError::FailClosed { endpoints, .. } if endpoints == &[ifindex]),
        "{err}"
    );
    assert!(
        connect(8080).is_none(),
        "fail-closed endpoint drops allowed traffic"
    );
    assert!(count(&enf, ifindex, true, Reason::FailClosed) > 0);
    enf.apply(&desired(&[&cluster(A, B), ALLOW_8080], ifindex))
        .expect("recovering apply");
    assert!(connect(8080).is_some(), "recovered after a good apply");

    // The allow rule goes: new connections fail (the tracked one may live on, as in Cilium).
    enf.apply(&desired(&[&cluster(A, B), UNRELATED], ifindex))
        .expect("apply");
    assert!(
        connect(8080).is_none(),
        "8080 denied once its allow rule is gone"
    );

    // Endpoint config removed: everything drops, the tracked connection included.
    let before = count(&enf, ifindex, true, Reason::NoEndpoint);
    enf.remove_endpoint(ifindex).expect("remove endpoint");
    assert!(connect(8080).is_none() && !lab.ping());
    let _ = held.write_all(b"x");
    assert!(count(&enf, ifindex, true, Reason::NoEndpoint) > before);
    let _ = held.shutdown(Shutdown::Both);

    for c in enf.counters().expect("counters") {
        eprintln!("{c:?}");
    }
    enf.detach("vh").expect("detach");
    let deadline = Instant::now() + Duration::from_secs(2);
    while connect(8081).is_none() {
        assert!(Instant::now() < deadline, "detached: traffic flows again");
    }
}

const FROM_A_ANY_PORT: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: demo}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]
"#;

/// Pod a runs as service account `default` (no `serviceAccountName`).
const AUTHZ_A_8080: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b-from-a-8080, namespace: demo}
spec:
  selector: {matchLabels: {app: b}}
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/default]}}], to: [{operation: {ports: ["8080"]}}]}]
"#;

const AUTHZ_DENY_8080: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: b-deny-8080, namespace: demo}
spec:
  selector: {matchLabels: {app: b}}
  action: DENY
  rules: [{from: [{source: {namespaces: [demo]}}], to: [{operation: {ports: ["8080"]}}]}]
"#;

/// An AuthorizationPolicy that reads only the connection is judged by the programs, as
/// ztunnel judges it: both it and the NetworkPolicy must admit a new TCP connection, and what
/// it refuses is counted as `authz-deny`. Control: the NetworkPolicy alone admits both ports.
#[test]
fn enforces_an_l4_authorization_policy_in_the_kernel() {
    let lab = Lab::new();
    serve(&lab.pod, &[8080, 8081]);
    Lab::enter(&lab.host);
    let mut enf = Enforcer::open(&lab.pin_dir()).expect("load the eBPF programs");
    let ifindex = enf.attach("vh").expect("attach");

    enf.apply(&desired(&[&cluster(A, B), FROM_A_ANY_PORT], ifindex))
        .expect("apply");
    assert!(
        connect(8080).is_some() && connect(8081).is_some(),
        "control: the NetworkPolicy admits every port from a"
    );

    enf.apply(&desired(
        &[&cluster(A, B), FROM_A_ANY_PORT, AUTHZ_A_8080],
        ifindex,
    ))
    .expect("apply");
    let mut held = connect(8080).expect("8080: a's principal is allowed");
    assert!(echo(&mut held, b"allowed"), "its replies flow");
    assert!(connect(8081).is_none(), "8081: no ALLOW rule matches");
    assert!(count(&enf, ifindex, true, Reason::AuthzDeny) > 0);

    // A DENY policy over the ALLOW one: 8080 is refused too; the tracked connection lives on,
    // as a connection admitted before a NetworkPolicy change does.
    enf.apply(&desired(
        &[
            &cluster(A, B),
            FROM_A_ANY_PORT,
            AUTHZ_A_8080,
            AUTHZ_DENY_8080,
        ],
        ifindex,
    ))
    .expect("apply");
    assert!(connect(8080).is_none(), "8080: DENY wins over ALLOW");
    assert!(echo(&mut held, b"tracked"), "the established connection");

    // The policies go: both ports are admitted again.
    enf.apply(&desired(&[&cluster(A, B), FROM_A_ANY_PORT], ifindex))
        .expect("apply");
    assert!(connect(8080).is_some() && connect(8081).is_some());
    let _ = held.shutdown(Shutdown::Both);
    enf.detach("vh").expect("detach");
}
