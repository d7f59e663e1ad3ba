//! The cluster mesh's pure core: which clusters form the mesh and which newcomers are refused.
//!
//! Each cluster keeps its own store; an agent reads the others' read-only and joins what it
//! learns into one view. Before anything from a remote cluster is used, it must not collide
//! with what is already in force: a second cluster with a name or cluster ID already taken,
//! pod CIDRs overlapping another cluster's, or a node key already held by another node. The
//! rule is the fail-closed one: the newcomer is refused (with a [`Conflict`] naming both sides)
//! and everything in force stays as it was. No I/O here: the agent feeds in what the stores
//! say and acts on the answers. (Not wired into the agent yet: issue 12.)

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

/// A cluster's numeric ID, 1–255 (as Cilium's `cluster-id`): it goes into identities so that
/// they are unique mesh-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(u8);

impl ClusterId {
    /// `None` for 0 (which means "no cluster mesh") and anything above 255.
    pub fn new(id: u32) -> Option<Self> {
        u8::try_from(id).ok().filter(|&i| i != 0).map(Self)
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the mesh knows of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub id: ClusterId,
    /// The cluster's whole pod address pool(s) (its `clusterPodCIDRs`).
    pub pod_cidrs: Vec<IpNet>,
}

/// Why a newcomer was refused. Each names both sides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error(
        "cluster name {name:?} is taken (cluster ID {existing}); refused the one with ID {newcomer}"
    )]
    DuplicateName {
        name: String,
        existing: ClusterId,
        newcomer: ClusterId,
    },
    #[error("cluster ID {id} is taken by cluster {existing:?}; refused cluster {newcomer:?}")]
    DuplicateId {
        id: ClusterId,
        existing: String,
        newcomer: String,
    },
    #[error(
        "pod CIDR {newcomer_cidr} of cluster {newcomer:?} overlaps {existing_cidr} of cluster \
         {existing:?}; refused {newcomer:?}"
    )]
    OverlappingCidrs {
        existing: String,
        existing_cidr: IpNet,
        newcomer: String,
        newcomer_cidr: IpNet,
    },
    #[error(
        "node {newcomer_node:?} of cluster {newcomer:?} publishes the key of node \
         {existing_node:?} of cluster {existing:?}; refused the record"
    )]
    SharedKey {
        existing: String,
        existing_node: String,
        newcomer: String,
        newcomer_node: String,
    },
}

/// The clusters in force, the local one among them.
#[derive(Debug, Clone)]
pub struct Federation {
    local: String,
    clusters: BTreeMap<String, Cluster>,
}

impl Federation {
    pub fn new(local: Cluster) -> Self {
        let name = local.name.clone();
        Self {
            local: name.clone(),
            clusters: BTreeMap::from([(name, local)]),
        }
    }

    pub fn local(&self) -> &Cluster {
        &self.clusters[&self.local]
    }

    pub fn get(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters.values()
    }

    /// Admits `newcomer`, or refuses it and changes nothing. Admitting a remote cluster again
    /// with the same ID (its pools changing) replaces it if the new pools collide with no other
    /// cluster's.
    pub fn admit(&mut self, newcomer: Cluster) -> Result<(), Conflict> {
        for other in self.clusters.values() {
            if other.name == newcomer.name {
                if other.id != newcomer.id || other.name == self.local {
                    return Err(Conflict::DuplicateName {
                        name: newcomer.name,
                        existing: other.id,
                        newcomer: newcomer.id,
                    });
                }
                continue;
            }
            if other.id == newcomer.id {
                return Err(Conflict::DuplicateId {
                    id: newcomer.id,
                    existing: other.name.clone(),
                    newcomer: newcomer.name,
                });
            }
            if let Some((existing_cidr, newcomer_cidr)) =
                overlap(&other.pod_cidrs, &newcomer.pod_cidrs)
            {
                return Err(Conflict::OverlappingCidrs {
                    existing: other.name.clone(),
                    existing_cidr,
                    newcomer: newcomer.name,
                    newcomer_cidr,
                });
            }
        }
        self.clusters.insert(newcomer.name.clone(), newcomer);
        Ok(())
    }

    /// Removes a remote cluster (it left the config). The local cluster cannot be removed.
    pub fn remove(&mut self, name: &str) -> Option<Cluster> {
        if name == self.local {
            return None;
        }
        self.clusters.remove(name)
    }

    /// The cluster whose pod pools hold `ip`, if any.
    pub fn cluster_of(&self, ip: std::net::IpAddr) -> Option<&Cluster> {
        self.clusters
            .values()
            .find(|c| c.pod_cidrs.iter().any(|n| n.contains(&ip)))
    }
}

/// The first pair of networks, one from each side, that share an address.
fn overlap(a: &[IpNet], b: &[IpNet]) -> Option<(IpNet, IpNet)> {
    a.iter().find_map(|x| {
        b.iter()
            .find(|y| x.contains(&y.network()) || y.contains(&x.network()))
            .map(|y| (*x, *y))
    })
}

/// Which node holds each WireGuard key across the mesh: a key is one node's, whichever cluster
/// it is in, so a record that publishes a key another node holds is refused.
#[derive(Debug, Clone, Default)]
pub struct KeyOwners<K> {
    owners: BTreeMap<K, (String, String)>,
}

impl<K: Ord + Clone> KeyOwners<K> {
    pub fn new() -> Self {
        Self {
            owners: BTreeMap::new(),
        }
    }

    /// Records that `node` of `cluster` holds `key`, or refuses if another node holds it.
    /// Claiming the key a node already holds again is fine.
    pub fn claim(&mut self, cluster: &str, node: &str, key: K) -> Result<(), Conflict> {
        match self.owners.get(&key) {
            Some((c, n)) if c == cluster && n == node => Ok(()),
            Some((c, n)) => Err(Conflict::SharedKey {
                existing: c.clone(),
                existing_node: n.clone(),
                newcomer: cluster.to_owned(),
                newcomer_node: node.to_owned(),
            }),
            None => {
                self.owners
                    .insert(key, (cluster.to_owned(), node.to_owned()));
                Ok(())
            }
        }
    }

    /// Claims every key of `keys` for `node` of `cluster`, or none of them: the first key
    /// another node holds refuses the lot.
    pub fn claim_all(
        &mut self,
        cluster: &str,
        node: &str,
        keys: impl IntoIterator<Item = K> + Clone,
    ) -> Result<(), Conflict> {
        for key in keys.clone() {
            match self.owners.get(&key) {
                Some((c, n)) if !(c == cluster && n == node) => {
                    return Err(Conflict::SharedKey {
                        existing: c.clone(),
                        existing_node: n.clone(),
                        newcomer: cluster.to_owned(),
                        newcomer_node: node.to_owned(),
                    })
                }
                _ => {}
            }
        }
        for key in keys {
            self.owners
                .insert(key, (cluster.to_owned(), node.to_owned()));
        }
        Ok(())
    }

    /// Forgets `key` if `node` of `cluster` holds it (a node gone, or rotated to a new key).
    pub fn release(&mut self, cluster: &str, node: &str, key: &K) {
        if self
            .owners
            .get(key)
            .is_some_and(|(c, n)| c == cluster && n == node)
        {
            self.owners.remove(key);
        }
    }

    /// Forgets every key of `cluster` (it left the mesh).
    pub fn release_cluster(&mut self, cluster: &str) {
        self.owners.retain(|_, (c, _)| c != cluster);
    }
}

#[cfg(test)]
mod tests;
