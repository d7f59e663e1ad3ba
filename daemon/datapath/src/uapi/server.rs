//! Serves the UAPI on `/var/run/wireguard/<interface>.sock` so that stock `wg show`, `wg showconf`
//! and `wg set` work against the userspace data path, exactly as they do against wireguard-go.
//! Who may do what is decided by the peer's credentials, not only the file mode: root may `set`
//! and `get` (which returns the private key, as `wg showconf` needs); members of `adminGroup` may
//! only `get`, and never see the private or preshared keys; anyone else gets `errno=EPERM`.
//! Requests are bounded (line length, total size, time); request and answer buffers, which may
//! hold the private key, are zeroed when dropped. Must never echo a request line into a log.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

use super::state as uapi_state;
use super::{self as uapi, Request};
use crate::backend::Datapath;
use crate::listen::{self, Access, Limits, Role};

pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Longest line accepted: the longest legitimate one (`endpoint=[v6%scope]:port`) is < 100.
pub const MAX_LINE: usize = 1024;

pub struct UapiServer {
    path: PathBuf,
}

impl UapiServer {
    pub fn bind(
        interface: &str,
        datapath: Arc<Datapath>,
        access: Access,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let dir = Path::new(SOCKET_DIR);
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        Self::bind_at(
            &dir.join(format!("{interface}.sock")),
            datapath,
            access,
            limits,
        )
    }

    /// Serves on `path` (tests use their own directory).
    pub fn bind_at(
        path: &Path,
        datapath: Arc<Datapath>,
        access: Access,
        limits: Limits,
    ) -> std::io::Result<Self> {
        // A socket left by a previous run of this agent (killed, so it could not clean up).
        let _ = std::fs::remove_file(path);
        let listener = Arc::new(UnixListener::bind(path)?);
        access.restrict_socket_file(path)?;
        tokio::spawn(listen::accept_loop(
            "uapi",
            limits.max_conns,
            move || {
                let listener = listener.clone();
                async move { listener.accept().await.map(|(s, _)| s) }
            },
            move |stream: UnixStream, permit| {
                let datapath = datapath.clone();
                tokio::spawn(async move {
                    serve(stream, datapath, access, limits).await;
                    drop(permit);
                });
            },
        ));
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(stream: UnixStream, datapath: Arc<Datapath>, access: Access, limits: Limits) {
    let role = access.of_unix(&stream);
    let (read, mut write) = stream.into_split();
    let mut reader = RequestReader::new(read);
    loop {
        let next = tokio::time::timeout(limits.header_timeout, reader.next(&limits)).await;
        let (request, ended) = match next {
            Err(_) => {
                tracing::debug!("UAPI client sent no complete request in time; closing");
                return;
            }
            Ok(Err(ReadError::Closed)) => return,
            Ok(Err(ReadError::TooLarge(what))) => {
                tracing::warn!("UAPI request refused: {what}");
                let _ = write
                    .write_all(uapi::format_errno(libc::E2BIG).as_bytes())
                    .await;
                return;
            }
            Ok(Ok(r)) => r,
        };
        let answer = match &role {
            Err(refused) => {
                tracing::warn!("UAPI: {refused}");
                Zeroizing::new(uapi::format_errno(libc::EPERM))
            }
            Ok(role) => handle(&request, &datapath, *role).await,
        };
        drop(request);
        let written =
            tokio::time::timeout(limits.write_timeout, write.write_all(answer.as_bytes())).await;
        if !matches!(written, Ok(Ok(()))) || ended {
            return;
        }
    }
}

/// One request's text: UTF-8 checked, zeroed on drop.
pub struct RequestText(Zeroizing<Vec<u8>>);

impl RequestText {
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// End of stream (or an I/O error) before any byte of a request.
    Closed,
    TooLarge(String),
}

/// Splits a stream into UAPI requests (lines up to an empty line) in one zeroizing buffer that
/// never reallocates in place (a grown buffer is copied and the old one zeroed), so no copy of
/// a `private_key=` line is left behind in freed memory.
pub struct RequestReader<R> {
    inner: R,
    buf: Zeroizing<Vec<u8>>,
    /// Bytes of `buf` already scanned for line ends.
    scanned: usize,
    line_start: usize,
}

impl<R: AsyncRead + Unpin> RequestReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Zeroizing::new(Vec::with_capacity(4096)),
            scanned: 0,
            line_start: 0,
        }
    }

    /// The next request without its terminating empty line, and whether the stream ended with
    /// it (a request cut short by end of stream is still answered, as wireguard-go does).
    pub async fn next(&mut self, limits: &Limits) -> Result<(RequestText, bool), ReadError> {
        loop {
            while self.scanned < self.buf.len() {
                let at = self.scanned;
                self.scanned += 1;
                if at >= limits.max_body {
                    return Err(ReadError::TooLarge(format!(
                        "a request larger than {} bytes",
                        limits.max_body
                    )));
                }
                if self.buf[at] != b'\n' {
                    if at - self.line_start >= MAX_LINE {
                        return Err(ReadError::TooLarge(format!(
                            "a line longer than {MAX_LINE} bytes"
                        )));
                    }
                    continue;
                }
                if at == self.line_start {
                    return Ok((self.take(at, at + 1), false));
                }
                self.line_start = at + 1;
            }
            self.reserve(8192);
            match self.inner.read_buf(&mut *self.buf).await {
                Ok(0) | Err(_) if self.buf.is_empty() => return Err(ReadError::Closed),
                Ok(0) | Err(_) => {
                    let end = self.buf.len();
                    return Ok((self.take(end, end), true));
                }
                Ok(_) => {}
            }
        }
    }

    /// Moves `buf[..end]` out as a request and drops `buf[..consumed]`.
    fn take(&mut self, end: usize, consumed: usize) -> RequestText {
        let mut out = Zeroizing::new(Vec::with_capacity(end));
        out.extend_from_slice(&self.buf[..end]);
        self.buf.drain(..consumed);
        self.scanned = 0;
        self.line_start = 0;
        RequestText(out)
    }

    /// Makes room for `more` bytes without `Vec`'s in-place reallocation.
    fn reserve(&mut self, more: usize) {
        if self.buf.capacity() - self.buf.len() >= more {
            return;
        }
        let mut bigger = Zeroizing::new(Vec::with_capacity((self.buf.len() + more) * 2));
        bigger.extend_from_slice(&self.buf);
        // The old buffer is zeroed as it drops here.
        self.buf = bigger;
    }
}

async fn handle(request: &RequestText, datapath: &Datapath, role: Role) -> Zeroizing<String> {
    let errno = |n| Zeroizing::new(uapi::format_errno(n));
    let Some(text) = request.as_str() else {
        tracing::warn!("malformed UAPI request: not UTF-8");
        return errno(libc::EINVAL);
    };
    match (uapi::parse(text), role) {
        (Ok(Request::Get { extended }), role) => match datapath.get().await {
            Ok(mut state) => {
                if role != Role::Admin {
                    // Readers learn peers and counters, never a secret.
                    state.private_key = None;
                    state.peers.iter_mut().for_each(|p| p.preshared_key = None);
                }
                uapi_state::format_get(&state, extended)
            }
            Err(e) => errno(e.errno()),
        },
        (Ok(Request::Set(_)), Role::Reader) => {
            tracing::warn!("UAPI set refused: members of adminGroup may only get");
            errno(libc::EPERM)
        }
        (Ok(Request::Set(req)), Role::Admin) => match datapath.set(req).await {
            Ok(()) => errno(0),
            Err(e) => {
                tracing::warn!(error = %e, "UAPI set refused");
                errno(e.errno())
            }
        },
        (Err(e), _) => {
            tracing::warn!(error = %e, "malformed UAPI request");
            errno(e.errno())
        }
    }
}
