//! HTTP over the agent's local sockets (the admin API and the metrics listener): the hyper
//! settings and the request limits every HTTP listener shares. The socket-level parts (peer
//! credentials, the connection cap, write deadlines) are the data path's `listen` module.

use tokio::io::{AsyncRead, AsyncWrite};
use wiremesh_datapath::listen::{Limits, WriteDeadline};

/// The HTTP/1.1 server settings every HTTP listener uses: headers within `header_timeout` (16 KiB
/// at most), one request per connection (nothing to idle on), and a timer for the timeouts.
pub fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(16 << 10)
        .keep_alive(false);
    builder
}

/// Serves one HTTP connection under `limits`: the client must send its head in time, may not
/// stall a write, and a connection that sends nothing at all is closed after `header_timeout`.
pub async fn serve_http<S, Svc>(stream: S, limits: Limits, svc: Svc)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    Svc: hyper::service::HttpService<hyper::body::Incoming>,
    Svc::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    Svc::ResBody: 'static,
    <Svc::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = hyper_util::rt::TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
    let conn = http1_builder(&limits).serve_connection(io, svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// A request body, at most `limits.max_body` bytes within `limits.body_timeout`; otherwise the
/// status and text to answer with (413, 408, 400).
pub async fn read_body(
    body: hyper::body::Incoming,
    limits: &Limits,
) -> Result<hyper::body::Bytes, (hyper::StatusCode, String)> {
    use http_body_util::BodyExt;
    use hyper::StatusCode;
    let limited = http_body_util::Limited::new(body, limits.max_body);
    match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {:?}\n",
                limits.body_timeout
            ),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {} bytes\n", limits.max_body),
        )),
        Ok(Err(e)) => Err((StatusCode::BAD_REQUEST, format!("{e}\n"))),
    }
}
