//! Segmentation and coalescing of the TUN offloads against a reference. Super-packets are built
//! as the kernel hands them to a TUN with `IFF_VNET_HDR`; `tun_rs::gso_split` must cut them as
//! the naive segmenter here does, and the GRO of the TUN write (`tun_rs::handle_gro`, what
//! `send_multiple` runs) must merge the segments back as the naive coalescer here does: a whole
//! flow into the original super-packet. Checksums are checked with a plain RFC 1071 sum.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use tun_rs::{gso_split, handle_gro, VirtioNetHdr, IDEAL_BATCH_SIZE};

use super::tun::HEADROOM;

mod reference;

use reference::*;

/// Splits `sp` as the data path's TUN read does.
fn split(sp: &[u8], hdr: VirtioNetHdr) -> Result<Packets, TestCaseError> {
    let mut input = sp.to_vec();
    let mut out = vec![vec![0u8; MTU]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0; out.len()];
    let v6 = Layout::of(sp).v6;
    let n = gso_split(&mut input, hdr, &mut out, &mut sizes, 0, v6)
        .map_err(|e| TestCaseError::fail(format!("gso_split refused {hdr:?}: {e}")))?;
    out.truncate(n);
    out.iter_mut()
        .zip(sizes)
        .for_each(|(b, len)| b.truncate(len));
    Ok(out)
}

/// One packet the coalescing write hands the kernel, and where in the batch it started.
struct Write {
    head: usize,
    hdr: VirtioNetHdr,
    packet: Vec<u8>,
}

/// Runs the GRO of the data path's TUN write over `batch`, each packet in a buffer of the data
/// path's capacity with room for the virtio-net header in front (filled with a marker, so that
/// a header GRO failed to write shows).
fn coalesce(batch: &[(usize, Vec<u8>)]) -> Vec<Write> {
    let mut bufs: Vec<Vec<u8>> = batch
        .iter()
        .map(|(_, p)| {
            let mut buf = Vec::with_capacity(GRO_CAPACITY);
            buf.resize(HEADROOM, 0xa5);
            buf.extend_from_slice(p);
            buf
        })
        .collect();
    // The GRO tables are not nameable outside tun-rs; inference finds them.
    let (mut tcp, mut udp, mut out) = (Default::default(), Default::default(), Vec::new());
    handle_gro(&mut bufs, HEADROOM, &mut tcp, &mut udp, true, &mut out)
        .expect("GRO takes any batch with header room");
    let write = |i: usize| Write {
        head: i,
        hdr: VirtioNetHdr::decode(&bufs[i]).expect("header room"),
        packet: bufs[i][HEADROOM..].to_vec(),
    };
    out.into_iter().map(write).collect()
}

/// `VirtioNetHdr` has no `PartialEq`; its fields, shown, compare as well.
fn fields(h: &VirtioNetHdr) -> String {
    format!("{h:?}")
}

/// Byte equality, reported by the first difference rather than by 60 000 bytes of debug output.
fn same(got: &[u8], want: &[u8], what: &str) -> Result<(), TestCaseError> {
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    let (g, w) = (got.len(), want.len());
    match at {
        None if g == w => Ok(()),
        _ => Err(TestCaseError::fail(format!(
            "{what}: {g} bytes, {w} expected, first difference at byte {at:?}"
        ))),
    }
}

fn same_segments(got: &[Vec<u8>], want: &[Vec<u8>], what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{} segments", what);
    for (i, (got, want)) in got.iter().zip(want).enumerate() {
        same(got, want, &format!("{what}, segment {i}"))?;
    }
    Ok(())
}

/// Coalesces `batch`, checks every write against the reference (header and bytes), and
/// re-splits every coalesced write, as the kernel would segment it, back into its segments.
fn check_batch(batch: &[(usize, Vec<u8>)]) -> Result<Vec<Write>, TestCaseError> {
    let writes = coalesce(batch);
    let groups = expected_groups(batch);
    let heads: Vec<usize> = writes.iter().map(|w| w.head).collect();
    let want: Vec<usize> = groups.iter().map(|g| g[0]).collect();
    prop_assert_eq!(heads, want, "the batch indices written");
    for (w, group) in writes.iter().zip(&groups) {
        let members: Packets = group.iter().map(|&i| batch[i].1.clone()).collect();
        let (hdr, packet) = match members.len() {
            1 => (VirtioNetHdr::default(), members[0].clone()),
            _ => reference_coalesce(&members),
        };
        prop_assert_eq!(fields(&w.hdr), fields(&hdr), "header of write {}", w.head);
        same(&w.packet, &packet, &format!("write {}", w.head))?;
        if members.len() > 1 {
            let again = split(&w.packet, w.hdr)?;
            same_segments(&again, &members, &format!("re-split of write {}", w.head))?;
        }
    }
    Ok(writes)
}

/// splitmix64: payload bytes and interleavings from one seed.
fn mix(x: u64) -> u64 {
    let z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The segments of two flows interleaved at random, each flow's in its order.
fn interleave(flows: [Packets; 2], seed: u64) -> Vec<(usize, Vec<u8>)> {
    let mut next = [0, 0];
    let total = flows[0].len() + flows[1].len();
    let pick = |step: usize, next: &mut [usize; 2]| {
        let mut f = (mix(seed ^ step as u64) & 1) as usize;
        if next[f] == flows[f].len() {
            f = 1 - f;
        }
        next[f] += 1;
        (f, flows[f][next[f] - 1].clone())
    };
    (0..total).map(|step| pick(step, &mut next)).collect()
}

/// A super-packet: its headers (lengths and checksums still to fill), a payload drawn from
/// `seed`, and the segment size.
#[derive(Debug, Clone)]
struct Spec {
    ip: Vec<u8>,
    l4: Vec<u8>,
    payload_len: usize,
    seed: u64,
    gso_size: u16,
}

impl Spec {
    /// The super-packet as the kernel hands it over a TUN, its virtio-net header, and what
    /// `gso_split` cuts it into.
    fn cut(&self) -> Result<(VirtioNetHdr, Vec<u8>, Packets), TestCaseError> {
        let mut sp = [&self.ip[..], &self.l4[..]].concat();
        sp.extend((0..self.payload_len).map(|i| mix(self.seed ^ i as u64) as u8));
        finish_partial(&mut sp);
        let hdr = gso_header(&sp, self.gso_size);
        let segs = split(&sp, hdr)?;
        Ok((hdr, sp, segs))
    }
}

/// IPv4 options a quarter of the time: opaque to segmentation, which copies the IP header
/// whole (as the kernel's `inet_gso_segment` does).
fn ipv4_options() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => (1..=10usize).prop_flat_map(|words| vec(any::<u8>(), 4 * words)),
    ]
}

/// TCP options as senders write them (timestamps, SACK blocks, NOPs, unknown kinds with random
/// data), up to 40 bytes, padded to a multiple of 4 with end-of-list.
fn tcp_options() -> impl Strategy<Value = Vec<u8>> {
    let tlv = |kind: u8, data: &[u8]| [&[kind, 2 + data.len() as u8][..], data].concat();
    let option = prop_oneof![
        Just(vec![1]),
        any::<[u8; 8]>().prop_map(move |ts| tlv(8, &ts)),
        (1..=3usize, any::<[u8; 24]>()).prop_map(move |(n, b)| tlv(5, &b[..8 * n])),
        (30..=253u8, vec(any::<u8>(), 0..=6)).prop_map(move |(kind, d)| tlv(kind, &d)),
    ];
    vec(option, 0..=5).prop_map(|options| {
        let mut bytes = Vec::new();
        for o in options {
            if bytes.len() + o.len() <= 40 {
                bytes.extend(o);
            }
        }
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    })
}

/// The flags a sender puts on a super-packet.
fn tcp_flags() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => Just(ACK),
        4 => Just(ACK | PSH),
        1 => Just(ACK | FIN),
        1 => Just(ACK | PSH | FIN),
        1 => Just(ACK | CWR),
        1 => Just(ACK | PSH | CWR),
        1 => Just(ACK | ECE),
    ]
}

prop_compose! {
    fn ip_header(proto: u8)(
        v6 in any::<bool>(), addrs in any::<[u8; 32]>(), tos in any::<u8>(), ttl in 1..=255u8,
        df in any::<bool>(), label in 0..(1u32 << 20), options in ipv4_options(),
        // Often near the wrap, for later segments to cross it.
        id in prop_oneof![any::<u16>(), 0xff80..=u16::MAX],
    ) -> Vec<u8> {
        let ([id0, id1], ihl) = (id.to_be_bytes(), 5 + options.len() as u8 / 4);
        let fixed4 = [0x40 | ihl, tos, 0, 0, id0, id1, u8::from(df) << 6, 0, ttl, proto, 0, 0];
        let first6 = ((6 << 28) | (u32::from(tos) << 20) | label).to_be_bytes();
        match v6 {
            true => [&first6[..], &[0, 0, proto, ttl], &addrs[..]].concat(),
            false => [&fixed4[..], &addrs[..8], &options].concat(),
        }
    }
}

prop_compose! {
    fn tcp_header()(
        ports in any::<[u8; 4]>(), ack in any::<u32>(), flags in tcp_flags(),
        window in any::<u16>(), options in tcp_options(),
        // Often near the wrap, for later segments to cross it.
        seq in prop_oneof![any::<u32>(), u32::MAX - 65_535..],
    ) -> Vec<u8> {
        let offset = (((20 + options.len()) / 4) << 4) as u8;
        let (seq, ack, window) = (seq.to_be_bytes(), ack.to_be_bytes(), window.to_be_bytes());
        // The checksum and urgent pointer zero.
        [&ports[..], &seq, &ack, &[offset, flags], &window, &[0; 4], &options].concat()
    }
}

prop_compose! {
    fn spec()(udp in any::<bool>())(
        ip in ip_header(if udp { UDP } else { TCP }),
        l4 in if udp { any::<[u8; 8]>().prop_map(Vec::from).boxed() } else { tcp_header().boxed() },
        gso in any::<u16>(), len in any::<u32>(), shape in 0..4u8, seed in any::<u64>(),
    ) -> Spec {
        let headers = ip.len() + l4.len();
        // Every segment fits a 1500-byte MTU and carries at least 500 bytes of payload.
        let gso_size = 500 + usize::from(gso) % (MTU - headers - 499);
        let len = len as usize;
        let payload_len = match shape {
            0 => 1 + len % (3 * gso_size),
            1 => gso_size * (1 + len % (MAX_PAYLOAD / gso_size)),
            _ => 1 + len % MAX_PAYLOAD,
        };
        Spec { ip, l4, payload_len, seed, gso_size: len16(gso_size) }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn split_matches_the_reference(spec in spec()) {
        let (_, sp, segs) = spec.cut()?;
        same_segments(&segs, &reference_split(&sp, spec.gso_size.into()), "split")?;
        for seg in &segs {
            prop_assert!(checksums_verify(seg) && seg.len() <= MTU);
        }
    }

    #[test]
    fn split_then_coalesced_is_the_super_packet(spec in spec()) {
        let (hdr, sp, segs) = spec.cut()?;
        let batch: Vec<_> = segs.into_iter().map(|s| (0, s)).collect();
        let writes = check_batch(&batch)?;
        if batch.len() > 1 && batch.iter().all(|(_, p)| coalescible(p)) {
            prop_assert_eq!(writes.len(), 1);
            prop_assert_eq!(fields(&writes[0].hdr), fields(&hdr));
            same(&writes[0].packet, &sp, "coalesced flow")?;
        }
    }

    /// Two flows interleaved, and (the control) one bit flipped in the payload of a segment
    /// that would otherwise have been merged: GRO must check the checksum and write it alone.
    #[test]
    fn interleaved_flows_coalesce_apart_and_a_corrupted_segment_alone(
        a in spec(), mut b in spec(), order in any::<u64>(),
        corrupt in proptest::option::weighted(0.75, (any::<Index>(), any::<Index>(), 0..8u8)),
    ) {
        // Two flows, even once shrunk to equal headers.
        put16(&mut b.l4, 0, get16(&a.l4, 0).wrapping_add(1));
        let mut batch = interleave([a.cut()?.2, b.cut()?.2], order);
        let mergeable: Vec<usize> =
            (0..batch.len()).filter(|&i| coalescible(&batch[i].1)).collect();
        let corrupted = corrupt.filter(|_| !mergeable.is_empty()).map(|(seg, byte, bit)| {
            let i = mergeable[seg.index(mergeable.len())];
            let p = &mut batch[i].1;
            let headers = Layout::of(p).headers();
            let at = headers + byte.index(p.len() - headers);
            p[at] ^= 1 << bit;
            i
        });
        let writes = check_batch(&batch)?;
        if let Some(i) = corrupted {
            let empty = fields(&VirtioNetHdr::default());
            let alone = writes.iter().any(|w| w.head == i && fields(&w.hdr) == empty);
            prop_assert!(alone, "corrupted segment {} written alone", i);
        }
    }
}
