//! Traffic between lab hosts: ping (iputils) and TCP transfers (netcat-openbsd), every one bounded
//! in count and time.

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::addr::Host;
use crate::error::{LabError, Result};
use crate::exec::{check, output, run, BgProcess};
use crate::handles::HostHandle;
use crate::lab::Lab;

/// Ports for TCP transfers; each transfer takes a fresh one so no listener ever races a
/// previous connection in TIME_WAIT.
static NEXT_PORT: AtomicU16 = AtomicU16::new(20_000);
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// One bounded ping run.
#[derive(Debug, Clone)]
pub struct Ping {
    pub to: IpAddr,
    pub count: u32,
    pub interval: Duration,
    /// Up to 16 bytes as hex (`ping -p`), repeated through the payload.
    pub pattern: Option<String>,
    /// One line per reply with its Unix timestamp (`-D`, no `-q`), for [`crate::PingLog`].
    pub per_reply: bool,
}

impl Ping {
    /// An IPv4 or IPv6 destination (iputils picks the family from the address).
    pub fn new(to: impl Into<IpAddr>) -> Self {
        Self {
            to: to.into(),
            count: 3,
            interval: Duration::from_millis(200),
            pattern: None,
            per_reply: false,
        }
    }

    pub fn count(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Fills the payload with `bytes` (at most 16).
    pub fn pattern(mut self, bytes: &[u8]) -> Self {
        self.pattern = Some(bytes.iter().map(|b| format!("{b:02x}")).collect());
        self
    }

    /// Logs every reply with its time (see [`crate::PingLog`]).
    pub fn per_reply(mut self) -> Self {
        self.per_reply = true;
        self
    }

    /// How long ping may run: every packet's slot plus time for the last replies.
    pub fn deadline(&self) -> Duration {
        self.interval * self.count + Duration::from_secs(3)
    }

    pub(crate) fn args(&self) -> Vec<String> {
        let mut args = vec![
            "-n".into(),
            if self.per_reply { "-D" } else { "-q" }.into(),
            "-c".into(),
            self.count.to_string(),
            "-i".into(),
            format!("{:.3}", self.interval.as_secs_f64()),
            // No `-w`: with a deadline, iputils keeps sending past `-c` until that many replies
            // arrived, which would hide losses. `-W` bounds the wait for the last replies, and
            // the caller's timeout bounds the whole run.
            "-W".into(),
            "1".into(),
        ];
        if let Some(p) = &self.pattern {
            args.extend(["-p".into(), p.clone()]);
        }
        args.push(self.to.to_string());
        args
    }
}

/// Packets sent and replies received, from ping's summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
}

impl PingResult {
    /// Parses iputils' `N packets transmitted, M received, ...` line.
    pub fn parse(output: &str) -> Result<Self> {
        let parse_err = || LabError::Parse {
            what: "ping summary".into(),
            input: output.to_owned(),
        };
        let line = output
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .ok_or_else(parse_err)?;
        let mut fields = line.split(',').map(str::trim);
        let number =
            |field: Option<&str>| -> Option<u32> { field?.split_whitespace().next()?.parse().ok() };
        let sent = number(fields.next()).ok_or_else(parse_err)?;
        let received = number(fields.next()).ok_or_else(parse_err)?;
        Ok(Self { sent, received })
    }

    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }

    pub fn all_received(&self) -> bool {
        self.sent > 0 && self.received == self.sent
    }
}

impl std::fmt::Display for PingResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} received", self.received, self.sent)
    }
}

/// `len` bytes of a fixed, position-dependent pattern, so a truncated, reordered or corrupted
/// transfer never compares equal.
pub fn test_data(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

impl Lab {
    /// A fresh TCP port for a listener in the lab.
    pub fn next_port(&self) -> u16 {
        NEXT_PORT.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn wait_listening(
        &self,
        host: Host,
        port: &str,
        server: &mut BgProcess,
    ) -> Result<()> {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        let filter = format!("sport = :{port}");
        loop {
            let mut ss = Command::new("ss");
            ss.args(["-N", &self.ns(host), "-H", "-l", "-t", "-n", &filter]);
            if !run(&mut ss, LISTEN_TIMEOUT)?.trim().is_empty() {
                return Ok(());
            }
            if let Some(status) = server.exited() {
                return Err(LabError::Check(format!(
                    "listener on {host} exited ({status}): {}",
                    server.log()
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("nc to listen on {host} port {port}"),
                    after: LISTEN_TIMEOUT,
                    last: server.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl HostHandle<'_> {
    /// Runs `ping` here and returns its summary (lost packets are not an error).
    pub fn ping(&self, ping: &Ping) -> Result<PingResult> {
        let from = self.host;
        let mut cmd = self.lab.host_cmd(from, "ping");
        cmd.args(ping.args());
        let out = output(&mut cmd, None, ping.deadline() + Duration::from_secs(5))?;
        let text = String::from_utf8_lossy(&out.stdout);
        PingResult::parse(&text).map_err(|_| LabError::Command {
            cmd: crate::exec::describe(&cmd),
            status: out.status.to_string(),
            stderr: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        })
    }

    /// Starts `ping` here in the background; parse its log with [`PingResult::parse`] once it
    /// has exited (it stops by itself after `ping.deadline()`).
    pub fn spawn_ping(&self, ping: &Ping) -> Result<BgProcess> {
        let from = self.host;
        let log = self.lab.dir().join(format!(
            "ping-{}.log",
            NEXT_PORT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = self.lab.host_cmd(from, "ping");
        cmd.args(ping.args());
        BgProcess::spawn(format!("ping {from} -> {}", ping.to), &mut cmd, &log)
    }

    /// Pings `to` from here once per attempt until a reply comes back; returns how long it took.
    pub fn wait_reachable(&self, to: impl Into<IpAddr>, timeout: Duration) -> Result<Duration> {
        let from = self.host;
        let to = to.into();
        let start = Instant::now();
        loop {
            let last = match self.ping(&Ping::new(to).count(1)) {
                Ok(result) if result.received > 0 => return Ok(start.elapsed()),
                Ok(result) => result.to_string(),
                // "Network is unreachable" while routes are being set up is worth retrying.
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= timeout {
                return Err(LabError::Timeout {
                    what: format!("{to} to answer ping from {from}"),
                    after: timeout,
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `data` over one TCP connection from here to a listener on `to`, and returns what
    /// the listener received.
    pub fn tcp_send(&self, to: Host, data: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let from = self.host;
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed).to_string();
        let received = self.lab.dir().join(format!("tcp-{port}.out"));
        let log = self.lab.dir().join(format!("tcp-{port}.log"));
        let mut server_cmd = self.lab.host_cmd(to, "nc");
        server_cmd.args(["-l", "-n", &port]);
        let mut server =
            BgProcess::spawn_split(format!("nc -l on {to}"), &mut server_cmd, &received, &log)?;
        self.lab.wait_listening(to, &port, &mut server)?;

        let mut client = self.lab.host_cmd(from, "nc");
        client.args(["-N", "-n", "-w", "5", &to.ip().to_string(), &port]);
        let out = output(&mut client, Some(data), timeout)?;
        check(&client, &out)?;
        server.wait_timeout(timeout)?;
        std::fs::read(&received).map_err(|e| LabError::io(&received, e))
    }

    /// Sends `len` bytes of [`test_data`] from here to `to` and checks they arrived intact.
    pub fn tcp_transfer(&self, to: Host, len: usize, timeout: Duration) -> Result<()> {
        let from = self.host;
        let data = test_data(len);
        let got = self.tcp_send(to, &data, timeout)?;
        if got == data {
            return Ok(());
        }
        let first_diff = data
            .iter()
            .zip(&got)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(len));
        Err(LabError::Check(format!(
            "TCP {from} -> {to}: sent {len} bytes, received {} (first difference at byte {first_diff})",
            got.len()
        )))
    }
}

/// A bulk transfer's outcome: the SHA-256 of what was sent and of what arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bulk {
    pub bytes: u64,
    pub sent_sha256: String,
    pub received_sha256: String,
    pub took: Duration,
}

impl Bulk {
    pub fn intact(&self) -> bool {
        self.sent_sha256 == self.received_sha256
    }

    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.took.as_secs_f64().max(1e-9) / 1e9
    }
}

/// The first word of `sha256sum`'s output.
fn sha256_of(out: &str) -> String {
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

impl HostHandle<'_> {
    /// Sends `bytes` of random data from here to `to` over one TCP connection, the receiver
    /// hashing it as it arrives (nothing is kept in memory): for transfers too large for
    /// [`HostHandle::tcp_transfer`]. The data is written to a file in the lab directory first
    /// (removed afterwards), so the sent hash is of exactly what was sent.
    pub fn bulk_transfer(&self, to: Host, bytes: u64, timeout: Duration) -> Result<Bulk> {
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed).to_string();
        let data = self.lab.dir().join(format!("bulk-{port}.bin"));
        let sum = self.lab.dir().join(format!("bulk-{port}.sha256"));
        let log = self.lab.dir().join(format!("bulk-{port}.log"));
        let made = run(
            Command::new("sh")
                .args([
                    "-c",
                    "head -c \"$1\" /dev/urandom > \"$2\" && sha256sum \"$2\"",
                ])
                .arg("sh")
                .arg(bytes.to_string())
                .arg(&data),
            timeout,
        );
        let sent = made.map(|out| sha256_of(&out));
        let result = sent.and_then(|sent| {
            self.send_file(to, &port, &data, &sum, &log, timeout)
                .map(|took| (sent, took))
        });
        let _ = std::fs::remove_file(&data);
        let (sent_sha256, took) = result?;
        let received = std::fs::read_to_string(&sum).map_err(|e| LabError::io(&sum, e))?;
        Ok(Bulk {
            bytes,
            sent_sha256,
            received_sha256: sha256_of(&received),
            took,
        })
    }

    fn send_file(
        &self,
        to: Host,
        port: &str,
        data: &std::path::Path,
        sum: &std::path::Path,
        log: &std::path::Path,
        timeout: Duration,
    ) -> Result<Duration> {
        let mut server_cmd = self.lab.host_cmd(to, "sh");
        server_cmd
            .args(["-c", "nc -l -n \"$1\" | sha256sum > \"$2\""])
            .arg("sh")
            .arg(port)
            .arg(sum);
        let mut server =
            BgProcess::spawn(format!("nc -l | sha256sum on {to}"), &mut server_cmd, log)?;
        self.lab.wait_listening(to, port, &mut server)?;
        let start = Instant::now();
        let mut client = self.lab.host_cmd(self.host, "sh");
        client
            .args(["-c", "nc -N -n -w 10 \"$1\" \"$2\" < \"$3\""])
            .arg("sh")
            .arg(to.ip().to_string())
            .arg(port)
            .arg(data);
        let out = output(&mut client, None, timeout)?;
        check(&client, &out)?;
        server.wait_timeout(Duration::from_secs(10))?;
        Ok(start.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iputils_summary() {
        let out = "PING 10.244.2.11 (10.244.2.11) 56(84) bytes of data.\n\n\
                   --- 10.244.2.11 ping statistics ---\n\
                   300 packets transmitted, 298 received, 0.666667% packet loss, time 6000ms\n";
        assert_eq!(
            PingResult::parse(out).expect("parses"),
            PingResult {
                sent: 300,
                received: 298
            }
        );
        let errors = "1 packets transmitted, 0 received, +1 errors, 100% packet loss, time 0ms\n";
        let r = PingResult::parse(errors).expect("parses");
        assert_eq!((r.sent, r.received, r.lost()), (1, 0, 1));
        assert!(PingResult::parse("ping: connect: Network is unreachable").is_err());
    }

    #[test]
    fn ping_arguments_are_bounded() {
        let ping = Ping::new(std::net::Ipv4Addr::new(10, 244, 2, 11))
            .count(300)
            .interval(Duration::from_millis(20))
            .pattern(b"WM");
        assert_eq!(
            ping.args().join(" "),
            "-n -q -c 300 -i 0.020 -W 1 -p 574d 10.244.2.11"
        );
    }

    #[test]
    fn test_data_is_deterministic_and_varied() {
        let a = test_data(4096);
        assert_eq!(a, test_data(4096));
        assert!(a.windows(2).filter(|w| w[0] == w[1]).count() < 100);
    }
}
