//! One follower per kind: lists then watches it (kube's `watcher`: relisting on 410 Gone; a
//! failed session reconnects with backoff) and hands the publisher each object trimmed to what
//! policy reads, or the reason it is left out. A Cilium kind whose CRD is not installed counts as
//! listed and empty, and is rechecked every [`CRD_RECHECK`]. It must never hand on an object the
//! policy loader refuses on its own: one bad object would stop every other change.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::{self, watcher, Event};
use kube::Api;
use policy::kinds::ObjectKind;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::{Entry, Update};
use crate::store::kubernetes::{ApiServer, ClientError, RPC_TIMEOUT, WATCH_SECS};
use crate::store::objects::ObjectRef;
use crate::store::task::{Backoff, RpcError};

/// How often a Cilium kind whose CRD is missing is looked for again.
const CRD_RECHECK: Duration = Duration::from_secs(10);
/// Objects per page of a listing.
const PAGE: u32 = 500;

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
pub(super) struct Followed {
    pub(super) resource: ApiResource,
    body: Body,
    /// A CRD, which may not be installed.
    crd: bool,
}

/// The kinds followed: those of `policy::kinds` but Nodes, which the node store follows.
pub(super) fn followed() -> Vec<Followed> {
    policy::kinds::KINDS
        .iter()
        .filter_map(|k| {
            let body = match k.object {
                ObjectKind::Namespace => Body::None,
                ObjectKind::Pod => Body::Pod,
                ObjectKind::NetworkPolicy
                | ObjectKind::CiliumNetworkPolicy
                | ObjectKind::CiliumClusterwideNetworkPolicy
                | ObjectKind::Service
                | ObjectKind::AuthorizationPolicy
                | ObjectKind::PeerAuthentication => Body::Spec,
                ObjectKind::Node => return None,
            };
            let resource = ApiResource {
                group: k.group.into(),
                version: k.version.into(),
                api_version: k.api_version.into(),
                kind: k.kind.into(),
                plural: k.plural.into(),
            };
            Some(Followed {
                resource,
                body,
                crd: k.crd,
            })
        })
        .collect()
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
pub(super) struct Follower {
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
    /// The follower of `kind`, the `index`th kind the publisher keeps.
    pub(super) fn new(
        api: ApiServer,
        index: usize,
        kind: Followed,
        updates: mpsc::Sender<Update>,
    ) -> Self {
        Self {
            api,
            index,
            kind,
            updates,
            down: false,
            told_missing: false,
        }
    }

    pub(super) async fn run(mut self) {
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
            let mut spec = pick(
                &data["spec"],
                &["nodeName", "hostNetwork", "serviceAccountName"],
            );
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
    fn every_loaded_kind_but_nodes_is_followed_where_the_api_serves_it() {
        use k8s_openapi::api::core::v1::{Namespace, Pod};
        use k8s_openapi::api::networking::v1::NetworkPolicy;
        let kinds = followed();
        let names: Vec<&str> = kinds.iter().map(|k| k.resource.kind.as_str()).collect();
        assert_eq!(
            names,
            [
                "Namespace",
                "Pod",
                "NetworkPolicy",
                "CiliumNetworkPolicy",
                "CiliumClusterwideNetworkPolicy",
                "Service",
                "AuthorizationPolicy",
                "PeerAuthentication"
            ]
        );
        assert_eq!(
            kinds[5].resource,
            ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&())
        );
        assert_eq!(kinds[6].resource.api_version, "security.istio.io/v1");
        assert!(kinds[6].crd && kinds[7].crd && !kinds[5].crd);
        assert_eq!(kinds[0].resource, ApiResource::erase::<Namespace>(&()));
        assert_eq!(kinds[1].resource, ApiResource::erase::<Pod>(&()));
        assert_eq!(kinds[2].resource, ApiResource::erase::<NetworkPolicy>(&()));
        assert_eq!(kinds[3].resource.plural, "ciliumnetworkpolicies");
        assert!(kinds[3].crd && kinds[4].crd && !kinds[2].crd);
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
                "ports": [{"port": "9092"}], "rules": {"kafka": [{"topic": "t"}]}}]}]},
        }));
        let (origin, entry) = follower(3).entry(l7);
        let Entry::Unreadable(why) = entry else {
            panic!("a Kafka rule must be refused: {entry:?}")
        };
        assert!(
            why.contains(&format!(
                "{origin}: CiliumNetworkPolicy x/l7: spec.ingress[0].toPorts[0].rules.kafka: "
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
}
