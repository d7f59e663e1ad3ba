//! The Kubernetes store: each agent publishes its record as `wiremesh.io/*` annotations of its own
//! `Node` object (which kubelet creates; wiremesh never creates or deletes Nodes) and learns its
//! peers by listing and watching every Node. Pod CIDRs come from `spec.podCIDRs` and node IPs
//! from `status.addresses`, so an agent can only announce its key and endpoint, never someone
//! else's address range.
//!
//! The node name is claimed with `wiremesh.io/owner` and kept with `wiremesh.io/heartbeat`,
//! refreshed every `heartbeat`; a claim whose heartbeat is older than `owner_ttl` may be taken
//! over. Every write is a merge patch preconditioned on the Node's `resourceVersion`, so a
//! concurrent change (kubelet's, or another agent's claim) is re-read and re-checked instead of
//! overwritten.
//!
//! As with etcd, everything that talks to the API server runs in one background task (the
//! [`session`] loop) that reconnects on its own, and an unreachable API server never blocks or
//! fails the agent. Tests run against an in-process fake API server speaking the same REST and
//! watch protocol (`keymgr/tests/fake_apiserver`): no real API server can be installed on the
//! project's machines.

pub(super) mod node;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::config::Kubeconfig;
use kube::Client;
use tokio::sync::watch;

use super::backend::{Backend, Server};
use super::task::Handle;
use super::{ClaimOutcome, Snapshot, StoreError, StoreHealth};
use crate::{Admission, NodeRecord};

/// How long one request to the API server may take before it counts as down.
pub(super) const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// The API server ends each watch after this long; kube's watcher then resumes from the last
/// resourceVersion.
pub(super) const WATCH_SECS: u32 = 55;

/// Where and how to reach the API server, and the ownership timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConfig {
    /// A kubeconfig file; `None` infers the config as kubectl does: `$KUBECONFIG` or
    /// `~/.kube/config`, else the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// How often `wiremesh.io/heartbeat` is refreshed.
    pub heartbeat: Duration,
    /// How old a heartbeat must be before another agent may take the node name over.
    pub owner_ttl: Duration,
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            heartbeat: Duration::from_secs(10),
            owner_ttl: Duration::from_secs(40),
        }
    }
}

/// The API server a config names, read once at start. The node store and the object store
/// (`objects::KubeObjects`) each build their clients from it.
#[derive(Debug, Clone)]
pub(super) struct ApiServer {
    /// The kubeconfig read at start; `None` infers the config for each client.
    kubeconfig: Option<(PathBuf, Kubeconfig)>,
    /// Its URL (or how it is found), for messages.
    pub(super) server: String,
}

impl ApiServer {
    /// Reads the kubeconfig file, if one is named; the error names the file.
    pub(super) fn open(kubeconfig: Option<&Path>) -> Result<Self, StoreError> {
        let kubeconfig = match kubeconfig {
            None => None,
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| StoreError::Kubeconfig {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                Some((path.to_path_buf(), kc))
            }
        };
        let server = match &kubeconfig {
            None => "(inferred: $KUBECONFIG, ~/.kube/config or in-cluster)".to_owned(),
            Some((path, kc)) => current_server(kc).unwrap_or_else(|| path.display().to_string()),
        };
        Ok(Self { kubeconfig, server })
    }

    /// A new client, with [`RPC_TIMEOUT`] to connect and [`WATCH_SECS`] + [`RPC_TIMEOUT`] for any
    /// read.
    pub(super) async fn client(&self) -> Result<Client, ClientError> {
        let mut config = match &self.kubeconfig {
            Some((path, kc)) => {
                let options = kube::config::KubeConfigOptions::default();
                let config = kube::Config::from_custom_kubeconfig(kc.clone(), &options).await;
                config.map_err(|source| ClientError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
            }
            None => kube::Config::infer().await.map_err(ClientError::Infer)?,
        };
        config.connect_timeout = Some(RPC_TIMEOUT);
        // Every read, a watch's included: the server ends each watch after WATCH_SECS, so a
        // connection silent for longer is a dead one.
        config.read_timeout = Some(Duration::from_secs(WATCH_SECS.into()) + RPC_TIMEOUT);
        Client::try_from(config).map_err(|source| ClientError::Client {
            server: self.server.clone(),
            source,
        })
    }
}

/// Why no client could be made for the API server.
#[derive(Debug, thiserror::Error)]
pub(super) enum ClientError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes config found: {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("Kubernetes client for {server}: {source}")]
    Client {
        server: String,
        #[source]
        source: kube::Error,
    },
}

/// Identity and connection settings, shared read-only with the background task.
#[derive(Debug)]
struct Target {
    api: ApiServer,
    cluster: String,
    node: String,
    owner_id: String,
    heartbeat: Duration,
    owner_ttl: Duration,
}

/// This node's handle on the Kubernetes store. Use: [`KubeStore::start`], then
/// [`KubeStore::claim`] (refuse to start on `NodeNameTaken`), then [`KubeStore::publish`],
/// [`KubeStore::subscribe`] and [`KubeStore::health`] (exit on `Conflict`). Dropping it stops the
/// background task and leaves the annotations as they are; [`KubeStore::close`] also releases
/// the node name.
pub struct KubeStore {
    handle: Handle<NodeRecord>,
}

impl KubeStore {
    /// Validates the config, reads the kubeconfig file (if one is named) and starts the
    /// background task. Never waits for the API server: until the first successful listing,
    /// [`KubeStore::subscribe`] yields `initial`. Records are admitted as `admission` says.
    /// Must be called inside a tokio runtime.
    pub fn start(
        config: KubeConfig,
        cluster: &str,
        node_name: &str,
        owner_id: &str,
        initial: Snapshot,
        admission: Admission,
    ) -> Result<Self, StoreError> {
        let target = Arc::new(Target::new(config, cluster, node_name, owner_id)?);
        let backend = Backend {
            server: Server::Kubernetes {
                server: target.api.server.clone(),
            },
            describe: format!("kubernetes:{}", target.api.server),
            node: target.node.clone(),
            write: format!("write of the annotations of Node {}", target.node),
            following: "Nodes".into(),
            claim_at: format!("annotation {} of Node {}", node::OWNER, target.node),
            claim_ends: format!("lapses {:?} after its last heartbeat", target.owner_ttl),
            patience: 2 * RPC_TIMEOUT,
        };
        let span = tracing::info_span!("kube_store", node = %target.node);
        let handle = Handle::spawn(backend, initial, span, |link| {
            session::Shell {
                target,
                view: node::View::new(admission),
                link,
            }
            .run()
        });
        Ok(Self { handle })
    }

    /// Waits up to `timeout` for the first contact with the API server. `Err(NodeNameTaken)`
    /// means another live agent holds this node name and the caller must refuse to start.
    pub async fn claim(&self, timeout: Duration) -> Result<ClaimOutcome, StoreError> {
        self.handle.claim(timeout).await
    }

    /// Makes `record` this node's desired record and waits until its annotations are written.
    /// `record.pod_cidrs` and `record.node_ips` are not published: peers read them from the Node.
    /// While the API server is unreachable this fails with `KubeUnavailable` at once, but the
    /// record stays desired and is written as soon as the server is back.
    pub async fn publish(&self, record: &NodeRecord) -> Result<(), StoreError> {
        self.handle.publish(record, |r| Ok(r.clone())).await
    }

    /// Snapshots of the cluster's valid records (this node's own included).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.handle.subscribe()
    }

    /// Connection state; `Conflict` means another agent took this node name and this one must
    /// stop.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.handle.health()
    }

    pub fn describe(&self) -> &str {
        self.handle.describe()
    }

    /// Graceful shutdown: removes the owner and heartbeat annotations, so that another agent may
    /// take the node name at once. The record stays: the data path outlives the agent, and peers
    /// keep reaching it with the same key.
    pub async fn close(self) {
        self.handle.close().await;
    }

    /// Stops at once, as if the process had been killed: the claim stays until its heartbeat is
    /// older than the owner TTL. Dropping the store does the same.
    pub fn abandon(self) {
        self.handle.abandon();
    }
}

impl Target {
    fn new(
        config: KubeConfig,
        cluster: &str,
        node: &str,
        owner_id: &str,
    ) -> Result<Self, StoreError> {
        let bad = |field: &'static str, value: String, reason: &'static str| StoreError::Config {
            field,
            value,
            reason,
        };
        for (field, value) in [("nodeName", node), ("ownerId", owner_id)] {
            if value.is_empty() {
                return Err(bad(field, value.into(), "must be non-empty"));
            }
        }
        if config.heartbeat < Duration::from_millis(100) {
            let v = format!("{:?}", config.heartbeat);
            return Err(bad("heartbeat", v, "must be at least 100ms"));
        }
        if config.owner_ttl < 2 * config.heartbeat {
            let v = format!("{:?}", config.owner_ttl);
            return Err(bad(
                "ownerTTL",
                v,
                "must be at least twice the heartbeat, or a live agent loses its name",
            ));
        }
        Ok(Self {
            api: ApiServer::open(config.kubeconfig.as_deref())?,
            cluster: cluster.into(),
            node: node.into(),
            owner_id: owner_id.into(),
            heartbeat: config.heartbeat,
            owner_ttl: config.owner_ttl,
        })
    }
}

/// The server URL of the kubeconfig's current context, for messages.
fn current_server(kc: &Kubeconfig) -> Option<String> {
    let context = kc.current_context.as_ref()?;
    let named = kc.contexts.iter().find(|c| &c.name == context)?;
    let cluster = named.context.as_ref()?.cluster.clone();
    let entry = kc.clusters.iter().find(|c| c.name == cluster)?;
    entry.cluster.as_ref()?.server.clone()
}

/// This node's pod CIDRs as its `Node` says (`spec.podCIDRs`, else `spec.podCIDR`): what an
/// agent in a DaemonSet runs with, since one ConfigMap serves every node and the downward API
/// does not carry them. One GET, within [`RPC_TIMEOUT`].
pub async fn node_pod_cidrs(
    config: &KubeConfig,
    node: &str,
) -> Result<Vec<ipnet::IpNet>, StoreError> {
    let api = ApiServer::open(config.kubeconfig.as_deref())?;
    let unavailable = |reason: String| StoreError::KubeUnavailable {
        server: api.server.clone(),
        reason,
    };
    let client = api.client().await.map_err(|e| unavailable(e.to_string()))?;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
    let got = tokio::time::timeout(RPC_TIMEOUT, nodes.get(node))
        .await
        .map_err(|_| unavailable(format!("get Node {node}: no answer within {RPC_TIMEOUT:?}")))?
        .map_err(|e| unavailable(format!("get Node {node}: {e}")))?;
    let spec = got.spec.unwrap_or_default();
    let cidrs = match spec.pod_cidrs {
        Some(list) if !list.is_empty() => list,
        _ => spec.pod_cidr.into_iter().collect(),
    };
    cidrs
        .iter()
        .map(|c| {
            c.parse().map_err(|_| StoreError::Config {
                field: "Node spec.podCIDRs",
                value: c.clone(),
                reason: "not a CIDR",
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_config_names_the_offending_value() {
        let t = |c: KubeConfig| Target::new(c, "lab", "node-1", "owner-a").err().unwrap();
        let e = t(KubeConfig {
            owner_ttl: Duration::from_secs(15),
            ..KubeConfig::default()
        });
        assert!(e.to_string().contains("ownerTTL = \"15s\""), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-kubeconfig");
        let e = t(KubeConfig {
            kubeconfig: Some(missing.clone()),
            ..KubeConfig::default()
        });
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        let e = Target::new(KubeConfig::default(), "lab", "node-1", "")
            .err()
            .unwrap();
        assert!(e.to_string().contains("ownerId"), "{e}");
    }
}
