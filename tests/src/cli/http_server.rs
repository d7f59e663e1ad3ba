//! `wiremesh-lab http-server`: the HTTP server the L7 tests run in a pod. It answers every
//! request with 200 and `METHOD PATH from PEER_IP`, and appends that line to an access log, so
//! a test can prove which requests reached it (and from which address) and which did not.
//! HTTP/1.1 with keep-alive; it stops on SIGTERM or when its namespace goes. Without `--log`
//! (the benchmark's server) it writes nothing per request. A request with `Upgrade: websocket`
//! is accepted (101, logged with `upgrade`) and the connection then echoes the first bytes it
//! receives and closes: enough to show the bytes crossed an upgraded connection.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub fn run(port: u16, log: Option<PathBuf>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    rt.block_on(serve(port, log))
}

async fn serve(port: u16, log: Option<PathBuf>) -> anyhow::Result<()> {
    let file = match log {
        None => None,
        Some(log) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("opening {}", log.display()))?;
            Some(Arc::new(Mutex::new(file)))
        }
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0u16; 8], port)))
        .await
        .with_context(|| format!("listening on port {port}"))?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let file = file.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(req, peer, file.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

async fn answer(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    log: Option<Arc<Mutex<std::fs::File>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let ip = peer.ip().to_canonical();
    let line = format!("{} {} from {ip}", req.method(), req.uri().path());
    let websocket = req
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if websocket {
        if let Some(Ok(mut f)) = log.as_ref().map(|l| l.lock()) {
            let _ = writeln!(f, "{line} upgrade");
        }
        tokio::spawn(echo_once(hyper::upgrade::on(&mut req)));
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(
            hyper::header::CONNECTION,
            "upgrade".parse().expect("a header value"),
        );
        h.insert(
            hyper::header::UPGRADE,
            "websocket".parse().expect("a header value"),
        );
        return Ok(resp);
    }
    // The body is read whole (and counted) so chunked uploads are exercised end to end.
    let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
    let line = match body {
        Ok(0) | Err(_) => line,
        Ok(n) => format!("{line} body {n}"),
    };
    if let Some(Ok(mut f)) = log.as_ref().map(|l| l.lock()) {
        let _ = writeln!(f, "{line}");
    }
    Ok(Response::new(Full::new(Bytes::from(format!("{line}\n")))))
}

/// Echoes the first bytes of an upgraded connection, then closes it.
async fn echo_once(upgrade: hyper::upgrade::OnUpgrade) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(upgraded) = upgrade.await else {
        return;
    };
    let mut io = TokioIo::new(upgraded);
    let mut buf = [0u8; 4096];
    if let Ok(n) = io.read(&mut buf).await {
        let _ = io.write_all(&buf[..n]).await;
    }
    let _ = io.shutdown().await;
}
