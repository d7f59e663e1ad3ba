//! `wiremesh-lab http-load`: the load generator of `bench-l7`. A fixed number of HTTP/1.1
//! keep-alive connections, each sending `GET` requests back to back (one in flight per
//! connection), for a fixed time or a fixed number of requests, whichever ends first. It prints
//! one JSON [`LoadReport`] on stdout: requests answered 200, errors (any other status, a request
//! that failed or timed out, a connection that could not be made), requests/s and latency
//! percentiles of the answered requests.
//!
//! It runs inside a lab pod; it must never run unbounded: the duration is capped, every
//! connect and every request has a timeout, and the number of requests is capped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

/// One connect or one request may take this long before it counts as an error.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Latencies are kept in memory, one `u32` each: this caps that memory (16 MiB).
pub const MAX_REQUESTS: u64 = 4_000_000;
/// Longest run accepted.
pub const MAX_SECONDS: u64 = 600;

/// What to send, how hard and for how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub path: String,
    pub connections: usize,
    /// The run ends this long after the warm-up.
    pub duration: Duration,
    /// The run ends after this many measured requests (answered or not).
    pub max_requests: u64,
    /// Requests answered during this first stretch are not measured (connection set-up, the
    /// first handshake of a tunnel, caches).
    pub warmup: Duration,
}

/// The result, as printed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    /// Measured requests answered with 200.
    pub count: u64,
    /// Measured requests that failed: a status other than 200, a failed or timed-out request,
    /// a connection that could not be made.
    pub errors: u64,
    /// The first few errors, for a human.
    pub first_errors: Vec<String>,
    /// Answered requests per second over the measured window.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub seconds: f64,
    pub connections: usize,
}

pub fn run(spec: &LoadSpec) -> anyhow::Result<()> {
    ensure!(
        (1..=256).contains(&spec.connections),
        "--connections must be 1..=256"
    );
    ensure!(
        spec.duration <= Duration::from_secs(MAX_SECONDS),
        "--seconds must be at most {MAX_SECONDS}"
    );
    ensure!(
        (1..=MAX_REQUESTS).contains(&spec.max_requests),
        "--requests must be 1..={MAX_REQUESTS}"
    );
    ensure!(
        spec.warmup <= Duration::from_secs(60),
        "--warmup-ms must be at most 60000"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let report = rt.block_on(load(spec));
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// What one connection's task measured.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
    first_errors: Vec<String>,
    last_answer: Option<Instant>,
}

impl Tally {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_errors.len() < 3 {
            self.first_errors.push(what);
        }
    }
}

/// The shared clock and budget of one run.
struct Window {
    start: Instant,
    end: Instant,
    /// Measured requests still allowed to start.
    budget: AtomicU64,
}

impl Window {
    fn measuring(&self, at: Instant) -> bool {
        at >= self.start
    }

    /// Whether another request may start at `at`; a measured one takes from the budget.
    fn admit(&self, at: Instant) -> bool {
        if at >= self.end {
            return false;
        }
        !self.measuring(at)
            || self
                .budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                .is_ok()
    }
}

async fn load(spec: &LoadSpec) -> LoadReport {
    let now = Instant::now();
    let window = Arc::new(Window {
        start: now + spec.warmup,
        end: now + spec.warmup + spec.duration,
        budget: AtomicU64::new(spec.max_requests),
    });
    let tasks: Vec<_> = (0..spec.connections)
        .map(|_| tokio::spawn(connection(spec.addr, spec.path.clone(), window.clone())))
        .collect();
    let mut tallies = Vec::new();
    for task in tasks {
        match task.await {
            Ok(t) => tallies.push(t),
            Err(e) => {
                let mut t = Tally::default();
                t.error(format!("connection task failed: {e}"));
                tallies.push(t);
            }
        }
    }
    summarize(tallies, window.start, spec.connections)
}

/// One keep-alive connection, reopened after a failure, until the window or the budget ends.
async fn connection(addr: SocketAddr, path: String, window: Arc<Window>) -> Tally {
    let mut tally = Tally::default();
    let host = addr.to_string();
    'connect: while Instant::now() < window.end {
        let started = Instant::now();
        let mut sender = match open(addr).await {
            Ok(s) => s,
            Err(e) => {
                if window.measuring(started) {
                    tally.error(format!("connect {addr}: {e:#}"));
                }
                // A refused connection must not spin: the error is counted, the run goes on.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            if !window.admit(sent) {
                break 'connect;
            }
            let measured = window.measuring(sent);
            match request(&mut sender, &host, &path).await {
                Ok((200, close)) => {
                    let done = Instant::now();
                    if measured {
                        let us = done.duration_since(sent).as_micros();
                        tally
                            .latencies_us
                            .push(u32::try_from(us).unwrap_or(u32::MAX));
                        tally.last_answer = Some(done);
                    }
                    if close {
                        continue 'connect;
                    }
                }
                Ok((status, close)) => {
                    if measured {
                        tally.error(format!("GET {path}: status {status}"));
                    }
                    if close {
                        continue 'connect;
                    }
                }
                Err(e) => {
                    if measured {
                        tally.error(format!("GET {path}: {e:#}"));
                    }
                    continue 'connect;
                }
            }
        }
    }
    tally
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn open(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .context("timed out")??;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// The status, and whether the server closes the connection after this answer (a server may
/// end a keep-alive connection after any answer; the next request then opens a new one).
async fn request(sender: &mut Sender, host: &str, path: &str) -> anyhow::Result<(u16, bool)> {
    let exchange = async {
        sender.ready().await?;
        let req = Request::get(path)
            .header(hyper::header::HOST, host)
            .body(Empty::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let close = resp
            .headers()
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        resp.into_body().collect().await?;
        anyhow::Ok((status, close))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("timed out")?
}

fn summarize(tallies: Vec<Tally>, start: Instant, connections: usize) -> LoadReport {
    let mut latencies = Vec::new();
    let (mut errors, mut first_errors, mut last) = (0, Vec::new(), None);
    for t in tallies {
        latencies.extend(t.latencies_us);
        errors += t.errors;
        first_errors.extend(t.first_errors);
        last = last.max(t.last_answer);
    }
    first_errors.truncate(5);
    let seconds = last.map_or(0.0, |l| l.duration_since(start).as_secs_f64());
    latencies.sort_unstable();
    let count = latencies.len() as u64;
    LoadReport {
        count,
        errors,
        first_errors,
        rps: if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        },
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().map_or(0.0, |&us| f64::from(us) / 1e3),
        seconds,
        connections,
    }
}

/// The nearest-rank percentile of sorted microseconds, in milliseconds (0 for no samples).
fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted_us.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted_us.len()) - 1;
    f64::from(sorted_us[i]) / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7000], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn the_budget_stops_measured_requests_only() {
        let now = Instant::now();
        let w = Window {
            start: now + Duration::from_secs(1),
            end: now + Duration::from_secs(2),
            budget: AtomicU64::new(2),
        };
        assert!(w.admit(now), "warm-up requests take no budget");
        let measured = now + Duration::from_millis(1500);
        assert!(w.admit(measured) && w.admit(measured));
        assert!(!w.admit(measured), "the budget is spent");
        assert!(!w.admit(now + Duration::from_secs(2)), "the window is over");
    }

    #[test]
    fn summary_counts_errors_and_merges_connections() {
        let start = Instant::now();
        let mut a = Tally {
            latencies_us: vec![1000, 3000],
            last_answer: Some(start + Duration::from_secs(2)),
            ..Tally::default()
        };
        a.error("GET /: status 403".into());
        let b = Tally {
            latencies_us: vec![2000, 4000],
            last_answer: Some(start + Duration::from_secs(1)),
            ..Tally::default()
        };
        let r = summarize(vec![a, b], start, 2);
        assert_eq!((r.count, r.errors), (4, 1));
        assert_eq!(r.first_errors, ["GET /: status 403"]);
        assert_eq!((r.p50_ms, r.p99_ms, r.max_ms), (2.0, 4.0, 4.0));
        assert!((r.rps - 2.0).abs() < 1e-9, "4 answers over 2 s: {}", r.rps);
    }
}
