//! Lab helpers for strict mode: running `wiremesh guard` in a node, reading the guard table's
//! drop counters straight from the node's kernel (so they can be read with no agent running), and
//! making the switch an underlay attacker that sends packets with a remote pod's source address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::addr::{node_ip, node_ip6, pod_cidr, pod_cidr6, Host};
use crate::agent::agent_binary;
use crate::error::{LabError, Result};
use crate::exec::{output, run};
use crate::handles::{GuardHandle, SwitchHandle};

const NFT_TIMEOUT: Duration = Duration::from_secs(10);
/// The guard table the agent and `wiremesh guard` install.
pub const GUARD_TABLE: &str = "wiremesh";

impl GuardHandle<'_> {
    /// Writes the node's agent config and runs `wiremesh guard --config` in its namespace (no
    /// agent, no store): what the boot-time unit does. Returns its stdout.
    pub fn run(&self) -> Result<String> {
        let node = self.node;
        let bin = agent_binary()?;
        let config = self.lab.node(node).agent().config_path();
        std::fs::write(&config, self.lab.node(node).agent().config_yaml())
            .map_err(|e| LabError::io(&config, e))?;
        let mut cmd = self.lab.node_cmd(node, &bin);
        cmd.arg("guard").arg("--config").arg(&config);
        run(&mut cmd, NFT_TIMEOUT)
    }

    /// The guard table's named counters (`egress_ipv4`, ... → packets) in the node's kernel,
    /// or `None` when the node has no such table.
    pub fn counters(&self) -> Result<Option<BTreeMap<String, u64>>> {
        let node = self.node;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.node_ns(node)]).args([
            "nft",
            "-j",
            "list",
            "counters",
            "table",
            "inet",
            GUARD_TABLE,
        ]);
        let out = output(&mut cmd, None, NFT_TIMEOUT)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("No such file") {
                return Ok(None);
            }
            return Err(LabError::Command {
                cmd: crate::exec::describe(&cmd),
                status: out.status.to_string(),
                stderr: stderr.into_owned(),
            });
        }
        let doc: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| LabError::Check(format!("nft -j output is not JSON: {e}")))?;
        let counters = doc["nftables"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|o| o.get("counter"))
            .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["packets"].as_u64()?)))
            .collect();
        Ok(Some(counters))
    }

    /// One guard counter (0 when absent); an error when the node has no guard table at all.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let node = self.node;
        let counters = self.counters()?.ok_or_else(|| LabError::Node {
            node,
            what: format!("no nftables table inet {GUARD_TABLE}"),
        })?;
        Ok(counters.get(name).copied().unwrap_or(0))
    }

    /// `nft delete table inet wiremesh` in the node (the guard's own control experiments;
    /// a running agent puts it back within seconds).
    pub fn delete(&self) -> Result<()> {
        let node = self.node;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.node_ns(node)]).args([
            "nft",
            "delete",
            "table",
            "inet",
            GUARD_TABLE,
        ]);
        run(&mut cmd, NFT_TIMEOUT).map(drop)
    }
}

impl SwitchHandle<'_> {
    /// A command in the switch namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.switch_ns(), program]);
        cmd
    }

    /// Makes the switch impersonate `pod` on the underlay: it takes the pod's addresses (v4, and
    /// v6 in a dual-stack lab) and routes `victim`'s pod CIDRs to `victim`'s underlay address, so
    /// that what it sends from those addresses reaches `victim` from the underlay, not through the
    /// tunnel. Needs a switch with underlay addresses ([`crate::LabOptions::default_route`]).
    pub fn impersonate(&self, pod: Host, victim: u8) -> Result<()> {
        let ns = self.lab.switch_ns();
        let ip = |args: &[&str]| run(Command::new("ip").args(["-n", &ns]).args(args), NFT_TIMEOUT);
        // The victim's link address, fixed: otherwise the switch would resolve it with neighbour
        // solicitations sourced from the impersonated address, which the victim's guard drops
        // before any spoofed packet is even sent.
        let link = self
            .lab
            .ip(Host::Node(victim), &["-o", "link", "show", "eth0"])?;
        let mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .ok_or_else(|| LabError::Check(format!("no MAC in {link:?}")))?
            .to_string();
        let mut victim_ips = vec![node_ip(victim).to_string()];
        if self.lab.options().dual_stack {
            victim_ips.push(node_ip6(victim).to_string());
        }
        for addr in &victim_ips {
            ip(&[
                "neigh",
                "replace",
                addr,
                "lladdr",
                &mac,
                "dev",
                "br0",
                "nud",
                "permanent",
            ])?;
        }
        ip(&["addr", "add", &format!("{}/32", pod.ip()), "dev", "br0"])?;
        let via = node_ip(victim).to_string();
        ip(&["route", "add", &pod_cidr(victim), "via", &via, "dev", "br0"])?;
        if self.lab.options().dual_stack {
            let addr6 = format!("{}/128", pod.ip6());
            ip(&["addr", "add", &addr6, "dev", "br0", "nodad"])?;
            let via6 = node_ip6(victim).to_string();
            ip(&[
                "-6",
                "route",
                "add",
                &pod_cidr6(victim),
                "via",
                &via6,
                "dev",
                "br0",
            ])?;
        }
        Ok(())
    }

    /// From the switch, `count` pings with payload `pattern` to `to`, sent from here (an
    /// address given to the switch by [`SwitchHandle::impersonate`]). Replies are not expected
    /// (they go to the real owner of `from`); returns ping's output.
    pub fn ping(&self, from: IpAddr, to: IpAddr, count: u32, pattern: &[u8]) -> Result<String> {
        let hex: String = pattern.iter().map(|b| format!("{b:02x}")).collect();
        let mut cmd = self.cmd("ping");
        cmd.args([
            "-n",
            "-c",
            &count.to_string(),
            "-i",
            "0.1",
            "-W",
            "1",
            "-p",
            &hex,
        ])
        .args(["-I", &from.to_string(), &to.to_string()]);
        let out = output(
            &mut cmd,
            None,
            Duration::from_secs(10) + Duration::from_millis(100) * count,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
