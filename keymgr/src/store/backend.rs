//! How a server-backed store (etcd, Kubernetes) names itself, its server and its node's claim
//! in errors and logs, and how long it waits: shared by the store task and its health reporter.

use std::fmt;
use std::time::Duration;

use super::StoreError;

/// Where a backend is, as its errors and logs name it.
#[derive(Debug, Clone)]
pub(super) enum Server {
    Etcd { endpoints: String },
    Kubernetes { server: String },
}

impl Server {
    pub(super) fn unavailable(&self, reason: impl Into<String>) -> StoreError {
        let reason = reason.into();
        match self {
            Server::Etcd { endpoints } => StoreError::Unavailable {
                endpoints: endpoints.clone(),
                reason,
            },
            Server::Kubernetes { server } => StoreError::KubeUnavailable {
                server: server.clone(),
                reason,
            },
        }
    }

    pub(super) fn stopped(&self) -> StoreError {
        let kind = match self {
            Server::Etcd { .. } => "etcd",
            Server::Kubernetes { .. } => "Kubernetes",
        };
        self.unavailable(format!("the {kind} store task has stopped"))
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Server::Etcd { endpoints } => write!(f, "etcd at {endpoints}"),
            Server::Kubernetes { server } => write!(f, "Kubernetes API server {server}"),
        }
    }
}

/// How one store names itself and its node's claim in errors and logs, and how long it waits.
#[derive(Debug)]
pub(super) struct Backend {
    pub(super) server: Server,
    /// What [`Handle::describe`] returns, e.g. `etcd:<endpoints><nodes prefix>`.
    pub(super) describe: String,
    pub(super) node: String,
    /// The write `publish` waits for, completing "… not acknowledged within", e.g.
    /// `write of <node key>`.
    pub(super) write: String,
    /// What the task lists and watches, completing "following …".
    pub(super) following: String,
    /// Where the claim on the node name is kept, e.g. the owner key.
    pub(super) claim_at: String,
    /// When a dead agent's claim ends, completing "its claim …".
    pub(super) claim_ends: String,
    /// How long `publish` waits for its write and `close` for the task.
    pub(super) patience: Duration,
}
