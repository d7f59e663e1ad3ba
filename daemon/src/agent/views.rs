//! What the agent shows the admin server: its published state (watch channels, counters, the
//! rotator's request channel) projected into the admin API's views. The one place that knows
//! both the agent's types and the admin server's; it starts nothing and changes nothing.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use keymgr::store::objects::ObjectStore;
use keymgr::{PublicKey, Store};
use tokio::sync::{mpsc, oneshot, watch};
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::model::DeviceView;

use super::peers::PeerKey;
use super::policy::{PolicyCounters, PolicyState};
use super::rotation::{OwnKey, RotateRequest};
use crate::admin::encrypt::{EncryptView, NodeFacts};
pub use crate::admin::flows::Flows;
use crate::admin::keys::{Rotate, RotationFailed};
use crate::admin::metrics::MetricsView;
use crate::admin::objects::ObjectsView;
use crate::admin::view::{OwnKeyView, PeerName, PolicyTotals, PolicyView, View};
use crate::admin::AdminViews;
use crate::api::Health;
use crate::config::Config;
use crate::strict::StrictStatus;

/// The agent's state the admin API reads.
pub struct Published {
    pub store: Arc<Store>,
    pub datapath: Arc<Datapath>,
    pub names: watch::Receiver<Arc<HashMap<PublicKey, PeerKey>>>,
    pub own: watch::Receiver<OwnKey>,
    pub rotate: mpsc::Sender<RotateRequest>,
    pub objects: Arc<ObjectStore>,
    pub policy: watch::Receiver<Arc<PolicyState>>,
    pub policy_counters: Arc<PolicyCounters>,
    pub device_view: watch::Receiver<Option<Arc<DeviceView>>>,
    pub strict: watch::Receiver<StrictStatus>,
    pub health: watch::Receiver<Health>,
    pub flows: Flows,
    pub clustermesh: watch::Receiver<crate::api::ClusterMeshStatus>,
}

pub fn admin_views(config: &Config, mtu: u32, p: Published) -> AdminViews {
    let encrypt = Arc::new(EncryptView {
        facts: NodeFacts {
            interface: config.interface.clone(),
            mtu,
            node_name: config.node_name.clone(),
            cluster_name: config.cluster_name.clone(),
            store: p.store.describe(),
        },
        datapath: p.datapath,
        store_health: p.store.health(),
        snapshots: p.store.subscribe(),
        own: View::of(p.own, own_key),
        names: View::of(p.names, |names| Arc::new(peer_names(names))),
        strict: p.strict,
        health: p.health,
    });
    let clustermesh = {
        let (status, policy) = (p.clustermesh.clone(), p.policy.clone());
        View::new(move || with_endpoints(status.borrow().clone(), &policy.borrow()))
    };
    let policy = View::of(p.policy, |s| policy_view(s));
    let counters = p.policy_counters;
    let metrics = Arc::new(MetricsView {
        node: encrypt.clone(),
        device: p.device_view,
        policy: policy.clone(),
        totals: View::new(move || policy_totals(&counters)),
        flows: p.flows.log.clone(),
        proxy_stats: p.flows.proxy_stats.subscribe(),
        clustermesh: p.clustermesh.clone(),
    });
    let objects = Arc::new(ObjectsView {
        store: p.objects,
        nodes: p.store.subscribe(),
        validate: Arc::new(|set, nodes| {
            super::policy::load(set, nodes)
                .map(drop)
                .map_err(Into::into)
        }),
    });
    AdminViews {
        encrypt,
        rotate: rotate(p.rotate),
        objects,
        policy,
        metrics,
        flows: p.flows,
        clustermesh,
    }
}

/// Each remote cluster's endpoints and their identities, from the policy in force.
fn with_endpoints(
    mut status: crate::api::ClusterMeshStatus,
    state: &PolicyState,
) -> crate::api::ClusterMeshStatus {
    for c in &mut status.clusters {
        let endpoints: Vec<_> = state
            .bundle
            .endpoints
            .iter()
            .filter(|e| e.cluster.as_deref() == Some(c.name.as_str()))
            .collect();
        let identities: std::collections::BTreeSet<_> = endpoints
            .iter()
            .flat_map(|e| &e.ips)
            .map(|ip| state.compiled.identities.lookup(*ip, None))
            .collect();
        c.endpoints = endpoints.len();
        c.identities = identities.len();
    }
    status
}

fn own_key(k: &OwnKey) -> OwnKeyView {
    OwnKeyView {
        public: k.public,
        epoch: k.epoch,
        created: k.created,
        next: k.next,
        next_rotation: k.next_rotation,
    }
}

fn peer_names(names: &HashMap<PublicKey, PeerKey>) -> HashMap<PublicKey, PeerName> {
    let name = |p: &PeerKey| PeerName {
        node: p.node.clone(),
        epoch: p.epoch,
    };
    names.iter().map(|(k, p)| (*k, name(p))).collect()
}

fn policy_view(s: &PolicyState) -> PolicyView {
    let enforced = s.endpoints.values().filter(|r| r.is_ok()).count() as u64;
    PolicyView {
        bundle: s.bundle.clone(),
        generation: s.generation,
        refused: s.refused.clone(),
        endpoints_enforced: enforced,
        endpoints_failed: s.endpoints.len() as u64 - enforced,
    }
}

fn policy_totals(c: &PolicyCounters) -> PolicyTotals {
    PolicyTotals {
        load_failures: c.load_failures.load(Relaxed),
        apply_failures: c.apply_failures.load(Relaxed),
        // A poisoned lock (a panic mid-update) shows no packet counters rather than torn ones.
        packets: c.packets.lock().map(|p| p.clone()).unwrap_or_default(),
    }
}

/// Asks the rotator over its request channel and waits for its answer.
fn rotate(requests: mpsc::Sender<RotateRequest>) -> Rotate {
    Arc::new(move || {
        let requests = requests.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let stopped = |_| RotationFailed::RotatorStopped;
            requests.send(tx).await.map_err(stopped)?;
            match rx.await {
                Err(_) => Err(RotationFailed::RotatorStopped),
                Ok(Err(e)) => Err(RotationFailed::Rotator(Box::new(e))),
                Ok(Ok(_)) => Ok(()),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::agent::rotation::RotateError;

    #[tokio::test]
    async fn a_rotation_answers_with_the_rotators_own_words() {
        let (tx, mut requests) = mpsc::channel::<RotateRequest>(1);
        let rotate = rotate(tx);
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let refusal = RotateError::StoreUnreachable { since };
        let want = refusal.to_string();
        let answer = tokio::spawn(async move {
            let reply = requests.recv().await.expect("a request");
            let _ = reply.send(Err(refusal));
            // The control: a rotator that has gone.
            drop(requests);
        });
        let err = rotate().await.unwrap_err();
        assert_eq!(err.to_string(), want);
        answer.await.unwrap();
        let err = rotate().await.unwrap_err();
        assert!(matches!(err, RotationFailed::RotatorStopped), "{err}");
    }

    #[test]
    fn the_policy_view_counts_endpoints_by_enforcement() {
        let mut state = PolicyState {
            generation: 4,
            ..Default::default()
        };
        state.endpoints.insert("x/a".into(), Ok("lxc1".into()));
        state.endpoints.insert("x/b".into(), Ok("lxc2".into()));
        let not = crate::agent::policy::NotEnforced::NotAttached {
            ifname: "lxc3".into(),
        };
        state.endpoints.insert("x/c".into(), Err(not));
        let view = policy_view(&state);
        assert_eq!(view.generation, 4);
        assert_eq!((view.endpoints_enforced, view.endpoints_failed), (2, 1));
    }
}
