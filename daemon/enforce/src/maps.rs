//! The BPF map layouts, mirroring `daemon/enforce/bpf/policy.h` field for field. Keys carry explicit
//! padding so that no byte of a key is left uninitialised: the kernel hashes and compares
//! every byte.

use std::net::IpAddr;

use ipnet::IpNet;

pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;
/// The Istio authorization entries' key space in the policy map (policy.h `DIR_AUTHZ`).
pub const DIR_AUTHZ: u8 = 3;

pub const EP_ENFORCE_INGRESS: u32 = 1 << 0;
pub const EP_ENFORCE_EGRESS: u32 = 1 << 1;
pub const EP_FAIL_CLOSED: u32 = 1 << 2;
pub const EP_PROXY_INGRESS_TCP: u32 = 1 << 3;
pub const EP_AUTHZ_INGRESS_TCP: u32 = 1 << 4;

pub const POLICY_ALLOW: u32 = 1 << 0;
pub const POLICY_DENY: u32 = 1 << 1;
pub const POLICY_L7: u32 = 1 << 2;

/// skb mark bits the programs, the nftables table and the proxy agree on (policy.h).
pub const MARK_MASK: u32 = 0x0f00;
pub const MARK_TO_PROXY_INGRESS: u32 = 0x0a00;
pub const MARK_TO_PROXY_EGRESS: u32 = 0x0b00;
pub const MARK_FROM_PROXY: u32 = 0x0c00;

pub const VERDICT_ALLOW: u8 = 0;

/// Map names, which are also their pin file names under the pin directory.
pub const MAP_ENDPOINTS: &str = "wm_endpoints";
pub const MAP_POLICY: &str = "wm_policy";
pub const MAP_IPCACHE: &str = "wm_ipcache";
pub const MAP_COUNTERS: &str = "wm_counters";

/// Why a packet got its verdict (`counter_key.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    PolicyAllow,
    CtEstablished,
    CtReply,
    NotEnforced,
    NonIp,
    Icmp6NeighbourDiscovery,
    ProxyRedirect,
    FromProxy,
    PolicyDeny,
    NoPolicy,
    NoEndpoint,
    FailClosed,
    Malformed,
    Unsupported,
    L7Unredirected,
    AuthzDeny,
    Unknown(u8),
}

impl Reason {
    pub fn from_code(code: u8) -> Self {
        match code {
            1 => Self::PolicyAllow,
            2 => Self::CtEstablished,
            3 => Self::CtReply,
            4 => Self::NotEnforced,
            5 => Self::NonIp,
            6 => Self::Icmp6NeighbourDiscovery,
            7 => Self::ProxyRedirect,
            8 => Self::FromProxy,
            16 => Self::PolicyDeny,
            17 => Self::NoPolicy,
            18 => Self::NoEndpoint,
            19 => Self::FailClosed,
            20 => Self::Malformed,
            21 => Self::Unsupported,
            22 => Self::L7Unredirected,
            23 => Self::AuthzDeny,
            other => Self::Unknown(other),
        }
    }

    /// The label used in metrics and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyAllow => "policy-allow",
            Self::CtEstablished => "ct-established",
            Self::CtReply => "ct-reply",
            Self::NotEnforced => "not-enforced",
            Self::NonIp => "non-ip",
            Self::Icmp6NeighbourDiscovery => "icmp6-nd",
            Self::ProxyRedirect => "proxy-redirect",
            Self::FromProxy => "from-proxy",
            Self::PolicyDeny => "policy-deny",
            Self::NoPolicy => "no-policy",
            Self::NoEndpoint => "no-endpoint",
            Self::FailClosed => "fail-closed",
            Self::Malformed => "malformed",
            Self::Unsupported => "unsupported",
            Self::L7Unredirected => "l7-unredirected",
            Self::AuthzDeny => "authz-deny",
            Self::Unknown(_) => "unknown",
        }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointConfigValue {
    pub identity: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub ifindex: u32,
    pub identity: u32,
    pub port: u16,
    pub direction: u8,
    pub protocol: u8,
    pub prefix: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    pub flags: u32,
}

/// The LPM trie key's data part; aya's `lpm_trie::Key` supplies `prefixlen`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpcacheData {
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

/// Bits of the key data before the address (`family` + `pad`).
pub const IPCACHE_FAMILY_BITS: u32 = 32;

impl IpcacheData {
    pub fn of(net: &IpNet) -> (u32, Self) {
        let net = net.trunc();
        let (family, addr) = addr_bytes(net.addr());
        (
            IPCACHE_FAMILY_BITS + u32::from(net.prefix_len()),
            Self {
                family,
                pad: [0; 3],
                addr,
            },
        )
    }
}

/// Family tag (4 or 6) and the 16 address bytes as the data path stores them.
pub fn addr_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut addr = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            (4, addr)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpcacheValue {
    pub identity: u32,
}

/// The conntrack map's layout (`wm_ct`), mirrored for its size test; no command reads it yet.
#[cfg(test)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub ifindex: u32,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: u8,
    pub family: u8,
    pub pad: u8,
}

#[cfg(test)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtValue {
    pub expires_ns: u64,
    pub flags: u32,
    pub pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub ifindex: u32,
    pub direction: u8,
    pub verdict: u8,
    pub reason: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

// SAFETY (all impls below): each type is #[repr(C)], built only from integers and byte
// arrays, with every padding byte an explicit field (sizes are checked by the test below), so
// any bit pattern is a valid value and no byte is uninitialised when copied to the kernel.
unsafe impl aya::Pod for EndpointConfigValue {}
// SAFETY: see above.
unsafe impl aya::Pod for PolicyKey {}
// SAFETY: see above.
unsafe impl aya::Pod for PolicyValue {}
// SAFETY: see above.
unsafe impl aya::Pod for IpcacheData {}
// SAFETY: see above.
unsafe impl aya::Pod for IpcacheValue {}

// SAFETY: see above.
unsafe impl aya::Pod for CounterKey {}
// SAFETY: see above.
unsafe impl aya::Pod for CounterValue {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn layouts_match_policy_h_without_implicit_padding() {
        assert_eq!(size_of::<EndpointConfigValue>(), 8);
        assert_eq!(size_of::<PolicyKey>(), 16);
        assert_eq!(size_of::<PolicyValue>(), 4);
        assert_eq!(size_of::<IpcacheData>(), 20);
        assert_eq!(size_of::<IpcacheValue>(), 4);
        assert_eq!(size_of::<CtKey>(), 44);
        assert_eq!(size_of::<CtValue>(), 16);
        assert_eq!(size_of::<CounterKey>(), 8);
        assert_eq!(size_of::<CounterValue>(), 16);
    }

    #[test]
    fn ipcache_key_counts_the_family_tag() {
        let net: IpNet = "10.244.1.7/24".parse().expect("literal");
        let (len, data) = IpcacheData::of(&net);
        assert_eq!(len, 32 + 24);
        assert_eq!(data.family, 4);
        assert_eq!(&data.addr[..4], &[10, 244, 1, 0]);
    }
}
