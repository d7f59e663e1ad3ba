//! What the two network-facing listeners share (`metricsAddress`, `healthAddress`): binding at
//! start, so that a taken port fails start-up, and an accept loop of one-request HTTP/1.1
//! connections under [`Limits`], answered by a handler that sees only the request.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tokio::net::{TcpListener, TcpStream};
use wiremesh_datapath::listen::{self, Limits};

/// Why a listening address could not be served.
#[derive(Debug, thiserror::Error)]
#[error("binding {key} {addr}")]
pub struct BindError {
    key: &'static str,
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds the address of config key `key`.
pub async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { key, addr, source })
}

/// The accept loop (`what` in logs), which the agent runs as a supervised task: a restarted
/// loop serves the same listening socket. It only ends by panicking.
pub fn serve<H, Fut>(
    what: &'static str,
    listener: Arc<TcpListener>,
    limits: Limits,
    handler: H,
) -> impl Future<Output = ()> + Send + 'static
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    listen::accept_loop(
        what,
        limits.max_conns,
        move || {
            let listener = listener.clone();
            async move { listener.accept().await.map(|(s, _)| s) }
        },
        move |stream: TcpStream, permit| {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                crate::http::serve_http(stream, limits, svc).await;
                drop(permit);
            });
        },
    )
}
