//! `GET /v1/flows` on the admin API: the agent's ring of recent flow records (kernel flow
//! events and the L7 proxy's request records), after a sequence number, long-polled. Read
//! only; readers never slow the writers (the ring is bounded and only cloned from).

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use wiremesh_l7::flows::FlowLog;

use super::{Reply, Routes};
use crate::api::paths;

/// Records per answer, and the longest wait a client may ask for.
const LIMIT: usize = 1000;
const MAX_WAIT: Duration = Duration::from_secs(30);

pub fn register(routes: &mut Routes, log: Arc<FlowLog>) {
    routes.get(paths::FLOWS, move |call| {
        let log = log.clone();
        async move {
            let (after, wait) = match parse_query(call.query.as_deref().unwrap_or("")) {
                Ok(q) => q,
                Err(e) => return Reply::with(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let flows = log.wait_after(after, LIMIT, wait).await;
            let mut body = String::new();
            for flow in flows {
                match serde_json::to_string(&flow) {
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
