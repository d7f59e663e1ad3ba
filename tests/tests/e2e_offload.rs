//! The offloaded data path (TUN super-packets split per peer and coalesced on the way in, UDP
//! segmentation and GRO on the underlay) moves data intact and in order, never lets a datagram
//! larger than the tunnel MTU plus WireGuard's overhead onto the underlay, falls back to one
//! packet per system call when offloads are switched off, and keeps a saturating stream going
//! through key rotations.
//!
//! One test at a time: each pushes as much as the data path can carry, and two at once on a
//! small machine would measure the machine.

mod common;

use std::time::Duration;

use wiremesh_lab::{pod_ip, Host, IperfReport, Lab, LabOptions, NodeKind};

/// Large enough that reordering, a lost segment or a bad checksum anywhere in the coalescing
/// path would show in the hash.
const BULK: u64 = 256 << 20;
const BULK_TIMEOUT: Duration = Duration::from_secs(300);
/// The lab's tunnel MTU (the underlay's 1500 less 80) and what WireGuard adds to a packet of
/// that size: the 16-byte data header and the 16-byte tag (1420 is a multiple of 16, so no
/// padding).
const TUNNEL_MTU: usize = 1420;
const WG_DATA_OVERHEAD: usize = 32;
/// Reordering the sender may detect, per thousand segments sent.
const MAX_REORDER_PER_MILLE: u64 = 1;

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn mesh(offload: bool) -> Lab {
    common::require_agent();
    let lab = common::lab_with(2, 1, LabOptions::default().offload(offload));
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    lab
}

/// What the data path said of its offloads at start (`tun_tcp_offload=...`).
fn offload_line(lab: &Lab, node: u8) -> String {
    let log = std::fs::read_to_string(lab.node(node).log_path(NodeKind::Agent))
        .unwrap_or_else(|e| panic!("node-{node}'s log: {e}"));
    log.lines()
        .find(|l| l.contains("data path offloads"))
        .unwrap_or_else(|| panic!("node-{node}'s data path logged no offload line:\n{log}"))
        .to_owned()
}

/// `nstat -az` counters in a host's namespace.
fn nstat(lab: &Lab, host: Host, names: &[&str]) -> Vec<u64> {
    let out = wiremesh_lab::run(
        lab.host(host).cmd("nstat").args(["-asz"]).args(names),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("nstat in {host}: {e}"));
    names
        .iter()
        .map(|name| {
            out.lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
                })
                .unwrap_or(0)
        })
        .collect()
}

/// The sender's reordering detections (SACK, timestamps, Reno's duplicate ACKs): a lost
/// segment does not count, a segment overtaken by a later one does.
const REORDER_COUNTERS: [&str; 3] = [
    "TcpExtTCPSACKReorder",
    "TcpExtTCPTSReorder",
    "TcpExtTCPRenoReorder",
];
const SENDER_COUNTERS: [&str; 2] = ["TcpOutSegs", "TcpRetransSegs"];

fn delta(after: &[u64], before: &[u64]) -> Vec<u64> {
    after.iter().zip(before).map(|(a, b)| a - b).collect()
}

/// 256 MiB pod to pod, hashed at both ends, with the sender's reordering detections counted.
fn bulk_transfer_is_intact_and_in_order(lab: &Lab) {
    let sender = Host::Pod(1, 1);
    let counters = [REORDER_COUNTERS.as_slice(), &SENDER_COUNTERS].concat();
    let before = nstat(lab, sender, &counters);
    let bulk = lab
        .host(sender)
        .bulk_transfer(Host::Pod(2, 1), BULK, BULK_TIMEOUT)
        .unwrap_or_else(|e| panic!("256 MiB transfer pod(1) -> pod(2): {e}"));
    let d = delta(&nstat(lab, sender, &counters), &before);
    let reorders: u64 = d[..REORDER_COUNTERS.len()].iter().sum();
    let (segs, retrans) = (d[3], d[4]);
    eprintln!(
        "256 MiB in {:?} ({:.2} Gbit/s); sender: {segs} segments out, {retrans} retransmitted, \
         reordering detected {reorders} times ({REORDER_COUNTERS:?} = {:?})",
        bulk.took,
        bulk.gbit_per_s(),
        &d[..REORDER_COUNTERS.len()]
    );
    assert!(
        bulk.intact(),
        "the data arrived changed: sent sha256 {}, received {}",
        bulk.sent_sha256,
        bulk.received_sha256
    );
    assert!(
        segs > 0,
        "nstat counted no TCP segments in pod(1): is it the right namespace?"
    );
    assert!(
        reorders * 1000 <= segs * MAX_REORDER_PER_MILLE,
        "the sender detected reordering {reorders} times in {segs} segments (limit \
         {MAX_REORDER_PER_MILLE} per thousand): the data path reorders a flow"
    );
}

/// A mesh whose data paths say at start that their offloads are `on` (or off), then the bulk
/// transfer and the underlay capture.
fn transfer_checks(on: bool) {
    let _serial = serial();
    let lab = mesh(on);
    let (tun, udp) = if on {
        ("tun_tcp_offload=true", "udp_segments=64")
    } else {
        ("tun_tcp_offload=false", "udp_segments=1")
    };
    for node in [1, 2] {
        let line = offload_line(&lab, node);
        assert!(
            line.contains(tun) && line.contains(udp),
            "node-{node}'s data path with `offload: {on}` (this kernel has the offloads) says: \
             {line}"
        );
    }
    bulk_transfer_is_intact_and_in_order(&lab);
    datagrams_on_the_underlay_fit_the_mtu(&lab);
}

#[test]
fn offloaded_transfer_is_intact_in_order_and_never_oversized_on_the_underlay() {
    transfer_checks(true);
}

#[test]
fn without_offloads_the_same_transfer_is_intact() {
    transfer_checks(false);
}

/// Lengths of the UDP payloads tcpdump decoded (`UDP, length N`).
fn udp_lengths(lines: &[String]) -> Vec<usize> {
    lines
        .iter()
        .filter_map(|l| l.split("UDP, length ").nth(1)?.trim().parse().ok())
        .collect()
}

/// A segmented send crosses the lab's veths whole (veth takes GSO packets), so node-1's
/// underlay port is made to take one segment at a time, as a NIC's wire does: then the capture
/// shows each datagram as it would leave on a real link. Every one must fit the tunnel MTU
/// plus WireGuard's overhead; full-size ones must be there (or the capture saw no data).
fn datagrams_on_the_underlay_fit_the_mtu(lab: &Lab) {
    lab.node(1)
        .ip(&["link", "set", "dev", "eth0", "gso_max_segs", "1"])
        .unwrap_or_else(|e| panic!("limiting node-1's eth0 to one segment: {e}"));
    let capture = lab
        .switch()
        .capture("mtu")
        .unwrap_or_else(|e| panic!("capture: {e}"));
    lab.host(Host::Pod(1, 1))
        .tcp_transfer(Host::Pod(2, 1), 8 << 20, common::TRAFFIC)
        .unwrap_or_else(|e| panic!("8 MiB transfer under capture: {e}"));
    let file = capture.stop().unwrap_or_else(|e| panic!("capture: {e}"));
    let lines = file.decode().unwrap_or_else(|e| panic!("decoding: {e}"));
    let wg: Vec<String> = lines
        .into_iter()
        .filter(|l| l.contains("198.18.0.1.51871 > 198.18.0.2.51871"))
        .collect();
    let lengths = udp_lengths(&wg);
    let limit = TUNNEL_MTU + WG_DATA_OVERHEAD;
    let too_big: Vec<&String> = wg
        .iter()
        .zip(&lengths)
        .filter(|(_, &n)| n > limit)
        .map(|(l, _)| l)
        .take(5)
        .collect();
    let full = lengths.iter().filter(|&&n| n == limit).count();
    eprintln!(
        "underlay: {} WireGuard datagrams node-1 -> node-2, {full} of the full {limit} bytes, \
         largest {:?}",
        lengths.len(),
        lengths.iter().max()
    );
    assert!(
        too_big.is_empty(),
        "WireGuard datagrams larger than {limit} bytes left node-1: {too_big:#?}"
    );
    assert!(
        full > 1000,
        "only {full} full-size datagrams in an 8 MiB transfer: the capture did not see the data"
    );
}

/// Throughput in the second after `at` (seconds into the run) relative to the run's median
/// interval: how deep a rotation's dip went.
fn dip_after(report: &IperfReport, at: f64) -> f64 {
    let mut rates: Vec<f64> = report
        .intervals
        .iter()
        .map(|&(_, secs, bytes)| bytes as f64 / secs.max(1e-3))
        .collect();
    rates.sort_by(f64::total_cmp);
    let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0).max(1.0);
    report
        .intervals
        .iter()
        .filter(|&&(start, _, _)| start >= at && start < at + 1.0)
        .map(|&(_, secs, bytes)| bytes as f64 / secs.max(1e-3) / median)
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn key_rotation_under_a_saturating_stream_never_stalls() {
    let _serial = serial();
    let lab = mesh(true);
    let (server, port) = lab
        .host(Host::Pod(2, 1))
        .iperf_server()
        .expect("iperf3 server starts");
    let started = std::time::Instant::now();
    let stream = lab
        .host(Host::Pod(1, 1))
        .iperf_client(pod_ip(2, 1), port, Duration::from_secs(12), "0")
        .expect("iperf3 client starts");
    let mut rotated_at = Vec::new();
    for node in [1u8, 2] {
        std::thread::sleep(Duration::from_secs(3));
        rotated_at.push(started.elapsed().as_secs_f64());
        lab.node(node)
            .agent()
            .rotate_keys(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("`wiremesh keys rotate` on node-{node}: {e}"));
    }
    let report = stream
        .finish(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("iperf3 stream: {e}"));
    drop(server);
    let (stall, at) = report.longest_stall();
    let dips: Vec<String> = rotated_at
        .iter()
        .map(|&t| format!("{:.0}% of the median", 100.0 * dip_after(&report, t)))
        .collect();
    eprintln!(
        "saturating stream: {:.2} Gbit/s over the run, {} retransmits, longest stall {stall:?} \
         at {at:.2}s; throughput in the second after each rotation: {}",
        report.bytes_received as f64 * 8.0 / 12e9,
        report.retransmits,
        dips.join(", ")
    );
    assert!(report.error.is_none(), "iperf3 error: {:?}", report.error);
    assert!(report.bytes_received > 0, "the stream moved no data");
    assert!(
        stall < Duration::from_secs(1),
        "the stream stalled for {stall:?} from {at:.2}s into the run (rotations at {rotated_at:?})"
    );
}
