//! The store seam: where node records are published and learned. One enum, one variant per
//! backend, chosen from config; every backend hands the agent the same thing, a [`Snapshot`] of
//! valid records on a `watch` channel, so the agent never sees a backend's details.

mod backend;
pub mod decode;
mod dir;
mod etcd;
mod health;
mod kubernetes;
pub mod objects;
mod records;
mod refused;
mod task;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use tokio::sync::watch;

pub use dir::DirStore;
pub use etcd::{ClaimOutcome, EtcdConfig, EtcdStore, EtcdTls};
pub use kubernetes::{node_pod_cidrs, KubeConfig, KubeStore};

use crate::{Admission, NodeRecord, RecordError};

/// Every valid record in the store at one moment, keyed by node name (this node's own included).
/// A persistent map: snapshots of one store share their structure, so each is an O(1) clone and
/// comparing two consecutive ones costs only what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub nodes: imbl::OrdMap<String, NodeRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store: cannot encode record of node {node}: {source}")]
    Encode {
        node: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("store: record of node {node} is invalid: {source}")]
    Invalid {
        node: String,
        #[source]
        source: crate::RecordError,
    },
    #[error("store config: {field} = {value:?}: {reason}")]
    Config {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "node name {node} is held by a live agent with owner id {owner:?}; refusing to run a \
         second agent under the same name. If that agent is gone, its claim is released when its \
         lease TTL (etcd) or owner TTL after its last heartbeat (Kubernetes) runs out: start \
         again then, or give this node another name"
    )]
    NodeNameTaken { node: String, owner: String },
    #[error(
        "etcd at {endpoints} is unavailable: {reason}; the record is kept and written when etcd \
         is reachable again"
    )]
    Unavailable { endpoints: String, reason: String },
    #[error(
        "Kubernetes API server {server} is unavailable: {reason}; the record is kept and written \
         when the API server is reachable again"
    )]
    KubeUnavailable { server: String, reason: String },
    #[error("kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
}

/// Whether the store is in contact with its backend and owns this node's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    Connected,
    /// The backend has not answered since `since`; the last known snapshot stays in force.
    Unreachable {
        since: SystemTime,
        error: String,
    },
    /// Another live agent (owner id `owner`) holds this node's name: this agent must stop.
    Conflict {
        owner: String,
    },
}

pub enum Store {
    Dir(DirStore),
    Etcd(EtcdStore),
    Kubernetes(KubeStore),
}

impl Store {
    /// Writes (or replaces) this node's own record.
    pub async fn publish(&self, record: &NodeRecord) -> Result<(), StoreError> {
        record.validate().map_err(|source| StoreError::Invalid {
            node: record.node_name.clone(),
            source,
        })?;
        match self {
            Store::Dir(s) => s.publish(record).await,
            Store::Etcd(s) => s.publish(record).await,
            Store::Kubernetes(s) => s.publish(record).await,
        }
    }

    /// Snapshots of the valid records, updated as the store changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        match self {
            Store::Dir(s) => s.subscribe(),
            Store::Etcd(s) => s.subscribe(),
            Store::Kubernetes(s) => s.subscribe(),
        }
    }

    /// Contact with the backend; the dir store is always `Connected`.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        match self {
            Store::Dir(_) => always_connected(),
            Store::Etcd(s) => s.health(),
            Store::Kubernetes(s) => s.health(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Store::Dir(s) => format!("dir:{}", s.path().display()),
            Store::Etcd(s) => s.describe().to_owned(),
            Store::Kubernetes(s) => s.describe().to_owned(),
        }
    }
}

/// Another cluster's store, followed read-only for the cluster mesh: the type has no way to
/// write, so an agent never writes into a store that is not its own cluster's.
pub enum RemoteStore {
    Dir(DirStore),
    Etcd(EtcdStore),
}

impl RemoteStore {
    /// Follows the node records of `cluster` in the etcd at `config`; until the first listing,
    /// subscribers see `initial` (the peers known before). Must be called inside a tokio runtime.
    pub fn etcd(
        config: EtcdConfig,
        cluster: &str,
        initial: Snapshot,
        admission: Admission,
    ) -> Result<Self, StoreError> {
        EtcdStore::follow(config, cluster, initial, admission).map(Self::Etcd)
    }

    /// Follows the records in the directory `path` (another cluster's dir store). It is not
    /// created if it is missing.
    pub fn dir(path: impl Into<PathBuf>, admission: Admission) -> Result<Self, StoreError> {
        let path = path.into();
        if !path.is_dir() {
            return Err(StoreError::Io {
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such directory (another cluster's store is never created here)",
                ),
                path,
            });
        }
        DirStore::open(path, admission).map(Self::Dir)
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        match self {
            Self::Dir(s) => s.subscribe(),
            Self::Etcd(s) => s.subscribe(),
        }
    }

    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        match self {
            Self::Dir(_) => always_connected(),
            Self::Etcd(s) => s.health(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Dir(s) => format!("dir:{}", s.path().display()),
            Self::Etcd(s) => s.describe().to_owned(),
        }
    }
}

/// A receiver whose sender lives forever, so `changed()` pends instead of failing at once.
fn always_connected() -> watch::Receiver<StoreHealth> {
    static CONNECTED: OnceLock<watch::Sender<StoreHealth>> = OnceLock::new();
    CONNECTED
        .get_or_init(|| watch::channel(StoreHealth::Connected).0)
        .subscribe()
}

/// Hands subscribers `snap` unless it is what they already have, so that they wake only on
/// changes.
fn send_if_changed(tx: &watch::Sender<Arc<Snapshot>>, snap: Snapshot) {
    tx.send_if_modified(|cur| {
        if **cur == snap {
            return false;
        }
        *cur = Arc::new(snap);
        true
    });
}

/// Why a stored record (JSON, as the dir and etcd stores keep it) is refused; the text is what
/// the refusal warning says.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("field {field}: {source}")]
    Field {
        field: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Invalid(#[from] RecordError),
}

/// A record as stored by the dir and etcd stores (JSON), checked, and refused unless it is the
/// record of `name` (the node its file or key is named after). The error names the bad field.
fn decode_record(json: &[u8], name: &str) -> Result<NodeRecord, DecodeError> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    let rec: NodeRecord = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let source = e.into_inner();
        if field == "." {
            DecodeError::Json(source)
        } else {
            DecodeError::Field { field, source }
        }
    })?;
    rec.validate()?;
    if rec.node_name != name {
        return Err(RecordError::NameMismatch {
            expected: name.into(),
            found: rec.node_name,
        }
        .into());
    }
    Ok(rec)
}
