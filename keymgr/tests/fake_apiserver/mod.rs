//! A fake Kubernetes API server for one test, in process, over plain HTTP/1.1 on a free loopback
//! port. No real API server can be installed on the project's machines, so this one speaks the
//! real REST and watch protocol for the one resource the store uses, `v1/nodes`:
//!
//! * `GET /api/v1/nodes` — a `NodeList` with the current `metadata.resourceVersion`
//!   (`limit`/`continue` are ignored: the whole list always fits);
//! * `GET /api/v1/nodes?watch=true&resourceVersion=N` — newline-delimited JSON watch events
//!   (`ADDED`/`MODIFIED`/`DELETED`) after `N`, `BOOKMARK`s every second when
//!   `allowWatchBookmarks=true`, ended after `timeoutSeconds`; a compacted `N` gets an `ERROR`
//!   event carrying a `Status` with code 410 (Expired), as the real server sends;
//! * `GET`/`PATCH`/`DELETE /api/v1/nodes/{name}` — `PATCH` takes `merge-patch+json` and
//!   `strategic-merge-patch+json` (applied as a JSON merge patch, which is what strategic merge
//!   does for the annotation map) and answers 409 with a `Conflict` `Status` when the patch
//!   carries a `metadata.resourceVersion` that is not the current one.
//!
//! Besides Nodes, for the object store (`keymgr/src/store/objects/kubernetes.rs`):
//!
//! * list and watch (as above: resourceVersion, bookmarks, 410 Gone) of `namespaces`, `pods`,
//!   `services`,
//!   `networkpolicies` (`networking.k8s.io/v1`), `ciliumnetworkpolicies` and
//!   `ciliumclusterwidenetworkpolicies` (`cilium.io/v2`), in all namespaces or in one;
//! * `GET /apis` (the `APIGroupList` discovery document) and, while the Cilium CRDs are
//!   "uninstalled", a plain-text `404 page not found` for every `cilium.io` path, as a real
//!   server answers for a group it does not serve;
//! * `configmaps`: list, get, and `POST` create answering 409 `AlreadyExists` when the name is
//!   taken (checked and inserted under one lock, so racing creates have exactly one winner).
//!   `labelSelector`, `limit` and `continue` are ignored.
//!
//! Test helpers change the state directly (as kubelet or another actor would), inject 409s,
//! compact the event history, require a bearer token, and stop and restart the server on the
//! same port (an outage).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

mod objects;

use objects::{discovery, page_not_found, route, serve_resource, Route};

type Body = UnsyncBoxBody<Bytes, Infallible>;

#[derive(Default)]
struct State {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    /// Every change as a watch event, by resourceVersion; history up to `compacted` is gone.
    log: Vec<(u64, Value)>,
    compacted: u64,
    forced_conflicts: u32,
    patches: u32,
    /// Objects of the other resources, by (plural, namespace or "", name).
    objects: BTreeMap<(&'static str, String, String), Value>,
    /// Their watch events, by resourceVersion, with the plural.
    object_log: Vec<(u64, &'static str, Value)>,
    cilium_uninstalled: bool,
    create_conflicts: u32,
}

/// A resource served besides Nodes.
pub struct Resource {
    pub group_version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

const fn res(
    group_version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Resource {
    Resource {
        group_version,
        plural,
        kind,
        namespaced,
    }
}

pub const RESOURCES: [Resource; 7] = [
    res("v1", "namespaces", "Namespace", false),
    res("v1", "pods", "Pod", true),
    res("v1", "services", "Service", true),
    res(
        "networking.k8s.io/v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
    ),
    res(
        "cilium.io/v2",
        "ciliumnetworkpolicies",
        "CiliumNetworkPolicy",
        true,
    ),
    res(
        "cilium.io/v2",
        "ciliumclusterwidenetworkpolicies",
        "CiliumClusterwideNetworkPolicy",
        false,
    ),
    res("v1", "configmaps", "ConfigMap", true),
];

#[allow(dead_code, reason = "used by kubernetes_objects.rs only")]
fn resource_of_kind(kind: &str) -> &'static Resource {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .unwrap_or_else(|| panic!("the fake API server does not serve kind {kind}"))
}

struct Shared {
    state: Mutex<State>,
    /// The latest resourceVersion, to wake watches.
    head: watch::Sender<u64>,
    token: Option<String>,
}

pub struct FakeApiServer {
    shared: Arc<Shared>,
    port: u16,
    dir: TempDir,
    server: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Like [`FakeApiServer::start`], answering 401 to requests without `Bearer <token>`.
    pub async fn start_with_token(token: &str) -> Self {
        Self::start_with(Some(token.into())).await
    }

    async fn start_with(token: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            head: watch::channel(0).0,
            token,
        });
        let server = Some(tokio::spawn(serve(listener, shared.clone())));
        let dir = tempfile::tempdir().expect("tempdir for kubeconfig");
        Self {
            shared,
            port,
            dir,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig file pointing at this server; `token_file` for bearer-token auth as a
    /// service account has it (the in-cluster config reads its token the same way).
    pub fn kubeconfig(&self, token_file: Option<&std::path::Path>) -> PathBuf {
        let user = match token_file {
            Some(p) => format!("{{tokenFile: {}}}", p.display()),
            None => "{}".into(),
        };
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {user}\n",
            self.url()
        );
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", rand_suffix()));
        std::fs::write(&path, yaml).expect("write kubeconfig");
        path
    }

    /// Closes the listener and every connection (watches included), keeping the state.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("rebinding port {}: {e}; retrying", self.port);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind port {}: {e}", self.port),
            }
        };
        self.server = Some(tokio::spawn(serve(listener, self.shared.clone())));
    }

    /// Creates a Node as kubelet would (no wiremesh annotations unless given).
    pub fn create_node(&self, node: Node) {
        let value = serde_json::to_value(node).expect("node to JSON");
        let name = value["metadata"]["name"].as_str().expect("name").to_owned();
        self.shared.change(&name, "ADDED", |_| Some(value), false);
    }

    /// Applies a JSON merge patch to a Node directly (as kubelet or another actor would).
    pub fn patch_node(&self, name: &str, patch: Value) {
        self.shared
            .change(name, "MODIFIED", |old| merge(old, &patch), false);
    }

    /// Like [`FakeApiServer::patch_node`], but drops the event history: watches resuming from
    /// before it get 410 Gone and must relist to see the change. Open watches are ended.
    pub fn patch_node_compacting(&self, name: &str, patch: Value) {
        self.shared
            .change(name, "MODIFIED", |old| merge(old, &patch), true);
    }

    pub fn delete_node(&self, name: &str) {
        self.shared.change(name, "DELETED", |_| None, false);
    }

    pub fn node(&self, name: &str) -> Option<Node> {
        let state = self.shared.state.lock().expect("state lock");
        let value = state.nodes.get(name)?.clone();
        Some(serde_json::from_value(value).expect("stored node parses"))
    }

    /// The next `n` patches fail with 409 Conflict whatever they carry.
    pub fn fail_next_patches(&self, n: u32) {
        self.shared
            .state
            .lock()
            .expect("state lock")
            .forced_conflicts = n;
    }

    /// How many PATCH requests were answered (409s included).
    pub fn patches(&self) -> u32 {
        self.shared.state.lock().expect("state lock").patches
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Node as kubelet and the node IPAM controller leave it: `podCIDRs` and addresses, no
/// wiremesh annotations.
pub fn kubelet_node(name: &str, n: u8) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("kubernetes.io/hostname".to_string(), name.to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(format!("10.244.{n}.0/24")),
            pod_cidrs: Some(vec![
                format!("10.244.{n}.0/24"),
                format!("fd00:10:{n}::/64"),
            ]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: format!("198.18.0.{n}"),
                },
            ]),
            ..NodeStatus::default()
        }),
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Shared {
    /// Replaces (or removes) one Node under a new resourceVersion and logs the watch event.
    fn change(
        &self,
        name: &str,
        kind: &str,
        f: impl FnOnce(Option<&Value>) -> Option<Value>,
        compact: bool,
    ) -> Option<Value> {
        let mut st = self.state.lock().expect("state lock");
        let old = st.nodes.get(name).cloned();
        let new = f(old.as_ref());
        st.rv += 1;
        let rv = st.rv;
        let object = match new {
            Some(mut v) => {
                let meta = &mut v["metadata"];
                meta["resourceVersion"] = rv.to_string().into();
                if meta.get("uid").is_none() {
                    meta["uid"] = format!("uid-{name}-{rv}").into();
                    // As the real API server: the time of creation, in whole seconds, whatever
                    // the client sent.
                    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                    meta["creationTimestamp"] = now.to_string().into();
                }
                st.nodes.insert(name.into(), v.clone());
                v
            }
            None => {
                let mut v = st.nodes.remove(name)?;
                v["metadata"]["resourceVersion"] = rv.to_string().into();
                v
            }
        };
        if compact {
            st.log.clear();
            st.object_log.clear();
            st.compacted = rv;
        } else {
            st.log.push((rv, json!({ "type": kind, "object": object })));
        }
        drop(st);
        self.head.send_replace(rv);
        Some(object)
    }
}

/// RFC 7386 JSON merge patch.
fn merge(target: Option<&Value>, patch: &Value) -> Option<Value> {
    let Value::Object(p) = patch else {
        return Some(patch.clone());
    };
    let mut out = match target {
        Some(Value::Object(t)) => t.clone(),
        _ => serde_json::Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else if let Some(m) = merge(out.get(k), v) {
            out.insert(k.clone(), m);
        }
    }
    Some(Value::Object(out))
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped with this task on `stop`, which aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
        while conns.try_join_next().is_some() {}
    }
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = status;
    let json = hyper::header::HeaderValue::from_static("application/json");
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, json);
    resp
}

fn status(code: StatusCode, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    })
}

fn error(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    full(code, &status(code, reason, message))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if let Some(token) = &shared.token {
        let auth = req.headers().get(hyper::header::AUTHORIZATION);
        if auth.and_then(|a| a.to_str().ok()) != Some(&format!("Bearer {token}")) {
            let msg = "Unauthorized".to_string();
            return Ok(error(StatusCode::UNAUTHORIZED, "Unauthorized", msg));
        }
    }
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let path = req.uri().path().to_owned();
    let name = path.strip_prefix("/api/v1/nodes/").map(str::to_owned);
    let resp = match (req.method().clone(), path.as_str(), name) {
        (Method::GET, "/api/v1/nodes", _) if query.get("watch").is_some_and(|w| w != "false") => {
            watch_nodes(&shared, &query)
        }
        (Method::GET, "/api/v1/nodes", _) => {
            let st = shared.state.lock().expect("state lock");
            let items: Vec<&Value> = st.nodes.values().collect();
            let list = json!({
                "kind": "NodeList", "apiVersion": "v1",
                "metadata": { "resourceVersion": st.rv.to_string() }, "items": items,
            });
            full(StatusCode::OK, &list)
        }
        (Method::GET, _, Some(name)) => match shared.state.lock().expect("lock").nodes.get(&name) {
            Some(node) => full(StatusCode::OK, node),
            None => not_found(&name),
        },
        (Method::DELETE, _, Some(name)) => match shared.change(&name, "DELETED", |_| None, false) {
            Some(node) => full(StatusCode::OK, &node),
            None => not_found(&name),
        },
        (Method::PATCH, _, Some(name)) => patch_node(&shared, &name, req).await,
        (Method::GET, "/apis", _) => discovery(&shared),
        (method, path, _) => match route(&shared, path) {
            Route::Served(at) => serve_resource(&shared, method, at, &query, req).await,
            Route::NotInstalled => page_not_found(),
            Route::Unknown => error(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the fake API server does not serve {method} {path}"),
            ),
        },
    };
    Ok(resp)
}

fn not_found(name: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("nodes \"{name}\" not found"),
    )
}

async fn patch_node(shared: &Shared, name: &str, req: Request<Incoming>) -> Response<Body> {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if !matches!(
        content_type.as_str(),
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        let msg = format!("the fake API server does not take {content_type:?} patches");
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            msg,
        );
    }
    let Ok(body) = req.into_body().collect().await else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "body".into());
    };
    let mut patch: Value = match serde_json::from_slice(&body.to_bytes()) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let wanted = patch["metadata"]
        .as_object_mut()
        .and_then(|m| m.remove("resourceVersion"))
        .filter(|v| !v.is_null());
    let conflict = {
        let mut st = shared.state.lock().expect("state lock");
        st.patches += 1;
        let Some(node) = st.nodes.get(name) else {
            return not_found(name);
        };
        let current = node["metadata"]["resourceVersion"].clone();
        let stale = wanted.is_some_and(|w| w != current);
        let forced = st.forced_conflicts > 0;
        st.forced_conflicts = st.forced_conflicts.saturating_sub(1);
        forced || stale
    };
    if conflict {
        let msg = format!(
            "Operation cannot be fulfilled on nodes \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again"
        );
        let mut body = status(StatusCode::CONFLICT, "Conflict", msg);
        body["details"] = json!({ "name": name, "kind": "nodes" });
        return full(StatusCode::CONFLICT, &body);
    }
    // Between the check and the change another request may slip in; the tests' writers are
    // this one agent and the test itself, which never race on one Node.
    match shared.change(name, "MODIFIED", |old| merge(old, &patch), false) {
        Some(node) => full(StatusCode::OK, &node),
        None => not_found(name),
    }
}

fn watch_nodes(shared: &Arc<Shared>, query: &BTreeMap<String, String>) -> Response<Body> {
    watch_events(shared, query, Watched::Nodes)
}

/// What one watch follows.
#[derive(Clone)]
enum Watched {
    Nodes,
    /// One resource, in one namespace or (`None`) all.
    Objects(&'static Resource, Option<String>),
}

impl Watched {
    fn events(&self, st: &State, after: u64) -> Vec<Value> {
        match self {
            Watched::Nodes => {
                let events = st.log.iter().filter(|(rv, _)| *rv > after);
                events.map(|(_, e)| e.clone()).collect()
            }
            Watched::Objects(r, ns) => st
                .object_log
                .iter()
                .filter(|(rv, plural, e)| {
                    let in_ns = ns
                        .as_deref()
                        .is_none_or(|ns| e["object"]["metadata"]["namespace"].as_str() == Some(ns));
                    *rv > after && *plural == r.plural && in_ns
                })
                .map(|(_, _, e)| e.clone())
                .collect(),
        }
    }

    fn type_meta(&self) -> (&'static str, &'static str) {
        match self {
            Watched::Nodes => ("Node", "v1"),
            Watched::Objects(r, _) => (r.kind, r.group_version),
        }
    }
}

fn watch_events(
    shared: &Arc<Shared>,
    query: &BTreeMap<String, String>,
    watched: Watched,
) -> Response<Body> {
    let head = shared.head.subscribe();
    let from: u64 = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => *head.borrow(),
        Some(rv) => match rv.parse() {
            Ok(rv) => rv,
            Err(_) => {
                let msg = format!("invalid resourceVersion {rv:?}");
                return error(StatusCode::BAD_REQUEST, "BadRequest", msg);
            }
        },
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let secs = query.get("timeoutSeconds").and_then(|s| s.parse().ok());
    let until = tokio::time::Instant::now() + Duration::from_secs(secs.unwrap_or(1800));
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(stream_events(
        shared.clone(),
        head,
        from,
        bookmarks,
        until,
        tx,
        watched,
    ));
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    let json = hyper::header::HeaderValue::from_static("application/json");
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, json);
    resp
}

async fn stream_events(
    shared: Arc<Shared>,
    mut head: watch::Receiver<u64>,
    mut cursor: u64,
    bookmarks: bool,
    until: tokio::time::Instant,
    tx: mpsc::Sender<Bytes>,
    watched: Watched,
) {
    let line = |v: &Value| Bytes::from(format!("{v}\n"));
    loop {
        let batch = {
            let st = shared.state.lock().expect("state lock");
            if cursor < st.compacted {
                let msg = format!("too old resource version: {cursor} ({})", st.compacted);
                Err(status(StatusCode::GONE, "Expired", msg))
            } else {
                let events = watched.events(&st, cursor);
                cursor = st.rv;
                Ok(events)
            }
        };
        match batch {
            Err(gone) => {
                let _ = tx
                    .send(line(&json!({ "type": "ERROR", "object": gone })))
                    .await;
                return;
            }
            Ok(events) => {
                for e in events {
                    if tx.send(line(&e)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let compacted_before = shared.state.lock().expect("state lock").compacted;
        tokio::select! {
            r = head.changed() => if r.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)), if bookmarks => {
                let (kind, api_version) = watched.type_meta();
                let bookmark = json!({ "type": "BOOKMARK", "object": {
                    "kind": kind, "apiVersion": api_version,
                    "metadata": { "resourceVersion": cursor.to_string() },
                }});
                if tx.send(line(&bookmark)).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(until) => return,
        }
        // A compaction ends open watches, as an API server restart would.
        if shared.state.lock().expect("state lock").compacted != compacted_before {
            return;
        }
    }
}
