//! Long-running traffic judged packet by packet: a per-reply ping log (which replies came back,
//! and when), and an iperf3 TCP stream with its per-interval byte counts (where it stalled).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::error::{LabError, Result};
use crate::exec::{require_tools, BgProcess};
use crate::handles::HostHandle;
use crate::traffic::PingResult;

/// What a `ping -D` (per-reply, timestamped) run logged.
#[derive(Debug, Clone, PartialEq)]
pub struct PingLog {
    /// `(unix time, icmp_seq)` of every reply, in arrival order.
    pub replies: Vec<(f64, u32)>,
    /// The summary line, once ping has exited.
    pub summary: Option<PingResult>,
}

impl PingLog {
    /// Parses iputils' `[1700000000.123456] 64 bytes from 10.244.2.11: icmp_seq=7 ttl=62 ...`
    /// lines and the summary; other lines (errors, the header) are ignored.
    pub fn parse(text: &str) -> Self {
        let replies = text
            .lines()
            .filter(|l| l.contains(" bytes from "))
            .filter_map(|l| {
                let ts = l.strip_prefix('[')?.split_once(']')?.0.parse().ok()?;
                let seq = l
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix("icmp_seq="))?
                    .parse()
                    .ok()?;
                Some((ts, seq))
            })
            .collect();
        Self {
            replies,
            summary: PingResult::parse(text).ok(),
        }
    }

    /// When the first reply arrived (Unix seconds).
    pub fn first_reply_at(&self) -> Option<f64> {
        self.replies.first().map(|r| r.0)
    }

    /// Sequence numbers in `1..=sent` that got no reply.
    pub fn missing(&self, sent: u32) -> Vec<u32> {
        let got: std::collections::BTreeSet<u32> = self.replies.iter().map(|r| r.1).collect();
        (1..=sent).filter(|s| !got.contains(s)).collect()
    }

    /// When packet `seq` was about to be answered (Unix seconds): its reply's time, or for a lost
    /// one the time interpolated between the nearest replies on either side (ping sends at a
    /// steady pace, so this places a loss within a few milliseconds).
    pub fn time_of(&self, seq: u32) -> Option<f64> {
        let before = self
            .replies
            .iter()
            .filter(|r| r.1 <= seq)
            .max_by_key(|r| r.1);
        let after = self
            .replies
            .iter()
            .filter(|r| r.1 >= seq)
            .min_by_key(|r| r.1);
        match (before, after) {
            (Some(&(t, s)), _) if s == seq => Some(t),
            (Some(&(t0, s0)), Some(&(t1, s1))) => {
                Some(t0 + (t1 - t0) * f64::from(seq - s0) / f64::from(s1 - s0))
            }
            (Some(&(t, _)), None) | (None, Some(&(t, _))) => Some(t),
            (None, None) => None,
        }
    }

    /// Every lost packet in `1..=sent` placed against `events` (`(unix time, what)`, in time
    /// order): `icmp_seq=N at +123 ms after <the latest event before it>`, one line each.
    pub fn explain_losses(&self, sent: u32, events: &[(f64, String)]) -> Vec<String> {
        self.missing(sent)
            .into_iter()
            .map(|seq| {
                let Some(t) = self.time_of(seq) else {
                    return format!("icmp_seq={seq} (no reply at all to place it)");
                };
                match events.iter().rev().find(|e| e.0 <= t) {
                    Some((at, what)) => format!(
                        "icmp_seq={seq} at +{:.0} ms after {what}",
                        (t - at) * 1000.0
                    ),
                    None => format!("icmp_seq={seq} before any event"),
                }
            })
            .collect()
    }

    /// The longest time between two consecutive replies.
    pub fn longest_gap(&self) -> Duration {
        let gap = self
            .replies
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .fold(0.0_f64, f64::max);
        Duration::from_secs_f64(gap.max(0.0))
    }
}

/// What iperf3's `--json` report says about a client run.
#[derive(Debug, Clone, PartialEq)]
pub struct IperfReport {
    /// `(start, seconds, bytes)` per reporting interval.
    pub intervals: Vec<(f64, f64, u64)>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    /// iperf3's own error, if it reported one.
    pub error: Option<String>,
}

impl IperfReport {
    pub fn parse(json: &str) -> Result<Self> {
        let doc: Value = serde_json::from_str(json).map_err(|_| LabError::Parse {
            what: "iperf3 JSON report".into(),
            input: json.chars().take(2000).collect(),
        })?;
        let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let intervals = doc
            .get("intervals")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|i| i.get("sum"))
                    .map(|s| (num(s, "start"), num(s, "seconds"), num(s, "bytes") as u64))
                    .collect()
            })
            .unwrap_or_default();
        let end = doc.get("end").cloned().unwrap_or(Value::Null);
        let sent = end.get("sum_sent").cloned().unwrap_or(Value::Null);
        let received = end.get("sum_received").cloned().unwrap_or(Value::Null);
        Ok(Self {
            intervals,
            bytes_sent: num(&sent, "bytes") as u64,
            bytes_received: num(&received, "bytes") as u64,
            retransmits: num(&sent, "retransmits") as u64,
            error: doc.get("error").and_then(Value::as_str).map(str::to_owned),
        })
    }

    /// The longest run of consecutive intervals that moved no byte, and when it started.
    pub fn longest_stall(&self) -> (Duration, f64) {
        let (mut best, mut best_at) = (0.0_f64, 0.0);
        let (mut run, mut run_at) = (0.0_f64, 0.0);
        for &(start, secs, bytes) in &self.intervals {
            if bytes == 0 {
                if run == 0.0 {
                    run_at = start;
                }
                run += secs;
                if run > best {
                    (best, best_at) = (run, run_at);
                }
            } else {
                run = 0.0;
            }
        }
        (Duration::from_secs_f64(best.max(0.0)), best_at)
    }
}

/// A running iperf3 client; [`IperfClient::finish`] waits for it and reads its report.
#[derive(Debug)]
pub struct IperfClient {
    proc: BgProcess,
    json: PathBuf,
    duration: Duration,
}

impl IperfClient {
    /// Waits until the run is over (its duration plus `grace`) and parses the report.
    pub fn finish(mut self, grace: Duration) -> Result<IperfReport> {
        let status = self.proc.wait_timeout(self.duration + grace)?;
        let json = std::fs::read_to_string(&self.json).map_err(|e| LabError::io(&self.json, e))?;
        let report = IperfReport::parse(&json).map_err(|e| {
            LabError::Check(format!(
                "iperf3 ({status}): {e}; stderr: {}",
                self.proc.log()
            ))
        })?;
        Ok(report)
    }
}

impl HostHandle<'_> {
    /// Starts a one-shot `iperf3 -s -1` here and waits until it listens; returns it and its
    /// port.
    pub fn iperf_server(&self) -> Result<(BgProcess, u16)> {
        let host = self.host;
        require_tools(&["iperf3"])?;
        let port = self.lab.next_port();
        let log = self.lab.dir().join(format!("iperf3-server-{port}.log"));
        let mut cmd = self.lab.host_cmd(host, "iperf3");
        cmd.args(["-s", "-1", "-p", &port.to_string()]);
        let mut server = BgProcess::spawn(format!("iperf3 -s on {host}"), &mut cmd, &log)?;
        self.lab
            .wait_listening(host, &port.to_string(), &mut server)?;
        Ok((server, port))
    }

    /// Starts `iperf3 -c to -p port -t <duration> -i 0.25 -b <bitrate> --json` here.
    pub fn iperf_client(
        &self,
        to: Ipv4Addr,
        port: u16,
        duration: Duration,
        bitrate: &str,
    ) -> Result<IperfClient> {
        let from = self.host;
        let json = self.lab.dir().join(format!("iperf3-client-{port}.json"));
        let log = self.lab.dir().join(format!("iperf3-client-{port}.log"));
        let mut cmd = self.lab.host_cmd(from, "iperf3");
        cmd.args(["-c", &to.to_string(), "-p", &port.to_string()])
            .args(["-t", &duration.as_secs().max(1).to_string()])
            .args(["-i", "0.25", "-b", bitrate, "--json"]);
        let proc = BgProcess::spawn_split(format!("iperf3 -c on {from}"), &mut cmd, &json, &log)?;
        Ok(IperfClient {
            proc,
            json,
            duration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timestamped_replies() {
        let text = "PING 10.244.2.11 (10.244.2.11) 56(84) bytes of data.\n\
            [1700000000.100000] 64 bytes from 10.244.2.11: icmp_seq=1 ttl=62 time=0.5 ms\n\
            From 10.244.1.1 icmp_seq=2 Destination Net Unreachable\n\
            [1700000000.350000] 64 bytes from 10.244.2.11: icmp_seq=3 ttl=62 time=0.5 ms\n\n\
            --- 10.244.2.11 ping statistics ---\n\
            3 packets transmitted, 2 received, +1 errors, 33% packet loss, time 20ms\n";
        let log = PingLog::parse(text);
        assert_eq!(log.replies, [(1_700_000_000.1, 1), (1_700_000_000.35, 3)]);
        assert_eq!(log.missing(3), [2]);
        assert_eq!(log.first_reply_at(), Some(1_700_000_000.1));
        assert!((log.longest_gap().as_secs_f64() - 0.25).abs() < 1e-3);
        assert_eq!(log.summary.map(|s| (s.sent, s.received)), Some((3, 2)));
    }

    #[test]
    fn places_each_loss_after_the_event_before_it() {
        let at = |seq: u32| 1_700_000_000.0 + f64::from(seq) * 0.01;
        let log = PingLog {
            replies: (1..=100)
                .filter(|s| ![15, 60, 61].contains(s))
                .map(|s| (at(s), s))
                .collect(),
            summary: None,
        };
        assert!((log.time_of(15).unwrap() - at(15)).abs() < 1e-6);
        assert!((log.time_of(61).unwrap() - at(61)).abs() < 1e-6);
        let events = [
            (at(10), "kill 1 (node-2)".to_string()),
            (at(50), "kill 2 (node-1)".to_string()),
        ];
        assert_eq!(
            log.explain_losses(100, &events),
            [
                "icmp_seq=15 at +50 ms after kill 1 (node-2)",
                "icmp_seq=60 at +100 ms after kill 2 (node-1)",
                "icmp_seq=61 at +110 ms after kill 2 (node-1)",
            ]
        );
        assert_eq!(
            log.explain_losses(100, &events[1..])[0],
            "icmp_seq=15 before any event"
        );
        let none = PingLog {
            replies: vec![],
            summary: None,
        };
        assert_eq!(
            none.explain_losses(1, &events),
            ["icmp_seq=1 (no reply at all to place it)"]
        );
    }

    #[test]
    fn finds_the_longest_stall() {
        let json = r#"{"intervals":[
            {"sum":{"start":0,"seconds":0.25,"bytes":100}},
            {"sum":{"start":0.25,"seconds":0.25,"bytes":0}},
            {"sum":{"start":0.5,"seconds":0.25,"bytes":0}},
            {"sum":{"start":0.75,"seconds":0.25,"bytes":5}},
            {"sum":{"start":1.0,"seconds":0.25,"bytes":0}}],
            "end":{"sum_sent":{"bytes":105,"retransmits":2},"sum_received":{"bytes":105}}}"#;
        let r = IperfReport::parse(json).expect("parses");
        let (stall, at) = r.longest_stall();
        assert!((stall.as_secs_f64() - 0.5).abs() < 1e-9);
        assert!((at - 0.25).abs() < 1e-9);
        assert_eq!((r.bytes_sent, r.retransmits, r.error), (105, 2, None));
    }
}
