//! Both ends of an in-place upgrade of the `wiremesh datapath` process ([`crate::handover`]):
//! every data path serves `<runDir>/datapath-handover.sock` (root only) and hands over once;
//! `--take-over` connects to it, starts from what it is given, and lets its predecessor go once
//! every peer has a session with it (or after [`CAP`]).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::oneshot;

use super::{Options, Phase, Status};
use crate::handover::{self, Offer};
use crate::model::DeviceState;
use crate::uapi::{self, Request};
use crate::userspace::{self, Handle, Successor};

/// The longest a predecessor stays after handing over.
pub const CAP: Duration = Duration::from_secs(30);
/// How long a predecessor stays after every peer has a session with the successor: packets the
/// peers sent on the old sessions just before may still be in flight.
const LINGER: Duration = Duration::from_secs(2);

static HANDED_OVER: AtomicBool = AtomicBool::new(false);

/// Whether this process has handed its data path over (it must then leave the interface, the
/// UAPI socket and the PID file to its successor, whatever makes it exit).
pub fn handed_over() -> bool {
    HANDED_OVER.load(Ordering::SeqCst)
}

/// Serves the handover socket next to `pid_file`; the receiver fires when the successor has
/// let this process go.
/// A pod's `status` says `handed-over` from the moment the offer is sent (and `active` again
/// if the successor fails before taking over).
pub fn serve(
    pid_file: &Path,
    handle: Handle,
    status: Option<Status>,
) -> Result<oneshot::Receiver<()>> {
    let path = handover::socket_path(pid_file);
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    let rt = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("datapath-handover".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if !handover::peer_is_root(&stream) {
                    tracing::warn!("handover refused: the connecting process is not root");
                    continue;
                }
                match give(stream, &handle, &rt, status.as_ref()) {
                    Ok(()) => break,
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "handover failed"),
                }
            }
            let _ = done_tx.send(());
        })
        .context("spawning the handover thread")?;
    Ok(done_rx)
}

/// Predecessor: hands over, then follows the successor's `detach` and `leave`. If the
/// successor fails before `detach` (the offer cannot be sent, or it goes away), this data path
/// resumes reading its sockets and the handover socket stays open for another attempt.
fn give(
    mut stream: UnixStream,
    handle: &Handle,
    rt: &tokio::runtime::Handle,
    status: Option<&Status>,
) -> Result<()> {
    let handed = rt.block_on(handle.hand_over())?;
    let fds: Vec<_> = handed.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = handover::send_offer(&mut stream, &handed.offer, &fds);
    drop(handed);
    if let Err(e) = sent {
        rt.block_on(handle.resume())?;
        return Err(anyhow::Error::new(e).context("sending the handover offer"));
    }
    HANDED_OVER.store(true, Ordering::SeqCst);
    set_phase(status, Phase::HandedOver);
    tracing::info!(
        version = crate::version(),
        "data path handed over to a successor; serving its old sessions until it lets go"
    );
    let deadline = Instant::now() + CAP;
    let mut lines = BufReader::new(stream);
    let mut line = String::new();
    let mut detached = false;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        lines
            .get_ref()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) if !detached => {
                // The successor never attached: nothing was taken from this data path.
                HANDED_OVER.store(false, Ordering::SeqCst);
                rt.block_on(handle.resume())?;
                set_phase(status, Phase::Active);
                bail!("the successor went away before taking over");
            }
            Ok(0) | Err(_) => break,
            Ok(_) if line.trim_end() == "detach" => {
                rt.block_on(handle.detach())?;
                detached = true;
            }
            Ok(_) if line.trim_end() == "leave" => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Records a pod's phase; a status file that cannot be written only costs a probe's verdict.
fn set_phase(status: Option<&Status>, phase: Phase) {
    if let Some(Err(e)) = status.map(|s| s.set(phase)) {
        tracing::warn!(error = %format!("{e:#}"), "writing the data-path status");
    }
}

/// A connection to the handover socket if a data path serves it; `None` if none does (no
/// socket, or one left by a process that is gone).
pub fn connect_if_running(opts: &Options) -> Result<Option<UnixStream>> {
    let path = handover::socket_path(pid_file(opts)?);
    match UnixStream::connect(&path) {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("connecting to {}", path.display())),
    }
}

fn pid_file(opts: &Options) -> Result<&Path> {
    opts.pid_file
        .as_deref()
        .ok_or_else(|| anyhow!("taking over needs --pid-file (the handover socket is next to it)"))
}

/// Successor: takes the data path over from the process serving the handover socket (on
/// `stream`, if already connected); the task resolves once the predecessor has been let go.
pub async fn take_over(
    opts: &Options,
    stream: Option<UnixStream>,
) -> Result<(Handle, tokio::task::JoinHandle<()>)> {
    let mut stream = match stream {
        Some(s) => s,
        None => {
            let path = handover::socket_path(pid_file(opts)?);
            UnixStream::connect(&path).with_context(|| {
                format!(
                    "--take-over: no data path to take over at {} (is one running?)",
                    path.display()
                )
            })?
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (offer, sockets, stream) = tokio::task::spawn_blocking(move || {
        handover::receive_offer(&mut stream).map(|(o, s)| (o, s, stream))
    })
    .await??;
    let Offer {
        version,
        index_base,
        config,
        ..
    } = offer;
    let Ok(Request::Set(mut config)) = uapi::parse(&config) else {
        bail!("the handed-over configuration does not parse");
    };
    let key = config
        .private_key
        .take()
        .ok_or_else(|| anyhow!("the handed-over configuration has no private key"))?;
    let peers = config.peers.len();
    let successor = Successor {
        key,
        config,
        index_base,
        sockets,
    };
    let handle = userspace::start_successor(&opts.interface, successor, opts.offload)?;
    let mut stream = stream;
    stream
        .write_all(b"detach\n")
        .context("telling the predecessor to detach its TUN queue")?;
    tracing::info!(from = %version, to = crate::version(), peers, "took the data path over; handshaking every peer");
    let let_go = tokio::spawn(let_go(handle.clone(), stream));
    Ok((handle, let_go))
}

/// Successor: once every peer has a session with it (and [`LINGER`] has passed), or after
/// [`CAP`], lets the predecessor go.
async fn let_go(handle: Handle, mut stream: UnixStream) {
    let deadline = tokio::time::Instant::now() + CAP;
    while tokio::time::Instant::now() < deadline {
        if handle.get().await.is_ok_and(|s| sessions_up(&s)) {
            tokio::time::sleep(LINGER).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stream.write_all(b"leave\n");
    tracing::info!("the predecessor data path may leave");
}

/// Whether every peer with an endpoint has a session (in a successor: a session with it).
pub fn sessions_up(state: &DeviceState) -> bool {
    state
        .peers
        .iter()
        .filter(|p| p.endpoint.is_some())
        .all(|p| p.last_handshake.is_some())
}
