//! The server in process, for one test: plain HTTP on a free loopback port, with helpers that
//! change the state directly (as kubelet or another actor would), inject 409s, compact the
//! event history, uninstall CRDs, and stop and restart the server on the same port (an outage).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::auth::{Tokens, User};
use crate::resources::{self, Resource};
use crate::serve::{serve, Shared};
use crate::state::{merge, Store};

pub struct FakeApiServer {
    shared: Arc<Shared>,
    port: u16,
    dir: TempDir,
    server: Option<JoinHandle<()>>,
}

fn resource_of_kind(kind: &str) -> &'static Resource {
    resources::of_kind(kind)
        .unwrap_or_else(|| panic!("the fake API server does not serve kind {kind}"))
}

impl FakeApiServer {
    /// Serves without authentication or authorization.
    pub async fn start() -> Self {
        Self::start_with(Tokens::none()).await
    }

    /// Like [`FakeApiServer::start`], answering 401 to requests without `Bearer <token>`
    /// (the token's user is in `system:masters`).
    pub async fn start_with_token(token: &str) -> Self {
        let admin = User::new("admin", &["system:masters"]);
        Self::start_with(Tokens::with([(token.to_owned(), admin)])).await
    }

    async fn start_with(tokens: Tokens) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let store = Store::open(None).expect("an empty store needs no file");
        let shared = Arc::new(Shared {
            store: Arc::new(store),
            tokens,
            authorizer: None,
            audit: None,
        });
        let server = Some(tokio::spawn(serve(listener, shared.clone(), None)));
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
    pub fn kubeconfig(&self, token_file: Option<&Path>) -> PathBuf {
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
            .join(format!("kubeconfig-{}", next_suffix()));
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
        self.server = Some(tokio::spawn(serve(listener, self.shared.clone(), None)));
    }

    pub(crate) fn shared_store(&self) -> &Store {
        &self.shared.store
    }

    /// Creates a Node as kubelet would (no wiremesh annotations unless given).
    pub fn create_node(&self, node: Node) {
        self.put(serde_json::to_value(node).expect("node to JSON"));
    }

    /// Applies a JSON merge patch to a Node directly (as kubelet or another actor would).
    pub fn patch_node(&self, name: &str, patch: Value) {
        self.patch_node_with(name, &patch, false);
    }

    /// Like [`FakeApiServer::patch_node`], but drops the event history: watches resuming from
    /// before it get 410 Gone and must relist to see the change. Open watches are ended.
    pub fn patch_node_compacting(&self, name: &str, patch: Value) {
        self.patch_node_with(name, &patch, true);
    }

    fn patch_node_with(&self, name: &str, patch: &Value, compact: bool) {
        let r = resource_of_kind("Node");
        let f = |old: Option<&Value>| Some(("MODIFIED", merge(old, patch)));
        self.shared_store().change(r, "", name, f, compact);
    }

    pub fn delete_node(&self, name: &str) {
        self.delete("Node", "", name);
    }

    pub fn node(&self, name: &str) -> Option<Node> {
        let value = self.object("Node", "", name)?;
        Some(serde_json::from_value(value).expect("stored node parses"))
    }

    /// The next `n` patches fail with 409 Conflict whatever they carry.
    pub fn fail_next_patches(&self, n: u32) {
        self.shared_store().lock().forced_conflicts = n;
    }

    /// How many PATCH requests were answered (409s included).
    pub fn patches(&self) -> u32 {
        self.shared_store().lock().patches
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn next_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
