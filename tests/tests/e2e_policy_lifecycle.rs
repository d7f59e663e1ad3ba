//! Policy over time, under default-deny in both directions: replies of an allowed connection
//! pass; twenty policy updates under load break no established connection; and `kill -9` +
//! restart of each agent, three times, never lets enforcement lapse: no denied connection ever
//! opens and no allowed one ever fails while the agents are down or starting. A pod's veth
//! re-created under the same name gets the programs again within 2 s, denied traffic staying
//! denied throughout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wiremesh_lab::{namespace_manifest, Host, Lab, PodSpec, Proto, Servers};

const PROBE: Duration = Duration::from_millis(800);
const SETTLE: Duration = Duration::from_secs(15);
/// The held connection echoes this often; a gap longer than [`MAX_GAP`] is a stall.
const ECHO_EVERY: Duration = Duration::from_millis(50);
const MAX_GAP: Duration = Duration::from_secs(1);

const POLICY: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: demo}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-to-b, namespace: demo}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: demo}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]
"#;

/// An unrelated rule, changed `i` times: each apply rewrites policy maps of both endpoints.
fn churn(i: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: churn, namespace: demo}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  \
         ingress: [{{from: [{{podSelector: {{matchLabels: {{app: c}}}}}}], ports: [{{port: {}, protocol: UDP}}]}}]\n",
        9000 + i
    )
}

struct Pods {
    a: PodSpec,
    b: PodSpec,
    c: PodSpec,
}

fn setup(lab: &Lab) -> Pods {
    let pods = Pods {
        a: PodSpec::new("demo", "a", Host::Pod(1, 1)).label("app", "a"),
        b: PodSpec::new("demo", "b", Host::Pod(2, 1)).label("app", "b"),
        c: PodSpec::new("demo", "c", Host::Pod(1, 2)).label("app", "c"),
    };
    let objects = [
        namespace_manifest("demo", &[]),
        pods.a.manifest(),
        pods.b.manifest(),
        pods.c.manifest(),
    ]
    .join("---\n");
    lab.node(1).agent().apply(&objects).expect("apply objects");
    lab.node(2).agent().apply(POLICY).expect("apply policy");
    pods
}

/// A two-node lab with echo servers in every pod and the policy enforced.
fn enforced_lab() -> (Lab, Servers, Pods) {
    common::require_agent();
    let lab = common::lab(2, 2);
    common::start_mesh(&lab);
    let servers = lab
        .serve(&lab.all_pods(), &[80, 81], &[])
        .expect("echo servers");
    let p = setup(&lab);
    wait_enforced(&lab, &p);
    (lab, servers, p)
}

/// Waits until a → b:80 opens and c → b:80 and a → b:81 do not.
fn wait_enforced(lab: &Lab, p: &Pods) {
    let probes = [
        (p.a.host, p.b.ip(), 80, Proto::Tcp),
        (p.c.host, p.b.ip(), 80, Proto::Tcp),
        (p.a.host, p.b.ip(), 81, Proto::Tcp),
    ];
    let got = lab.probe_until(&probes, &[true, false, false], PROBE, SETTLE);
    assert_eq!(
        got,
        [true, false, false],
        "policy not enforced within {SETTLE:?}: a→b:80, c→b:80, a→b:81"
    );
}

/// A connection a → b:80 that echoes every [`ECHO_EVERY`] until `stop`; returns the number of
/// round trips and the longest gap between two of them, or the first error.
fn hold_connection(
    lab: &Lab,
    p: &Pods,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<std::io::Result<(u64, Duration)>> {
    let to = SocketAddr::from((p.b.ip(), 80));
    lab.host(p.a.host).spawn_in(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let (mut trips, mut longest, mut last) = (0u64, Duration::ZERO, Instant::now());
        let mut buf = [0u8; 8];
        while !stop.load(Ordering::Relaxed) {
            s.write_all(&trips.to_be_bytes())?;
            s.read_exact(&mut buf)?;
            if u64::from_be_bytes(buf) != trips {
                return Err(std::io::Error::other("echo out of order"));
            }
            trips += 1;
            longest = longest.max(last.elapsed());
            last = Instant::now();
            std::thread::sleep(ECHO_EVERY);
        }
        Ok((trips, longest))
    })
}

#[test]
fn replies_pass_and_updates_under_load_break_nothing() {
    let (lab, _servers, p) = enforced_lab();

    // b's egress is default-deny: the echoes coming back are replies of an allowed connection.
    let stop = Arc::new(AtomicBool::new(false));
    let held = hold_connection(&lab, &p, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..20 {
        lab.node(1 + (i % 2) as u8)
            .agent()
            .apply(&churn(i))
            .unwrap_or_else(|e| panic!("policy update {i}: {e}"));
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.node(1)
        .agent()
        .delete(&churn(19))
        .expect("delete churn");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (trips, longest) = held
        .join()
        .expect("holder thread")
        .unwrap_or_else(|e| panic!("the established connection broke during policy updates: {e}"));
    assert!(trips > 50, "only {trips} round trips");
    assert!(
        longest <= MAX_GAP,
        "the established connection stalled for {longest:?} during policy updates"
    );
    // And the policy itself still holds.
    wait_enforced(&lab, &p);
}

#[test]
fn agent_restarts_never_lapse_enforcement() {
    let (lab, _servers, p) = enforced_lab();

    // Probers knock throughout: the allowed pair must always get through, the denied ones
    // never.
    let stop = Arc::new(AtomicBool::new(false));
    let allowed_failed = Arc::new(AtomicU64::new(0));
    let denied_opened = Arc::new(AtomicU64::new(0));
    let tries = Arc::new(AtomicU64::new(0));
    let mut probers = Vec::new();
    for (from, port, allowed) in [
        (p.a.host, 80, true),
        (p.c.host, 80, false),
        (p.a.host, 81, false),
    ] {
        let to = SocketAddr::from((p.b.ip(), port));
        let (stop, bad, tries) = (
            stop.clone(),
            if allowed {
                allowed_failed.clone()
            } else {
                denied_opened.clone()
            },
            tries.clone(),
        );
        probers.push(lab.host(from).spawn_in(move || {
            while !stop.load(Ordering::Relaxed) {
                let opened = TcpStream::connect_timeout(&to, PROBE).is_ok_and(|mut s| {
                    let _ = s.set_read_timeout(Some(PROBE));
                    let mut buf = [0u8; 4];
                    s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok()
                });
                if opened != allowed {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                tries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        }));
    }
    for round in 0..3 {
        for node in [2, 1] {
            lab.node(node).agent().kill().expect("kill -9 the agent");
            std::thread::sleep(Duration::from_millis(500));
            lab.node(node).agent().start().expect("restart the agent");
            lab.node(node)
                .agent()
                .wait_status("the restarted agent to answer", common::READY, |_| true)
                .unwrap_or_else(|e| panic!("round {round}, node-{node}: {e}"));
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for prober in probers {
        prober.join().expect("prober thread").expect("prober");
    }
    let (tries, allowed_failed, denied_opened) = (
        tries.load(Ordering::Relaxed),
        allowed_failed.load(Ordering::Relaxed),
        denied_opened.load(Ordering::Relaxed),
    );
    eprintln!("{tries} probes across 6 agent restarts");
    assert!(tries > 100, "only {tries} probes ran");
    assert_eq!(
        denied_opened, 0,
        "denied connections opened while agents restarted"
    );
    assert_eq!(
        allowed_failed, 0,
        "allowed connections failed while agents restarted"
    );
    wait_enforced(&lab, &p);
}

/// b's ingress alone decides c → b:80 here (no policy selects a or c).
const B_FROM_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                        metadata: {name: b-from-a, namespace: demo}\n\
                        spec:\n  podSelector: {matchLabels: {app: b}}\n  \
                        ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]\n";

/// How soon a re-created veth must carry the programs again.
const REATTACH_WITHIN: Duration = Duration::from_secs(2);

/// Waits until b's veth (node-2 `pod1`) carries the programs on both hooks; how long it took.
fn wait_hooks(lab: &Lab, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() <= within {
        if lab
            .node(2)
            .policy_hooks("pod1")
            .expect("tc filter show")
            .both()
        {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A pod's veth deleted and re-created under the same name (a pod restarted by its runtime): a
/// new device with no tc filters. The agent follows link events and puts the programs on it
/// within 2 s; a denied connection tried right after the re-creation stays denied, and the
/// allowed one works again. Control: re-created while node-2's agent is down, the same probe
/// opens (nothing guards the new device), and closes again once the agent is back.
#[test]
fn a_recreated_pod_veth_gets_its_programs_again() {
    common::require_agent();
    let lab = common::lab(2, 2);
    common::start_mesh(&lab);
    let _servers = lab
        .serve(&lab.all_pods(), &[80], &[])
        .expect("echo servers");
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
    let probes = [
        (p.a.host, p.b.ip(), 80, Proto::Tcp),
        (p.c.host, p.b.ip(), 80, Proto::Tcp),
    ];
    assert_eq!(
        lab.probe_until(&probes, &[true, true], PROBE, SETTLE),
        [true, true],
        "both open before the policy"
    );
    lab.node(2)
        .agent()
        .apply(B_FROM_A)
        .expect("apply the policy");
    assert_eq!(
        lab.probe_until(&probes, &[true, false], PROBE, SETTLE),
        [true, false],
        "a→b:80 allowed, c→b:80 denied"
    );
    let before = lab.node(2).ifindex("pod1").expect("ifindex");

    for round in 0..3 {
        lab.node(2)
            .recreate_pod_link(1)
            .expect("re-create b's veth");
        // The probe goes out at once while the filters are looked for.
        let to = SocketAddr::from((p.b.ip(), 80));
        let probe = lab
            .host(p.c.host)
            .spawn_in(move || Ok(TcpStream::connect_timeout(&to, PROBE).is_ok()));
        let took = wait_hooks(&lab, REATTACH_WITHIN);
        let opened = probe.join().expect("probe thread").expect("probe");
        assert!(
            !opened,
            "round {round}: c→b:80 opened right after b's veth came back"
        );
        let took = took.unwrap_or_else(|| {
            lab.dump_logs();
            panic!("round {round}: b's new veth has no policy programs {REATTACH_WITHIN:?} after its re-creation")
        });
        eprintln!(
            "round {round}: programs on the new veth seen {took:?} after `ip` finished re-creating it (tc listing included)"
        );
        assert_eq!(
            lab.probe_until(&probes, &[true, false], PROBE, SETTLE),
            [true, false],
            "round {round}: a→b:80 allowed again, c→b:80 still denied"
        );
    }
    assert_ne!(
        before,
        lab.node(2).ifindex("pod1").expect("ifindex"),
        "a new device"
    );

    // Control: with node-2's agent down nothing re-attaches, and the probe sees the lapse.
    lab.node(2).agent().kill().expect("kill -9 node-2's agent");
    lab.node(2)
        .recreate_pod_link(1)
        .expect("re-create b's veth");
    assert!(lab
        .node(2)
        .policy_hooks("pod1")
        .expect("tc filter show")
        .none());
    assert_eq!(
        lab.probe_until(&probes[1..], &[true], PROBE, SETTLE),
        [true],
        "control: c→b:80 opens on a re-created veth that nothing guards"
    );
    lab.node(2).agent().start().expect("restart node-2's agent");
    assert_eq!(
        lab.probe_until(&probes, &[true, false], PROBE, SETTLE),
        [true, false],
        "enforced again once the agent is back"
    );
}
