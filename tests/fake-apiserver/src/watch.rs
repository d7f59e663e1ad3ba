//! Watches: newline-delimited JSON events (`ADDED`/`MODIFIED`/`DELETED`) after a
//! resourceVersion, `BOOKMARK`s every second when asked for, ended after `timeoutSeconds`; a
//! compacted resourceVersion gets an `ERROR` event carrying a 410 `Expired` `Status`, as the
//! real server sends. A compaction (or a restart from the state file) ends open watches.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::crud::Target;
use crate::request::{field_selector, Query};
use crate::resources::Resource;
use crate::response::{bad_request, status, Body};
use crate::state::{State, Store};

/// What one watch follows: one resource, in one namespace (empty: all), optionally one name.
struct Watched {
    r: &'static Resource,
    namespace: String,
    name: Option<String>,
    field_namespace: Option<String>,
}

impl Watched {
    fn events(&self, st: &State, after: u64) -> Vec<Value> {
        st.log
            .iter()
            .filter(|(rv, plural, e)| {
                let meta = &e["object"]["metadata"];
                let ns = meta["namespace"].as_str().unwrap_or("");
                let name = meta["name"].as_str().unwrap_or("");
                *rv > after
                    && *plural == self.r.plural
                    && (self.namespace.is_empty() || ns == self.namespace)
                    && self
                        .field_namespace
                        .as_deref()
                        .is_none_or(|want| want == ns)
                    && self.name.as_deref().is_none_or(|want| want == name)
            })
            .map(|(_, _, e)| e.clone())
            .collect()
    }
}

/// Where a watch starts and how it runs.
struct Options {
    from: u64,
    bookmarks: bool,
    until: Instant,
}

pub fn watch(store: &Arc<Store>, t: &Target, query: &Query) -> Response<Body> {
    let head = store.head.subscribe();
    let from: u64 = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => *head.borrow(),
        Some(rv) => match rv.parse() {
            Ok(rv) => rv,
            Err(_) => return bad_request(format!("invalid resourceVersion {rv:?}")),
        },
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let secs = query.get("timeoutSeconds").and_then(|s| s.parse().ok());
    let until = Instant::now() + Duration::from_secs(secs.unwrap_or(1800));
    let (name, field_namespace) = field_selector(query);
    let watched = Watched {
        r: t.r,
        namespace: t.namespace.clone(),
        name,
        field_namespace,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let options = Options {
        from,
        bookmarks,
        until,
    };
    tokio::spawn(stream_events(store.clone(), head, options, tx, watched));
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let json = hyper::header::HeaderValue::from_static("application/json");
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, json);
    resp
}

fn line(v: &Value) -> Bytes {
    Bytes::from(format!("{v}\n"))
}

async fn stream_events(
    store: Arc<Store>,
    mut head: watch::Receiver<u64>,
    options: Options,
    tx: mpsc::Sender<Bytes>,
    watched: Watched,
) {
    let mut cursor = options.from;
    loop {
        let batch = {
            let st = store.lock();
            if cursor < st.compacted {
                let msg = format!("too old resource version: {cursor} ({})", st.compacted);
                Err(status(StatusCode::GONE, "Expired", msg))
            } else {
                let events = watched.events(&st, cursor);
                cursor = st.rv;
                Ok(events)
            }
        };
        let events = match batch {
            Err(gone) => {
                let _ = tx
                    .send(line(&json!({ "type": "ERROR", "object": gone })))
                    .await;
                return;
            }
            Ok(events) => events,
        };
        for e in events {
            if tx.send(line(&e)).await.is_err() {
                return;
            }
        }
        let compacted_before = store.lock().compacted;
        tokio::select! {
            r = head.changed() => if r.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)), if options.bookmarks => {
                let bookmark = json!({ "type": "BOOKMARK", "object": {
                    "kind": watched.r.kind, "apiVersion": watched.r.api_version(),
                    "metadata": { "resourceVersion": cursor.to_string() },
                }});
                if tx.send(line(&bookmark)).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(options.until) => return,
        }
        // A compaction ends open watches, as an API server restart would.
        if store.lock().compacted != compacted_before {
            return;
        }
    }
}
