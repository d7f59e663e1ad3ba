//! The cluster mesh in the agent: one read-only follower per admitted remote cluster
//! (`keymgr::store::RemoteStore`), the refusals, the merged peer view the event loop
//! reconciles, and the status `wiremesh clustermesh status` shows. `merge.rs` is the pure part.
//!
//! The config's `clusterMesh` is applied at start and again on every `SIGHUP`
//! ([`ClusterMesh::apply`]): clusters join and leave without a restart. A refused cluster is
//! a WARN naming both sides, shown in status, and changes nothing in force.

pub mod merge;
pub mod objects;
mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use cluster_mesh::{Cluster, Conflict};
use keymgr::store::objects::{ObjectSet, RemoteObjects};
use keymgr::store::{RemoteStore, StoreHealth};
use keymgr::{Admission, NodeRecord, Snapshot};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::api::clustermesh::LocalCluster;
use crate::api::ClusterMeshStatus;
use crate::config::{Config, RemoteCluster, RemoteStoreConfig};
use merge::{admit, merge, remote_node, RemoteView};
use objects::{MeshObjects, Scope};

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
    /// Its objects (Pods and Namespaces are used), once its store holds any.
    objects: Option<(RemoteObjects, watch::Receiver<Arc<ObjectSet>>)>,
    /// Pokes the event loop on every change of the two above.
    forward: JoinHandle<()>,
}

impl Follower {
    /// Starts following the objects of `config`'s store if it now holds them.
    fn follow_objects(&mut self, config: &RemoteCluster, changes: &Arc<Notify>) {
        let RemoteStoreConfig::Dir { path } = &config.store else {
            return;
        };
        let Ok(objects) = RemoteObjects::dir(path) else {
            return;
        };
        let rx = objects.subscribe();
        self.forward.abort();
        self.forward = tokio::spawn(forward(
            self.snapshot.clone(),
            self.health.clone(),
            Some(rx.clone()),
            changes.clone(),
        ));
        self.objects = Some((objects, rx));
        changes.notify_one();
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

pub struct ClusterMesh {
    local: LocalCluster,
    local_id: Option<cluster_mesh::ClusterId>,
    /// The remote clusters' objects and the scope, for the policy loop.
    objects: watch::Sender<Arc<MeshObjects>>,
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
            local_id: config.cluster_id,
            objects: watch::channel(Arc::new(MeshObjects::default())).0,
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

    /// The remote clusters' objects and the scope, as the policy loop takes them.
    pub fn objects(&self) -> watch::Receiver<Arc<MeshObjects>> {
        self.objects.subscribe()
    }

    /// Makes `config`'s `clusterMesh` the one in force: followers of clusters that left are
    /// stopped (their peers go with the next merge), newcomers admitted or refused, changed ones
    /// followed anew.
    pub fn apply(&mut self, config: &Config) {
        self.local_id = config.cluster_id;
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
        let objects = match &config.store {
            RemoteStoreConfig::Etcd(etcd) => RemoteObjects::etcd(etcd, name),
            RemoteStoreConfig::Dir { path } => RemoteObjects::dir(path),
        };
        let objects = match objects {
            Ok(o) => {
                let rx = o.subscribe();
                Some((o, rx))
            }
            Err(e) => {
                tracing::debug!(cluster = %name, "cluster mesh: no objects to follow yet: {e}");
                None
            }
        };
        let (snapshot, health) = (store.subscribe(), store.health());
        let forward = tokio::spawn(forward(
            snapshot.clone(),
            health.clone(),
            objects.as_ref().map(|(_, rx)| rx.clone()),
            self.changes.clone(),
        ));
        Ok(Follower {
            store,
            snapshot,
            health,
            objects,
            forward,
        })
    }

    /// Retries the followers that could not be started, and the objects of a directory store
    /// that held none yet.
    pub fn retry(&mut self) {
        let changes = self.changes.clone();
        let failed: Vec<String> = self
            .remotes
            .iter_mut()
            .filter_map(|(name, r)| match &mut r.store {
                Err(_) => Some(name.clone()),
                Ok(f) if f.objects.is_none() => {
                    f.follow_objects(&r.config, &changes);
                    None
                }
                Ok(_) => None,
            })
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
        self.publish_objects();
        merged.snapshot
    }

    /// Hands the policy loop the remote clusters' objects, when they changed.
    fn publish_objects(&self) {
        let scope = self.local_id.map(|id| Scope {
            local: self.local.name.clone(),
            ids: std::iter::once((self.local.name.clone(), id.get()))
                .chain(
                    self.remotes
                        .values()
                        .map(|r| (r.config.cluster.name.clone(), r.config.cluster.id.get())),
                )
                .collect(),
        });
        let clusters = self
            .remotes
            .iter()
            .filter_map(|(name, r)| {
                let (_, rx) = r.store.as_ref().ok()?.objects.as_ref()?;
                let set = rx.borrow().clone();
                set.synced.then(|| (name.clone(), set))
            })
            .collect();
        let next = MeshObjects { scope, clusters };
        self.objects.send_if_modified(|cur| {
            let same = cur.scope == next.scope
                && cur.clusters.len() == next.clusters.len()
                && cur
                    .clusters
                    .iter()
                    .zip(&next.clusters)
                    .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y));
            if !same {
                *cur = Arc::new(next);
            }
            !same
        });
    }

    /// Notes the outcome of a `SIGHUP` reload.
    pub fn reloaded(&mut self, error: Option<String>) {
        self.reloaded = Some(SystemTime::now());
        self.reload_error = error;
    }
}

/// Pokes `changes` whenever the follower's snapshot, health or objects change; ends with the
/// follower.
async fn forward(
    mut snapshot: watch::Receiver<Arc<Snapshot>>,
    mut health: watch::Receiver<StoreHealth>,
    mut objects: Option<watch::Receiver<Arc<ObjectSet>>>,
    changes: Arc<Notify>,
) {
    loop {
        let objects_changed = async {
            match objects.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let alive = tokio::select! {
            r = snapshot.changed() => r.is_ok(),
            r = health.changed() => r.is_ok(),
            ok = objects_changed => ok,
        };
        if !alive {
            return;
        }
        changes.notify_one();
    }
}

/// The object set the policy loop takes: `local` with the remote clusters' Pods and Namespaces
/// and the scope folded in ([`objects::combine`]), again whenever either changes.
pub fn policy_objects(
    mut local: watch::Receiver<Arc<ObjectSet>>,
    mut mesh: watch::Receiver<Arc<MeshObjects>>,
) -> watch::Receiver<Arc<ObjectSet>> {
    let first = objects::combine(&local.borrow_and_update(), &mesh.borrow_and_update());
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            let alive = tokio::select! {
                r = local.changed() => r.is_ok(),
                r = mesh.changed() => r.is_ok(),
                () = tx.closed() => false,
            };
            if !alive {
                return;
            }
            let set = objects::combine(&local.borrow_and_update(), &mesh.borrow_and_update());
            tx.send_replace(set);
        }
    });
    rx
}
