//! The lab's Kubernetes API server, for agents on the Kubernetes store
//! ([`crate::LabOptions::kubernetes`]): `wiremesh-fake-apiserver`, which stands in for
//! kube-apiserver (a real one cannot be installed on the project's machines), runs as a process
//! in the switch namespace at `https://198.18.0.254:6443`, with its TLS files, state, audit log
//! and kubeconfigs in `<labdir>/kube`. It enforces the RBAC rendered from `deploy/kubernetes`
//! for the agents' service account; `kubectl` acts as the cluster admin (`system:masters`).
//!
//! The lab writes every file before the server starts, creates each node's `Node` with
//! `kubectl create -f` before any agent starts (as kubelet would register it), and keeps the
//! server's state across [`KubeApiHandle::restart`], so a restart is an outage, not a wipe.
//! It must never start an agent against a server that is not ready, nor leave the server
//! running: it is stopped by its PID with the lab.

mod files;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::agent::agent_binary;
use crate::clusters::LabLayout;
use crate::error::{LabError, Result};
use crate::exec::{output, BgProcess};
use crate::lab::Lab;
use crate::options::{StoreKind, SWITCH_IP};

pub use files::{deploy_rbac, node_manifest, ADMIN_USER, AGENT_GROUPS, AGENT_USER};

/// The API server's port on the switch.
pub const KUBE_API_PORT: u16 = 6443;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

/// `https://198.18.0.254:6443`.
pub fn kube_api_url() -> String {
    format!("https://{SWITCH_IP}:{KUBE_API_PORT}")
}

/// The fake API server binary: `$WIREMESH_FAKE_APISERVER_BIN`, else next to the agent binary
/// (cargo builds both into the same target directory).
pub fn fake_apiserver_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("WIREMESH_FAKE_APISERVER_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let agent = agent_binary()?;
            agent
                .parent()
                .map(|dir| dir.join("wiremesh-fake-apiserver"))
                .unwrap_or_default()
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::Check(format!(
            "the fake Kubernetes API server binary {} is missing: build it with \
             `cargo build -p wiremesh-fake-apiserver` or set WIREMESH_FAKE_APISERVER_BIN",
            path.display()
        )))
    }
}

impl LabLayout {
    /// `<labdir>/kube`: the API server's TLS files, state, audit log, tokens and kubeconfigs.
    pub fn kube_dir(&self) -> PathBuf {
        self.dir.join("kube")
    }

    /// `<labdir>/kube/node-<i>.kubeconfig`: node `node`'s agent's (the service account's).
    pub fn agent_kubeconfig(&self, node: u8) -> PathBuf {
        self.kube_dir()
            .join(format!("{}.kubeconfig", crate::addr::node_name(node)))
    }
}

/// The lab's API server (Kubernetes labs only).
#[derive(Debug, Clone, Copy)]
pub struct KubeApiHandle<'a> {
    lab: &'a Lab,
}

impl Lab {
    /// The fake Kubernetes API server on the switch.
    pub fn kube_api(&self) -> KubeApiHandle<'_> {
        KubeApiHandle { lab: self }
    }

    /// `kubectl <args>` as the cluster admin, in the switch namespace; its output whatever
    /// its exit status.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.switch_ns(),
            "kubectl",
            "--kubeconfig",
        ])
        .arg(self.kube_api().admin_kubeconfig())
        .args(args);
        output(&mut cmd, None, KUBECTL_TIMEOUT)
    }

    /// `kubectl <args>`, its stdout; an error (with kubectl's stderr) unless it succeeded.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("kubectl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl <verb> -f <file> --validate=false` (`create`, `replace`, `delete`) with
    /// `manifest` written to a file of its own under `<labdir>/manifests`.
    pub fn kubectl_file(&self, verb: &str, manifest: &str) -> Result<String> {
        let path = files::manifest_path(self, manifest)?;
        let path = path.to_string_lossy();
        let mut args = vec![verb, "-f", &path];
        if verb != "delete" {
            args.push("--validate=false");
        }
        self.kubectl_ok(&args)
    }

    pub(crate) fn kube_guard(&self) -> MutexGuard<'_, Option<BgProcess>> {
        // Plain data: a poisoned lock is still consistent, and teardown must work while panicking.
        self.kube.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl KubeApiHandle<'_> {
    /// `<labdir>/kube`.
    pub fn dir(&self) -> PathBuf {
        self.lab.layout().kube_dir()
    }

    /// The admin's kubeconfig (`kubernetes-admin`, group `system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir().join("admin.kubeconfig")
    }

    /// Node `node`'s agent's kubeconfig.
    pub fn agent_kubeconfig(&self, node: u8) -> PathBuf {
        self.lab.layout().agent_kubeconfig(node)
    }

    /// One JSON line per request the server answered (`--audit`).
    pub fn audit_path(&self) -> PathBuf {
        self.dir().join("audit.jsonl")
    }

    /// The RBAC manifests the server enforces (`--rbac`).
    pub fn rbac_path(&self) -> PathBuf {
        self.dir().join("rbac.yaml")
    }

    /// Every audit record so far, parsed.
    pub fn audit(&self) -> Result<Vec<serde_json::Value>> {
        let path = self.audit_path();
        let text = std::fs::read_to_string(&path).map_err(|e| LabError::io(&path, e))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|_| LabError::Parse {
                    what: format!("an audit record of {}", path.display()),
                    input: l.into(),
                })
            })
            .collect()
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.lab.kube_guard().as_ref().map(BgProcess::pid)
    }

    /// Writes the tokens, kubeconfigs and RBAC file, starts the server and creates every
    /// lab node's Node with kubectl.
    pub(crate) fn bootstrap(&self) -> Result<()> {
        let StoreKind::Kubernetes { rbac } = &self.lab.options().store else {
            return Err(LabError::Check("not a Kubernetes lab".into()));
        };
        files::write_all(self.lab, rbac.as_deref())?;
        self.start()?;
        let nodes: Vec<String> = self
            .lab
            .node_ids()
            .map(|n| node_manifest(n, self.lab.options().dual_stack))
            .collect();
        self.lab.kubectl_file("create", &nodes.join("---\n"))?;
        Ok(())
    }

    /// Starts the server on the state of any previous run and waits for its `ready` line.
    pub fn start(&self) -> Result<()> {
        let mut slot = self.lab.kube_guard();
        if let Some(p) = slot.as_mut() {
            if p.exited().is_none() {
                return Err(LabError::Check(format!(
                    "the API server (pid {}) is already running",
                    p.pid()
                )));
            }
        }
        let out = self.dir().join("apiserver.out");
        let ready_from = std::fs::metadata(&out).map_or(0, |m| m.len());
        let mut cmd = files::server_command(self.lab, &fake_apiserver_binary()?)?;
        let log = self.dir().join("apiserver.log");
        let mut proc = BgProcess::spawn_split("fake API server", &mut cmd, &out, &log)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let printed = std::fs::read(&out).unwrap_or_default();
            let fresh = String::from_utf8_lossy(printed.get(ready_from as usize..).unwrap_or(&[]));
            if fresh.lines().any(|l| l.starts_with("ready ")) {
                break;
            }
            if let Some(status) = proc.exited() {
                return Err(LabError::Check(format!(
                    "the fake API server exited ({status}); log:\n{}",
                    proc.log()
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: "the fake API server's `ready` line".into(),
                    after: READY_TIMEOUT,
                    last: proc.log(),
                });
            }
            std::thread::sleep(POLL);
        }
        *slot = Some(proc);
        Ok(())
    }

    /// Stops the server with `signal` (SIGKILL after 5 s), keeping its state file. A no-op if
    /// it is not running.
    pub fn stop_with(&self, signal: Signal) -> Result<()> {
        let Some(mut proc) = self.lab.kube_guard().take() else {
            return Ok(());
        };
        match proc.stop(signal, STOP_GRACE) {
            Some(_) => Ok(()),
            None => Err(LabError::Check(format!(
                "the fake API server (pid {}) did not exit",
                proc.pid()
            ))),
        }
    }

    /// SIGTERM, keeping the state.
    pub fn stop(&self) -> Result<()> {
        self.stop_with(Signal::SIGTERM)
    }

    /// Kills the server (SIGKILL: nothing is flushed on the way out) and starts it again with
    /// the same flags, port and state.
    pub fn restart(&self) -> Result<()> {
        self.stop_with(Signal::SIGKILL)?;
        self.start()
    }
}
