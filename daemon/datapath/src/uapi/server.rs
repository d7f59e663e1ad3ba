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

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

use super::reader::{ReadError, RequestReader, RequestText};
use super::state as uapi_state;
use super::{self as uapi, Request};
use crate::backend::Datapath;
use crate::listen::{self, Access, Limits, Role};

pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Where `wg` looks for `interface`'s UAPI socket.
pub fn socket_path(interface: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{interface}.sock"))
}

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
        Self::bind_at(&socket_path(interface), datapath, access, limits)
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
