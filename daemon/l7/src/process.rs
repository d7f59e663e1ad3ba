//! `wiremesh proxy`: the L7 filter as a process of its own, so that the agent can die and
//! restart while requests in flight finish and new ones are judged. It loads the last accepted
//! configuration from its state file at start (none: every redirected request is denied),
//! listens on the ingress and egress ports (IPv4 and IPv6) and on the control socket, and ends
//! on SIGTERM. It must never start serving before the saved configuration is in force.
//!
//! Connections are served by worker threads, one per CPU by default, each running its own
//! single-threaded runtime over its own listening sockets (`SO_REUSEPORT`: the kernel spreads
//! new connections among them). A connection lives on one thread from accept to close, with the
//! upstream connection it opens, so a request and its answer cross no thread: no wake-ups of
//! other threads, no work stealing (nginx's workers and Envoy's do the same). The main runtime
//! serves only the control socket.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use policy::Direction;

use crate::forward::Mode;
use crate::server::{bind_transparent_std, serve_listener, ProxyLimits};
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
    /// Worker threads serving connections (0: one per CPU).
    pub workers: usize,
}

impl Options {
    /// The number of worker threads to run.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
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
    let mut workers = Workers::start(&opts, &shared)?;
    let mut tasks = tokio::task::JoinSet::new();
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
        workers = workers.count(),
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
        ended = tasks.join_next() => anyhow::bail!("the L7 proxy's control socket server ended: {ended:?}"),
        worker = workers.ended() => anyhow::bail!("L7 proxy worker {worker} ended"),
    }
    workers.stop().await;
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

/// The worker threads and their listeners.
struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The index of a worker whose thread ended (each sends it as it ends, however it ends).
    ended: tokio::sync::mpsc::UnboundedReceiver<usize>,
}

/// Sends the worker's index when dropped: at the end of its thread, even by a panic.
struct EndReport(tokio::sync::mpsc::UnboundedSender<usize>, usize);

impl Drop for EndReport {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

impl Workers {
    /// Binds every worker's listeners (failing before any serves), then starts the threads.
    fn start(opts: &Options, shared: &Arc<Shared>) -> Result<Self> {
        let count = opts.worker_count();
        let mut sets = Vec::with_capacity(count);
        for _ in 0..count {
            let mut set = Vec::new();
            for (port, dir) in [
                (opts.ingress_port, Direction::Ingress),
                (opts.egress_port, Direction::Egress),
            ] {
                for addr in [
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
                ] {
                    let listener = bind_transparent_std(addr, true)
                        .with_context(|| format!("binding the L7 proxy's {dir} listener on {addr} (IP_TRANSPARENT needs CAP_NET_ADMIN)"))?;
                    set.push((listener, dir));
                }
            }
            sets.push(set);
        }
        let (stop, _) = tokio::sync::watch::channel(false);
        let (report, ended) = tokio::sync::mpsc::unbounded_channel();
        let mut threads = Vec::with_capacity(count);
        for (i, set) in sets.into_iter().enumerate() {
            let shared = shared.clone();
            let stop = stop.subscribe();
            let report = EndReport(report.clone(), i);
            let thread = std::thread::Builder::new()
                .name(format!("l7-worker-{i}"))
                .spawn(move || {
                    let _report = report;
                    serve_worker(i, set, shared, stop);
                })
                .with_context(|| format!("starting L7 proxy worker {i}"))?;
            threads.push(thread);
        }
        Ok(Self {
            threads,
            stop,
            ended,
        })
    }

    fn count(&self) -> usize {
        self.threads.len()
    }

    /// The index of the first worker to end.
    async fn ended(&mut self) -> usize {
        self.ended.recv().await.unwrap_or(usize::MAX)
    }

    /// Stops every worker and waits until their sockets are closed.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// One worker thread: its listeners on a single-threaded runtime until `stop`.
fn serve_worker(
    index: usize,
    set: Vec<(std::net::TcpListener, Direction)>,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot start an L7 proxy worker's runtime");
            return;
        }
    };
    rt.block_on(async move {
        let mut loops = tokio::task::JoinSet::new();
        for (listener, dir) in set {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    loops.spawn(serve_listener(listener, dir, shared.clone()));
                }
                Err(e) => {
                    tracing::error!(worker = index, error = %e, "cannot serve an L7 proxy listener");
                    return;
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            ended = loops.join_next() => {
                tracing::error!(worker = index, ?ended, "an L7 proxy listener ended");
            }
        }
    });
}
