//! The admin API's contract: where the socket is, the paths it serves, and the request and
//! response types that travel on it, shared by the server (`crate::admin`) and its one client
//! ([`AgentClient`]). It holds no handler and no agent state: both sides depend on it, it
//! depends on neither.

mod client;
pub mod health;
pub mod objects;
pub mod status;

use std::path::{Path, PathBuf};

pub use client::{error_chain, AgentClient, ApiError};
pub use health::{Health, TaskHealth, TaskState};
pub use objects::{ObjectsRequest, ObjectsResponse, Sourced};
pub use status::{EncryptStatus, KeyState, NodeStatus, PeerStatus, StoreHealthStatus};

/// The agent's run directory when neither the config (`runDir`) nor `--run-dir` names one.
pub const DEFAULT_RUN_DIR: &str = "/run/wiremesh";

/// The admin socket's file name inside the run directory.
pub const SOCKET_NAME: &str = "wiremesh.sock";

/// The admin socket of the agent whose run directory is `run_dir`: the one place that path is
/// built, for the agent (`Config::admin_socket`), the CLI and the tests.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}

/// The paths the admin API serves (HTTP/1.1 over the admin socket; `/metrics` also on
/// `metricsAddress`).
pub mod paths {
    /// `GET`: "ok" while every supervised task runs, else 503 naming the failed ones.
    pub const HEALTHZ: &str = "/healthz";
    /// `GET`: [`super::EncryptStatus`].
    pub const STATUS: &str = "/v1/encrypt/status";
    /// `GET`: one [`super::NodeStatus`] per node in the store.
    pub const NODES: &str = "/v1/encrypt/nodes";
    /// `POST`: rotate this node's key now; answers [`super::EncryptStatus`] once committed.
    pub const ROTATE: &str = "/v1/keys/rotate";
    /// `POST` [`super::ObjectsRequest`]: apply/delete; answers [`super::ObjectsResponse`].
    pub const OBJECTS: &str = "/v1/objects";
    /// `POST` JSON-lines queries, `?output=text|json`: the online policy trace.
    pub const TRACE: &str = "/v1/policy/trace";
    /// `GET`: Prometheus text format.
    pub const METRICS: &str = "/metrics";
}
