//! A node that runs stock wireguard-go configured by hand with `wg`, instead of the agent: the
//! interoperability peer. It takes the other nodes' keys from their store records once, at start,
//! and publishes its own record so the agents add it.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::addr::{endpoint, node_name, pod_cidr, WG_IFACE, WG_MTU, WG_PORT};
use crate::error::{LabError, Result};
use crate::exec::{output, run, BgProcess};
use crate::handles::NodeHandle;
use crate::lab::{Lab, NodeKind, WG_RUN_DIR};
use crate::store::node_record;

const WG_TIMEOUT: Duration = Duration::from_secs(10);

/// A WireGuard key pair made by `wg genkey` / `wg pubkey`.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// Where the private key is stored (mode 0600); the key itself is never held in memory longer
    /// than it takes to write it.
    pub private_key_file: PathBuf,
    pub public_key: String,
}

impl Lab {
    fn wait_uapi_socket(&self, node: u8, timeout: Duration) -> Result<()> {
        let socket = self
            .node_dir(node)
            .join("wireguard")
            .join(format!("{WG_IFACE}.sock"));
        let deadline = Instant::now() + timeout;
        while !socket.exists() {
            self.node(node).agent().check_running()?;
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!(
                        "wireguard-go's UAPI socket {WG_RUN_DIR}/{WG_IFACE}.sock on node-{node}"
                    ),
                    after: timeout,
                    last: format!("{} absent", socket.display()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl NodeHandle<'_> {
    /// The private key file of the node (`<labdir>/n<i>/state/wiremesh_wg0.key`).
    pub fn key_path(&self) -> PathBuf {
        self.dir().join("state").join(format!("{WG_IFACE}.key"))
    }

    /// Generates the node's key pair with `wg` and stores the private key like the agent does.
    pub fn generate_key(&self) -> Result<KeyPair> {
        let private = run(Command::new("wg").arg("genkey"), WG_TIMEOUT)?;
        let path = self.key_path();
        std::fs::write(&path, &private).map_err(|e| LabError::io(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| LabError::io(&path, e))?;
        let mut cmd = Command::new("wg");
        cmd.arg("pubkey");
        let out = output(&mut cmd, Some(private.as_bytes()), WG_TIMEOUT)?;
        crate::exec::check(&cmd, &out)?;
        let public_key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(KeyPair {
            private_key_file: path,
            public_key,
        })
    }

    /// Runs wireguard-go on the node as `wiremesh_wg0`, peers it with every other node whose
    /// record is in the store (waiting up to `timeout` for each), routes their pod CIDRs into it
    /// and publishes the node's own record. Returns the node's public key.
    pub fn start_wireguard_go(&self, timeout: Duration) -> Result<String> {
        let node = self.node;
        let keys = self.generate_key()?;
        let log = self.log_path(NodeKind::WireguardGo);
        let mut cmd = self.lab.node_cmd(node, "wireguard-go");
        cmd.args(["-f", WG_IFACE])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
        self.lab.register(node, NodeKind::WireguardGo, |name| {
            BgProcess::spawn(name, &mut cmd, &log)
        })?;
        self.lab.wait_uapi_socket(node, timeout)?;

        let mut peers = Vec::new();
        for other in self.lab.node_ids().filter(|&o| o != node) {
            let record = self.lab.store().wait_record(&node_name(other), timeout)?;
            let key = record
                .get("publicKey")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    LabError::Check(format!(
                        "record of {} has no publicKey: {record}",
                        node_name(other)
                    ))
                })?;
            peers.push((other, key.to_owned()));
        }
        let mut wg = self.lab.node_cmd(node, "wg");
        wg.args(["set", WG_IFACE, "private-key"])
            .arg(&keys.private_key_file);
        wg.args(["listen-port", &WG_PORT.to_string()]);
        for (other, key) in &peers {
            wg.args([
                "peer",
                key,
                "endpoint",
                &endpoint(*other),
                "allowed-ips",
                &pod_cidr(*other),
            ]);
        }
        run(&mut wg, WG_TIMEOUT)?;
        let host = crate::addr::Host::Node(node);
        self.lab.ip(
            host,
            &["link", "set", WG_IFACE, "mtu", &WG_MTU.to_string(), "up"],
        )?;
        for (other, _) in &peers {
            self.lab
                .ip(host, &["route", "add", &pod_cidr(*other), "dev", WG_IFACE])?;
        }
        let public_key = keymgr::PublicKey::from_base64(&keys.public_key)
            .map_err(|e| LabError::Check(format!("`wg pubkey` gave {:?}: {e}", keys.public_key)))?;
        self.lab
            .store()
            .write_record(&node_record(node, public_key))?;
        Ok(keys.public_key)
    }
}
