//! kubelet's probes on `healthAddress` (in a DaemonSet `127.0.0.1:9879`, the agent sharing the
//! node's network): `GET /healthz` (liveness) and `GET /readyz` (readiness), nothing else.
//!
//! * `/healthz` is the admin API's: 200 while every supervised task runs, 503 naming the ones
//!   that do not. A failing liveness probe restarts the container; the data path, the pinned
//!   maps and the strict guard stay in force meanwhile.
//! * `/readyz` adds what a rolling update must wait for before it stops the previous agent: the
//!   agent has finished starting (the policy's first pass is on this node's interfaces and the
//!   peers are configured) and the data path answers now (within 1 s). The DaemonSet's
//!   `maxUnavailable: 0` makes the controller wait for this before it deletes the old pod.
//!
//! Like the metrics port, it is network-facing and hardened by [`Limits`].

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::listen::Limits;

use crate::api::{paths, Health};

/// `GET /readyz`.
pub const READYZ: &str = "/readyz";

/// What the probes read.
pub struct ProbeView {
    pub health: watch::Receiver<Health>,
    /// Set once the agent has finished starting.
    pub started: watch::Receiver<bool>,
    pub datapath: Arc<Datapath>,
}

/// Serves the two probes on `listener`.
pub fn serve(
    listener: Arc<TcpListener>,
    view: Arc<ProbeView>,
    limits: Limits,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    super::tcp::serve("health", listener, limits, move |req| {
        let view = view.clone();
        async move { probe(&req, &view).await }
    })
}

async fn probe(req: &Request<Incoming>, view: &ProbeView) -> Response<Full<Bytes>> {
    let (code, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, paths::HEALTHZ) => live(&view.health.borrow()),
        (&Method::GET, READYZ) => ready(view).await,
        (_, paths::HEALTHZ | READYZ) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".to_string(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}

fn live(health: &Health) -> (StatusCode, String) {
    match crate::api::health::unhealthy(health) {
        None => (StatusCode::OK, "ok\n".into()),
        Some(down) => (StatusCode::SERVICE_UNAVAILABLE, format!("{down}\n")),
    }
}

async fn ready(view: &ProbeView) -> (StatusCode, String) {
    let (code, body) = live(&view.health.borrow());
    if code != StatusCode::OK {
        return (code, body);
    }
    if !*view.started.borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the first policy pass and the peers are not in place yet\n".into(),
        );
    }
    match tokio::time::timeout(Duration::from_secs(1), view.datapath.get()).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the data path does not answer: {e}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the data path did not answer within 1 s\n".into(),
        ),
    }
}
