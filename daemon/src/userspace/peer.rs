//! One WireGuard peer of the userspace device: boringtun's `Tunn` (the Noise state machine) plus
//! what the device needs around it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::Tunn;
use keymgr::{PrivateKey, PublicKey};

use crate::device::{PeerState, Psk};

pub struct Peer {
    pub public_key: PublicKey,
    pub index: u32,
    pub tunn: Tunn,
    pub endpoint: Option<SocketAddr>,
    pub preshared_key: Option<Psk>,
    pub keepalive: u16,
}

impl Peer {
    pub fn new(
        key: &PrivateKey,
        public_key: PublicKey,
        index: u32,
        preshared_key: Option<Psk>,
        keepalive: u16,
        rate_limiter: Arc<RateLimiter>,
    ) -> Self {
        let tunn = new_tunn(
            key,
            public_key,
            index,
            preshared_key,
            keepalive,
            rate_limiter,
        );
        Self {
            public_key,
            index,
            tunn,
            endpoint: None,
            preshared_key,
            keepalive,
        }
    }

    /// Rebuilds the Noise state with new parameters. boringtun fixes the preshared key and the
    /// keepalive at construction, so changing either costs one new handshake; packets sent
    /// meanwhile wait in `Tunn`'s queue.
    pub fn rebuild(
        &mut self,
        key: &PrivateKey,
        preshared_key: Option<Psk>,
        keepalive: u16,
        rate_limiter: Arc<RateLimiter>,
    ) {
        self.tunn = new_tunn(
            key,
            self.public_key,
            self.index,
            preshared_key,
            keepalive,
            rate_limiter,
        );
        self.preshared_key = preshared_key;
        self.keepalive = keepalive;
    }

    pub fn state(&self, allowed_ips: Vec<ipnet::IpNet>) -> PeerState {
        let (since_handshake, tx, rx, _, _) = self.tunn.stats();
        PeerState {
            public_key: self.public_key,
            preshared_key: self.preshared_key,
            endpoint: self.endpoint,
            persistent_keepalive: self.keepalive,
            allowed_ips,
            last_handshake: since_handshake.and_then(|d| SystemTime::now().checked_sub(d)),
            rx_bytes: rx as u64,
            tx_bytes: tx as u64,
        }
    }
}

fn new_tunn(
    key: &PrivateKey,
    public_key: PublicKey,
    index: u32,
    preshared_key: Option<Psk>,
    keepalive: u16,
    rate_limiter: Arc<RateLimiter>,
) -> Tunn {
    Tunn::new(
        key.secret().clone(),
        x25519_dalek::PublicKey::from(*public_key.as_bytes()),
        preshared_key.map(|p| p.0),
        (keepalive != 0).then_some(keepalive),
        index,
        Some(rate_limiter),
    )
}
