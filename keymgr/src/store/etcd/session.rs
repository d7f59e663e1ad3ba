//! The I/O shell of the etcd store: one background task that connects, claims the node name,
//! keeps the lease alive, writes the desired record, and lists then watches the nodes prefix. Any
//! failure ends the session; the next one starts from scratch (new client, new lease, re-claim,
//! relist), which also covers a lease that expired during an outage and changes made meanwhile.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveResponse,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, WatchOptions, WatchResponse,
    WatchStream,
};

use super::claim::{self, Kv, RecordWrite};
use super::view::View;
use super::{Target, RPC_TIMEOUT};
use crate::store::task::{self, Backoff, Link, RpcError};

pub(super) struct Shell {
    pub(super) target: Arc<Target>,
    pub(super) view: View,
    pub(super) link: Link<Vec<u8>>,
}

/// One thing that happened while serving.
enum Step {
    Tick,
    Ack(Result<Option<LeaseKeepAliveResponse>, etcd_client::Error>),
    Watch(Result<Option<WatchResponse>, etcd_client::Error>),
    /// The desired record changed (`false`: the store handle is gone).
    Desired(bool),
    Stop,
}

/// The lease the session holds, and how it is kept alive.
struct Lease {
    id: i64,
    keeper: LeaseKeeper,
    acks: LeaseKeepAliveStream,
    /// How often a keep-alive is sent.
    every: Duration,
    tick: tokio::time::Interval,
    last_ack: Instant,
}

impl Lease {
    /// Sends a keep-alive, unless etcd has not answered one for too long.
    async fn keep_alive(&mut self) -> Result<(), SessionError> {
        let silent = self.last_ack.elapsed();
        if silent > self.every + RPC_TIMEOUT {
            return Err(SessionError::LeaseSilent {
                lease: self.id,
                silent,
            });
        }
        let lease = self.id;
        self.keeper
            .keep_alive()
            .await
            .map_err(|source| SessionError::KeepAlive { lease, source })
    }
}

/// Why a session failed: what the store's health reports.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Rpc(#[from] RpcError<etcd_client::Error>),
    #[error("{owner_key} kept changing while claiming it")]
    ClaimRaced { owner_key: String },
    #[error("lease {lease:x}: no keep-alive answer for {silent:?}")]
    LeaseSilent { lease: i64, silent: Duration },
    #[error("lease {lease:x}: {source}")]
    KeepAlive {
        lease: i64,
        #[source]
        source: etcd_client::Error,
    },
    #[error("lease {lease:x}: keep-alive stream closed")]
    KeepAliveClosed { lease: i64 },
    #[error("{what}: stream closed")]
    WatchClosed { what: String },
    #[error("{what}: {source}")]
    Watch {
        what: String,
        #[source]
        source: etcd_client::Error,
    },
}

/// Why a session ended.
enum End {
    Stop,
    Down(SessionError),
    /// Our lease or claim is gone although etcd answers; claim again at once.
    Lost(String),
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
                End::Lost(reason) => {
                    tracing::warn!(
                        "{reason}; claiming node name {} again (if this repeats, another agent \
                         runs with the same owner id)",
                        self.target.node
                    );
                    retry
                }
                End::Conflict(owner) => {
                    self.link.health.conflict(owner);
                    self.target.lease_ttl / 3
                }
            };
            if !self.link.pause(pause).await {
                return;
            }
        }
    }

    async fn session(&mut self) -> End {
        let t = self.target.clone();
        let connect = Client::connect(&t.endpoints, Some(t.options.clone()));
        let mut client = match rpc("connect", connect).await {
            Ok(c) => c,
            Err(e) => return End::Down(e.into()),
        };
        if t.read_only {
            return self.read_only(&mut client).await.unwrap_or_else(End::Down);
        }
        let ttl = i64::try_from(t.lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = match rpc("grant lease", client.lease_grant(ttl, None)).await {
            Ok(r) => r.id(),
            Err(e) => return End::Down(e.into()),
        };
        let end = match self.claim(&mut client, lease).await {
            Ok(None) => self.serve(&mut client, lease).await,
            Ok(Some(owner)) => Ok(End::Conflict(owner)),
            Err(e) => Err(e),
        };
        let end = end.unwrap_or_else(End::Down);
        if matches!(end, End::Stop | End::Lost(_) | End::Conflict(_)) {
            // On Stop this removes our record at once; otherwise it frees a lease that no longer
            // holds the claim (and any record of ours still bound to it).
            if let Err(e) = rpc("revoke lease", client.lease_revoke(lease)).await {
                tracing::debug!(lease = format!("{lease:x}"), "{e}");
            }
        }
        end
    }

    /// Takes the node name for `lease` and writes the desired record with it, atomically: only if
    /// the owner key is absent or already holds our owner id (an earlier run of this agent). Before
    /// this run has a record to publish, the record of the earlier run moves to the new lease in
    /// the same transaction, so revoking the old lease never removes it from the peers. Returns
    /// the other owner's id when the name is taken.
    async fn claim(
        &mut self,
        client: &mut Client,
        lease: i64,
    ) -> Result<Option<String>, SessionError> {
        let t = self.target.clone();
        for _ in 0..3 {
            let desired = self.link.desired.borrow_and_update().clone();
            let owner = get_one(client, &t.owner_key).await?;
            let record = get_one(client, &t.node_key).await?;
            let plan = match claim::plan(
                &t.owner_id,
                lease,
                owner.as_ref(),
                record.as_ref(),
                desired.record.as_deref().map(Vec::as_slice),
            ) {
                Ok(plan) => plan,
                Err(held) => return Ok(Some(held.owner)),
            };
            let owner_key = t.owner_key.as_str();
            let mut guards = vec![match plan.owner_at {
                None => Compare::version(owner_key, CompareOp::Equal, 0),
                Some(rev) => Compare::mod_revision(owner_key, CompareOp::Equal, rev),
            }];
            let with_lease = || Some(PutOptions::new().with_lease(lease));
            let mut ops = vec![TxnOp::put(owner_key, t.owner_id.as_str(), with_lease())];
            if let RecordWrite::Put {
                value,
                unchanged_at,
            } = plan.record
            {
                if let Some(rev) = unchanged_at {
                    let key = t.node_key.as_str();
                    guards.push(Compare::mod_revision(key, CompareOp::Equal, rev));
                }
                ops.push(TxnOp::put(t.node_key.as_str(), value, with_lease()));
            }
            let txn = Txn::new().when(guards).and_then(ops);
            let what = format!("claim {}", t.owner_key);
            if !rpc(&what, client.txn(txn)).await?.succeeded() {
                continue;
            }
            if let Some(old_lease) = plan.revoke {
                // A previous run of this agent (killed before its lease expired) or this process
                // before a reconnect: its keys are rebound to the new lease, so the old one only
                // holds leftovers.
                tracing::debug!(
                    old = format!("{old_lease:x}"),
                    new = format!("{lease:x}"),
                    "claim moved to a new lease; revoking the old one"
                );
                if let Err(e) = rpc("revoke old lease", client.lease_revoke(old_lease)).await {
                    tracing::debug!(lease = format!("{old_lease:x}"), "{e}");
                }
            }
            self.link.written(desired.seq);
            return Ok(None);
        }
        Err(SessionError::ClaimRaced {
            owner_key: t.owner_key.clone(),
        })
    }

    /// Keeps the lease alive, writes record changes and follows the nodes prefix until something
    /// fails (`Err`, the session is over) or the store is closed.
    async fn serve(&mut self, client: &mut Client, lease: i64) -> Result<End, SessionError> {
        let t = self.target.clone();
        let (keeper, acks) = rpc("keep lease alive", client.lease_keep_alive(lease)).await?;
        let every = t.lease_ttl / 3;
        let mut alive = Lease {
            id: lease,
            keeper,
            acks,
            every,
            tick: tokio::time::interval(every),
            last_ack: Instant::now(),
        };
        loop {
            let (rev, mut watch) = self.relist(client).await?;
            if let Some(end) = self.follow(client, &mut alive, rev, &mut watch).await? {
                return Ok(end);
            }
        }
    }

    /// A follower of another cluster's store: lists and watches its nodes prefix, and never
    /// writes (no lease, no claim, no record).
    async fn read_only(&mut self, client: &mut Client) -> Result<End, SessionError> {
        let what = format!("watch {}", self.target.nodes_prefix);
        loop {
            let (rev, mut watch) = self.relist(client).await?;
            loop {
                let msg = tokio::select! {
                    msg = watch.message() => msg,
                    _ = self.link.stop.wait_for(|s| *s) => return Ok(End::Stop),
                };
                if !self.on_watch(msg, rev, &what)? {
                    break;
                }
            }
        }
    }

    /// One message of the watch: `Ok(false)` when it was cancelled or compacted and the prefix
    /// must be listed again.
    fn on_watch(
        &mut self,
        msg: Result<Option<WatchResponse>, etcd_client::Error>,
        rev: i64,
        what: &str,
    ) -> Result<bool, SessionError> {
        let prefix = &self.target.nodes_prefix;
        match msg {
            Ok(Some(resp)) if resp.canceled() || resp.compact_revision() != 0 => {
                tracing::info!(
                    revision = rev,
                    compacted = resp.compact_revision(),
                    "watch of {prefix} cancelled ({}); relisting",
                    resp.cancel_reason()
                );
                Ok(false)
            }
            Ok(Some(resp)) => {
                self.apply(&resp);
                Ok(true)
            }
            Ok(None) => Err(SessionError::WatchClosed { what: what.into() }),
            Err(source) => Err(SessionError::Watch {
                what: what.into(),
                source,
            }),
        }
    }

    /// Lists the nodes prefix into the view and watches it from the listing's revision on.
    async fn relist(&mut self, client: &mut Client) -> Result<(i64, WatchStream), SessionError> {
        let t = self.target.clone();
        let list = format!("list {}", t.nodes_prefix);
        let opts = GetOptions::new().with_prefix();
        let listing = rpc(&list, client.get(t.nodes_prefix.as_str(), Some(opts))).await?;
        let rev = listing.header().map_or(0, |h| h.revision());
        let kvs = listing
            .kvs()
            .iter()
            .map(|kv| (kv.key(), kv.value(), kv.create_revision()));
        self.view.replace(&t.nodes_prefix, kvs);
        self.link.send_snapshot(self.view.snapshot());
        self.link.health.connected();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1)
            .with_prev_key();
        let what = format!("watch {}", t.nodes_prefix);
        let watch = rpc(&what, client.watch(t.nodes_prefix.as_str(), Some(opts))).await?;
        Ok((rev, watch))
    }

    /// Serves one watch: `Ok(None)` when it was cancelled or compacted and the prefix must be
    /// listed again, `Ok(Some(end))` when the session is over without a failure.
    async fn follow(
        &mut self,
        client: &mut Client,
        lease: &mut Lease,
        rev: i64,
        watch: &mut WatchStream,
    ) -> Result<Option<End>, SessionError> {
        let t = self.target.clone();
        let what = format!("watch {}", t.nodes_prefix);
        loop {
            let step = tokio::select! {
                _ = lease.tick.tick() => Step::Tick,
                ack = lease.acks.message() => Step::Ack(ack),
                msg = watch.message() => Step::Watch(msg),
                changed = self.link.desired.changed() => Step::Desired(changed.is_ok()),
                _ = self.link.stop.wait_for(|s| *s) => Step::Stop,
            };
            let id = lease.id;
            match step {
                Step::Tick => lease.keep_alive().await?,
                Step::Ack(Ok(Some(a))) if a.ttl() > 0 => lease.last_ack = Instant::now(),
                Step::Ack(Ok(Some(_))) => {
                    let lost = format!("lease {id:x} of {} expired", t.owner_key);
                    return Ok(Some(End::Lost(lost)));
                }
                Step::Ack(Ok(None)) => return Err(SessionError::KeepAliveClosed { lease: id }),
                Step::Ack(Err(source)) => {
                    return Err(SessionError::KeepAlive { lease: id, source })
                }
                Step::Watch(msg) => {
                    if !self.on_watch(msg, rev, &what)? {
                        return Ok(None);
                    }
                }
                Step::Desired(true) => {
                    if !self.write_own(client, id).await? {
                        let lost = format!("{} no longer holds our claim", t.owner_key);
                        return Ok(Some(End::Lost(lost)));
                    }
                }
                Step::Desired(false) | Step::Stop => return Ok(Some(End::Stop)),
            }
        }
    }

    /// Applies one watch response to the view and hands subscribers the result.
    fn apply(&mut self, resp: &WatchResponse) {
        let prefix = &self.target.nodes_prefix;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            match ev.event_type() {
                EventType::Put => self
                    .view
                    .put(prefix, (kv.key(), kv.value(), kv.create_revision())),
                EventType::Delete => self.view.delete(kv.key()),
            }
        }
        self.link.send_snapshot(self.view.snapshot());
    }

    /// Writes the desired record, but only while the owner key still holds our claim with our
    /// lease: another node's record, or a name taken over meanwhile, is never overwritten.
    /// `Ok(false)` when the claim is gone.
    async fn write_own(&mut self, client: &mut Client, lease: i64) -> Result<bool, SessionError> {
        let desired = self.link.desired.borrow_and_update().clone();
        let Some(json) = desired.record else {
            return Ok(true);
        };
        let t = &self.target;
        let owner = t.owner_key.as_str();
        let txn = Txn::new()
            .when([
                Compare::value(owner, CompareOp::Equal, t.owner_id.as_str()),
                Compare::lease(owner, CompareOp::Equal, lease),
            ])
            .and_then([TxnOp::put(
                t.node_key.as_str(),
                json.to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let what = format!("write {}", t.node_key);
        if !rpc(&what, client.txn(txn)).await?.succeeded() {
            return Ok(false);
        }
        self.link.written(desired.seq);
        Ok(true)
    }
}

/// The value, mod revision and lease of `key`, if it exists.
async fn get_one(client: &mut Client, key: &str) -> Result<Option<Kv>, SessionError> {
    let got = rpc(&format!("get {key}"), client.get(key, None)).await?;
    Ok(got.kvs().first().map(|kv| Kv {
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }))
}

/// One request to etcd, bounded in time (a stopped or partitioned server never answers), with
/// the error naming what was attempted.
async fn rpc<T>(
    what: &str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, RpcError<etcd_client::Error>> {
    task::rpc(what, RPC_TIMEOUT, request).await
}
