//! A watch on the HTTP/1.1 message framing of a downstream connection, for the header timeout
//! (from a head's first byte) and for request smuggling:
//! hyper accepts a request carrying both `Content-Length` and `Transfer-Encoding` (RFC 9112
//! lets a server use the latter and close afterwards), but a proxy must refuse it, since the
//! server behind may frame it the other way. The watch reads the same bytes hyper reads,
//! follows heads and bodies (length and chunked) and notes the index of the first request
//! with both headers; the handler answers that request 400 and never forwards it. It must
//! never alter a byte, and it stops following (without verdict) at anything it cannot parse:
//! hyper then refuses the connection itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

/// No request with conflicting framing (yet).
pub const NONE: u64 = u64::MAX;
/// Longest head followed; hyper refuses longer ones anyway.
const MAX_HEAD: usize = 1 << 20;

#[derive(Debug, PartialEq, Eq)]
enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers(Vec<u8>),
    Stopped,
}

/// The framing follower (pure: bytes in, verdict out).
#[derive(Debug)]
pub struct Framing {
    state: State,
    requests: u64,
    /// Index (0-based, in order of arrival) of the first request with both headers.
    pub conflicting: Arc<AtomicU64>,
    /// Set once the connection switched protocols (a WebSocket upgrade the server accepted):
    /// what follows is no HTTP, and is neither followed nor timed as a head.
    pub switched: Arc<AtomicBool>,
}

impl Default for Framing {
    fn default() -> Self {
        Self::new(Arc::new(AtomicU64::new(NONE)))
    }
}

impl Framing {
    /// A follower that reports into `conflicting`.
    pub fn new(conflicting: Arc<AtomicU64>) -> Self {
        Self {
            state: State::Head(Vec::new()),
            requests: 0,
            conflicting,
            switched: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops following once `switched` is set.
    pub fn until_switched(mut self, switched: Arc<AtomicBool>) -> Self {
        self.switched = switched;
        self
    }

    /// Follows `bytes`, the next bytes the client sent.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if self.switched.load(Ordering::SeqCst) {
            self.state = State::Stopped;
        }
        while !bytes.is_empty() {
            let used = match &mut self.state {
                State::Stopped => return,
                State::Head(head) => {
                    let b = bytes[0];
                    // Empty lines before a request line are ignored (RFC 9112, 2.2).
                    if !(head.is_empty() && (b == b'\r' || b == b'\n')) {
                        head.push(b);
                    }
                    if head.ends_with(b"\r\n\r\n") {
                        let head = std::mem::take(head);
                        self.state = self.after_head(&head);
                    } else if head.len() > MAX_HEAD {
                        self.state = State::Stopped;
                    }
                    1
                }
                State::Body(n) => {
                    let take = (*n).min(bytes.len() as u64);
                    *n -= take;
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                    take as usize
                }
                State::ChunkData(n) => {
                    let take = (*n).min(bytes.len() as u64);
                    *n -= take;
                    if *n == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                    take as usize
                }
                State::ChunkEnd(k) => {
                    let take = usize::from(*k).min(bytes.len());
                    *k -= take as u8;
                    if *k == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                    take
                }
                State::ChunkSize(line) => {
                    line.push(bytes[0]);
                    if line.ends_with(b"\n") {
                        let line = std::mem::take(line);
                        self.state = chunk_size(&line).map_or(State::Stopped, |n| match n {
                            0 => State::Trailers(Vec::new()),
                            n => State::ChunkData(n),
                        });
                    } else if line.len() > 4096 {
                        self.state = State::Stopped;
                    }
                    1
                }
                State::Trailers(line) => {
                    line.push(bytes[0]);
                    if line.ends_with(b"\n") {
                        let empty = line.trim_ascii().is_empty();
                        line.clear();
                        if empty {
                            self.state = State::Head(Vec::new());
                        }
                    } else if line.len() > MAX_HEAD {
                        self.state = State::Stopped;
                    }
                    1
                }
            };
            bytes = &bytes[used..];
        }
    }

    /// Whether part of a request head has arrived but not all of it.
    pub fn in_partial_head(&self) -> bool {
        matches!(&self.state, State::Head(h) if !h.is_empty())
            && !self.switched.load(Ordering::SeqCst)
    }

    fn after_head(&mut self, head: &[u8]) -> State {
        let index = self.requests;
        self.requests += 1;
        let text = String::from_utf8_lossy(head);
        let mut length = None;
        let mut chunked = false;
        let mut te = false;
        for line in text.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.trim().parse::<u64>().ok());
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
                chunked = value.trim().to_ascii_lowercase().ends_with("chunked");
            }
        }
        match (te, length) {
            (true, Some(_)) => {
                // The connection ends with this request's 400: nothing after it matters.
                let _ = self.conflicting.compare_exchange(
                    NONE,
                    index,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                State::Stopped
            }
            (true, None) if chunked => State::ChunkSize(Vec::new()),
            (true, None) | (false, Some(None)) => State::Stopped,
            (false, Some(Some(0))) | (false, None) => State::Head(Vec::new()),
            (false, Some(Some(n))) => State::Body(n),
        }
    }
}

fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let digits = text.split(';').next()?.trim();
    u64::from_str_radix(digits, 16).ok()
}

/// The error a connection ends with when a request head took longer than the header timeout.
pub const HEAD_TIMEOUT: &str = "request head not received in time";

/// `inner` whose incoming bytes are followed by a [`Framing`], and whose reads fail once a
/// request head has been arriving for longer than `head_timeout` (slowloris). The clock starts
/// at a head's first byte, so an idle keep-alive connection is left to the idle timeout.
pub struct Watched<S> {
    inner: S,
    framing: Framing,
    head_timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, framing: Framing, head_timeout: Duration) -> Self {
        Self {
            inner,
            framing,
            head_timeout,
            deadline: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.framing.feed(&buf.filled()[before..]);
        }
        if !this.framing.in_partial_head() {
            this.deadline = None;
            return r;
        }
        let limit = this.head_timeout;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match (r, deadline.as_mut().poll(cx)) {
            (Poll::Pending, Poll::Ready(())) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HEAD_TIMEOUT)))
            }
            (r, _) => r,
        }
    }
}

crate::io::write_through!(Watched);

#[cfg(test)]
mod tests {
    use super::*;

    fn conflicting(input: &[u8], split: usize) -> u64 {
        let mut f = Framing::default();
        let split = split.min(input.len());
        f.feed(&input[..split]);
        f.feed(&input[split..]);
        f.conflicting.load(Ordering::SeqCst)
    }

    /// After a switch of protocols the bytes are no HTTP: no head is timed, nothing is flagged.
    /// Control: the same bytes before the switch are a partial head.
    #[test]
    fn a_switched_connection_is_no_longer_followed() {
        let switched = Arc::new(AtomicBool::new(false));
        let mut f = Framing::default().until_switched(switched.clone());
        f.feed(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
        assert!(f.in_partial_head(), "control: frame bytes read as a head");
        switched.store(true, Ordering::SeqCst);
        assert!(!f.in_partial_head());
        f.feed(b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(!f.in_partial_head());
        assert_eq!(f.conflicting.load(Ordering::SeqCst), NONE);
    }

    #[test]
    fn finds_the_conflicting_request_after_bodies_of_both_kinds() {
        let input = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /\
            POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
            \r\nPOST /d HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        // Whatever the read boundaries.
        for split in [0, 1, 17, 40, 80, 120, 150, input.len()] {
            assert_eq!(conflicting(input, split), 3, "split at {split}");
        }
    }

    #[test]
    fn ordinary_requests_are_not_flagged() {
        let input = b"POST /b HTTP/1.1\r\nContent-Length: 40\r\n\r\n\
            GET / HTTP/1.1\r\nTransfer-Encoding: x\r\n\r\n\
            GET /c HTTP/1.1\r\n\r\n";
        assert_eq!(conflicting(input, 10), NONE);
    }

    #[test]
    fn unparsable_framing_stops_following() {
        let input = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\
            POST /d HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(conflicting(input, 5), NONE);
    }

    fn request(body: &[u8], chunks: Option<&[Vec<u8>]>, conflicting: bool) -> Vec<u8> {
        let mut out = b"POST /x HTTP/1.1\r\nHost: a\r\n".to_vec();
        match chunks {
            Some(chunks) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                if conflicting {
                    out.extend_from_slice(b"Content-Length: 4\r\n");
                }
                out.extend_from_slice(b"\r\n");
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            None => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
        }
        out
    }

    proptest::proptest! {
        /// Bodies of either framing, holding anything (heads included), at any read
        /// boundaries: the first conflicting request is found, and none is invented.
        #[test]
        fn follows_any_sequence_of_requests(
            reqs in proptest::collection::vec(
                (
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
                    proptest::option::of(proptest::collection::vec(
                        proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
                        0..4,
                    )),
                ),
                1..6,
            ),
            bad in proptest::option::of(0usize..6),
            split in 0usize..400,
        ) {
            let bad = bad.filter(|b| *b < reqs.len());
            let mut input = Vec::new();
            for (i, (body, chunks)) in reqs.iter().enumerate() {
                let chunks = chunks.as_deref();
                let conflicting = bad == Some(i);
                // A conflicting request is chunked (as hyper would read it).
                let chunks = if conflicting { Some(chunks.unwrap_or(&[])) } else { chunks };
                input.extend(request(body, chunks, conflicting));
            }
            let want = bad.map_or(NONE, |b| b as u64);
            proptest::prop_assert_eq!(conflicting(&input, split), want);
        }
    }
}
