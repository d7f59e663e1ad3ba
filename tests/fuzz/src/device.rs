//! The data path core as an attacker on the underlay or a local process sees it: device A (the
//! one under test) has two peers, B (a real device, wired to A in memory, with a session already
//! made) and C (whose endpoint never answers). The input is a sequence of operations: datagrams
//! from B's address, from a stranger, or from B's address written as an IPv4-mapped IPv6 one;
//! packets read from A's TUN; packets B's TUN hands B (so A receives them genuinely encrypted);
//! replays, bit flips and truncations of datagrams B really sent; timer ticks; and UAPI `set`
//! requests applied to A.
//!
//! Properties checked after every operation:
//! * everything A sends is a WireGuard message (nothing leaves in the clear), and goes only to a
//!   configured endpoint or to an address A received a datagram from;
//! * every packet A delivers to its TUN has a source inside the allowed IPs of a peer (of B, as
//!   long as no UAPI request changed A's peers): cryptokey routing holds whatever B sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::Tunn;
use ipnet::IpNet;
use keymgr::PrivateKey;
use wiremesh_datapath::uapi::{self, Request};
use wiremesh_datapath::model::{PeerChange, SetRequest};
use wiremesh_datapath::userspace::device::{Device, Io};

pub const A_KEY: [u8; 32] = [0x11; 32];
pub const B_KEY: [u8; 32] = [0x22; 32];
pub const C_KEY: [u8; 32] = [0x33; 32];
pub const A_ADDR: ([u8; 4], u16) = ([198, 18, 0, 1], 51871);
pub const B_ADDR: ([u8; 4], u16) = ([198, 18, 0, 2], 51871);
const STRANGER: ([u8; 4], u16) = ([198, 18, 0, 9], 40000);
/// Datagrams B sent to A that are kept for replay and mutation.
const CAPTURE_MAX: usize = 64;

/// One operation of the input: a code byte, a little-endian u16 length, then that many bytes
/// (fewer if the input ends first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    DatagramFromPeer = 0,
    DatagramFromStranger = 1,
    DatagramFromPeerMapped = 2,
    /// A packet read from A's TUN.
    TunToA = 3,
    /// A packet read from B's TUN: B encrypts it and A receives it.
    TunToPeer = 4,
    Pump = 5,
    /// `[index, position (u16 LE), xor]`: a captured datagram with one byte changed.
    MutateCaptured = 6,
    /// `[index]`: a captured datagram again.
    ReplayCaptured = 7,
    /// `[index, length (u16 LE)]`: a captured datagram cut short.
    TruncateCaptured = 8,
    /// `[seconds]`: the clock advances, both devices' timers run.
    Tick = 9,
    ResetRateLimiters = 10,
    /// The payload, after `set=1\n`, as a UAPI request applied to A.
    ApplyUapi = 11,
}

const OPS: [Op; 12] = [
    Op::DatagramFromPeer,
    Op::DatagramFromStranger,
    Op::DatagramFromPeerMapped,
    Op::TunToA,
    Op::TunToPeer,
    Op::Pump,
    Op::MutateCaptured,
    Op::ReplayCaptured,
    Op::TruncateCaptured,
    Op::Tick,
    Op::ResetRateLimiters,
    Op::ApplyUapi,
];

/// Encodes operations in the input format (for seeds).
pub fn encode(ops: &[(Op, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (op, payload) in ops {
        let len = u16::try_from(payload.len()).expect("seed payloads fit a u16 length");
        out.push(*op as u8);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(payload);
    }
    out
}

#[derive(Default)]
struct Wire {
    sent: Vec<(SocketAddr, Vec<u8>)>,
    delivered: Vec<Vec<u8>>,
}

impl Io for Wire {
    fn send(&mut self, to: SocketAddr, packet: &[u8]) {
        self.sent.push((to, packet.to_vec()));
    }
    fn deliver(&mut self, packet: &[u8]) {
        self.delivered.push(packet.to_vec());
    }
}

/// A and B wired together; what B sent A is captured.
pub struct Pair {
    a: Device,
    b: Device,
    wa: Wire,
    wb: Wire,
    now: Instant,
    /// Datagrams B sent to A, oldest first.
    pub captured: Vec<Vec<u8>>,
    /// Addresses A received a datagram from (A may answer them: handshake responses, cookies).
    sources: Vec<SocketAddr>,
    /// No UAPI request has changed A yet: only B's allowed IPs may be delivered.
    strict: bool,
}

fn addr((ip, port): ([u8; 4], u16)) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn net(s: &str) -> IpNet {
    s.parse().expect("a valid literal network")
}

fn peer(key: [u8; 32], endpoint: SocketAddr, nets: &[&str]) -> PeerChange {
    let mut c = PeerChange::new(PrivateKey::from_bytes(key).public_key());
    c.endpoint = Some(endpoint);
    c.replace_allowed_ips = true;
    c.allowed_ips = nets.iter().map(|n| net(n)).collect();
    c
}

impl Pair {
    /// A with peers B and C, B with peer A; A's start-up handshakes are sent. With `handshake`,
    /// they are carried, so that A and B share a session.
    pub fn new(handshake: bool) -> Self {
        let now = Instant::now();
        let mut a = Device::new(PrivateKey::from_bytes(A_KEY), now);
        let mut b = Device::new(PrivateKey::from_bytes(B_KEY), now);
        let c_addr = SocketAddr::from((Ipv6Addr::new(0xfd00, 18, 0, 0, 0, 0, 0, 3), 51871));
        let to_a = SetRequest {
            peers: vec![
                peer(B_KEY, addr(B_ADDR), &["10.244.2.0/24", "fd00:244:2::/64"]),
                peer(C_KEY, c_addr, &["10.244.3.0/24", "fd00:244:3::/64"]),
            ],
            ..SetRequest::default()
        };
        let to_b = SetRequest {
            peers: vec![peer(A_KEY, addr(A_ADDR), &["10.244.1.0/24", "fd00:244:1::/64"])],
            ..SetRequest::default()
        };
        a.apply(to_a, now).expect("the set-up request applies");
        b.apply(to_b, now).expect("the set-up request applies");
        let mut pair = Self {
            a,
            b,
            wa: Wire::default(),
            wb: Wire::default(),
            now,
            captured: Vec::new(),
            sources: vec![addr(B_ADDR)],
            strict: true,
        };
        pair.a.flush_new_peers(&mut pair.wa);
        if handshake {
            pair.pump();
        }
        pair
    }

    /// A packet read from B's TUN; returns what B sent A (not yet delivered).
    pub fn b_sends(&mut self, packet: &[u8]) -> Vec<Vec<u8>> {
        self.b.handle_tun_packet(packet, &mut self.wb);
        std::mem::take(&mut self.wb.sent)
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// A's start-up handshake initiations carried to B; returns B's answers to A.
    pub fn b_answers_a(&mut self) -> Vec<Vec<u8>> {
        for (to, p) in std::mem::take(&mut self.wa.sent) {
            if to == addr(B_ADDR) {
                self.b.handle_datagram(&p, addr(A_ADDR), self.now, &mut self.wb);
            }
        }
        std::mem::take(&mut self.wb.sent)
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// Carries datagrams both ways until both are quiet (bounded: a loop is a finding too).
    fn pump(&mut self) {
        for _ in 0..64 {
            let allowed = self.allowed_sources();
            let from_a = self.check_a(&allowed);
            let from_b = std::mem::take(&mut self.wb.sent);
            if from_a.is_empty() && from_b.is_empty() {
                return;
            }
            for (to, p) in from_a {
                if to == addr(B_ADDR) {
                    self.b.handle_datagram(&p, addr(A_ADDR), self.now, &mut self.wb);
                }
            }
            for (to, p) in from_b {
                if to == addr(A_ADDR) {
                    self.a_receives(&p, addr(B_ADDR));
                    if self.captured.len() < CAPTURE_MAX {
                        self.captured.push(p);
                    }
                }
            }
        }
        panic!("the devices kept talking for 64 rounds");
    }

    fn a_receives(&mut self, datagram: &[u8], from: SocketAddr) {
        let canonical = SocketAddr::new(from.ip().to_canonical(), from.port());
        if !self.sources.contains(&canonical) {
            self.sources.push(canonical);
        }
        self.a.handle_datagram(datagram, from, self.now, &mut self.wa);
    }

    /// The networks a delivered source may come from.
    fn allowed_sources(&self) -> Vec<IpNet> {
        let b_key = PrivateKey::from_bytes(B_KEY).public_key();
        let state = self.a.state(0, 0);
        state
            .peers
            .iter()
            .filter(|p| !self.strict || p.public_key == b_key)
            .flat_map(|p| p.allowed_ips.iter().copied())
            .collect()
    }

    /// Checks A's outputs (see the module header) and hands back what it sent.
    fn check_a(&mut self, allowed: &[IpNet]) -> Vec<(SocketAddr, Vec<u8>)> {
        for p in std::mem::take(&mut self.wa.delivered) {
            let src = inner_source(&p)
                .unwrap_or_else(|| panic!("A delivered a packet with no IP source: {p:02x?}"));
            assert!(
                allowed.iter().any(|n| n.contains(&src)),
                "A delivered a packet from {src}, outside {allowed:?}"
            );
        }
        let endpoints: Vec<SocketAddr> = self.a.state(0, 0).peers.iter().filter_map(|p| p.endpoint).collect();
        let sent = std::mem::take(&mut self.wa.sent);
        for (to, p) in &sent {
            assert!(
                Tunn::parse_incoming_packet(p).is_ok(),
                "A sent {to} a datagram that is not a WireGuard message: {p:02x?}"
            );
            assert!(
                endpoints.contains(to) || self.sources.contains(to),
                "A sent to {to}, neither an endpoint nor a source"
            );
        }
        sent
    }

    fn captured(&self, index: u8) -> Option<Vec<u8>> {
        let n = self.captured.len();
        (n > 0).then(|| self.captured[usize::from(index) % n].clone())
    }

    fn step(&mut self, op: Op, payload: &[u8]) {
        let allowed = self.allowed_sources();
        let byte = |i: usize| payload.get(i).copied().unwrap_or(0);
        let word = |i: usize| usize::from(u16::from_le_bytes([byte(i), byte(i + 1)]));
        let peer_mapped = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::from(B_ADDR.0).to_ipv6_mapped()),
            B_ADDR.1,
        );
        match op {
            Op::DatagramFromPeer => self.a_receives(payload, addr(B_ADDR)),
            Op::DatagramFromStranger => self.a_receives(payload, addr(STRANGER)),
            Op::DatagramFromPeerMapped => self.a_receives(payload, peer_mapped),
            Op::TunToA => self.a.handle_tun_packet(payload, &mut self.wa),
            Op::TunToPeer => {
                self.b.handle_tun_packet(payload, &mut self.wb);
                self.pump();
            }
            Op::Pump => self.pump(),
            Op::MutateCaptured => {
                if let Some(mut d) = self.captured(byte(0)) {
                    let len = d.len();
                    d[word(1) % len] ^= byte(3);
                    self.a_receives(&d, addr(B_ADDR));
                }
            }
            Op::ReplayCaptured => {
                if let Some(d) = self.captured(byte(0)) {
                    self.a_receives(&d, addr(B_ADDR));
                }
            }
            Op::TruncateCaptured => {
                if let Some(d) = self.captured(byte(0)) {
                    let len = word(1) % (d.len() + 1);
                    self.a_receives(&d[..len], addr(B_ADDR));
                }
            }
            Op::Tick => {
                self.now += Duration::from_secs(u64::from(byte(0)));
                self.a.tick(self.now, &mut self.wa);
                self.b.tick(self.now, &mut self.wb);
                self.pump();
            }
            Op::ResetRateLimiters => self.a.reset_rate_limiters(),
            Op::ApplyUapi => {
                let text = format!("set=1\n{}", String::from_utf8_lossy(payload));
                if let Ok(Request::Set(req)) = uapi::parse(&text) {
                    self.strict = false;
                    let _ = self.a.apply(req, self.now);
                    self.a.flush_new_peers(&mut self.wa);
                }
            }
        }
        self.check_a(&allowed);
    }
}

/// The source address of an IP packet, read independently of boringtun.
fn inner_source(p: &[u8]) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?)),
        6 if p.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?)),
        _ => None,
    }
}

/// Runs one input (see [`Op`] for its format).
pub fn run(data: &[u8]) {
    let mut pair = Pair::new(true);
    let mut rest = data;
    while let Some((&code, tail)) = rest.split_first() {
        let len = match tail {
            [lo, hi, ..] => usize::from(u16::from_le_bytes([*lo, *hi])),
            _ => 0,
        };
        let tail = tail.get(2..).unwrap_or_default();
        let (payload, next) = tail.split_at(len.min(tail.len()));
        pair.step(OPS[usize::from(code) % OPS.len()], payload);
        rest = next;
    }
}
