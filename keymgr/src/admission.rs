//! Which records of a set are admitted, when one record may be hostile: the rules between records
//! (no two nodes share a key or an address range; no pod range covers a node's underlay
//! address), the rules that depend on the reader (the cluster's pod pool, this node's own
//! addresses), and the order that settles every conflict.
//!
//! A conflict refuses only the younger record: the older one (by [`Seniority`], then node name)
//! is already in force on every node and keeps working, so one bad record can neither take a
//! node off the mesh nor take over its traffic. Every node reads the same seniority from the
//! store, so every node refuses the same record.
//!
//! [`validate_set`] states the rules over a whole set at once; the stores apply them
//! incrementally (`store::records`) and are tested against it. Nothing here does I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{NodeRecord, RecordError, Rejected};

/// What a reader admits beyond what records say about themselves, taken from its own config:
/// the cluster's pod address pool(s) and the addresses of the node it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// Every pod CIDR must lie inside one of these; empty admits any range.
    pub cluster_pod_cidrs: Vec<IpNet>,
    /// No pod CIDR may cover one of these.
    pub local_addresses: Vec<IpAddr>,
}

impl Admission {
    /// Checks `rec` against this reader's limits (the record's own rules are
    /// [`NodeRecord::validate`]).
    pub fn admit(&self, rec: &NodeRecord) -> Result<(), RecordError> {
        for &cidr in &rec.pod_cidrs {
            let pool = &self.cluster_pod_cidrs;
            if !pool.is_empty() && !pool.iter().any(|p| p.contains(&cidr)) {
                let pool: Vec<String> = pool.iter().map(ToString::to_string).collect();
                let pool = pool.join(", ");
                return Err(RecordError::OutsidePool { cidr, pool });
            }
            if let Some(&addr) = self.local_addresses.iter().find(|a| cidr.contains(*a)) {
                return Err(RecordError::CoversLocalAddress { cidr, addr });
            }
        }
        Ok(())
    }
}

/// A record's place in the order that settles conflicts: lower is older, and the older record
/// wins. Each store derives it from something every reader sees alike and a record's writer
/// cannot move backwards: etcd's `create_revision`, a Node's `creationTimestamp` (in seconds),
/// the dir store's ctime of the node's first-publish marker (in nanoseconds). Ties are broken
/// by node name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seniority(pub u128);

/// One record offered to [`validate_set`]: where it was read, its seniority and the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub source: String,
    pub seniority: Seniority,
    pub record: NodeRecord,
}

/// Why `rec` cannot be admitted while `older` is in force, if it cannot: a shared key, an
/// overlapping pod CIDR, or a pod CIDR of either covering an underlay address of the other.
/// The error is about `rec`, naming its field and `older`.
pub fn conflict(rec: &NodeRecord, older: &NodeRecord) -> Option<RecordError> {
    let other = || older.node_name.clone();
    let fields = [
        Some(("publicKey", rec.public_key)),
        rec.next_public_key.map(|k| ("nextPublicKey", k)),
    ];
    for (field, key) in fields.into_iter().flatten() {
        if older.keys().any(|k| k == key) {
            return Some(RecordError::DuplicateKey {
                field,
                key,
                other: other(),
            });
        }
    }
    for &cidr in &rec.pod_cidrs {
        let overlap = older
            .pod_cidrs
            .iter()
            .find(|o| o.contains(&cidr) || cidr.contains(*o));
        if let Some(&other_cidr) = overlap {
            return Some(RecordError::OverlappingCidr {
                cidr,
                other: other(),
                other_cidr,
            });
        }
        if let Some((field, addr)) = older.underlay().find(|(_, a)| cidr.contains(a)) {
            return Some(RecordError::CoversUnderlay {
                cidr,
                field,
                addr,
                other: other(),
            });
        }
    }
    for (field, addr) in rec.underlay() {
        if let Some(&other_cidr) = older.pod_cidrs.iter().find(|c| c.contains(&addr)) {
            return Some(RecordError::UnderlayInside {
                field,
                addr,
                other: other(),
                other_cidr,
            });
        }
    }
    None
}

/// The records of a set that are admitted, and the others with why, keyed by node name.
///
/// Records are taken oldest first (seniority, then name); each is admitted unless it breaks a
/// rule of its own or of `admission`, or conflicts with a record admitted before it. A refused
/// record blocks nobody: only records in force decide.
pub fn validate_set(
    records: BTreeMap<String, Candidate>,
    admission: &Admission,
) -> (BTreeMap<String, NodeRecord>, Vec<Rejected>) {
    let mut order: Vec<(Seniority, String, Candidate)> = records
        .into_iter()
        .map(|(name, c)| (c.seniority, name, c))
        .collect();
    order.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut accepted: BTreeMap<String, NodeRecord> = BTreeMap::new();
    let mut in_order: Vec<NodeRecord> = Vec::new();
    let mut rejected = Vec::new();
    for (_, name, c) in order {
        let verdict = c
            .record
            .validate()
            .and_then(|()| admission.admit(&c.record));
        let verdict =
            verdict.and_then(
                |()| match in_order.iter().find_map(|o| conflict(&c.record, o)) {
                    Some(e) => Err(e),
                    None => Ok(()),
                },
            );
        match verdict {
            Ok(()) => {
                in_order.push(c.record.clone());
                accepted.insert(name, c.record);
            }
            Err(e) => rejected.push(Rejected {
                source: c.source,
                node_name: Some(name),
                reason: e.to_string(),
            }),
        }
    }
    (accepted, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrivateKey;

    fn rec(name: &str, cidr: &str, endpoint: &str) -> NodeRecord {
        let key = PrivateKey::generate().public_key();
        NodeRecord {
            cluster_name: "c".into(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            ..NodeRecord::new(name, key, endpoint.parse().unwrap())
        }
    }

    fn set(recs: &[(u128, &NodeRecord)]) -> BTreeMap<String, Candidate> {
        recs.iter()
            .map(|(s, r)| {
                let c = Candidate {
                    source: format!("{}.json", r.node_name),
                    seniority: Seniority(*s),
                    record: (*r).clone(),
                };
                (r.node_name.clone(), c)
            })
            .collect()
    }

    fn verdict(
        recs: &[(u128, &NodeRecord)],
        admission: &Admission,
    ) -> (Vec<String>, Vec<Rejected>) {
        let (ok, bad) = validate_set(set(recs), admission);
        (ok.into_keys().collect(), bad)
    }

    #[test]
    fn an_overlap_refuses_only_the_younger_record_whatever_the_names() {
        let a = rec("z-old", "10.244.0.0/16", "198.18.0.1:51871");
        let b = rec("a-new", "10.244.2.0/24", "198.18.0.2:51871");
        let c = rec("c", "10.245.0.0/24", "198.18.0.3:51871");
        let (ok, bad) = verdict(&[(1, &a), (2, &b), (3, &c)], &Admission::default());
        assert_eq!(ok, ["c", "z-old"]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        let why = &bad[0].reason;
        assert!(
            bad[0].source == "a-new.json" && why.contains("field podCIDRs"),
            "{why}"
        );
        assert!(why.contains("10.244.0.0/16 of node z-old"), "{why}");
        // The same records with the seniorities swapped: the other one wins.
        let (ok, _) = verdict(&[(2, &a), (1, &b), (3, &c)], &Admission::default());
        assert_eq!(ok, ["a-new", "c"]);
    }

    #[test]
    fn equal_seniority_is_settled_by_name() {
        let a = rec("node-1", "10.244.1.0/24", "198.18.0.1:51871");
        let b = rec("node-2", "10.244.1.0/24", "198.18.0.2:51871");
        let (ok, _) = verdict(&[(5, &b), (5, &a)], &Admission::default());
        assert_eq!(ok, ["node-1"]);
    }

    #[test]
    fn a_refused_record_blocks_nobody() {
        let a = rec("a", "10.244.1.0/24", "198.18.0.1:51871");
        let wide = rec("wide", "10.0.0.0/8", "198.18.0.9:51871");
        let c = rec("c", "10.244.3.0/24", "198.18.0.3:51871");
        let (ok, bad) = verdict(&[(1, &a), (2, &wide), (3, &c)], &Admission::default());
        assert_eq!(ok, ["a", "c"]);
        assert_eq!(bad[0].node_name.as_deref(), Some("wide"));
    }

    #[test]
    fn a_duplicate_key_refuses_the_younger_record() {
        let a = rec("a", "10.244.1.0/24", "198.18.0.1:51871");
        let mut b = rec("b", "10.244.2.0/24", "198.18.0.2:51871");
        b.next_public_key = Some(a.public_key);
        let (ok, bad) = verdict(&[(1, &a), (2, &b)], &Admission::default());
        assert_eq!(ok, ["a"]);
        assert!(bad[0].reason.contains("field nextPublicKey"), "{bad:?}");
        let mut c = rec("c", "10.244.3.0/24", "198.18.0.3:51871");
        c.public_key = a.public_key;
        let (ok, bad) = verdict(&[(2, &a), (1, &c)], &Admission::default());
        assert_eq!(ok, ["c"]);
        assert!(bad[0].reason.contains("field publicKey") && bad[0].reason.contains("node c"));
    }

    #[test]
    fn pod_ranges_never_cover_another_nodes_underlay_address() {
        let a = NodeRecord {
            node_ips: vec!["198.19.0.1".parse().unwrap()],
            ..rec("a", "10.244.1.0/24", "198.18.0.1:51871")
        };
        let underlay = rec("b", "198.18.0.0/15", "203.0.113.2:51871");
        let (ok, bad) = verdict(&[(1, &a), (2, &underlay)], &Admission::default());
        assert_eq!(ok, ["a"]);
        assert!(
            bad[0]
                .reason
                .contains("198.18.0.0/15 covers 198.18.0.1, the endpoint address of node a"),
            "{bad:?}"
        );
        let only_ip = rec("c", "198.19.0.0/24", "203.0.113.3:51871");
        let (_, bad) = verdict(&[(1, &a), (2, &only_ip)], &Admission::default());
        assert!(
            bad[0].reason.contains("the nodeIPs address of node a"),
            "{bad:?}"
        );
        // The other way round: a newcomer whose address lies inside a pod range in force.
        let inside = rec("d", "10.244.4.0/24", "10.244.1.7:51871");
        let (ok, bad) = verdict(&[(1, &a), (2, &inside)], &Admission::default());
        assert_eq!(ok, ["a"]);
        assert!(
            bad[0]
                .reason
                .contains("field endpoint: 10.244.1.7 lies inside 10.244.1.0/24"),
            "{bad:?}"
        );
    }

    #[test]
    fn the_reader_refuses_ranges_outside_the_pool_or_over_its_own_addresses() {
        let admission = Admission {
            cluster_pod_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap(),
            ],
            local_addresses: vec!["10.244.200.1".parse().unwrap()],
        };
        let ok = rec("a", "10.244.1.0/24", "198.18.0.1:51871");
        let outside = rec("b", "10.245.0.0/24", "198.18.0.2:51871");
        let over_me = rec("c", "10.244.200.0/24", "198.18.0.3:51871");
        let v6 = rec("d", "fd00:10:244:1::/64", "198.18.0.4:51871");
        let recs = [(4, &ok), (1, &outside), (2, &over_me), (3, &v6)];
        let (accepted, bad) = verdict(&recs, &admission);
        assert_eq!(accepted, ["a", "d"]);
        let reasons: Vec<&str> = bad.iter().map(|r| r.reason.as_str()).collect();
        assert!(
            reasons[0].contains(
                "10.245.0.0/24 is not inside clusterPodCIDRs (10.244.0.0/16, fd00:10:244::/56)"
            ),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("covers 10.244.200.1, an address of this node"),
            "{reasons:?}"
        );
    }

    #[test]
    fn conflict_is_about_the_first_record_and_names_the_second() {
        let a = rec("a", "10.244.1.0/24", "198.18.0.1:51871");
        let b = rec("b", "10.244.1.128/25", "198.18.0.2:51871");
        let e = conflict(&b, &a).unwrap().to_string();
        assert!(
            e.contains("10.244.1.128/25 overlaps 10.244.1.0/24 of node a"),
            "{e}"
        );
        assert_eq!(
            conflict(&a, &rec("c", "10.244.3.0/24", "198.18.0.3:51871")),
            None
        );
    }
}
