//! The lab's etcd: one server per cluster in the switch namespace on [`SWITCH_IP`], its data in
//! `<labdir>/etcd` (`<labdir>/etcd-c<c>` in a multi-cluster lab, on client port
//! [`crate::etcd_client_port`]), so a stop and start keeps every key, as an outage would; and
//! `etcdctl` run next to it. Node records live at `<prefix>/v1/<cluster>/nodes/<name>`.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::agent::CLUSTER_NAME;
use crate::clusters::{cluster_etcd_endpoint, etcd_key_of, etcd_peer_port};
use crate::error::{LabError, Result};
use crate::exec::{output, run, BgProcess};
use crate::handles::EtcdHandle;
use crate::options::SWITCH_IP;

const HEALTHY_TIMEOUT: Duration = Duration::from_secs(20);
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);

/// `<prefix>/v1/<cluster>/nodes/<name>`: where node `name`'s record lives in etcd (a
/// one-cluster lab; [`EtcdHandle::node_key`] for any cluster).
pub fn etcd_node_key(name: &str) -> String {
    etcd_key_of(CLUSTER_NAME, "nodes", name)
}

/// `<prefix>/v1/<cluster>/owners/<name>`: which agent holds the name `name`.
pub fn etcd_owner_key(name: &str) -> String {
    etcd_key_of(CLUSTER_NAME, "owners", name)
}

impl EtcdHandle<'_> {
    /// The cluster this etcd serves.
    pub fn cluster(&self) -> u8 {
        self.cluster
    }

    /// etcd's data directory: `<labdir>/etcd` (`<labdir>/etcd-c<c>`).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.lab.layout().etcd_data_dir(self.cluster)
    }

    /// `http://198.18.0.254:<port>`, this cluster's client URL.
    pub fn endpoint(&self) -> String {
        cluster_etcd_endpoint(self.cluster)
    }

    /// Where node `name`'s record of this cluster lives.
    pub fn node_key(&self, name: &str) -> String {
        etcd_key_of(&self.lab.cluster_name(self.cluster), "nodes", name)
    }

    /// Which agent of this cluster holds the name `name`.
    pub fn owner_key(&self, name: &str) -> String {
        etcd_key_of(&self.lab.cluster_name(self.cluster), "owners", name)
    }

    /// Starts etcd (on the data directory of any previous run) and waits until it is healthy.
    pub fn start(&self) -> Result<()> {
        if !self.lab.options().uses_etcd() {
            return Err(LabError::Check(
                "this lab was built for the dir store; build it with LabOptions::etcd".into(),
            ));
        }
        let mut etcds = self.etcd_guard();
        let slot = self.slot(&mut etcds)?;
        if let Some(p) = slot.as_mut() {
            if p.exited().is_none() {
                return Err(LabError::Check(format!(
                    "cluster {}'s etcd (pid {}) is already running",
                    self.cluster,
                    p.pid()
                )));
            }
        }
        let mut proc = self.spawn()?;
        let client = self.endpoint();
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        loop {
            if let Some(status) = proc.exited() {
                return Err(LabError::Check(format!(
                    "cluster {}'s etcd exited ({status}); log:\n{}",
                    self.cluster,
                    proc.log()
                )));
            }
            let last = match self.ctl(&["endpoint", "health"]) {
                Ok(_) => break,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("etcd at {client} to be healthy"),
                    after: HEALTHY_TIMEOUT,
                    last: format!("{last}\netcd log:\n{}", proc.log()),
                });
            }
            std::thread::sleep(POLL);
        }
        *slot = Some(proc);
        Ok(())
    }

    /// `etcd` in the switch namespace on this cluster's ports and data directory.
    fn spawn(&self) -> Result<BgProcess> {
        let client = self.endpoint();
        let peer = format!("http://{SWITCH_IP}:{}", etcd_peer_port(self.cluster));
        let name = self.lab.cluster_name(self.cluster);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.switch_ns(), "etcd", "--name"])
            .arg(&name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--log-level", "warn"]);
        let log = self.lab.layout().etcd_log(self.cluster);
        BgProcess::spawn(format!("etcd of cluster {name}"), &mut cmd, &log)
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 5 s), keeping its data. A no-op if it is not
    /// running.
    pub fn stop(&self) -> Result<()> {
        let taken = {
            let mut etcds = self.etcd_guard();
            self.slot(&mut etcds)?.take()
        };
        let Some(mut proc) = taken else {
            return Ok(());
        };
        match proc.stop(Signal::SIGTERM, STOP_GRACE) {
            Some(_) => Ok(()),
            None => Err(LabError::Check(format!(
                "cluster {}'s etcd (pid {}) did not report its exit",
                self.cluster,
                proc.pid()
            ))),
        }
    }

    /// Whether this cluster's etcd process is running.
    pub fn running(&self) -> bool {
        let mut etcds = self.etcd_guard();
        self.slot(&mut etcds)
            .ok()
            .and_then(Option::as_mut)
            .is_some_and(|p| p.exited().is_none())
    }

    /// The PID of this cluster's etcd, while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut etcds = self.etcd_guard();
        let p = self.slot(&mut etcds).ok()?.as_mut()?;
        p.exited().is_none().then(|| p.pid())
    }

    /// `etcdctl --endpoints http://198.18.0.254:<port> <args>` (API v3) in the switch
    /// namespace; its stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        run(&mut self.etcdctl_cmd(args), ETCDCTL_TIMEOUT)
    }

    fn etcdctl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.switch_ns(), "etcdctl"])
            .arg(format!("--endpoints={}", self.endpoint()))
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .args(args)
            .env("ETCDCTL_API", "3");
        cmd
    }

    /// The value at `key`, if present.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut cmd = self.etcdctl_cmd(&["get", key, "-w", "json"]);
        let out = output(&mut cmd, None, ETCDCTL_TIMEOUT)?;
        crate::exec::check(&cmd, &out)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let parse_err = || LabError::Parse {
            what: format!("etcdctl get {key}"),
            input: text.to_string(),
        };
        let doc: Value = serde_json::from_str(&text).map_err(|_| parse_err())?;
        let Some(kv) = doc
            .get("kvs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        else {
            return Ok(None);
        };
        let b64 = kv.get("value").and_then(Value::as_str).unwrap_or_default();
        base64_decode(b64).map(Some).ok_or_else(parse_err)
    }

    /// Puts `value` at `key` (no lease: it stays until deleted).
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut cmd = self.etcdctl_cmd(&["put", key]);
        let out = output(&mut cmd, Some(value), ETCDCTL_TIMEOUT)?;
        crate::exec::check(&cmd, &out)
    }

    /// Deletes `key`; whether it existed.
    pub fn del(&self, key: &str) -> Result<bool> {
        Ok(self.ctl(&["del", key])?.trim() != "0")
    }

    fn etcd_guard(&self) -> std::sync::MutexGuard<'_, Vec<Option<BgProcess>>> {
        // Plain data: a poisoned lock is still consistent, and teardown must work while panicking.
        self.lab
            .etcd
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This cluster's entry in the lab's etcd table.
    fn slot<'g>(&self, etcds: &'g mut [Option<BgProcess>]) -> Result<&'g mut Option<BgProcess>> {
        let clusters = etcds.len();
        etcds
            .get_mut(usize::from(self.cluster).wrapping_sub(1))
            .ok_or_else(|| {
                LabError::Check(format!(
                    "no cluster {} in this lab (clusters 1..={clusters})",
                    self.cluster
                ))
            })
    }
}

/// Standard base64 (etcdctl's JSON output encodes keys and values so).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        assert_eq!(etcd_node_key("node-2"), "/wiremesh/v1/lab/nodes/node-2");
        assert_eq!(etcd_owner_key("node-2"), "/wiremesh/v1/lab/owners/node-2");
    }

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("e30=").as_deref(), Some(&b"{}"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert!(base64_decode("a*").is_none());
    }
}
