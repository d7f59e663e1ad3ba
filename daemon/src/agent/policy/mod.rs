//! Policy in the agent: follows the cluster's objects (Namespaces, Pods, policies) and the node
//! records in the store, keeps the last object set that loads as the policy in force, and drives
//! the eBPF enforcer on the host-side interfaces of this node's endpoints.
//!
//! An object set that does not load (someone wrote a bad manifest straight into the store) never
//! replaces the one in force: it is logged at ERROR and counted, and the next good set wins. An
//! endpoint whose map update fails is failed closed by the enforcer. Every set accepted from the
//! store is saved (`saved.rs`) and enforced at the next start until the store answers.
//!
//! `planner.rs` is the pure core (no I/O, no clock): `take.rs` loads a set into the policy in
//! force, `pass.rs` decides one enforcement pass, `attach.rs` which interfaces carry the
//! programs; it talks to `run.rs`, the I/O shell (netlink, the enforcer, the saved file, the
//! watch channels), through the actions and answers of `action.rs`. `saved.rs` is the saved set.

mod action;
mod attach;
mod pass;
mod planner;
#[cfg(test)]
mod planner_tests;
mod run;
pub mod saved;
mod take;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::{Context, Result};
use keymgr::store::objects::ObjectSet;
use keymgr::Snapshot;
use policy::{Bundle, Compiled};

use crate::config::{Enforcement, PolicyConfig};
use wiremesh_enforce::{Counter, EnforceError, Enforcer};

pub use planner::PassReport;
pub use run::{PolicyLoop, PolicyLoopError};

/// The policy in force: what the enforcer applies and what an online trace answers from.
#[derive(Clone)]
pub struct PolicyState {
    pub bundle: Arc<Bundle>,
    pub compiled: Arc<Compiled>,
    /// How many object sets have been loaded (1 for the first).
    pub generation: u64,
    /// Why the newest object set was refused, while the previous one stays in force.
    pub refused: Option<String>,
    /// This node's endpoints and the interface each is enforced on (`namespace/name` →
    /// interface), or why it is not.
    pub endpoints: BTreeMap<String, Result<String, NotEnforced>>,
}

/// Why a local endpoint is not enforced on an interface.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotEnforced {
    #[error("route lookup: {reason}")]
    RouteLookup { reason: String },
    #[error("no route to {ip}")]
    NoRoute { ip: IpAddr },
    #[error("{ip} is routed into the tunnel, not to a local interface")]
    Tunnel { ip: IpAddr },
    #[error("{ip} is routed via a gateway ({ifname})")]
    Gateway { ip: IpAddr, ifname: String },
    #[error("the policy programs are not attached to {ifname}")]
    NotAttached { ifname: String },
}

impl std::fmt::Debug for PolicyState {
    /// The bundle and maps are left out: they are large, and the trace and status show them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyState")
            .field("generation", &self.generation)
            .field("refused", &self.refused)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Default for PolicyState {
    /// No objects: nothing is isolated.
    fn default() -> Self {
        let bundle = Bundle::default();
        Self {
            compiled: Arc::new(Compiled::build(&bundle)),
            bundle: Arc::new(bundle),
            generation: 0,
            refused: None,
            endpoints: BTreeMap::new(),
        }
    }
}

/// Counters for metrics.
#[derive(Default)]
pub struct PolicyCounters {
    pub load_failures: AtomicU64,
    pub apply_failures: AtomicU64,
    pub applies: AtomicU64,
    /// The eBPF programs' packet counters as of the last pass, with the endpoint each
    /// interface serves.
    pub packets: std::sync::Mutex<Vec<(String, Counter)>>,
}

/// What this agent enforces, as loader options: everything it loads is enforced, and what it
/// cannot enforce is refused by name (`wiremesh apply`, offline `policy trace` and the policy
/// loop all load with these). HTTP rules, and Istio AuthorizationPolicies that read the HTTP
/// request, a source or destination address, or AUDIT, are enforced by the L7 proxy; the other
/// AuthorizationPolicies and PeerAuthentication by the eBPF programs.
pub fn load_options() -> policy::LoadOptions {
    policy::LoadOptions {
        l7_model: true,
        istio_model: policy::IstioModel::Full,
        ..policy::LoadOptions::default()
    }
}

/// Loads an object set into a bundle and adds what the node records know about nodes (their
/// addresses are the `host` and `remote-node` identities).
/// With a cluster mesh, the set carries the remote clusters' Pods and Namespaces and the
/// scope (`clustermesh::objects`): this cluster's endpoints then carry its cluster label, and
/// the remote ones are added with theirs. A remote cluster whose objects do not load adds no
/// endpoint (its pods stay `world` here) and a note says why; this cluster's objects decide
/// whether the set loads.
pub fn load(set: &ObjectSet, nodes: &Snapshot) -> Result<Bundle, policy::LoadError> {
    let parts = crate::agent::clustermesh::objects::split(set);
    let options = policy::LoadOptions {
        cluster_name: parts.scope.as_ref().map(|s| s.local.clone()),
        ..load_options()
    };
    let mut bundle = policy::load_with(parts.local, options)?;
    if let Some(scope) = &parts.scope {
        bundle.cluster_ids = scope.ids.clone();
        for (cluster, texts) in parts.remote {
            let options = policy::LoadOptions {
                cluster_name: Some(cluster.to_string()),
                ..load_options()
            };
            match policy::load_with(texts, options) {
                Ok(remote) => bundle.add_remote_cluster(cluster, remote),
                Err(e) => bundle.notes.push(format!(
                    "cluster {cluster}: its pods are not known here ({e}); they count as world"
                )),
            }
        }
    }
    for rec in nodes.nodes.values() {
        let node = node_entry(&mut bundle, &rec.node_name);
        for ip in rec.node_ips.iter().copied().chain([rec.endpoint.ip()]) {
            if !node.ips.contains(&ip) {
                node.ips.push(ip);
            }
        }
    }
    Ok(bundle)
}

const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The bundle's node `name`, added if missing, with the hostname label the kubelet gives every
/// Node (a node learnt only from a pod's `nodeName` has no labels).
fn node_entry<'b>(bundle: &'b mut Bundle, name: &str) -> &'b mut policy::model::Node {
    let node = bundle
        .nodes
        .entry(name.to_string())
        .or_insert_with(|| policy::model::Node {
            name: name.to_string(),
            ..Default::default()
        });
    node.labels
        .entry(HOSTNAME_LABEL.to_string())
        .or_insert_with(|| name.to_string());
    node
}

/// Opens the enforcer (mounting the BPF filesystem at /sys/fs/bpf if it is missing, as Cilium
/// does). `None` when enforcement is off.
pub fn open_enforcer(config: &PolicyConfig) -> Result<Option<Enforcer>> {
    if config.enforcement == Enforcement::Never {
        tracing::warn!(
            "policy.enforcement is never: network policies are NOT enforced on this node"
        );
        return Ok(None);
    }
    let hint = "set policy.enforcement: never to run without policy enforcement";
    let enforcer = match Enforcer::open(&config.bpf_pin_dir) {
        Err(EnforceError::NotBpfFs { .. }) => {
            wiremesh_enforce::ensure_bpf_fs(std::path::Path::new("/sys/fs/bpf"))
                .with_context(|| format!("mounting a BPF filesystem ({hint})"))?;
            Enforcer::open(&config.bpf_pin_dir)
        }
        other => other,
    };
    Ok(Some(enforcer.with_context(|| {
        format!("loading the eBPF policy programs ({hint})")
    })?))
}
