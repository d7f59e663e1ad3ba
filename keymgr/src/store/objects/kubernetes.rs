//! Objects from the Kubernetes API: Namespaces, Pods, NetworkPolicies, CiliumNetworkPolicies and
//! CiliumClusterwideNetworkPolicies in every namespace, each kind listed then watched by its own
//! follower (kube's `watcher`: relisting on 410 Gone; a failed session reconnects with backoff), all feeding one publisher that
//! keeps the [`ObjectSet`]. The set is `synced` once every kind has been listed; a kind's listing
//! replaces what was known of it. A Cilium kind whose CRD is not installed counts as listed and
//! empty, and is rechecked every [`CRD_RECHECK`], so the other kinds never wait for it.
//!
//! Each object is kept as a manifest holding only what policy reads (name, namespace, labels;
//! a Pod's node, host network, container ports, phase and IPs; a policy's `spec`/`specs`), so
//! that a change policy does not read (a Pod's conditions, any `resourceVersion`) does not
//! reload policy. Objects are handled as [`DynamicObject`]s, which keep a NetworkPolicy `spec`
//! exactly as served: the policy loader refuses a field it does not know instead of having a
//! typed round-trip drop it (and widen the policy).
//!
//! wiremesh writes no objects here (apply them with kubectl). Identity numbers are allocated as
//! one ConfigMap per number in [`IDENTITY_NAMESPACE`], created with POST: the API server's
//! 409 AlreadyExists is what makes two agents racing for a number never both get it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Client};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

use super::{Claim, ObjectRef, ObjectSet, StoredObject};
use crate::store::kubernetes::{ApiServer, ClientError, RPC_TIMEOUT, WATCH_SECS};
use crate::store::task::{Backoff, RpcError};
use crate::store::{KubeConfig, StoreError};

/// How often a Cilium kind whose CRD is missing is looked for again.
const CRD_RECHECK: Duration = Duration::from_secs(10);
/// Changes arriving within this long of each other are published as one set.
const COALESCE: Duration = Duration::from_millis(100);
/// Objects per page of a listing.
const PAGE: u32 = 500;
/// Where identity allocations are kept, one ConfigMap per number.
const IDENTITY_NAMESPACE: &str = "kube-system";
const IDENTITY_PREFIX: &str = "wiremesh-identity-";
/// Label of an allocation ConfigMap, holding its number (`kubectl get cm -l ...`).
const IDENTITY_LABEL: &str = "wiremesh.io/identity";
/// The ConfigMap data key holding the label set's canonical key.
const IDENTITY_DATA: &str = "labels";

/// What of an object's body policy reads.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// Metadata only (Namespaces: their labels).
    None,
    Pod,
    /// `spec`, and `specs` for Cilium policies.
    Spec,
}

/// One kind followed.
#[derive(Debug, Clone)]
struct Followed {
    resource: ApiResource,
    body: Body,
    /// A CRD, which may not be installed.
    crd: bool,
}

fn followed() -> Vec<Followed> {
    let cilium = |kind: &str, plural: &str| ApiResource {
        group: "cilium.io".into(),
        version: "v2".into(),
        api_version: "cilium.io/v2".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let f = |resource, body, crd| Followed {
        resource,
        body,
        crd,
    };
    vec![
        f(ApiResource::erase::<Namespace>(&()), Body::None, false),
        f(ApiResource::erase::<Pod>(&()), Body::Pod, false),
        f(ApiResource::erase::<NetworkPolicy>(&()), Body::Spec, false),
        f(
            cilium("CiliumNetworkPolicy", "ciliumnetworkpolicies"),
            Body::Spec,
            true,
        ),
        f(
            cilium(
                "CiliumClusterwideNetworkPolicy",
                "ciliumclusterwidenetworkpolicies",
            ),
            Body::Spec,
            true,
        ),
    ]
}

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
        let kinds = followed();
        let (updates, rx) = mpsc::channel(1024);
        let mut tasks = vec![tokio::spawn(publish(rx, kinds.len(), tx.clone()))];
        for (index, kind) in kinds.into_iter().enumerate() {
            let follower = Follower {
                api: api.clone(),
                index,
                kind,
                updates: updates.clone(),
                down: false,
                told_missing: false,
            };
            let span = tracing::info_span!("kube_objects", kind = %follower.kind.resource.kind);
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

    /// Every allocation: number → labels key.
    pub(super) async fn identities(&self) -> Result<BTreeMap<u32, String>, StoreError> {
        let api = self.configmaps().await?;
        let mut out = BTreeMap::new();
        let mut params = ListParams::default().labels(IDENTITY_LABEL).limit(PAGE);
        loop {
            let page = self.rpc("list identities", api.list(&params)).await?;
            for cm in &page.items {
                let number = cm.metadata.name.as_deref().and_then(identity_number);
                if let (Some(id), Some(key)) = (number, holder(cm)) {
                    out.insert(id, key);
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(out),
            }
        }
    }

    /// Creates the number's ConfigMap holding `key`; if it exists (409), reads who holds it.
    pub(super) async fn claim(&self, id: u32, key: &str) -> Result<Claim, StoreError> {
        let api = self.configmaps().await?;
        let name = format!("{IDENTITY_PREFIX}{id}");
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        (IDENTITY_LABEL.to_string(), id.to_string()),
                        ("app.kubernetes.io/managed-by".into(), "wiremesh".into()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            data: Some([(IDENTITY_DATA.to_string(), key.to_string())].into()),
            ..ConfigMap::default()
        };
        // An allocation deleted between our create and our read is tried again.
        for _ in 0..3 {
            let what = format!("create ConfigMap {IDENTITY_NAMESPACE}/{name}");
            match self
                .try_rpc(&what, api.create(&PostParams::default(), &cm))
                .await?
            {
                Ok(_) => return Ok(Claim::Ours),
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(self.unavailable(format!("{what}: {e}"))),
            }
            let what = format!("get ConfigMap {IDENTITY_NAMESPACE}/{name}");
            if let Some(cm) = self.rpc(&what, api.get_opt(&name)).await? {
                return Ok(Claim::HeldBy(holder(&cm).unwrap_or_default()));
            }
        }
        Ok(Claim::HeldBy(String::new()))
    }

    async fn configmaps(&self) -> Result<Api<ConfigMap>, StoreError> {
        let mut client = self.client.lock().await;
        if client.is_none() {
            let made = self.api.client().await;
            *client = Some(made.map_err(|e| self.unavailable(e.to_string()))?);
        }
        let client = client.clone().expect("made above");
        Ok(Api::namespaced(client, IDENTITY_NAMESPACE))
    }

    /// One request, bounded in time; any failure drops the client so that the next request
    /// makes a new one.
    async fn rpc<T>(
        &self,
        what: &str,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, StoreError> {
        match self.try_rpc(what, request).await? {
            Ok(v) => Ok(v),
            Err(e) => Err(self.unavailable(format!("{what}: {e}"))),
        }
    }

    /// Like [`KubeObjects::rpc`], handing the API server's refusals (a 409) to the caller.
    async fn try_rpc<T>(
        &self,
        what: &str,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<Result<T, Box<kube::core::Status>>, StoreError> {
        let failed = match tokio::time::timeout(RPC_TIMEOUT, request).await {
            Ok(Ok(v)) => return Ok(Ok(v)),
            Ok(Err(kube::Error::Api(e))) if e.code < 500 && e.code != 401 => return Ok(Err(e)),
            Ok(Err(e)) => format!("{what}: {e}"),
            Err(_) => format!("{what}: no answer within {RPC_TIMEOUT:?}"),
        };
        *self.client.lock().await = None;
        Err(self.unavailable(failed))
    }

    fn unavailable(&self, reason: String) -> StoreError {
        StoreError::KubeUnavailable {
            server: self.api.server.clone(),
            reason,
        }
    }
}

fn identity_number(name: &str) -> Option<u32> {
    name.strip_prefix(IDENTITY_PREFIX)?.parse().ok()
}

fn holder(cm: &ConfigMap) -> Option<String> {
    cm.data.as_ref()?.get(IDENTITY_DATA).cloned()
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

/// Why a follower's session failed.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Rpc(#[from] RpcError<kube::Error>),
    #[error("following {plural}: the watch ended")]
    WatchEnded { plural: String },
    #[error("following {plural}: {source}")]
    Watch {
        plural: String,
        #[source]
        source: watcher::Error,
    },
}

/// Why a follower's session ended.
enum End {
    Failed(FollowError),
    /// The kind's CRD is not installed.
    Missing,
    /// The publisher is gone: the store was dropped.
    Closed,
}

/// Lists then watches one kind.
struct Follower {
    api: ApiServer,
    index: usize,
    kind: Followed,
    updates: mpsc::Sender<Update>,
    /// Whether the last session failed (logged once per outage).
    down: bool,
    /// Whether the missing CRD was logged.
    told_missing: bool,
}

impl Follower {
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        loop {
            let began = Instant::now();
            let pause = match self.session().await {
                End::Closed => return,
                End::Missing => CRD_RECHECK,
                End::Failed(error) => {
                    if self.down {
                        tracing::debug!("following {}: {error}", self.kind.resource.plural);
                    } else {
                        tracing::warn!(
                            "following {}: {error}; the objects last seen stay in force",
                            self.kind.resource.plural
                        );
                    }
                    self.down = true;
                    backoff.after(began)
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    async fn session(&mut self) -> End {
        let plural = self.kind.resource.plural.clone();
        let client = match self.api.client().await {
            Ok(c) => c,
            Err(e) => return End::Failed(e.into()),
        };
        if self.kind.crd {
            let groups = match rpc("list API groups", client.list_api_groups()).await {
                Ok(g) => g,
                Err(e) => return End::Failed(e.into()),
            };
            let r = &self.kind.resource;
            let served = groups
                .groups
                .iter()
                .any(|g| g.name == r.group && g.versions.iter().any(|v| v.version == r.version));
            if !served {
                return self.missing().await;
            }
        }
        let api: Api<DynamicObject> = Api::all_with(client, &self.kind.resource);
        // kube's watcher lists (page by page), then watches from the listing's resourceVersion,
        // following bookmarks and relisting after 410 Gone; a dead connection ends a read after
        // the client's read timeout (`ApiServer::client`).
        let config = watcher::Config::default()
            .timeout(WATCH_SECS)
            .page_size(PAGE);
        let mut events = watcher(api, config).boxed();
        let mut listing: Option<BTreeMap<String, Entry>> = None;
        loop {
            let update = match events.next().await {
                None => return End::Failed(FollowError::WatchEnded { plural }),
                Some(Err(watcher::Error::InitialListFailed(kube::Error::Api(e))))
                    if e.code == 404 && self.kind.crd =>
                {
                    return self.missing().await
                }
                Some(Err(watcher::Error::WatchError(e))) if e.code == 410 => {
                    tracing::info!("watch {plural}: {} (410 Gone); relisting", e.message);
                    continue;
                }
                Some(Err(source)) => return End::Failed(FollowError::Watch { plural, source }),
                Some(Ok(Event::Init)) => {
                    listing = Some(BTreeMap::new());
                    continue;
                }
                Some(Ok(Event::InitApply(o))) => {
                    let (origin, entry) = self.entry(o);
                    listing.get_or_insert_default().insert(origin, entry);
                    continue;
                }
                Some(Ok(Event::InitDone)) => {
                    let entries = listing.take().unwrap_or_default();
                    self.listed(entries.len());
                    Update::Listed(self.index, entries)
                }
                Some(Ok(Event::Apply(o))) => {
                    let (origin, entry) = self.entry(o);
                    Update::Put(self.index, origin, entry)
                }
                Some(Ok(Event::Delete(o))) => Update::Deleted(self.index, self.origin(&o.metadata)),
            };
            if !self.send(update).await {
                return End::Closed;
            }
        }
    }

    /// A listing arrived: says so once after an outage or a missing CRD.
    fn listed(&mut self, n: usize) {
        let (was_down, was_missing) = (self.down, self.told_missing);
        (self.down, self.told_missing) = (false, false);
        let r = &self.kind.resource;
        if was_missing {
            tracing::info!("{} {} is served now: {n} objects", r.api_version, r.kind);
        } else if was_down {
            tracing::info!("following {} again: {n} objects", r.plural);
        }
    }

    /// The CRD is not installed: the kind is empty until it is.
    async fn missing(&mut self) -> End {
        if !self.told_missing {
            let r = &self.kind.resource;
            tracing::info!(
                "{} {} is not served (CRD not installed): treated as empty, looked for again \
                 every {CRD_RECHECK:?}",
                r.api_version,
                r.kind
            );
            self.told_missing = true;
        }
        self.down = false;
        if self.send(Update::Listed(self.index, BTreeMap::new())).await {
            End::Missing
        } else {
            End::Closed
        }
    }

    async fn send(&self, update: Update) -> bool {
        self.updates.send(update).await.is_ok()
    }

    fn entry(&self, object: DynamicObject) -> (String, Entry) {
        let origin = self.origin(&object.metadata);
        let manifest = manifest(&self.kind, &object);
        let entry = match ObjectRef::of(&manifest) {
            Ok(r) => checked(&origin, r, manifest.to_string()),
            Err(reason) => Entry::Unreadable(reason.to_string()),
        };
        (origin, entry)
    }

    /// The object's API path, e.g. `/api/v1/namespaces/x/pods/a`.
    fn origin(&self, meta: &ObjectMeta) -> String {
        let r = &self.kind.resource;
        let base = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let ns = match &meta.namespace {
            Some(ns) => format!("/namespaces/{ns}"),
            None => String::new(),
        };
        let name = meta.name.as_deref().unwrap_or_default();
        format!("{base}{ns}/{}/{name}", r.plural)
    }
}

/// An object as the publisher keeps it: itself if the policy loader takes it on its own, else
/// left out with a WARN naming the resource and the field. Nobody validated it before it reached
/// the API server (kubectl, not `wiremesh apply`, wrote it): one object wiremesh cannot enforce
/// as written (an HTTP rule, a narrow DNS rule) must neither be enforced in part nor stop every
/// other object's changes from taking effect.
fn checked(origin: &str, r: ObjectRef, manifest: String) -> Entry {
    match policy::load([(origin, manifest.as_str())]) {
        Ok(_) => Entry::Object(r, manifest),
        Err(e) => {
            tracing::warn!(object = %r, "refused, left out of the policy in force: {e}");
            Entry::Unreadable(format!("refused, left out of the policy in force: {e}"))
        }
    }
}

/// The manifest policy reads: `apiVersion` and `kind` (which list items lack), name,
/// namespace and labels, and the part of the body named by [`Body`].
fn manifest(kind: &Followed, object: &DynamicObject) -> Value {
    let meta = &object.metadata;
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(meta.name));
    if let Some(ns) = &meta.namespace {
        metadata.insert("namespace".into(), json!(ns));
    }
    if let Some(labels) = meta.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata.insert("labels".into(), json!(labels));
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!(kind.resource.api_version));
    out.insert("kind".into(), json!(kind.resource.kind));
    out.insert("metadata".into(), Value::Object(metadata));
    let data = &object.data;
    match kind.body {
        Body::None => {}
        Body::Spec => out.extend(pick(data, &["spec", "specs"])),
        Body::Pod => {
            let mut spec = pick(&data["spec"], &["nodeName", "hostNetwork"]);
            let containers: Vec<Value> = data["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| Value::Object(pick(c, &["name", "ports"])))
                .collect();
            spec.insert("containers".into(), Value::Array(containers));
            out.insert("spec".into(), Value::Object(spec));
            let status = pick(
                &data["status"],
                &["phase", "podIP", "podIPs", "hostIP", "hostIPs"],
            );
            if !status.is_empty() {
                out.insert("status".into(), Value::Object(status));
            }
        }
    }
    Value::Object(out)
}

/// The fields of `value` named in `keys` that are present and not null.
fn pick(value: &Value, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .filter_map(|k| {
            let v = value.get(*k).filter(|v| !v.is_null())?;
            Some(((*k).to_string(), v.clone()))
        })
        .collect()
}

/// One request, bounded in time, with the error naming what was attempted.
async fn rpc<T>(
    what: &str,
    request: impl Future<Output = kube::Result<T>>,
) -> Result<T, RpcError<kube::Error>> {
    crate::store::task::rpc(what, RPC_TIMEOUT, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_pod_keeps_what_policy_reads_and_gains_its_type() {
        let kinds = followed();
        let pod = object(json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"},
                "resourceVersion": "7", "managedFields": [{"manager": "kubelet"}],
                "annotations": {"big": "..."}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i",
                "ports": [{"name": "http", "containerPort": 80}], "env": []}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.5"}],
                "conditions": [{"type": "Ready"}]},
        }));
        let m = manifest(&kinds[1], &pod);
        assert_eq!(
            m,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c",
                    "ports": [{"name": "http", "containerPort": 80}]}]},
                "status": {"phase": "Running", "podIPs": [{"ip": "10.244.1.5"}]},
            })
        );
        let follower = Follower {
            api: ApiServer::open(None).unwrap(),
            index: 1,
            kind: kinds[1].clone(),
            updates: mpsc::channel(1).0,
            down: false,
            told_missing: false,
        };
        let (origin, entry) = follower.entry(pod);
        assert_eq!(origin, "/api/v1/namespaces/x/pods/a");
        assert!(matches!(entry, Entry::Object(r, _) if r.to_string() == "Pod x/a"));
    }

    #[test]
    fn a_policy_keeps_its_spec_as_served() {
        let kinds = followed();
        let np = object(json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "podSelecter": {}},
            "status": {"conditions": []},
        }));
        let m = manifest(&kinds[2], &np);
        assert_eq!(m["apiVersion"], "networking.k8s.io/v1");
        assert_eq!(m["spec"]["podSelecter"], json!({}));
        assert!(m.get("status").is_none());
        let ccnp = object(json!({"metadata": {"name": "c"}, "specs": [{}]}));
        let m = manifest(&kinds[4], &ccnp);
        assert_eq!(m["kind"], "CiliumClusterwideNetworkPolicy");
        assert_eq!(m["specs"], json!([{}]));
    }

    #[test]
    fn every_followed_kind_is_one_the_policy_loader_reads() {
        for k in followed() {
            let r = &k.resource;
            let loaded = policy::kinds::by_name(&r.kind).expect("a loaded kind");
            assert_eq!(loaded.api_version, r.api_version, "{}", r.kind);
        }
    }

    #[test]
    fn a_policy_the_loader_refuses_is_left_out_naming_resource_and_field() {
        let kinds = followed();
        let follower = |index: usize| Follower {
            api: ApiServer::open(None).unwrap(),
            index,
            kind: kinds[index].clone(),
            updates: mpsc::channel(1).0,
            down: false,
            told_missing: false,
        };
        let l7 = object(json!({
            "metadata": {"name": "l7", "namespace": "x"},
            "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{
                "ports": [{"port": "80"}], "rules": {"http": [{"method": "GET"}]}}]}]},
        }));
        let (origin, entry) = follower(3).entry(l7);
        let Entry::Unreadable(why) = entry else {
            panic!("an HTTP rule must be refused: {entry:?}")
        };
        assert!(
            why.contains(&format!(
                "{origin}: CiliumNetworkPolicy x/l7: spec.ingress[0].toPorts[0].rules.http: "
            )) && why.contains("left out"),
            "{why}"
        );
        let egress_default = object(json!({
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {}, "egress": []},
        }));
        let (_, entry) = follower(2).entry(egress_default);
        assert!(matches!(entry, Entry::Object(r, _) if r.to_string() == "NetworkPolicy x/p"));
    }

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
