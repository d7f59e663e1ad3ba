//! The userspace WireGuard device: peers, cryptokey routing and the per-packet paths, driven by
//! the event loop in `mod.rs`. Everything here runs on the data-path thread and owns its state
//! outright; the control plane reaches it only through `Command`s.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use keymgr::{PrivateKey, PublicKey};
use tokio::net::UdpSocket;

use super::allowed_ips::AllowedIps;
use super::peer::Peer;
use super::tun::Tun;
use crate::device::{DeviceError, DeviceState, PeerChange, SetRequest};

/// Handshake initiations per second before cookies are demanded (as boringtun's device uses).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Large enough for any IP packet plus WireGuard's overhead.
pub const BUF_SIZE: usize = 65_535 + 256;

pub struct Sockets {
    pub v4: UdpSocket,
    pub v6: Option<UdpSocket>,
    pub port: u16,
}

impl Sockets {
    pub fn bind(port: u16, fwmark: u32) -> Result<Self, DeviceError> {
        let bind_err = |e: io::Error| DeviceError::Bind {
            port,
            reason: e.to_string(),
        };
        let v4 = udp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), fwmark).map_err(bind_err)?;
        let port = v4.local_addr().map_err(bind_err)?.port();
        // IPv6 is optional: a node whose kernel has it disabled still runs over IPv4.
        let v6 = match udp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), fwmark) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::info!(port, error = %e, "no IPv6 underlay socket; IPv4 only");
                None
            }
        };
        Ok(Self { v4, v6, port })
    }

    fn set_mark(&self, mark: u32) -> Result<(), DeviceError> {
        let socks = std::iter::once(&self.v4).chain(self.v6.as_ref());
        for s in socks {
            socket2::SockRef::from(s)
                .set_mark(mark)
                .map_err(|e| DeviceError::Invalid(format!("fwmark {mark}: {e}")))?;
        }
        Ok(())
    }

    fn send(&self, packet: &[u8], to: SocketAddr) {
        let sock = match (to, &self.v6) {
            (SocketAddr::V6(_), Some(v6)) => v6,
            _ => &self.v4,
        };
        if let Err(e) = sock.try_send_to(packet, to) {
            tracing::trace!(%to, error = %e, "underlay send dropped");
        }
    }
}

fn udp(addr: SocketAddr, fwmark: u32) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if fwmark != 0 {
        sock.set_mark(fwmark)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

pub struct Device {
    key: PrivateKey,
    public: x25519_dalek::PublicKey,
    rate_limiter: Arc<RateLimiter>,
    pub tun: Arc<Tun>,
    pub sockets: Sockets,
    fwmark: u32,
    peers: HashMap<u32, Peer>,
    by_key: HashMap<PublicKey, u32>,
    allowed: AllowedIps<u32>,
    next_index: u32,
    out: Vec<u8>,
}

impl Device {
    pub fn new(key: PrivateKey, tun: Arc<Tun>, sockets: Sockets) -> Self {
        let public = x25519_dalek::PublicKey::from(key.secret());
        Self {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            key,
            public,
            tun,
            sockets,
            fwmark: 0,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            allowed: AllowedIps::new(),
            next_index: 1,
            out: vec![0; BUF_SIZE],
        }
    }

    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.rate_limiter
    }

    /// A packet the kernel routed into the interface: encrypt it for the peer owning its
    /// destination, or drop it (never send it anywhere in the clear).
    pub fn handle_tun_packet(&mut self, packet: &[u8]) {
        let Some(dst) = Tunn::dst_address(packet) else {
            return;
        };
        let Some(idx) = self.allowed.lookup(dst) else {
            tracing::trace!(%dst, "no peer for destination; dropped");
            return;
        };
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        match peer.tunn.encapsulate(packet, &mut self.out) {
            TunnResult::WriteToNetwork(p) => match peer.endpoint {
                Some(ep) => self.sockets.send(p, ep),
                None => tracing::trace!(peer = %peer.public_key, "peer has no endpoint; dropped"),
            },
            TunnResult::Err(e) => {
                tracing::trace!(peer = %peer.public_key, error = ?e, "encapsulate")
            }
            _ => {}
        }
    }

    /// A datagram from the underlay.
    pub fn handle_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let Some(idx) = self.peer_for_datagram(datagram, from) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        let mut first = true;
        loop {
            let input = if first { datagram } else { &[][..] };
            let res = peer.tunn.decapsulate(Some(from.ip()), input, &mut self.out);
            first = false;
            match res {
                TunnResult::Done => return,
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %peer.public_key, error = ?e, "decapsulate");
                    return;
                }
                TunnResult::WriteToNetwork(p) => {
                    peer.endpoint = Some(from);
                    self.sockets.send(p, from);
                    // Queued packets and handshake replies: keep draining.
                }
                TunnResult::WriteToTunnelV4(p, src) => {
                    peer.endpoint = Some(from);
                    deliver(&self.tun, &self.allowed, idx, p, IpAddr::V4(src));
                    return;
                }
                TunnResult::WriteToTunnelV6(p, src) => {
                    peer.endpoint = Some(from);
                    deliver(&self.tun, &self.allowed, idx, p, IpAddr::V6(src));
                    return;
                }
            }
        }
    }

    fn peer_for_datagram(&mut self, datagram: &[u8], from: SocketAddr) -> Option<u32> {
        match Tunn::parse_incoming_packet(datagram).ok()? {
            Packet::HandshakeInit(init) => {
                // MAC and load check before the Diffie-Hellman that identifies the sender.
                match self
                    .rate_limiter
                    .verify_packet(Some(from.ip()), datagram, &mut self.out)
                {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        self.sockets.send(cookie, from);
                        return None;
                    }
                    Err(_) => return None,
                }
                let half = parse_handshake_anon(self.key.secret(), &self.public, &init).ok()?;
                let key = PublicKey::from_bytes(half.peer_static_public);
                let idx = self.by_key.get(&key).copied();
                if idx.is_none() {
                    tracing::debug!(%from, peer = %key, "handshake from unknown peer ignored");
                }
                idx
            }
            Packet::HandshakeResponse(p) => Some(p.receiver_idx >> 8),
            Packet::PacketCookieReply(p) => Some(p.receiver_idx >> 8),
            Packet::PacketData(p) => Some(p.receiver_idx >> 8),
        }
    }

    /// Drives WireGuard's timers: handshake retries, rekeying, keepalives, session expiry.
    pub fn tick(&mut self) {
        for peer in self.peers.values_mut() {
            match peer.tunn.update_timers(&mut self.out) {
                TunnResult::WriteToNetwork(p) => {
                    if let Some(ep) = peer.endpoint {
                        self.sockets.send(p, ep);
                    }
                }
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %peer.public_key, error = ?e, "timers")
                }
                _ => {}
            }
        }
    }

    pub fn state(&self) -> DeviceState {
        let mut peers: Vec<_> = self
            .peers
            .values()
            .map(|p| p.state(self.allowed.networks_of(p.index)))
            .collect();
        peers.sort_by_key(|p| p.public_key);
        DeviceState {
            private_key: Some(self.key.clone()),
            listen_port: self.sockets.port,
            fwmark: self.fwmark,
            peers,
        }
    }

    pub fn apply(&mut self, req: SetRequest) -> Result<(), DeviceError> {
        if let Some(port) = req.listen_port.filter(|p| *p != self.sockets.port) {
            // Bind the new sockets before dropping the old ones: a failed rebind changes nothing.
            self.sockets = Sockets::bind(port, self.fwmark)?;
        }
        if let Some(mark) = req.fwmark.filter(|m| *m != self.fwmark) {
            self.sockets.set_mark(mark)?;
            self.fwmark = mark;
        }
        if let Some(key) = req.private_key {
            self.set_private_key(key);
        }
        if req.replace_peers {
            self.peers.clear();
            self.by_key.clear();
            self.allowed = AllowedIps::new();
        }
        for change in req.peers {
            self.apply_peer(change);
        }
        Ok(())
    }

    fn set_private_key(&mut self, key: PrivateKey) {
        if key.public_key() == PublicKey::from_bytes(self.public.to_bytes()) {
            return;
        }
        self.public = x25519_dalek::PublicKey::from(key.secret());
        self.rate_limiter = Arc::new(RateLimiter::new(&self.public, HANDSHAKE_RATE_LIMIT));
        for peer in self.peers.values_mut() {
            peer.tunn.set_static_private(
                key.secret().clone(),
                self.public,
                Some(self.rate_limiter.clone()),
            );
        }
        self.key = key;
    }

    fn apply_peer(&mut self, change: PeerChange) {
        let existing = self.by_key.get(&change.public_key).copied();
        if change.remove {
            if let Some(idx) = existing {
                self.peers.remove(&idx);
                self.by_key.remove(&change.public_key);
                self.allowed.remove_value(idx);
            }
            return;
        }
        let idx = match existing {
            Some(idx) => idx,
            None if change.update_only => return,
            None => {
                if change.public_key == PublicKey::from_bytes(self.public.to_bytes()) {
                    tracing::warn!("refusing to add this device's own public key as a peer");
                    return;
                }
                let idx = self.allocate_index();
                let peer = Peer::new(
                    &self.key,
                    change.public_key,
                    idx,
                    change.preshared_key.flatten(),
                    change.persistent_keepalive.unwrap_or(0),
                    self.rate_limiter.clone(),
                );
                self.peers.insert(idx, peer);
                self.by_key.insert(change.public_key, idx);
                idx
            }
        };
        let peer = self
            .peers
            .get_mut(&idx)
            .expect("by_key and peers are kept in step");
        if existing.is_some() {
            let psk = change.preshared_key.unwrap_or(peer.preshared_key);
            let keepalive = change.persistent_keepalive.unwrap_or(peer.keepalive);
            if psk != peer.preshared_key || keepalive != peer.keepalive {
                peer.rebuild(&self.key, psk, keepalive, self.rate_limiter.clone());
            }
        }
        if let Some(ep) = change.endpoint {
            peer.endpoint = Some(SocketAddr::new(ep.ip().to_canonical(), ep.port()));
        }
        if change.replace_allowed_ips {
            self.allowed.remove_value(idx);
        }
        for net in change.allowed_ips {
            self.allowed.insert(net, idx);
        }
    }

    /// Session indices carry the peer in their upper 24 bits; pick one no live peer uses.
    fn allocate_index(&mut self) -> u32 {
        loop {
            let idx = self.next_index;
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if idx != 0 && !self.peers.contains_key(&idx) {
                return idx;
            }
        }
    }
}

/// Cryptokey routing, inbound: a decrypted packet is accepted only if its source address belongs
/// to the peer that sent it. This is what lets every later stage trust the inner source address.
fn deliver(tun: &Tun, allowed: &AllowedIps<u32>, idx: u32, packet: &[u8], src: IpAddr) {
    if allowed.lookup(src) != Some(idx) {
        tracing::trace!(%src, "source not in sending peer's allowed IPs; dropped");
        return;
    }
    if let Err(e) = tun.write(packet) {
        tracing::trace!(error = %e, "TUN write dropped");
    }
}
