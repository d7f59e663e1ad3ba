//! The WireGuard device seam. Both data paths (our userspace one and the kernel module) are
//! driven through the same typed configuration language, which is the cross-platform UAPI's
//! `set`/`get` model: the agent reconciles the store into [`SetRequest`]s, `wg set` arrives as
//! UAPI text parsed into the same type, and status comes back as a [`DeviceState`].

use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;
use wiremesh_key::{PrivateKey, PublicKey};

/// A change to the device, in UAPI `set` semantics: absent fields are left as they are.
#[derive(Debug, Default, Clone)]
pub struct SetRequest {
    /// Setting the key that is staged as `next_private_key` commits a rotation: sessions made
    /// with it are kept. Any other key replaces the device's identity outright.
    pub private_key: Option<PrivateKey>,
    /// wiremesh extension: stage (Some) or withdraw (None) a successor key, accepted for
    /// handshakes alongside the current one.
    pub next_private_key: Option<Option<PrivateKey>>,
    pub listen_port: Option<u16>,
    /// `Some(0)` removes the mark.
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<PeerChange>,
}

#[derive(Debug, Clone)]
pub struct PeerChange {
    pub public_key: PublicKey,
    pub remove: bool,
    pub update_only: bool,
    /// `Some(None)` clears the preshared key.
    pub preshared_key: Option<Option<Psk>>,
    pub endpoint: Option<SocketAddr>,
    /// `Some(0)` disables keepalives.
    pub persistent_keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpNet>,
    /// wiremesh extension: the peer's announced successor key (Some(None) withdraws it).
    /// Naming a peer by its staged successor key promotes that key.
    pub next_public_key: Option<Option<PublicKey>>,
}

impl PeerChange {
    pub fn new(public_key: PublicKey) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
            next_public_key: None,
        }
    }

    pub fn removal(public_key: PublicKey) -> Self {
        Self {
            remove: true,
            ..Self::new(public_key)
        }
    }
}

/// A preshared key. Secret: `Debug` is redacted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Psk(pub [u8; 32]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// The device as `get` reports it.
#[derive(Debug, Clone)]
pub struct DeviceState {
    pub private_key: Option<PrivateKey>,
    /// The staged successor of our key, public half only.
    pub next_public_key: Option<PublicKey>,
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<PeerState>,
    /// What became of the handshake messages received (the userspace data path's flood
    /// defence); `None` where the data path does not count them (kernel WireGuard).
    pub handshakes: Option<HandshakeStats>,
    /// The data-path process serving the device (the userspace data path as its own process);
    /// `None` for the kernel module and data paths that predate the field.
    pub process: Option<ProcessInfo>,
}

/// Which program serves the device: what an upgrade compares and `encrypt status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub version: String,
    /// In the data path's own PID namespace.
    pub pid: u32,
    /// [`crate::instance`]: which process this is, whatever the PID namespace.
    pub instance: u64,
}

/// Handshake initiations received from the underlay, by outcome: every initiation lands in
/// exactly one field. The cookie fields also count the cookie replies boringtun itself makes for
/// a session's handshake messages under load (bounded by the same budget).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeStats {
    /// Passed the MAC checks and the per-source limit: a Diffie-Hellman computation was spent.
    pub processed: u64,
    /// mac1 matched none of our keys: dropped at the cost of one BLAKE2s.
    pub invalid_mac: u64,
    /// Under load without a valid cookie (mac2): answered with a cookie reply.
    pub cookie_sent: u64,
    /// Under load without a valid cookie, and the cookie-reply budget spent: dropped.
    pub cookie_suppressed: u64,
    /// MACs valid but the source over its handshake rate: dropped before any DH.
    pub rate_limited: u64,
}

impl HandshakeStats {
    /// `(outcome, count)` pairs, as the UAPI and the metrics name them.
    pub fn outcomes(&self) -> [(&'static str, u64); 5] {
        [
            ("processed", self.processed),
            ("invalid_mac", self.invalid_mac),
            ("cookie_sent", self.cookie_sent),
            ("cookie_suppressed", self.cookie_suppressed),
            ("rate_limited", self.rate_limited),
        ]
    }

    /// Sets the count of the outcome named `name`; false for an unknown name.
    pub fn set(&mut self, name: &str, value: u64) -> bool {
        let field = match name {
            "processed" => &mut self.processed,
            "invalid_mac" => &mut self.invalid_mac,
            "cookie_sent" => &mut self.cookie_sent,
            "cookie_suppressed" => &mut self.cookie_suppressed,
            "rate_limited" => &mut self.rate_limited,
            _ => return false,
        };
        *field = value;
        true
    }
}

/// A read of the data path kept for metrics: no private key, no preshared keys.
#[derive(Debug, Clone)]
pub struct DeviceView {
    pub state: DeviceState,
    pub taken: SystemTime,
}

impl DeviceView {
    pub fn of(mut state: DeviceState, taken: SystemTime) -> Self {
        state.private_key = None;
        for p in &mut state.peers {
            p.preshared_key = None;
        }
        Self { state, taken }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PeerState {
    pub public_key: PublicKey,
    pub preshared_key: Option<Psk>,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: u16,
    pub allowed_ips: Vec<IpNet>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub next_public_key: Option<PublicKey>,
    /// The peer key of the session carrying traffic now.
    pub active_key: Option<PublicKey>,
    /// Which of our keys (current, staged) have a session with this peer.
    pub ready_for: Vec<PublicKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("the data path has stopped")]
    Stopped,
    #[error("cannot bind UDP port {port}: {reason}")]
    Bind { port: u16, reason: String },
    #[error("kernel WireGuard: {0}")]
    Kernel(String),
    #[error("{0}")]
    Invalid(String),
}

impl DeviceError {
    /// The errno the UAPI reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::Stopped => libc::ENODEV,
            DeviceError::Bind { .. } => libc::EADDRINUSE,
            DeviceError::Kernel(_) => libc::EIO,
            DeviceError::Invalid(_) => libc::EINVAL,
        }
    }
}
