//! `clusterID` and `clusterMesh:`: each remote cluster's name, ID, pod pools and store, checked
//! one by one. Whether clusters collide with each other (a name or ID taken twice, pools that
//! overlap) is not a config error: the agent refuses the newcomer at run time and keeps the
//! rest, so that a bad entry added on reload never takes down the clusters in force.

use cluster_mesh::{Cluster, ClusterId};

use super::store::etcd_config;
use super::validate::cidrs;
use super::{ClusterMeshSection, RemoteCluster, RemoteClusterSection, RemoteStoreConfig};

pub(super) fn cluster_id(raw: Option<u32>, errors: &mut Vec<String>) -> Option<ClusterId> {
    let id = raw?;
    let checked = ClusterId::new(id);
    if checked.is_none() {
        errors.push(format!("clusterID: {id} is out of range (1-255)"));
    }
    checked
}

pub(super) fn cluster_mesh(
    raw: Option<ClusterMeshSection>,
    errors: &mut Vec<String>,
) -> Vec<RemoteCluster> {
    let clusters = raw.map(|m| m.clusters).unwrap_or_default();
    clusters
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| remote(&format!("clusterMesh.clusters[{i}]"), c, errors))
        .collect()
}

fn remote(key: &str, raw: RemoteClusterSection, errors: &mut Vec<String>) -> Option<RemoteCluster> {
    let before = errors.len();
    if !policy::names::is_dns_subdomain(&raw.name) || raw.name.contains('.') {
        errors.push(format!(
            "{key}.name: {:?} is not a lowercase RFC 1123 label (its clusterName)",
            raw.name
        ));
    }
    let id = ClusterId::new(raw.id);
    if id.is_none() {
        errors.push(format!(
            "{key}.id: {} is out of range (1-255; its clusterID)",
            raw.id
        ));
    }
    let pod_cidrs = cidrs(
        &format!("{key}.podCIDRs"),
        Some(raw.pod_cidrs),
        "10.245.0.0/16",
        errors,
    );
    if pod_cidrs.is_empty() && errors.len() == before {
        errors.push(format!(
            "{key}.podCIDRs: empty; list the cluster's clusterPodCIDRs (its nodes' pod CIDRs must \
             lie inside them)"
        ));
    }
    let store = match (raw.etcd, raw.dir) {
        (Some(etcd), None) => Some(RemoteStoreConfig::Etcd(etcd_config(
            &format!("{key}.etcd"),
            Some(etcd),
            errors,
        ))),
        (None, Some(dir)) if dir.path.is_absolute() => {
            Some(RemoteStoreConfig::Dir { path: dir.path })
        }
        (None, Some(dir)) => {
            errors.push(format!(
                "{key}.dir.path: {:?} must be an absolute path",
                dir.path
            ));
            None
        }
        (Some(_), Some(_)) => {
            errors.push(format!(
                "{key}: both etcd and dir are set; give exactly one store"
            ));
            None
        }
        (None, None) => {
            errors.push(format!(
                "{key}: no store; give etcd ({{endpoints, prefix, tls}}) or dir ({{path}})"
            ));
            None
        }
    };
    if errors.len() != before {
        return None;
    }
    Some(RemoteCluster {
        cluster: Cluster {
            name: raw.name,
            id: id?,
            pod_cidrs,
        },
        store: store?,
    })
}
