//! `wiremesh datapath`: the userspace data path as a process of its own. It owns the TUN device,
//! the UDP sockets and every WireGuard session, and is configured only through its UAPI socket.
//! The agent starts it (or re-attaches to it) and can die, restart or be upgraded without a
//! packet being dropped: sessions live here, not in the agent. The data path itself is upgraded
//! in place by `--take-over` (see [`crate::handover`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use wiremesh_key::KeyFile;

use crate::backend::Datapath;
use crate::listen::{Access, Limits};
use crate::uapi::server::UapiServer;
use crate::userspace;

pub mod pod;
mod upgrade;

pub use pod::{Phase, Probe, Status};
pub use upgrade::CAP as HANDOVER_CAP;

pub struct Options {
    pub interface: String,
    pub listen_port: u16,
    pub key_file: PathBuf,
    pub pid_file: Option<PathBuf>,
    /// Members of this group may `get` (without keys) on the UAPI socket; root only otherwise.
    pub admin_group: Option<u32>,
    /// The kernel's segmentation and coalescing offloads on the TUN and the UDP sockets.
    pub offload: bool,
    /// Take the interface, sockets and peers over from the data path running now (an
    /// upgrade), instead of creating them.
    pub take_over: bool,
    /// Run as a DaemonSet's pod ([`pod`]): wait for the key, take over a running data path if
    /// there is one, and stay (idle) after handing over until stopped.
    pub pod: Option<PodOptions>,
}

#[derive(Debug, Clone, Default)]
pub struct PodOptions {
    /// The pod's own directory, for the status file its probes read.
    pub status_dir: Option<PathBuf>,
}

pub async fn run(opts: Options) -> Result<()> {
    let status = opts
        .pod
        .as_ref()
        .and_then(|p| p.status_dir.as_deref())
        .map(|dir| Status::new(dir, &crate::uapi::server::socket_path(&opts.interface)));
    let (handle, let_go) = start(&opts, status.as_ref()).await?;
    let datapath = Arc::new(Datapath::Userspace(handle.clone()));
    let access = Access {
        reader_gid: opts.admin_group,
    };
    let uapi = UapiServer::bind(&opts.interface, datapath, access, Limits::UAPI)
        .with_context(|| format!("serving the WireGuard UAPI for {}", opts.interface))?;
    let mut handed_over = None;
    if let Some(pid_file) = &opts.pid_file {
        if let Some(dir) = pid_file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pid_file.display()))?;
        handed_over = Some(upgrade::serve(pid_file, handle.clone(), status.clone())?);
    }
    tracing::info!(interface = %opts.interface, port = opts.listen_port, pid = std::process::id(), version = crate::version(), "data path ready");
    if let Some(status) = &status {
        follow_phase(status, let_go)?;
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut left = std::pin::pin!(async {
        match &mut handed_over {
            Some(done) => {
                let _ = done.await;
            }
            None => std::future::pending().await,
        }
    });
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = &mut left => {
            // The successor serves the UAPI socket, owns the PID file and holds the interface:
            // leave all three alone.
            std::mem::forget(uapi);
            return after_handover(&opts.interface, opts.pod.is_some(), &mut sigterm).await;
        }
    }
    if upgrade::handed_over() {
        // Stopped in the middle of a handover: the old sessions' packets still come here until
        // the successor lets go (bounded by the handover's own cap).
        tracing::info!(interface = %opts.interface, "stop requested during a handover; serving the old sessions until the successor lets go");
        let _ = tokio::time::timeout(upgrade::CAP + Duration::from_secs(1), left).await;
        std::mem::forget(uapi);
        tracing::info!(interface = %opts.interface, "data path stopping after a handover; the interface stays with its successor");
        return Ok(());
    }
    if let Some(pid_file) = &opts.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    tracing::info!(interface = %opts.interface, "data path stopping; the interface goes with it");
    Ok(())
}

/// A pod's phase: active at once, or (a successor) taking over until its predecessor is let go.
fn follow_phase(status: &Status, let_go: Option<tokio::task::JoinHandle<()>>) -> Result<()> {
    let Some(let_go) = let_go else {
        return status.set(Phase::Active);
    };
    status.set(Phase::TakingOver)?;
    let status = status.clone();
    tokio::spawn(async move {
        let _ = let_go.await;
        if !upgrade::handed_over() {
            let _ = status.set(Phase::Active);
        }
    });
    Ok(())
}

/// Handed over and let go: a process leaves; a pod's (`stay`) stays, idle, until stopped (one
/// that exited would be restarted by kubelet and take the data path back).
async fn after_handover(
    interface: &str,
    stay: bool,
    sigterm: &mut tokio::signal::unix::Signal,
) -> Result<()> {
    if !stay {
        tracing::info!(%interface, "data path handed over to its successor; leaving, the interface stays");
        return Ok(());
    }
    tracing::info!(%interface, "data path handed over to its successor; idle until stopped");
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// Creates the data path, or takes it over; the second value, for a take-over, resolves once
/// the predecessor has been let go.
async fn start(
    opts: &Options,
    status: Option<&Status>,
) -> Result<(userspace::Handle, Option<tokio::task::JoinHandle<()>>)> {
    if opts.take_over {
        let (handle, let_go) = upgrade::take_over(opts, None).await?;
        return Ok((handle, Some(let_go)));
    }
    let Some(_) = &opts.pod else {
        let key = KeyFile::new(&opts.key_file).load()?;
        let handle = userspace::start(&opts.interface, key, opts.listen_port, opts.offload)?;
        return Ok((handle, None));
    };
    let key = pod::wait_for_key(&opts.key_file, status).await?;
    if let Some(stream) = upgrade::connect_if_running(opts)? {
        drop(key);
        let (handle, let_go) = upgrade::take_over(opts, Some(stream)).await?;
        return Ok((handle, Some(let_go)));
    }
    let handle = userspace::start(&opts.interface, key, opts.listen_port, opts.offload)?;
    Ok((handle, None))
}
