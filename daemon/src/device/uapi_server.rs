//! Serves the UAPI on `/var/run/wireguard/<interface>.sock` so that stock `wg show`, `wg showconf`
//! and `wg set` work against the userspace data path, exactly as they do against wireguard-go.
//! The socket is root-only (0600 in a 0755 directory): `get` returns the private key, as the
//! protocol requires for `wg showconf`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::uapi::{self, Request};
use super::uapi_state;
use crate::datapath::Datapath;

pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Largest request accepted; a full `wg setconf` with thousands of allowed IPs fits easily.
const MAX_REQUEST: usize = 4 << 20;

pub struct UapiServer {
    path: PathBuf,
}

impl UapiServer {
    pub fn bind(interface: &str, datapath: Arc<Datapath>) -> std::io::Result<Self> {
        let dir = Path::new(SOCKET_DIR);
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let path = dir.join(format!("{interface}.sock"));
        // A socket left by a previous run of this agent (killed, so it could not clean up).
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        tokio::spawn(accept_loop(listener, datapath));
        Ok(Self { path })
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: UnixListener, datapath: Arc<Datapath>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, datapath.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "UAPI accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(stream: UnixStream, datapath: Arc<Datapath>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request = String::new();
        let ended = loop {
            let mut line = String::new();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => break true,
                Ok(_) => {}
            }
            if line == "\n" {
                break false;
            }
            request.push_str(&line);
            if request.len() > MAX_REQUEST {
                let _ = write
                    .write_all(uapi::format_errno(libc::ENOMEM).as_bytes())
                    .await;
                return;
            }
        };
        if request.is_empty() {
            return;
        }
        let answer = handle(&request, &datapath).await;
        if write.write_all(answer.as_bytes()).await.is_err() || ended {
            return;
        }
    }
}

async fn handle(request: &str, datapath: &Datapath) -> String {
    match uapi::parse(request) {
        Ok(Request::Get { extended }) => match datapath.get().await {
            Ok(state) => uapi_state::format_get(&state, extended),
            Err(e) => uapi::format_errno(e.errno()),
        },
        Ok(Request::Set(req)) => match datapath.set(req).await {
            Ok(()) => uapi::format_errno(0),
            Err(e) => {
                tracing::warn!(error = %e, "UAPI set refused");
                uapi::format_errno(e.errno())
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "malformed UAPI request");
            uapi::format_errno(e.errno())
        }
    }
}
