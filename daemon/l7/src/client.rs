//! The agent's side of the control socket: typed calls, typed errors. One connection per call
//! (the agent calls rarely; a stale connection to a restarted proxy is never reused).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::config::L7Config;
use crate::flows::{Flow, Stats};

/// Why a call to the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the L7 proxy at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP to the L7 proxy at {path}: {source}")]
    Http { path: PathBuf, source: hyper::Error },
    #[error("the L7 proxy at {path} did not answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    /// The proxy refused the request (a refused configuration: 400 with the field at fault).
    #[error("the L7 proxy refused {what} ({status}): {message}")]
    Refused {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("the L7 proxy's answer to {what} is not valid: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// The answer to a configuration push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Applied {
    pub version: u64,
    /// Whether the state file holds it (a restarted proxy enforces it).
    pub saved: bool,
}

/// A client of one proxy's control socket.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    path: PathBuf,
    timeout: Duration,
}

impl ProxyClient {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Puts `cfg` in force; a configuration the proxy refuses leaves the previous one.
    pub async fn put_config(&self, cfg: &L7Config) -> Result<Applied, ClientError> {
        let body = serde_json::to_vec(cfg).map_err(|source| ClientError::Decode {
            what: "PUT /v1/config",
            source,
        })?;
        let bytes = self
            .call(
                Method::PUT,
                "/v1/config",
                body,
                self.timeout,
                "PUT /v1/config",
            )
            .await?;
        decode(&bytes, "PUT /v1/config")
    }

    /// The version of the configuration in force (0: none).
    pub async fn config_version(&self) -> Result<u64, ClientError> {
        #[derive(serde::Deserialize)]
        struct V {
            version: u64,
        }
        let what = "GET /v1/config/version";
        let bytes = self
            .call(
                Method::GET,
                "/v1/config/version",
                Vec::new(),
                self.timeout,
                what,
            )
            .await?;
        decode::<V>(&bytes, what).map(|v| v.version)
    }

    /// Flows with a sequence number above `after`, waiting up to `wait` for one.
    pub async fn flows(&self, after: u64, wait: Duration) -> Result<Vec<Flow>, ClientError> {
        let what = "GET /v1/flows";
        let uri = format!("/v1/flows?after={after}&wait={}", wait.as_millis());
        let bytes = self
            .call(Method::GET, &uri, Vec::new(), self.timeout + wait, what)
            .await?;
        bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| decode(line, what))
            .collect()
    }

    /// Counters.
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let what = "GET /v1/stats";
        let bytes = self
            .call(Method::GET, "/v1/stats", Vec::new(), self.timeout, what)
            .await?;
        decode(&bytes, what)
    }

    async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Vec<u8>,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Bytes, ClientError> {
        let attempt = self.exchange(method, uri, body, what);
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.path.clone(),
                timeout,
            })?
    }

    async fn exchange(
        &self,
        method: Method,
        uri: &str,
        body: Vec<u8>,
        what: &'static str,
    ) -> Result<Bytes, ClientError> {
        let path = &self.path;
        let http = |source| ClientError::Http {
            path: path.clone(),
            source,
        };
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, "localhost")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Refused {
                what,
                status: 0,
                message: e.to_string(),
            })?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
        if status != StatusCode::OK {
            return Err(ClientError::Refused {
                what,
                status: status.as_u16(),
                message: String::from_utf8_lossy(&bytes).trim().to_string(),
            });
        }
        Ok(bytes)
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|source| ClientError::Decode { what, source })
}
