//! Where the device's outputs wait between system calls. The device hands over one packet at a
//! time (through `Io`); these gather them so that the shell moves a whole batch with one call:
//! underlay datagrams grouped into runs for UDP segmentation offload (`UDP_SEGMENT`: one
//! `sendmsg` for up to 64 same-size datagrams to one peer), and decrypted packets for one
//! coalescing TUN write. Buffers are kept and reused: after warm-up nothing here allocates.

use std::net::SocketAddr;

/// The most bytes one segmented send may carry: the UDP length field's limit, less the
/// largest IP and UDP headers.
const RUN_BYTES: usize = 65_535 - 40 - 8;

/// A run of datagrams to one destination, all `segment` bytes long but the last, which may be
/// shorter (what `UDP_SEGMENT` sends in one call).
struct Run {
    to: SocketAddr,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the run.
    closed: bool,
    bytes: Vec<u8>,
}

/// Underlay datagrams waiting to be sent, in order.
pub struct Outbox {
    runs: Vec<Run>,
    used: usize,
    /// Datagrams per run: the socket's GSO limit, 1 when segmentation is off.
    max_segments: usize,
    /// After this many runs the caller must flush.
    max_runs: usize,
}

/// One segmented send: `bytes` holds datagrams of `segment` bytes each (the last may be
/// shorter); `segment` is `None` for a single datagram.
pub struct Send<'a> {
    pub to: SocketAddr,
    pub bytes: &'a [u8],
    pub segment: Option<usize>,
}

impl Outbox {
    pub fn new(max_segments: usize, max_runs: usize) -> Self {
        Self {
            runs: Vec::new(),
            used: 0,
            max_segments: max_segments.max(1),
            max_runs: max_runs.max(1),
        }
    }

    pub fn set_max_segments(&mut self, max_segments: usize) {
        self.max_segments = max_segments.max(1);
    }

    /// Queues a datagram; returns true when the outbox is full and must be flushed before the
    /// next push.
    pub fn push(&mut self, to: SocketAddr, datagram: &[u8]) -> bool {
        if !self.extend_last(to, datagram) {
            if self.used == self.runs.len() {
                self.runs.push(Run {
                    to,
                    segment: 0,
                    count: 0,
                    closed: false,
                    bytes: Vec::new(),
                });
            }
            let run = &mut self.runs[self.used];
            self.used += 1;
            run.to = to;
            run.segment = datagram.len();
            run.count = 1;
            run.closed = false;
            run.bytes.clear();
            run.bytes.extend_from_slice(datagram);
        }
        self.used >= self.max_runs
    }

    fn extend_last(&mut self, to: SocketAddr, datagram: &[u8]) -> bool {
        let Some(run) = self.used.checked_sub(1).map(|i| &mut self.runs[i]) else {
            return false;
        };
        let fits = run.to == to
            && !run.closed
            && run.count < self.max_segments
            && !datagram.is_empty()
            && datagram.len() <= run.segment
            && run.bytes.len() + datagram.len() <= RUN_BYTES;
        if fits {
            run.closed = datagram.len() < run.segment;
            run.count += 1;
            run.bytes.extend_from_slice(datagram);
        }
        fits
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// The queued sends, in order; the outbox is empty afterwards.
    pub fn drain(&mut self) -> impl Iterator<Item = Send<'_>> {
        let used = std::mem::take(&mut self.used);
        self.runs[..used].iter().map(|r| Send {
            to: r.to,
            bytes: &r.bytes,
            segment: (r.count > 1).then_some(r.segment),
        })
    }
}

/// Decrypted packets waiting for the TUN, each with `headroom` bytes in front of it.
pub struct Inbox {
    packets: Vec<Vec<u8>>,
    used: usize,
    headroom: usize,
    max: usize,
}

impl Inbox {
    pub fn new(headroom: usize, max: usize) -> Self {
        Self {
            packets: Vec::new(),
            used: 0,
            headroom,
            max: max.max(1),
        }
    }

    /// Queues a packet; returns true when the inbox is full and must be flushed.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        if self.used == self.packets.len() {
            // Room for a whole super-packet: the coalescing write grows a flow's first packet
            // in place, and only where the capacity is already there.
            self.packets
                .push(Vec::with_capacity(2 * self.headroom + u16::MAX as usize));
        }
        let buf = &mut self.packets[self.used];
        self.used += 1;
        buf.clear();
        buf.resize(self.headroom, 0);
        buf.extend_from_slice(packet);
        self.used >= self.max
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// The queued packets (with their headroom), to be written and then forgotten.
    pub fn take(&mut self) -> &mut [Vec<u8>] {
        let used = std::mem::take(&mut self.used);
        &mut self.packets[..used]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sends(outbox: &mut Outbox) -> Vec<(SocketAddr, Vec<u8>, Option<usize>)> {
        outbox
            .drain()
            .map(|s| (s.to, s.bytes.to_vec(), s.segment))
            .collect()
    }

    #[test]
    fn same_size_datagrams_to_one_peer_become_one_segmented_send() {
        let a: SocketAddr = "198.18.0.1:51871".parse().unwrap();
        let b: SocketAddr = "198.18.0.2:51871".parse().unwrap();
        let mut out = Outbox::new(64, 16);
        out.push(a, &[1; 100]);
        out.push(a, &[2; 100]);
        out.push(a, &[3; 40]); // a shorter last segment ends the run
        out.push(a, &[4; 100]);
        out.push(b, &[5; 100]); // another peer
        out.push(a, &[6; 120]); // larger than the segment: a new run
        let got = sends(&mut out);
        let expected_first: Vec<u8> = [[1u8; 100].as_slice(), &[2; 100], &[3; 40]].concat();
        assert_eq!(got[0], (a, expected_first, Some(100)));
        assert_eq!(got[1], (a, vec![4; 100], None));
        assert_eq!(got[2], (b, vec![5; 100], None));
        assert_eq!(got[3], (a, vec![6; 120], None));
        assert_eq!(got.len(), 4);
        assert!(out.is_empty());
    }

    #[test]
    fn runs_respect_the_segment_limit_and_the_64k_limit() {
        let a: SocketAddr = "[fd00::1]:51871".parse().unwrap();
        let mut out = Outbox::new(3, 100);
        for i in 0..7u8 {
            out.push(a, &[i; 10]);
        }
        let counts: Vec<usize> = out.drain().map(|s| s.bytes.len() / 10).collect();
        assert_eq!(counts, [3, 3, 1]);

        let mut out = Outbox::new(64, 100);
        for _ in 0..50 {
            out.push(a, &[0; 1452]);
        }
        for s in out.drain() {
            assert!(
                s.bytes.len() <= RUN_BYTES,
                "{} bytes in one send",
                s.bytes.len()
            );
        }

        let mut off = Outbox::new(1, 100);
        off.push(a, &[1; 10]);
        off.push(a, &[1; 10]);
        assert!(off
            .drain()
            .all(|s| s.segment.is_none() && s.bytes.len() == 10));
    }

    #[test]
    fn a_full_outbox_or_inbox_says_so() {
        let a: SocketAddr = "198.18.0.1:1".parse().unwrap();
        let b: SocketAddr = "198.18.0.2:1".parse().unwrap();
        let mut out = Outbox::new(64, 2);
        assert!(!out.push(a, &[0; 10]));
        assert!(!out.push(a, &[0; 10]), "same run: not full");
        assert!(out.push(b, &[0; 10]), "second run: full");

        let mut inbox = Inbox::new(10, 2);
        assert!(!inbox.push(&[7; 5]));
        assert!(inbox.push(&[8; 3]));
        let taken = inbox.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0], [[0u8; 10].as_slice(), &[7; 5]].concat());
        assert_eq!(taken[1], [[0u8; 10].as_slice(), &[8; 3]].concat());
        assert!(inbox.is_empty());
        assert!(!inbox.push(&[9; 1]), "reused after take");
        assert_eq!(inbox.take()[0].len(), 11);
    }
}
