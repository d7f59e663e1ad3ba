//! The valid records every backend hands out, kept incrementally. A change to one source (an etcd
//! key, a file, a Node) revisits only its record and the records that share a key, a pod CIDR
//! range or an underlay address with it, in O(log n) each, and a [`Snapshot`] is an O(1) clone of
//! a persistent map that shares its structure with the previous one. So a thousand nodes joining
//! cost each agent a thousand small patches rather than a thousand rebuilds of the whole set.
//!
//! A conflict refuses only the younger record (`crate::admission`): records are judged oldest
//! first, so a change can ripple only towards younger records, and only through records whose
//! verdict it changed.
//!
//! [`crate::validate_set`] states the same rules over a whole set at once; the tests hold this
//! structure to it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Bound;

use imbl::OrdMap;
use ipnet::IpNet;

use super::refused::{Origin, RejectionReporter};
use super::Snapshot;
use crate::admission::{conflict, Admission, Seniority};
use crate::{NodeRecord, PublicKey, RecordError, Rejected};

/// One source as read: its name, the record's seniority and the record, or why it is refused.
pub(super) type Read = Result<(String, Seniority, NodeRecord), Rejected>;

/// Where a record stands in the judging order: older first, then by name.
type Rank = (Seniority, String);

#[derive(Debug)]
pub(super) struct Records {
    /// What this reader admits beyond the records' own rules.
    admission: Admission,
    /// Every source as last read: the node whose record it holds, `None` when it is refused.
    sources: HashMap<String, Option<String>>,
    /// Readable records by node name, with their source and seniority, whether accepted or not.
    nodes: HashMap<String, (String, Seniority, NodeRecord)>,
    /// Who publishes each key (published or successor).
    by_key: HashMap<PublicKey, BTreeSet<String>>,
    /// Who claims each pod CIDR. CIDRs are nested or disjoint, so the ones overlapping a CIDR are
    /// its supernets (one lookup per shorter prefix length) and its subnets (a range).
    by_cidr: BTreeMap<IpNet, BTreeSet<String>>,
    /// Whose underlay address (endpoint or node IP) each address is.
    by_addr: BTreeMap<IpAddr, BTreeSet<String>>,
    /// The records in force: what [`Records::snapshot`] hands out.
    accepted: OrdMap<String, NodeRecord>,
    refused: RejectionReporter,
}

impl Records {
    pub(super) fn new(origin: Origin, admission: Admission) -> Self {
        Self {
            admission,
            sources: HashMap::new(),
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            by_cidr: BTreeMap::new(),
            by_addr: BTreeMap::new(),
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
        let (source, seniority, rec) = match read {
            Ok(ok) => ok,
            Err(rejected) => {
                self.set(&rejected.source, None);
                self.sources.insert(rejected.source.clone(), None);
                self.refused.refuse(rejected);
                return;
            }
        };
        let name = rec.node_name.clone();
        let refuse = |reason: String| Rejected {
            source: source.clone(),
            node_name: Some(name.clone()),
            reason,
        };
        if let Err(e) = self.admission.admit(&rec) {
            return self.put(Err(refuse(e.to_string())));
        }
        match self.nodes.get(&name) {
            Some((s, n, r)) if *s == source && *n == seniority && *r == rec => return,
            // Backends name a source after its node, so this takes a corrupt listing; refuse the
            // newcomer rather than let two sources fight over one name.
            Some((other, _, _)) if *other != source => {
                let reason = format!("node {name} is already published at {other}");
                return self.put(Err(refuse(reason)));
            }
            _ => {}
        }
        self.set(&source, Some((seniority, rec)));
        self.sources.insert(source, Some(name));
    }

    pub(super) fn delete(&mut self, source: &str) {
        self.set(source, None);
        self.sources.remove(source);
        self.refused.clear(source);
    }

    /// Replaces the record `source` holds with `new`, then judges again every record whose
    /// verdict may have changed: the old and the new record, everything either conflicts with,
    /// and (see [`Records::settle`]) whatever a changed verdict ripples to.
    fn set(&mut self, source: &str, new: Option<(Seniority, NodeRecord)>) {
        let mut revisit = BTreeSet::new();
        if let Some(Some(name)) = self.sources.get(source) {
            let name = name.clone();
            if let Some((_, seniority, old)) = self.nodes.remove(&name) {
                self.unindex(&name, &old);
                revisit.extend(self.ranked(self.conflicting(&name, &old)));
                // Gone records are judged too, which takes them out of the snapshot.
                revisit.insert((seniority, name));
            }
        }
        if let Some((seniority, rec)) = new {
            let name = rec.node_name.clone();
            self.index(&name, &rec);
            revisit.extend(self.ranked(self.conflicting(&name, &rec)));
            self.nodes
                .insert(name.clone(), (source.to_owned(), seniority, rec));
            revisit.insert((seniority, name));
        }
        self.settle(revisit);
    }

    /// Judges the records of `work` oldest first. A verdict depends only on older records, so
    /// when one changes, only the younger records it conflicts with need judging again; they
    /// join the queue behind it, and each record is settled once its elders are.
    fn settle(&mut self, mut work: BTreeSet<Rank>) {
        while let Some((seniority, name)) = work.pop_first() {
            let current = self.nodes.get(&name).map(|(_, s, _)| *s);
            // Queued under the seniority of a record since replaced: judge it in its new place.
            if let Some(now) = current.filter(|now| *now != seniority) {
                work.insert((now, name));
                continue;
            }
            if !self.judge(&name) {
                continue;
            }
            let Some((_, _, rec)) = self.nodes.get(&name) else {
                continue;
            };
            let me = (seniority, name.clone());
            let younger = self.ranked(self.conflicting(&name, rec));
            work.extend(younger.into_iter().filter(|r| *r > me));
        }
    }

    /// Accepts or refuses `name` by the older records in force it conflicts with, touching the
    /// snapshot only if its verdict or record changed. `true` when whether it is in force
    /// changed.
    fn judge(&mut self, name: &str) -> bool {
        let was = self.accepted.contains_key(name);
        let Some((source, _, rec)) = self.nodes.get(name) else {
            self.accepted.remove(name);
            return was;
        };
        match self.elder_conflict(name) {
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
                if was {
                    self.accepted.remove(name);
                }
            }
        }
        was != self.accepted.contains_key(name)
    }

    /// The conflict of `name` with the oldest record in force that is older than it, if any.
    fn elder_conflict(&self, name: &str) -> Option<RecordError> {
        let (_, seniority, rec) = self.nodes.get(name)?;
        let me = (*seniority, name.to_owned());
        let elder = self
            .ranked(self.conflicting(name, rec))
            .into_iter()
            .take_while(|r| *r < me)
            .find(|(_, n)| self.accepted.contains_key(n))?;
        let (_, _, older) = self.nodes.get(&elder.1)?;
        conflict(rec, older)
    }

    /// `names` in judging order.
    fn ranked(&self, names: BTreeSet<String>) -> BTreeSet<Rank> {
        names
            .into_iter()
            .filter_map(|n| {
                let (_, seniority, _) = self.nodes.get(&n)?;
                Some((*seniority, n))
            })
            .collect()
    }

    /// Every node other than `name` that shares a key, an overlapping pod CIDR or an underlay
    /// address inside a pod CIDR with `rec`, either way round.
    fn conflicting(&self, name: &str, rec: &NodeRecord) -> BTreeSet<String> {
        let by_key = rec.keys().filter_map(|k| self.by_key.get(&k)).flatten();
        let by_cidr = rec.pod_cidrs.iter().flat_map(|&c| self.overlapping(c));
        let covered = rec.pod_cidrs.iter().flat_map(|&c| self.addresses_in(c));
        let covering = rec
            .underlay()
            .flat_map(|(_, a)| self.overlapping(IpNet::from(a)));
        by_key
            .chain(by_cidr.map(|(_, n)| n))
            .chain(covered)
            .chain(covering.map(|(_, n)| n))
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
        let subnets = self
            .by_cidr
            .range((Bound::Excluded(cidr), Bound::Included(last(cidr))));
        supernets
            .chain(subnets)
            .flat_map(|(c, names)| names.iter().map(move |n| (*c, n)))
    }

    /// The nodes with an underlay address inside `cidr`.
    fn addresses_in(&self, cidr: IpNet) -> impl Iterator<Item = &String> {
        let range = self.by_addr.range(cidr.network()..=cidr.broadcast());
        range.flat_map(|(_, names)| names.iter())
    }

    fn index(&mut self, name: &str, rec: &NodeRecord) {
        for key in rec.keys() {
            self.by_key.entry(key).or_default().insert(name.to_owned());
        }
        for &cidr in &rec.pod_cidrs {
            let names = self.by_cidr.entry(cidr).or_default();
            names.insert(name.to_owned());
        }
        for (_, addr) in rec.underlay() {
            let names = self.by_addr.entry(addr).or_default();
            names.insert(name.to_owned());
        }
    }

    fn unindex(&mut self, name: &str, rec: &NodeRecord) {
        for key in rec.keys() {
            self.by_key.unlist(&key, name);
        }
        for cidr in &rec.pod_cidrs {
            self.by_cidr.unlist(cidr, name);
        }
        for (_, addr) in rec.underlay() {
            self.by_addr.unlist(&addr, name);
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

/// The last address-ordered CIDR inside `cidr`: its broadcast address as a host route.
fn last(cidr: IpNet) -> IpNet {
    IpNet::new(cidr.broadcast(), cidr.max_prefix_len())
        .expect("the maximum prefix length is valid for its own family")
}

/// The indexes from a key, CIDR or address to the names that hold it: `unlist` takes one name
/// off a key's list, and the list off the index once empty.
trait NameIndex<K> {
    fn unlist(&mut self, key: &K, name: &str);
}

impl<K: Ord> NameIndex<K> for BTreeMap<K, BTreeSet<String>> {
    fn unlist(&mut self, key: &K, name: &str) {
        if let Some(names) = self.get_mut(key) {
            names.remove(name);
            if names.is_empty() {
                self.remove(key);
            }
        }
    }
}

impl<K: Eq + std::hash::Hash> NameIndex<K> for HashMap<K, BTreeSet<String>> {
    fn unlist(&mut self, key: &K, name: &str) {
        if let Some(names) = self.get_mut(key) {
            names.remove(name);
            if names.is_empty() {
                self.remove(key);
            }
        }
    }
}

fn source(read: &Read) -> &str {
    match read {
        Ok((source, _, _)) => source,
        Err(r) => &r.source,
    }
}

#[cfg(test)]
mod tests;
