//! Strict mode: pod traffic for another node never leaves a node in clear, and packets with a
//! remote pod's source address never enter from the underlay. Every node has a default route to
//! the switch (which forwards nothing), so traffic that misses the tunnel really leaves and is
//! captured on the underlay. Each case runs twice: with `strictMode: false` (the control, which
//! must show the leak or the spoofed packets, or the detector proves nothing) and with strict
//! mode on (which must show neither, and whose drop counter must have moved).

mod common;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use wiremesh_lab::{marker, Host, Lab, LabOptions, LeakReport, Ping};

const FROM: Host = Host::Pod(1, 1);
const TO: Host = Host::Pod(2, 1);
/// How long the agent may take to show a counter it reads every 2 s.
const COUNTERS_SEEN: Duration = Duration::from_secs(10);

/// What breaks the tunnel on node-1 before the marker is sent.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    /// node-2's record is deleted from the store: node-1 drops the peer and its routes.
    PeerRecordDeleted,
    /// node-1's data path is killed with SIGKILL while the marker flows; the agent restarts it.
    DatapathKilled,
    /// node-1's agent is stopped, then its data path killed: nobody brings the tunnel back.
    AgentStopped,
}

fn options(strict: bool, v6: bool) -> LabOptions {
    let o = LabOptions::default().default_route().strict_mode(strict);
    if v6 {
        o.dual_stack()
    } else {
        o
    }
}

/// A running 2-node mesh whose pods reach each other through the tunnel (over v6 too if asked).
fn mesh(strict: bool, v6: bool) -> Lab {
    common::require_agent();
    let lab = common::lab_with(2, 1, options(strict, v6));
    common::start_mesh(&lab);
    common::assert_ping(&lab, FROM, TO);
    if v6 {
        lab.host(FROM)
            .wait_reachable(TO.ip6(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("IPv6 through the tunnel: {e}"));
    }
    if strict {
        assert!(
            lab.node(1).guard().counters().expect("nft").is_some(),
            "strict mode on, but node-1 has no table inet wiremesh"
        );
    } else {
        assert_eq!(
            lab.node(1).guard().counters().expect("nft"),
            None,
            "strictMode: false must remove the guard table"
        );
        assert!(
            lab.node(1).agent().log().contains("strictMode is false"),
            "no WARN about strictMode: false at start"
        );
    }
    lab
}

/// Pings carrying the marker from pod(1,1) to pod(2,1) while capturing the underlay. Delivery is
/// not required: with the tunnel broken the packets are either dropped or leaked.
fn send_marker(
    lab: &Lab,
    mark: &[u8; 16],
    name: &str,
    v6: bool,
    count: u32,
    every: Duration,
) -> LeakReport {
    let capture = lab.switch().capture(name).expect("tcpdump starts");
    let ping = Ping::new(TO.ip_of(v6))
        .count(count)
        .interval(every)
        .pattern(mark);
    // Lost packets are the expected outcome here; an error (unreachable) is too.
    let _ = lab.host(FROM).ping(&ping);
    capture
        .stop()
        .expect("tcpdump stops")
        .analyze(mark)
        .expect("capture decodes")
}

fn run_case(strict: bool, v6: bool, breakage: Breakage) -> (Lab, LeakReport) {
    let lab = mesh(strict, v6);
    let mark = marker();
    let name = format!("{breakage:?}-{}", if strict { "strict" } else { "control" });
    let report = match breakage {
        Breakage::PeerRecordDeleted => {
            lab.store()
                .remove_record("node-2")
                .expect("remove node-2's record");
            lab.node(1)
                .agent()
                .wait_peer_count(0, common::CONVERGE)
                .expect("node-1 drops the peer");
            send_marker(&lab, &mark, &name, v6, 5, Duration::from_millis(100))
        }
        Breakage::DatapathKilled => {
            // A fast stream across the kill, so that the moments without a tunnel (the TUN and
            // its routes are gone until the agent has a new data path up) carry some of it.
            let capture = lab.switch().capture(&name).expect("tcpdump starts");
            let ping = Ping::new(TO.ip_of(v6))
                .count(600)
                .interval(Duration::from_millis(5))
                .pattern(&mark);
            let log_from = lab.node(1).agent().log_len();
            let mut pinger = lab.host(FROM).spawn_ping(&ping).expect("ping starts");
            std::thread::sleep(Duration::from_millis(500));
            lab.node(1)
                .datapath()
                .stop(Signal::SIGKILL, Duration::from_secs(5))
                .expect("kill -9 of node-1's data path");
            let _ = pinger.wait_timeout(ping.deadline() + Duration::from_secs(5));
            lab.node(1)
                .agent()
                .wait_log(log_from, "a new data path", Duration::from_secs(10), |l| {
                    l.contains("started the data path process")
                })
                .expect("the agent starts a new data path");
            capture
                .stop()
                .expect("tcpdump stops")
                .analyze(&mark)
                .expect("decodes")
        }
        Breakage::AgentStopped => {
            lab.node(1).agent().stop().expect("stop node-1's agent");
            lab.node(1)
                .datapath()
                .stop(Signal::SIGKILL, Duration::from_secs(5))
                .expect("kill -9 of node-1's data path");
            send_marker(&lab, &mark, &name, v6, 5, Duration::from_millis(100))
        }
    };
    eprintln!("{name} (v6: {v6}): {}", report.summary());
    (lab, report)
}

/// The control must leak, strict mode must not; strict mode's egress counter must have moved.
fn leak_case(v6: bool, breakage: Breakage) {
    let (_control_lab, control) = run_case(false, v6, breakage);
    assert!(
        control.marker_found && !control.other.is_empty(),
        "control ({breakage:?}, strictMode: false) did not leak the marker, so the strict run \
         below would prove nothing:\n{}",
        control.summary()
    );
    drop(_control_lab);

    let (lab, report) = run_case(true, v6, breakage);
    assert!(
        !report.marker_found,
        "strict mode: the marker crossed the underlay in clear ({breakage:?}):\n{}",
        report.summary()
    );
    assert!(
        report.other.is_empty(),
        "strict mode: traffic other than WireGuard UDP between nodes crossed the underlay \
         ({breakage:?}):\n{}",
        report.summary()
    );
    let counter = if v6 { "egress_ipv6" } else { "egress_ipv4" };
    let dropped = lab
        .node(1)
        .guard()
        .counter(counter)
        .expect("node-1's guard table");
    assert!(
        dropped > 0,
        "strict mode dropped nothing on node-1 ({counter} = 0)"
    );
    if !matches!(breakage, Breakage::AgentStopped) {
        wait_status_drops(&lab, 1, if v6 { "egressIpv6" } else { "egressIpv4" });
    }
}

/// `encrypt status --json` shows a non-zero strict-mode drop counter `field` within
/// [`COUNTERS_SEEN`] (the agent caches the kernel's counters).
fn wait_status_drops(lab: &Lab, node: u8, field: &str) {
    lab.node(node)
        .agent()
        .wait_status("strict-mode drops in status", COUNTERS_SEEN, |s| {
            s["strictMode"]["enabled"] == true
                && s["strictMode"]["installed"] == true
                && s["strictMode"]["drops"][field].as_u64().unwrap_or(0) > 0
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn no_cleartext_after_a_peer_record_is_deleted() {
    leak_case(false, Breakage::PeerRecordDeleted);
}

#[test]
fn no_cleartext_after_kill_9_of_the_data_path() {
    leak_case(false, Breakage::DatapathKilled);
}

#[test]
fn no_cleartext_with_the_agent_stopped() {
    leak_case(false, Breakage::AgentStopped);
}

#[test]
fn no_cleartext_over_ipv6_after_a_peer_record_is_deleted() {
    leak_case(true, Breakage::PeerRecordDeleted);
}

#[test]
fn no_cleartext_over_ipv6_with_the_agent_stopped() {
    leak_case(true, Breakage::AgentStopped);
}

/// Before any agent has run on the node (a fresh boot): `wiremesh guard`, as the boot-time unit
/// runs it, holds the line alone; the agent that starts afterwards takes the table over in place
/// and the tunnel works through it.
#[test]
fn guard_holds_before_the_agent_ever_started() {
    common::require_agent();
    let lab = common::lab_with(2, 1, options(true, false));
    let mark = marker();
    let control = send_marker(
        &lab,
        &mark,
        "before-guard",
        false,
        5,
        Duration::from_millis(100),
    );
    assert!(
        control.marker_found,
        "control (no agent, no guard): the marker did not leave by the default route:\n{}",
        control.summary()
    );
    assert_eq!(lab.node(1).guard().counters().expect("nft"), None);

    for _ in 0..2 {
        let out = lab.node(1).guard().run().expect("wiremesh guard");
        assert!(out.contains("table inet wiremesh installed"), "{out}");
    }
    assert!(
        !lab.node(1)
            .dir()
            .join("state")
            .join("wiremesh_wg0.key")
            .exists(),
        "the guard must not need (or create) the agent's state"
    );
    let guarded = send_marker(&lab, &mark, "guarded", false, 5, Duration::from_millis(100));
    assert!(
        !guarded.marker_found && guarded.other.is_empty(),
        "wiremesh guard: the marker still left in clear:\n{}",
        guarded.summary()
    );
    assert!(
        lab.node(1)
            .guard()
            .counter("egress_ipv4")
            .expect("guard table")
            >= 5
    );

    common::start_mesh(&lab);
    common::assert_ping(&lab, FROM, TO);
    assert!(lab.node(1).guard().counters().expect("nft").is_some());
}

/// Counts tcpdump lines of ICMP echo requests from `from` seen in a pod's capture.
fn echo_requests_from(lines: &[String], from: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.contains(&format!(" {from} > ")) && l.contains("echo request"))
        .count()
}

/// The switch, on the underlay, sends pings to pod(1,1) from pod(2,1)'s addresses (v4 and v6):
/// spoofed packets that never went through the tunnel. Returns how many reached pod(1,1), per
/// family.
fn spoof(lab: &Lab, name: &str) -> (usize, usize) {
    let mark = marker();
    let capture = lab
        .host(FROM)
        .capture(name, "eth0")
        .expect("tcpdump in the victim pod");
    for v6 in [false, true] {
        lab.switch()
            .ping(TO.ip_of(v6), FROM.ip_of(v6), 5, &mark)
            .expect("ping from the switch");
    }
    let file = capture.stop().expect("tcpdump stops");
    let lines = file.decode().expect("decodes");
    eprintln!("{name}: {} packets reached {FROM}", lines.len());
    (
        echo_requests_from(&lines, &TO.ip().to_string()),
        echo_requests_from(&lines, &TO.ip6().to_string()),
    )
}

#[test]
fn spoofed_remote_pod_sources_never_reach_a_pod() {
    for strict in [false, true] {
        let lab = mesh(strict, true);
        lab.switch()
            .impersonate(TO, 1)
            .expect("switch impersonates pod(2,1)");
        let before = (
            lab.node(1).guard().counter("ingress_ipv4").unwrap_or(0),
            lab.node(1).guard().counter("ingress_ipv6").unwrap_or(0),
        );
        let (v4, v6) = spoof(
            &lab,
            if strict {
                "spoof-strict"
            } else {
                "spoof-control"
            },
        );
        if !strict {
            assert!(
                v4 > 0 && v6 > 0,
                "control (strictMode: false): spoofed pings did not reach {FROM} (v4 {v4}, v6 \
                 {v6}), so the strict run would prove nothing"
            );
            continue;
        }
        assert_eq!(
            (v4, v6),
            (0, 0),
            "strict mode: packets from {TO}'s addresses arrived from the underlay"
        );
        let after = (
            lab.node(1).guard().counter("ingress_ipv4").expect("guard"),
            lab.node(1).guard().counter("ingress_ipv6").expect("guard"),
        );
        assert!(
            after.0 >= before.0 + 5 && after.1 >= before.1 + 5,
            "ingress drop counters did not move by the 5 spoofed pings each: {before:?} -> {after:?}"
        );
        wait_status_drops(&lab, 1, "ingressIpv4");
        wait_status_drops(&lab, 1, "ingressIpv6");
        // The real pod(2,1) still reaches pod(1,1) through the tunnel, both families.
        common::assert_ping(&lab, TO, FROM);
        lab.host(TO)
            .wait_reachable(FROM.ip6(), Duration::from_secs(10))
            .expect("IPv6 through the tunnel still works");
    }
}

/// The agent puts the table back when something removes it behind its back (a firewall reload
/// running `flush ruleset`), within a few of its 2 s checks.
#[test]
fn a_removed_guard_table_is_reinstalled() {
    let lab = mesh(true, false);
    let mut cmd = std::process::Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &lab.node(1).ns(),
        "nft",
        "flush",
        "ruleset",
    ]);
    wiremesh_lab::run(&mut cmd, Duration::from_secs(10)).expect("nft flush ruleset");
    let start = Instant::now();
    while lab.node(1).guard().counters().expect("nft").is_none() {
        assert!(
            start.elapsed() < COUNTERS_SEEN,
            "the agent did not re-install table inet wiremesh"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.node(1)
        .agent()
        .wait_status("a re-install counted", COUNTERS_SEEN, |s| {
            s["strictMode"]["reinstalls"].as_u64().unwrap_or(0) >= 1
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The tasks `/healthz?verbose` of node-1 lists, by name.
fn supervised_tasks(lab: &Lab) -> Vec<String> {
    let text = lab
        .node(1)
        .agent()
        .healthz_verbose()
        .unwrap_or_else(|e| panic!("/healthz?verbose: {e}"));
    assert!(text.ends_with("healthz check passed\n"), "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("[+]task "))
        .map(|l| l.trim_end_matches(" ok").to_string())
        .collect()
}

/// Every long-running loop of the agent runs under its supervisor, so none can die unnoticed:
/// with strict mode and a metrics listener, `/healthz?verbose` lists the key rotator, the
/// policy loop, the L7 proxy's keeper, the flow collector, the strict guard's watcher and the
/// accept loops (admin, metrics, and health: every lab agent serves kubelet's probes). The control: an agent without strict mode or metrics runs (and lists) neither
/// of those two tasks.
#[test]
fn every_long_running_loop_of_the_agent_is_supervised() {
    common::require_agent();
    let lab = common::lab_with(2, 1, options(true, false).metrics_port(9963));
    common::start_mesh(&lab);
    assert_eq!(
        supervised_tasks(&lab),
        [
            "admin",
            "flows",
            "health",
            "metrics",
            "policy",
            "proxy",
            "rotation",
            "strict-guard"
        ]
    );
    drop(lab);

    let lab = common::lab_with(2, 1, options(false, false));
    common::start_mesh(&lab);
    assert_eq!(
        supervised_tasks(&lab),
        ["admin", "flows", "health", "policy", "proxy", "rotation"]
    );
}
