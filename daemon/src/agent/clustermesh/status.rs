//! The cluster mesh's status as `wiremesh clustermesh status` shows it: per remote cluster,
//! admitted or refused (and why), its store's health, its nodes, refused records, last sync.

use std::time::SystemTime;

use cluster_mesh::Cluster;
use keymgr::store::StoreHealth;
use keymgr::Snapshot;

use super::merge::remote_node;
use super::{ClusterMesh, Remote};
use crate::api::clustermesh::RemoteClusterStatus;
use crate::api::status::rfc3339;
use crate::api::ClusterMeshStatus;
use crate::config::RemoteStoreConfig;

impl ClusterMesh {
    pub(super) fn publish(&self, merged: &Snapshot) {
        let mut clusters: Vec<RemoteClusterStatus> = self
            .remotes
            .iter()
            .map(|(name, r)| self.remote_status(name, r, merged))
            .collect();
        clusters.extend(
            self.refused
                .iter()
                .map(|(r, conflict)| RemoteClusterStatus {
                    state: "refused".into(),
                    refusal: Some(conflict.to_string()),
                    ..describe(&r.cluster, store_text(&r.store))
                }),
        );
        self.status.send_replace(ClusterMeshStatus {
            local: self.local.clone(),
            clusters,
            reloaded: self.reloaded.map(rfc3339),
            reload_error: self.reload_error.clone(),
        });
    }

    fn remote_status(&self, name: &str, r: &Remote, merged: &Snapshot) -> RemoteClusterStatus {
        let nodes = merged
            .nodes
            .keys()
            .filter(|k| remote_node(k, name).is_some())
            .count();
        let (store, health) = match &r.store {
            Ok(f) => (f.store.describe(), f.health.borrow().clone()),
            Err(e) => (
                store_text(&r.config.store),
                StoreHealth::Unreachable {
                    since: SystemTime::now(),
                    error: e.clone(),
                },
            ),
        };
        let (connected, since, last_error) = match health {
            StoreHealth::Connected => (true, r.connected_since, None),
            StoreHealth::Unreachable { since, error } => (false, Some(since), Some(error)),
            StoreHealth::Conflict { owner } => (false, None, Some(format!("conflict: {owner}"))),
        };
        RemoteClusterStatus {
            state: "admitted".into(),
            connected,
            since: since.map(rfc3339),
            last_error,
            nodes,
            refused_records: self.refused_records.get(name).cloned().unwrap_or_default(),
            last_sync: r.last_sync.map(rfc3339),
            ..describe(&r.config.cluster, store)
        }
    }
}

fn describe(c: &Cluster, store: String) -> RemoteClusterStatus {
    RemoteClusterStatus {
        name: c.name.clone(),
        id: c.id.get(),
        pod_cidrs: c.pod_cidrs.iter().map(ToString::to_string).collect(),
        store,
        ..RemoteClusterStatus::default()
    }
}

fn store_text(s: &RemoteStoreConfig) -> String {
    match s {
        RemoteStoreConfig::Dir { path } => format!("dir:{}", path.display()),
        RemoteStoreConfig::Etcd(e) => format!("etcd:{}{}", e.endpoints.join(","), e.prefix),
    }
}
