//! `encrypt status` and `/healthz` on the admin API: this node's interface, key and peers as
//! the data path reports them, every node's key as the store has it, and the agent's task
//! health. It reads views and asks the data path (`get`, without keys); it changes nothing.

use std::sync::Arc;

use hyper::StatusCode;
use keymgr::store::StoreHealth;
use keymgr::Snapshot;
use tokio::sync::watch;
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::model::DeviceError;

use super::server::{Reply, Routes};
use super::view::{OwnKeyView, PeerNames, View};
use crate::api::status::{rfc3339, store_health};
use crate::api::{paths, EncryptStatus, Health, KeyState, NodeStatus, PeerStatus};
use crate::strict::StrictStatus;

/// Facts fixed at start.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub interface: String,
    pub mtu: u32,
    pub node_name: String,
    pub cluster_name: String,
    /// The store, as `Store::describe` names it.
    pub store: String,
}

/// What `encrypt status` reads.
pub struct EncryptView {
    pub facts: NodeFacts,
    pub datapath: Arc<Datapath>,
    pub store_health: watch::Receiver<StoreHealth>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub own: View<OwnKeyView>,
    pub names: View<PeerNames>,
    /// Strict mode's guard table as the agent last read it (every 2 s).
    pub strict: watch::Receiver<StrictStatus>,
    /// The agent's supervised tasks.
    pub health: watch::Receiver<Health>,
}

/// `GET /healthz`, `GET /v1/encrypt/status`, `GET /v1/encrypt/nodes`.
pub fn register(routes: &mut Routes, view: Arc<EncryptView>) {
    let v = view.clone();
    routes.get(paths::HEALTHZ, move |call| {
        let health = v.health.borrow().clone();
        let verbose = call
            .query
            .as_deref()
            .is_some_and(|q| q.split('&').any(|p| p == "verbose"));
        async move { healthz(&health, verbose) }
    });
    let v = view.clone();
    routes.get(paths::STATUS, move |_| {
        let v = v.clone();
        async move { Reply::json_or_unavailable(v.status().await) }
    });
    routes.get(paths::NODES, move |_| {
        let v = view.clone();
        async move { Reply::json_or_unavailable(v.nodes().await) }
    });
}

/// "ok" while every task runs; 503 naming the others. With `?verbose`, one line per supervised
/// task as Kubernetes' `/healthz?verbose` prints its checks.
fn healthz(health: &Health, verbose: bool) -> Reply {
    let code = match crate::api::health::unhealthy(health) {
        None if !verbose => return Reply::ok("ok\n".into()),
        Some(down) if !verbose => {
            return Reply::with(StatusCode::SERVICE_UNAVAILABLE, format!("{down}\n"))
        }
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    Reply::with(code, crate::api::health::render_verbose(health))
}

impl EncryptView {
    pub async fn status(&self) -> Result<EncryptStatus, DeviceError> {
        let state = self.datapath.get().await?;
        let names = self.names.get();
        let own = self.own.get();
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
        let facts = &self.facts;
        Ok(EncryptStatus {
            encryption: "Wireguard".into(),
            interface: facts.interface.clone(),
            public_key: own.public.to_base64(),
            listen_port: state.listen_port,
            mtu: facts.mtu,
            datapath: self.datapath.kind().into(),
            datapath_process: state.process.map(|p| crate::api::status::DatapathProcess {
                version: p.version,
                pid: p.pid,
            }),
            node_name: facts.node_name.clone(),
            cluster_name: facts.cluster_name.clone(),
            store: facts.store.clone(),
            store_health: store_health(&self.store_health.borrow()),
            key_epoch: own.epoch,
            key_created: rfc3339(own.created),
            next_rotation: own.next_rotation.map(rfc3339),
            next_public_key: own.next.map(|k| k.to_base64()),
            strict_mode: self.strict.borrow().clone(),
            peers,
            tasks: self.health.borrow().clone(),
        })
    }

    /// Every node in the store, and whether the key this node's data path uses for it is the
    /// one it publishes: a stale key is the classic silent failure.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, DeviceError> {
        let state = self.datapath.get().await?;
        let snap = self.snapshots.borrow().clone();
        let own = self.own.get();
        let mut out = Vec::new();
        for (name, rec) in &snap.nodes {
            let is_self = *name == self.facts.node_name;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{TaskState, TaskStatus};

    #[test]
    fn healthz_is_ok_until_a_task_fails() {
        let mut health = Health::new();
        let running = TaskStatus {
            state: TaskState::Running,
            restarts: 0,
            last_failure: None,
        };
        health.insert("rotation".into(), running);
        let ok = healthz(&health, false);
        assert_eq!((ok.code, ok.body.as_str()), (StatusCode::OK, "ok\n"));
        let restarting = TaskStatus {
            state: TaskState::Restarting,
            restarts: 3,
            last_failure: Some("panicked at run.rs:1".into()),
        };
        health.insert("policy".into(), restarting);
        let failed = healthz(&health, false);
        assert_eq!(failed.code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            failed.body,
            "task policy is restarting (panicked at run.rs:1)\n"
        );
        let verbose = healthz(&health, true);
        assert_eq!(verbose.code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            verbose.body.contains("[-]task policy restarting")
                && verbose.body.contains("[+]task rotation ok")
                && verbose.body.ends_with("healthz check failed\n"),
            "{}",
            verbose.body
        );
    }
}
