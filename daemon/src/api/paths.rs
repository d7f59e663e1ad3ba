//! Where the admin API is: the socket path (built here only, for the agent, the CLI and the
//! tests) and the HTTP paths it serves (HTTP/1.1 over the admin socket; `/metrics` also on
//! `metricsAddress`).

use std::path::{Path, PathBuf};

/// The agent's run directory when neither the config (`runDir`) nor `--run-dir` names one.
pub const DEFAULT_RUN_DIR: &str = "/run/wiremesh";

/// The admin socket's file name inside the run directory.
pub const SOCKET_NAME: &str = "wiremesh.sock";

/// The admin socket of the agent whose run directory is `run_dir`: the one place that path is
/// built, for the agent (`Config::admin_socket`), the CLI and the tests.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join(SOCKET_NAME)
}

/// `GET`: "ok" while every supervised task runs, else 503 naming the failed ones.
pub const HEALTHZ: &str = "/healthz";
/// `GET`: [`super::status::EncryptStatus`].
pub const STATUS: &str = "/v1/encrypt/status";
/// `GET`: one [`super::status::NodeStatus`] per node in the store.
pub const NODES: &str = "/v1/encrypt/nodes";
/// `POST`: rotate this node's key now; answers [`super::status::EncryptStatus`] once committed.
pub const ROTATE: &str = "/v1/keys/rotate";
/// `POST` [`super::objects::ObjectsRequest`]: apply/delete; answers [`super::objects::ObjectsResponse`].
pub const OBJECTS: &str = "/v1/objects";
/// `POST` JSON-lines queries, `?output=text|json`: the online policy trace.
pub const TRACE: &str = "/v1/policy/trace";
/// `GET`: Prometheus text format.
pub const METRICS: &str = "/metrics";
/// `GET ?after=SEQ&wait=MS`: the flow records after `SEQ` (waiting up to `MS` for one), one JSON
/// object per line (`wiremesh observe`).
pub const FLOWS: &str = "/v1/flows";
/// `GET`: [`super::clustermesh::ClusterMeshStatus`] (`wiremesh clustermesh status`).
pub const CLUSTERMESH: &str = "/v1/clustermesh";
