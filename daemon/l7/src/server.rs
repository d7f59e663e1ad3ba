//! The proxy's listeners and downstream connections: transparent listening sockets, the
//! connection cap (the data path's `accept_loop`), protocol sniffing (HTTP/2 prior-knowledge
//! preface → h2c; a request line → HTTP/1.1; anything else, or silence where only Istio sent
//! the connection here → an L4 decision, else a reset with a flow record), and
//! hyper's servers with the size and time limits. Requests themselves are judged and forwarded
//! by [`crate::handler`]. It must never let a connection through without hyper parsing it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use policy::Direction;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::decide::decide_opaque;
use crate::flows::Verdict;
use crate::forward::Proto;
use crate::framing::{Framing, Watched};
use crate::handler::{self, Conn};
use crate::io::{Idle, Prefixed};
use crate::state::Shared;

/// The HTTP/2 connection preface a prior-knowledge client opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bounds on downstream clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Connections served at once, all listeners together; more are closed at once.
    pub max_conns: usize,
    /// A request head must arrive within this (connection closed otherwise).
    pub header_timeout: Duration,
    /// A connection only Istio's AuthorizationPolicies brought here (the proxy as a waypoint)
    /// on which the client sent nothing for this long is taken for a protocol where the server
    /// speaks first (SMTP, MySQL, ...) and decided at L4, as one that is not HTTP is.
    pub server_first_after: Duration,
    /// A connection on which no byte moved for this long is closed.
    pub idle_timeout: Duration,
    /// Most header lines in one request (HTTP/1.1: 431 above).
    pub max_headers: usize,
    /// Largest request head, bytes (HTTP/1.1: 431 above; HTTP/2: header list size).
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_conns: 4096,
            header_timeout: Duration::from_secs(10),
            server_first_after: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(300),
            max_headers: 100,
            max_header_bytes: 64 << 10,
            max_streams: 256,
        }
    }
}

/// A listening socket on `addr` that accepts connections `tproxy` delivers for any address
/// (`IP_TRANSPARENT`); an IPv6 one is IPv6-only so that `0.0.0.0` and `[::]` can share a port.
pub fn bind_transparent(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_transparent_std(addr, false)?)
}

/// [`bind_transparent`] before any runtime owns it; with `reuse_port`, one of a group of
/// sockets on the same address among which the kernel spreads new connections (by their
/// addresses and ports), one per worker thread.
pub fn bind_transparent_std(
    addr: SocketAddr,
    reuse_port: bool,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    match addr {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => {
            socket.set_only_v6(true)?;
            crate::forward::set_ipv6_transparent(&socket)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Serves `listener` for ever: connections redirected in direction `dir`.
pub async fn serve_listener(listener: TcpListener, dir: Direction, shared: Arc<Shared>) {
    let what = match dir {
        Direction::Ingress => "L7 proxy (ingress)",
        Direction::Egress => "L7 proxy (egress)",
    };
    let slots = shared.conns.clone();
    let listener = Arc::new(listener);
    wiremesh_datapath::listen::accept_loop_sharing(
        what,
        slots,
        move || {
            let listener = listener.clone();
            async move { listener.accept().await.map(|(s, _)| s) }
        },
        move |stream, permit| {
            let shared = shared.clone();
            tokio::spawn(async move {
                serve_conn(stream, dir, shared).await;
                drop(permit);
            });
        },
    )
    .await;
}

/// What the first bytes of a connection say it is.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    Http1,
    Http2,
    NotHttp,
    /// Not a byte within the silence allowed: the server may be the one to speak first.
    Silent,
    /// Closed or timed out before a decision.
    Nothing,
}

/// Reads just enough to tell HTTP/2 prior knowledge, HTTP/1.x and anything else apart; with
/// `silence`, a client that sent nothing within it is `Silent`.
async fn sniff(
    stream: &mut TcpStream,
    timeout: Duration,
    silence: Option<Duration>,
) -> (Sniffed, Vec<u8>) {
    if let Some(silence) = silence {
        let mut probe = [0u8; 1];
        match tokio::time::timeout(silence, stream.peek(&mut probe)).await {
            Err(_) => return (Sniffed::Silent, Vec::new()),
            Ok(Ok(0) | Err(_)) => return (Sniffed::Nothing, Vec::new()),
            Ok(Ok(_)) => {}
        }
    }
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let read = async {
        loop {
            if let Some(kind) = classify(&buf) {
                return kind;
            }
            let mut chunk = [0u8; 24];
            let want = H2_PREFACE.len() - buf.len().min(H2_PREFACE.len());
            match stream.read(&mut chunk[..want.max(1)]).await {
                Ok(0) | Err(_) => return Sniffed::Nothing,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let kind = tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Sniffed::Nothing);
    (kind, buf)
}

/// `None`: not enough bytes yet. A request line starts with a method, an upper-case token
/// for every method in use; TLS, SSH and binary protocols do not.
fn classify(buf: &[u8]) -> Option<Sniffed> {
    let first = *buf.first()?;
    if H2_PREFACE.starts_with(buf) {
        return (buf.len() == H2_PREFACE.len()).then_some(Sniffed::Http2);
    }
    if buf.starts_with(H2_PREFACE) {
        return Some(Sniffed::Http2);
    }
    Some(if first.is_ascii_uppercase() {
        Sniffed::Http1
    } else {
        Sniffed::NotHttp
    })
}

async fn serve_conn(mut stream: TcpStream, dir: Direction, shared: Arc<Shared>) {
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let settings = &shared.settings;
    let limits = settings.limits;
    let dst = settings.mode.original_dst(local);
    let client = SocketAddr::new(crate::snapshot::canonical(peer.ip()), peer.port());
    let _ = stream.set_nodelay(true);
    // Only where the proxy is a waypoint for Istio alone may a silent client be a server-first
    // protocol: where Cilium's HTTP rules apply, the client must speak HTTP.
    let waypoint_only = dir == Direction::Ingress
        && decide_opaque(&shared.snapshot(), dst.ip(), client.ip(), dst.port()).is_some();
    let silence = waypoint_only.then_some(limits.server_first_after);
    let (kind, prefix) = sniff(&mut stream, limits.header_timeout, silence).await;
    let proto = match kind {
        Sniffed::Nothing => return,
        Sniffed::NotHttp | Sniffed::Silent => {
            let conn = Conn::new(dir, client, dst, shared.clone(), Proto::Http1);
            let snap = shared.snapshot();
            let opaque = match dir {
                Direction::Ingress => decide_opaque(&snap, dst.ip(), client.ip(), dst.port()),
                Direction::Egress => None,
            };
            match opaque {
                // Only Istio brought it here, and Istio allows it at L4: relay it as ztunnel
                // would.
                Some(d) if d.allowed => handler::relay_opaque(conn, stream, prefix, &d).await,
                Some(d) => {
                    reset(&stream);
                    conn.record_denied_connection(&d);
                }
                None => {
                    reset(&stream);
                    conn.record_connection(Verdict::Error, "not HTTP", None);
                }
            }
            return;
        }
        Sniffed::Http1 => Proto::Http1,
        Sniffed::Http2 => Proto::Http2,
    };
    let conn = Arc::new(Conn::new(dir, client, dst, shared.clone(), proto));
    let stream = Prefixed::new(prefix, stream);
    let svc_conn = conn.clone();
    let svc = hyper::service::service_fn(move |req| handler::handle(svc_conn.clone(), req));
    let result = match proto {
        Proto::Http1 => {
            let framing =
                Framing::new(conn.conflicting.clone()).until_switched(conn.switched.clone());
            let watched = Watched::new(stream, framing, limits.header_timeout);
            let io = TokioIo::new(Idle::new(watched, limits.idle_timeout));
            // The header timeout is `Watched`'s: hyper's would start as soon as a keep-alive
            // connection goes idle and close it after `header_timeout`.
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(None)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .max_headers(limits.max_headers)
                .preserve_header_case(true)
                .keep_alive(true)
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        }
        Proto::Http2 => {
            let io = TokioIo::new(Idle::new(stream, limits.idle_timeout));
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(limits.max_streams)
                .serve_connection(io, svc)
                .await
        }
    };
    if let Err(e) = result {
        connection_error(&conn, &e);
    }
}

/// A connection that ended with an error gets a flow record when the client did something
/// wrong (hyper has already answered a bad head with 400 or 431).
fn connection_error(conn: &Conn, e: &hyper::Error) {
    let (reason, status) = if e.is_parse_too_large() {
        ("request head too large", Some(431))
    } else if e.is_parse() {
        ("malformed request", Some(400))
    } else if e.is_timeout() || is_head_timeout(e) {
        (crate::framing::HEAD_TIMEOUT, None)
    } else {
        tracing::debug!(client = %conn.client, error = %e, "downstream connection ended");
        return;
    };
    conn.record_connection(Verdict::Error, reason, status);
}

fn is_head_timeout(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return io.to_string() == crate::framing::HEAD_TIMEOUT;
        }
        source = err.source();
    }
    false
}

/// Closes with RST rather than FIN: the client learns at once that nothing will answer.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(H2_PREFACE), Some(Sniffed::Http2));
        assert_eq!(classify(b"PRIVATE / HTTP/1.1"), Some(Sniffed::Http1));
        assert_eq!(classify(b"GET / HTTP/1.1"), Some(Sniffed::Http1));
        assert_eq!(classify(b"G"), Some(Sniffed::Http1));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Sniffed::NotHttp));
        assert_eq!(classify(b"SSH-2.0"), Some(Sniffed::Http1));
        assert_eq!(classify(b"\0\0"), Some(Sniffed::NotHttp));
    }
}
