//! A lab VM: a real systemd host ("VM") in a lab node's network namespace, running the agent
//! under `scripts/systemd/wiremesh.service` as shipped, as a member of the lab's mesh with no
//! pods and a `hostAddress` (issue 12, the hybrid host). [`VmHandle`] (`lab.vm(i)`) boots it,
//! runs commands inside it (`nsenter` into every namespace of its PID 1, root included),
//! `systemctl`, `journalctl`, traffic from inside it, and shuts it down.
//!
//! The lab owns every VM ([`boot::Vm`]): teardown powers each off (then kills its PID 1 by
//! PID if it hangs) and unmounts its overlay, tmpfs and BPF filesystem before the namespaces
//! go, also when a test panics. The agent CLI of a node that hosts a VM runs inside the VM
//! (its admin socket is in the VM's `/run/wiremesh`), so `lab.node(i).agent().status()` and
//! the waits built on it work for a VM too.

mod boot;
mod config;
mod rootfs;
mod traffic;

use std::ffi::OsStr;
use std::process::{Command, Output};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

pub use config::{vm_config_file, vm_host_address, VM_LABEL, VM_STORE_DIR};
pub use rootfs::{prepare_rootfs, VM_ROOTFS};

pub(crate) use boot::Vm;

use crate::control::tail;
use crate::error::{LabError, Result};
use crate::exec::{output, run};
use crate::handles::VmHandle;
use crate::lab::Lab;

/// Where the VM has the agent binary (the unit's `ExecStart`).
pub const VM_AGENT_BIN: &str = "/usr/local/bin/wiremesh";
/// The agent's unit.
pub const VM_UNIT: &str = "wiremesh.service";
/// How long one command inside the VM may take.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// A PATH for commands inside the VM (the host's may name directories it does not have).
const VM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Lines of the journal and console shown when something fails.
const DIAGNOSTIC_LINES: usize = 40;

impl Lab {
    pub(crate) fn vms(&self) -> MutexGuard<'_, Vec<Vm>> {
        // Plain data: a poisoned lock is still consistent, and teardown must work while panicking.
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a VM was booted (or began booting) in node `node`.
    pub(crate) fn has_vm(&self, node: u8) -> bool {
        self.vms().iter().any(|v| v.node == node)
    }

    /// Whether node `node` hosts a VM that was booted and still runs.
    pub(crate) fn hosts_vm(&self, node: u8) -> bool {
        self.vms()
            .iter_mut()
            .any(|v| v.node == node && v.init.is_some() && v.running())
    }

    /// The agent CLI for node `node`: inside its VM if it hosts one, else the lab's binary in
    /// the node's namespace with its run directories mounted.
    pub(crate) fn agent_cli(&self, node: u8) -> Result<Command> {
        if self.hosts_vm(node) {
            return self.vm(node).cmd(VM_AGENT_BIN);
        }
        Ok(self.node_cmd(node, crate::agent::agent_binary()?))
    }

    /// Prints every VM's console and agent journal tails to stderr.
    pub(crate) fn dump_vm_logs(&self) {
        let nodes: Vec<u8> = self.vms().iter().map(|v| v.node).collect();
        for node in nodes {
            eprintln!(
                "----- VM on node-{node} -----\n{}",
                self.vm(node).diagnostics()
            );
        }
    }
}

impl VmHandle<'_> {
    pub fn id(&self) -> u8 {
        self.node
    }

    /// The VM's `hostAddress` ([`vm_host_address`]).
    pub fn host_address(&self) -> std::net::Ipv4Addr {
        vm_host_address(self.node)
    }

    /// Runs `f` on this node's VM record.
    fn with_vm<T>(&self, f: impl FnOnce(&mut Vm) -> Result<T>) -> Result<T> {
        let mut vms = self.lab.vms();
        let vm = vms
            .iter_mut()
            .find(|v| v.node == self.node)
            .ok_or_else(|| LabError::Node {
                node: self.node,
                what: "no VM was booted on this node".into(),
            })?;
        f(vm)
    }

    /// Fails with the console and journal tails unless the VM runs.
    pub fn check_running(&self) -> Result<()> {
        self.init_pid().map(drop).map_err(|e| LabError::Node {
            node: self.node,
            what: format!("{e}\n{}", self.diagnostics()),
        })
    }

    /// The container's PID 1 as the host sees it.
    pub fn init_pid(&self) -> Result<i32> {
        self.with_vm(|vm| {
            vm.init
                .filter(|_| vm.running())
                .ok_or_else(|| LabError::Node {
                    node: vm.node,
                    what: "the VM is not running".into(),
                })
        })
    }

    /// `program` inside the VM: `nsenter` into every namespace of its PID 1, its root and
    /// working directory too, with a plain PATH. Append arguments as usual.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        let init = self.init_pid()?;
        let mut cmd = Command::new("nsenter");
        cmd.env_clear()
            .env("PATH", VM_PATH)
            .args(["-t", &init.to_string(), "-a", "-r", "-w", "--"])
            .arg(program);
        Ok(cmd)
    }

    /// Runs `args` inside the VM and returns its output whatever its exit status.
    pub fn output(&self, args: &[&str]) -> Result<Output> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| LabError::Check("VmHandle::output needs a program to run".into()))?;
        let mut cmd = self.cmd(program)?;
        cmd.args(rest);
        output(&mut cmd, None, EXEC_TIMEOUT)
    }

    /// Runs `args` inside the VM; its stdout, or an error with its stderr.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| LabError::Check("VmHandle::exec needs a program to run".into()))?;
        let mut cmd = self.cmd(program)?;
        cmd.args(rest);
        run(&mut cmd, EXEC_TIMEOUT)
    }

    /// `systemctl ARGS` inside the VM.
    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        self.exec(&all)
    }

    /// `journalctl -b -u UNIT` inside the VM: every line this boot.
    pub fn journal(&self, unit: &str) -> Result<String> {
        self.exec(&[
            "journalctl",
            "-b",
            "--no-pager",
            "-o",
            "short-precise",
            "-u",
            unit,
        ])
    }

    /// `systemctl show UNIT -p PROPERTY --value`.
    pub fn unit_property(&self, unit: &str, property: &str) -> Result<String> {
        self.systemctl(&["show", unit, "-p", property, "--value"])
            .map(|s| s.trim().to_owned())
    }

    /// Waits until `systemctl is-active UNIT` answers `active`.
    pub fn wait_active(&self, unit: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output(&["systemctl", "is-active", unit])?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "active" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("{unit} in the VM on node-{} to be active", self.node),
                    after: timeout,
                    last: format!("{state}\n{}", self.diagnostics()),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The console log (systemd's boot messages) so far.
    pub fn console_log(&self) -> String {
        let path = self.with_vm(|vm| Ok(vm.console_log()));
        path.ok()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The tails of the agent's journal and of the console, for failure messages.
    pub fn diagnostics(&self) -> String {
        let journal = self
            .journal(VM_UNIT)
            .unwrap_or_else(|e| format!("(no journal: {e})"));
        format!(
            "journalctl -u {VM_UNIT} (last {DIAGNOSTIC_LINES} lines):\n{}\nconsole (last {DIAGNOSTIC_LINES} lines):\n{}",
            tail(&journal, DIAGNOSTIC_LINES),
            tail(&self.console_log(), DIAGNOSTIC_LINES)
        )
    }
}
