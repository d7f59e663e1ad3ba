//! Capturing the underlay (tcpdump on the switch's bridge) and judging a capture for leaks.
//!
//! tcpdump puts `br0` in promiscuous mode, so the bridge hands it every frame it forwards
//! between nodes, not only frames addressed to the bridge itself.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::addr::{MAX_NODES, WG_PORT};
use crate::clusters::is_etcd_port;
use crate::error::{LabError, Result};
use crate::exec::{run, BgProcess};
use crate::handles::{HostHandle, SwitchHandle};
use crate::lab::Lab;
use crate::options::SWITCH_IP;

static NEXT_CAPTURE: AtomicU32 = AtomicU32::new(0);
const START_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_GRACE: Duration = Duration::from_secs(5);
const SETTLE: Duration = Duration::from_millis(200);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A running tcpdump on the underlay.
#[derive(Debug)]
pub struct Capture {
    proc: BgProcess,
    pcap: PathBuf,
}

/// A finished capture file.
#[derive(Debug, Clone)]
pub struct CaptureFile {
    pub pcap: PathBuf,
}

impl Lab {
    /// Starts tcpdump on `iface` in namespace `ns` (e.g. a pod's `eth0`, to see what reaches it).
    pub(crate) fn start_capture_on(&self, name: &str, ns: &str, iface: &str) -> Result<Capture> {
        let n = NEXT_CAPTURE.fetch_add(1, Ordering::Relaxed);
        let pcap = self.dir().join(format!("{name}-{n}.pcap"));
        let log = self.dir().join(format!("{name}-{n}.tcpdump.log"));
        let mut cmd = Command::new("ip");
        // --immediate-mode: hand each packet over as it arrives (otherwise packets still in
        // the kernel's ring when we stop tcpdump are counted but never written); -U: write
        // each one at once; -Z root: Debian's tcpdump otherwise drops to a user that cannot
        // write into the root-owned lab directory.
        cmd.args(["netns", "exec", ns, "tcpdump", "-i", iface, "-nn"])
            .args(["--immediate-mode", "-U", "-Z", "root", "-w"])
            .arg(&pcap);
        let mut proc = BgProcess::spawn(format!("tcpdump {name}"), &mut cmd, &log)?;
        let deadline = Instant::now() + START_TIMEOUT;
        while !proc.log().contains("listening on") {
            if let Some(status) = proc.exited() {
                return Err(LabError::Check(format!(
                    "tcpdump exited ({status}): {}",
                    proc.log()
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: "tcpdump to start capturing".into(),
                    after: START_TIMEOUT,
                    last: proc.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Capture { proc, pcap })
    }
}

impl Capture {
    /// Stops tcpdump (SIGINT, so it closes the file cleanly) and returns the file.
    pub fn stop(mut self) -> Result<CaptureFile> {
        // Frames of the last exchange may still be crossing the bridge.
        std::thread::sleep(SETTLE);
        self.proc.stop(Signal::SIGINT, STOP_GRACE);
        if !self.pcap.is_file() {
            return Err(LabError::Check(format!(
                "tcpdump wrote no {}: {}",
                self.pcap.display(),
                self.proc.log()
            )));
        }
        Ok(CaptureFile {
            pcap: self.pcap.clone(),
        })
    }
}

impl CaptureFile {
    /// Whether `marker` occurs anywhere in the raw capture (headers and payloads alike).
    pub fn contains(&self, marker: &[u8]) -> Result<bool> {
        let bytes = std::fs::read(&self.pcap).map_err(|e| LabError::io(&self.pcap, e))?;
        Ok(contains(&bytes, marker))
    }

    /// `tcpdump -nn -r`: one line per packet.
    pub fn decode(&self) -> Result<Vec<String>> {
        let text = run(
            Command::new("tcpdump").args(["-nn", "-r"]).arg(&self.pcap),
            READ_TIMEOUT,
        )?;
        Ok(text.lines().map(str::to_owned).collect())
    }

    /// Searches for `marker` and classifies every packet.
    pub fn analyze(&self, marker: &[u8]) -> Result<LeakReport> {
        let mut report = LeakReport {
            marker_found: self.contains(marker)?,
            ..LeakReport::default()
        };
        for line in self.decode()? {
            report.packets += 1;
            match classify(&line) {
                Packet::Arp => report.arp += 1,
                Packet::Store { src, dst } => {
                    report.store += 1;
                    *report
                        .flows
                        .entry(format!("{src} > {dst} TCP (store)"))
                        .or_default() += 1;
                }
                Packet::WireGuard { src, dst } => {
                    report.wireguard += 1;
                    *report
                        .flows
                        .entry(format!("{src} > {dst} UDP"))
                        .or_default() += 1;
                }
                Packet::Other(desc) => {
                    *report.flows.entry(desc).or_default() += 1;
                    report.other.push(line);
                }
            }
        }
        Ok(report)
    }

    pub fn path(&self) -> &Path {
        &self.pcap
    }
}

/// What a capture shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeakReport {
    pub marker_found: bool,
    pub packets: usize,
    /// ARP, and IPv6 neighbour discovery and MLD.
    pub arp: usize,
    /// UDP between two underlay node addresses with the WireGuard port on one side.
    pub wireguard: usize,
    /// TCP between a node and the lab's etcd on the switch (`198.18.0.254:2379`, or another
    /// cluster's port): control-plane traffic to the store, not between nodes.
    pub store: usize,
    /// Packet count per flow (`src > dst proto`).
    pub flows: BTreeMap<String, usize>,
    /// Every packet that is neither ARP nor WireGuard UDP between nodes.
    pub other: Vec<String>,
}

impl LeakReport {
    /// No marker, nothing but ARP and WireGuard, and some WireGuard (so the traffic did cross).
    pub fn is_clean(&self) -> bool {
        !self.marker_found && self.other.is_empty() && self.wireguard > 0
    }

    /// A few readable lines: packet counts, flows, and the first unexpected packets.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} packets: {} WireGuard UDP, {} store, {} ARP, {} other; marker {}\n",
            self.packets,
            self.wireguard,
            self.store,
            self.arp,
            self.other.len(),
            if self.marker_found { "FOUND" } else { "absent" }
        );
        for (flow, n) in &self.flows {
            s.push_str(&format!("  {n:>6}  {flow}\n"));
        }
        for line in self.other.iter().take(5) {
            s.push_str(&format!("  unexpected: {line}\n"));
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Arp,
    WireGuard {
        src: String,
        dst: String,
    },
    /// TCP between a node and the lab's etcd client or peer port on the switch.
    Store {
        src: String,
        dst: String,
    },
    /// Anything else, described as `src > dst proto`.
    Other(String),
}

/// Classifies one line of `tcpdump -nn -r` output, e.g.
/// `12:00:00.000000 IP 198.18.0.1.51871 > 198.18.0.2.51871: UDP, length 148`.
pub fn classify(line: &str) -> Packet {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.get(1) {
        Some(&"ARP,") => return Packet::Arp,
        Some(&"IP6") if is_neighbour_discovery(line) => return Packet::Arp,
        Some(&"IP") | Some(&"IP6") => {}
        _ => {
            return Packet::Other(
                line.split_whitespace()
                    .skip(1)
                    .take(4)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        }
    }
    let (Some(src), Some(dst), Some(proto)) = (fields.get(2), fields.get(4), fields.get(5)) else {
        return Packet::Other(line.into());
    };
    let dst = dst.trim_end_matches(':');
    let proto = match proto.trim_end_matches(',') {
        // tcpdump names no protocol for TCP; the flags come first.
        "Flags" => "TCP",
        other => other,
    };
    let is_wireguard = proto == "UDP"
        && match (split_addr_port(src), split_addr_port(dst)) {
            (Some((sa, sp)), Some((da, dp))) => {
                is_node(sa) && is_node(da) && (sp == WG_PORT || dp == WG_PORT)
            }
            _ => false,
        };
    let is_store = proto == "TCP"
        && match (split_addr_port(src), split_addr_port(dst)) {
            (Some(s), Some(d)) => {
                is_store_end(s) && is_node(d.0) || is_node(s.0) && is_store_end(d)
            }
            _ => false,
        };
    if is_store {
        return Packet::Store {
            src: (*src).into(),
            dst: dst.into(),
        };
    }
    if is_wireguard {
        Packet::WireGuard {
            src: (*src).into(),
            dst: dst.into(),
        }
    } else {
        Packet::Other(format!("{src} > {dst} {proto}"))
    }
}

/// IPv6's ARP (neighbour solicitations and advertisements) and the MLD reports that go with it:
/// link housekeeping, never a payload.
fn is_neighbour_discovery(line: &str) -> bool {
    [
        "ICMP6, neighbor solicitation",
        "ICMP6, neighbor advertisement",
        "ICMP6, multicast listener report",
        "ICMP6, router solicitation",
    ]
    .iter()
    .any(|kind| line.contains(kind))
}

/// `198.18.0.1.51871` or `2001:2::1.51871` into address and port.
fn split_addr_port(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.rsplit_once('.')?;
    Some((addr.parse().ok()?, port.parse().ok()?))
}

/// A node's underlay address (`198.18.0.<1..=MAX_NODES>` or `2001:2::<1..=MAX_NODES>`); the
/// switch's is not one.
fn is_node(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let [a, b, c, d] = a.octets();
            [a, b, c] == [198, 18, 0] && (1..=MAX_NODES).contains(&d)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            s[..7] == [0x2001, 2, 0, 0, 0, 0, 0] && (1..=u16::from(MAX_NODES)).contains(&s[7])
        }
    }
}

/// The lab's store on the switch: an etcd client port, or the Kubernetes API server's.
fn is_store_end((addr, port): (IpAddr, u16)) -> bool {
    addr == SWITCH_IP && (is_etcd_port(port) || port == crate::kube::KUBE_API_PORT)
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// A 16-byte marker unlikely to occur by chance (fits `ping -p`).
pub fn marker() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let hex = format!("{:010x}", h.finish() & 0xff_ffff_ffff);
    let mut m = *b"WMLEAK0000000000";
    m[6..].copy_from_slice(hex.as_bytes());
    m
}

impl SwitchHandle<'_> {
    /// Starts tcpdump on `br0` in the switch namespace and waits until it is capturing.
    pub fn capture(&self, name: &str) -> Result<Capture> {
        self.lab
            .start_capture_on(name, &self.lab.switch_ns(), "br0")
    }
}

impl HostHandle<'_> {
    /// Starts tcpdump on `iface` here (e.g. a pod's `eth0`, to see what reaches it).
    pub fn capture(&self, name: &str, iface: &str) -> Result<Capture> {
        self.lab.start_capture_on(name, &self.ns(), iface)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_tcpdump_lines() {
        let wg = "12:00:00.000000 IP 198.18.0.1.51871 > 198.18.0.2.51871: UDP, length 148";
        assert_eq!(
            classify(wg),
            Packet::WireGuard {
                src: "198.18.0.1.51871".into(),
                dst: "198.18.0.2.51871".into()
            }
        );
        let arp = "12:00:00.000000 ARP, Request who-has 198.18.0.2 tell 198.18.0.1, length 28";
        assert_eq!(classify(arp), Packet::Arp);
        let icmp = "12:00:00.000000 IP 10.244.1.11 > 10.244.2.11: ICMP echo request, id 1, seq 1, length 64";
        assert_eq!(
            classify(icmp),
            Packet::Other("10.244.1.11 > 10.244.2.11 ICMP".into())
        );
        let tcp =
            "12:00:00.000000 IP 10.244.1.11.40000 > 10.244.2.11.20000: Flags [S], seq 1, length 0";
        assert_eq!(
            classify(tcp),
            Packet::Other("10.244.1.11.40000 > 10.244.2.11.20000 TCP".into())
        );
        let other_udp = "12:00:00.000000 IP 198.18.0.1.5353 > 198.18.0.2.5353: UDP, length 10";
        assert!(matches!(classify(other_udp), Packet::Other(_)));
        let etcd =
            "12:00:00.000000 IP 198.18.0.1.40000 > 198.18.0.254.2379: Flags [P.], seq 1, length 10";
        assert!(matches!(classify(etcd), Packet::Store { .. }));
        let back =
            "12:00:00.000000 IP 198.18.0.254.2379 > 198.18.0.2.40000: Flags [.], ack 1, length 0";
        assert!(matches!(classify(back), Packet::Store { .. }));
        let wg_to_switch =
            "12:00:00.000000 IP 198.18.0.1.51871 > 198.18.0.254.51871: UDP, length 148";
        assert!(matches!(classify(wg_to_switch), Packet::Other(_)));
        let rs = "12:00:00.000000 IP6 fe80::1 > ff02::2: ICMP6, router solicitation, length 16";
        assert_eq!(classify(rs), Packet::Arp);
        let ns = "12:00:00.000000 IP6 2001:2::1 > ff02::1:ff00:2: ICMP6, neighbor solicitation, who has 2001:2::2, length 32";
        assert_eq!(classify(ns), Packet::Arp);
        let mld = "12:00:00.000000 IP6 fe80::1 > ff02::16: HBH ICMP6, multicast listener report v2, 1 group record(s), length 28";
        assert_eq!(classify(mld), Packet::Arp);
        let echo6 = "12:00:00.000000 IP6 fd00:10:244:1::b > fd00:10:244:2::b: ICMP6, echo request, id 7, seq 1, length 64";
        assert_eq!(
            classify(echo6),
            Packet::Other("fd00:10:244:1::b > fd00:10:244:2::b ICMP6".into())
        );
        let wg6 = "12:00:00.000000 IP6 2001:2::1.51871 > 2001:2::2.51871: UDP, length 148";
        assert!(matches!(classify(wg6), Packet::WireGuard { .. }));
    }

    #[test]
    fn marker_search() {
        let m = marker();
        assert_eq!(&m[..6], b"WMLEAK");
        let mut hay = vec![0u8; 100];
        assert!(!contains(&hay, &m));
        hay.extend_from_slice(&m);
        hay.push(1);
        assert!(contains(&hay, &m));
        assert!(!contains(&hay, b""));
    }

    #[test]
    fn clean_report_needs_wireguard_traffic() {
        let mut r = LeakReport::default();
        assert!(!r.is_clean(), "an empty capture proves nothing");
        r.wireguard = 3;
        assert!(r.is_clean());
        r.other.push("x".into());
        assert!(!r.is_clean());
    }
}
