//! Booting and stopping a lab VM: a throwaway overlay of the cached root on a tmpfs, the agent
//! and the units installed as shipped, and `systemd-nspawn -b` in the node's network namespace,
//! as `scripts/systemd/boot-test.sh` does it. The [`Vm`] record lives in the [`Lab`], so
//! teardown stops the container by PID and unmounts everything even when a test panics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::agent::agent_binary;
use crate::error::{LabError, Result};
use crate::exec::{require_tools, BgProcess};
use crate::handles::VmHandle;
use crate::lab::Lab;
use crate::options::config_yaml;
use crate::vm::config::{vm_config_file, VM_STORE_DIR};
use crate::vm::rootfs::prepare_rootfs;
use crate::vm::VM_AGENT_BIN;

/// How long systemd may take to come up inside the container.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a clean poweroff may take before the container is killed.
const POWEROFF_GRACE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(100);
/// Units a lab VM does without: no login prompt, no network management beyond the namespace's.
const MASKED: [&str; 4] = [
    "getty@tty1.service",
    "console-getty.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
];

/// One VM of a lab: its directory, what it mounted (in order), the container and its PID 1.
#[derive(Debug)]
pub(crate) struct Vm {
    pub node: u8,
    pub dir: PathBuf,
    mounts: Vec<PathBuf>,
    nspawn: Option<BgProcess>,
    /// The container's PID 1 (systemd), as the host sees it.
    pub init: Option<i32>,
}

impl Vm {
    fn new(node: u8, dir: PathBuf) -> Self {
        Self {
            node,
            dir,
            mounts: Vec::new(),
            nspawn: None,
            init: None,
        }
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// `<dir>/root`: the VM's `/` as the host sees it (the overlay).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Whether the container still runs.
    pub fn running(&mut self) -> bool {
        self.nspawn.as_mut().is_some_and(|p| p.exited().is_none())
    }

    fn mount(&mut self, source: &str, target: &Path, fstype: &str, data: &str) -> Result<()> {
        std::fs::create_dir_all(target).map_err(|e| LabError::io(target, e))?;
        let data = (!data.is_empty()).then_some(data);
        mount(Some(source), target, Some(fstype), MsFlags::empty(), data).map_err(|e| {
            LabError::Check(format!("mount -t {fstype} at {}: {e}", target.display()))
        })?;
        self.mounts.push(target.to_path_buf());
        Ok(())
    }

    /// A clean poweroff (SIGTERM to nspawn, which asks systemd to power off), then SIGKILL to
    /// the container's PID 1 (which ends its whole PID namespace) and to nspawn; then every
    /// mount, innermost first. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut nspawn) = self.nspawn.take() {
            nspawn.signal(Signal::SIGTERM);
            if nspawn.wait_timeout(POWEROFF_GRACE).is_err() {
                if let Some(init) = self.init.filter(|&i| is_init_of(i, nspawn.pid())) {
                    let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
                }
                nspawn.kill();
            }
        }
        self.init = None;
        let mut first_error = None;
        while let Some(target) = self.mounts.pop() {
            if let Err(e) = umount2(&target, MntFlags::MNT_DETACH) {
                if e != nix::errno::Errno::EINVAL {
                    first_error.get_or_insert(LabError::io(&target, std::io::Error::from(e)));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Lab {
    /// Stops every VM (teardown, before the namespaces go).
    pub(crate) fn stop_vms(&self) {
        for vm in self.vms().iter_mut() {
            if let Err(e) = vm.stop() {
                eprintln!("wiremesh-lab: stopping the VM on node-{}: {e}", vm.node);
            }
        }
    }
}

impl VmHandle<'_> {
    /// Boots the VM in node `i`'s network namespace (whose agent the lab must not start):
    /// the cached Debian root through a throwaway overlay, `/usr/local/bin/wiremesh` = the
    /// agent binary, `wiremesh.service` and `wiremesh-guard.service` as shipped (the guard
    /// enabled, as its install line says; the agent not, that is the test's to do),
    /// `/etc/wiremesh/agent.yaml` = [`vm_config_file`], the lab's dir store bound at
    /// [`VM_STORE_DIR`], a BPF filesystem of its own, `/dev/net/tun` and the unit's
    /// capabilities. Returns once systemd reports the boot finished.
    pub fn boot(&self) -> Result<()> {
        require_tools(&["systemd-nspawn", "nsenter"])?;
        if self.lab.node(self.node).agent().pid().is_some() {
            return Err(LabError::Node {
                node: self.node,
                what: "the lab runs an agent here; a VM needs the node to itself".into(),
            });
        }
        let rootfs = prepare_rootfs()?;
        let dir = self.lab.dir().join(format!("vm-n{}", self.node));
        {
            let mut vms = self.lab.vms();
            if vms.iter().any(|v| v.node == self.node) {
                return Err(LabError::Node {
                    node: self.node,
                    what: "a VM was already booted here".into(),
                });
            }
            vms.push(Vm::new(self.node, dir.clone()));
        }
        let nspawn = self.with_vm(|vm| {
            mount_root(vm, rootfs)?;
            self.install(&vm.root())?;
            self.spawn_nspawn(vm)
        })?;
        let init = find_init(nspawn, BOOT_TIMEOUT).map_err(|e| self.failed(e))?;
        self.with_vm(|vm| {
            vm.init = Some(init);
            Ok(())
        })?;
        self.wait_booted().map_err(|e| self.failed(e))
    }

    /// Powers the VM off cleanly (bounded), then unmounts its root. The VM cannot boot again
    /// in this lab.
    pub fn shutdown(&self) -> Result<()> {
        self.with_vm(Vm::stop)
    }

    /// `e` with the VM's console and journal tails, for a failed boot.
    fn failed(&self, e: LabError) -> LabError {
        LabError::Node {
            node: self.node,
            what: format!("{e}\n{}", self.diagnostics()),
        }
    }

    fn install(&self, root: &Path) -> Result<()> {
        let copy = |from: &Path, to: &Path| {
            std::fs::copy(from, to)
                .map(drop)
                .map_err(|e| LabError::io(to, e))
        };
        let agent = root.join(VM_AGENT_BIN.trim_start_matches('/'));
        copy(&agent_binary()?, &agent)?;
        let systemd = root.join("etc/systemd/system");
        for unit in ["wiremesh.service", "wiremesh-guard.service"] {
            copy(&units_dir().join(unit), &systemd.join(unit))?;
        }
        let wants = systemd.join("sysinit.target.wants");
        std::fs::create_dir_all(&wants).map_err(|e| LabError::io(&wants, e))?;
        symlink(
            "/etc/systemd/system/wiremesh-guard.service",
            &wants.join("wiremesh-guard.service"),
        )?;
        for unit in MASKED {
            symlink("/dev/null", &systemd.join(unit))?;
        }
        let etc = root.join("etc/wiremesh");
        std::fs::create_dir_all(&etc).map_err(|e| LabError::io(&etc, e))?;
        let config = etc.join("agent.yaml");
        let file = vm_config_file(self.node, self.lab.layout(), self.lab.options());
        std::fs::write(&config, config_yaml(&file)).map_err(|e| LabError::io(&config, e))
    }

    fn spawn_nspawn(&self, vm: &mut Vm) -> Result<u32> {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args(["-q", "-b", "-D"])
            .arg(vm.root())
            .args(["--register=no", "--keep-unit", "--console=passive"])
            .arg(format!("--machine={}-vm{}", self.lab.prefix(), self.node))
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                self.lab.node_ns(self.node)
            ))
            // The unit's set less CAP_CHOWN, which nspawn keeps by default.
            .args(["--capability=CAP_NET_ADMIN,CAP_BPF,CAP_PERFMON"])
            .args(["--system-call-filter=bpf", "--bind=/dev/net/tun"])
            .arg(format!(
                "--bind={}:/sys/fs/bpf",
                vm.dir.join("bpf").display()
            ));
        if !self.lab.options().uses_etcd() {
            let cluster = self.lab.cluster_of(self.node);
            let store = self.lab.layout().store_dir(cluster);
            cmd.arg(format!("--bind={}:{VM_STORE_DIR}", store.display()));
        }
        let proc = BgProcess::spawn(
            format!("systemd-nspawn on node-{}", self.node),
            &mut cmd,
            &vm.console_log(),
        )?;
        let pid = proc.pid();
        vm.nspawn = Some(proc);
        Ok(pid)
    }

    /// Until `systemctl is-system-running` says the boot is over (`running`, or `degraded`
    /// for a unit of the minimal root that fails in a container).
    fn wait_booted(&self) -> Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let state = match self.output(&["systemctl", "is-system-running"]) {
                Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            if state == "running" || state == "degraded" {
                return Ok(());
            }
            if !self.with_vm(|vm| Ok(vm.running()))? {
                return Err(LabError::Check(format!(
                    "the container exited while booting (last state {state:?})"
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: "systemd in the VM to finish booting".into(),
                    after: BOOT_TIMEOUT,
                    last: state,
                });
            }
            std::thread::sleep(POLL * 2);
        }
    }
}

/// `<workspace>/scripts/systemd`, where the shipped units are.
pub(crate) fn units_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("scripts/systemd")
}

fn symlink(target: &str, link: &Path) -> Result<()> {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).map_err(|e| LabError::io(link, e))
}

/// The overlay's upper and work directories on a tmpfs of their own (overlayfs refuses an
/// upper directory on overlayfs, which `/tmp` is in a container), the overlay, and the VM's
/// BPF filesystem.
fn mount_root(vm: &mut Vm, rootfs: &Path) -> Result<()> {
    let scratch = vm.dir.join("scratch");
    vm.mount("tmpfs", &scratch, "tmpfs", "mode=0755")?;
    for d in ["upper", "work"] {
        let p = scratch.join(d);
        std::fs::create_dir_all(&p).map_err(|e| LabError::io(&p, e))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        rootfs.display(),
        scratch.join("upper").display(),
        scratch.join("work").display()
    );
    vm.mount("overlay", &vm.root(), "overlay", &options)?;
    vm.mount("bpf", &vm.dir.join("bpf"), "bpf", "")
}

/// The container's PID 1: the child of nspawn that runs systemd in a PID namespace of its own
/// (nspawn's short-lived outer child has the same parent and the host's PID namespace).
fn find_init(nspawn: u32, timeout: Duration) -> Result<i32> {
    let deadline = Instant::now() + timeout;
    let outer = std::fs::read_link(format!("/proc/{nspawn}/ns/pid")).ok();
    loop {
        for child in children_of(nspawn) {
            let ns = std::fs::read_link(format!("/proc/{child}/ns/pid")).ok();
            if ns.is_some() && ns != outer && comm(child).as_deref() == Some("systemd") {
                return Ok(child);
            }
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: "the container's systemd (PID 1) to start".into(),
                after: timeout,
                last: format!("children of nspawn {nspawn}: {:?}", children_of(nspawn)),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Whether `pid` is still a systemd whose parent is `nspawn` (PIDs are reused).
fn is_init_of(pid: i32, nspawn: u32) -> bool {
    parent_of(pid) == Some(nspawn) && comm(pid).as_deref() == Some("systemd")
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The parent PID from `/proc/<pid>/stat` (read after the command name, which may hold spaces).
fn parent_of(pid: i32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_parent_of_a_process() {
        let me = i32::try_from(std::process::id()).expect("pid fits i32");
        assert_eq!(parent_of(me), Some(std::os::unix::process::parent_id()));
        assert!(children_of(std::os::unix::process::parent_id()).contains(&me));
    }

    #[test]
    fn the_shipped_units_are_where_the_vm_takes_them_from() {
        for unit in ["wiremesh.service", "wiremesh-guard.service"] {
            let text = std::fs::read_to_string(units_dir().join(unit)).expect("unit file");
            assert!(text.contains("/usr/local/bin/wiremesh"), "{unit}");
        }
    }
}
