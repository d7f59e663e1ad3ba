//! The valid records every backend hands out, kept incrementally. A change to one source (an etcd
//! key, a file, a Node) revisits only its record and the records that share a key or a pod CIDR
//! range with it, in O(log n) each, and a [`Snapshot`] is an O(1) clone of a persistent map that
//! shares its structure with the previous one. So a thousand nodes joining cost each agent a
//! thousand small patches rather than a thousand rebuilds of the whole set.
//!
//! [`crate::validate_set`] states the same rules over a whole set at once; the tests hold this
//! structure to it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;

use imbl::OrdMap;
use ipnet::IpNet;

use super::refused::{Origin, RejectionReporter};
use super::Snapshot;
use crate::{NodeRecord, PublicKey, RecordError, Rejected};

/// One source as read: the record it holds (with the source's name), or why it is refused.
pub(super) type Read = Result<(String, NodeRecord), Rejected>;

#[derive(Debug)]
pub(super) struct Records {
    /// Every source as last read: the node whose record it holds, `None` when it is refused.
    sources: HashMap<String, Option<String>>,
    /// Readable records by node name, with their source, whether accepted or in conflict.
    nodes: HashMap<String, (String, NodeRecord)>,
    /// Who publishes each key (published or successor).
    by_key: HashMap<PublicKey, BTreeSet<String>>,
    /// Who claims each pod CIDR. CIDRs are nested or disjoint, so the ones overlapping a CIDR are
    /// its supernets (one lookup per shorter prefix length) and its subnets (a range).
    by_cidr: BTreeMap<IpNet, BTreeSet<String>>,
    /// The records in no conflict: what [`Records::snapshot`] hands out.
    accepted: OrdMap<String, NodeRecord>,
    refused: RejectionReporter,
}

impl Records {
    pub(super) fn new(origin: Origin) -> Self {
        Self {
            sources: HashMap::new(),
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            by_cidr: BTreeMap::new(),
            accepted: OrdMap::new(),
            refused: RejectionReporter::new(origin),
        }
    }

    /// The valid records, in O(1).
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.accepted.clone(),
        }
    }

    /// Replaces every source with a fresh listing. Sources gone from it are removed first, so
    /// that a record that moved (a CIDR handed from a departed node to a new one) is never seen
    /// in conflict with its own past.
    pub(super) fn replace(&mut self, listing: impl IntoIterator<Item = Read>) {
        let listing: Vec<Read> = listing.into_iter().collect();
        let listed: HashSet<&str> = listing.iter().map(source).collect();
        let gone: Vec<String> = self
            .sources
            .keys()
            .filter(|s| !listed.contains(s.as_str()))
            .cloned()
            .collect();
        for s in gone {
            self.delete(&s);
        }
        for read in listing {
            self.put(read);
        }
    }

    /// Sets what one source holds; a refused one is warned about once per change of its reason.
    pub(super) fn put(&mut self, read: Read) {
        let (source, rec) = match read {
            Ok(ok) => ok,
            Err(rejected) => {
                self.set(&rejected.source, None);
                self.sources.insert(rejected.source.clone(), None);
                self.refused.refuse(rejected);
                return;
            }
        };
        let name = rec.node_name.clone();
        match self.nodes.get(&name) {
            Some((s, r)) if *s == source && *r == rec => return,
            // Backends name a source after its node, so this takes a corrupt listing; refuse the
            // newcomer rather than let two sources fight over one name.
            Some((other, _)) if *other != source => {
                let reason = format!("node {name} is already published at {other}");
                let node_name = Some(name);
                return self.put(Err(Rejected {
                    source,
                    node_name,
                    reason,
                }));
            }
            _ => {}
        }
        self.set(&source, Some(rec));
        self.sources.insert(source, Some(name));
    }

    pub(super) fn delete(&mut self, source: &str) {
        self.set(source, None);
        self.sources.remove(source);
        self.refused.clear(source);
    }

    /// Replaces the record `source` holds with `new`, then revisits every record whose verdict
    /// may have changed: the old and the new record, and everything either conflicts with.
    fn set(&mut self, source: &str, new: Option<NodeRecord>) {
        let mut revisit = BTreeSet::new();
        if let Some(Some(name)) = self.sources.get(source) {
            let name = name.clone();
            if let Some((_, old)) = self.nodes.remove(&name) {
                self.unindex(&name, &old);
                revisit.extend(self.conflicting(&name, &old));
            }
            revisit.insert(name);
        }
        if let Some(rec) = new {
            let name = rec.node_name.clone();
            self.index(&name, &rec);
            revisit.extend(self.conflicting(&name, &rec));
            self.nodes.insert(name.clone(), (source.to_owned(), rec));
            revisit.insert(name);
        }
        for name in revisit {
            self.judge(&name);
        }
    }

    /// Accepts or refuses `name` by its conflicts as they stand, touching the snapshot only if its
    /// verdict or record changed.
    fn judge(&mut self, name: &str) {
        let Some((source, rec)) = self.nodes.get(name) else {
            if self.accepted.contains_key(name) {
                self.accepted.remove(name);
            }
            return;
        };
        match self.conflict(name, rec) {
            None => {
                self.refused.clear(source);
                if self.accepted.get(name) != Some(rec) {
                    self.accepted.insert(name.to_owned(), rec.clone());
                }
            }
            Some(e) => {
                let rejected = Rejected {
                    source: source.clone(),
                    node_name: Some(name.to_owned()),
                    reason: e.to_string(),
                };
                self.refused.refuse(rejected);
                if self.accepted.contains_key(name) {
                    self.accepted.remove(name);
                }
            }
        }
    }

    /// The first conflict of `rec`: a key another node also publishes, else a pod CIDR that
    /// overlaps another node's (widest supernet first, then subnets in address order).
    fn conflict(&self, name: &str, rec: &NodeRecord) -> Option<RecordError> {
        for key in rec.keys() {
            let mut holders = self.by_key.get(&key).into_iter().flatten();
            if let Some(other) = holders.find(|n| *n != name) {
                let other = other.clone();
                return Some(RecordError::DuplicateKey { key, other });
            }
        }
        rec.pod_cidrs.iter().find_map(|&cidr| {
            let (other_cidr, other) = self.overlapping(cidr).find(|(_, n)| *n != name)?;
            Some(RecordError::OverlappingCidr {
                cidr,
                other: other.clone(),
                other_cidr,
            })
        })
    }

    /// Every node other than `name` that shares a key or a pod CIDR range with `rec`.
    fn conflicting(&self, name: &str, rec: &NodeRecord) -> BTreeSet<String> {
        let by_key = rec.keys().filter_map(|k| self.by_key.get(&k)).flatten();
        let by_cidr = rec.pod_cidrs.iter().flat_map(|&c| self.overlapping(c));
        by_key
            .chain(by_cidr.map(|(_, n)| n))
            .filter(|n| *n != name)
            .cloned()
            .collect()
    }

    /// Every (CIDR, node) whose CIDR overlaps `cidr`, `cidr` itself included.
    fn overlapping(&self, cidr: IpNet) -> impl Iterator<Item = (IpNet, &String)> {
        let supernets = (0..=cidr.prefix_len()).filter_map(move |len| {
            let wider = IpNet::new(cidr.network(), len).ok()?.trunc();
            self.by_cidr.get_key_value(&wider)
        });
        let last = IpNet::new(cidr.broadcast(), cidr.max_prefix_len())
            .expect("the maximum prefix length is valid for its own family");
        let subnets = self
            .by_cidr
            .range((Bound::Excluded(cidr), Bound::Included(last)));
        supernets
            .chain(subnets)
            .flat_map(|(c, names)| names.iter().map(move |n| (*c, n)))
    }

    fn index(&mut self, name: &str, rec: &NodeRecord) {
        for key in rec.keys() {
            self.by_key.entry(key).or_default().insert(name.to_owned());
        }
        for &cidr in &rec.pod_cidrs {
            self.by_cidr
                .entry(cidr)
                .or_default()
                .insert(name.to_owned());
        }
    }

    fn unindex(&mut self, name: &str, rec: &NodeRecord) {
        for key in rec.keys() {
            if let Some(names) = self.by_key.get_mut(&key) {
                names.remove(name);
                if names.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
        for cidr in &rec.pod_cidrs {
            if let Some(names) = self.by_cidr.get_mut(cidr) {
                names.remove(name);
                if names.is_empty() {
                    self.by_cidr.remove(cidr);
                }
            }
        }
    }

    /// The reason `source` was last refused for.
    #[cfg(test)]
    pub(super) fn reason(&self, source: &str) -> Option<&str> {
        self.refused.reason(source)
    }

    /// How many sources are refused.
    #[cfg(test)]
    pub(super) fn refused(&self) -> usize {
        self.refused.len()
    }
}

fn source(read: &Read) -> &str {
    match read {
        Ok((source, _)) => source,
        Err(r) => &r.source,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::validate_set;

    fn key(i: u8) -> PublicKey {
        PublicKey::from_bytes([i + 1; 32])
    }

    fn rec(name: &str, key_index: u8, cidrs: &[&str]) -> NodeRecord {
        NodeRecord {
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ..NodeRecord::new(name, key(key_index), "198.18.0.1:51871".parse().unwrap())
        }
    }

    fn ok(rec: NodeRecord) -> Read {
        Ok((format!("src/{}", rec.node_name), rec))
    }

    fn names(r: &Records) -> Vec<String> {
        r.snapshot().nodes.keys().cloned().collect()
    }

    #[test]
    fn a_conflict_refuses_both_until_it_is_resolved() {
        let mut r = Records::new(Origin::EtcdKey);
        r.put(ok(rec("a", 0, &["10.0.0.0/16"])));
        r.put(ok(rec("b", 1, &["10.0.1.0/24"])));
        r.put(ok(rec("c", 2, &["10.1.0.0/24"])));
        assert_eq!(names(&r), ["c"]);
        let why = r.reason("src/b").unwrap();
        assert!(
            why.contains("10.0.0.0/16") && why.contains("node a"),
            "{why}"
        );
        r.put(ok(rec("a", 0, &["10.2.0.0/16"])));
        assert_eq!(names(&r), ["a", "b", "c"]);
        assert_eq!(r.refused(), 0);
        r.put(ok(rec("d", 2, &["10.3.0.0/24"])));
        assert_eq!(names(&r), ["a", "b"]);
        assert!(r.reason("src/d").unwrap().contains("publicKey"));
        r.delete("src/c");
        assert_eq!(names(&r), ["a", "b", "d"]);
    }

    #[test]
    fn an_unchanged_record_leaves_the_snapshot_untouched() {
        let mut r = Records::new(Origin::EtcdKey);
        r.put(ok(rec("a", 0, &["10.0.0.0/24"])));
        r.put(ok(rec("b", 1, &["10.0.1.0/24"])));
        let before = r.snapshot();
        r.put(ok(rec("a", 0, &["10.0.0.0/24"])));
        r.replace([
            ok(rec("a", 0, &["10.0.0.0/24"])),
            ok(rec("b", 1, &["10.0.1.0/24"])),
        ]);
        assert!(before.nodes.ptr_eq(&r.snapshot().nodes));
    }

    #[test]
    fn a_relist_that_moves_a_cidr_refuses_nothing() {
        let mut r = Records::new(Origin::EtcdKey);
        r.put(ok(rec("a", 0, &["10.0.0.0/24"])));
        r.replace([ok(rec("b", 1, &["10.0.0.0/24"]))]);
        assert_eq!(names(&r), ["b"]);
        assert_eq!(r.refused(), 0);
    }

    #[test]
    fn an_unreadable_source_drops_its_record() {
        let mut r = Records::new(Origin::EtcdKey);
        r.put(ok(rec("a", 0, &["10.0.0.0/24"])));
        r.put(ok(rec("b", 0, &["10.0.1.0/24"])));
        assert!(names(&r).is_empty());
        r.put(Err(Rejected {
            source: "src/b".into(),
            node_name: Some("b".into()),
            reason: "invalid JSON".into(),
        }));
        assert_eq!(names(&r), ["a"]);
        assert_eq!(r.reason("src/b"), Some("invalid JSON"));
        r.delete("src/b");
        assert_eq!(r.refused(), 0);
    }

    /// A record from a small universe, so that keys and CIDRs collide often.
    fn arb_read() -> impl Strategy<Value = Read> {
        let cidr = prop_oneof![
            (0u8..2, 0u8..4, 15u8..=25).prop_map(|(a, b, len)| format!("10.{a}.{b}.0/{len}")),
            (0u8..2, 0u8..4, 30u8..=40).prop_map(|(a, b, len)| format!("fd00:{a}:{b}::/{len}")),
        ]
        .prop_map(|c| c.parse::<IpNet>().unwrap().trunc());
        let cidrs = proptest::collection::vec(cidr, 0..3);
        (
            0u8..6,
            0u8..5,
            proptest::option::of(0u8..5),
            cidrs,
            any::<bool>(),
        )
            .prop_map(|(node, k, next, pod_cidrs, unreadable)| {
                let name = format!("n{node}");
                let source = format!("src/{name}");
                if unreadable && k == 0 {
                    let reason = "invalid JSON".into();
                    let node_name = Some(name);
                    return Err(Rejected {
                        source,
                        node_name,
                        reason,
                    });
                }
                let rec = NodeRecord {
                    pod_cidrs,
                    next_public_key: next.map(key),
                    ..NodeRecord::new(name, key(k), "198.18.0.1:51871".parse().unwrap())
                };
                Ok((source, rec))
            })
    }

    fn arb_op() -> impl Strategy<Value = Option<Read>> {
        // `None` deletes the source of the previous put (or nothing).
        prop_oneof![3 => arb_read().prop_map(Some), 1 => Just(None)]
    }

    proptest! {
        /// After every put or delete, the incremental verdict is the one `validate_set` reaches
        /// on the whole set: the same accepted records and the same refused sources.
        #[test]
        fn incremental_verdicts_match_validate_set(
            ops in proptest::collection::vec(arb_op(), 1..40)
        ) {
            let mut r = Records::new(Origin::EtcdKey);
            let mut model: BTreeMap<String, Read> = BTreeMap::new();
            let mut last = String::new();
            for op in ops {
                match op {
                    Some(read) => {
                        last = source(&read).to_owned();
                        model.insert(last.clone(), read.clone());
                        r.put(read);
                    }
                    None => {
                        model.remove(&last);
                        r.delete(&last);
                    }
                }
                let set = model
                    .iter()
                    .filter_map(|(s, read)| {
                        let (_, rec) = read.as_ref().ok()?;
                        Some((rec.node_name.clone(), (s.clone(), rec.clone())))
                    })
                    .collect();
                let (accepted, conflicts) = validate_set(set);
                let got: BTreeMap<_, _> = r.snapshot().nodes.into_iter().collect();
                prop_assert_eq!(got, accepted);
                let unreadable = model.values().filter_map(|read| read.as_ref().err());
                let mut expected = 0;
                for refused in conflicts.iter().chain(unreadable) {
                    expected += 1;
                    prop_assert!(r.reason(&refused.source).is_some(), "{:?}", refused);
                }
                prop_assert_eq!(r.refused(), expected);
            }
        }
    }
}
