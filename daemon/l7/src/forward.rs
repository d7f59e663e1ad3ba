//! Upstream connections: where an allowed request goes and from which address. In production
//! (`Mode::Transparent`) the original destination is the accepted socket's local address
//! (nftables `tproxy` keeps it) and the upstream socket is bound, with `IP_TRANSPARENT`, to
//! the client's own address (port 0) before connecting, so the server sees the client pod;
//! it carries `SO_MARK` so the eBPF programs recognise proxy traffic and do not redirect it
//! again. Tests (`Mode::Test`) send everything to one loopback server instead.
//!
//! One upstream connection per downstream connection, opened at the first allowed request:
//! HTTP/1.1 requests then reach the server in the order the client sent them, on one
//! connection, exactly as without the proxy; HTTP/2 streams share it as they shared the
//! client's. It must never send a request that `decide` did not allow, nor alter one.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::snapshot::canonical;

/// How the original destination is found and the upstream socket is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Production: `tproxy`-delivered sockets, upstream bound to the client's address.
    Transparent,
    /// Tests on loopback: the original destination is `upstream`, no source binding, no mark.
    Test { upstream: SocketAddr },
}

impl Mode {
    /// The original destination of a connection accepted with local address `local`.
    pub fn original_dst(&self, local: SocketAddr) -> SocketAddr {
        match self {
            Mode::Transparent => SocketAddr::new(canonical(local.ip()), local.port()),
            Mode::Test { upstream } => *upstream,
        }
    }
}

/// Why a request could not be forwarded (answered with 503).
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot connect to {dst} from {client}: {source}")]
    Connect {
        client: IpAddr,
        dst: SocketAddr,
        source: io::Error,
    },
    #[error("no connection to {dst} within {timeout:?}")]
    Timeout { dst: SocketAddr, timeout: Duration },
    #[error("HTTP handshake with {dst}: {source}")]
    Handshake {
        dst: SocketAddr,
        source: hyper::Error,
    },
    #[error("forwarding to {dst}: {source}")]
    Send {
        dst: SocketAddr,
        source: hyper::Error,
    },
}

impl ForwardError {
    /// Whether the request's own body failed while it was being forwarded (the client framed
    /// it badly, e.g. a chunk size that is not hex): the client's fault, not the server's.
    pub fn is_request_body(&self) -> bool {
        matches!(self, ForwardError::Send { source, .. } if source.is_user())
    }
}

/// Opens the upstream TCP connection for a client at `client` to `dst`.
pub async fn connect(
    mode: &Mode,
    mark: u32,
    client: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ForwardError> {
    let attempt = async {
        match mode {
            Mode::Test { upstream } => TcpStream::connect(upstream).await,
            Mode::Transparent => {
                let socket = transparent_socket(mark, client, dst)?;
                socket.connect(dst).await
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(ForwardError::Timeout { dst, timeout }),
        Ok(Err(source)) => Err(ForwardError::Connect {
            client,
            dst,
            source,
        }),
        Ok(Ok(stream)) => {
            // Requests and answers are small and latency-bound.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// A TCP socket bound to `client` (a non-local address: `IP_TRANSPARENT`), marked `mark`.
fn transparent_socket(mark: u32, client: IpAddr, dst: SocketAddr) -> io::Result<TcpSocket> {
    let client = canonical(client);
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    match dst {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => set_ipv6_transparent(&socket)?,
    }
    if mark != 0 {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(client, 0).into())?;
    Ok(TcpSocket::from_std_stream(socket.into()))
}

/// `IPV6_TRANSPARENT`, which socket2 does not wrap.
pub(crate) fn set_ipv6_transparent(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IPV6,
            libc::IPV6_TRANSPARENT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The HTTP version spoken to the server: the one the client spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

enum Sender {
    H1(http1::SendRequest<Incoming>),
    H2(http2::SendRequest<Incoming>),
}

/// The upstream of one downstream connection, opened at its first allowed request.
pub struct Upstream {
    proto: Proto,
    mode: Mode,
    mark: u32,
    client: IpAddr,
    dst: SocketAddr,
    connect_timeout: Duration,
    sender: tokio::sync::Mutex<Option<Sender>>,
}

impl Upstream {
    pub fn new(proto: Proto, mode: Mode, mark: u32, client: IpAddr, dst: SocketAddr) -> Self {
        Self {
            proto,
            mode,
            mark,
            client,
            dst,
            connect_timeout: Duration::from_secs(5),
            sender: tokio::sync::Mutex::new(None),
        }
    }

    async fn open(&self) -> Result<Sender, ForwardError> {
        let stream = connect(
            &self.mode,
            self.mark,
            self.client,
            self.dst,
            self.connect_timeout,
        )
        .await?;
        let io = TokioIo::new(stream);
        let dst = self.dst;
        let handshake = |source| ForwardError::Handshake { dst, source };
        match self.proto {
            Proto::Http1 => {
                let (sender, conn) = http1::Builder::new()
                    .preserve_header_case(true)
                    .handshake(io)
                    .await
                    .map_err(handshake)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(%dst, error = %e, "upstream connection ended");
                    }
                });
                Ok(Sender::H1(sender))
            }
            Proto::Http2 => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .map_err(handshake)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%dst, error = %e, "upstream connection ended");
                    }
                });
                Ok(Sender::H2(sender))
            }
        }
    }

    /// Sends `req` to the server and returns its answer (the body still streaming).
    pub async fn send(&self, req: Request<Incoming>) -> Result<Response<Incoming>, ForwardError> {
        let dst = self.dst;
        let sent = |source| ForwardError::Send { dst, source };
        let mut slot = self.sender.lock().await;
        let open = match slot.take() {
            Some(Sender::H1(s)) if !s.is_closed() => Sender::H1(s),
            Some(Sender::H2(s)) if !s.is_closed() => Sender::H2(s),
            _ => self.open().await?,
        };
        // The answer is awaited without the lock: an HTTP/1.1 sender is not ready for the next
        // request until this one's answer is complete, so requests still go one at a time,
        // in order; HTTP/2 streams go concurrently.
        let answer = match open {
            Sender::H1(mut s) => {
                s.ready().await.map_err(sent)?;
                let answer = s.send_request(req);
                *slot = Some(Sender::H1(s));
                answer
            }
            Sender::H2(mut s) => {
                s.ready().await.map_err(sent)?;
                let answer = s.send_request(req);
                *slot = Some(Sender::H2(s));
                return answer.await.map_err(sent);
            }
        };
        drop(slot);
        answer.await.map_err(sent)
    }
}
