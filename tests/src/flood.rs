//! A WireGuard handshake flooder for the flood test: initiations with a valid mac1 (anyone can
//! compute it, the responder's public key being public) and garbage after it, sent at a fixed
//! rate from one address of a lab namespace.
//!
//! mac1 = BLAKE2s-128 keyed by BLAKE2s-256("mac1----" || responder's public key) over the
//! message up to mac1 (WireGuard paper, §5.4.4). The initiation's ephemeral key, encrypted static
//! key and timestamp are pseudo-random, so the responder can tell the flood apart from a peer only
//! by doing Diffie-Hellman, which is what its defences must spare it.
//!
//! Bounded: it stops after `duration` or `max_packets`, whichever comes first. It must never
//! send anywhere but the lab address it is given, from inside the lab namespace it is given.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use nix::sched::{setns, CloneFlags};

use crate::error::{LabError, Result};

/// The size of a handshake initiation, and where its MACs start.
pub const INITIATION_LEN: usize = 148;
const MAC1_AT: usize = 116;
const MAC2_AT: usize = 132;
/// Distinct initiations sent in turn (each computed once: the flooder spends its CPU sending).
const DISTINCT: usize = 1024;

/// What to flood, from where, how fast and for how long.
#[derive(Debug, Clone)]
pub struct FloodSpec {
    /// The lab namespace to send from (`/run/netns/<name>`).
    pub netns: String,
    /// The address to send from: it must be configured in `netns`.
    pub source: Ipv4Addr,
    pub target: SocketAddrV4,
    /// The target's WireGuard public key.
    pub responder_public: [u8; 32],
    pub per_second: u32,
    pub duration: Duration,
}

/// What the flooder did.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    pub sent: u64,
    pub send_errors: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    /// Initiations sent per second, measured.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The key mac1 is computed with: HASH("mac1----" || responder's public key).
pub fn mac1_key(responder_public: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, b"mac1----");
    Digest::update(&mut h, responder_public);
    h.finalize().into()
}

/// A handshake initiation numbered `n`, with a valid mac1 for `mac1_key` and no mac2.
pub fn initiation(mac1_key: &[u8; 32], n: u32) -> [u8; INITIATION_LEN] {
    let mut msg = [0u8; INITIATION_LEN];
    msg[0] = 1;
    msg[4..8].copy_from_slice(&n.to_le_bytes());
    // Deterministic filler for ephemeral, static and timestamp: any bytes will do.
    let mut state = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in &mut msg[8..MAC1_AT] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    let mut mac =
        Blake2sMac::<U16>::new_from_slice(mac1_key).expect("a 32-byte BLAKE2s key is valid");
    Update::update(&mut mac, &msg[..MAC1_AT]);
    msg[MAC1_AT..MAC2_AT].copy_from_slice(&mac.finalize_fixed());
    msg
}

/// Floods `spec.target` from inside `spec.netns`; returns when done (bounded by the spec).
pub fn flood(spec: &FloodSpec) -> Result<FloodReport> {
    let spec = spec.clone();
    std::thread::Builder::new()
        .name("flooder".into())
        .spawn(move || flood_in_netns(&spec))
        .map_err(|e| LabError::Flood(format!("spawning the flooder thread: {e}")))?
        .join()
        .map_err(|_| LabError::Flood("the flooder thread panicked".into()))?
}

/// Runs on a thread of its own: `setns` moves only the calling thread into the namespace, and a
/// socket belongs to the namespace it was created in.
fn flood_in_netns(spec: &FloodSpec) -> Result<FloodReport> {
    let path = format!("/run/netns/{}", spec.netns);
    let ns = File::open(&path).map_err(|e| LabError::Flood(format!("opening {path}: {e}")))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| LabError::Flood(format!("entering netns {}: {e}", spec.netns)))?;
    let socket = UdpSocket::bind(SocketAddr::from((spec.source, 0))).map_err(|e| {
        LabError::Flood(format!(
            "binding the flooder to {} in {}: {e}",
            spec.source, spec.netns
        ))
    })?;
    let key = mac1_key(&spec.responder_public);
    let packets: Vec<[u8; INITIATION_LEN]> =
        (0..DISTINCT as u32).map(|n| initiation(&key, n)).collect();
    let max = u64::from(spec.per_second) * spec.duration.as_secs().max(1);
    let (mut sent, mut send_errors) = (0u64, 0u64);
    let start = Instant::now();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= spec.duration || sent >= max {
            break;
        }
        let due = ((elapsed.as_secs_f64() * f64::from(spec.per_second)) as u64).min(max);
        while sent < due {
            let packet = &packets[(sent % DISTINCT as u64) as usize];
            match socket.send_to(packet, spec.target) {
                Ok(_) => sent += 1,
                Err(_) => {
                    // The count of what left is what matters; an error (a full queue) is
                    // counted apart and the packet retried on the next round.
                    send_errors += 1;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(FloodReport {
        sent,
        send_errors,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known-answer check: boringtun's own mac1 check accepts what we build is proven in the
    /// lab (the data path counts the flood as MAC-valid); here, the layout and determinism.
    #[test]
    fn initiation_layout() {
        let key = mac1_key(&[7; 32]);
        let a = initiation(&key, 5);
        assert_eq!(a[0], 1);
        assert_eq!(&a[1..4], &[0, 0, 0]);
        assert_eq!(&a[4..8], &5u32.to_le_bytes());
        assert_eq!(&a[MAC2_AT..], &[0; 16], "no mac2");
        assert_ne!(&a[MAC1_AT..MAC2_AT], &[0; 16]);
        assert_eq!(a, initiation(&key, 5));
        assert_ne!(a[8..MAC1_AT], initiation(&key, 6)[8..MAC1_AT]);
        let other = initiation(&mac1_key(&[8; 32]), 5);
        assert_ne!(
            a[MAC1_AT..MAC2_AT],
            other[MAC1_AT..MAC2_AT],
            "mac1 depends on the key"
        );
    }
}
