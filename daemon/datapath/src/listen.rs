//! What every listening socket of the agent and the data path shares: who may connect (the
//! peer's credentials through `SO_PEERCRED`, on top of the socket file's mode), how many
//! connections at once, how long a client may take, how large a request may be, and an accept
//! loop that backs off on errors instead of spinning (`EMFILE` leaves the connection queued, so
//! an accept retried at once fails again at once).
//! Owns no protocol; must never hand a refused or excess connection to a handler.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Bounds on one server's clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_conns: usize,
    /// The request head (HTTP headers, or a whole UAPI request) must arrive within this of the
    /// connection opening or of the previous answer.
    pub header_timeout: Duration,
    /// An HTTP request body must arrive within this.
    pub body_timeout: Duration,
    /// A write that makes no progress for this long (a client that does not read) ends the
    /// connection.
    pub write_timeout: Duration,
    /// Largest request body (HTTP: 413 above it) or whole request (UAPI).
    pub max_body: usize,
}

impl Limits {
    /// The admin socket: local clients, `apply` bodies of a few thousand policies.
    pub const ADMIN: Limits = Limits {
        max_conns: 32,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(10),
        max_body: 8 << 20,
    };
    /// The metrics port: network-facing, GET only, so no body at all is needed.
    pub const METRICS: Limits = Limits {
        max_conns: 16,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(10),
        max_body: 0,
    };
    /// The UAPI socket: a full `wg setconf` with thousands of allowed IPs fits in 4 MiB.
    pub const UAPI: Limits = Limits {
        max_conns: 16,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(10),
        max_body: 4 << 20,
    };
}

/// What a connected peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Root (or the user the server runs as): everything.
    Admin,
    /// A member of the configured `adminGroup`: read status and metrics only.
    Reader,
}

/// Why a peer was refused; the text is sent back to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "permission denied: uid {uid} (gid {gid}) is neither root nor a member of the \
         agent's adminGroup{group}; run as root, or ask for adminGroup membership to read status"
    )]
    NotAllowed { uid: u32, gid: u32, group: String },
    #[error("permission denied: {role} may only read (GET); changes need root")]
    ReadOnly { role: &'static str },
    #[error("cannot read the peer's credentials: {0}")]
    Credentials(String),
}

/// Who may use a local socket: root always, `reader_gid`'s members for reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Access {
    pub reader_gid: Option<u32>,
}

impl Access {
    /// The role of a peer with these credentials.
    pub fn role(&self, uid: u32, gid: u32, groups: &[u32]) -> Result<Role, Refused> {
        if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
            return Ok(Role::Admin);
        }
        match self.reader_gid {
            Some(g) if gid == g || groups.contains(&g) => Ok(Role::Reader),
            reader => Err(Refused::NotAllowed {
                uid,
                gid,
                group: reader
                    .map_or_else(|| " (none is configured)".into(), |g| format!(" (gid {g})")),
            }),
        }
    }

    /// The role of the process at the other end of `stream`, from the kernel's record of its
    /// credentials at `connect` time (not from anything it says).
    pub fn of_unix(&self, stream: &UnixStream) -> Result<Role, Refused> {
        let cred = stream
            .peer_cred()
            .map_err(|e| Refused::Credentials(e.to_string()))?;
        let groups = match self.reader_gid {
            Some(g) if cred.gid() != g && cred.uid() != 0 => {
                peer_groups(stream.as_raw_fd()).map_err(|e| Refused::Credentials(e.to_string()))?
            }
            _ => Vec::new(),
        };
        self.role(cred.uid(), cred.gid(), &groups)
    }

    /// Gives the socket file its mode: 0600, or 0660 owned by the reader group when there is
    /// one (the credential check above still limits that group to reading).
    pub fn restrict_socket_file(&self, path: &Path) -> io::Result<()> {
        let mode = match self.reader_gid {
            Some(g) => {
                nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(g)))
                    .map_err(io::Error::from)?;
                0o660
            }
            None => 0o600,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
}

/// The peer's supplementary groups (`SO_PEERGROUPS`, Linux 4.13+).
fn peer_groups(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is valid for `len` bytes and getsockopt writes at most `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() {
            return Err(err);
        }
        groups.resize(n, 0);
    }
}

/// Exponential back-off for a failing accept: 10 ms doubling to 1 s, back to 10 ms after a
/// success.
#[derive(Debug, Clone)]
pub struct Backoff {
    delay: Duration,
    failures: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delay: Self::MIN,
            failures: 0,
        }
    }
}

impl Backoff {
    pub const MIN: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_secs(1);

    /// How long to wait after one more failure.
    pub fn failed(&mut self) -> Duration {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        self.failures += 1;
        delay
    }

    pub fn succeeded(&mut self) {
        *self = Self::default();
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

/// Accepts connections for ever: at most `max_conns` are served at once (one more is closed at
/// once), errors back off. `serve` gets each connection with the permit it must hold until done.
pub async fn accept_loop<S, A, Fut, F>(what: &'static str, max_conns: usize, accept: A, serve: F)
where
    A: FnMut() -> Fut,
    Fut: Future<Output = io::Result<S>>,
    F: Fn(S, OwnedSemaphorePermit),
{
    accept_loop_sharing(what, Arc::new(Semaphore::new(max_conns)), accept, serve).await
}

/// [`accept_loop`] for one of several listeners that share one cap: `slots`, one permit per
/// connection served.
pub async fn accept_loop_sharing<S, A, Fut, F>(
    what: &'static str,
    slots: Arc<Semaphore>,
    mut accept: A,
    serve: F,
) where
    A: FnMut() -> Fut,
    Fut: Future<Output = io::Result<S>>,
    F: Fn(S, OwnedSemaphorePermit),
{
    let mut backoff = Backoff::default();
    let mut excess = 0u64;
    loop {
        match accept().await {
            Ok(conn) => {
                backoff.succeeded();
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => serve(conn, permit),
                    Err(_) => {
                        excess += 1;
                        // Every 100th, so that a flood does not flood the log too.
                        if excess % 100 == 1 {
                            tracing::warn!(
                                server = what,
                                refused = excess,
                                "too many connections; closing the excess at once"
                            );
                        }
                        drop(conn);
                    }
                }
            }
            Err(e) => {
                let delay = backoff.failed();
                if backoff.failures() == 1 || backoff.failures() % 60 == 0 {
                    tracing::warn!(server = what, error = %e, failures = backoff.failures(), "accept failed; backing off");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A stream whose writes fail with `TimedOut` when they make no progress for `limit` (a client
/// that stops reading), so that it cannot hold a connection slot for ever.
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            timer: None,
        }
    }

    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, polled)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn roles() {
        let access = Access {
            reader_gid: Some(4242),
        };
        assert_eq!(access.role(0, 0, &[]), Ok(Role::Admin));
        assert_eq!(access.role(1000, 4242, &[]), Ok(Role::Reader));
        assert_eq!(access.role(1000, 100, &[7, 4242]), Ok(Role::Reader));
        let err = access.role(1000, 100, &[7]).unwrap_err().to_string();
        assert!(
            err.contains("uid 1000") && err.contains("gid 4242"),
            "{err}"
        );
        let none = Access::default()
            .role(1000, 100, &[])
            .unwrap_err()
            .to_string();
        assert!(none.contains("none is configured"), "{none}");
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| b.failed()).collect();
        assert_eq!(delays[0], Backoff::MIN);
        assert_eq!(delays[1], Backoff::MIN * 2);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(delays[9], Backoff::MAX);
        b.succeeded();
        assert_eq!(b.failed(), Backoff::MIN);
    }

    /// A listener that fails every accept with EMFILE (what a process out of descriptors sees)
    /// is retried a bounded number of times, not in a tight loop.
    #[tokio::test]
    async fn a_burst_of_accept_errors_does_not_spin() {
        let attempts = Arc::new(AtomicU64::new(0));
        let counter = attempts.clone();
        let task = tokio::spawn(accept_loop(
            "test",
            4,
            move || {
                counter.fetch_add(1, Ordering::Relaxed);
                async { Err::<(), _>(io::Error::from_raw_os_error(libc::EMFILE)) }
            },
            |(), _permit| {},
        ));
        // Two seconds: without back-off this is hundreds of thousands of attempts; with it,
        // 10 + 20 + ... + 640 ms, then one a second: at most 10 (fewer on a loaded machine).
        tokio::time::sleep(Duration::from_secs(2)).await;
        task.abort();
        let n = attempts.load(Ordering::Relaxed);
        assert!((3..=12).contains(&n), "{n} accept attempts in 2 s");
    }

    /// The cap: with every slot held, a new connection is closed at once; a slot freed lets the
    /// next one in.
    #[tokio::test]
    async fn connection_past_the_cap_is_closed_at_once() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(8);
        let (conn_tx, conn_rx) = tokio::sync::mpsc::channel::<u32>(8);
        let conn_rx = Arc::new(tokio::sync::Mutex::new(conn_rx));
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let held2 = held.clone();
        let task = tokio::spawn(accept_loop(
            "test",
            2,
            move || {
                let rx = conn_rx.clone();
                async move {
                    rx.lock()
                        .await
                        .recv()
                        .await
                        .ok_or_else(|| io::Error::other("closed"))
                }
            },
            move |n, permit| {
                held2.lock().unwrap().push(permit);
                let _ = tx.try_send(n);
            },
        ));
        for n in 1..=3 {
            conn_tx.send(n).await.unwrap();
        }
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        conn_tx.send(4).await.unwrap();
        // 3 was past the cap; 4 too, while both slots are held.
        assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv())
            .await
            .is_err());
        held.lock().unwrap().pop();
        conn_tx.send(5).await.unwrap();
        assert_eq!(rx.recv().await, Some(5));
        task.abort();
    }
}
