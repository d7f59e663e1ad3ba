//! Raw bytes over TCP from a lab host (`wiremesh-lab raw-tcp` run in its namespace), for tests
//! that send what no well-behaved client would: malformed, oversized, smuggling or dribbled
//! HTTP. The reply and how the connection ended come back as a [`RawReply`].

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::exec::output;
use crate::handles::HostHandle;
use crate::http::lab_binary;

/// Bytes to send to `to`, at once or `step` bytes every `interval`, waiting at most `timeout`
/// from the connection's start for it to end.
#[derive(Debug, Clone)]
pub struct RawSend {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
    pub step: usize,
    pub interval: Duration,
    pub timeout: Duration,
}

impl RawSend {
    /// All of `bytes` in one write, giving up after 8 s.
    pub fn new(to: SocketAddr, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            to,
            bytes: bytes.into(),
            step: 0,
            interval: Duration::ZERO,
            timeout: Duration::from_secs(8),
        }
    }

    /// `step` bytes every `interval`.
    pub fn dribble(mut self, step: usize, interval: Duration) -> Self {
        self.step = step;
        self.interval = interval;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// How a connection ended: closed in order, reset, or still open when given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEnd {
    Eof,
    Reset,
    Timeout,
    ConnectFailed,
}

/// What came back.
#[derive(Debug, Clone)]
pub struct RawReply {
    /// The reply bytes, lossily as text.
    pub reply: String,
    pub end: RawEnd,
    /// From the connection's start to its end (or to giving up).
    pub elapsed: Duration,
    /// Bytes written before the connection ended or the writes failed.
    pub sent: usize,
}

impl RawReply {
    /// The status code of the first HTTP response in the reply, if any.
    pub fn status(&self) -> Option<u16> {
        let line = self.reply.strip_prefix("HTTP/1.1 ")?;
        line.get(..3)?.parse().ok()
    }

    /// Whether the peer ended the connection (in order or with a reset).
    pub fn closed(&self) -> bool {
        matches!(self.end, RawEnd::Eof | RawEnd::Reset)
    }
}

impl HostHandle<'_> {
    /// Sends `send`'s bytes from here over a fresh TCP connection.
    pub fn raw_tcp(&self, send: &RawSend) -> Result<RawReply> {
        let mut cmd = self.lab.host_cmd(self.host, lab_binary()?);
        cmd.args(["raw-tcp", "--connect", &send.to.to_string()]);
        cmd.args(["--step", &send.step.to_string(), "--interval-ms"])
            .arg(send.interval.as_millis().to_string())
            .arg("--timeout-ms")
            .arg(send.timeout.as_millis().to_string());
        let out = output(
            &mut cmd,
            Some(&send.bytes),
            send.timeout + Duration::from_secs(5),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        parse(stdout.trim()).ok_or_else(|| {
            LabError::Check(format!(
                "raw-tcp to {}: unparseable output {stdout:?}: {}",
                send.to,
                String::from_utf8_lossy(&out.stderr)
            ))
        })
    }
}

fn parse(line: &str) -> Option<RawReply> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let end = match v["end"].as_str()? {
        "eof" => RawEnd::Eof,
        "reset" => RawEnd::Reset,
        "timeout" => RawEnd::Timeout,
        "connect-failed" => RawEnd::ConnectFailed,
        _ => return None,
    };
    Some(RawReply {
        reply: v["reply"].as_str()?.to_string(),
        end,
        elapsed: Duration::from_millis(v["elapsedMs"].as_u64()?),
        sent: usize::try_from(v["sent"].as_u64()?).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subcommands_report() {
        let r = parse(
            r#"{"reply":"HTTP/1.1 431 Request Header Fields Too Large\r\n","end":"eof","elapsedMs":12,"sent":70000,"writeError":null}"#,
        )
        .expect("parses");
        assert_eq!((r.status(), r.end, r.sent), (Some(431), RawEnd::Eof, 70000));
        assert!(r.closed());
        assert_eq!(
            parse(r#"{"reply":"","end":"??","elapsedMs":1,"sent":0}"#).map(|r| r.end),
            None
        );
    }
}
