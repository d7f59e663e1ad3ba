//! The [`Lab`] handle: names, directories, running commands inside nodes and pods, and teardown.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::addr::{Host, MAX_NODES, MAX_PODS};
use crate::claim::{claim, namespaces_of};
use crate::clusters::{ClusterPlan, LabLayout};
use crate::error::{LabError, Result};
use crate::exec::{require_root, require_tools, run, BgProcess};
use crate::options::LabOptions;

pub use crate::options::{AGENT_RUN_DIR, WG_RUN_DIR};

/// Binds the node's directories over the two run directories, then execs the real program, so
/// the PID the lab holds is the program's own.
const MOUNT_SCRIPT: &str = r#"mount --bind "$1" /run/wireguard && mount --bind "$2" /run/wiremesh && shift 2 && exec "$@""#;

pub(crate) const IP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long teardown lets processes exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// What a node runs: the wiremesh agent, or wireguard-go configured by hand with `wg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Agent,
    WireguardGo,
}

#[derive(Debug)]
pub(crate) struct NodeProc {
    pub kind: NodeKind,
    pub proc: BgProcess,
}

/// N nodes joined by a bridge, each with P pods, all in network namespaces named with a unique
/// prefix; in a multi-cluster lab, C clusters of N nodes each on the same bridge. Dropping it
/// (also while panicking) stops every process it started and deletes every namespace it
/// created.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    layout: LabLayout,
    /// Every node, of every cluster.
    nodes: u8,
    pods: u8,
    keep: bool,
    options: LabOptions,
    procs: Mutex<Vec<Option<NodeProc>>>,
    /// Each cluster's etcd server, while it runs (etcd labs only), by cluster (index 0 is
    /// cluster 1).
    pub(crate) etcd: Mutex<Vec<Option<BgProcess>>>,
    /// The fake Kubernetes API server, while it runs (Kubernetes labs only).
    pub(crate) kube: Mutex<Option<BgProcess>>,
    /// Per node, the `clusterMesh.clusters` a test set ([`crate::AgentHandle::set_cluster_mesh`])
    /// in place of the clusters the lab links it with at start.
    pub(crate) meshes: Mutex<Vec<Option<Vec<wiremesh::config::RemoteClusterSection>>>>,
    /// Run directories of agents started outside the node table ([`Lab::spawn_agent_with`]),
    /// whose data paths teardown must stop too.
    pub(crate) extra_run_dirs: Mutex<Vec<PathBuf>>,
    /// The systemd VMs booted in nodes ([`crate::VmHandle::boot`]).
    pub(crate) vms: Mutex<Vec<crate::vm::Vm>>,
    torn_down: bool,
}

impl Lab {
    /// Builds the underlay switch, `nodes` nodes and `pods` pods per node, for agents on the dir
    /// store. On error everything created so far is removed again.
    pub fn new(nodes: u8, pods: u8) -> Result<Self> {
        Self::with_options(nodes, pods, LabOptions::default())
    }

    /// [`Lab::new`] with a choice of store, key rotation and clusters (`nodes` is per
    /// cluster). An etcd lab also gives `br0` the address [`crate::SWITCH_IP`] and starts one
    /// etcd per cluster there, waiting until each is healthy.
    pub fn with_options(nodes: u8, pods: u8, options: LabOptions) -> Result<Self> {
        let total = check_shape(nodes, pods, &options)?;
        require_root()?;
        require_tools(&["ip", "ss", "sysctl", "unshare", "mount"])?;
        if options.uses_etcd() {
            require_tools(&["etcd", "etcdctl"])?;
        }
        if options.uses_kubernetes() {
            require_tools(&["kubectl"])?;
            crate::kube::fake_apiserver_binary()?;
        }
        let claim = claim()?;
        let keep = std::env::var_os("WIREMESH_LAB_KEEP").is_some_and(|v| v == "1");
        let clusters = options.clusters;
        let lab = Self {
            prefix: claim.prefix,
            layout: LabLayout::new(claim.dir, ClusterPlan::new(clusters, nodes)),
            nodes: total,
            pods,
            keep,
            options,
            procs: Mutex::new((0..total).map(|_| None).collect()),
            etcd: Mutex::new((0..clusters).map(|_| None).collect()),
            kube: Mutex::new(None),
            meshes: Mutex::new((0..total).map(|_| None).collect()),
            extra_run_dirs: Mutex::new(Vec::new()),
            vms: Mutex::new(Vec::new()),
            torn_down: false,
        };
        lab.make_dirs()?;
        lab.build_topology()?;
        if lab.options.uses_etcd() {
            for cluster in lab.cluster_ids() {
                lab.cluster_etcd(cluster).start()?;
            }
        }
        if lab.options.uses_kubernetes() {
            lab.kube_api().bootstrap()?;
        }
        Ok(lab)
    }

    fn make_dirs(&self) -> Result<()> {
        let mut dirs = vec![PathBuf::from(WG_RUN_DIR), PathBuf::from(AGENT_RUN_DIR)];
        dirs.extend(self.cluster_ids().map(|c| self.layout.store_dir(c)));
        for node in self.node_ids() {
            let base = self.node_dir(node);
            dirs.extend(["wireguard", "run", "state"].map(|d| base.join(d)));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        }
        let bpffs = self.bpffs_dir();
        std::fs::create_dir_all(&bpffs).map_err(|e| LabError::io(&bpffs, e))?;
        nix::mount::mount(
            Some("bpf"),
            &bpffs,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            LabError::Check(format!(
                "mounting a BPF filesystem at {} (policy enforcement needs bpf()): {e}",
                bpffs.display()
            ))
        })?;
        Ok(())
    }

    pub fn options(&self) -> &LabOptions {
        &self.options
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every node of every cluster (clusters × nodes per cluster).
    pub fn nodes(&self) -> u8 {
        self.nodes
    }

    pub fn pods(&self) -> u8 {
        self.pods
    }

    pub fn node_ids(&self) -> std::ops::RangeInclusive<u8> {
        1..=self.nodes
    }

    pub fn pod_ids(&self) -> std::ops::RangeInclusive<u8> {
        1..=self.pods
    }

    /// Every pod of every node.
    pub fn all_pods(&self) -> Vec<Host> {
        self.node_ids()
            .flat_map(|n| self.pod_ids().map(move |k| Host::Pod(n, k)))
            .collect()
    }

    /// `/tmp/wiremesh-lab/<prefix>`.
    pub fn dir(&self) -> &Path {
        &self.layout.dir
    }

    /// Where the lab's files are and how its nodes form clusters.
    pub fn layout(&self) -> &LabLayout {
        &self.layout
    }

    /// `<labdir>/n<i>`: the node's config, log, state and run directories.
    pub(crate) fn node_dir(&self, node: u8) -> PathBuf {
        self.layout.node_dir(node)
    }

    /// The lab's own BPF filesystem (`<labdir>/bpffs`), where each node's agent pins its
    /// policy maps: node namespaces share the host's mounts, so a private mount keeps labs
    /// apart and unmounting it at teardown frees every pin.
    pub fn bpffs_dir(&self) -> PathBuf {
        self.layout.bpffs_dir()
    }

    pub(crate) fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    pub(crate) fn node_ns(&self, node: u8) -> String {
        format!("{}-n{node}", self.prefix)
    }

    pub(crate) fn pod_ns(&self, node: u8, pod: u8) -> String {
        format!("{}-n{node}p{pod}", self.prefix)
    }

    pub(crate) fn ns(&self, host: Host) -> String {
        match host {
            Host::Node(n) => self.node_ns(n),
            Host::Pod(n, k) => self.pod_ns(n, k),
        }
    }

    /// A command in node `node`'s network namespace with the node's own `/run/wireguard` and
    /// `/run/wiremesh` bind-mounted (as the agent sees them). Append arguments as usual.
    pub(crate) fn node_cmd(&self, node: u8, program: impl AsRef<OsStr>) -> Command {
        self.mounted_cmd(node, &self.node_dir(node), program)
    }

    /// A command in node `node`'s network namespace with `base/wireguard` and `base/run` bind-mounted
    /// over `/run/wireguard` and `/run/wiremesh`.
    pub(crate) fn mounted_cmd(&self, node: u8, base: &Path, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node_ns(node)])
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                MOUNT_SCRIPT,
                "sh",
            ])
            .arg(base.join("wireguard"))
            .arg(base.join("run"))
            .arg(program);
        cmd
    }

    /// The shell command line equivalent to [`Lab::node_cmd`], for humans.
    pub(crate) fn node_shell_line(&self, node: u8, program: &str) -> String {
        let base = self.node_dir(node);
        format!(
            "ip netns exec {} unshare --mount --propagation private sh -c '{MOUNT_SCRIPT}' sh {} {} {program}",
            self.node_ns(node),
            base.join("wireguard").display(),
            base.join("run").display(),
        )
    }

    /// A command in pod `pod` of node `node`.
    pub(crate) fn pod_cmd(&self, node: u8, pod: u8, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.pod_ns(node, pod)])
            .arg(program);
        cmd
    }

    /// [`Lab::node_cmd`] or [`Lab::pod_cmd`].
    pub(crate) fn host_cmd(&self, host: Host, program: impl AsRef<OsStr>) -> Command {
        match host {
            Host::Node(n) => self.node_cmd(n, program),
            Host::Pod(n, k) => self.pod_cmd(n, k, program),
        }
    }

    /// Runs `ip -n <ns of host> <args>` and returns its stdout.
    pub(crate) fn ip(&self, host: Host, args: &[&str]) -> Result<String> {
        run(
            Command::new("ip").args(["-n", &self.ns(host)]).args(args),
            IP_TIMEOUT,
        )
    }

    pub(crate) fn procs(&self) -> MutexGuard<'_, Vec<Option<NodeProc>>> {
        // A panic while holding this lock leaves the data consistent (plain Options), so a
        // poisoned lock is still safe to use, and teardown must work while panicking.
        self.procs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops every process, deletes every namespace and (unless `WIREMESH_LAB_KEEP=1`) the working
    /// directory. Idempotent; also run by `Drop`.
    pub fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        self.stop_all();
        let mut first_error = None;
        match namespaces_of(&self.prefix) {
            Ok(namespaces) => {
                for ns in namespaces {
                    if let Err(e) = run(
                        Command::new("ip").args(["netns", "delete", &ns]),
                        IP_TIMEOUT,
                    ) {
                        first_error.get_or_insert(e);
                    }
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        let bpffs = self.bpffs_dir();
        if bpffs.exists() {
            if let Err(e) = nix::mount::umount2(&bpffs, nix::mount::MntFlags::MNT_DETACH) {
                if e != nix::errno::Errno::EINVAL {
                    first_error.get_or_insert(LabError::io(&bpffs, std::io::Error::from(e)));
                }
            }
        }
        if self.keep {
            eprintln!(
                "wiremesh-lab: WIREMESH_LAB_KEEP=1, keeping {}",
                self.dir().display()
            );
        } else if let Err(e) = std::fs::remove_dir_all(self.dir()) {
            first_error.get_or_insert(LabError::io(self.dir(), e));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every VM powered off, then SIGTERM to every node process at once, a shared grace
    /// period, then SIGKILL.
    fn stop_all(&self) {
        self.stop_vms();
        let mut procs = self.procs();
        for p in procs.iter_mut().flatten() {
            p.proc.signal(Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for p in procs.iter_mut().flatten() {
            let left = deadline.saturating_duration_since(Instant::now());
            if p.proc.wait_timeout(left).is_err() {
                p.proc.kill();
            }
        }
        procs.iter_mut().for_each(|p| *p = None);
        drop(procs);
        self.stop_datapaths();
        for cluster in self.cluster_ids() {
            if let Err(e) = self.cluster_etcd(cluster).stop() {
                eprintln!("wiremesh-lab: stopping cluster {cluster}'s etcd: {e}");
            }
        }
        if let Err(e) = self.kube_api().stop() {
            eprintln!("wiremesh-lab: stopping the fake API server: {e}");
        }
    }

    /// The agents' data-path and L7 proxy processes: started by the agents (detached, so that
    /// they outlive agent restarts), named by the PID file each writes in its node's run
    /// directory.
    fn stop_datapaths(&self) {
        let mut run_dirs: Vec<PathBuf> = self
            .node_ids()
            .map(|node| self.node_dir(node).join("run"))
            .collect();
        run_dirs.extend(self.extra_run_dirs_guard().iter().cloned());
        let pids: Vec<_> = run_dirs
            .iter()
            .flat_map(|d| [datapath_pid_in(d), proxy_pid_in(d)])
            .flatten()
            .collect();
        for pid in &pids {
            let _ = nix::sys::signal::kill(*pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for pid in pids {
            while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
    }

    pub(crate) fn extra_run_dirs_guard(&self) -> MutexGuard<'_, Vec<PathBuf>> {
        // Plain data: a poisoned lock is still consistent, and teardown must work while panicking.
        self.extra_run_dirs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The PID in `<run_dir>/datapath.pid`, if it still names a `wiremesh datapath` started for that
/// directory (PIDs are reused, and a stale file must never make the lab signal a stranger).
pub(crate) fn datapath_pid_in(run_dir: &Path) -> Option<nix::unistd::Pid> {
    child_pid_in(run_dir, "datapath")
}

/// The PID in `<run_dir>/proxy.pid`, if it still names a `wiremesh proxy` of that directory.
pub(crate) fn proxy_pid_in(run_dir: &Path) -> Option<nix::unistd::Pid> {
    child_pid_in(run_dir, "proxy")
}

/// The PID in `<run_dir>/<what>.pid` if it names a `wiremesh <what>` started for that directory.
fn child_pid_in(run_dir: &Path, what: &str) -> Option<nix::unistd::Pid> {
    let text = std::fs::read_to_string(run_dir.join(format!("{what}.pid"))).ok()?;
    let pid = text.trim().parse::<i32>().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let base = run_dir.parent().unwrap_or(run_dir).to_string_lossy();
    // A zombie has an empty cmdline: it is gone for our purposes.
    (cmdline.contains(what) && cmdline.contains(&*base)).then(|| nix::unistd::Pid::from_raw(pid))
}

/// The lab's node count (`nodes` per cluster × clusters), or why the shape cannot be built.
fn check_shape(nodes: u8, pods: u8, options: &LabOptions) -> Result<u8> {
    let clusters = options.clusters;
    let total = u16::from(nodes) * u16::from(clusters);
    if nodes == 0 || clusters == 0 || total > u16::from(MAX_NODES) || pods > MAX_PODS {
        return Err(LabError::Check(format!(
            "a lab holds 1..={MAX_NODES} nodes in all (nodes per cluster × clusters) and \
             0..={MAX_PODS} pods per node, not {clusters} × {nodes} nodes × {pods} pods"
        )));
    }
    if clusters > 1 && options.uses_kubernetes() {
        return Err(LabError::Check(format!(
            "a Kubernetes lab is one cluster (one API server), not {clusters}"
        )));
    }
    if let Some(c) = options
        .unlinked
        .iter()
        .find(|c| !(1..=clusters).contains(*c))
    {
        return Err(LabError::Check(format!(
            "LabOptions::unlinked names cluster {c}, but the lab has clusters 1..={clusters}"
        )));
    }
    // Checked above: total <= MAX_NODES, a u8.
    Ok(u8::try_from(total).expect("total nodes fit a u8 (checked against MAX_NODES)"))
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            if !self.keep {
                eprintln!(
                    "wiremesh-lab: set WIREMESH_LAB_KEEP=1 to keep {} for inspection",
                    self.dir().display()
                );
            }
        }
        if let Err(e) = self.teardown() {
            eprintln!("wiremesh-lab: teardown of {} incomplete: {e}", self.prefix);
        }
    }
}
