//! One WireGuard peer of the userspace device, ready for key rotation on either side: the peer
//! holds one boringtun `Tunn` per (local key, remote key) pair in use, so that a successor key
//! can be handshaken and proven before anything is switched over to it (make before break).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use wiremesh_key::{PrivateKey, PublicKey};

use crate::model::{PeerState, Psk};

/// How long a tunnel replaced by a newer key keeps decrypting packets still in flight.
pub const RETIRE_GRACE: Duration = Duration::from_secs(10);

/// One Noise session state machine between one of our keys and one of the peer's keys.
pub struct Tunnel {
    pub index: u32,
    pub local: PublicKey,
    pub remote: PublicKey,
    pub tunn: Tunn,
    /// Set when the tunnel's keys left the rotation; it then only decrypts, until this instant.
    pub retire_at: Option<Instant>,
    pub last_kick: Option<Instant>,
}

impl Tunnel {
    pub fn has_session(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }
}

pub struct Peer {
    pub id: u32,
    /// The key the peer is known by (`wg show` lists it).
    pub public_key: PublicKey,
    /// The peer's announced successor key, accepted alongside `public_key` during its rotation.
    pub next_key: Option<PublicKey>,
    pub endpoint: Option<SocketAddr>,
    pub preshared_key: Option<Psk>,
    pub keepalive: u16,
    pub tunnels: Vec<Tunnel>,
    /// Bytes carried by tunnels that have since been dropped, so counters never go backwards.
    pub rx_retired: u64,
    pub tx_retired: u64,
}

/// Our own key as the device holds it.
pub struct LocalKey {
    pub key: PrivateKey,
    pub public: PublicKey,
    pub rate_limiter: Arc<RateLimiter>,
}

impl LocalKey {
    pub fn new(key: PrivateKey, handshake_rate_limit: u64) -> Self {
        let public = key.public_key();
        let rate_limiter = Arc::new(RateLimiter::new(
            &x25519_dalek::PublicKey::from(*public.as_bytes()),
            handshake_rate_limit,
        ));
        Self {
            key,
            public,
            rate_limiter,
        }
    }
}

impl Peer {
    pub fn new(id: u32, public_key: PublicKey) -> Self {
        Self {
            id,
            public_key,
            next_key: None,
            endpoint: None,
            preshared_key: None,
            keepalive: 0,
            tunnels: Vec::new(),
            rx_retired: 0,
            tx_retired: 0,
        }
    }

    /// The peer's keys, newest first.
    pub fn remote_keys(&self) -> impl Iterator<Item = PublicKey> + '_ {
        self.next_key
            .into_iter()
            .chain(std::iter::once(self.public_key))
    }

    /// The tunnel to carry outbound traffic: the most preferred one (newest local key, then
    /// newest remote key) that has a session; if none has, the one between our current key and
    /// the peer's published key, which the peer is sure to accept, so that the packet is queued
    /// there while a handshake starts.
    pub fn outbound(&mut self, locals: &[LocalKey]) -> Option<&mut Tunnel> {
        let order = self.preference(locals);
        let current = locals.last()?.public;
        let baseline = self.tunnels.iter().position(|t| {
            t.retire_at.is_none() && t.local == current && t.remote == self.public_key
        });
        let pick = order
            .iter()
            .copied()
            .find(|&i| self.tunnels[i].has_session())
            .or(baseline)?;
        self.tunnels.get_mut(pick)
    }

    /// Indices of live tunnels in preference order.
    pub fn preference(&self, locals: &[LocalKey]) -> Vec<usize> {
        let mut order: Vec<(usize, usize, usize)> = self
            .tunnels
            .iter()
            .enumerate()
            .filter(|(_, t)| t.retire_at.is_none())
            .filter_map(|(i, t)| {
                let l = locals.iter().position(|k| k.public == t.local)?;
                let r = self.remote_keys().position(|k| k == t.remote)?;
                Some((l, r, i))
            })
            .collect();
        order.sort();
        order.into_iter().map(|(_, _, i)| i).collect()
    }

    pub fn tunnel_by_index(&mut self, index: u32) -> Option<&mut Tunnel> {
        self.tunnels.iter_mut().find(|t| t.index == index)
    }

    pub fn tunnel_for(&mut self, local: &PublicKey, remote: &PublicKey) -> Option<&mut Tunnel> {
        self.tunnels
            .iter_mut()
            .find(|t| t.local == *local && t.remote == *remote && t.retire_at.is_none())
    }

    /// The remote key of the tunnel that carries traffic now, if any has a session.
    pub fn active_remote_key(&self, locals: &[LocalKey]) -> Option<PublicKey> {
        let order = self.preference(locals);
        order
            .iter()
            .find(|&&i| self.tunnels[i].has_session())
            .map(|&i| self.tunnels[i].remote)
    }

    /// Whether our key `local` already has a session with the peer: the proof, in-band, that the
    /// peer accepts that key, which a rotation waits for before committing to it.
    pub fn has_session_with(&self, local: &PublicKey) -> bool {
        self.tunnels
            .iter()
            .any(|t| t.local == *local && t.retire_at.is_none() && t.has_session())
    }

    pub fn state(&self, locals: &[LocalKey], allowed_ips: Vec<ipnet::IpNet>) -> PeerState {
        let mut rx = self.rx_retired;
        let mut tx = self.tx_retired;
        let mut latest: Option<Duration> = None;
        for t in &self.tunnels {
            let (since, t_tx, t_rx, _, _) = t.tunn.stats();
            tx += t_tx as u64;
            rx += t_rx as u64;
            if let Some(d) = since {
                latest = Some(latest.map_or(d, |l| l.min(d)));
            }
        }
        PeerState {
            public_key: self.public_key,
            preshared_key: self.preshared_key,
            endpoint: self.endpoint,
            persistent_keepalive: self.keepalive,
            allowed_ips,
            last_handshake: latest.and_then(|d| SystemTime::now().checked_sub(d)),
            rx_bytes: rx,
            tx_bytes: tx,
            next_public_key: self.next_key,
            active_key: self.active_remote_key(locals),
            ready_for: locals
                .iter()
                .filter(|k| self.has_session_with(&k.public))
                .map(|k| k.public)
                .collect(),
        }
    }

    pub fn drop_tunnel(&mut self, pos: usize) -> Tunnel {
        let t = self.tunnels.swap_remove(pos);
        let (_, tx, rx, _, _) = t.tunn.stats();
        self.tx_retired += tx as u64;
        self.rx_retired += rx as u64;
        t
    }
}

pub fn new_tunn(
    local: &LocalKey,
    remote: PublicKey,
    index: u32,
    preshared_key: Option<Psk>,
    keepalive: u16,
) -> Tunn {
    Tunn::new(
        local.key.secret().clone(),
        x25519_dalek::PublicKey::from(*remote.as_bytes()),
        preshared_key.map(|p| p.0),
        (keepalive != 0).then_some(keepalive),
        index,
        Some(local.rate_limiter.clone()),
    )
}
