//! The cluster mesh in the agent: one read-only follower per admitted remote cluster
//! (`keymgr::store::RemoteStore`), the refusals, the merged peer view the event loop
//! reconciles, and the status `wiremesh clustermesh status` shows. `merge.rs` is the pure part.
//!
//! The config's `clusterMesh` is applied at start and again on every `SIGHUP`
//! ([`ClusterMesh::apply`]): clusters join and leave without a restart. A refused cluster is
//! a WARN naming both sides, shown in status, and changes nothing in force.

pub mod merge;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use cluster_mesh::{Cluster, Conflict};
use keymgr::store::{RemoteStore, StoreHealth};
use keymgr::{Admission, NodeRecord, Snapshot};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::api::clustermesh::{LocalCluster, RemoteClusterStatus};
use crate::api::status::rfc3339;
use crate::api::ClusterMeshStatus;
use crate::config::{Config, RemoteCluster, RemoteStoreConfig};
use merge::{admit, merge, remote_node, RemoteView};

/// One admitted remote cluster and its follower.
struct Remote {
    config: RemoteCluster,
    /// The follower, or why it could not be started (retried on every resync).
    store: Result<Follower, String>,
    /// When its view last changed, or its store was (re)connected and listed.
    last_sync: Option<SystemTime>,
    connected_since: Option<SystemTime>,
}

struct Follower {
    store: RemoteStore,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    health: watch::Receiver<StoreHealth>,
    /// Pokes the event loop on every change of the two above.
    forward: JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

pub struct ClusterMesh {
    local: LocalCluster,
    local_addresses: Vec<IpAddr>,
    remotes: BTreeMap<String, Remote>,
    refused: Vec<(RemoteCluster, Conflict)>,
    /// What each remote cluster's last merge refused, to warn once per change.
    refused_records: BTreeMap<String, Vec<String>>,
    /// The peers known before this run (`<cluster>/<node>` for remote ones): a remote
    /// cluster's until its store first answers.
    last_known: BTreeMap<String, NodeRecord>,
    /// Notified whenever a follower's snapshot or health changes.
    pub changes: Arc<Notify>,
    status: watch::Sender<ClusterMeshStatus>,
    reloaded: Option<SystemTime>,
    reload_error: Option<String>,
}

impl ClusterMesh {
    /// The mesh of `config` (its remote clusters not applied yet: see [`ClusterMesh::apply`]).
    pub fn new(config: &Config, last_known: BTreeMap<String, NodeRecord>) -> Self {
        let mut local_addresses = config.node_ips.clone();
        local_addresses.push(config.endpoint.ip());
        Self {
            local: LocalCluster {
                name: config.cluster_name.clone(),
                id: config.cluster_id.map(|i| i.get()),
                pod_cidrs: config
                    .cluster_pod_cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                nodes: 0,
            },
            local_addresses,
            remotes: BTreeMap::new(),
            refused: Vec::new(),
            refused_records: BTreeMap::new(),
            last_known: last_known
                .into_iter()
                .filter(|(k, _)| k.contains('/'))
                .collect(),
            changes: Arc::new(Notify::new()),
            status: watch::channel(ClusterMeshStatus::default()).0,
            reloaded: None,
            reload_error: None,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<ClusterMeshStatus> {
        self.status.subscribe()
    }

    /// Makes `config`'s `clusterMesh` the one in force: followers of clusters that left are
    /// stopped (their peers go with the next merge), newcomers admitted or refused, changed ones
    /// followed anew.
    pub fn apply(&mut self, config: &Config) {
        let Some(id) = config.cluster_id else {
            if !config.cluster_mesh.is_empty() {
                tracing::error!("clusterMesh without clusterID; no remote cluster is linked");
            }
            self.remotes.clear();
            self.refused.clear();
            return;
        };
        let local = Cluster {
            name: config.cluster_name.clone(),
            id,
            pod_cidrs: config.cluster_pod_cidrs.clone(),
        };
        let in_force: BTreeSet<String> = self.remotes.keys().cloned().collect();
        let (admitted, refused) = admit(local, &config.cluster_mesh, &in_force);
        for (remote, conflict) in &refused {
            if !self
                .refused
                .iter()
                .any(|(r, c)| r == remote && c == conflict)
            {
                tracing::warn!(
                    cluster = %remote.cluster.name,
                    "cluster mesh: refused cluster {}: {conflict}; the clusters in force are unchanged",
                    remote.cluster.name
                );
            }
        }
        self.refused = refused;
        let wanted: BTreeMap<&str, &RemoteCluster> = admitted
            .iter()
            .map(|r| (r.cluster.name.as_str(), r))
            .collect();
        self.remotes.retain(|name, remote| {
            let keep = wanted.get(name.as_str()) == Some(&&remote.config);
            if !keep {
                tracing::info!(cluster = %name, "cluster mesh: cluster left (or changed); its peers are removed");
            }
            keep
        });
        for remote in admitted {
            if !self.remotes.contains_key(&remote.cluster.name) {
                self.join(remote);
            }
        }
    }

    /// Starts following a newly admitted cluster.
    fn join(&mut self, config: RemoteCluster) {
        let name = config.cluster.name.clone();
        let store = self.follow(&config);
        match &store {
            Ok(f) => {
                tracing::info!(cluster = %name, id = %config.cluster.id, store = %f.store.describe(), "cluster mesh: following cluster")
            }
            Err(e) => {
                tracing::error!(cluster = %name, "cluster mesh: cannot follow the cluster's store: {e}; retrying")
            }
        }
        let remote = Remote {
            config,
            store,
            last_sync: None,
            connected_since: None,
        };
        self.remotes.insert(name, remote);
    }

    fn follow(&self, config: &RemoteCluster) -> Result<Follower, String> {
        let name = &config.cluster.name;
        let admission = Admission {
            cluster_pod_cidrs: config.cluster.pod_cidrs.clone(),
            local_addresses: self.local_addresses.clone(),
        };
        let initial = Snapshot {
            nodes: self
                .last_known
                .iter()
                .filter_map(|(k, r)| remote_node(k, name).map(|n| (n.to_owned(), r.clone())))
                .collect(),
        };
        let store = match &config.store {
            RemoteStoreConfig::Etcd(etcd) => {
                RemoteStore::etcd(etcd.clone(), name, initial, admission)
            }
            RemoteStoreConfig::Dir { path } => RemoteStore::dir(path, admission),
        }
        .map_err(|e| e.to_string())?;
        let (snapshot, health) = (store.subscribe(), store.health());
        let forward = tokio::spawn(forward(
            snapshot.clone(),
            health.clone(),
            self.changes.clone(),
        ));
        Ok(Follower {
            store,
            snapshot,
            health,
            forward,
        })
    }

    /// Retries the followers that could not be started.
    pub fn retry(&mut self) {
        let failed: Vec<String> = self
            .remotes
            .iter()
            .filter(|(_, r)| r.store.is_err())
            .map(|(n, _)| n.clone())
            .collect();
        for name in failed {
            let config = self.remotes[&name].config.clone();
            let store = self.follow(&config);
            if let Ok(f) = &store {
                tracing::info!(cluster = %name, store = %f.store.describe(), "cluster mesh: following cluster");
            }
            if let Some(r) = self.remotes.get_mut(&name) {
                r.store = store;
            }
        }
    }

    /// The peer view: `local` and every admitted cluster's nodes; publishes the status.
    pub fn merge(&mut self, local: &Snapshot) -> Snapshot {
        let now = SystemTime::now();
        let snapshots: Vec<(String, Arc<Snapshot>)> = self
            .remotes
            .iter_mut()
            .filter_map(|(name, r)| {
                let f = r.store.as_mut().ok()?;
                if f.snapshot.has_changed().unwrap_or(false) || r.last_sync.is_none() {
                    r.last_sync = Some(now);
                }
                let snap = f.snapshot.borrow_and_update().clone();
                match &*f.health.borrow() {
                    // A (re)connection is a fresh listing: the view is in sync as of now.
                    StoreHealth::Connected if r.connected_since.is_none() => {
                        r.connected_since = Some(now);
                        r.last_sync = Some(now);
                    }
                    StoreHealth::Connected => {}
                    _ => r.connected_since = None,
                }
                Some((name.clone(), snap))
            })
            .collect();
        let views = snapshots
            .iter()
            .map(|(cluster, snapshot)| RemoteView { cluster, snapshot });
        let merged = merge(&self.local.name, local, views);
        for (cluster, refused) in &merged.refused {
            if self.refused_records.get(cluster) != Some(refused) {
                for r in refused {
                    tracing::warn!(cluster = %cluster, "cluster mesh: record refused: {r}; the other nodes are unaffected");
                }
            }
        }
        self.refused_records = merged.refused;
        self.local.nodes = local.nodes.len();
        self.publish(&merged.snapshot);
        merged.snapshot
    }

    /// Notes the outcome of a `SIGHUP` reload.
    pub fn reloaded(&mut self, error: Option<String>) {
        self.reloaded = Some(SystemTime::now());
        self.reload_error = error;
    }

    fn publish(&self, merged: &Snapshot) {
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

/// Pokes `changes` whenever the follower's snapshot or health changes; ends with the follower.
async fn forward(
    mut snapshot: watch::Receiver<Arc<Snapshot>>,
    mut health: watch::Receiver<StoreHealth>,
    changes: Arc<Notify>,
) {
    loop {
        let alive = tokio::select! {
            r = snapshot.changed() => r.is_ok(),
            r = health.changed() => r.is_ok(),
        };
        if !alive {
            return;
        }
        changes.notify_one();
    }
}
