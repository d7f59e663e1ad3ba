//! `wiremesh datapath`: the userspace data path as a process of its own. It owns the TUN device,
//! the UDP sockets and every WireGuard session, and is configured only through its UAPI socket.
//! The agent starts it (or re-attaches to it) and can die, restart or be upgraded without a
//! packet being dropped: sessions live here, not in the agent. The data path itself is upgraded
//! in place by `--take-over` (see [`crate::handover`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use wiremesh_key::KeyFile;

use crate::backend::Datapath;
use crate::listen::{Access, Limits};
use crate::uapi::server::UapiServer;
use crate::userspace;

mod upgrade;

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
}

pub async fn run(opts: Options) -> Result<()> {
    let handle = if opts.take_over {
        upgrade::take_over(&opts).await?
    } else {
        let key = KeyFile::new(&opts.key_file).load()?;
        userspace::start(&opts.interface, key, opts.listen_port, opts.offload)?
    };
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
        handed_over = Some(upgrade::serve(pid_file, handle.clone())?);
    }
    tracing::info!(interface = %opts.interface, port = opts.listen_port, pid = std::process::id(), version = crate::version(), "data path ready");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let left = async {
        match &mut handed_over {
            Some(done) => {
                let _ = done.await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = left => {
            // The successor serves the UAPI socket, owns the PID file and holds the interface:
            // leave all three alone.
            std::mem::forget(uapi);
            tracing::info!(interface = %opts.interface, "data path handed over to its successor; leaving, the interface stays");
            return Ok(());
        }
    }
    if upgrade::handed_over() {
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
