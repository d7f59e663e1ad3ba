//! `wiremesh proxy`: the L7 filter as a process of its own, so that the agent can die and
//! restart while requests in flight finish and new ones are judged. It loads the last accepted
//! configuration from its state file at start (none: every redirected request is denied),
//! listens on the ingress and egress ports (IPv4 and IPv6) and on the control socket, and ends
//! on SIGTERM. It must never start serving before the saved configuration is in force.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use policy::Direction;

use crate::forward::Mode;
use crate::server::{bind_transparent, serve_listener, ProxyLimits};
use crate::state::{load_state, Settings, Shared};

/// The default mark of the proxy's upstream connections (the eBPF programs skip it).
pub const DEFAULT_MARK: u32 = 0xC00;
pub const DEFAULT_INGRESS_PORT: u16 = 15006;
pub const DEFAULT_EGRESS_PORT: u16 = 15001;

#[derive(Debug, Clone)]
pub struct Options {
    /// `tproxy` target for connections into local endpoints.
    pub ingress_port: u16,
    /// `tproxy` target for connections out of local endpoints.
    pub egress_port: u16,
    /// The control socket (e.g. `<runDir>/proxy.sock`).
    pub control_socket: PathBuf,
    /// Where the accepted configuration is kept across restarts.
    pub state_file: Option<PathBuf>,
    /// `SO_MARK` of upstream connections.
    pub mark: u32,
    pub pid_file: Option<PathBuf>,
}

/// Runs the proxy until SIGTERM (or Ctrl-C).
pub async fn run(opts: Options) -> Result<()> {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    run_until(opts, stop).await
}

/// Runs the proxy until `stop` completes.
pub async fn run_until(opts: Options, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let shared = Arc::new(Shared::new(Settings {
        mode: Mode::Transparent,
        mark: opts.mark,
        limits: ProxyLimits::default(),
        state_file: opts.state_file.clone(),
    }));
    restore(&shared, &opts);
    let mut tasks = tokio::task::JoinSet::new();
    for (port, dir) in [
        (opts.ingress_port, Direction::Ingress),
        (opts.egress_port, Direction::Egress),
    ] {
        for addr in [
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        ] {
            let listener = bind_transparent(addr)
                .with_context(|| format!("binding the L7 proxy's {dir} listener on {addr} (IP_TRANSPARENT needs CAP_NET_ADMIN)"))?;
            tasks.spawn(serve_listener(listener, dir, shared.clone()));
        }
    }
    let control = crate::control::bind(&opts.control_socket)
        .with_context(|| format!("binding {}", opts.control_socket.display()))?;
    tasks.spawn(crate::control::serve(control, shared.clone()));
    if let Some(pid_file) = &opts.pid_file {
        if let Some(dir) = pid_file.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing {}", pid_file.display()))?;
    }
    tracing::info!(
        ingress = opts.ingress_port,
        egress = opts.egress_port,
        control = %opts.control_socket.display(),
        version = shared.snapshot().version,
        pid = std::process::id(),
        "L7 proxy ready"
    );
    tokio::select! {
        _ = stop => {}
        // The loops run for ever: one ending is a bug that must not leave a deaf proxy.
        ended = tasks.join_next() => anyhow::bail!("an L7 proxy listener ended: {ended:?}"),
    }
    if let Some(pid_file) = &opts.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    let _ = std::fs::remove_file(&opts.control_socket);
    tracing::info!("L7 proxy stopping");
    Ok(())
}

/// Puts the saved configuration in force. An unreadable or invalid file leaves none in force
/// (every redirected request denied) rather than stopping the proxy: the agent pushes a fresh
/// configuration as soon as it reaches the control socket, which a proxy that refused to start
/// would never offer.
fn restore(shared: &Shared, opts: &Options) {
    let Some(path) = &opts.state_file else {
        return;
    };
    let loaded = load_state(path)
        .map_err(anyhow::Error::from)
        .and_then(|cfg| {
            cfg.map(|cfg| shared.apply(&cfg).map_err(anyhow::Error::from))
                .transpose()
        });
    match loaded {
        Ok(None) => {
            tracing::info!(path = %path.display(), "no saved L7 configuration: denying every redirected request until the agent pushes one")
        }
        Ok(Some(version)) => {
            tracing::info!(path = %path.display(), version, "saved L7 configuration in force")
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %format!("{e:#}"), "cannot restore the saved L7 configuration: denying every redirected request until the agent pushes one; the agent's next push replaces the file")
        }
    }
}
