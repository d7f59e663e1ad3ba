//! Handles per role: what a user of the lab acts on. [`Lab::node`] gives a [`NodeHandle`] (the
//! node's namespace, links and kernel state), which gives its [`AgentHandle`] (the wiremesh agent:
//! start, stop, status, logs, policy objects), [`DatapathHandle`] (the data-path process) and
//! [`GuardHandle`] (strict mode's nftables guard). [`Lab::host`] and [`Lab::pod`] give a
//! [`HostHandle`] (traffic from a node or pod), [`Lab::store`] the shared dir store,
//! [`Lab::etcd`] the etcd server and [`Lab::switch`] the underlay switch.
//!
//! Handles are small borrowed views that name the role once (`lab.node(2).agent().status()`);
//! they hold no state of their own and must never outlive or bypass the [`Lab`] that owns every
//! process and namespace, so teardown stays the lab's alone.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::addr::{node_name, Host};
use crate::capture::Capture;
use crate::error::Result;
use crate::exec::BgProcess;
use crate::lab::{Lab, NodeKind};
use crate::policy::Proto;
use crate::stream::IperfClient;
use crate::traffic::{Ping, PingResult};

impl Lab {
    /// Node `node` (1-based).
    pub fn node(&self, node: u8) -> NodeHandle<'_> {
        NodeHandle { lab: self, node }
    }

    /// Pod `pod` of node `node` (both 1-based).
    pub fn pod(&self, node: u8, pod: u8) -> HostHandle<'_> {
        self.host(Host::Pod(node, pod))
    }

    /// A node or a pod, for traffic.
    pub fn host(&self, host: Host) -> HostHandle<'_> {
        HostHandle { lab: self, host }
    }

    /// The dir store every node shares.
    pub fn store(&self) -> StoreHandle<'_> {
        StoreHandle { lab: self }
    }

    /// The etcd server on the switch (etcd labs only).
    pub fn etcd(&self) -> EtcdHandle<'_> {
        EtcdHandle { lab: self }
    }

    /// The underlay switch namespace (bridge `br0`).
    pub fn switch(&self) -> SwitchHandle<'_> {
        SwitchHandle { lab: self }
    }
}

/// One node: its network namespace, directories, links and kernel state.
#[derive(Debug, Clone, Copy)]
pub struct NodeHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) node: u8,
}

impl<'a> NodeHandle<'a> {
    pub fn id(&self) -> u8 {
        self.node
    }

    /// `node-<i>`, the node's name in the store.
    pub fn name(&self) -> String {
        node_name(self.node)
    }

    /// The wiremesh agent on this node.
    pub fn agent(&self) -> AgentHandle<'a> {
        AgentHandle {
            lab: self.lab,
            node: self.node,
        }
    }

    /// The data-path process the agent started on this node.
    pub fn datapath(&self) -> DatapathHandle<'a> {
        DatapathHandle {
            lab: self.lab,
            node: self.node,
        }
    }

    /// Strict mode's nftables guard table in this node's namespace.
    pub fn guard(&self) -> GuardHandle<'a> {
        GuardHandle {
            lab: self.lab,
            node: self.node,
        }
    }

    /// The node itself as a traffic endpoint.
    pub fn host(&self) -> HostHandle<'a> {
        self.lab.host(Host::Node(self.node))
    }

    /// Pod `pod` of this node.
    pub fn pod(&self, pod: u8) -> HostHandle<'a> {
        self.lab.pod(self.node, pod)
    }

    pub fn ns(&self) -> String {
        self.lab.node_ns(self.node)
    }

    /// `<labdir>/n<i>`: the node's config, log, state and run directories.
    pub fn dir(&self) -> PathBuf {
        self.lab.node_dir(self.node)
    }

    /// A command in the node's network namespace with the node's own `/run/wireguard` and
    /// `/run/wiremesh` bind-mounted (as the agent sees them). Append arguments as usual.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        self.lab.node_cmd(self.node, program)
    }

    /// The shell command line equivalent to [`NodeHandle::cmd`], for humans.
    pub fn shell_line(&self, program: &str) -> String {
        self.lab.node_shell_line(self.node, program)
    }

    /// Runs `ip -n <node ns> <args>` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.lab.ip(Host::Node(self.node), args)
    }

    /// The log of what runs on this node (agent or wireguard-go).
    pub fn log_path(&self, kind: NodeKind) -> PathBuf {
        self.lab.log_path(self.node, kind)
    }

    /// The last `lines` lines of that log.
    pub fn log_tail(&self, kind: NodeKind, lines: usize) -> String {
        self.lab.log_tail(self.node, kind, lines)
    }

    /// `wg show wiremesh_wg0` in the node.
    pub fn wg_show(&self) -> Result<String> {
        self.lab.wg_show(self.node)
    }
}

/// The wiremesh agent of one node.
#[derive(Debug, Clone, Copy)]
pub struct AgentHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) node: u8,
}

impl AgentHandle<'_> {
    /// Writes the config and starts `wiremesh agent` in the node (without waiting for it).
    pub fn start(&self) -> Result<()> {
        self.lab.start_agent(self.node)
    }

    /// SIGTERM, up to 5 s to exit, then SIGKILL.
    pub fn stop(&self) -> Result<()> {
        self.lab.stop_agent(self.node)
    }

    /// SIGKILL (no chance to clean up), as a crash would.
    pub fn kill(&self) -> Result<()> {
        self.lab.kill_agent(self.node)
    }

    pub fn pid(&self) -> Option<u32> {
        self.lab.agent_pid(self.node)
    }

    /// Fails with the exit status and log tail if the agent has exited.
    pub fn check_running(&self) -> Result<()> {
        self.lab.check_running(self.node)
    }

    pub fn config_path(&self) -> PathBuf {
        self.lab.config_path(self.node)
    }

    /// The config the lab writes for this node's agent.
    pub fn config_yaml(&self) -> String {
        self.lab.config_yaml(self.node)
    }

    pub fn log_path(&self) -> PathBuf {
        self.lab.log_path(self.node, NodeKind::Agent)
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        self.lab.agent_log(self.node)
    }

    /// The length of the agent log, a mark for [`AgentHandle::wait_log`].
    pub fn log_len(&self) -> usize {
        self.lab.agent_log_len(self.node)
    }

    /// Waits until a line of the log written after byte `from` satisfies `pred`; returns it.
    pub fn wait_log(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        self.lab.wait_log(self.node, from, what, timeout, pred)
    }

    /// `wiremesh encrypt status --json`.
    pub fn status(&self) -> Result<Value> {
        self.lab.status(self.node)
    }

    /// `wiremesh encrypt status`, as a human reads it.
    pub fn status_text(&self) -> Result<String> {
        self.lab.status_text(self.node)
    }

    /// `wiremesh encrypt status --all-nodes --json`: every node's status as this agent sees it.
    pub fn all_nodes_status(&self) -> Result<Vec<Value>> {
        self.lab.all_nodes_status(self.node)
    }

    /// Polls the status every 100 ms until `pred` holds; fails early if the agent dies.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.lab.wait_status(self.node, what, timeout, pred)
    }

    /// Waits until the status lists exactly `count` peers.
    pub fn wait_peer_count(&self, count: usize, timeout: Duration) -> Result<Value> {
        self.lab.wait_peer_count(self.node, count, timeout)
    }

    /// Waits until the status lists `count` peers with a handshake (which needs traffic: see
    /// [`HostHandle::wait_reachable`]).
    pub fn wait_handshakes(&self, count: usize, timeout: Duration) -> Result<Value> {
        self.lab.wait_handshakes(self.node, count, timeout)
    }

    /// `wiremesh keys rotate`: its stdout (`Rotated: key epoch N, public key K`).
    pub fn rotate_keys(&self, timeout: Duration) -> Result<String> {
        self.lab.rotate_keys(self.node, timeout)
    }

    /// Runs `wiremesh <verb> -f <manifest>` against the agent; its whole output, whatever the
    /// exit status.
    pub fn objects_cmd(&self, verb: &str, manifest: &str) -> Result<Output> {
        self.lab.objects_cmd(self.node, verb, manifest)
    }

    /// `wiremesh apply -f`; fails with its stderr unless it succeeds.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        self.lab.apply(self.node, manifest)
    }

    /// `wiremesh delete -f`.
    pub fn delete(&self, manifest: &str) -> Result<String> {
        self.lab.delete(self.node, manifest)
    }

    /// `wiremesh policy trace` (online) with `args`; stdout.
    pub fn trace(&self, args: &[&str]) -> Result<String> {
        self.lab.trace(self.node, args)
    }

    /// Starts another agent with config `yaml` in this node's namespace, with its own run
    /// directories ([`Lab::extra_agent_dir`]); the caller owns the process.
    pub fn spawn_with(&self, label: &str, yaml: &str) -> Result<BgProcess> {
        self.lab.spawn_agent_with(self.node, label, yaml)
    }

    /// [`AgentHandle::spawn_with`] to completion or `timeout`: for an agent expected to refuse
    /// to start. Returns its exit status and everything it wrote.
    pub fn run_with(
        &self,
        label: &str,
        yaml: &str,
        timeout: Duration,
    ) -> Result<(ExitStatus, String)> {
        self.lab.run_agent_with(self.node, label, yaml, timeout)
    }
}

/// The data-path process of one node.
#[derive(Debug, Clone, Copy)]
pub struct DatapathHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) node: u8,
}

/// Strict mode's nftables guard of one node.
#[derive(Debug, Clone, Copy)]
pub struct GuardHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) node: u8,
}

/// A node or pod as a traffic endpoint.
#[derive(Debug, Clone, Copy)]
pub struct HostHandle<'a> {
    lab: &'a Lab,
    host: Host,
}

impl HostHandle<'_> {
    pub fn host(&self) -> Host {
        self.host
    }

    pub fn ns(&self) -> String {
        self.lab.ns(self.host)
    }

    /// A command in this host's namespace (for a node, with its run directories mounted).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        self.lab.host_cmd(self.host, program)
    }

    /// Runs `ip -n <ns> <args>` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.lab.ip(self.host, args)
    }

    /// Runs `ping` here and returns its summary (lost packets are not an error).
    pub fn ping(&self, ping: &Ping) -> Result<PingResult> {
        self.lab.ping_from(self.host, ping)
    }

    /// Starts `ping` here in the background; parse its log with [`PingResult::parse`] once it
    /// has exited.
    pub fn spawn_ping(&self, ping: &Ping) -> Result<BgProcess> {
        self.lab.spawn_ping(self.host, ping)
    }

    /// Pings `to` once per attempt until a reply comes back; returns how long it took.
    pub fn wait_reachable(&self, to: impl Into<IpAddr>, timeout: Duration) -> Result<Duration> {
        self.lab.wait_reachable(self.host, to, timeout)
    }

    /// Sends `data` over one TCP connection to a listener on `to`; returns what it received.
    pub fn tcp_send(&self, to: Host, data: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.lab.tcp_send(self.host, to, data, timeout)
    }

    /// Sends `len` bytes of [`crate::test_data`] to `to` and checks they arrived intact.
    pub fn tcp_transfer(&self, to: Host, len: usize, timeout: Duration) -> Result<()> {
        self.lab.tcp_transfer(self.host, to, len, timeout)
    }

    /// Whether a connection to `to:port` completes an echo exchange within `timeout`.
    pub fn probe(&self, to: Ipv4Addr, port: u16, proto: Proto, timeout: Duration) -> bool {
        self.lab.probe(self.host, to, port, proto, timeout)
    }

    /// Runs `f` on a new thread inside this host's network namespace.
    pub fn spawn_in<T, F>(&self, f: F) -> JoinHandle<std::io::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> std::io::Result<T> + Send + 'static,
    {
        self.lab.spawn_in(self.host, f)
    }

    /// Starts a one-shot `iperf3 -s -1` here and waits until it listens; returns it and its port.
    pub fn iperf_server(&self) -> Result<(BgProcess, u16)> {
        self.lab.spawn_iperf_server(self.host)
    }

    /// Starts an iperf3 client here against `to:port`.
    pub fn iperf_client(
        &self,
        to: Ipv4Addr,
        port: u16,
        duration: Duration,
        bitrate: &str,
    ) -> Result<IperfClient> {
        self.lab
            .spawn_iperf_client(self.host, to, port, duration, bitrate)
    }

    /// Starts tcpdump on `iface` here (e.g. a pod's `eth0`, to see what reaches it).
    pub fn capture(&self, name: &str, iface: &str) -> Result<Capture> {
        self.lab.start_capture_on(name, &self.ns(), iface)
    }
}

/// The dir store the nodes share: one JSON record per node.
#[derive(Debug, Clone, Copy)]
pub struct StoreHandle<'a> {
    pub(crate) lab: &'a Lab,
}

/// The etcd server an etcd lab runs on the switch.
#[derive(Debug, Clone, Copy)]
pub struct EtcdHandle<'a> {
    pub(crate) lab: &'a Lab,
}

/// The underlay switch namespace.
#[derive(Debug, Clone, Copy)]
pub struct SwitchHandle<'a> {
    pub(crate) lab: &'a Lab,
}

impl SwitchHandle<'_> {
    pub fn ns(&self) -> String {
        self.lab.switch_ns()
    }
}
