//! Reading UAPI messages off a stream, for both ends of the socket (the server reads requests,
//! the agent's client reads answers): one message is the text up to an empty line (or the end
//! of the stream), in a buffer that is zeroed when dropped, since it may hold the private key.
//! Must never let a line or a message grow without bound.

use tokio::io::{AsyncRead, AsyncReadExt};
use zeroize::Zeroizing;

use crate::listen::Limits;

/// Longest line accepted: the longest legitimate one (`endpoint=[v6%scope]:port`) is < 100.
pub const MAX_LINE: usize = 1024;

/// One request's text: UTF-8 checked, zeroed on drop.
pub struct RequestText(Zeroizing<Vec<u8>>);

impl RequestText {
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// End of stream (or an I/O error) before any byte of a request.
    Closed,
    TooLarge(String),
}

/// Splits a stream into UAPI requests (lines up to an empty line) in one zeroizing buffer that
/// never reallocates in place (a grown buffer is copied and the old one zeroed), so no copy of
/// a `private_key=` line is left behind in freed memory.
pub struct RequestReader<R> {
    inner: R,
    buf: Zeroizing<Vec<u8>>,
    /// Bytes of `buf` already scanned for line ends.
    scanned: usize,
    line_start: usize,
}

impl<R: AsyncRead + Unpin> RequestReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Zeroizing::new(Vec::with_capacity(4096)),
            scanned: 0,
            line_start: 0,
        }
    }

    /// The next request without its terminating empty line, and whether the stream ended with
    /// it (a request cut short by end of stream is still answered, as wireguard-go does).
    pub async fn next(&mut self, limits: &Limits) -> Result<(RequestText, bool), ReadError> {
        loop {
            while self.scanned < self.buf.len() {
                let at = self.scanned;
                self.scanned += 1;
                if at >= limits.max_body {
                    return Err(ReadError::TooLarge(format!(
                        "a request larger than {} bytes",
                        limits.max_body
                    )));
                }
                if self.buf[at] != b'\n' {
                    if at - self.line_start >= MAX_LINE {
                        return Err(ReadError::TooLarge(format!(
                            "a line longer than {MAX_LINE} bytes"
                        )));
                    }
                    continue;
                }
                if at == self.line_start {
                    return Ok((self.take(at, at + 1), false));
                }
                self.line_start = at + 1;
            }
            self.reserve(8192);
            match self.inner.read_buf(&mut *self.buf).await {
                Ok(0) | Err(_) if self.buf.is_empty() => return Err(ReadError::Closed),
                Ok(0) | Err(_) => {
                    let end = self.buf.len();
                    return Ok((self.take(end, end), true));
                }
                Ok(_) => {}
            }
        }
    }

    /// Moves `buf[..end]` out as a request and drops `buf[..consumed]`.
    fn take(&mut self, end: usize, consumed: usize) -> RequestText {
        let mut out = Zeroizing::new(Vec::with_capacity(end));
        out.extend_from_slice(&self.buf[..end]);
        self.buf.drain(..consumed);
        self.scanned = 0;
        self.line_start = 0;
        RequestText(out)
    }

    /// Makes room for `more` bytes without `Vec`'s in-place reallocation.
    fn reserve(&mut self, more: usize) {
        if self.buf.capacity() - self.buf.len() >= more {
            return;
        }
        let mut bigger = Zeroizing::new(Vec::with_capacity((self.buf.len() + more) * 2));
        bigger.extend_from_slice(&self.buf);
        // The old buffer is zeroed as it drops here.
        self.buf = bigger;
    }
}
