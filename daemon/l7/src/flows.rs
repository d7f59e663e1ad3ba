//! Flow records (one per request, and one per connection refused before any request: garbage
//! bytes, a malformed head), kept in a bounded ring with a sequence number so that readers ask
//! for "everything after N" and may wait for more; plus per-verdict counters and a latency
//! histogram for metrics. Recording never blocks on a reader and memory never grows past the
//! ring: the oldest records are dropped.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Records kept by default.
pub const RING: usize = 4096;

/// One side of a flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowEndpoint {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub identity: u32,
    /// `key=value`, as Hubble shows them.
    pub labels: Vec<String>,
    pub ip: Option<IpAddr>,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4 {
    pub protocol: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L7 {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub latency_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Forwarded,
    Dropped,
    Audit,
    Error,
}

impl Verdict {
    const ALL: [Verdict; 4] = [
        Verdict::Forwarded,
        Verdict::Dropped,
        Verdict::Audit,
        Verdict::Error,
    ];

    fn index(self) -> usize {
        match self {
            Verdict::Forwarded => 0,
            Verdict::Dropped => 1,
            Verdict::Audit => 2,
            Verdict::Error => 3,
        }
    }
}

/// One flow record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// Position in this proxy's ring (restarts at 1 with the process).
    pub seq: u64,
    /// RFC 3339, milliseconds, UTC.
    pub time: String,
    pub source: FlowEndpoint,
    pub destination: FlowEndpoint,
    pub l4: L4,
    pub l7: Option<L7>,
    pub verdict: Verdict,
    pub drop_reason: Option<String>,
    pub policy: Option<String>,
}

impl Flow {
    /// A record stamped now; `seq` is set when it is recorded.
    pub fn now(source: FlowEndpoint, destination: FlowEndpoint, verdict: Verdict) -> Self {
        let port = destination.port;
        Self {
            seq: 0,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            source,
            destination,
            l4: L4 {
                protocol: "TCP".into(),
                port,
            },
            l7: None,
            verdict,
            drop_reason: None,
            policy: None,
        }
    }
}

/// Upper bounds (ms) of the latency histogram's buckets; one more bucket holds the rest.
pub const LATENCY_BOUNDS_MS: [f64; 12] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

/// Counters at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub forwarded: u64,
    pub dropped: u64,
    pub audit: u64,
    pub error: u64,
    /// Non-cumulative counts per bucket of [`LATENCY_BOUNDS_MS`], plus one for the rest.
    pub latency_buckets: Vec<u64>,
    pub latency_bounds_ms: Vec<f64>,
    pub latency_sum_ms: f64,
    pub latency_count: u64,
    /// Sequence number of the newest record.
    pub last_seq: u64,
    pub config_version: u64,
}

/// Records are shared (`Arc`), so that a reader copies pointers under the lock and serialises
/// outside it: a batch of a thousand records never holds up the requests being recorded.
struct Ring {
    flows: VecDeque<Arc<Flow>>,
    next: u64,
}

/// The flow log: ring, counters, histogram.
pub struct FlowLog {
    ring: Mutex<Ring>,
    capacity: usize,
    latest: watch::Sender<u64>,
    verdicts: [AtomicU64; 4],
    buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Default for FlowLog {
    fn default() -> Self {
        Self::new(RING)
    }
}

impl FlowLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                flows: VecDeque::with_capacity(capacity.min(RING)),
                next: 1,
            }),
            capacity: capacity.max(1),
            latest: watch::channel(0).0,
            verdicts: Default::default(),
            buckets: Default::default(),
            latency_sum_us: AtomicU64::new(0),
        }
    }

    /// Records `flow` (its `seq` is assigned here) and counts it.
    pub fn record(&self, flow: Flow) {
        self.verdicts[flow.verdict.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(l7) = &flow.l7 {
            self.observe_latency(l7.latency_ms);
        }
        self.keep(flow);
    }

    /// Keeps `flow` in the ring (its `seq` is assigned here) without counting it: a record
    /// another log has counted already (the agent keeps the proxy's records for `observe`;
    /// the proxy counts them).
    pub fn keep(&self, mut flow: Flow) {
        let seq = {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            flow.seq = ring.next;
            ring.next += 1;
            if ring.flows.len() == self.capacity {
                ring.flows.pop_front();
            }
            ring.flows.push_back(Arc::new(flow));
            ring.next - 1
        };
        self.latest.send_replace(seq);
    }

    fn observe_latency(&self, ms: f64) {
        let i = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        // Whole microseconds: the sum stays an integer counter.
        let us = (ms * 1000.0).max(0.0).round() as u64;
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Records with `seq > after`, oldest first, at most `limit`.
    pub fn after(&self, after: u64, limit: usize) -> Vec<Arc<Flow>> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // Sequence numbers are consecutive in the ring: the first newer record is found by
        // arithmetic, so a reader that keeps up costs what it reads, not the ring's size.
        let oldest = ring.flows.front().map_or(ring.next, |f| f.seq);
        let skip =
            usize::try_from(after.saturating_add(1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        ring.flows.iter().skip(skip).take(limit).cloned().collect()
    }

    /// [`FlowLog::after`], waiting up to `wait` for a first record when there is none yet.
    pub async fn wait_after(&self, after: u64, limit: usize, wait: Duration) -> Vec<Arc<Flow>> {
        let mut rx = self.latest.subscribe();
        let newer = rx.wait_for(|seq| *seq > after);
        // Timing out just means "nothing new": the answer is then empty.
        let _ = tokio::time::timeout(wait, newer).await;
        self.after(after, limit)
    }

    /// Counters now.
    pub fn snapshot(&self, config_version: u64) -> Stats {
        let v = |x: Verdict| self.verdicts[x.index()].load(Ordering::Relaxed);
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        Stats {
            forwarded: v(Verdict::Forwarded),
            dropped: v(Verdict::Dropped),
            audit: v(Verdict::Audit),
            error: v(Verdict::Error),
            latency_count: buckets.iter().sum(),
            latency_buckets: buckets,
            latency_bounds_ms: LATENCY_BOUNDS_MS.to_vec(),
            latency_sum_ms: self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1000.0,
            last_seq: *self.latest.borrow(),
            config_version,
        }
    }

    /// Every verdict with its count (for metrics exposition).
    pub fn verdict_counts(&self) -> Vec<(Verdict, u64)> {
        Verdict::ALL
            .iter()
            .map(|v| (*v, self.verdicts[v.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(verdict: Verdict, latency_ms: f64) -> Flow {
        let mut f = Flow::now(FlowEndpoint::default(), FlowEndpoint::default(), verdict);
        f.l7 = Some(L7 {
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            latency_ms,
        });
        f
    }

    #[test]
    fn ring_is_bounded_and_sequenced() {
        let log = FlowLog::new(3);
        for _ in 0..5 {
            log.record(flow(Verdict::Forwarded, 1.0));
        }
        let all = log.after(0, 100);
        assert_eq!(all.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
        let seqs = |after, limit| {
            log.after(after, limit)
                .iter()
                .map(|f| f.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(4, 100), vec![5]);
        assert_eq!(seqs(3, 100), vec![4, 5]);
        // Older than the oldest kept: everything kept.
        assert_eq!(seqs(1, 100), vec![3, 4, 5]);
        assert_eq!(seqs(0, 2), vec![3, 4]);
        assert_eq!(seqs(5, 100), Vec::<u64>::new());
        assert_eq!(seqs(u64::MAX, 100), Vec::<u64>::new());
        assert_eq!(FlowLog::new(3).after(0, 10).len(), 0);
        assert_eq!(log.snapshot(0).forwarded, 5);
        assert_eq!(log.snapshot(0).last_seq, 5);
    }

    #[test]
    fn counters_and_histogram() {
        let log = FlowLog::new(8);
        log.record(flow(Verdict::Forwarded, 0.2));
        log.record(flow(Verdict::Dropped, 3.0));
        log.record(flow(Verdict::Dropped, 9000.0));
        let s = log.snapshot(7);
        assert_eq!((s.forwarded, s.dropped, s.audit, s.error), (1, 2, 0, 0));
        assert_eq!(s.latency_buckets[0], 1);
        assert_eq!(s.latency_buckets[3], 1);
        assert_eq!(s.latency_buckets[LATENCY_BOUNDS_MS.len()], 1);
        assert_eq!(s.latency_count, 3);
        assert!(
            (s.latency_sum_ms - 9003.2).abs() < 0.01,
            "{}",
            s.latency_sum_ms
        );
        assert_eq!(s.config_version, 7);
    }

    #[test]
    fn json_names_are_the_issues() {
        let mut f = flow(Verdict::Dropped, 1.5);
        f.drop_reason = Some("Policy denied".into());
        let v = serde_json::to_value(&f).expect("serialises");
        for key in [
            "time",
            "source",
            "destination",
            "l4",
            "l7",
            "verdict",
            "dropReason",
            "policy",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["verdict"], "DROPPED");
        assert_eq!(v["l7"]["latencyMs"], 1.5);
        assert_eq!(v["l4"]["protocol"], "TCP");
        // RFC 3339 with milliseconds: 2026-12-02T16:40:00.123Z
        let t = v["time"].as_str().expect("a string");
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
    }

    #[tokio::test]
    async fn a_reader_waits_for_the_next_record() {
        let log = std::sync::Arc::new(FlowLog::new(8));
        log.record(flow(Verdict::Forwarded, 1.0));
        let empty = log.wait_after(1, 10, Duration::from_millis(50)).await;
        assert!(empty.is_empty());
        let writer = log.clone();
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.record(flow(Verdict::Error, 1.0));
        });
        let got = log.wait_after(1, 10, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].verdict, Verdict::Error);
        t.await.expect("writer");
    }
}
