//! The node record: what one node tells every other node about itself, and the rules one record
//! must satisfy on its own, whoever reads it (`crate::admission` holds the rules between records
//! and those that depend on the reader).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::PublicKey;

/// One node as published in the store. Unknown fields are ignored so that newer agents can add
/// fields without older ones refusing their records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub node_name: String,
    #[serde(default)]
    pub cluster_name: String,
    pub public_key: PublicKey,
    pub endpoint: SocketAddr,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNet>,
    #[serde(default, rename = "nodeIPs")]
    pub node_ips: Vec<IpAddr>,
    /// Serial of `publicKey`: 1 for a node's first key, one more per rotation.
    #[serde(default)]
    pub key_epoch: u64,
    /// When `publicKey` was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_created: Option<String>,
    /// The successor key during a rotation: peers accept it alongside `publicKey` until the
    /// node commits to it (see docs/key-rotation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_public_key: Option<PublicKey>,
}

/// At most this many `podCIDRs` (Kubernetes allows one per address family).
pub const MAX_POD_CIDRS: usize = 16;
/// At most this many `nodeIPs`.
pub const MAX_NODE_IPS: usize = 16;
/// Longest `clusterName` and `keyCreated` (an RFC 3339 time is about 30 characters).
pub const MAX_TEXT_LEN: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("field nodeName: {0:?} is not a valid node name (lowercase RFC 1123 subdomain)")]
    NodeName(String),
    #[error("field publicKey: the all-zero key is not a valid WireGuard key")]
    ZeroKey,
    #[error(
        "field {field}: {key} is already published by node {other}, whose record is older and \
         stays in force; this record is refused"
    )]
    DuplicateKey {
        field: &'static str,
        key: PublicKey,
        other: String,
    },
    #[error(
        "field podCIDRs: {cidr} overlaps {other_cidr} of node {other}, whose record is older and \
         stays in force; this record is refused"
    )]
    OverlappingCidr {
        cidr: IpNet,
        other: String,
        other_cidr: IpNet,
    },
    #[error(
        "field podCIDRs: {cidr} covers {addr}, the {field} address of node {other}, whose record \
         is older and stays in force; this record is refused (pod ranges never cover the underlay)"
    )]
    CoversUnderlay {
        cidr: IpNet,
        field: &'static str,
        addr: IpAddr,
        other: String,
    },
    #[error(
        "field {field}: {addr} lies inside {other_cidr}, a pod CIDR of node {other}, whose record \
         is older and stays in force; this record is refused (pod ranges never cover the underlay)"
    )]
    UnderlayInside {
        field: &'static str,
        addr: IpAddr,
        other: String,
        other_cidr: IpNet,
    },
    #[error("field podCIDRs: {cidr} covers this record's own {field} address {addr}")]
    CoversOwnUnderlay {
        cidr: IpNet,
        field: &'static str,
        addr: IpAddr,
    },
    #[error("field podCIDRs: {0} has host bits set (did you mean {1}?)")]
    HostBits(IpNet, IpNet),
    #[error("field podCIDRs: {0} is a default route (prefix length 0), never a node's pod range")]
    DefaultRoute(IpNet),
    #[error("field podCIDRs: {cidr} is not inside clusterPodCIDRs ({pool})")]
    OutsidePool { cidr: IpNet, pool: String },
    #[error("field podCIDRs: {cidr} covers {addr}, an address of this node")]
    CoversLocalAddress { cidr: IpNet, addr: IpAddr },
    #[error("field {field}: {count} entries, more than the {max} one node may have")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("field {field}: {len} characters, more than {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("field endpoint: {0} {1}")]
    Endpoint(SocketAddr, &'static str),
    #[error("field nodeIPs: {0} {1}")]
    NodeIp(IpAddr, &'static str),
    #[error(
        "field keyEpoch: {0} is the largest epoch there is, so this key could never be rotated"
    )]
    EpochExhausted(u64),
    #[error("field nodeName: record for {found:?} is stored under the name {expected:?}")]
    NameMismatch { expected: String, found: String },
}

/// A record refused during validation, with where it came from (a file, a key) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub source: String,
    pub node_name: Option<String>,
    pub reason: String,
}

impl NodeRecord {
    /// A record with the required fields and no rotation in progress.
    pub fn new(node_name: impl Into<String>, public_key: PublicKey, endpoint: SocketAddr) -> Self {
        Self {
            node_name: node_name.into(),
            cluster_name: String::new(),
            public_key,
            endpoint,
            pod_cidrs: Vec::new(),
            node_ips: Vec::new(),
            key_epoch: 0,
            key_created: None,
            next_public_key: None,
        }
    }

    /// The node's keys: its published key, then its successor if a rotation is under way.
    pub fn keys(&self) -> impl Iterator<Item = PublicKey> + '_ {
        std::iter::once(self.public_key).chain(self.next_public_key)
    }

    /// The node's underlay addresses, each with the field that names it: where its peers send
    /// WireGuard datagrams (`endpoint`) and its own addresses (`nodeIPs`).
    pub fn underlay(&self) -> impl Iterator<Item = (&'static str, IpAddr)> + '_ {
        let ips = self.node_ips.iter().map(|ip| ("nodeIPs", *ip));
        std::iter::once(("endpoint", self.endpoint.ip())).chain(ips)
    }

    /// Checks that hold for one record on its own, whoever reads it.
    pub fn validate(&self) -> Result<(), RecordError> {
        if !policy::names::is_dns_subdomain(&self.node_name) {
            return Err(RecordError::NodeName(self.node_name.clone()));
        }
        if self.public_key.is_zero() || self.next_public_key.is_some_and(|k| k.is_zero()) {
            return Err(RecordError::ZeroKey);
        }
        self.validate_sizes()?;
        // Its successor's epoch is one more, which must exist.
        if self.key_epoch == u64::MAX {
            return Err(RecordError::EpochExhausted(self.key_epoch));
        }
        validate_endpoint(self.endpoint)?;
        for ip in &self.node_ips {
            if let Some(why) = unusable(*ip) {
                return Err(RecordError::NodeIp(*ip, why));
            }
        }
        for cidr in &self.pod_cidrs {
            if cidr.trunc() != *cidr {
                return Err(RecordError::HostBits(*cidr, cidr.trunc()));
            }
            if cidr.prefix_len() == 0 {
                return Err(RecordError::DefaultRoute(*cidr));
            }
            if let Some((field, addr)) = self.underlay().find(|(_, a)| cidr.contains(a)) {
                let cidr = *cidr;
                return Err(RecordError::CoversOwnUnderlay { cidr, field, addr });
            }
        }
        Ok(())
    }

    /// Bounds on every list and string, so that one record cannot make every reader allocate
    /// or compare without limit.
    fn validate_sizes(&self) -> Result<(), RecordError> {
        let counts = [
            ("podCIDRs", self.pod_cidrs.len(), MAX_POD_CIDRS),
            ("nodeIPs", self.node_ips.len(), MAX_NODE_IPS),
        ];
        if let Some((field, count, max)) = counts.into_iter().find(|(_, n, max)| n > max) {
            return Err(RecordError::TooMany { field, count, max });
        }
        let created = self.key_created.as_deref().unwrap_or_default();
        let texts = [
            ("clusterName", &*self.cluster_name),
            ("keyCreated", created),
        ];
        if let Some((field, text)) = texts.into_iter().find(|(_, t)| t.len() > MAX_TEXT_LEN) {
            let (len, max) = (text.len(), MAX_TEXT_LEN);
            return Err(RecordError::TooLong { field, len, max });
        }
        Ok(())
    }
}

fn validate_endpoint(endpoint: SocketAddr) -> Result<(), RecordError> {
    if endpoint.port() == 0 {
        return Err(RecordError::Endpoint(
            endpoint,
            "has port 0, where nothing listens",
        ));
    }
    match unusable(endpoint.ip()) {
        Some(why) => Err(RecordError::Endpoint(endpoint, why)),
        None => Ok(()),
    }
}

/// Why `ip` can be no node's unicast address, if it cannot.
fn unusable(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("is the unspecified address, which names no node");
    }
    if ip.is_multicast() {
        return Some("is a multicast address, which names no single node");
    }
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("is the broadcast address"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrivateKey;

    fn rec(name: &str, cidr: &str) -> NodeRecord {
        let key = PrivateKey::generate().public_key();
        NodeRecord {
            cluster_name: "c".into(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            ..NodeRecord::new(name, key, "198.18.0.1:51871".parse().unwrap())
        }
    }

    #[test]
    fn record_json_uses_documented_field_names() {
        let r = rec("node-1", "10.244.1.0/24");
        let v = serde_json::to_value(&r).unwrap();
        for field in [
            "nodeName",
            "clusterName",
            "publicKey",
            "endpoint",
            "podCIDRs",
            "nodeIPs",
        ] {
            assert!(v.get(field).is_some(), "missing {field} in {v}");
        }
        let back: NodeRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn zero_key_and_bad_names_are_refused() {
        let mut r = rec("node-1", "10.244.1.0/24");
        r.public_key = PublicKey::from_bytes([0; 32]);
        assert_eq!(r.validate(), Err(RecordError::ZeroKey));
        let r = rec("Node_1", "10.244.1.0/24");
        assert!(matches!(r.validate(), Err(RecordError::NodeName(_))));
        let r = rec("node-1", "10.244.1.7/24");
        assert!(matches!(r.validate(), Err(RecordError::HostBits(..))));
    }

    #[test]
    fn absurd_values_are_refused_naming_the_field() {
        let base = rec("node-1", "10.244.1.0/24");
        let cases: Vec<(NodeRecord, &str)> = vec![
            (
                NodeRecord {
                    key_epoch: u64::MAX,
                    ..base.clone()
                },
                "keyEpoch",
            ),
            (
                NodeRecord {
                    pod_cidrs: vec!["0.0.0.0/0".parse().unwrap()],
                    ..base.clone()
                },
                "default route",
            ),
            (
                NodeRecord {
                    pod_cidrs: vec!["::/0".parse().unwrap()],
                    ..base.clone()
                },
                "default route",
            ),
            (
                NodeRecord {
                    endpoint: "198.18.0.1:0".parse().unwrap(),
                    ..base.clone()
                },
                "field endpoint",
            ),
            (
                NodeRecord {
                    endpoint: "0.0.0.0:51871".parse().unwrap(),
                    ..base.clone()
                },
                "field endpoint",
            ),
            (
                NodeRecord {
                    endpoint: "[ff02::1]:51871".parse().unwrap(),
                    ..base.clone()
                },
                "field endpoint",
            ),
            (
                NodeRecord {
                    node_ips: vec!["255.255.255.255".parse().unwrap()],
                    ..base.clone()
                },
                "field nodeIPs",
            ),
            (
                NodeRecord {
                    pod_cidrs: vec!["10.0.0.0/8".parse().unwrap(); 17],
                    ..base.clone()
                },
                "field podCIDRs: 17 entries",
            ),
            (
                NodeRecord {
                    node_ips: vec!["198.18.0.1".parse().unwrap(); 17],
                    ..base.clone()
                },
                "field nodeIPs: 17 entries",
            ),
            (
                NodeRecord {
                    key_created: Some("x".repeat(254)),
                    ..base.clone()
                },
                "field keyCreated",
            ),
            (
                NodeRecord {
                    cluster_name: "x".repeat(254),
                    ..base.clone()
                },
                "field clusterName",
            ),
            (
                NodeRecord {
                    pod_cidrs: vec!["198.18.0.0/24".parse().unwrap()],
                    ..base.clone()
                },
                "own endpoint address 198.18.0.1",
            ),
            (
                NodeRecord {
                    node_ips: vec!["10.244.1.9".parse().unwrap()],
                    ..base.clone()
                },
                "own nodeIPs address 10.244.1.9",
            ),
        ];
        for (r, want) in cases {
            let e = r.validate().expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        let almost = NodeRecord {
            key_epoch: u64::MAX - 1,
            ..base.clone()
        };
        assert_eq!(almost.validate(), Ok(()));
        assert_eq!(base.validate(), Ok(()));
    }

    /// Node names follow Kubernetes' DNS-1123 subdomain (`policy::names`): a label longer than
    /// 63 characters is accepted (the API server accepts such a Node), `-` or `.` at either end
    /// of a label is not.
    #[test]
    fn node_names_are_judged_as_kubernetes_judges_them() {
        let key = PrivateKey::generate().public_key();
        let named = |name: &str| NodeRecord {
            cluster_name: "c".into(),
            ..NodeRecord::new(name, key, "198.18.0.1:51871".parse().unwrap())
        };
        let long_label = format!("{}.example", "a".repeat(64));
        assert_eq!(named(&long_label).validate(), Ok(()));
        for bad in ["-a", "a-", "a..b", ".a", "A", &"a".repeat(254)] {
            assert_eq!(
                named(bad).validate(),
                Err(RecordError::NodeName(bad.to_string())),
                "{bad:?}"
            );
        }
    }
}
