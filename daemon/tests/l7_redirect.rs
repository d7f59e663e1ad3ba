#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

//! The L7 redirect in the real kernel with real packets, without the proxy process: the eBPF
//! programs mark the SYN of a connection that HTTP rules govern, the agent's nftables table and
//! policy routing (`wiremesh::l7::install`) deliver it to a transparent listener, and that
//! listener's upstream connection (bound to the client's address, marked as the proxy's) is
//! admitted at the server's interface. The relay here is a plain TCP relay standing in for the
//! proxy.
//!
//! Topology: node namespace `N` with two pods, `a` (10.244.1.2, client) and `b` (10.244.1.3,
//! server), each behind a veth whose node end carries the programs; the pods route everything
//! to the node (proxy ARP), as CNI plugins do. Needs root, eBPF and nft; fails, never skips,
//! without them.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use policy::{Compiled, LoadOptions};
use wiremesh_enforce::{Desired, Enforcer, Reason, MARK_FROM_PROXY};

const A: &str = "10.244.1.2";
const B: &str = "10.244.1.3";
const PORT: u16 = 8080;
const RELAY_PORT: u16 = 15006;

const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, labels: {app: a}}
spec: {containers: [{name: c, image: i}]}
status: {podIPs: [{ip: "10.244.1.2"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: demo, labels: {app: b}}
spec: {containers: [{name: c, image: i}]}
status: {podIPs: [{ip: "10.244.1.3"}]}
"#;

/// b admits a on 8080 under HTTP rules.
const L7: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-http, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}], rules: {http: [{method: GET}]}}]
"#;

/// The same without HTTP rules: the control, a connection straight to b.
const L4: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-tcp, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"#;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node and pod namespaces; removed on drop.
struct Lab {
    node: String,
    pods: [String; 2],
    bpffs: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "l7_redirect needs root (netns, tc, bpf, nft): run as root, e.g. via scripts/test.sh"
        );
        let tag = format!("wml7{}{tag}", std::process::id() % 100_000);
        let lab = Lab {
            node: format!("{tag}-n"),
            pods: [format!("{tag}-a"), format!("{tag}-b")],
            bpffs: std::env::temp_dir().join(format!("{tag}-bpffs")),
        };
        let n = lab.node.as_str();
        sh(&["ip", "netns", "add", n]);
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", n, "addr", "add", "169.254.1.1/32", "dev", "lo"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for (pod, (host_if, ip)) in lab.pods.iter().zip([("ha", A), ("hb", B)]) {
            sh(&["ip", "netns", "add", pod]);
            sh(&[
                "ip", "-n", n, "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                "netns", pod,
            ]);
            sh(&["ip", "-n", n, "link", "set", host_if, "up"]);
            let proxy_arp = format!("net.ipv4.conf.{host_if}.proxy_arp=1");
            sh(&["ip", "netns", "exec", n, "sysctl", "-qw", &proxy_arp]);
            sh(&[
                "ip",
                "-n",
                n,
                "route",
                "add",
                &format!("{ip}/32"),
                "dev",
                host_if,
            ]);
            for dev in ["lo", "eth0"] {
                sh(&["ip", "-n", pod, "link", "set", dev, "up"]);
            }
            sh(&[
                "ip",
                "-n",
                pod,
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                "eth0",
            ]);
            sh(&[
                "ip",
                "-n",
                pod,
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
            ]);
            sh(&[
                "ip",
                "-n",
                pod,
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
            ]);
        }
        wiremesh_enforce::ensure_bpf_fs(&lab.bpffs).expect("mount a BPF filesystem");
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.bpffs, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.bpffs);
        for ns in std::iter::once(&self.node).chain(&self.pods) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
}

/// A server in `ns` on B:8080 that answers each connection with the peer address it saw.
fn serve_peer_address(ns: &str) {
    let ns = ns.to_string();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        enter(&ns);
        let listener = TcpListener::bind((B.parse::<IpAddr>().unwrap(), PORT)).unwrap();
        tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let peer = s.peer_addr().unwrap().ip().to_string();
            let _ = s.write_all(peer.as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

fn set_opt(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: `fd` is an open socket; the option value is a valid int for its whole length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// The stand-in proxy in the node namespace: a transparent listener on [`RELAY_PORT`] that
/// reports (client, original destination) of each connection and relays it upstream from the
/// client's own address, marked as the proxy's.
fn relay(node: &str) -> mpsc::Receiver<(SocketAddr, SocketAddr)> {
    let node = node.to_string();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (seen_tx, seen_rx) = mpsc::channel();
    thread::spawn(move || {
        enter(&node);
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        set_opt(socket.as_raw_fd(), libc::SOL_IP, libc::IP_TRANSPARENT, 1);
        socket.set_reuse_address(true).unwrap();
        let any: SocketAddr = ([0, 0, 0, 0], RELAY_PORT).into();
        socket.bind(&any.into()).unwrap();
        socket.listen(16).unwrap();
        let listener: TcpListener = socket.into();
        ready_tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(mut down) = stream else { return };
            let (client, original) = (down.peer_addr().unwrap(), down.local_addr().unwrap());
            let _ = seen_tx.send((client, original));
            let up =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            set_opt(up.as_raw_fd(), libc::SOL_IP, libc::IP_TRANSPARENT, 1);
            set_opt(
                up.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                MARK_FROM_PROXY as i32,
            );
            up.bind(&SocketAddr::new(client.ip(), 0).into()).unwrap();
            if up
                .connect_timeout(&original.into(), Duration::from_secs(2))
                .is_err()
            {
                continue;
            }
            let mut up: TcpStream = up.into();
            let mut answer = Vec::new();
            let _ = up.read_to_end(&mut answer);
            let _ = down.write_all(&answer);
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    seen_rx
}

/// Connects from pod a to b:8080 and returns what the server said (the peer address it saw).
fn ask_from_a(lab: &Lab) -> Option<String> {
    let pod = lab.pods[0].clone();
    thread::spawn(move || {
        enter(&pod);
        let addr = SocketAddr::new(B.parse().unwrap(), PORT);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).ok()?;
        Some(answer)
    })
    .join()
    .unwrap()
}

/// Loads the programs in the node namespace, attaches them to both veths and applies
/// `policy` (one manifest) with the pods.
fn enforce(lab: &Lab, policy: &str) -> (Enforcer, u32) {
    let text = format!("{PODS}\n---\n{policy}");
    let bundle = policy::load_with([("l7.yaml", text.as_str())], LoadOptions::default())
        .expect("the manifests load");
    let compiled = Compiled::build(&bundle);
    let mut enforcer = Enforcer::open(&lab.bpffs.join("wiremesh")).expect("load the programs");
    let a = enforcer.attach("ha").unwrap();
    let b = enforcer.attach("hb").unwrap();
    let ifindexes = BTreeMap::from([("demo/a".to_string(), a), ("demo/b".to_string(), b)]);
    let desired = Desired::from_compiled(
        &compiled.identities,
        &compiled.maps,
        &bundle,
        None,
        &ifindexes,
    );
    enforcer.apply(&desired).expect("apply the maps");
    (enforcer, b)
}

fn count(enforcer: &Enforcer, ifindex: u32, reason: Reason) -> u64 {
    enforcer
        .counters()
        .unwrap()
        .iter()
        .filter(|c| c.ifindex == ifindex && c.reason == reason)
        .map(|c| c.packets)
        .sum()
}

/// The flow events the programs recorded so far: (ifindex, reason, source, destination port).
fn events(lab: &Lab) -> Vec<(u32, Reason, String, u16)> {
    let mut ring = wiremesh_enforce::events::open_events(&lab.bpffs.join("wiremesh"))
        .expect("the flow event ring is pinned with the maps");
    wiremesh_enforce::events::drain(&mut ring)
        .into_iter()
        .filter_map(|e| {
            let t = e.tuple?;
            Some((
                e.ifindex,
                e.reason,
                t.source.to_string(),
                t.destination_port,
            ))
        })
        .collect()
}

fn install_redirect(node: &str) {
    let node = node.to_string();
    thread::spawn(move || {
        enter(&node);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let netlink = wiremesh_datapath::netlink::Netlink::connect().unwrap();
            let listeners = wiremesh::l7::Listeners {
                ingress_port: RELAY_PORT,
                egress_port: RELAY_PORT + 1,
            };
            wiremesh::l7::install(&netlink, listeners)
                .await
                .expect("install the redirect");
        });
    })
    .join()
    .unwrap();
}

/// A connection that HTTP rules govern reaches the server only through the proxy, which sees
/// the original destination, and the server sees the client's own address.
#[test]
fn a_connection_under_http_rules_goes_through_the_proxy_with_the_client_address_kept() {
    let lab = Lab::new("p");
    serve_peer_address(&lab.pods[1]);
    install_redirect(&lab.node);
    let seen = relay(&lab.node);
    enter(&lab.node);
    let (enforcer, b) = enforce(&lab, L7);

    let answer = ask_from_a(&lab).expect("a reaches b through the proxy");
    assert_eq!(answer, A, "the server sees the client's address");
    let (client, original) = seen
        .recv_timeout(Duration::from_secs(2))
        .expect("the proxy got it");
    assert_eq!(client.ip().to_string(), A);
    assert_eq!(original, SocketAddr::new(B.parse().unwrap(), PORT));
    assert!(
        count(&enforcer, b, Reason::FromProxy) >= 1,
        "b admitted the proxy's upstream"
    );
    let recorded = events(&lab);
    assert!(
        recorded.contains(&(b, Reason::FromProxy, A.to_string(), PORT)),
        "the flow log has b admitting the proxy's connection from a: {recorded:?}"
    );
}

/// The controls: without HTTP rules the connection goes straight to the server (the proxy
/// sees nothing); with HTTP rules but no redirect (the table removed), the SYN that reaches
/// the server's interface is dropped there, never let through.
#[test]
fn without_http_rules_nothing_is_redirected_and_without_the_redirect_nothing_passes() {
    let lab = Lab::new("c");
    serve_peer_address(&lab.pods[1]);
    install_redirect(&lab.node);
    let seen = relay(&lab.node);
    enter(&lab.node);
    let (mut enforcer, b) = enforce(&lab, L4);
    assert_eq!(ask_from_a(&lab).as_deref(), Some(A), "straight to b");
    assert!(
        seen.try_recv().is_err(),
        "the proxy saw a connection no HTTP rule governs"
    );

    let text = format!("{PODS}\n---\n{L7}");
    let bundle = policy::load_with([("l7.yaml", text.as_str())], LoadOptions::default()).unwrap();
    let compiled = Compiled::build(&bundle);
    let a = enforcer.attach("ha").unwrap();
    let ifindexes = BTreeMap::from([("demo/a".to_string(), a), ("demo/b".to_string(), b)]);
    enforcer
        .apply(&Desired::from_compiled(
            &compiled.identities,
            &compiled.maps,
            &bundle,
            None,
            &ifindexes,
        ))
        .unwrap();
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.node,
        "nft",
        "delete",
        "table",
        "inet",
        "wiremesh_l7",
    ]);
    assert_eq!(ask_from_a(&lab), None, "a reached b around the proxy");
    assert!(
        count(&enforcer, b, Reason::L7Unredirected) >= 1,
        "the SYN was dropped at b's interface as unredirected"
    );
    let recorded = events(&lab);
    assert!(
        recorded.contains(&(b, Reason::L7Unredirected, A.to_string(), PORT)),
        "the flow log has the drop, with its reason: {recorded:?}"
    );
}
