//! Building the namespaces, links, addresses and routes of a lab, and the tunnel bypass used by
//! control experiments.

use std::process::Command;

use crate::addr::{
    node_gateway, node_gateway6, node_ip, node_ip6, pod_cidr, pod_ip, pod_ip6, SWITCH_IP6,
    UNDERLAY_PREFIX_LEN, UNDERLAY_PREFIX_LEN6, WG_MTU,
};
use crate::error::Result;
use crate::exec::run;
use crate::handles::NodeHandle;
use crate::lab::{Lab, IP_TIMEOUT};
use crate::options::SWITCH_IP;

/// The routing table and rule priority the tunnel bypass uses (ahead of `main` at 32766).
pub const BYPASS_TABLE: &str = "100";
pub const BYPASS_PREF: &str = "100";

/// The lab is IPv4-only unless dual-stack: with IPv6 off, the underlay carries no router
/// solicitations or MLD reports, so every frame a capture sees was caused by the experiment.
/// `-e` tolerates a host without IPv6.
const NO_IPV6: [&str; 2] = [
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
];
/// Dual-stack: IPv6 on, no router advertisements taken or solicitations sent (nothing on the
/// underlay but what an experiment causes and neighbour discovery).
const IPV6: [&str; 6] = [
    "net.ipv6.conf.all.disable_ipv6=0",
    "net.ipv6.conf.default.disable_ipv6=0",
    "net.ipv6.conf.all.accept_ra=0",
    "net.ipv6.conf.default.accept_ra=0",
    "net.ipv6.conf.all.router_solicitations=0",
    "net.ipv6.conf.default.router_solicitations=0",
];

impl Lab {
    /// The sysctls for IPv6 in every namespace of this lab.
    fn ipv6_sysctls(&self) -> &'static [&'static str] {
        if self.options().dual_stack {
            &IPV6
        } else {
            &NO_IPV6
        }
    }

    pub(crate) fn build_topology(&self) -> Result<()> {
        let sw = self.switch_ns();
        self.add_ns(&sw, self.ipv6_sysctls())?;
        self.ip_in(&sw, &["link", "add", "br0", "type", "bridge"])?;
        if self.options().dual_stack {
            // No multicast snooping: MLD would otherwise decide which port sees neighbour
            // discovery.
            self.ip_in(
                &sw,
                &[
                    "link",
                    "set",
                    "br0",
                    "type",
                    "bridge",
                    "mcast_snooping",
                    "0",
                ],
            )?;
        }
        self.ip_in(&sw, &["link", "set", "br0", "up"])?;
        if self.options().switch_has_address() {
            // The switch itself joins the underlay: the host of the store's server, and the
            // next hop of the nodes' default routes (it forwards nothing).
            let addr = format!("{SWITCH_IP}/{UNDERLAY_PREFIX_LEN}");
            self.ip_in(&sw, &["addr", "add", &addr, "dev", "br0"])?;
            if self.options().dual_stack {
                let addr6 = format!("{SWITCH_IP6}/{UNDERLAY_PREFIX_LEN6}");
                self.ip_in(&sw, &["addr", "add", &addr6, "dev", "br0", "nodad"])?;
            }
        }
        for node in self.node_ids() {
            self.build_node(node)?;
            for pod in self.pod_ids() {
                self.build_pod(node, pod)?;
            }
        }
        Ok(())
    }

    fn build_node(&self, node: u8) -> Result<()> {
        let ns = self.node_ns(node);
        let sw = self.switch_ns();
        // Set before any interface exists, so every later one (pod veths, the agent's TUN)
        // inherits the defaults.
        let mut sysctls = vec![
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ];
        sysctls.extend(self.ipv6_sysctls());
        if self.options().dual_stack {
            sysctls.push("net.ipv6.conf.all.forwarding=1");
        }
        self.add_ns(&ns, &sysctls)?;
        let port = format!("n{node}");
        self.ip_in(
            &ns,
            &[
                "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &sw,
            ],
        )?;
        self.ip_in(&sw, &["link", "set", &port, "master", "br0", "up"])?;
        let addr = format!("{}/{UNDERLAY_PREFIX_LEN}", node_ip(node));
        self.ip_in(&ns, &["addr", "add", &addr, "dev", "eth0"])?;
        if self.options().dual_stack {
            let addr6 = format!("{}/{UNDERLAY_PREFIX_LEN6}", node_ip6(node));
            self.ip_in(&ns, &["addr", "add", &addr6, "dev", "eth0", "nodad"])?;
        }
        self.ip_in(&ns, &["link", "set", "eth0", "up"])?;
        if self.options().default_route {
            let via = SWITCH_IP.to_string();
            self.ip_in(
                &ns,
                &["route", "add", "default", "via", &via, "dev", "eth0"],
            )?;
            if self.options().dual_stack {
                let via6 = SWITCH_IP6.to_string();
                self.ip_in(
                    &ns,
                    &["-6", "route", "add", "default", "via", &via6, "dev", "eth0"],
                )?;
            }
        }
        Ok(())
    }

    /// A Calico-style pod: a /32 address, a link-scoped route to the node's gateway address and a
    /// default route through it; the node routes the pod's /32 to the veth.
    fn build_pod(&self, node: u8, pod: u8) -> Result<()> {
        self.add_ns(&self.pod_ns(node, pod), self.ipv6_sysctls())?;
        self.wire_pod(node, pod)
    }

    /// The pod's veth pair, addresses and routes (its namespace exists).
    fn wire_pod(&self, node: u8, pod: u8) -> Result<()> {
        let node_ns = self.node_ns(node);
        let pod_ns = self.pod_ns(node, pod);
        let link = format!("pod{pod}");
        let mtu = WG_MTU.to_string();
        self.ip_in(
            &node_ns,
            &[
                "link", "add", &link, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", &pod_ns,
            ],
        )?;
        let gw = node_gateway(node).to_string();
        let ip = pod_ip(node, pod).to_string();
        self.ip_in(
            &node_ns,
            &["addr", "add", &format!("{gw}/32"), "dev", &link],
        )?;
        self.ip_in(&node_ns, &["link", "set", &link, "up"])?;
        self.ip_in(
            &pod_ns,
            &["addr", "add", &format!("{ip}/32"), "dev", "eth0"],
        )?;
        self.ip_in(&pod_ns, &["link", "set", "eth0", "up"])?;
        self.ip_in(
            &pod_ns,
            &["route", "add", &gw, "dev", "eth0", "scope", "link"],
        )?;
        self.ip_in(
            &pod_ns,
            &["route", "add", "default", "via", &gw, "dev", "eth0"],
        )?;
        self.ip_in(
            &node_ns,
            &["route", "add", &format!("{ip}/32"), "dev", &link],
        )?;
        if self.options().dual_stack {
            self.build_pod6(node, pod)?;
        }
        Ok(())
    }

    /// The same pod's IPv6 side: a /128, the node's gateway address on the veth, a /128 route
    /// back. `nodad`: usable at once, as a CNI makes them.
    fn build_pod6(&self, node: u8, pod: u8) -> Result<()> {
        let node_ns = self.node_ns(node);
        let pod_ns = self.pod_ns(node, pod);
        let link = format!("pod{pod}");
        let gw = node_gateway6(node).to_string();
        let ip = pod_ip6(node, pod).to_string();
        let gw128 = format!("{gw}/128");
        self.ip_in(&node_ns, &["addr", "add", &gw128, "dev", &link, "nodad"])?;
        let ip128 = format!("{ip}/128");
        self.ip_in(&pod_ns, &["addr", "add", &ip128, "dev", "eth0", "nodad"])?;
        self.ip_in(&pod_ns, &["-6", "route", "add", &gw, "dev", "eth0"])?;
        self.ip_in(
            &pod_ns,
            &["-6", "route", "add", "default", "via", &gw, "dev", "eth0"],
        )?;
        self.ip_in(&node_ns, &["-6", "route", "add", &ip128, "dev", &link])?;
        Ok(())
    }

    fn add_ns(&self, ns: &str, sysctls: &[&str]) -> Result<()> {
        run(Command::new("ip").args(["netns", "add", ns]), IP_TIMEOUT)?;
        let mut sysctl = Command::new("ip");
        sysctl
            .args(["netns", "exec", ns, "sysctl", "-q", "-e", "-w"])
            .args(sysctls);
        run(&mut sysctl, IP_TIMEOUT)?;
        self.ip_in(ns, &["link", "set", "lo", "up"])?;
        Ok(())
    }

    pub(crate) fn ip_in(&self, ns: &str, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", ns]).args(args), IP_TIMEOUT)
    }
}

impl NodeHandle<'_> {
    /// Deletes pod `pod`'s veth on the node and wires the pod again, as a container runtime
    /// restarting the pod would: the same names and addresses on a new device (new ifindex, no
    /// tc filters).
    pub fn recreate_pod_link(&self, pod: u8) -> Result<()> {
        let node = self.node;
        let link = format!("pod{pod}");
        self.lab
            .ip_in(&self.lab.node_ns(node), &["link", "del", &link])?;
        self.lab.wire_pod(node, pod)
    }

    /// Routes this node's traffic for `to`'s pod CIDR straight over the underlay, ahead of anything
    /// the agent installed: the unencrypted control case of a leak test.
    pub fn bypass_tunnel(&self, to: u8) -> Result<()> {
        let from = self.node;
        let ns = self.lab.node_ns(from);
        let cidr = pod_cidr(to);
        let via = node_ip(to).to_string();
        self.lab.ip_in(
            &ns,
            &[
                "rule",
                "add",
                "to",
                &cidr,
                "lookup",
                BYPASS_TABLE,
                "pref",
                BYPASS_PREF,
            ],
        )?;
        self.lab.ip_in(
            &ns,
            &[
                "route",
                "add",
                &cidr,
                "via",
                &via,
                "dev",
                "eth0",
                "table",
                BYPASS_TABLE,
            ],
        )?;
        Ok(())
    }

    /// Undoes [`NodeHandle::bypass_tunnel`].
    pub fn remove_bypass(&self, to: u8) -> Result<()> {
        let from = self.node;
        let ns = self.lab.node_ns(from);
        let cidr = pod_cidr(to);
        self.lab
            .ip_in(&ns, &["route", "del", &cidr, "table", BYPASS_TABLE])?;
        self.lab.ip_in(
            &ns,
            &[
                "rule",
                "del",
                "to",
                &cidr,
                "lookup",
                BYPASS_TABLE,
                "pref",
                BYPASS_PREF,
            ],
        )?;
        Ok(())
    }
}
