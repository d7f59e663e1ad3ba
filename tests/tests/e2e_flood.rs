//! A handshake flood from one underlay address: ≥ 20,000 initiations per second with a valid
//! mac1 (the node's public key is public) at node-2 for 10 s, while pod(1) pings pod(2) across
//! the tunnel at 100/s. Proves that the pings lose < 1 %, that the data path answered the flood
//! as designed (cookie replies and Diffie-Hellman both bounded per source: its
//! `wiremesh_handshakes_total{outcome}` counters), and prints the data path's CPU with and
//! without the flood (docs/BENCHMARKS.md).
//!
//! The detector is proven in the same run: the flooder counts what it sent and its rate, node-2's
//! kernel UDP counters show that it arrived, and the data path's counters show that it was
//! handled as MAC-valid (none counted `invalid_mac`), so the flood exercised the expensive path.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use wiremesh_lab::{
    flood, node_ip, parse_exposition, process_cpu, FloodSpec, Host, Lab, PingLog, WG_PORT,
};

/// The rate the flooder aims at, and the least it must reach for the run to count.
const FLOOD_RATE: u32 = 25_000;
const MIN_RATE: f64 = 20_000.0;
const FLOOD_SECS: u32 = 10;
/// The flooder's address, on the switch's bridge: on the underlay, and no node's.
const FLOODER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
const TARGET: u8 = 2;
/// Pings that may be lost, as a fraction.
const MAX_LOSS: f64 = 0.01;
/// The data path's limits (daemon/datapath/src/userspace/gate.rs): 20 per second with a burst of 5, for
/// handshakes reaching Diffie-Hellman and for cookie replies, per source.
const PER_SOURCE_PER_S: u64 = 20;
const PER_SOURCE_BURST: u64 = 5;
/// Handshakes of the real peers that may happen meanwhile.
const LEGIT_SLACK: u64 = 10;

/// What is read before and after each window.
struct Snapshot {
    at: Instant,
    cpu: Duration,
    handshakes: std::collections::BTreeMap<String, u64>,
    udp: std::collections::BTreeMap<String, u64>,
}

fn snapshot(lab: &Lab, pid: u32) -> Snapshot {
    let text = lab
        .node(TARGET)
        .agent()
        .metrics()
        .unwrap_or_else(|e| panic!("scraping node-{TARGET}'s /metrics: {e}"));
    let metrics = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}"));
    let family = metrics
        .get("wiremesh_handshakes")
        .unwrap_or_else(|| panic!("no wiremesh_handshakes family in node-{TARGET}'s /metrics"));
    let handshakes = family
        .samples
        .iter()
        .filter_map(|(_, labels, v)| {
            let outcome = labels.strip_prefix("outcome=\"")?.strip_suffix('"')?;
            Some((outcome.to_owned(), *v as u64))
        })
        .collect();
    Snapshot {
        at: Instant::now(),
        cpu: process_cpu(pid).unwrap_or_else(|e| panic!("data path CPU: {e}")),
        handshakes,
        udp: lab
            .node(TARGET)
            .udp_counters()
            .unwrap_or_else(|e| panic!("UDP counters: {e}")),
    }
}

/// What happened between two snapshots.
struct Window {
    wall: Duration,
    cpu: Duration,
    handshakes: std::collections::BTreeMap<String, u64>,
    udp_in: u64,
    udp_rcvbuf_errors: u64,
}

impl Window {
    fn between(a: &Snapshot, b: &Snapshot) -> Self {
        let delta = |m: &std::collections::BTreeMap<String, u64>,
                     n: &std::collections::BTreeMap<String, u64>,
                     k: &str| {
            n.get(k).copied().unwrap_or(0) - m.get(k).copied().unwrap_or(0)
        };
        Self {
            wall: b.at - a.at,
            cpu: b.cpu - a.cpu,
            handshakes: b
                .handshakes
                .keys()
                .map(|k| (k.clone(), delta(&a.handshakes, &b.handshakes, k)))
                .collect(),
            udp_in: delta(&a.udp, &b.udp, "InDatagrams"),
            udp_rcvbuf_errors: delta(&a.udp, &b.udp, "RcvbufErrors"),
        }
    }

    fn hs(&self, outcome: &str) -> u64 {
        self.handshakes.get(outcome).copied().unwrap_or(0)
    }

    fn cpu_share(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    fn describe(&self) -> String {
        format!(
            "{:.1} s wall, data path CPU {:.2} s ({:.1} % of a core), UDP in {} (+{} dropped at \
             the socket), handshakes {:?}",
            self.wall.as_secs_f64(),
            self.cpu.as_secs_f64(),
            100.0 * self.cpu_share(),
            self.udp_in,
            self.udp_rcvbuf_errors,
            self.handshakes
        )
    }
}

/// Waits for a ping to finish and returns its log; fails on a ping that did not run.
fn finish_ping(mut proc: wiremesh_lab::BgProcess, ping: &wiremesh_lab::Ping) -> PingLog {
    proc.wait_timeout(ping.deadline() * 2 + Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("ping did not finish: {e}"));
    let log = PingLog::parse(&proc.log());
    let Some(summary) = &log.summary else {
        panic!("no ping summary: {}", wiremesh_lab::tail(&proc.log(), 20));
    };
    assert_eq!(
        summary.sent, ping.count,
        "ping sent {summary} of {}",
        ping.count
    );
    log
}

fn assert_loss_below(log: &PingLog, what: &str) {
    let summary = log.summary.as_ref().expect("checked by finish_ping");
    let loss = f64::from(summary.lost()) / f64::from(summary.sent);
    eprintln!("{what}: {summary}, longest gap {:?}", log.longest_gap());
    assert!(
        loss < MAX_LOSS,
        "{what}: {} of {} pings lost ({:.2} %, limit {:.0} %)",
        summary.lost(),
        summary.sent,
        100.0 * loss,
        100.0 * MAX_LOSS
    );
}

#[test]
fn handshake_flood_costs_bounded_dh_and_loses_no_ping() {
    common::require_agent();
    let lab = common::lab(2, 1);
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    common::assert_ping(&lab, Host::Pod(2, 1), Host::Pod(1, 1));
    let (key, _) = common::key_and_epoch(&lab, TARGET);
    let public: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .ok()
        .and_then(|k| k.try_into().ok())
        .unwrap_or_else(|| panic!("node-{TARGET}'s status publicKey {key:?} is not a key"));
    wiremesh_lab::run(
        Command::new("ip").args([
            "-n",
            &lab.switch().ns(),
            "addr",
            "add",
            &format!("{FLOODER_IP}/24"),
            "dev",
            "br0",
        ]),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("giving the switch the flooder's address: {e}"));
    let pid = lab
        .node(TARGET)
        .datapath()
        .pid()
        .unwrap_or_else(|| panic!("node-{TARGET} has no data path"));

    // Baseline: the same ping, no flood.
    let s0 = snapshot(&lab, pid);
    let (ping, spec) = common::fast_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1), FLOOD_SECS);
    let quiet_log = finish_ping(ping, &spec);
    let s1 = snapshot(&lab, pid);
    let quiet = Window::between(&s0, &s1);
    eprintln!("without flood: {}", quiet.describe());

    // The flood, under the same ping.
    let (ping, spec) = common::fast_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1), FLOOD_SECS);
    let s2 = snapshot(&lab, pid);
    let report = flood(&FloodSpec {
        netns: lab.switch().ns(),
        source: FLOODER_IP,
        target: SocketAddrV4::new(node_ip(TARGET), WG_PORT),
        responder_public: public,
        per_second: FLOOD_RATE,
        duration: Duration::from_secs(u64::from(FLOOD_SECS)),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let s3 = snapshot(&lab, pid);
    let flood_log = finish_ping(ping, &spec);
    let flooded = Window::between(&s2, &s3);
    eprintln!(
        "flooder: sent {} initiations in {:.2} s = {:.0}/s ({} send errors)",
        report.sent,
        report.elapsed.as_secs_f64(),
        report.rate(),
        report.send_errors
    );
    eprintln!("with flood: {}", flooded.describe());
    eprintln!(
        "data path CPU: {:.1} % of a core without the flood, {:.1} % with it: ratio {:.2}",
        100.0 * quiet.cpu_share(),
        100.0 * flooded.cpu_share(),
        flooded.cpu_share() / quiet.cpu_share().max(1e-6)
    );

    // The detector: the flood was sent at the rate claimed, arrived, and was MAC-valid.
    assert!(
        report.rate() >= MIN_RATE,
        "the flooder reached {:.0} initiations/s, below the {MIN_RATE} the test claims",
        report.rate()
    );
    assert!(
        flooded.udp_in + flooded.udp_rcvbuf_errors >= report.sent * 95 / 100,
        "node-{TARGET}'s kernel saw {} datagrams (+{} dropped) of the {} sent",
        flooded.udp_in,
        flooded.udp_rcvbuf_errors,
        report.sent
    );
    let handled: u64 = flooded.handshakes.values().sum();
    assert!(
        handled >= report.sent / 2,
        "the data path handled {handled} handshake messages of the {} sent: {}",
        report.sent,
        flooded.describe()
    );
    assert_eq!(
        flooded.hs("invalid_mac"),
        0,
        "the flood's mac1 must be valid, or it tests only the cheap path"
    );

    // The design: cookies demanded and bounded, Diffie-Hellman bounded, per source.
    let secs = flooded.wall.as_secs() + 1;
    let per_source_max = PER_SOURCE_BURST + PER_SOURCE_PER_S * secs + LEGIT_SLACK;
    assert!(
        flooded.hs("processed") <= per_source_max,
        "{} handshakes reached Diffie-Hellman in {secs} s; one source may cause {per_source_max}",
        flooded.hs("processed")
    );
    assert!(
        flooded.hs("rate_limited") > 0,
        "nothing was rate-limited: {}",
        flooded.describe()
    );
    assert!(
        flooded.hs("cookie_sent") <= per_source_max,
        "{} cookie replies in {secs} s; one destination may get {per_source_max}",
        flooded.hs("cookie_sent")
    );
    assert!(
        flooded.hs("cookie_suppressed") >= report.sent / 2,
        "cookie replies were not bounded: {}",
        flooded.describe()
    );

    assert_loss_below(&quiet_log, "pod(1) -> pod(2) without flood");
    assert_loss_below(&flood_log, "pod(1) -> pod(2) under the handshake flood");
    common::assert_ping(&lab, Host::Pod(2, 1), Host::Pod(1, 1));
}
