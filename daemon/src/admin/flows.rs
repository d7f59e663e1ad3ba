//! `GET /v1/flows` on the admin API: the agent's ring of recent flow records (kernel flow
//! events and the L7 proxy's request records), after a sequence number, long-polled. Read
//! only; readers never slow the writers (the ring is bounded and only cloned from). Each read
//! first has the agent bring in the proxy's records ([`Observers::catch_up`]), which it does
//! only while someone reads.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use tokio::sync::watch;
use wiremesh_l7::flows::{FlowLog, Stats};

use super::{Reply, Routes};
use crate::api::paths;

/// Who asks for flows, and how far the collector has caught up with them. The proxy's request
/// records are read only while someone observes (Hubble's model: records wait in the proxy's
/// ring until asked for), so that nobody observing costs the proxy nothing beyond its ring.
#[derive(Debug, Default)]
pub struct Observers {
    /// Bumped by every read of the flows.
    pub asked: watch::Sender<u64>,
    /// The latest `asked` for which the collector has read the proxy.
    pub synced: watch::Sender<u64>,
}

impl Observers {
    /// Called before the flows are read: wakes the collector and waits, at most `within`,
    /// until it has brought in the proxy's records.
    pub async fn catch_up(&self, within: Duration) {
        if self.asked.receiver_count() == 0 {
            // No collector (nothing enforced): nothing to bring in.
            return;
        }
        let mut ask = 0;
        self.asked.send_modify(|a| {
            *a += 1;
            ask = *a;
        });
        let mut synced = self.synced.subscribe();
        let _ = tokio::time::timeout(within, synced.wait_for(|s| *s >= ask)).await;
    }
}

/// What the agent knows of flows: its ring, who observes it, the proxy's counters.
#[derive(Clone)]
pub struct Flows {
    pub log: Arc<FlowLog>,
    pub observers: Arc<Observers>,
    /// The proxy's counters as last read (`None`: no proxy answering), for metrics.
    pub proxy_stats: Arc<watch::Sender<Option<Arc<Stats>>>>,
}

impl Default for Flows {
    fn default() -> Self {
        Self {
            log: Arc::new(FlowLog::default()),
            observers: Arc::default(),
            proxy_stats: Arc::new(watch::Sender::new(None)),
        }
    }
}

/// How long a read waits for the proxy's records to be brought in.
const CATCH_UP: Duration = Duration::from_secs(1);

/// Records per answer, and the longest wait a client may ask for.
const LIMIT: usize = 1000;
const MAX_WAIT: Duration = Duration::from_secs(30);

pub fn register(routes: &mut Routes, flows: Flows) {
    routes.get(paths::FLOWS, move |call| {
        let flows = flows.clone();
        async move {
            let log = &flows.log;
            let (after, wait) = match parse_query(call.query.as_deref().unwrap_or("")) {
                Ok(q) => q,
                Err(e) => return Reply::with(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            flows.observers.catch_up(CATCH_UP).await;
            let records = log.wait_after(after, LIMIT, wait).await;
            let mut body = String::new();
            for flow in records {
                match serde_json::to_string(&*flow) {
                    Ok(line) => {
                        body.push_str(&line);
                        body.push('\n');
                    }
                    Err(e) => {
                        return Reply::with(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
                    }
                }
            }
            Reply::ok(body)
        }
    });
}

/// `after=N&wait=MS`, both optional (0 and no wait).
fn parse_query(query: &str) -> Result<(u64, Duration), String> {
    let (mut after, mut wait) = (0, Duration::ZERO);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("query parameter {key}: {value:?} is not a number"))
        };
        match key {
            "after" => after = number()?,
            "wait" => wait = Duration::from_millis(number()?).min(MAX_WAIT),
            other => return Err(format!("unknown query parameter {other:?} (after, wait)")),
        }
    }
    Ok((after, wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_read_and_bounded() {
        assert_eq!(parse_query(""), Ok((0, Duration::ZERO)));
        assert_eq!(
            parse_query("after=12&wait=500"),
            Ok((12, Duration::from_millis(500)))
        );
        assert_eq!(parse_query("wait=999999999").map(|q| q.1), Ok(MAX_WAIT));
        assert!(parse_query("after=x").unwrap_err().contains("after"));
        assert!(parse_query("since=1").unwrap_err().contains("since"));
    }
}
