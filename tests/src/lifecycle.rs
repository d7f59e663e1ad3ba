//! Policy enforcement across what a node lives through: a simulated reboot (everything the
//! kernel loses: the agent, the data path, the tc filters, the pinned maps), and a look at the
//! tc filters on a node's interfaces.
//!
//! A reboot here keeps the pods' veths and the node's state directory, as a real reboot keeps the
//! disk and a container runtime brings the pods back (possibly before the agent).

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::addr::node_name;
use crate::error::{LabError, Result};
use crate::exec::output;
use crate::handles::NodeHandle;
use crate::lab::IP_TIMEOUT;

/// How long a killed data path may take to be gone.
const DATAPATH_GONE: Duration = Duration::from_secs(5);

/// Which of a node's tc hooks carry the agent's policy programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyHooks {
    /// tc ingress (packets the interface receives).
    pub ingress: bool,
    /// tc egress (packets it sends).
    pub egress: bool,
}

impl PolicyHooks {
    pub fn both(&self) -> bool {
        self.ingress && self.egress
    }

    pub fn none(&self) -> bool {
        !self.ingress && !self.egress
    }
}

impl NodeHandle<'_> {
    /// The node's state directory (`n<i>/state`: the key, `peers.json`, `policy.json`).
    pub fn state_dir(&self) -> std::path::PathBuf {
        let node = self.node;
        self.lab.node_dir(node).join("state")
    }

    /// What the node loses in a reboot: its agent (SIGKILL) and data path (SIGKILL, its TUN
    /// device goes with it), the tc filters on every interface (clsact qdiscs removed) and its
    /// pinned policy maps (bpffs does not persist). Its state directory stays, as a disk does.
    pub fn simulate_reboot(&self) -> Result<()> {
        let node = self.node;
        if self.agent().pid().is_some() {
            self.agent().kill()?;
        }
        if self.datapath().pid().is_some() {
            self.datapath().stop(Signal::SIGKILL, DATAPATH_GONE)?;
        }
        let ns = self.lab.node_ns(node);
        for ifname in self.links()? {
            let out = output(
                Command::new("ip").args([
                    "netns", "exec", &ns, "tc", "qdisc", "del", "dev", &ifname, "clsact",
                ]),
                None,
                IP_TIMEOUT,
            )?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            // Interfaces without the qdisc say so; anything else is a real failure.
            if !out.status.success()
                && !stderr.contains("Cannot find specified qdisc")
                && !stderr.contains("Invalid handle")
            {
                return Err(LabError::Command {
                    cmd: format!("tc qdisc del dev {ifname} clsact in {ns}"),
                    status: out.status.to_string(),
                    stderr: stderr.into_owned(),
                });
            }
        }
        let pins = self.lab.bpffs_dir().join(node_name(node));
        if pins.exists() {
            std::fs::remove_dir_all(&pins).map_err(|e| LabError::io(&pins, e))?;
        }
        Ok(())
    }

    /// The names of the node's interfaces.
    pub fn links(&self) -> Result<Vec<String>> {
        let node = self.node;
        let out = self
            .lab
            .ip_in(&self.lab.node_ns(node), &["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect())
    }

    /// Which hooks of `ifname` on the node carry the policy programs (`wm_*`), as
    /// `tc filter show` lists them.
    pub fn policy_hooks(&self, ifname: &str) -> Result<PolicyHooks> {
        let node = self.node;
        let ns = self.lab.node_ns(node);
        let has = |hook: &str| -> Result<bool> {
            let out = output(
                Command::new("ip").args([
                    "netns", "exec", &ns, "tc", "filter", "show", "dev", ifname, hook,
                ]),
                None,
                IP_TIMEOUT,
            )?;
            Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(" wm_"))
        };
        Ok(PolicyHooks {
            ingress: has("ingress")?,
            egress: has("egress")?,
        })
    }

    /// The ifindex of `ifname` on the node.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        let node = self.node;
        let out = self.lab.ip_in(
            &self.lab.node_ns(node),
            &["-o", "link", "show", "dev", ifname],
        )?;
        out.split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .ok_or(LabError::Parse {
                what: format!("ip link show dev {ifname}"),
                input: out,
            })
    }
}
