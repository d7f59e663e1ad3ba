//! The control socket: HTTP/1.1 on a Unix socket, root only (the data path's `Access` check on
//! the peer's kernel credentials), through which the agent pushes the configuration and reads
//! flows and counters. Routes: `PUT /v1/config`, `GET /v1/config/version`,
//! `GET /v1/flows?after=N&wait=MS&limit=L` (JSON lines), `GET /v1/stats`. It must never put
//! in force a configuration that did not decode entirely.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use wiremesh_datapath::listen::{accept_loop, Access, Role, WriteDeadline};

use crate::state::Shared;

/// Largest configuration accepted (every pod of a large cluster plus every endpoint's map).
pub const MAX_CONFIG: usize = 64 << 20;
/// Longest a flows reader may wait for a new record.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Most records in one flows answer.
pub const MAX_FLOWS: usize = 4096;

/// Binds the control socket at `path` (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    Access::default().restrict_socket_file(path)?;
    Ok(listener)
}

/// Serves the control socket for ever.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    let listener = Arc::new(listener);
    accept_loop(
        "L7 proxy control",
        16,
        move || {
            let listener = listener.clone();
            async move { listener.accept().await.map(|(s, _)| s) }
        },
        move |stream, permit| {
            let shared = shared.clone();
            tokio::spawn(async move {
                serve_conn(stream, shared).await;
                drop(permit);
            });
        },
    )
    .await;
}

async fn serve_conn(stream: UnixStream, shared: Arc<Shared>) {
    let refused = match Access::default().of_unix(&stream) {
        Ok(Role::Admin) => None,
        Ok(Role::Reader) => {
            Some("permission denied: the L7 proxy's control socket is root only".to_string())
        }
        Err(e) => Some(e.to_string()),
    };
    let io = TokioIo::new(WriteDeadline::new(stream, Duration::from_secs(10)));
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let refused = refused.clone();
        async move {
            Ok::<_, Infallible>(match refused {
                Some(text) => text_answer(StatusCode::FORBIDDEN, format!("{text}\n")),
                None => route(&shared, req).await,
            })
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .serve_connection(io, svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "control connection ended with an error");
    }
}

async fn route(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let query = parse_query(req.uri().query().unwrap_or(""));
    match (req.method(), req.uri().path()) {
        (&Method::PUT, "/v1/config") => put_config(shared, req.into_body()).await,
        (&Method::GET, "/v1/config/version") => {
            json_answer(&serde_json::json!({ "version": shared.snapshot().version }))
        }
        (&Method::GET, "/v1/stats") => {
            json_answer(&shared.flows.snapshot(shared.snapshot().version))
        }
        (&Method::GET, "/v1/flows") => {
            let num = |k: &str| query.get(k).and_then(|v| v.parse::<u64>().ok());
            let after = num("after").unwrap_or(0);
            let wait = Duration::from_millis(num("wait").unwrap_or(0)).min(MAX_WAIT);
            let limit = num("limit").map_or(MAX_FLOWS, |l| (l as usize).min(MAX_FLOWS));
            let flows = shared.flows.wait_after(after, limit, wait).await;
            let mut body = Vec::new();
            for f in &flows {
                if serde_json::to_writer(&mut body, &**f).is_ok() {
                    body.push(b'\n');
                }
            }
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            resp
        }
        (_, path) => text_answer(StatusCode::NOT_FOUND, format!("no route {path}\n")),
    }
}

async fn put_config(shared: &Shared, body: Incoming) -> Response<Full<Bytes>> {
    let collected = tokio::time::timeout(
        Duration::from_secs(30),
        Limited::new(body, MAX_CONFIG).collect(),
    )
    .await;
    let bytes = match collected {
        Err(_) => return text_answer(StatusCode::REQUEST_TIMEOUT, "body too slow\n".into()),
        Ok(Err(e)) => {
            return text_answer(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n"))
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    let cfg = match crate::config::parse(&bytes) {
        Ok(cfg) => cfg,
        Err(e) => return text_answer(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let version = match shared.apply(&cfg) {
        Ok(v) => v,
        Err(e) => return text_answer(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // In force even when it cannot be saved: enforcing the newest policy matters more than
    // surviving a restart with it; the agent sees `saved: false` and the log says why.
    let saved = match shared.save(&cfg) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "L7 configuration in force but not saved; a restarted proxy will enforce the previous one until the agent pushes again. Free space or fix permissions");
            false
        }
    };
    json_answer(&serde_json::json!({ "version": version, "saved": saved }))
}

fn parse_query(q: &str) -> HashMap<&str, &str> {
    q.split('&').filter_map(|kv| kv.split_once('=')).collect()
}

fn json_answer<T: serde::Serialize>(v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(v) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => text_answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn text_answer(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp
}
