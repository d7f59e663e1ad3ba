//! [`AgentClient`]: the one client of the admin API (the CLI and the tests use it). One HTTP/1.1
//! request per connection on the admin socket; a non-2xx answer is an error carrying the
//! agent's text. It never retries: the CLI reports and exits.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::objects::{ObjectsRequest, ObjectsResponse};
use super::paths::{self, socket_path};
use super::status::{EncryptStatus, NodeStatus};

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "cannot reach the wiremesh agent at {} (is it running? use --run-dir if its runDir differs)",
        socket.display()
    )]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The agent answered, but not with success (403 for a reader that may not write, 413
    /// for a body over the limit, 503 when what it asks is unavailable, ...).
    #[error("agent answered {status}: {}", body.trim())]
    Refused { status: StatusCode, body: String },
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Request(#[from] hyper::http::Error),
    /// A body that is not the JSON the path promises (or a request that cannot be encoded).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// An error and its causes, `: ` between each, as the CLI prints errors and the admin server
/// answers them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A client of one agent's admin socket.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    /// The agent listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The agent whose run directory (config key `runDir`) is `run_dir`.
    pub fn for_run_dir(run_dir: &Path) -> Self {
        Self::new(socket_path(run_dir))
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /healthz`: the agent's text ("ok\n" while every task runs).
    pub async fn healthz(&self) -> Result<String, ApiError> {
        self.send(Method::GET, paths::HEALTHZ, String::new()).await
    }

    /// `GET /healthz?verbose`: one line per supervised task, then the verdict.
    pub async fn healthz_verbose(&self) -> Result<String, ApiError> {
        let path = format!("{}?verbose", paths::HEALTHZ);
        self.send(Method::GET, &path, String::new()).await
    }

    pub async fn status(&self) -> Result<EncryptStatus, ApiError> {
        decode(&self.status_json().await?)
    }

    /// The status JSON exactly as the agent sent it (`encrypt status --json`).
    pub async fn status_json(&self) -> Result<String, ApiError> {
        self.send(Method::GET, paths::STATUS, String::new()).await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, ApiError> {
        decode(&self.nodes_json().await?)
    }

    /// The node list JSON exactly as the agent sent it (`encrypt status --all-nodes --json`).
    pub async fn nodes_json(&self) -> Result<String, ApiError> {
        self.send(Method::GET, paths::NODES, String::new()).await
    }

    /// The cluster mesh JSON exactly as the agent sent it (`clustermesh status --json`).
    pub async fn clustermesh_json(&self) -> Result<String, ApiError> {
        self.send(Method::GET, paths::CLUSTERMESH, String::new())
            .await
    }

    pub async fn clustermesh(&self) -> Result<super::ClusterMeshStatus, ApiError> {
        decode(&self.clustermesh_json().await?)
    }

    /// Rotates this node's key and waits until the rotation is committed.
    pub async fn rotate(&self) -> Result<EncryptStatus, ApiError> {
        decode(
            &self
                .send(Method::POST, paths::ROTATE, String::new())
                .await?,
        )
    }

    /// Applies and deletes objects, all or nothing.
    pub async fn objects(&self, req: &ObjectsRequest) -> Result<ObjectsResponse, ApiError> {
        let body = serde_json::to_string(req)?;
        decode(&self.send(Method::POST, paths::OBJECTS, body).await?)
    }

    /// The online trace: `queries` are JSON lines; the answer is text (`text`, one query) or
    /// one JSON line per query.
    pub async fn trace(&self, queries: String, text: bool) -> Result<String, ApiError> {
        let output = if text { "text" } else { "json" };
        let path = format!("{}?output={output}", paths::TRACE);
        self.send(Method::POST, &path, queries).await
    }

    /// `GET /metrics` (Prometheus text format).
    pub async fn metrics(&self) -> Result<String, ApiError> {
        self.send(Method::GET, paths::METRICS, String::new()).await
    }

    /// The flow records after `after`, waiting up to `wait` for the first one (`observe`).
    pub async fn flows(
        &self,
        after: u64,
        wait: std::time::Duration,
    ) -> Result<Vec<wiremesh_l7::flows::Flow>, ApiError> {
        let path = format!("{}?after={after}&wait={}", paths::FLOWS, wait.as_millis());
        let body = self.send(Method::GET, &path, String::new()).await?;
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(decode)
            .collect()
    }

    /// One request; the body of a success.
    pub async fn send(&self, method: Method, path: &str, body: String) -> Result<String, ApiError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "wiremesh")
            .body(Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(ApiError::Refused { status, body });
        }
        Ok(body)
    }
}

fn decode<T: DeserializeOwned>(body: &str) -> Result<T, ApiError> {
    Ok(serde_json::from_str(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_names_the_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let client = AgentClient::for_run_dir(dir.path());
        let err = crate::runtime()
            .unwrap()
            .block_on(client.status())
            .unwrap_err();
        let text = error_chain(&err);
        let want = format!(
            "cannot reach the wiremesh agent at {}/wiremesh.sock (is it running? use --run-dir \
             if its runDir differs): No such file or directory",
            dir.path().display()
        );
        assert!(text.starts_with(&want), "{text}");
        assert!(matches!(err, ApiError::Connect { .. }));
    }
}
