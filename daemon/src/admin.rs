//! The local admin API on `<runDir>/wiremesh.sock` (HTTP/1.1 over a Unix socket; root, or
//! `adminGroup` read-only, checked by the peer's credentials), used by the CLI: `GET /v1/encrypt/status`, `GET /v1/encrypt/nodes`, `POST /v1/keys/rotate`,
//! `POST /v1/objects` (apply/delete), `POST /v1/policy/trace`, `GET /metrics`, `GET /healthz`.

use std::collections::HashMap;
use std::convert::Infallible;
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

use crate::agent::peers::PeerKey;
use crate::agent::policy::{PolicyCounters, PolicyState};
use crate::agent::rotation::{OwnKey, RotateRequest};
use crate::policy_api::{self, ObjectsRequest, OBJECTS_PATH, TRACE_PATH};
use keymgr::store::objects::ObjectStore;

use crate::status::{rfc3339, store_health, EncryptStatus, KeyState, NodeStatus, PeerStatus};
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::listen::{self, Access, Limits, Refused, Role};
use wiremesh_datapath::model::DeviceView;

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
    /// The data path as the reconcile loop last read it (private key removed): what metrics
    /// are built from, so that a scrape never costs the data path a UAPI round trip.
    pub device_view: watch::Receiver<Option<Arc<DeviceView>>>,
    /// Strict mode's guard table as the agent last read it (every 2 s).
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
    /// Serves the admin API on `path`: root may do everything, `access`'s reader group may only
    /// read (GET), anyone else gets 403 whatever the socket file's mode.
    pub fn bind(
        path: &Path,
        state: Arc<AdminState>,
        access: Access,
        limits: Limits,
    ) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding admin socket {}", path.display()))?;
        access
            .restrict_socket_file(path)
            .with_context(|| format!("setting the owner and mode of {}", path.display()))?;
        let listener = Arc::new(listener);
        tokio::spawn(listen::accept_loop(
            "admin",
            limits.max_conns,
            move || {
                let listener = listener.clone();
                async move { listener.accept().await.map(|(s, _)| s) }
            },
            move |stream: UnixStream, permit| {
                let role = access.of_unix(&stream);
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, state.clone(), role.clone(), limits)
                    });
                    crate::http::serve_http(stream, limits, svc).await;
                    drop(permit);
                });
            },
        ));
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

/// Binds `metricsAddress` (network-facing), so that a taken port fails start-up.
pub async fn bind_metrics(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metricsAddress {addr}"))
}

/// Serves `GET /metrics` only (never the admin endpoints) for Prometheus, from the cached view
/// of the data path: a scrape never reaches the data path.
pub fn serve_metrics(listener: tokio::net::TcpListener, state: Arc<AdminState>, limits: Limits) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let listener = Arc::new(listener);
    tokio::spawn(listen::accept_loop(
        "metrics",
        limits.max_conns,
        move || {
            let listener = listener.clone();
            async move { listener.accept().await.map(|(s, _)| s) }
        },
        move |stream: tokio::net::TcpStream, permit| {
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let (code, body) = match (req.method(), req.uri().path()) {
                            (&Method::GET, "/metrics") => metrics_reply(&state),
                            (_, "/metrics") => (
                                StatusCode::METHOD_NOT_ALLOWED,
                                "only GET /metrics is served here\n".into(),
                            ),
                            _ => (StatusCode::NOT_FOUND, "not found\n".into()),
                        };
                        Ok::<_, Infallible>(response(code, body))
                    }
                });
                crate::http::serve_http(stream, limits, svc).await;
                drop(permit);
            });
        },
    ));
}

fn metrics_reply(state: &AdminState) -> (StatusCode, String) {
    match crate::metrics::render(state) {
        Ok(s) => (StatusCode::OK, s),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")),
    }
}

fn response(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<AdminState>,
    role: Result<Role, Refused>,
    limits: Limits,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |code: StatusCode, body: String| -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(response(code, body))
    };
    match role {
        Err(refused) => {
            tracing::warn!(path = req.uri().path(), "admin API: {refused}");
            return reply(StatusCode::FORBIDDEN, format!("{refused}\n"));
        }
        Ok(Role::Reader) if req.method() != Method::GET => {
            let refused = Refused::ReadOnly {
                role: "a member of adminGroup",
            };
            return reply(StatusCode::FORBIDDEN, format!("{refused}\n"));
        }
        Ok(_) => {}
    }
    let json = |r: Result<String, anyhow::Error>| match r {
        Ok(s) => reply(StatusCode::OK, s),
        Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}\n")),
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "ok\n".into()),
        (&Method::GET, STATUS_PATH) => json(state.status().await.map(|s| to_json(&s))),
        (&Method::GET, "/metrics") => {
            let (code, body) = metrics_reply(&state);
            reply(code, body)
        }
        (&Method::GET, NODES_PATH) => json(state.nodes().await.map(|s| to_json(&s))),
        (&Method::POST, ROTATE_PATH) => json(state.rotate().await.map(|s| to_json(&s))),
        (&Method::POST, OBJECTS_PATH) => {
            let body = match crate::http::read_body(req.into_body(), &limits).await {
                Ok(b) => b,
                Err((code, text)) => return reply(code, text),
            };
            let request: ObjectsRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let current = state.objects.subscribe().borrow().clone();
            let nodes = state.snapshots.borrow().clone();
            match policy_api::change_objects(&state.objects, &current, &nodes, request).await {
                Ok(r) => reply(StatusCode::OK, to_json(&r)),
                Err((true, e)) => reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
                Err((false, e)) => reply(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            }
        }
        (&Method::POST, TRACE_PATH) => {
            let text = req.uri().query() == Some("output=text");
            let body = match crate::http::read_body(req.into_body(), &limits).await {
                Ok(b) => b,
                Err((code, text)) => return reply(code, text),
            };
            let policy = state.policy.borrow().clone();
            let out = policy_api::trace_online(&policy, &String::from_utf8_lossy(&body), text);
            reply(StatusCode::OK, out)
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
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
