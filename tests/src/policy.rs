//! Policy in the lab: manifests through `wiremesh apply/delete -f` on a node, Pod objects for
//! the lab's pods (so agents know their endpoints), echo servers in pods and connection probes
//! from pods, all in this process (threads that enter a namespace with `setns`), so that a
//! reachability matrix of hundreds of probes takes seconds. Every server stops when its
//! [`Servers`] is dropped and every probe is bounded by its timeout.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::addr::{node_name, pod_ip, Host};
use crate::agent::agent_binary;
use crate::error::{LabError, Result};
use crate::exec::output;
use crate::handles::{AgentHandle, HostHandle};
use crate::lab::{Lab, AGENT_RUN_DIR};

/// How long `wiremesh apply` may take.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);
/// Server threads look at their stop flag this often.
const SERVER_POLL: Duration = Duration::from_millis(50);
/// Most probes in flight at once.
const PROBE_PARALLELISM: usize = 48;

/// A transport protocol of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// A pod of the lab as Kubernetes sees it: `namespace/name` with labels, on a lab pod slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub host: Host,
    /// Named container ports: name → (protocol, port).
    pub ports: Vec<(String, Proto, u16)>,
    /// `spec.serviceAccountName` (Kubernetes' default `default` when `None`).
    pub service_account: Option<String>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str, host: Host) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            labels: BTreeMap::from([("pod".to_string(), name.to_string())]),
            host,
            ports: Vec::new(),
            service_account: None,
        }
    }

    pub fn service_account(mut self, name: &str) -> Self {
        self.service_account = Some(name.into());
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn port(mut self, name: &str, proto: Proto, port: u16) -> Self {
        self.ports.push((name.into(), proto, port));
        self
    }

    pub fn qualified(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn ip(&self) -> Ipv4Addr {
        match self.host {
            Host::Pod(n, k) => pod_ip(n, k),
            Host::Node(n) => crate::addr::node_ip(n),
        }
    }

    /// Its `kind: Pod` manifest: `spec.nodeName` and `status.podIPs` tell the agents where the
    /// endpoint is.
    pub fn manifest(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: \"{v}\""))
            .collect();
        let ports: Vec<String> = self
            .ports
            .iter()
            .map(|(n, p, port)| format!("{{name: {n}, protocol: {p}, containerPort: {port}}}"))
            .collect();
        let account = self
            .service_account
            .as_ref()
            .map(|sa| format!("serviceAccountName: {sa}, "))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {}, labels: {{{}}}}}\n\
             spec: {{{account}nodeName: {}, containers: [{{name: c, image: i, ports: [{}]}}]}}\n\
             status: {{podIPs: [{{ip: {}}}]}}\n",
            self.name,
            self.namespace,
            labels.join(", "),
            node_name(self.host.node()),
            ports.join(", "),
            self.ip()
        )
    }
}

/// A `kind: Namespace` manifest with labels.
pub fn namespace_manifest(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}: \"{v}\""))
        .collect();
    labels.push(format!("ns: \"{name}\""));
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{}}}}}\n",
        labels.join(", ")
    )
}

/// A Namespace and its pods, as one multi-document manifest.
pub fn namespace_with_pods(namespace: &str, pods: &[PodSpec]) -> String {
    let mut docs = vec![namespace_manifest(namespace, &[])];
    docs.extend(pods.iter().map(PodSpec::manifest));
    docs.join("---\n")
}

impl Lab {
    fn manifest_file(&self, text: &str) -> Result<PathBuf> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = self.dir().join("manifests");
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        let path = dir.join(format!("{}.yaml", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, text).map_err(|e| LabError::io(&path, e))?;
        Ok(path)
    }

    fn objects_ok(&self, node: u8, verb: &str, manifest: &str) -> Result<String> {
        let out = self.node(node).agent().objects_cmd(verb, manifest)?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("wiremesh {verb} on node-{node}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Echo servers on `tcp` and `udp` ports in each of `hosts`, until the result is dropped.
    pub fn serve(&self, hosts: &[Host], tcp: &[u16], udp: &[u16]) -> Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &host in hosts {
            let ns = self.ns(host);
            for &port in tcp {
                let (ns, stop) = (ns.clone(), stop.clone());
                threads.push(spawn_ready(move || {
                    enter(&ns)?;
                    let l = TcpListener::bind(("0.0.0.0", port))?;
                    l.set_nonblocking(true)?;
                    Ok(move || tcp_echo(&l, &stop))
                })?);
            }
            for &port in udp {
                let (ns, stop) = (ns.clone(), stop.clone());
                threads.push(spawn_ready(move || {
                    enter(&ns)?;
                    let s = UdpSocket::bind(("0.0.0.0", port))?;
                    s.set_read_timeout(Some(SERVER_POLL))?;
                    Ok(move || udp_echo(&s, &stop))
                })?);
            }
        }
        Ok(Servers { stop, threads })
    }

    /// Probes until the results equal `want` or `within` passes (policy takes a moment to reach
    /// every node's maps); the last results.
    pub fn probe_until(
        &self,
        probes: &[(Host, Ipv4Addr, u16, Proto)],
        want: &[bool],
        timeout: Duration,
        within: Duration,
    ) -> Vec<bool> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let got = self.probe_all(probes, timeout);
            if got == want || std::time::Instant::now() > deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(300));
        }
    }

    /// [`crate::HostHandle::probe`] for many probes at once, results in order.
    pub fn probe_all(
        &self,
        probes: &[(Host, Ipv4Addr, u16, Proto)],
        timeout: Duration,
    ) -> Vec<bool> {
        let mut results = vec![false; probes.len()];
        for (chunk_no, chunk) in probes.chunks(PROBE_PARALLELISM).enumerate() {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&(from, to, port, proto)| {
                    let ns = self.ns(from);
                    thread::spawn(move || {
                        enter(&ns).is_ok()
                            && probe_here(SocketAddr::from((to, port)), proto, timeout)
                    })
                })
                .collect();
            for (i, h) in handles.into_iter().enumerate() {
                results[chunk_no * PROBE_PARALLELISM + i] = h.join().unwrap_or(false);
            }
        }
        results
    }
}

/// Echo servers started by [`Lab::serve`]; dropping stops and joins them.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs `setup` on a new thread, then the loop it returns; fails if the setup fails.
fn spawn_ready<F, L>(setup: F) -> Result<JoinHandle<()>>
where
    F: FnOnce() -> std::io::Result<L> + Send + 'static,
    L: FnOnce(),
{
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || match setup() {
        Ok(run) => {
            let _ = tx.send(Ok(()));
            run();
        }
        Err(e) => {
            let _ = tx.send(Err(e));
        }
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(LabError::Check(format!("starting an echo server: {e}"))),
        Err(_) => Err(LabError::Check(
            "an echo server did not start within 5 s".into(),
        )),
    }
}

fn enter(ns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

fn tcp_echo(l: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(_) => thread::sleep(SERVER_POLL / 5),
        }
    }
}

fn udp_echo(s: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
}

fn probe_here(to: SocketAddr, proto: Proto, timeout: Duration) -> bool {
    let msg = b"wiremesh-probe";
    let mut buf = [0u8; 32];
    match proto {
        Proto::Tcp => {
            let Ok(mut s) = TcpStream::connect_timeout(&to, timeout) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(timeout));
            s.write_all(msg).is_ok() && s.read(&mut buf).is_ok_and(|n| &buf[..n] == msg)
        }
        Proto::Udp => {
            let Ok(s) = UdpSocket::bind(("0.0.0.0", 0)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(timeout / 2));
            // Two tries: a first datagram may be spent resolving the neighbour.
            (0..2).any(|_| {
                s.send_to(msg, to).is_ok()
                    && s.recv_from(&mut buf).is_ok_and(|(n, _)| &buf[..n] == msg)
            })
        }
    }
}

/// Expected and observed reachability over named pods, printed as two tables.
pub fn render_matrix(
    names: &[String],
    expected: &dyn Fn(usize, usize) -> bool,
    observed: &dyn Fn(usize, usize) -> bool,
) -> String {
    let mut out = String::new();
    for (title, f) in [("expected", expected), ("observed", observed)] {
        let _ = writeln!(
            out,
            "{title} (row = from, column = to; . = allowed, X = denied):"
        );
        let _ = write!(out, "{:>8}", "");
        for n in names {
            let _ = write!(out, " {n:>5}");
        }
        out.push('\n');
        for (i, from) in names.iter().enumerate() {
            let _ = write!(out, "{from:>8}");
            for j in 0..names.len() {
                let c = if f(i, j) { "." } else { "X" };
                let mark = if expected(i, j) != observed(i, j) {
                    "*"
                } else {
                    " "
                };
                let _ = write!(out, " {c:>4}{mark}");
            }
            out.push('\n');
        }
    }
    out
}

impl AgentHandle<'_> {
    /// Runs `wiremesh <verb> -f <manifest>` against the node's agent; its whole output,
    /// whatever the exit status.
    pub fn objects_cmd(&self, verb: &str, manifest: &str) -> Result<Output> {
        let node = self.node;
        let path = self.lab.manifest_file(manifest)?;
        let mut cmd = self.lab.node_cmd(node, agent_binary()?);
        cmd.args([verb, "-f"])
            .arg(&path)
            .args(["--run-dir", AGENT_RUN_DIR]);
        output(&mut cmd, None, APPLY_TIMEOUT)
    }

    /// `wiremesh apply -f` through the node; fails with its stderr unless it succeeds.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        let node = self.node;
        self.lab.objects_ok(node, "apply", manifest)
    }

    /// `wiremesh delete -f` through the node.
    pub fn delete(&self, manifest: &str) -> Result<String> {
        let node = self.node;
        self.lab.objects_ok(node, "delete", manifest)
    }

    /// `wiremesh policy trace` (online) on the node with `args`; stdout.
    pub fn trace(&self, args: &[&str]) -> Result<String> {
        let node = self.node;
        let mut cmd = self.lab.node_cmd(node, agent_binary()?);
        cmd.args(["policy", "trace", "--run-dir", AGENT_RUN_DIR])
            .args(args);
        let out = output(&mut cmd, None, APPLY_TIMEOUT)?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("wiremesh policy trace on node-{node}"),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl HostHandle<'_> {
    /// Whether a connection from here to `to:port` completes an echo exchange within
    /// `timeout`.
    pub fn probe(&self, to: Ipv4Addr, port: u16, proto: Proto, timeout: Duration) -> bool {
        let from = self.host;
        let ns = self.lab.ns(from);
        thread::spawn(move || {
            enter(&ns).is_ok() && probe_here(SocketAddr::from((to, port)), proto, timeout)
        })
        .join()
        .unwrap_or(false)
    }

    /// Runs `f` on a new thread inside `host`'s network namespace.
    pub fn spawn_in<T, F>(&self, f: F) -> JoinHandle<std::io::Result<T>>
    where
        T: Send + 'static,
        F: FnOnce() -> std::io::Result<T> + Send + 'static,
    {
        let host = self.host;
        let ns = self.lab.ns(host);
        thread::spawn(move || {
            enter(&ns)?;
            f()
        })
    }
}
