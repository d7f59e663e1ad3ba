//! The naive reference the offload properties compare `tun-rs` against: packet layout,
//! RFC 1071 checksums, a segmenter and a coalescer written for clarity, not speed.

use std::collections::BTreeMap;

use tun_rs::{
    VirtioNetHdr, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
};

use crate::userspace::tun::HEADROOM;

// Values from linux/virtio_net.h that tun-rs does not re-export.
pub(super) const F_NEEDS_CSUM: u8 = 1;
pub(super) const GSO_ECN: u8 = 0x80;

pub(super) const TCP: u8 = 6;
pub(super) const UDP: u8 = 17;
pub(super) const FIN: u8 = 0x01;
pub(super) const PSH: u8 = 0x08;
pub(super) const ACK: u8 = 0x10;
pub(super) const ECE: u8 = 0x40;
pub(super) const CWR: u8 = 0x80;
/// Where the flags are in a TCP header.
pub(super) const FLAGS: usize = 13;

pub(super) const MTU: usize = 1500;
/// With at most 120 bytes of headers, every super-packet stays under 64 KiB.
pub(super) const MAX_PAYLOAD: usize = 60_000;
/// What the data path's inbox allocates per packet: GRO grows a flow's first buffer in place,
/// and only where the capacity is already there.
pub(super) const GRO_CAPACITY: usize = 2 * HEADROOM + 65_535;

/// The one's-complement sum of big-endian 16-bit words (RFC 1071), unfolded; an odd last byte
/// is padded with zero.
pub(super) fn sum(bytes: &[u8], acc: u64) -> u64 {
    bytes.chunks(2).fold(acc, |acc, w| {
        acc + u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))
    })
}

pub(super) fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc >> 16) + (acc & 0xffff);
    }
    acc as u16
}

pub(super) fn get16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

pub(super) fn put16(p: &mut [u8], at: usize, v: u16) {
    p[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

pub(super) fn len16(n: usize) -> u16 {
    u16::try_from(n).expect("packets stay under 64 KiB")
}

/// Packets, or the segments of a super-packet, in order.
pub(super) type Packets = Vec<Vec<u8>>;

/// Where the headers of an IPv4/IPv6 + TCP/UDP packet are.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    pub(super) v6: bool,
    pub(super) proto: u8,
    pub(super) ip_len: usize,
    pub(super) l4_len: usize,
}

impl Layout {
    pub(super) fn of(p: &[u8]) -> Self {
        let v6 = p[0] >> 4 == 6;
        let (proto, ip_len) = match v6 {
            true => (p[6], 40),
            false => (p[9], usize::from(p[0] & 0xf) * 4),
        };
        let l4_len = match proto {
            TCP => usize::from(p[ip_len + 12] >> 4) * 4,
            _ => 8,
        };
        Layout {
            v6,
            proto,
            ip_len,
            l4_len,
        }
    }

    pub(super) fn headers(self) -> usize {
        self.ip_len + self.l4_len
    }

    pub(super) fn csum_at(self) -> usize {
        self.ip_len + if self.proto == TCP { 16 } else { 6 }
    }

    /// The pseudo-header sum (RFC 9293, RFC 768, RFC 8200 §8.1) for the packet as long as it is.
    pub(super) fn pseudo(self, p: &[u8]) -> u64 {
        let addrs = if self.v6 { &p[8..40] } else { &p[12..20] };
        let len = (p.len() - self.ip_len) as u64;
        sum(addrs, u64::from(self.proto) + len)
    }
}

/// Sets the IP (and UDP) length fields to the packet's length, and the IPv4 header checksum.
pub(super) fn set_lengths(p: &mut [u8], l: Layout) {
    match l.v6 {
        true => put16(p, 4, len16(p.len() - 40)),
        false => put16(p, 2, len16(p.len())),
    }
    if l.proto == UDP {
        put16(p, l.ip_len + 4, len16(p.len() - l.ip_len));
    }
    if !l.v6 {
        put16(p, 10, 0);
        let check = !fold(sum(&p[..l.ip_len], 0));
        put16(p, 10, check);
    }
}

/// Finishes a packet as it goes on the wire: lengths, and the transport checksum computed from
/// scratch (a UDP checksum of zero sent as all ones, RFC 768).
pub(super) fn finish_full(p: &mut [u8]) {
    let l = Layout::of(p);
    set_lengths(p, l);
    put16(p, l.csum_at(), 0);
    let check = match !fold(sum(&p[l.ip_len..], l.pseudo(p))) {
        0 if l.proto == UDP => 0xffff,
        check => check,
    };
    put16(p, l.csum_at(), check);
}

/// Finishes a packet as a CHECKSUM_PARTIAL skb holds it: lengths, and in the transport
/// checksum field only the (uncomplemented) pseudo-header sum, for whoever segments it.
pub(super) fn finish_partial(p: &mut [u8]) {
    let l = Layout::of(p);
    set_lengths(p, l);
    put16(p, l.csum_at(), fold(l.pseudo(p)));
}

pub(super) fn checksums_verify(p: &[u8]) -> bool {
    let l = Layout::of(p);
    let ip_ok = l.v6 || fold(sum(&p[..l.ip_len], 0)) == 0xffff;
    let l4_ok = fold(sum(&p[l.ip_len..], l.pseudo(p))) == 0xffff;
    ip_ok && l4_ok && (l.proto == TCP || get16(p, l.csum_at()) != 0)
}

/// The virtio-net header the kernel puts on a TSO/USO super-packet it hands a TUN (and the one
/// GRO must put on a coalesced packet): checksum to complete from the transport header on,
/// ECN on TCP when the super-packet carries CWR. `hdr_len` is the headers' length, which
/// tun-rs's read recomputes from the packet whatever the kernel wrote there.
pub(super) fn gso_header(p: &[u8], gso_size: u16) -> VirtioNetHdr {
    let l = Layout::of(p);
    let gso_type = match (l.proto, l.v6) {
        (UDP, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
        (_, false) => VIRTIO_NET_HDR_GSO_TCPV4,
        (_, true) => VIRTIO_NET_HDR_GSO_TCPV6,
    };
    let cwr = l.proto == TCP && p[l.ip_len + FLAGS] & CWR != 0;
    VirtioNetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: gso_type | if cwr { GSO_ECN } else { 0 },
        hdr_len: len16(l.headers()),
        gso_size,
        csum_start: len16(l.ip_len),
        csum_offset: len16(l.csum_at() - l.ip_len),
    }
}

/// The naive segmenter: per `gso_size` bytes of payload, the headers copied, then what the
/// kernel's software GSO changes (`inet_gso_segment`, `tcp_gso_segment`, `__udp_gso_segment`):
/// the IPv4 ID counts up per segment for TCP and USO alike (only UFO, which we never get, keeps
/// one ID; `gso_split` does the same), TCP's sequence number advances by the payload before,
/// CWR stays on the first segment only, FIN and PSH on the last only; lengths and checksums
/// are computed afresh.
pub(super) fn reference_split(sp: &[u8], gso_size: usize) -> Packets {
    let l = Layout::of(sp);
    let (headers, payload) = sp.split_at(l.headers());
    let count = payload.chunks(gso_size).len();
    let segment = |(i, chunk): (usize, &[u8])| {
        let mut seg = [headers, chunk].concat();
        if !l.v6 {
            put16(&mut seg, 4, get16(headers, 4).wrapping_add(i as u16));
        }
        if l.proto == TCP {
            let at = l.ip_len + 4;
            let seq = u32::from_be_bytes(seg[at..at + 4].try_into().expect("4 bytes"));
            let seq = seq.wrapping_add((i * gso_size) as u32);
            seg[at..at + 4].copy_from_slice(&seq.to_be_bytes());
            let flags = &mut seg[l.ip_len + FLAGS];
            if i > 0 {
                *flags &= !CWR;
            }
            if i + 1 < count {
                *flags &= !(FIN | PSH);
            }
        }
        finish_full(&mut seg);
        seg
    };
    payload.chunks(gso_size).enumerate().map(segment).collect()
}

/// The naive coalescer, for consecutive segments of one flow: the first one's headers (with
/// PSH if any segment had it, as the kernel's GRO does), every payload in order, lengths for
/// the whole, the checksum left partial; segments of the first one's payload size.
pub(super) fn reference_coalesce(segs: &[Vec<u8>]) -> (VirtioNetHdr, Vec<u8>) {
    let l = Layout::of(&segs[0]);
    let mut p = segs[0].clone();
    for seg in &segs[1..] {
        p.extend_from_slice(&seg[l.headers()..]);
    }
    if l.proto == TCP && segs.iter().any(|s| s[l.ip_len + FLAGS] & PSH != 0) {
        p[l.ip_len + FLAGS] |= PSH;
    }
    finish_partial(&mut p);
    (gso_header(&p, len16(segs[0].len() - l.headers())), p)
}

/// Whether the GRO of tun-rs (wireguard-go's rules) may merge this packet with others of its
/// flow: IPv4 without options (the kernel's GRO refuses options too), TCP with only ACK or
/// ACK|PSH set, and a valid checksum.
pub(super) fn coalescible(p: &[u8]) -> bool {
    let l = Layout::of(p);
    let flags_ok = l.proto == UDP || [ACK, ACK | PSH].contains(&p[l.ip_len + FLAGS]);
    (l.v6 || l.ip_len == 20) && flags_ok && checksums_verify(p)
}

/// What the coalescing write must hand the kernel for `batch` (packets tagged with their flow),
/// as groups of batch indices in write order: runs of consecutive coalescible packets of one
/// flow merged, any other packet alone. Assumes each flow's packets are one super-packet's
/// segments in order, so that PSH and a short segment only ever come last.
pub(super) fn expected_groups(batch: &[(usize, Vec<u8>)]) -> Vec<Vec<usize>> {
    let mut open: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut groups = Vec::new();
    for (i, (flow, p)) in batch.iter().enumerate() {
        if coalescible(p) {
            open.entry(*flow).or_default().push(i);
            continue;
        }
        groups.extend(open.remove(flow));
        groups.push(vec![i]);
    }
    groups.extend(open.into_values());
    groups.sort_by_key(|g| g[0]);
    groups
}
