//! The store seam: where node records are published and learned. One enum, one variant per
//! backend, chosen from config; every backend hands the agent the same thing, a [`Snapshot`] of
//! valid records on a `watch` channel, so the agent never sees a backend's details.

mod dir;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

pub use dir::DirStore;

use crate::NodeRecord;

/// Every valid record in the store at one moment, keyed by node name (this node's own included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub nodes: BTreeMap<String, NodeRecord>,
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
}

pub enum Store {
    Dir(DirStore),
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
        }
    }

    /// Snapshots of the valid records, updated as the store changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        match self {
            Store::Dir(s) => s.subscribe(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Store::Dir(s) => format!("dir:{}", s.path().display()),
        }
    }
}
