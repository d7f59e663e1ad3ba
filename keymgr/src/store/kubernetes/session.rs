//! The I/O shell of the Kubernetes store: one background task that connects, claims the node
//! name on this node's `Node`, writes the desired annotations, refreshes the heartbeat, and lists
//! then watches every Node (kube's `watcher`: following bookmarks, relisting on 410 Gone). Any
//! failure ends the session; the next one starts from scratch (new client, re-claim, relist),
//! which also picks up whatever changed during an outage.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::Api;

use super::node::{self, Ownership, View};
use super::{ClientError, Target, RPC_TIMEOUT, WATCH_SECS};
use crate::store::task::{self, Backoff, Link, RpcError};
use crate::NodeRecord;

/// How many 409 Conflicts one write re-reads and retries before the session gives up.
const CONFLICT_RETRIES: usize = 8;

type Events = Pin<Box<dyn Stream<Item = watcher::Result<Event<Node>>> + Send>>;

pub(super) struct Shell {
    pub(super) target: Arc<Target>,
    pub(super) view: View,
    pub(super) link: Link<NodeRecord>,
}

/// One thing that happened while serving.
enum Step {
    Tick,
    Watch(Option<watcher::Result<Box<Event<Node>>>>),
    /// The desired record changed (`false`: the store handle is gone).
    Desired(bool),
    Stop,
}

/// Why a session failed: what the store's health reports.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Rpc(#[from] RpcError<kube::Error>),
    #[error(
        "Node {node} does not exist: kubelet registers it (wiremesh never creates Nodes); \
         check that nodeName matches the kubelet's node name"
    )]
    NoNode { node: String },
    #[error("watch Nodes: the watch ended")]
    WatchEnded,
    #[error("following Nodes: {0}")]
    Watch(#[source] watcher::Error),
    #[error(
        "Node {node} kept changing: {} conflicting writes in a row",
        CONFLICT_RETRIES
    )]
    KeptChanging { node: String },
}

/// Why a session ended.
enum End {
    Stop,
    Down(SessionError),
    Conflict(String),
}

impl Shell {
    pub(super) async fn run(mut self) {
        let mut backoff = Backoff::default();
        loop {
            let began = Instant::now();
            let end = self.session().await;
            let retry = backoff.after(began);
            let pause = match end {
                End::Stop => return,
                End::Down(error) => {
                    self.link.health.unreachable(error.to_string());
                    retry
                }
                End::Conflict(owner) => {
                    self.link.health.conflict(owner);
                    self.target.owner_ttl / 3
                }
            };
            if !self.link.pause(pause).await {
                return;
            }
        }
    }

    async fn session(&mut self) -> End {
        let api = match self.connect().await {
            Ok(api) => api,
            Err(e) => return End::Down(e),
        };
        let t = self.target.clone();
        let what = format!("get Node {}", t.node);
        let mut own = match rpc(&what, api.get_opt(&t.node)).await {
            Ok(Some(n)) => n,
            Ok(None) => {
                return End::Down(SessionError::NoNode {
                    node: t.node.clone(),
                })
            }
            Err(e) => return End::Down(e.into()),
        };
        let end = match self.write(&api, &mut own).await {
            Ok(None) => self.serve(&api, &mut own).await,
            Ok(Some(owner)) => Ok(End::Conflict(owner)),
            Err(e) => Err(e),
        };
        let end = end.unwrap_or_else(End::Down);
        if matches!(end, End::Stop) {
            self.release(&api, &mut own).await;
        }
        end
    }

    async fn connect(&self) -> Result<Api<Node>, SessionError> {
        Ok(Api::all(self.target.api.client().await?))
    }

    /// Lists then watches every Node (kube's watcher: relisting after 410 Gone, a dead
    /// connection ending a read after the client's read timeout), refreshes the heartbeat and
    /// writes record changes, until something fails (`Err`) or the store is closed.
    async fn serve(&mut self, api: &Api<Node>, own: &mut Node) -> Result<End, SessionError> {
        let t = self.target.clone();
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + t.heartbeat, t.heartbeat);
        let config = watcher::Config::default().timeout(WATCH_SECS);
        let mut events: Events = watcher(api.clone(), config).boxed();
        let mut listing: Option<Vec<Node>> = None;
        loop {
            let step = tokio::select! {
                _ = tick.tick() => Step::Tick,
                ev = events.next() => Step::Watch(ev.map(|e| e.map(Box::new))),
                changed = self.link.desired.changed() => Step::Desired(changed.is_ok()),
                _ = self.link.stop.wait_for(|s| *s) => Step::Stop,
            };
            let event = match step {
                Step::Tick | Step::Desired(true) => match self.write(api, own).await? {
                    None => continue,
                    Some(owner) => return Ok(End::Conflict(owner)),
                },
                Step::Desired(false) | Step::Stop => return Ok(End::Stop),
                Step::Watch(None) => return Err(SessionError::WatchEnded),
                Step::Watch(Some(Err(watcher::Error::WatchError(e)))) if e.code == 410 => {
                    tracing::info!("watch Nodes: {} (410 Gone); relisting Nodes", e.message);
                    continue;
                }
                Step::Watch(Some(Err(e))) => return Err(SessionError::Watch(e)),
                Step::Watch(Some(Ok(event))) => *event,
            };
            match event {
                Event::Init => {
                    listing = Some(Vec::new());
                    continue;
                }
                Event::InitApply(n) => {
                    listing.get_or_insert_default().push(n);
                    continue;
                }
                Event::InitDone => {
                    let items = listing.take().unwrap_or_default();
                    self.view.replace(&t.cluster, &items);
                    if let Some(n) = items.iter().find(|n| is(n, &t.node)) {
                        *own = n.clone();
                    }
                    self.link.health.connected();
                }
                Event::Apply(n) => {
                    self.view.put(&t.cluster, &n);
                    if is(&n, &t.node) {
                        *own = n;
                        let now = SystemTime::now();
                        if let Ownership::Taken { owner } =
                            node::ownership(own, &t.owner_id, t.owner_ttl, now)
                        {
                            return Ok(End::Conflict(owner));
                        }
                    }
                }
                Event::Delete(n) => self.view.delete(&n),
            }
            self.link.send_snapshot(self.view.snapshot());
        }
    }

    /// Writes our claim, heartbeat and desired record to our Node, preconditioned on the
    /// resourceVersion last seen: on 409 Conflict the Node is re-read and ownership re-checked,
    /// so another owner's annotations are never overwritten. `Ok(Some(owner))` when another live
    /// agent holds the name.
    async fn write(
        &mut self,
        api: &Api<Node>,
        own: &mut Node,
    ) -> Result<Option<String>, SessionError> {
        let t = self.target.clone();
        let desired = self.link.desired.borrow_and_update().clone();
        for _ in 0..CONFLICT_RETRIES {
            let now = SystemTime::now();
            match node::ownership(own, &t.owner_id, t.owner_ttl, now) {
                Ownership::Free => {}
                Ownership::Taken { owner } => return Ok(Some(owner)),
                Ownership::Stale { owner } => tracing::info!(
                    "taking node name {} over from owner {owner:?}: its heartbeat is older than \
                     {:?}",
                    t.node,
                    t.owner_ttl
                ),
            }
            let annotations = node::annotations(desired.record.as_deref(), &t.owner_id, now);
            let rv = own.metadata.resource_version.as_deref();
            let patch = Patch::Merge(node::patch(annotations, rv));
            let what = format!("patch Node {}", t.node);
            let params = PatchParams::default();
            match tokio::time::timeout(RPC_TIMEOUT, api.patch(&t.node, &params, &patch)).await {
                Ok(Ok(n)) => {
                    *own = n;
                    self.link.written(desired.seq);
                    return Ok(None);
                }
                Ok(Err(kube::Error::Api(e))) if e.code == 409 => {
                    tracing::debug!("{what}: {} (409); re-reading it", e.message);
                    *own = rpc(&format!("get Node {}", t.node), api.get(&t.node)).await?;
                }
                Ok(Err(source)) => return Err(RpcError::Failed { what, source }.into()),
                Err(_) => {
                    let within = RPC_TIMEOUT;
                    return Err(RpcError::Timeout { what, within }.into());
                }
            }
        }
        Err(SessionError::KeptChanging {
            node: t.node.clone(),
        })
    }

    /// Removes our claim (owner and heartbeat) so that another agent may take the name at once.
    async fn release(&mut self, api: &Api<Node>, own: &mut Node) {
        let t = self.target.clone();
        if node::ownership(own, &t.owner_id, t.owner_ttl, SystemTime::now()) != Ownership::Free {
            return;
        }
        let annotations = serde_json::json!({ node::OWNER: null, node::HEARTBEAT: null });
        let rv = own.metadata.resource_version.as_deref();
        let patch = Patch::Merge(node::patch(annotations, rv));
        let what = format!("release Node {}", t.node);
        let done = rpc(&what, api.patch(&t.node, &PatchParams::default(), &patch)).await;
        match done {
            Ok(_) => tracing::info!("released node name {}", t.node),
            Err(e) => tracing::debug!("{e}; the claim lapses after {:?}", t.owner_ttl),
        }
    }
}

fn is(node: &Node, name: &str) -> bool {
    node.metadata.name.as_deref() == Some(name)
}

/// One request to the API server, bounded in time, with the error naming what was attempted.
async fn rpc<T>(
    what: &str,
    request: impl Future<Output = kube::Result<T>>,
) -> Result<T, RpcError<kube::Error>> {
    task::rpc(what, RPC_TIMEOUT, request).await
}
