//! Objects from the Kubernetes API: the kinds of `policy::kinds` (Namespaces, Pods,
//! NetworkPolicies, CiliumNetworkPolicies and CiliumClusterwideNetworkPolicies; Nodes are the
//! node store's) in every namespace, each listed then watched by its own follower ([`follow`]),
//! all feeding one publisher that keeps the [`ObjectSet`]. The set is `synced` once every kind
//! has been listed; a kind's listing replaces what was known of it, so a Cilium kind whose CRD
//! is not installed (listed as empty) never holds the others back.
//!
//! Each object is kept as a manifest holding only what policy reads (name, namespace, labels;
//! a Pod's node, host network, container ports, phase and IPs; a policy's `spec`/`specs`), so
//! that a change policy does not read (a Pod's conditions, any `resourceVersion`) does not
//! reload policy. Objects are handled as `DynamicObject`s, which keep a NetworkPolicy `spec`
//! exactly as served: the policy loader refuses a field it does not know instead of having a
//! typed round-trip drop it (and widen the policy).
//!
//! wiremesh writes no objects here (apply them with kubectl); identity numbers are allocated as
//! ConfigMaps ([`identity`]).

mod follow;
mod identity;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

use super::{ObjectRef, ObjectSet, StoredObject};
use crate::store::kubernetes::ApiServer;
use crate::store::{KubeConfig, StoreError};

/// Changes arriving within this long of each other are published as one set.
const COALESCE: Duration = Duration::from_millis(100);

pub struct KubeObjects {
    api: ApiServer,
    tx: watch::Sender<Arc<ObjectSet>>,
    /// The client identity allocation uses, made on first use and dropped after a failure.
    client: Mutex<Option<Client>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeObjects {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubeObjects {
    /// Reads the kubeconfig (if one is named) and starts following. Never waits for the API
    /// server: until every kind has been listed the set is not `synced`. Must be called inside
    /// a tokio runtime.
    pub fn start(config: &KubeConfig) -> Result<Self, StoreError> {
        let api = ApiServer::open(config.kubeconfig.as_deref())?;
        let (tx, _) = watch::channel(Arc::new(ObjectSet::default()));
        let kinds = follow::followed();
        let (updates, rx) = mpsc::channel(1024);
        let mut tasks = vec![tokio::spawn(publish(rx, kinds.len(), tx.clone()))];
        for (index, kind) in kinds.into_iter().enumerate() {
            let span = tracing::info_span!("kube_objects", kind = %kind.resource.kind);
            let follower = follow::Follower::new(api.clone(), index, kind, updates.clone());
            tasks.push(tokio::spawn(tracing::Instrument::instrument(
                follower.run(),
                span,
            )));
        }
        Ok(Self {
            api,
            tx,
            client: Mutex::new(None),
            tasks,
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ObjectSet>> {
        self.tx.subscribe()
    }

    pub fn describe(&self) -> String {
        format!("kubernetes:{}", self.api.server)
    }
}

/// One object as the publisher keeps it, by origin (its API path).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Object(ObjectRef, String),
    Unreadable(String),
}

/// What a follower tells the publisher; `usize` is the kind's index.
#[derive(Debug)]
enum Update {
    /// The kind's whole content, replacing what was known of it.
    Listed(usize, BTreeMap<String, Entry>),
    Put(usize, String, Entry),
    Deleted(usize, String),
}

/// Applies updates to the per-kind contents and publishes the set, at most once per
/// [`COALESCE`].
async fn publish(mut rx: mpsc::Receiver<Update>, kinds: usize, tx: watch::Sender<Arc<ObjectSet>>) {
    let mut known: Vec<Option<BTreeMap<String, Entry>>> = vec![None; kinds];
    while let Some(first) = rx.recv().await {
        let mut changed = apply(&mut known, first);
        let until = tokio::time::Instant::now() + COALESCE;
        while let Ok(Some(update)) = tokio::time::timeout_at(until, rx.recv()).await {
            changed |= apply(&mut known, update);
        }
        if changed {
            tx.send_replace(Arc::new(build(&known)));
        }
    }
}

/// Whether the update changed anything.
fn apply(known: &mut [Option<BTreeMap<String, Entry>>], update: Update) -> bool {
    match update {
        Update::Listed(kind, entries) => {
            let changed = known[kind].as_ref() != Some(&entries);
            known[kind] = Some(entries);
            changed
        }
        // A change before the first listing cannot happen; it is ignored if it does.
        Update::Put(kind, origin, entry) => known[kind]
            .as_mut()
            .is_some_and(|k| k.insert(origin, entry.clone()) != Some(entry)),
        Update::Deleted(kind, origin) => known[kind]
            .as_mut()
            .is_some_and(|k| k.remove(&origin).is_some()),
    }
}

fn build(known: &[Option<BTreeMap<String, Entry>>]) -> ObjectSet {
    let mut set = ObjectSet {
        synced: known.iter().all(Option::is_some),
        ..ObjectSet::default()
    };
    for (origin, entry) in known.iter().flatten().flatten() {
        match entry {
            Entry::Object(r, manifest) => {
                let stored = StoredObject {
                    origin: origin.clone(),
                    manifest: manifest.clone(),
                };
                set.objects.insert(r.clone(), stored);
            }
            Entry::Unreadable(reason) => {
                set.unreadable.insert(origin.clone(), reason.clone());
            }
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_replace_a_kind_on_listing_and_sync_once_all_are_listed() {
        let mut known = vec![None, None];
        let pod = |n: &str| {
            let r = ObjectRef {
                kind: "Pod".into(),
                namespace: "x".into(),
                name: n.into(),
            };
            Entry::Object(r, format!("{{\"{n}\":1}}"))
        };
        let listed: BTreeMap<_, _> = [("a".to_string(), pod("a"))].into();
        assert!(apply(&mut known, Update::Listed(0, listed)));
        assert!(!build(&known).synced);
        assert!(apply(&mut known, Update::Put(0, "b".into(), pod("b"))));
        assert!(!apply(&mut known, Update::Put(0, "b".into(), pod("b"))));
        assert!(apply(&mut known, Update::Listed(1, BTreeMap::new())));
        assert_eq!(build(&known).objects.len(), 2);
        assert!(build(&known).synced);
        let relisted: BTreeMap<_, _> = [("c".to_string(), pod("c"))].into();
        assert!(apply(&mut known, Update::Listed(0, relisted)));
        let names: Vec<_> = build(&known).objects.into_keys().map(|r| r.name).collect();
        assert_eq!(names, ["c"]);
        assert!(apply(&mut known, Update::Deleted(0, "c".into())));
        assert!(!apply(&mut known, Update::Deleted(0, "c".into())));
    }
}
