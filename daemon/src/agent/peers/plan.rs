//! From the store's view of the cluster to changes of the device: a pure diff between the peers
//! in force and the peers wanted, touching only what changed so that every other peer's session
//! carries on undisturbed.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use keymgr::NodeRecord;

use wiremesh_datapath::model::{PeerChange, SetRequest};

#[derive(Debug, Default)]
pub struct Plan {
    pub set: SetRequest,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.set.peers.is_empty()
    }
}

/// The peers wanted: every valid record but this node's own.
pub fn desired<'a>(
    nodes: impl IntoIterator<Item = (&'a String, &'a NodeRecord)>,
    self_name: &str,
) -> BTreeMap<String, NodeRecord> {
    nodes
        .into_iter()
        .filter(|(n, _)| n.as_str() != self_name)
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect()
}

pub fn plan(
    current: &BTreeMap<String, NodeRecord>,
    desired: &BTreeMap<String, NodeRecord>,
    keepalive: u16,
) -> Plan {
    let mut plan = Plan::default();
    for (name, old) in current {
        match desired.get(name) {
            None => {
                plan.set.peers.push(PeerChange::removal(old.public_key));
                plan.removed.push(name.clone());
            }
            // A key that is not the announced successor: a new identity, not a rotation.
            Some(new) if new.public_key != old.public_key && !is_successor(old, new) => {
                plan.set.peers.push(PeerChange::removal(old.public_key));
            }
            Some(_) => {}
        }
    }
    for (name, new) in desired {
        let change = match current.get(name) {
            None => {
                plan.added.push(name.clone());
                full_peer(new, keepalive)
            }
            // Naming the peer by its successor key makes the data path promote that key,
            // keeping the sessions already made with it.
            Some(old) if old.public_key != new.public_key => {
                plan.changed.push(name.clone());
                full_peer(new, keepalive)
            }
            Some(old)
                if old.endpoint != new.endpoint
                    || old.pod_cidrs != new.pod_cidrs
                    || old.next_public_key != new.next_public_key =>
            {
                plan.changed.push(name.clone());
                let mut c = PeerChange::new(new.public_key);
                c.update_only = true;
                c.endpoint = Some(new.endpoint);
                c.replace_allowed_ips = true;
                c.allowed_ips = new.pod_cidrs.clone();
                c.next_public_key = Some(new.next_public_key);
                c
            }
            Some(_) => continue,
        };
        plan.set.peers.push(change);
    }
    plan
}

fn is_successor(old: &NodeRecord, new: &NodeRecord) -> bool {
    old.next_public_key == Some(new.public_key)
}

fn full_peer(rec: &NodeRecord, keepalive: u16) -> PeerChange {
    let mut c = PeerChange::new(rec.public_key);
    c.endpoint = Some(rec.endpoint);
    c.persistent_keepalive = Some(keepalive);
    c.replace_allowed_ips = true;
    c.allowed_ips = rec.pod_cidrs.clone();
    c.next_public_key = Some(rec.next_public_key);
    c
}

/// The routes the interface must carry: every peer's pod CIDRs.
pub fn routes(peers: &BTreeMap<String, NodeRecord>) -> BTreeSet<IpNet> {
    peers
        .values()
        .flat_map(|r| r.pod_cidrs.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keymgr::PrivateKey;

    fn rec(name: &str, n: u8) -> NodeRecord {
        let key = PrivateKey::generate().public_key();
        NodeRecord {
            pod_cidrs: vec![format!("10.244.{n}.0/24").parse().unwrap()],
            ..NodeRecord::new(name, key, format!("198.18.0.{n}:51871").parse().unwrap())
        }
    }

    fn map(recs: &[NodeRecord]) -> BTreeMap<String, NodeRecord> {
        recs.iter()
            .map(|r| (r.node_name.clone(), r.clone()))
            .collect()
    }

    #[test]
    fn own_record_is_not_a_peer() {
        let all = map(&[rec("a", 1), rec("b", 2)]);
        assert_eq!(desired(&all, "a").keys().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn unchanged_peers_are_not_touched() {
        let (a, b, c) = (rec("a", 1), rec("b", 2), rec("c", 3));
        let current = map(&[a.clone(), b.clone()]);
        let mut b2 = b.clone();
        b2.endpoint = "198.18.0.9:51871".parse().unwrap();
        let p = plan(&current, &map(&[a.clone(), b2.clone(), c.clone()]), 0);
        assert_eq!(p.added, vec!["c"]);
        assert_eq!(p.changed, vec!["b"]);
        assert!(p.removed.is_empty());
        // a is untouched; b is updated in place (update_only keeps its session); c is added.
        assert_eq!(p.set.peers.len(), 2);
        assert!(p.set.peers.iter().all(|c| c.public_key != a.public_key));
        let b_change = p
            .set
            .peers
            .iter()
            .find(|c| c.public_key == b.public_key)
            .unwrap();
        assert!(b_change.update_only && !b_change.remove);
        assert_eq!(b_change.endpoint, Some(b2.endpoint));
    }

    #[test]
    fn key_change_replaces_the_peer_and_removal_removes_it() {
        let (a, b) = (rec("a", 1), rec("b", 2));
        let mut a2 = a.clone();
        a2.public_key = PrivateKey::generate().public_key();
        let p = plan(&map(&[a.clone(), b.clone()]), &map(&[a2.clone()]), 25);
        assert_eq!(p.removed, vec!["b"]);
        assert_eq!(p.changed, vec!["a"]);
        let removed: Vec<_> = p
            .set
            .peers
            .iter()
            .filter(|c| c.remove)
            .map(|c| c.public_key)
            .collect();
        assert!(removed.contains(&a.public_key) && removed.contains(&b.public_key));
        let added = p.set.peers.iter().find(|c| !c.remove).unwrap();
        assert_eq!(added.public_key, a2.public_key);
        assert_eq!(added.persistent_keepalive, Some(25));
    }

    #[test]
    fn a_rotation_announces_then_promotes_without_removing_the_peer() {
        let a = rec("a", 1);
        let next = PrivateKey::generate().public_key();
        let mut announced = a.clone();
        announced.next_public_key = Some(next);
        let p = plan(
            &map(std::slice::from_ref(&a)),
            &map(std::slice::from_ref(&announced)),
            0,
        );
        assert_eq!(p.set.peers.len(), 1);
        assert!(!p.set.peers[0].remove && p.set.peers[0].update_only);
        assert_eq!(p.set.peers[0].next_public_key, Some(Some(next)));

        let mut committed = announced.clone();
        committed.public_key = next;
        committed.next_public_key = None;
        committed.key_epoch += 1;
        let p = plan(&map(&[announced]), &map(&[committed]), 0);
        assert!(
            p.set.peers.iter().all(|c| !c.remove),
            "a committed rotation must not remove the peer"
        );
        assert_eq!(p.set.peers[0].public_key, next);
        assert_eq!(p.set.peers[0].next_public_key, Some(None));
    }

    #[test]
    fn routes_are_all_peer_pod_cidrs() {
        let r = routes(&map(&[rec("a", 1), rec("b", 2)]));
        assert_eq!(r.len(), 2);
    }
}
