//! What the server-backed stores (etcd, Kubernetes) share: the agent's [`Handle`] and one
//! background task that talks to the server, joined only by `watch` channels (the task's ends are
//! its [`Link`]). The handle numbers each desired record so that `publish` can wait for the task to
//! acknowledge that very write. Nothing here knows a server's protocol.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::backend::Backend;
use super::health::HealthReporter;
use super::{send_if_changed, ClaimOutcome, Snapshot, StoreError, StoreHealth};
use crate::{NodeRecord, RecordError};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A session that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(5);

/// The record this node wants in the store, numbered so that `publish` can wait for its own
/// write. `record` is what the task writes: the record itself or its encoding.
#[derive(Debug)]
pub(super) struct Desired<T> {
    pub(super) seq: u64,
    pub(super) record: Option<Arc<T>>,
}

impl<T> Default for Desired<T> {
    fn default() -> Self {
        Self {
            seq: 0,
            record: None,
        }
    }
}

impl<T> Clone for Desired<T> {
    fn clone(&self) -> Self {
        Self {
            seq: self.seq,
            record: self.record.clone(),
        }
    }
}

/// The agent's side of a server-backed store. Dropping it stops the background task.
pub(super) struct Handle<T> {
    backend: Arc<Backend>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    health: watch::Receiver<StoreHealth>,
    desired: watch::Sender<Desired<T>>,
    written: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The background task's side: what it reports to the handle and what it takes from it.
pub(super) struct Link<T> {
    pub(super) health: HealthReporter,
    pub(super) desired: watch::Receiver<Desired<T>>,
    pub(super) stop: watch::Receiver<bool>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    written: watch::Sender<u64>,
}

impl<T: Send + Sync + 'static> Handle<T> {
    /// Starts `task` in `span` with its ends of the channels. Until the task lists the store,
    /// subscribers see `initial`.
    pub(super) fn spawn<F>(
        backend: Backend,
        initial: Snapshot,
        span: tracing::Span,
        task: impl FnOnce(Link<T>) -> F,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let backend = Arc::new(backend);
        let (snap_tx, snapshot) = watch::channel(Arc::new(initial));
        let (health_tx, health) = watch::channel(StoreHealth::Unreachable {
            since: SystemTime::now(),
            error: "not contacted yet".into(),
        });
        let (desired, desired_rx) = watch::channel(Desired::default());
        let (written_tx, written) = watch::channel(0);
        let (stop, stop_rx) = watch::channel(false);
        let link = Link {
            health: HealthReporter::new(health_tx, backend.clone()),
            desired: desired_rx,
            stop: stop_rx,
            snapshot: snap_tx,
            written: written_tx,
        };
        let task = tokio::spawn(task(link).instrument(span));
        Self {
            backend,
            snapshot,
            health,
            desired,
            written,
            stop,
            task,
        }
    }

    /// Waits up to `timeout` for the first contact with the server. `Err(NodeNameTaken)` means
    /// another live agent holds this node name.
    pub(super) async fn claim(&self, timeout: Duration) -> Result<ClaimOutcome, StoreError> {
        let mut health = self.health.clone();
        let reached = tokio::time::timeout(timeout, async {
            let h = health.wait_for(|h| !matches!(h, StoreHealth::Unreachable { .. }));
            h.await.map(|h| h.clone())
        })
        .await;
        let state = match reached {
            Ok(Ok(h)) => h,
            Ok(Err(_)) => return Err(self.backend.server.stopped()),
            Err(_) => health.borrow().clone(),
        };
        match state {
            StoreHealth::Connected => Ok(ClaimOutcome::Claimed),
            StoreHealth::Conflict { owner } => Err(self.taken(owner)),
            StoreHealth::Unreachable { error, .. } => Ok(ClaimOutcome::Unreachable { error }),
        }
    }

    /// Checks `record`, makes `encode(record)` the desired record and waits until the task has
    /// written it. Fails at once while the server is unreachable; the record stays desired all
    /// the same, and the task writes it when the server is back.
    pub(super) async fn publish(
        &self,
        record: &NodeRecord,
        encode: impl FnOnce(&NodeRecord) -> Result<T, StoreError>,
    ) -> Result<(), StoreError> {
        let b = &self.backend;
        if record.node_name != b.node {
            return Err(StoreError::Invalid {
                node: record.node_name.clone(),
                source: RecordError::NameMismatch {
                    expected: b.node.clone(),
                    found: record.node_name.clone(),
                },
            });
        }
        record.validate().map_err(|source| StoreError::Invalid {
            node: record.node_name.clone(),
            source,
        })?;
        let encoded = Arc::new(encode(record)?);
        let mut seq = 0;
        self.desired.send_modify(|d| {
            d.seq += 1;
            d.record = Some(encoded);
            seq = d.seq;
        });
        let outcome = tokio::time::timeout(b.patience, self.written(seq)).await;
        outcome.unwrap_or_else(|_| {
            let reason = format!("{} not acknowledged within {:?}", b.write, b.patience);
            Err(b.server.unavailable(reason))
        })
    }

    /// Waits until the task acknowledges write `seq`, or health says it cannot.
    async fn written(&self, seq: u64) -> Result<(), StoreError> {
        let mut written = self.written.clone();
        let mut health = self.health.clone();
        loop {
            if *written.borrow_and_update() >= seq {
                return Ok(());
            }
            match &*health.borrow_and_update() {
                StoreHealth::Connected => {}
                StoreHealth::Unreachable { error, .. } => {
                    return Err(self.backend.server.unavailable(error.as_str()))
                }
                StoreHealth::Conflict { owner } => return Err(self.taken(owner.clone())),
            }
            tokio::select! {
                r = written.changed() => r,
                r = health.changed() => r,
            }
            .map_err(|_| self.backend.server.stopped())?;
        }
    }

    fn taken(&self, owner: String) -> StoreError {
        StoreError::NodeNameTaken {
            node: self.backend.node.clone(),
            owner,
        }
    }
}

impl<T> Handle<T> {
    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    pub(super) fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.clone()
    }

    pub(super) fn describe(&self) -> &str {
        &self.backend.describe
    }

    /// Asks the task to stop gracefully (whatever that means to the backend) and waits for it.
    pub(super) async fn close(mut self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(self.backend.patience, &mut self.task).await;
    }

    /// Stops the task at once, as if the process had been killed.
    pub(super) fn abandon(self) {
        self.task.abort();
    }
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T> Link<T> {
    /// Hands subscribers `snap` unless it is what they already have.
    pub(super) fn send_snapshot(&self, snap: Snapshot) {
        send_if_changed(&self.snapshot, snap);
    }

    /// Acknowledges that the desired record numbered `seq` is written.
    pub(super) fn written(&self, seq: u64) {
        self.written.send_replace(seq);
    }

    /// Sleeps for `pause`; `false` when the store was closed meanwhile.
    pub(super) async fn pause(&mut self, pause: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(pause) => true,
            _ = self.stop.wait_for(|s| *s) => false,
        }
    }
}

/// The pause before the next session: doubling from [`MIN_BACKOFF`] up to [`MAX_BACKOFF`], and
/// back to the minimum after a session that lasted [`STABLE`]. Each pause is jittered (between
/// half and all of it), so that the agents of every node, which lose a restarted server at the
/// same moment, do not come back to it in lockstep.
#[derive(Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: MIN_BACKOFF }
    }
}

impl Backoff {
    /// The pause after a session that began at `began`.
    pub(super) fn after(&mut self, began: Instant) -> Duration {
        if began.elapsed() > STABLE {
            self.next = MIN_BACKOFF;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        jittered(pause, rand_core::RngCore::next_u32(&mut rand_core::OsRng))
    }
}

/// `pause` scaled into [pause/2, pause] by `random`.
fn jittered(pause: Duration, random: u32) -> Duration {
    let half = pause / 2;
    half + half.mul_f64(f64::from(random) / f64::from(u32::MAX))
}

/// Why one request to a server failed, naming what was attempted.
#[derive(Debug, thiserror::Error)]
pub(super) enum RpcError<E: std::error::Error + 'static> {
    #[error("{what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: E,
    },
    #[error("{what}: no answer within {within:?}")]
    Timeout { what: String, within: Duration },
}

/// One request to a server, bounded by `within` (a stopped or partitioned server never answers),
/// with the error naming what was attempted.
pub(super) async fn rpc<T, E: std::error::Error + 'static>(
    what: &str,
    within: Duration,
    request: impl Future<Output = Result<T, E>>,
) -> Result<T, RpcError<E>> {
    match tokio::time::timeout(within, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(RpcError::Failed {
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(RpcError::Timeout {
            what: what.to_string(),
            within,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_jittered_between_half_and_all_of_the_backoff() {
        let pause = Duration::from_millis(800);
        assert_eq!(jittered(pause, 0), Duration::from_millis(400));
        assert_eq!(jittered(pause, u32::MAX), pause);
        let mut backoff = Backoff::default();
        let began = Instant::now();
        let pauses: Vec<Duration> = (0..6).map(|_| backoff.after(began)).collect();
        for (got, nominal) in pauses.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            let nominal = Duration::from_millis(nominal);
            assert!(
                *got >= nominal / 2 && *got <= nominal,
                "{got:?} for {nominal:?}"
            );
        }
        // Two agents starting together do not retry together.
        let spread: std::collections::BTreeSet<Duration> =
            (0..8).map(|_| Backoff::default().after(began)).collect();
        assert!(spread.len() > 1, "no jitter: {spread:?}");
    }

    /// A failed request reads `what: why`, as the store's health and errors have always shown it.
    #[tokio::test]
    async fn a_failed_request_names_what_was_attempted() {
        let failed = rpc("get /k", Duration::from_secs(1), async {
            Err::<(), _>(std::io::Error::other("refused"))
        });
        assert_eq!(failed.await.unwrap_err().to_string(), "get /k: refused");
        let silent = rpc(
            "get /k",
            Duration::from_millis(10),
            std::future::pending::<Result<(), std::io::Error>>(),
        );
        assert_eq!(
            silent.await.unwrap_err().to_string(),
            "get /k: no answer within 10ms"
        );
    }
}
