//! The local admin API on `<runDir>/wiremesh.sock` (HTTP/1.1 over a Unix socket, root only),
//! used by the CLI: `GET /v1/encrypt/status`, `GET /v1/encrypt/nodes`, `POST /v1/keys/rotate`,
//! `POST /v1/objects` (apply/delete), `POST /v1/policy/trace`, `GET /metrics`, `GET /healthz`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keymgr::store::StoreHealth;
use keymgr::{PublicKey, Snapshot};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent::policy::{PolicyCounters, PolicyState};
use crate::agent::reconciler::PeerKey;
use crate::agent::rotation::{OwnKey, RotateRequest};
use crate::policy_api::{self, ObjectsRequest, OBJECTS_PATH, TRACE_PATH};
use keymgr::store::objects::ObjectStore;

use crate::datapath::Datapath;
use crate::status::{rfc3339, store_health, EncryptStatus, KeyState, NodeStatus, PeerStatus};

pub const STATUS_PATH: &str = "/v1/encrypt/status";
pub const ROTATE_PATH: &str = "/v1/keys/rotate";
pub const NODES_PATH: &str = "/v1/encrypt/nodes";

/// What the admin API reads to answer: static facts plus live views of the data path, of this
/// node's key, and of which node owns which peer key.
pub struct AdminState {
    pub interface: String,
    pub mtu: u32,
    pub node_name: String,
    pub cluster_name: String,
    pub store: String,
    pub store_health: watch::Receiver<StoreHealth>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub datapath: Arc<Datapath>,
    pub peers: watch::Receiver<Arc<HashMap<PublicKey, PeerKey>>>,
    pub own: watch::Receiver<OwnKey>,
    pub rotate: mpsc::Sender<RotateRequest>,
    pub objects: Arc<ObjectStore>,
    pub policy: watch::Receiver<Arc<PolicyState>>,
    pub policy_counters: Arc<PolicyCounters>,
    pub strict: watch::Receiver<crate::strict::StrictStatus>,
}

impl AdminState {
    async fn status(&self) -> Result<EncryptStatus> {
        let state = self.datapath.get().await?;
        let names = self.peers.borrow().clone();
        let own = self.own.borrow().clone();
        let peers = state
            .peers
            .into_iter()
            .map(|p| {
                let info = names.get(&p.public_key);
                // The epoch of the key this node's session with the peer uses now.
                let epoch = p
                    .active_key
                    .or(Some(p.public_key))
                    .and_then(|k| names.get(&k))
                    .map(|i| i.epoch);
                PeerStatus {
                    node_name: info.map(|i| i.node.clone()),
                    public_key: p.public_key.to_base64(),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    allowed_ips: p.allowed_ips.iter().map(|n| n.to_string()).collect(),
                    last_handshake: p.last_handshake.map(rfc3339),
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                    key_epoch: epoch,
                    next_public_key: p.next_public_key.map(|k| k.to_base64()),
                }
            })
            .collect();
        Ok(EncryptStatus {
            encryption: "Wireguard".into(),
            interface: self.interface.clone(),
            public_key: own.public.to_base64(),
            listen_port: state.listen_port,
            mtu: self.mtu,
            datapath: self.datapath.kind().into(),
            node_name: self.node_name.clone(),
            cluster_name: self.cluster_name.clone(),
            store: self.store.clone(),
            store_health: store_health(&self.store_health.borrow()),
            key_epoch: own.epoch,
            key_created: rfc3339(own.created),
            next_rotation: own.next_rotation.map(rfc3339),
            next_public_key: own.next.map(|k| k.to_base64()),
            strict_mode: self.strict.borrow().clone(),
            peers,
        })
    }

    /// Every node in the store, and whether the key this node's data path uses for it is the
    /// one it publishes: a stale key is the classic silent failure.
    async fn nodes(&self) -> Result<Vec<NodeStatus>> {
        let state = self.datapath.get().await?;
        let snap = self.snapshots.borrow().clone();
        let own = self.own.borrow().clone();
        let mut out = Vec::new();
        for (name, rec) in &snap.nodes {
            let is_self = *name == self.node_name;
            // The data path's peer for this node: the one routing its pod CIDRs.
            let peer = state.peers.iter().find(|p| {
                rec.keys().any(|k| k == p.public_key)
                    || rec.pod_cidrs.iter().any(|c| p.allowed_ips.contains(c))
            });
            let in_use = match (is_self, peer) {
                (true, _) => Some(own.public),
                (false, Some(p)) => Some(p.active_key.unwrap_or(p.public_key)),
                (false, None) => None,
            };
            let state = match (is_self, in_use) {
                (true, _) => KeyState::ThisNode,
                (false, None) => KeyState::NotConfigured,
                (false, Some(k)) if k == rec.public_key => KeyState::Matches,
                (false, Some(k)) if Some(k) == rec.next_public_key => KeyState::Rotating,
                (false, Some(_)) => KeyState::Stale,
            };
            out.push(NodeStatus {
                node_name: name.clone(),
                cluster_name: rec.cluster_name.clone(),
                key_epoch: rec.key_epoch,
                public_key: rec.public_key.to_base64(),
                next_public_key: rec.next_public_key.map(|k| k.to_base64()),
                endpoint: rec.endpoint.to_string(),
                key_in_use: in_use.map(|k| k.to_base64()),
                key_state: state,
            });
        }
        Ok(out)
    }

    async fn rotate(&self) -> Result<EncryptStatus> {
        let (tx, rx) = oneshot::channel();
        self.rotate
            .send(tx)
            .await
            .map_err(|_| anyhow::anyhow!("the key rotator has stopped"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the key rotator has stopped"))?
            .map_err(anyhow::Error::msg)?;
        self.status().await
    }
}

pub struct AdminServer {
    path: PathBuf,
}

impl AdminServer {
    pub fn bind(path: &Path, state: Arc<AdminState>) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding admin socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

/// Serves `/metrics` only (never the admin endpoints) on a TCP address for Prometheus.
pub async fn serve_metrics(addr: std::net::SocketAddr, state: Arc<AdminState>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metricsAddress {addr}"))?;
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let (code, body) = match (req.method(), req.uri().path()) {
                            (&Method::GET, "/metrics") => {
                                match crate::metrics::render(&state).await {
                                    Ok(s) => (StatusCode::OK, s),
                                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")),
                                }
                            }
                            _ => (StatusCode::NOT_FOUND, "not found\n".into()),
                        };
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = code;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<AdminState>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |code: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        Ok(r)
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "ok\n".into()),
        (&Method::GET, STATUS_PATH) => match state.status().await {
            Ok(s) => reply(
                StatusCode::OK,
                serde_json::to_string(&s).unwrap_or_default(),
            ),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")),
        },
        (&Method::GET, "/metrics") => match crate::metrics::render(&state).await {
            Ok(s) => reply(StatusCode::OK, s),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")),
        },
        (&Method::GET, NODES_PATH) => match state.nodes().await {
            Ok(s) => reply(
                StatusCode::OK,
                serde_json::to_string(&s).unwrap_or_default(),
            ),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")),
        },
        (&Method::POST, ROTATE_PATH) => match state.rotate().await {
            Ok(s) => reply(
                StatusCode::OK,
                serde_json::to_string(&s).unwrap_or_default(),
            ),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")),
        },
        (&Method::POST, OBJECTS_PATH) => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let request: ObjectsRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let current = state.objects.subscribe().borrow().clone();
            let nodes = state.snapshots.borrow().clone();
            match policy_api::change_objects(&state.objects, &current, &nodes, request).await {
                Ok(r) => reply(
                    StatusCode::OK,
                    serde_json::to_string(&r).unwrap_or_default(),
                ),
                Err((true, e)) => reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
                Err((false, e)) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
        }
        (&Method::POST, TRACE_PATH) => {
            let text = req.uri().query() == Some("output=text");
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let policy = state.policy.borrow().clone();
            let out = policy_api::trace_online(&policy, &String::from_utf8_lossy(&body), text);
            reply(StatusCode::OK, out)
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// CLI side: one request against the admin socket.
pub async fn request(socket: &Path, method: Method, path: &str) -> Result<String> {
    request_with_body(socket, method, path, String::new()).await
}

/// CLI side: one request with a body against the admin socket.
pub async fn request_with_body(
    socket: &Path,
    method: Method,
    path: &str,
    body: String,
) -> Result<String> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the wiremesh agent at {} (is it running? use --run-dir if its runDir differs)",
            socket.display()
        )
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
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
    anyhow::ensure!(
        status.is_success(),
        "agent answered {status}: {}",
        body.trim()
    );
    Ok(body)
}
