//! The userspace WireGuard device as a pure state machine: peers, their tunnels, cryptokey
//! routing and the per-packet paths. No sockets, no TUN: every output goes through [`Io`], so the
//! same code runs on the data-path thread and in tests that wire two devices together in memory.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use wiremesh_key::{PrivateKey, PublicKey};

use super::allowed_ips::AllowedIps;
use super::gate::{Gate, UNDER_LOAD as HANDSHAKE_RATE_LIMIT};
use super::peer::{LocalKey, Peer};
use crate::model::DeviceState;

mod apply;

/// WireGuard's message type of a cookie reply, which authenticates nothing.
const COOKIE_REPLY: u8 = 3;
/// Large enough for any IP packet plus WireGuard's overhead.
pub const BUF_SIZE: usize = 65_535 + 256;
/// How often a preferred tunnel without a session is offered a handshake while an older one
/// carries the traffic (the rotation's make-before-break step).
const KICK_EVERY: Duration = Duration::from_secs(1);

/// Where the device's outputs go.
pub trait Io {
    /// Send a WireGuard message over the underlay.
    fn send(&mut self, to: SocketAddr, packet: &[u8]);
    /// Hand a decrypted, source-checked IP packet to the host.
    fn deliver(&mut self, packet: &[u8]);
    /// A data message, handshake response or cookie reply naming a receiver index this device
    /// never gave out. During an upgrade it belongs to the predecessor's sessions, which the
    /// shell forwards it to; otherwise it is dropped.
    fn unrouted(&mut self, _from: SocketAddr, _datagram: &[u8]) {}
}

pub struct Device {
    /// Our keys, newest first: the staged successor (if any), then the current key.
    locals: Vec<LocalKey>,
    peers: HashMap<u32, Peer>,
    by_key: HashMap<PublicKey, u32>,
    by_index: HashMap<u32, u32>,
    allowed: AllowedIps<u32>,
    next_id: u32,
    next_index: u32,
    /// Peers added since the last flush: they get a handshake at once (see `flush_new_peers`).
    new_peers: Vec<u32>,
    /// The flood defence in front of every handshake message.
    gate: Gate,
    out: Vec<u8>,
}

impl Device {
    pub fn new(key: PrivateKey, now: Instant) -> Self {
        Self {
            locals: vec![LocalKey::new(key, HANDSHAKE_RATE_LIMIT)],
            peers: HashMap::new(),
            by_key: HashMap::new(),
            by_index: HashMap::new(),
            allowed: AllowedIps::new(),
            next_id: 1,
            next_index: 1,
            new_peers: Vec::new(),
            gate: Gate::new(now),
            out: vec![0; BUF_SIZE],
        }
    }

    fn current(&self) -> &LocalKey {
        self.locals
            .last()
            .expect("the device always holds its current key")
    }

    fn staged(&self) -> Option<&LocalKey> {
        (self.locals.len() > 1).then(|| &self.locals[0])
    }

    /// A packet the kernel routed into the interface: encrypt it for the peer owning its
    /// destination, or drop it. Nothing ever leaves in the clear.
    pub fn handle_tun_packet(&mut self, packet: &[u8], io: &mut impl Io) {
        let Some(dst) = Tunn::dst_address(packet) else {
            return;
        };
        let Some(id) = self.allowed.lookup(dst) else {
            tracing::trace!(%dst, "no peer for destination; dropped");
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let endpoint = peer.endpoint;
        let Some(tunnel) = peer.outbound(&self.locals) else {
            return;
        };
        match tunnel.tunn.encapsulate(packet, &mut self.out) {
            TunnResult::WriteToNetwork(p) => match endpoint {
                Some(ep) => io.send(ep, p),
                None => tracing::trace!(peer = %peer.public_key, "peer has no endpoint; dropped"),
            },
            TunnResult::Err(e) => tracing::trace!(error = ?e, "encapsulate"),
            _ => {}
        }
    }

    /// A datagram from the underlay, received at `now`.
    pub fn handle_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        io: &mut impl Io,
    ) {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let Some((id, index)) = self.route_datagram(datagram, from, now, io) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(tunnel) = peer.tunnel_by_index(index) else {
            return;
        };
        let mut input = datagram;
        let mut authenticated = false;
        loop {
            match tunnel
                .tunn
                .decapsulate(Some(from.ip()), input, &mut self.out)
            {
                TunnResult::Done => break,
                TunnResult::Err(e) => {
                    tracing::trace!(error = ?e, "decapsulate");
                    break;
                }
                TunnResult::WriteToNetwork(p) if p.first() == Some(&COOKIE_REPLY) => {
                    // boringtun counts load on its own too; its cookie replies are bounded
                    // like ours and prove nothing about the sender (a replayed initiation
                    // earns one), so they never move the endpoint.
                    if self.gate.cookie(from.ip(), now) {
                        io.send(from, p);
                    }
                    break;
                }
                TunnResult::WriteToNetwork(p) => {
                    authenticated = true;
                    io.send(from, p);
                    // Queued packets and handshake replies follow: keep draining.
                    input = &[];
                }
                TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                    authenticated = true;
                    deliver(&self.allowed, id, p, io);
                    break;
                }
            }
        }
        if authenticated {
            // Roaming: the last authenticated source is where the peer is now.
            peer.endpoint = Some(from);
        }
    }

    /// Which peer and tunnel a datagram belongs to: by receiver index, or for a handshake
    /// initiation by the (MAC-checked, then decrypted) static keys of both sides. Initiations
    /// pass the flood defence first.
    fn route_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        io: &mut impl Io,
    ) -> Option<(u32, u32)> {
        let index = match Tunn::parse_incoming_packet(datagram).ok()? {
            Packet::HandshakeInit(init) => {
                let addressed = self.admit_handshake(datagram, from, now, io)?;
                let local = &self.locals[addressed];
                let public = x25519_dalek::PublicKey::from(*local.public.as_bytes());
                let half = parse_handshake_anon(local.key.secret(), &public, &init).ok()?;
                let remote = PublicKey::from_bytes(half.peer_static_public);
                let Some(&id) = self.by_key.get(&remote) else {
                    tracing::debug!(%from, peer = %remote, "handshake from unknown key ignored");
                    return None;
                };
                let local_pub = local.public;
                let peer = self.peers.get_mut(&id)?;
                return peer.tunnel_for(&local_pub, &remote).map(|t| (id, t.index));
            }
            // A response costs DH only if its receiver index names a handshake we have in
            // flight; boringtun checks its MACs (and demands a cookie under load) itself.
            Packet::HandshakeResponse(p) => p.receiver_idx >> 8,
            Packet::PacketCookieReply(p) => p.receiver_idx >> 8,
            Packet::PacketData(p) => p.receiver_idx >> 8,
        };
        let routed = self.by_index.get(&index).map(|&id| (id, index));
        if routed.is_none() {
            io.unrouted(from, datagram);
        }
        routed
    }

    /// The flood defence for an initiation: mac1 (which also names which of our keys the sender
    /// addressed, before any Diffie-Hellman is spent), a cookie demanded under load, the
    /// per-source limit. Returns the index of the addressed key in `locals` if it may go on.
    fn admit_handshake(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        io: &mut impl Io,
    ) -> Option<usize> {
        for (i, local) in self.locals.iter().enumerate() {
            match local
                .rate_limiter
                .verify_packet(Some(from.ip()), datagram, &mut self.out)
            {
                Ok(_) => return self.gate.admit(from.ip(), now).then_some(i),
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    if self.gate.cookie(from.ip(), now) {
                        io.send(from, cookie);
                    }
                    return None;
                }
                Err(_) => {}
            }
        }
        self.gate.invalid_mac();
        None
    }

    /// Drives WireGuard's timers, offers handshakes on preferred tunnels that lack a session,
    /// and drops retired tunnels whose grace period is over.
    pub fn tick(&mut self, now: Instant, io: &mut impl Io) {
        self.gate.expire(now);
        for peer in self.peers.values_mut() {
            let endpoint = peer.endpoint;
            let active = peer.tunnels.iter().any(|t| t.has_session());
            let preferred = peer.preference(&self.locals).first().copied();
            for (i, t) in peer.tunnels.iter_mut().enumerate() {
                let mut res = t.tunn.update_timers(&mut self.out);
                let kick = active
                    && Some(i) == preferred
                    && !t.has_session()
                    && t.last_kick
                        .is_none_or(|k| now.duration_since(k) >= KICK_EVERY);
                if kick && matches!(res, TunnResult::Done) {
                    t.last_kick = Some(now);
                    res = t.tunn.format_handshake_initiation(&mut self.out, true);
                }
                match (res, endpoint) {
                    (TunnResult::WriteToNetwork(p), Some(ep)) => io.send(ep, p),
                    (TunnResult::Err(e), _) => tracing::trace!(error = ?e, "timers"),
                    _ => {}
                }
            }
            while let Some(pos) = peer
                .tunnels
                .iter()
                .position(|t| t.retire_at.is_some_and(|r| r <= now))
            {
                let t = peer.drop_tunnel(pos);
                self.by_index.remove(&t.index);
            }
        }
    }

    pub fn state(&self, listen_port: u16, fwmark: u32) -> DeviceState {
        let mut peers: Vec<_> = self
            .peers
            .values()
            .map(|p| p.state(&self.locals, self.allowed.networks_of(p.id)))
            .collect();
        peers.sort_by_key(|p| p.public_key);
        DeviceState {
            private_key: Some(self.current().key.clone()),
            next_public_key: self.staged().map(|k| k.public),
            listen_port,
            fwmark,
            peers,
            handshakes: Some(self.gate.stats()),
            process: None,
        }
    }

    /// Starts a handshake with each peer added since the last call. WireGuard proper waits for
    /// the first packet, but a mesh node whose data path was just (re)started must not wait: its
    /// peers may still be sending on sessions it has forgotten, and would only notice after
    /// their keepalive timeout (15 s). One handshake makes every peer switch at once.
    pub fn flush_new_peers(&mut self, io: &mut impl Io) {
        for id in std::mem::take(&mut self.new_peers) {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let Some(endpoint) = peer.endpoint else {
                continue;
            };
            let Some(tunnel) = peer.outbound(&self.locals) else {
                continue;
            };
            if let TunnResult::WriteToNetwork(p) = tunnel
                .tunn
                .format_handshake_initiation(&mut self.out, false)
            {
                io.send(endpoint, p);
            }
        }
    }

    /// The next receiver index this device would give out: a successor starts above it, so
    /// that the indices of this device's sessions stay unknown to it (and are forwarded here).
    pub fn next_index(&self) -> u32 {
        self.next_index
    }

    /// Gives out receiver indices from `base` on (see [`Device::next_index`]).
    pub fn set_index_base(&mut self, base: u32) {
        self.next_index = base.max(1) & 0x00ff_ffff;
    }

    /// The whole configuration as one `set` request, private keys included: what a successor
    /// needs to serve the same peers (see [`crate::handover`]).
    pub fn export(&self, listen_port: u16, fwmark: u32) -> crate::model::SetRequest {
        use crate::model::{PeerChange, SetRequest};
        let mut ids: Vec<_> = self.peers.keys().copied().collect();
        ids.sort_unstable();
        let peers = ids
            .iter()
            .filter_map(|id| self.peers.get(id))
            .map(|p| PeerChange {
                preshared_key: Some(p.preshared_key),
                endpoint: p.endpoint,
                persistent_keepalive: Some(p.keepalive),
                replace_allowed_ips: true,
                allowed_ips: self.allowed.networks_of(p.id),
                next_public_key: Some(p.next_key),
                ..PeerChange::new(p.public_key)
            })
            .collect();
        SetRequest {
            private_key: Some(self.current().key.clone()),
            next_private_key: Some(self.staged().map(|k| k.key.clone())),
            listen_port: Some(listen_port),
            fwmark: Some(fwmark),
            replace_peers: true,
            peers,
        }
    }

    /// Whether every peer with an endpoint has a session: a successor's cue that its
    /// predecessor's sessions are no longer needed.
    pub fn all_sessions_up(&self) -> bool {
        self.peers
            .values()
            .filter(|p| p.endpoint.is_some())
            .all(|p| p.tunnels.iter().any(|t| t.has_session()))
    }

    /// Called once a second: handshake rate limits are per second.
    pub fn reset_rate_limiters(&self) {
        for k in &self.locals {
            k.rate_limiter.reset_count();
        }
    }
}

/// Cryptokey routing, inbound: a decrypted packet is accepted only if its source address belongs
/// to the peer that sent it. This is what lets every later stage trust the inner source address.
/// The source is read from the bytes delivered: boringtun cuts the packet to its header's total
/// length after reading the source, so a peer can make it shorter than its own header.
fn deliver(allowed: &AllowedIps<u32>, id: u32, packet: &[u8], io: &mut impl Io) {
    let Some(src) = source_of(packet) else {
        tracing::trace!(
            len = packet.len(),
            "decrypted packet shorter than its IP header; dropped"
        );
        return;
    };
    if allowed.lookup(src) != Some(id) {
        tracing::trace!(%src, "source not in sending peer's allowed IPs; dropped");
        return;
    }
    io.deliver(packet);
}

/// The source address of an IP packet holding at least a whole fixed header.
fn source_of(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&packet[12..16]).ok()?)),
        6 if packet.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?)),
        _ => None,
    }
}
