//! Driving an agent beyond start and stop: its data-path process, key rotation, the all-nodes
//! view, its log, and extra agents run outside the node table (a second agent claiming a node's
//! name).

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

use crate::agent::{agent_binary, LOG_TAIL_LINES};
use crate::error::{LabError, Result};
use crate::exec::{run, BgProcess};
use crate::handles::AgentHandle;
use crate::handles::DatapathHandle;
use crate::lab::{datapath_pid_in, Lab, NodeKind, AGENT_RUN_DIR};

const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// Seconds since the Unix epoch, as a float (ping's `-D` timestamps use the same clock).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Lab {
    /// `<labdir>/<label>`: home of an extra agent ([`crate::AgentHandle::spawn_with`]), with `state/`,
    /// `run/`, `wireguard/`, `config.yaml` and `agent.log`.
    pub fn extra_agent_dir(&self, label: &str) -> PathBuf {
        self.dir().join(label)
    }
}

fn alive(pid: Pid) -> bool {
    nix::sys::signal::kill(pid, None).is_ok() && !is_zombie(pid)
}

fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl DatapathHandle<'_> {
    /// The PID of the node's `wiremesh datapath`, if one runs.
    pub fn pid(&self) -> Option<u32> {
        let node = self.node;
        datapath_pid_in(&self.lab.node_dir(node).join("run"))
            .and_then(|p| u32::try_from(p.as_raw()).ok())
    }

    /// Sends `signal` to the node's data path and waits up to `timeout` for it to be gone.
    pub fn stop(&self, signal: Signal, timeout: Duration) -> Result<()> {
        let node = self.node;
        let pid = datapath_pid_in(&self.lab.node_dir(node).join("run")).ok_or_else(|| {
            LabError::Node {
                node,
                what: "no data path is running".into(),
            }
        })?;
        nix::sys::signal::kill(pid, signal).map_err(|e| LabError::Node {
            node,
            what: format!("kill -{signal} {pid}: {e}"),
        })?;
        let deadline = Instant::now() + timeout;
        // The data path is not our child (the agent detached it), so it is reaped by init: wait
        // until its PID no longer names a data path for this node.
        while datapath_pid_in(&self.lab.node_dir(node).join("run")) == Some(pid) && alive(pid) {
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("node-{node}'s data path (pid {pid}) to exit on {signal}"),
                    after: timeout,
                    last: "still running".into(),
                });
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }
}

impl AgentHandle<'_> {
    /// `wiremesh keys rotate` in the node: its stdout (`Rotated: key epoch N, public key K`).
    pub fn rotate_keys(&self, timeout: Duration) -> Result<String> {
        let node = self.node;
        let mut cmd = self.lab.agent_cli(node)?;
        cmd.args(["keys", "rotate", "--run-dir", AGENT_RUN_DIR]);
        run(&mut cmd, timeout)
    }

    /// `wiremesh encrypt status --all-nodes --json` in the node: one entry per node.
    pub fn all_nodes_status(&self) -> Result<Vec<Value>> {
        let node = self.node;
        let mut cmd = self.lab.agent_cli(node)?;
        cmd.args([
            "encrypt",
            "status",
            "--all-nodes",
            "--json",
            "--run-dir",
            AGENT_RUN_DIR,
        ]);
        let out = run(&mut cmd, STATUS_TIMEOUT)?;
        match serde_json::from_str::<Value>(&out) {
            Ok(Value::Array(nodes)) => Ok(nodes),
            _ => Err(LabError::Parse {
                what: "all-nodes status JSON list".into(),
                input: out,
            }),
        }
    }

    /// The whole log of the node's agent (every run appended).
    pub fn log(&self) -> String {
        let node = self.node;
        std::fs::read(self.lab.node(node).log_path(NodeKind::Agent))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The length of the node's agent log: pass it to [`AgentHandle::wait_log`] to look only at what
    /// is written afterwards.
    pub fn log_len(&self) -> usize {
        self.log().len()
    }

    /// Waits until a line of the node's agent log written after byte `from` satisfies `pred`;
    /// returns that line.
    pub fn wait_log(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let node = self.node;
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.get(from..).unwrap_or("").lines().find(|l| pred(l)) {
                return Ok(line.to_owned());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("node-{node}'s agent log to show {what}"),
                    after: timeout,
                    last: self
                        .lab
                        .node(node)
                        .log_tail(NodeKind::Agent, LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts `wiremesh agent` with config `yaml` in the node's network namespace, but with
    /// its own `/run/wireguard` and `/run/wiremesh` (from [`Lab::extra_agent_dir`]), outside the
    /// node table: the caller owns the process. A data path it starts is stopped at teardown.
    pub fn spawn_with(&self, label: &str, yaml: &str) -> Result<BgProcess> {
        let node = self.node;
        let bin = agent_binary()?;
        let base = self.lab.extra_agent_dir(label);
        for d in ["state", "run", "wireguard"] {
            let dir = base.join(d);
            std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        }
        self.lab.extra_run_dirs_guard().push(base.join("run"));
        let config = base.join("config.yaml");
        std::fs::write(&config, yaml).map_err(|e| LabError::io(&config, e))?;
        let mut cmd = self.lab.mounted_cmd(node, &base, &bin);
        cmd.args(["agent", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info");
        BgProcess::spawn(
            format!("agent {label} on node-{node}"),
            &mut cmd,
            &base.join("agent.log"),
        )
    }

    /// Runs `wiremesh agent --config <yaml>` as [`AgentHandle::spawn_with`] does, to completion or
    /// `timeout` (then it is killed and this is an error): for an agent expected to refuse to
    /// start. Returns its exit status and everything it wrote.
    pub fn run_with(
        &self,
        label: &str,
        yaml: &str,
        timeout: Duration,
    ) -> Result<(ExitStatus, String)> {
        let mut proc = self.spawn_with(label, yaml)?;
        let status = match proc.wait_timeout(timeout) {
            Ok(status) => status,
            Err(e) => {
                proc.kill();
                return Err(LabError::Check(format!(
                    "{e}; its log:\n{}",
                    tail(&proc.log(), LOG_TAIL_LINES)
                )));
            }
        };
        Ok((status, proc.log()))
    }
}
