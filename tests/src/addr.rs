//! The lab's addressing plan, in one place so tests, the demo and the topology agree.
//!
//! Node `i` (1-based) is `198.18.0.<i>` on the underlay (the benchmarking range) and owns the pod
//! CIDR `10.244.<i>.0/24`; its pod `k` (1-based) is `10.244.<i>.<10+k>`, reached through the node's
//! `10.244.<i>.1`. Nothing outside these namespaces is ever addressed.
//!
//! A dual-stack lab adds IPv6 alongside: node `i` is `2001:2::<i>/64` on the underlay (the IPv6
//! benchmarking range, RFC 5180) with the switch at `2001:2::fe`, owns `fd00:10:244:<i>::/64`
//! inside the cluster pool `fd00:10:244::/56`, and its pod `k` is `fd00:10:244:<i>::<10+k>`
//! behind the node's `fd00:10:244:<i>::1` (`<i>` and `<10+k>` written in hex, so 200 nodes fit the
//! /56).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The WireGuard interface name every node uses.
pub const WG_IFACE: &str = "wiremesh_wg0";
/// The WireGuard UDP port every node listens on.
pub const WG_PORT: u16 = 51871;
/// The tunnel MTU; pod links use it too, as a CNI sizes pod MTUs to the tunnel's.
pub const WG_MTU: u16 = 1420;
/// The underlay subnet's prefix length.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
/// Most nodes a lab can hold (addresses are one octet).
pub const MAX_NODES: u8 = 200;
/// Most pods per node (pod addresses are `10 + k` in one octet).
pub const MAX_PODS: u8 = 200;
/// The cluster's pod address pool (the agents' `clusterPodCIDRs`): every node's pod CIDR.
pub const CLUSTER_POD_CIDR: &str = "10.244.0.0/16";
/// The IPv6 pool of a dual-stack lab.
pub const CLUSTER_POD_CIDR6: &str = "fd00:10:244::/56";
/// The underlay's IPv6 prefix length.
pub const UNDERLAY_PREFIX_LEN6: u8 = 64;
/// The switch's IPv6 address on the underlay (dual-stack labs with default routes).
pub const SWITCH_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0xfe);

pub fn node_ip6(node: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, u16::from(node))
}

pub fn node_gateway6(node: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(node), 0, 0, 0, 1)
}

pub fn pod_ip6(node: u8, pod: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x10,
        0x244,
        u16::from(node),
        0,
        0,
        0,
        10 + u16::from(pod),
    )
}

/// `fd00:10:244:<node>::/64`.
pub fn pod_cidr6(node: u8) -> String {
    format!("fd00:10:244:{node:x}::/64")
}

pub fn node_ip(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, node)
}

pub fn node_gateway(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, 1)
}

pub fn pod_ip(node: u8, pod: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, 10 + pod)
}

/// `10.244.<node>.0/24`.
pub fn pod_cidr(node: u8) -> String {
    format!("10.244.{node}.0/24")
}

/// `node-<i>`, the name the node publishes in the store.
pub fn node_name(node: u8) -> String {
    format!("node-{node}")
}

pub fn endpoint(node: u8) -> String {
    format!("{}:{WG_PORT}", node_ip(node))
}

/// Where a command runs: a node's network namespace or one of its pods'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    Node(u8),
    Pod(u8, u8),
}

impl Host {
    pub fn node(self) -> u8 {
        match self {
            Host::Node(n) | Host::Pod(n, _) => n,
        }
    }

    /// The address other hosts reach this one at.
    pub fn ip(self) -> Ipv4Addr {
        match self {
            Host::Node(n) => node_ip(n),
            Host::Pod(n, k) => pod_ip(n, k),
        }
    }

    /// The IPv6 address (dual-stack labs).
    pub fn ip6(self) -> Ipv6Addr {
        match self {
            Host::Node(n) => node_ip6(n),
            Host::Pod(n, k) => pod_ip6(n, k),
        }
    }

    /// [`Host::ip`] or [`Host::ip6`].
    pub fn ip_of(self, v6: bool) -> IpAddr {
        if v6 {
            self.ip6().into()
        } else {
            self.ip().into()
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Node(n) => write!(f, "node-{n}"),
            Host::Pod(n, k) => write!(f, "node-{n}/pod-{k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_matches_the_documented_layout() {
        assert_eq!(node_ip(2).to_string(), "198.18.0.2");
        assert_eq!(pod_ip(3, 2).to_string(), "10.244.3.12");
        assert_eq!(node_gateway(3).to_string(), "10.244.3.1");
        assert_eq!(pod_cidr(4), "10.244.4.0/24");
        assert_eq!(endpoint(1), "198.18.0.1:51871");
        assert_eq!(Host::Pod(1, 2).to_string(), "node-1/pod-2");
        assert_eq!(Host::Pod(1, 2).ip(), pod_ip(1, 2));
        assert_eq!(node_ip6(2).to_string(), "2001:2::2");
        assert_eq!(pod_ip6(3, 2).to_string(), "fd00:10:244:3::c");
        assert_eq!(node_gateway6(3).to_string(), "fd00:10:244:3::1");
        assert_eq!(pod_cidr6(200), "fd00:10:244:c8::/64");
        // Inside the /56 pool: the fourth group stays below 0x100.
        let last = pod_ip6(MAX_NODES, MAX_PODS).segments();
        assert_eq!(&last[..3], &[0xfd00, 0x10, 0x244]);
        assert!(last[3] <= 0xff && CLUSTER_POD_CIDR6.ends_with("::/56"));
    }
}
