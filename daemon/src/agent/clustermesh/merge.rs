//! The pure half of the cluster mesh in the agent: which remote clusters of the config are in
//! force (in an order that never lets a newcomer displace a cluster already admitted), and the
//! one peer view made of the local store's snapshot and every admitted remote cluster's. No I/O.

use std::collections::{BTreeMap, BTreeSet};

use cluster_mesh::{Cluster, Conflict, Federation, KeyOwners};
use keymgr::{NodeRecord, PublicKey, Snapshot};

use crate::config::RemoteCluster;

/// Which of `wanted` are admitted next to `local`, and which refused with their conflict. The
/// clusters in force (`in_force`) are admitted first, in the config's order, then the
/// newcomers: a newcomer that collides with a cluster in force is the one refused, whatever its
/// place in the file. A name listed twice refuses the later entry.
pub fn admit(
    local: Cluster,
    wanted: &[RemoteCluster],
    in_force: &BTreeSet<String>,
) -> (Vec<RemoteCluster>, Vec<(RemoteCluster, Conflict)>) {
    let mut federation = Federation::new(local);
    let (mut admitted, mut refused) = (Vec::new(), Vec::new());
    let (old, new): (Vec<_>, Vec<_>) = wanted
        .iter()
        .partition(|r| in_force.contains(&r.cluster.name));
    for remote in old.into_iter().chain(new) {
        let c = &remote.cluster;
        let verdict = match federation.get(&c.name) {
            Some(existing) => Err(Conflict::DuplicateName {
                name: c.name.clone(),
                existing: existing.id,
                newcomer: c.id,
            }),
            None => federation.admit(c.clone()),
        };
        match verdict {
            Ok(()) => admitted.push(remote.clone()),
            Err(conflict) => refused.push((remote.clone(), conflict)),
        }
    }
    (admitted, refused)
}

/// One remote cluster's snapshot, as its follower last had it.
pub struct RemoteView<'a> {
    pub cluster: &'a str,
    pub snapshot: &'a Snapshot,
}

/// The peer view and what was refused on the way.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// The local nodes under their names, remote ones as `<cluster>/<node>`.
    pub snapshot: Snapshot,
    /// Per remote cluster, its records refused here, each with the reason.
    pub refused: BTreeMap<String, Vec<String>>,
}

/// The local nodes and every remote cluster's, keyed `<cluster>/<node>`. A remote record is
/// refused when it names another cluster than the store it was read from, or publishes a key
/// another node holds (local nodes hold theirs first; then clusters in name order).
pub fn merge<'a>(
    local_cluster: &str,
    local: &Snapshot,
    remotes: impl IntoIterator<Item = RemoteView<'a>>,
) -> Merged {
    let mut owners: KeyOwners<PublicKey> = KeyOwners::new();
    for (name, rec) in &local.nodes {
        // The local store has already refused local records that share a key.
        let _ = owners.claim_all(local_cluster, name, rec.keys().collect::<Vec<_>>());
    }
    let mut merged = Merged {
        snapshot: local.clone(),
        ..Merged::default()
    };
    for remote in remotes {
        let refused = merged.refused.entry(remote.cluster.to_owned()).or_default();
        for (node, rec) in &remote.snapshot.nodes {
            if let Err(why) = check(remote.cluster, node, rec, &mut owners) {
                refused.push(format!("node {node}: {why}"));
                continue;
            }
            let key = format!("{}/{node}", remote.cluster);
            merged.snapshot.nodes.insert(key, rec.clone());
        }
    }
    merged
}

fn check(
    cluster: &str,
    node: &str,
    rec: &NodeRecord,
    owners: &mut KeyOwners<PublicKey>,
) -> Result<(), String> {
    if rec.cluster_name != cluster {
        return Err(format!(
            "clusterName {:?} in the store of cluster {cluster:?}; refused",
            rec.cluster_name
        ));
    }
    owners
        .claim_all(cluster, node, rec.keys().collect::<Vec<_>>())
        .map_err(|c| c.to_string())
}

/// The node name a merged key stands for in `cluster` (`None`: not that cluster's).
pub fn remote_node<'a>(key: &'a str, cluster: &str) -> Option<&'a str> {
    key.strip_prefix(cluster)?.strip_prefix('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RemoteStoreConfig;
    use cluster_mesh::ClusterId;
    use keymgr::PrivateKey;

    fn cluster(name: &str, id: u32, cidr: &str) -> Cluster {
        Cluster {
            name: name.into(),
            id: ClusterId::new(id).unwrap(),
            pod_cidrs: vec![cidr.parse().unwrap()],
        }
    }

    fn remote(name: &str, id: u32, cidr: &str) -> RemoteCluster {
        RemoteCluster {
            cluster: cluster(name, id, cidr),
            store: RemoteStoreConfig::Dir {
                path: format!("/stores/{name}").into(),
            },
        }
    }

    fn names(rs: &[RemoteCluster]) -> Vec<&str> {
        rs.iter().map(|r| r.cluster.name.as_str()).collect()
    }

    #[test]
    fn a_newcomer_that_collides_is_refused_wherever_it_is_listed() {
        let local = cluster("c1", 1, "10.244.0.0/17");
        let c2 = remote("c2", 2, "10.244.128.0/17");
        let (admitted, refused) = admit(local.clone(), std::slice::from_ref(&c2), &BTreeSet::new());
        assert_eq!(names(&admitted), ["c2"]);
        assert!(refused.is_empty());

        // c3 reuses c2's ID and is listed first: c2, in force, keeps its place.
        let c3 = remote("c3", 2, "10.245.0.0/16");
        let in_force = BTreeSet::from(["c2".to_string()]);
        let (admitted, refused) = admit(local.clone(), &[c3.clone(), c2.clone()], &in_force);
        assert_eq!(names(&admitted), ["c2"]);
        assert_eq!(refused.len(), 1);
        let why = refused[0].1.to_string();
        assert!(why.contains("c2") && why.contains("c3"), "{why}");
        // The control: with nothing in force, the first listed wins.
        let (admitted, _) = admit(local.clone(), &[c3.clone(), c2.clone()], &BTreeSet::new());
        assert_eq!(names(&admitted), ["c3"]);

        // An overlap with the local pool, and a name listed twice.
        let c4 = remote("c4", 4, "10.244.64.0/18");
        let again = remote("c2", 2, "10.246.0.0/16");
        let (admitted, refused) = admit(local, &[c2, c4, again], &in_force);
        assert_eq!(names(&admitted), ["c2"]);
        let reasons: Vec<String> = refused.iter().map(|(_, c)| c.to_string()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons.iter().any(|r| r.contains("10.244.64.0/18")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("name \"c2\" is taken")),
            "{reasons:?}"
        );
    }

    fn rec(cluster: &str, name: &str, n: u8) -> NodeRecord {
        NodeRecord {
            cluster_name: cluster.into(),
            pod_cidrs: vec![format!("10.244.{n}.0/24").parse().unwrap()],
            ..NodeRecord::new(
                name,
                PrivateKey::generate().public_key(),
                format!("198.18.0.{n}:51871").parse().unwrap(),
            )
        }
    }

    fn snap(recs: &[NodeRecord]) -> Snapshot {
        Snapshot {
            nodes: recs
                .iter()
                .map(|r| (r.node_name.clone(), r.clone()))
                .collect(),
        }
    }

    #[test]
    fn remote_nodes_join_under_their_cluster_and_impostors_are_refused() {
        let local = snap(&[rec("c1", "node-1", 1), rec("c1", "node-2", 2)]);
        let mut thief = rec("c2", "node-9", 9);
        thief.public_key = local.nodes["node-1"].public_key;
        let mut other = rec("c2", "node-8", 8);
        other.cluster_name = "c3".into();
        // Node names may repeat across clusters.
        let c2 = snap(&[rec("c2", "node-1", 3), rec("c2", "node-4", 4), thief, other]);
        let m = merge(
            "c1",
            &local,
            [RemoteView {
                cluster: "c2",
                snapshot: &c2,
            }],
        );
        let keys: Vec<&String> = m.snapshot.nodes.keys().collect();
        assert_eq!(keys, ["c2/node-1", "c2/node-4", "node-1", "node-2"]);
        let refused = &m.refused["c2"];
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused
            .iter()
            .any(|r| r.contains("node-8") && r.contains("\"c3\"")));
        assert!(refused
            .iter()
            .any(|r| r.contains("node-9") && r.contains("node \"node-1\" of cluster \"c1\"")));
        assert_eq!(remote_node("c2/node-4", "c2"), Some("node-4"));
        assert_eq!(remote_node("c22/node-4", "c2"), None);
    }
}
