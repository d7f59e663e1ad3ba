//! Policy after a reboot while the store is down: node-2 reboots (agent, data path, tc filters
//! and pinned maps gone; its state directory kept) and comes back while etcd is stopped. The
//! policy it last accepted, saved in `<stateDir>/policy.json`, is enforced from the agent's
//! first pass, and no denied connection ever gets through while it starts. The control run
//! reboots it again without the saved file: the same probe then opens, which proves that the
//! reboot really loses enforcement and that the probe sees it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wiremesh_lab::{namespace_manifest, Host, Lab, LabOptions, PodSpec, Proto};

const PROBE: Duration = Duration::from_millis(800);
/// Long enough for a restarted agent to wait out the unreachable store (5 s) and handshake.
const SETTLE: Duration = Duration::from_secs(30);

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                      metadata: {name: b-from-a, namespace: demo}\n\
                      spec:\n  podSelector: {matchLabels: {app: b}}\n  \
                      ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]\n";

struct Pods {
    a: PodSpec,
    b: PodSpec,
    c: PodSpec,
}

impl Pods {
    /// a → b:80 (allowed by the policy), c → b:80 (denied by it).
    fn probes(&self) -> [(Host, std::net::Ipv4Addr, u16, Proto); 2] {
        [
            (self.a.host, self.b.ip(), 80, Proto::Tcp),
            (self.c.host, self.b.ip(), 80, Proto::Tcp),
        ]
    }
}

/// Knocks c → b:80 until stopped; counts the connections that opened.
fn knock(lab: &Lab, p: &Pods, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) -> impl FnOnce() {
    let to = SocketAddr::from((p.b.ip(), 80));
    let handle = lab.host(p.c.host).spawn_in(move || {
        while !stop.load(Ordering::Relaxed) {
            if std::net::TcpStream::connect_timeout(&to, PROBE).is_ok() {
                opened.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    });
    move || handle.join().expect("prober thread").expect("prober")
}

/// Waits until node-2's saved policy holds the policy.
fn wait_saved(saved: &std::path::Path) {
    let deadline = Instant::now() + SETTLE;
    while !std::fs::read_to_string(saved).is_ok_and(|s| s.contains("b-from-a")) {
        assert!(
            Instant::now() < deadline,
            "{} never held the policy",
            saved.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reboots node-2 and starts its agent again while etcd is down.
fn reboot_with_etcd_down(lab: &Lab) {
    lab.node(2)
        .simulate_reboot()
        .expect("simulate node-2's reboot");
    assert!(!lab.etcd().running(), "etcd must be down across the reboot");
    lab.node(2)
        .agent()
        .start()
        .expect("start node-2's agent after the reboot");
    lab.node(2)
        .agent()
        .wait_status("the rebooted agent to answer", common::READY, |_| true)
        .expect("rebooted agent answers");
}

#[test]
fn the_last_accepted_policy_is_enforced_after_a_reboot_while_etcd_is_down() {
    common::require_agent();
    let lab = common::lab_with(2, 2, LabOptions::etcd(common::LEASE_TTL));
    common::start_mesh(&lab);
    let p = Pods {
        a: PodSpec::new("demo", "a", Host::Pod(1, 1)).label("app", "a"),
        b: PodSpec::new("demo", "b", Host::Pod(2, 1)).label("app", "b"),
        c: PodSpec::new("demo", "c", Host::Pod(1, 2)).label("app", "c"),
    };
    let objects = [
        namespace_manifest("demo", &[]),
        p.a.manifest(),
        p.b.manifest(),
        p.c.manifest(),
    ]
    .join("---\n");
    lab.node(1).agent().apply(&objects).expect("apply objects");
    let _servers = lab.serve(&[p.b.host], &[80], &[]).expect("echo server");
    let probes = p.probes();
    // Control: without the policy the probe to be denied opens.
    let got = lab.probe_until(&probes, &[true, true], PROBE, SETTLE);
    assert_eq!(
        got,
        [true, true],
        "a→b:80 and c→b:80 open before the policy"
    );
    lab.node(1).agent().apply(POLICY).expect("apply the policy");
    let got = lab.probe_until(&probes, &[true, false], PROBE, SETTLE);
    assert_eq!(got, [true, false], "a→b:80 allowed, c→b:80 denied");
    let saved = lab.node(2).state_dir().join("policy.json");
    wait_saved(&saved);

    lab.etcd().stop().expect("stop etcd");
    let log_from = lab.node(2).agent().log_len();
    let (stop, opened) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let prober = knock(&lab, &p, stop.clone(), opened.clone());
    reboot_with_etcd_down(&lab);
    let got = lab.probe_until(&probes, &[true, false], PROBE, SETTLE);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    prober();
    if got != [true, false] {
        lab.dump_logs();
    }
    assert_eq!(
        got,
        [true, false],
        "after the reboot, etcd down: a→b:80 allowed, c→b:80 denied"
    );
    assert_eq!(
        opened.load(Ordering::Relaxed),
        0,
        "c→b:80 opened while the rebooted node started"
    );
    assert!(!lab.etcd().running(), "etcd stayed down throughout");
    lab.node(2)
        .agent()
        .wait_log(
            log_from,
            "the saved policy in force",
            Duration::from_secs(1),
            |l| l.contains("enforcing the policy this node last accepted"),
        )
        .expect("the agent says it enforces the saved policy");

    // Control: the same reboot without the saved set enforces nothing, and the probe sees it.
    std::fs::remove_file(&saved).expect("remove the saved policy");
    reboot_with_etcd_down(&lab);
    let got = lab.probe_until(&probes, &[true, true], PROBE, SETTLE);
    assert_eq!(
        got,
        [true, true],
        "control: without the saved policy a reboot with etcd down enforces nothing"
    );

    // The store answers again: its set (the same policy) is enforced and saved again.
    lab.etcd().start().expect("start etcd again");
    let got = lab.probe_until(&probes, &[true, false], PROBE, SETTLE);
    assert_eq!(got, [true, false], "the store's policy once etcd is back");
    wait_saved(&saved);
}
