//! The node record: what one node tells every other node about itself, and the rules a set of
//! records must satisfy before any of it reaches the data path.

use std::collections::{BTreeMap, HashMap};
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("field nodeName: {0:?} is not a valid node name (lowercase RFC 1123 subdomain)")]
    NodeName(String),
    #[error("field publicKey: the all-zero key is not a valid WireGuard key")]
    ZeroKey,
    #[error("field publicKey: {key} is also published by node {other}; both records are refused")]
    DuplicateKey { key: PublicKey, other: String },
    #[error(
        "field podCIDRs: {cidr} overlaps {other_cidr} of node {other}; both records are refused"
    )]
    OverlappingCidr {
        cidr: IpNet,
        other: String,
        other_cidr: IpNet,
    },
    #[error("field podCIDRs: {0} has host bits set (did you mean {1}?)")]
    HostBits(IpNet, IpNet),
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

    /// Checks that hold for one record on its own.
    pub fn validate(&self) -> Result<(), RecordError> {
        if !is_rfc1123_subdomain(&self.node_name) {
            return Err(RecordError::NodeName(self.node_name.clone()));
        }
        if self.public_key.is_zero() || self.next_public_key.is_some_and(|k| k.is_zero()) {
            return Err(RecordError::ZeroKey);
        }
        for cidr in &self.pod_cidrs {
            if cidr.trunc() != *cidr {
                return Err(RecordError::HostBits(*cidr, cidr.trunc()));
            }
        }
        Ok(())
    }
}

/// Checks that hold across records: no two nodes share a key or overlapping pod CIDRs. Both sides
/// of a conflict are refused, because the store alone cannot tell which one is genuine and
/// WireGuard would silently route a shared CIDR to whichever peer was configured last.
///
/// This states the rules over a whole set at once; the stores apply the same rules incrementally,
/// one changed record at a time, and are tested against this function.
pub fn validate_set(
    records: BTreeMap<String, (String, NodeRecord)>,
) -> (BTreeMap<String, NodeRecord>, Vec<Rejected>) {
    let mut refused: HashMap<String, RecordError> = HashMap::new();
    let mut by_key: HashMap<PublicKey, &str> = HashMap::new();
    let mut cidrs: Vec<(IpNet, &str)> = Vec::new();
    for (name, (_, rec)) in &records {
        for key in rec.keys() {
            let Some(other) = by_key.insert(key, name) else {
                continue;
            };
            if other == name {
                continue;
            }
            let (here, there) = (name.clone(), other.to_string());
            refused.insert(
                here.clone(),
                RecordError::DuplicateKey {
                    key,
                    other: there.clone(),
                },
            );
            refused.insert(there, RecordError::DuplicateKey { key, other: here });
        }
        cidrs.extend(rec.pod_cidrs.iter().map(|c| (*c, name.as_str())));
    }
    // CIDRs are nested or disjoint, never partly overlapping: sorted by start address (wider
    // first), each one overlaps exactly the open CIDRs that contain it. O(n log n) in the
    // number of CIDRs, so a thousand-node store validates in microseconds.
    cidrs.sort_by_key(|(c, _)| (c.network(), c.prefix_len()));
    let mut open: Vec<(IpNet, &str)> = Vec::new();
    for (cidr, name) in cidrs {
        while open.last().is_some_and(|(o, _)| !o.contains(&cidr)) {
            open.pop();
        }
        if let Some(&(other_cidr, other)) = open.iter().rev().find(|(_, o)| *o != name) {
            let e = RecordError::OverlappingCidr {
                cidr,
                other: other.into(),
                other_cidr,
            };
            refused.insert(name.to_string(), e);
            let e = RecordError::OverlappingCidr {
                cidr: other_cidr,
                other: name.into(),
                other_cidr: cidr,
            };
            refused.insert(other.to_string(), e);
        }
        open.push((cidr, name));
    }
    let mut accepted = BTreeMap::new();
    let mut rejected = Vec::new();
    for (name, (source, rec)) in records {
        match refused.remove(&name) {
            Some(e) => rejected.push(Rejected {
                source,
                node_name: Some(name),
                reason: e.to_string(),
            }),
            None => {
                accepted.insert(name, rec);
            }
        }
    }
    (accepted, rejected)
}

fn is_rfc1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
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

    fn set(recs: Vec<NodeRecord>) -> BTreeMap<String, (String, NodeRecord)> {
        recs.into_iter()
            .map(|r| (r.node_name.clone(), (format!("{}.json", r.node_name), r)))
            .collect()
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
    fn duplicate_keys_refuse_both_records_and_keep_others() {
        let a = rec("a", "10.244.1.0/24");
        let mut b = rec("b", "10.244.2.0/24");
        b.public_key = a.public_key;
        let c = rec("c", "10.244.3.0/24");
        let (ok, bad) = validate_set(set(vec![a, b, c]));
        assert_eq!(ok.keys().collect::<Vec<_>>(), vec!["c"]);
        assert_eq!(bad.len(), 2);
        assert!(bad.iter().all(|r| r.reason.contains("publicKey")));
    }

    #[test]
    fn a_successor_key_must_not_collide_with_another_nodes_key() {
        let a = rec("a", "10.244.1.0/24");
        let mut b = rec("b", "10.244.2.0/24");
        b.next_public_key = Some(a.public_key);
        let (ok, bad) = validate_set(set(vec![a, b]));
        assert!(ok.is_empty(), "{ok:?}");
        assert_eq!(bad.len(), 2);
    }

    proptest::proptest! {
        /// The sweep refuses exactly the nodes a brute-force pairwise check would.
        #[test]
        fn overlap_sweep_matches_pairwise_check(
            nets in proptest::collection::vec((0u8..4, 0u8..4, 22u8..=26), 1..12)
        ) {
            let recs: Vec<NodeRecord> = nets
                .iter()
                .enumerate()
                .map(|(i, (a, b, len))| {
                    let net: IpNet = format!("10.{a}.{b}.0/{len}").parse().unwrap();
                    NodeRecord { pod_cidrs: vec![net.trunc()], ..rec(&format!("n{i}"), "10.0.0.0/32") }
                })
                .collect();
            let mut expected: Vec<String> = Vec::new();
            for x in &recs {
                for y in &recs {
                    let (cx, cy) = (x.pod_cidrs[0], y.pod_cidrs[0]);
                    if x.node_name != y.node_name && (cx.contains(&cy) || cy.contains(&cx)) {
                        expected.push(x.node_name.clone());
                        break;
                    }
                }
            }
            expected.sort();
            let (_, bad) = validate_set(set(recs));
            let mut got: Vec<String> = bad.into_iter().filter_map(|r| r.node_name).collect();
            got.sort();
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn overlapping_pod_cidrs_refuse_both_records() {
        let (ok, bad) = validate_set(set(vec![
            rec("a", "10.244.0.0/16"),
            rec("b", "10.244.2.0/24"),
            rec("c", "10.245.0.0/24"),
        ]));
        assert_eq!(ok.keys().collect::<Vec<_>>(), vec!["c"]);
        assert_eq!(bad.len(), 2, "{bad:?}");
    }
}
