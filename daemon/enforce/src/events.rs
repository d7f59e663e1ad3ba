//! Flow events from the programs (`wm_events`, a BPF ring buffer pinned with the maps): one per
//! new connection allowed or handed to the proxy, and one per dropped packet. This module
//! decodes them and reads the ring; it must never block the programs (a full ring loses events,
//! never verdicts) and never trusts an event's length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use aya::maps::{Map, MapData, RingBuf};

use crate::maps::{Reason, DIR_INGRESS, VERDICT_ALLOW};
use crate::EnforceError;

/// The ring buffer's pin name under the pin directory.
pub const MAP_EVENTS: &str = "wm_events";

/// `struct flow_event` in policy.h, byte for byte.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawEvent {
    ktime_ns: u64,
    ifindex: u32,
    remote_identity: u32,
    saddr: [u8; 16],
    daddr: [u8; 16],
    sport: u16,
    dport: u16,
    protocol: u8,
    family: u8,
    direction: u8,
    verdict: u8,
    reason: u8,
    tcp_flags: u8,
    pad: [u8; 2],
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub ktime_ns: u64,
    /// The interface the program ran on (a pod's host-side veth, or the WireGuard device).
    pub ifindex: u32,
    /// `true`: entering the endpoint (its ingress policy).
    pub ingress: bool,
    pub allowed: bool,
    pub reason: Reason,
    /// The remote side's security identity (0 when not looked up).
    pub remote_identity: u32,
    /// Addresses and ports; `None` when the packet could not be parsed.
    pub tuple: Option<Tuple>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub source: IpAddr,
    pub destination: IpAddr,
    pub source_port: u16,
    /// The destination port, or the ICMP type.
    pub destination_port: u16,
    pub protocol: u8,
    /// SYN seen (a new TCP connection).
    pub syn: bool,
}

impl FlowEvent {
    /// Decodes one ring buffer record; `None` for a record of the wrong size.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<RawEvent>() {
            return None;
        }
        // SAFETY: the length was checked; RawEvent is repr(C) plain data for which every bit
        // pattern is valid, and read_unaligned copes with the record's alignment.
        let raw: RawEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let addr = |b: [u8; 16]| -> Option<IpAddr> {
            match raw.family {
                4 => Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()),
                6 => Some(Ipv6Addr::from(b).into()),
                _ => None,
            }
        };
        let tuple = match (addr(raw.saddr), addr(raw.daddr)) {
            (Some(source), Some(destination)) => Some(Tuple {
                source,
                destination,
                source_port: raw.sport,
                destination_port: raw.dport,
                protocol: raw.protocol,
                syn: raw.tcp_flags & 2 != 0,
            }),
            _ => None,
        };
        Some(Self {
            ktime_ns: raw.ktime_ns,
            ifindex: raw.ifindex,
            ingress: raw.direction == DIR_INGRESS,
            allowed: raw.verdict == VERDICT_ALLOW,
            reason: Reason::from_code(raw.reason),
            remote_identity: raw.remote_identity,
            tuple,
        })
    }
}

/// Opens the pinned ring buffer (the programs must have been loaded with this pin directory).
pub fn open_events(pin_dir: &Path) -> Result<RingBuf<MapData>, EnforceError> {
    let path = pin_dir.join(MAP_EVENTS);
    let data = MapData::from_pin(&path).map_err(|source| EnforceError::Map {
        name: MAP_EVENTS,
        source: Box::new(source),
    })?;
    RingBuf::try_from(Map::RingBuf(data)).map_err(|source| EnforceError::Map {
        name: MAP_EVENTS,
        source: Box::new(source),
    })
}

/// Every event waiting in `ring`, oldest first.
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(record) = ring.next() {
        if let Some(event) = FlowEvent::decode(&record) {
            out.push(event);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_policy_h() {
        assert_eq!(std::mem::size_of::<RawEvent>(), 64);
    }

    #[test]
    fn decodes_a_drop_and_refuses_a_short_record() {
        let mut raw = [0u8; 64];
        raw[..8].copy_from_slice(&7u64.to_ne_bytes());
        raw[8..12].copy_from_slice(&3u32.to_ne_bytes());
        raw[12..16].copy_from_slice(&300u32.to_ne_bytes());
        raw[16..20].copy_from_slice(&[10, 244, 1, 2]);
        raw[32..36].copy_from_slice(&[10, 244, 2, 3]);
        raw[48..50].copy_from_slice(&40000u16.to_ne_bytes());
        raw[50..52].copy_from_slice(&8080u16.to_ne_bytes());
        raw[52] = 6; // TCP
        raw[53] = 4;
        raw[54] = DIR_INGRESS;
        raw[55] = 1; // drop
        raw[56] = 17; // no-policy
        raw[57] = 2; // SYN
        let e = FlowEvent::decode(&raw).unwrap();
        assert_eq!(
            (e.ifindex, e.remote_identity, e.ingress, e.allowed),
            (3, 300, true, false)
        );
        assert_eq!(e.reason, Reason::NoPolicy);
        let t = e.tuple.unwrap();
        assert_eq!(t.source, "10.244.1.2".parse::<IpAddr>().unwrap());
        assert_eq!(t.destination, "10.244.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(
            (t.source_port, t.destination_port, t.protocol, t.syn),
            (40000, 8080, 6, true)
        );
        assert_eq!(FlowEvent::decode(&raw[..63]), None);
        raw[53] = 0;
        assert_eq!(
            FlowEvent::decode(&raw).unwrap().tuple,
            None,
            "unparsed packet"
        );
    }
}
