//! Starting, stopping and observing the wiremesh agent on a node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::addr::MAX_NODES;
use crate::addr::WG_IFACE;
use crate::clusters::{ClusterPlan, LabLayout};
use crate::error::{LabError, Result};
use crate::exec::{run, BgProcess};
use crate::handles::{AgentHandle, NodeHandle};
use crate::lab::{Lab, NodeKind, NodeProc, AGENT_RUN_DIR};
pub use crate::options::CLUSTER_NAME;
use crate::options::{agent_config_with, config_yaml, LabOptions};

const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of a log shown when something fails.
pub const LOG_TAIL_LINES: usize = 40;

/// The agent binary: `$WIREMESH_BIN`, else `<workspace>/target/debug/wiremesh`.
pub fn agent_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("WIREMESH_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest
                .parent()
                .unwrap_or(manifest)
                .join("target/debug/wiremesh")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::MissingAgent { path })
    }
}

/// The agents' (and their data paths') log filter: `info`, or `$WIREMESH_LAB_RUST_LOG` to
/// investigate (e.g. `debug,wiremesh::userspace=trace`).
pub fn agent_log_filter() -> String {
    std::env::var("WIREMESH_LAB_RUST_LOG").unwrap_or_else(|_| "info".into())
}

/// The peers array of a status document (empty if absent).
pub fn peers(status: &Value) -> &[Value] {
    status
        .get("peers")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The `nodeName` of every peer in a status document.
pub fn peer_names(status: &Value) -> Vec<String> {
    peers(status)
        .iter()
        .filter_map(|p| p.get("nodeName")?.as_str().map(str::to_owned))
        .collect()
}

/// The peer called `name`, if listed.
pub fn peer<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    peers(status)
        .iter()
        .find(|p| p.get("nodeName").and_then(Value::as_str) == Some(name))
}

/// The agent config of node `node` of a one-cluster lab in `lab_dir` on the dir store (the keys
/// the agent's `Config` reads); [`crate::agent_config_with`] for other stores, key rotation
/// and clusters.
pub fn agent_config(node: u8, lab_dir: &Path) -> String {
    let layout = LabLayout::new(lab_dir, ClusterPlan::new(1, MAX_NODES));
    agent_config_with(node, &layout, &LabOptions::default())
}

impl Lab {
    /// Starts every node's agent and waits until each answers `encrypt status`.
    pub fn start_agents(&self, timeout: Duration) -> Result<()> {
        for node in self.node_ids() {
            self.node(node).agent().start()?;
        }
        for node in self.node_ids() {
            self.node(node)
                .agent()
                .wait_status("the agent to answer status", timeout, |_| true)?;
        }
        Ok(())
    }

    pub(crate) fn register(
        &self,
        node: u8,
        kind: NodeKind,
        spawn: impl FnOnce(String) -> Result<BgProcess>,
    ) -> Result<()> {
        let mut procs = self.procs();
        let entry = procs.get_mut(slot(node)).ok_or_else(|| LabError::Node {
            node,
            what: "no such node in this lab".into(),
        })?;
        if let Some(p) = entry.as_mut() {
            if p.proc.exited().is_none() {
                return Err(LabError::Node {
                    node,
                    what: format!("{:?} (pid {}) is still running", p.kind, p.proc.pid()),
                });
            }
        }
        let proc = spawn(format!("{kind:?} on node-{node}"))?;
        *entry = Some(NodeProc { kind, proc });
        Ok(())
    }

    fn take_proc(&self, node: u8) -> Result<NodeProc> {
        let mut procs = self.procs();
        procs
            .get_mut(slot(node))
            .and_then(Option::take)
            .ok_or_else(|| LabError::Node {
                node,
                what: "nothing was started on this node".into(),
            })
    }

    /// Prints the tail of every node's logs to stderr (where the test harness shows it on failure).
    pub fn dump_logs(&self) {
        self.dump_vm_logs();
        for node in self.node_ids() {
            for kind in [NodeKind::Agent, NodeKind::WireguardGo] {
                let path = self.node(node).log_path(kind);
                if !path.exists() {
                    continue;
                }
                eprintln!(
                    "----- node-{node} {} (last {LOG_TAIL_LINES} lines) -----",
                    path.display()
                );
                eprintln!("{}", self.node(node).log_tail(kind, LOG_TAIL_LINES));
            }
        }
    }
}

/// Index of node `node` in the process table (node 0 maps out of range).
fn slot(node: u8) -> usize {
    usize::from(node).wrapping_sub(1)
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| LabError::io(path, e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| LabError::io(path, e))
}

impl AgentHandle<'_> {
    /// The agent's config file for `node`.
    pub fn config_path(&self) -> PathBuf {
        let node = self.node;
        self.lab.node_dir(node).join("config.yaml")
    }

    /// The config the lab gives the node's agent (with the `clusterMesh` a test set).
    pub fn config_yaml(&self) -> String {
        config_yaml(&self.lab.config_file(self.node))
    }

    /// Writes the config and starts `wiremesh agent` in the node (without waiting for it).
    pub fn start(&self) -> Result<()> {
        let node = self.node;
        let bin = agent_binary()?;
        let config = self.config_path();
        std::fs::write(&config, self.config_yaml()).map_err(|e| LabError::io(&config, e))?;
        let log = self.lab.node(node).log_path(NodeKind::Agent);
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        append(
            &log,
            &format!("=== wiremesh-lab: starting agent on node-{node} (unix time {since}) ===\n"),
        )?;
        let mut cmd = self.lab.node_cmd(node, &bin);
        cmd.args(["agent", "--config"])
            .arg(&config)
            .env("RUST_LOG", agent_log_filter());
        self.lab.register(node, NodeKind::Agent, |name| {
            BgProcess::spawn(name, &mut cmd, &log)
        })
    }

    /// The PID of what the node runs, while it runs.
    pub fn pid(&self) -> Option<u32> {
        let node = self.node;
        let mut procs = self.lab.procs();
        let p = procs.get_mut(slot(node))?.as_mut()?;
        p.proc.exited().is_none().then(|| p.proc.pid())
    }

    /// SIGKILL (no chance to clean up), as a crash would.
    pub fn kill(&self) -> Result<()> {
        let node = self.node;
        let mut p = self.lab.take_proc(node)?;
        p.proc.kill();
        Ok(())
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    pub fn stop(&self) -> Result<()> {
        let node = self.node;
        let mut p = self.lab.take_proc(node)?;
        p.proc.stop(Signal::SIGTERM, STOP_GRACE);
        Ok(())
    }

    /// Fails with the exit status and log tail if the node's process has exited.
    /// For a node that hosts a VM: fails with its console and journal if the VM has stopped.
    pub fn check_running(&self) -> Result<()> {
        let node = self.node;
        if self.lab.has_vm(node) {
            return self.lab.vm(node).check_running();
        }
        let mut procs = self.lab.procs();
        let Some(p) = procs.get_mut(slot(node)).and_then(Option::as_mut) else {
            return Err(LabError::Node {
                node,
                what: "nothing is running on this node".into(),
            });
        };
        let Some(status) = p.proc.exited() else {
            return Ok(());
        };
        let kind = p.kind;
        drop(procs);
        Err(LabError::Node {
            node,
            what: format!(
                "{kind:?} exited ({status}); log tail:\n{}",
                self.lab.node(node).log_tail(kind, LOG_TAIL_LINES)
            ),
        })
    }

    /// `wiremesh encrypt status --json` in the node.
    pub fn status(&self) -> Result<Value> {
        let node = self.node;
        let mut cmd = self.lab.agent_cli(node)?;
        cmd.args(["encrypt", "status", "--json", "--run-dir", AGENT_RUN_DIR]);
        let out = run(&mut cmd, STATUS_TIMEOUT)?;
        serde_json::from_str(&out).map_err(|_| LabError::Parse {
            what: "status JSON".into(),
            input: out,
        })
    }

    /// `wiremesh observe ARGS` in the node (e.g. `["-o", "json", "--last", "100"]`): its stdout.
    pub fn observe(&self, args: &[&str]) -> Result<String> {
        let node = self.node;
        let mut cmd = self.lab.agent_cli(node)?;
        cmd.arg("observe")
            .args(args)
            .args(["--run-dir", AGENT_RUN_DIR]);
        run(&mut cmd, STATUS_TIMEOUT)
    }

    /// `wiremesh observe -o json --last 1000 ARGS`, read again until `done` holds for the flows
    /// or `within` has passed; the flows last read either way. The agent relays the proxy's
    /// records by long poll, so a request's record reaches `observe` a moment after its answer.
    pub fn observe_json_until(
        &self,
        args: &[&str],
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + within;
        loop {
            let mut all = vec!["-o", "json", "--last", "1000"];
            all.extend_from_slice(args);
            let out = self.observe(&all)?;
            let flows = out
                .lines()
                .map(|line| {
                    serde_json::from_str(line).map_err(|_| LabError::Parse {
                        what: "a flow of `wiremesh observe -o json`".into(),
                        input: line.to_string(),
                    })
                })
                .collect::<Result<Vec<Value>>>()?;
            if done(&flows) || Instant::now() >= deadline {
                return Ok(flows);
            }
            std::thread::sleep(POLL * 5);
        }
    }

    /// `wiremesh encrypt status` (human form) in the node.
    pub fn status_text(&self) -> Result<String> {
        let node = self.node;
        let mut cmd = self.lab.agent_cli(node)?;
        cmd.args(["encrypt", "status", "--run-dir", AGENT_RUN_DIR]);
        run(&mut cmd, STATUS_TIMEOUT)
    }

    /// Polls the node's status every 100 ms until `pred` holds; fails early if the agent dies.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let node = self.node;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let last = match self.status() {
                Ok(status) if pred(&status) => return Ok(status),
                Ok(status) => status.to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let tail = if self.lab.has_vm(node) {
                    self.lab.vm(node).diagnostics()
                } else {
                    self.lab
                        .node(node)
                        .log_tail(NodeKind::Agent, LOG_TAIL_LINES)
                };
                return Err(LabError::Timeout {
                    what: format!("node-{node}: {what}"),
                    after: timeout,
                    last: format!("{last}\nagent log tail:\n{tail}"),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Prints the tail of this node's agent log to stderr (where the test harness shows it on
    /// failure); [`Lab::dump_logs`] prints every node's.
    pub fn dump_logs(&self) {
        let node = self.lab.node(self.node);
        eprintln!(
            "----- node-{} {} (last {LOG_TAIL_LINES} lines) -----",
            self.node,
            node.log_path(NodeKind::Agent).display()
        );
        eprintln!("{}", node.log_tail(NodeKind::Agent, LOG_TAIL_LINES));
    }

    /// Waits until the node's status lists exactly `count` peers.
    pub fn wait_peer_count(&self, count: usize, timeout: Duration) -> Result<Value> {
        self.wait_status(&format!("{count} peers in status"), timeout, |s| {
            peers(s).len() == count
        })
    }

    /// Waits until the node's status lists `count` peers with a handshake (which needs
    /// traffic: see [`crate::HostHandle::wait_reachable`]).
    pub fn wait_handshakes(&self, count: usize, timeout: Duration) -> Result<Value> {
        self.wait_status(&format!("{count} peers with a handshake"), timeout, |s| {
            peers(s)
                .iter()
                .filter(|p| p.get("lastHandshake").is_some_and(|h| !h.is_null()))
                .count()
                >= count
        })
    }
}

impl NodeHandle<'_> {
    /// The log file of what the node runs (agent or wireguard-go).
    pub fn log_path(&self, kind: NodeKind) -> PathBuf {
        let node = self.node;
        let file = match kind {
            NodeKind::Agent => "agent.log",
            NodeKind::WireguardGo => "wireguard-go.log",
        };
        self.lab.node_dir(node).join(file)
    }

    /// `wg show wiremesh_wg0` in the node.
    pub fn wg_show(&self) -> Result<String> {
        let node = self.node;
        run(
            self.lab.node_cmd(node, "wg").args(["show", WG_IFACE]),
            STATUS_TIMEOUT,
        )
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, kind: NodeKind, lines: usize) -> String {
        let text = std::fs::read(self.log_path(kind))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn peer_helpers_read_the_status_document() {
        // The peers as the agent's status types write them.
        let peer_of = |name: &str| wiremesh::status::PeerStatus {
            node_name: Some(name.into()),
            public_key: String::new(),
            endpoint: None,
            allowed_ips: Vec::new(),
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            key_epoch: None,
            next_public_key: None,
        };
        let status = json!({"peers": [peer_of("node-2"), peer_of("node-3")]});
        assert_eq!(peer_names(&status), ["node-2", "node-3"]);
        assert!(peer(&status, "node-3").is_some());
        assert!(peer(&status, "node-4").is_none());
        assert!(peers(&json!({})).is_empty());
    }

    #[test]
    fn config_has_the_documented_keys_and_values() {
        let yaml = agent_config(2, Path::new("/tmp/l"));
        let v: yaml_serde::Value = yaml_serde::from_str(&yaml).expect("config is valid YAML");
        let expected: yaml_serde::Value = yaml_serde::from_str(
            "nodeName: node-2\nclusterName: lab\ninterface: wiremesh_wg0\nlistenPort: 51871\n\
             stateDir: /tmp/l/n2/state\nrunDir: /run/wiremesh\nendpoint: 198.18.0.2:51871\n\
             nodeIPs: [198.18.0.2]\npodCIDRs: [10.244.2.0/24]\nclusterPodCIDRs: [10.244.0.0/16]\nstrictMode: true\nstore: {kind: dir, dir: {path: /tmp/l/store}}\n\
             healthAddress: 127.0.0.1:9879\npolicy: {bpfPinDir: /tmp/l/bpffs/node-2}\n",
        )
        .expect("expected config is valid YAML");
        assert_eq!(v, expected);
    }
}
