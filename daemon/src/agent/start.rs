//! Bringing up the data path: the kernel module where wanted and present, otherwise the
//! userspace data path in its own process — re-attached if one is already running (an agent
//! restart or upgrade), started otherwise.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use keymgr::{PrivateKey, PublicKey};
use tokio::sync::Notify;

use crate::config::{Config, DatapathKind, DatapathProcess, WIREGUARD_OVERHEAD};
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::kernel::Kernel;
use wiremesh_datapath::model::{DeviceState, ProcessInfo, SetRequest};
use wiremesh_datapath::netlink::Netlink;
use wiremesh_datapath::uapi::client::UapiClient;
use wiremesh_datapath::uapi::server::SOCKET_DIR;

/// How the agent came by its data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A data path that was already running: its peers and sessions are live.
    Attached,
    /// A data path this agent just created: it has no peers yet.
    Fresh,
}

pub struct Started {
    pub datapath: Arc<Datapath>,
    pub ifindex: u32,
    pub origin: Origin,
}

/// Underlay MTU minus WireGuard's overhead; 1420 (the usual 1500 - 80) if the underlay
/// interface cannot be found.
pub async fn auto_mtu(netlink: &Netlink, config: &Config) -> u32 {
    let mut candidates = vec![config.endpoint.ip()];
    candidates.extend(config.node_ips.iter().copied());
    for ip in candidates {
        if let Ok(Some(mtu)) = netlink.mtu_of_interface_with(ip).await {
            return mtu.saturating_sub(WIREGUARD_OVERHEAD).max(1280);
        }
    }
    tracing::info!("no local interface holds the endpoint or node IPs; assuming underlay MTU 1500");
    1500 - WIREGUARD_OVERHEAD
}

/// How long a restart waits for an external data path (`datapathProcess: external`) to answer;
/// at the agent's start it is waited for without end.
pub const EXTERNAL_RESTART_WAIT: Duration = Duration::from_secs(10);
/// How often an agent waiting for an external data path says so.
const EXTERNAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Brings up the data path; `exited` is notified if a data-path process this agent starts
/// exits, so that a new one starts at once rather than at the next resync. An external data
/// path is waited for, for `patience` (`None`: until it comes).
pub async fn start(
    config: &Config,
    netlink: &Netlink,
    key: &PrivateKey,
    mtu: u32,
    exited: &Arc<Notify>,
    patience: Option<Duration>,
) -> Result<Started> {
    // A userspace data path already running (its TUN device is there) is re-attached to, never
    // probed for the kernel backend: configuring the kernel module on that interface would
    // flush its addresses (a host's `hostAddress`) and with them every route through it.
    let userspace_running = config.datapath == DatapathKind::Auto
        && matches!(
            netlink.link_kind(&config.interface).await,
            Ok(Some(kind)) if kind == "tun"
        );
    if config.datapath != DatapathKind::Userspace && !userspace_running {
        match start_kernel(config, netlink, key, mtu).await {
            Ok(started) => return Ok(started),
            Err(e) if config.datapath == DatapathKind::Kernel => {
                return Err(e.context(
                    "datapath: kernel was requested but the WireGuard module is not available; \
                     load it (modprobe wireguard) or set datapath: userspace",
                ));
            }
            Err(e) => tracing::info!(
                reason = %format!("{e:#}"),
                "kernel WireGuard not available; using the userspace data path"
            ),
        }
    }
    let (client, origin) = attach_or_spawn(config, key, exited, patience).await?;
    let ifindex = netlink.link_index(&config.interface).await?;
    netlink.set_up(ifindex, mtu).await?;
    host_address(config, netlink, ifindex).await?;
    Ok(Started {
        datapath: Arc::new(Datapath::Process(client)),
        ifindex,
        origin,
    })
}

async fn start_kernel(
    config: &Config,
    netlink: &Netlink,
    key: &PrivateKey,
    mtu: u32,
) -> Result<Started> {
    let (index, origin) = match netlink.link_index(&config.interface).await {
        Ok(index) => (index, Origin::Attached),
        Err(_) => (
            netlink.create_wireguard(&config.interface).await?,
            Origin::Fresh,
        ),
    };
    let k = Kernel::configure(&config.interface, key, config.listen_port, mtu)
        .with_context(|| format!("configuring kernel WireGuard on {}", config.interface))?;
    netlink.set_up(index, mtu).await?;
    host_address(config, netlink, index).await?;
    Ok(Started {
        datapath: Arc::new(Datapath::Kernel(Arc::new(k))),
        ifindex: index,
        origin,
    })
}

/// A host without pods (`hostAddress`): its address goes on the WireGuard interface, so pods
/// elsewhere reach it through the tunnel and its own traffic to pods leaves from it.
async fn host_address(config: &Config, netlink: &Netlink, index: u32) -> Result<()> {
    if let Some(ip) = config.host_address {
        netlink.ensure_host_address(index, ip).await?;
        tracing::info!(%ip, interface = %config.interface, "host address on the WireGuard interface");
    }
    Ok(())
}

pub fn uapi_client(config: &Config) -> UapiClient {
    UapiClient::new(Path::new(SOCKET_DIR).join(format!("{}.sock", config.interface)))
}

/// Re-attaches to a running data path, or starts one.
async fn attach_or_spawn(
    config: &Config,
    key: &PrivateKey,
    exited: &Arc<Notify>,
    patience: Option<Duration>,
) -> Result<(UapiClient, Origin)> {
    let client = uapi_client(config);
    let external = config.datapath_process == DatapathProcess::External;
    if external {
        wait_external(&client, patience).await?;
    }
    if let Ok(mut state) = client.get().await {
        match state.process.clone() {
            Some(running) if running.version != wiremesh_datapath::version() && external => {
                tracing::info!(
                    datapath = %running.version,
                    agent = wiremesh_datapath::version(),
                    "the data path is another version; it is upgraded by its own DaemonSet \
                     (datapathProcess: external), not by the agent"
                );
            }
            Some(running) if running.version != wiremesh_datapath::version() => {
                state = upgrade(config, &client, &running, exited).await?;
            }
            _ => {}
        }
        let running = state.private_key.as_ref().map(|k| k.public_key());
        let adoption = adopt(running, state.next_public_key, key.public_key());
        match adoption {
            Adopt::AsIs => {}
            Adopt::Promote => tracing::warn!(
                socket = %client.path().display(),
                "the running data path holds this node's key only as its staged successor (the \
                 previous agent committed a rotation on disk and stopped before switching); \
                 switching to it now, keeping the sessions made with it"
            ),
            Adopt::Replace => tracing::warn!(
                socket = %client.path().display(),
                "running data path holds another key; giving it this node's key"
            ),
        }
        if adoption != Adopt::AsIs {
            client
                .set(&SetRequest {
                    private_key: Some(key.clone()),
                    ..SetRequest::default()
                })
                .await?;
        }
        tracing::info!(
            socket = %client.path().display(),
            peers = state.peers.len(),
            "re-attached to the running data path; its sessions carry on"
        );
        return Ok((client, Origin::Attached));
    }
    spawn(config, exited.clone(), false)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client.get().await.is_ok() {
            return Ok((client, Origin::Fresh));
        }
        if Instant::now() > deadline {
            bail!(
                "the data path process did not answer on {} within 10 s (see its log lines above)",
                client.path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `datapathProcess: external`: waits until a data path answers on the interface's socket (the
/// agent never starts one: the data-path DaemonSet's pod does).
async fn wait_external(client: &UapiClient, patience: Option<Duration>) -> Result<()> {
    let started = Instant::now();
    let mut said = started;
    loop {
        if client.get().await.is_ok() {
            return Ok(());
        }
        if patience.is_some_and(|p| started.elapsed() >= p) {
            bail!(
                "no data path answers on {} (datapathProcess: external: is the data-path \
                 DaemonSet's pod running on this node?)",
                client.path().display()
            );
        }
        if said.elapsed() >= EXTERNAL_LOG_EVERY {
            tracing::warn!(
                socket = %client.path().display(),
                waited_s = started.elapsed().as_secs(),
                "waiting for the data-path pod (datapathProcess: external); until it answers, \
                 strict mode drops this node's pod traffic to other nodes"
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a running data path needs so that its key is the key file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adopt {
    /// It already uses the file's key.
    AsIs,
    /// The file's key is its staged successor: a rotation was committed on disk and the agent
    /// stopped before the switch. Setting the key promotes it, keeping its sessions; left
    /// alone, the node would publish a key its data path does not answer to.
    Promote,
    /// It holds an unrelated key (the key file was restored by hand, say): the file is the
    /// source of truth.
    Replace,
}

fn adopt(running: Option<PublicKey>, staged: Option<PublicKey>, file: PublicKey) -> Adopt {
    if running == Some(file) {
        Adopt::AsIs
    } else if staged == Some(file) {
        Adopt::Promote
    } else {
        Adopt::Replace
    }
}

pub fn pid_file(config: &Config) -> std::path::PathBuf {
    config.run_dir.join("datapath.pid")
}

/// Replaces a running data path of another version by this binary's, in place: the successor
/// takes the interface, sockets and peers over (see `wiremesh_datapath::handover`). Returns the
/// successor's state; if it does not come up, the old data path keeps serving.
async fn upgrade(
    config: &Config,
    client: &UapiClient,
    running: &ProcessInfo,
    exited: &Arc<Notify>,
) -> Result<DeviceState> {
    tracing::info!(
        from = %running.version,
        to = wiremesh_datapath::version(),
        pid = running.pid,
        "the running data path is another version; handing it over to this one"
    );
    spawn(config, exited.clone(), true)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.get().await {
            Ok(state) if state.process.as_ref().is_some_and(|p| p.pid != running.pid) => {
                return Ok(state)
            }
            Ok(state) if Instant::now() > deadline => {
                tracing::warn!(
                    "the new data path did not take over within 10 s (see its log lines); \
                     keeping the running one"
                );
                return Ok(state);
            }
            Err(e) if Instant::now() > deadline => {
                bail!(
                    "no data path answers on {} after the handover: {e}",
                    client.path().display()
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn spawn(config: &Config, exited: Arc<Notify>, take_over: bool) -> Result<()> {
    let mut args: Vec<std::ffi::OsString> = vec![
        "--interface".into(),
        config.interface.clone().into(),
        "--listen-port".into(),
        config.listen_port.to_string().into(),
        "--key-file".into(),
        config.key_path().into(),
        "--pid-file".into(),
        pid_file(config).into(),
    ];
    if let Some(gid) = config.admin_group {
        args.extend(["--admin-group".into(), gid.to_string().into()]);
    }
    if !config.offload {
        args.push("--no-offload".into());
    }
    if take_over {
        args.push("--take-over".into());
    }
    spawn_detached("datapath", "data path", &args, Some(exited))
}

/// Starts `wiremesh <command> <args>` (the `what` process, in logs) detached from the agent's session (so that signals meant
/// for the agent do not reach it and it outlives the agent); `exited`, if given, is notified if
/// it exits while this agent runs.
pub(super) fn spawn_detached(
    command: &'static str,
    what: &'static str,
    args: &[std::ffi::OsString],
    exited: Option<Arc<Notify>>,
) -> Result<()> {
    let exe = std::env::current_exe().context("locating the wiremesh binary")?;
    let mut cmd = Command::new(&exe);
    cmd.arg(command).args(args).stdin(Stdio::null());
    // SAFETY: setsid(2) is async-signal-safe; it detaches the child from the agent's
    // session and process group, so that signals meant for the agent do not reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} {command}", exe.display()))?;
    let pid = child.id();
    tracing::info!(pid, "started the {what} process");
    // Reap it if it exits while this agent runs; if the agent goes first, init adopts it.
    std::thread::Builder::new()
        .name(format!("{command}-reaper"))
        .spawn(move || match child.wait() {
            Ok(status) => {
                tracing::warn!(pid, %status, "the {what} process exited");
                if let Some(exited) = exited {
                    exited.notify_one();
                }
            }
            Err(e) => tracing::warn!(pid, error = %e, "waiting for the {what} process"),
        })
        .map_err(|e| anyhow!("spawning the reaper thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_files_key_is_adopted_by_a_running_data_path() {
        let [old, new, other] = [0; 3].map(|_| PrivateKey::generate().public_key());
        assert_eq!(adopt(Some(new), None, new), Adopt::AsIs);
        assert_eq!(adopt(Some(new), Some(other), new), Adopt::AsIs);
        // Committed on disk, still staged in the data path: promoted, not left behind.
        assert_eq!(adopt(Some(old), Some(new), new), Adopt::Promote);
        assert_eq!(adopt(Some(old), None, new), Adopt::Replace);
        assert_eq!(adopt(Some(old), Some(other), new), Adopt::Replace);
        assert_eq!(adopt(None, None, new), Adopt::Replace);
    }
}
