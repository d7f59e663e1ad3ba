//! Helpers shared by the store integration tests: waiting for a snapshot or a health state with a
//! deadline, and bounding a whole test in time. The failure messages say what was awaited and
//! what was seen last.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keymgr::store::{Snapshot, StoreHealth};
use tokio::sync::watch;

/// Waits up to `within` for a snapshot that satisfies `f` (called `what` in the failure).
pub async fn wait_for(
    rx: &mut watch::Receiver<Arc<Snapshot>>,
    within: Duration,
    what: &str,
    f: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let found = tokio::time::timeout(within, async {
        loop {
            let snap = rx.borrow_and_update().clone();
            if f(&snap) {
                return snap;
            }
            rx.changed().await.expect("store task stopped");
        }
    })
    .await;
    let last = rx.borrow().clone();
    found.unwrap_or_else(|_| panic!("{what} not seen within {within:?}; last snapshot: {last:?}"))
}

/// Waits up to `within` for a store health (from the store's `health()`) that satisfies `f`.
pub async fn wait_health(
    mut rx: watch::Receiver<StoreHealth>,
    within: Duration,
    f: impl Fn(&StoreHealth) -> bool,
) {
    let reached = tokio::time::timeout(within, async { rx.wait_for(f).await.is_ok() }).await;
    let now = rx.borrow().clone();
    assert!(
        matches!(reached, Ok(true)),
        "health not as expected within {within:?}: {now:?}"
    );
}

/// After the server went away: waits up to `within` for every store to report `Unreachable`,
/// then checks that `rx` still holds the last snapshot (of `nodes` records) a while later.
pub async fn outage_keeps_the_last_snapshot(
    healths: impl IntoIterator<Item = watch::Receiver<StoreHealth>>,
    within: Duration,
    rx: &watch::Receiver<Arc<Snapshot>>,
    nodes: usize,
) {
    for health in healths {
        let down = |h: &StoreHealth| matches!(h, StoreHealth::Unreachable { .. });
        wait_health(health, within, down).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rx.borrow().nodes.len(),
        nodes,
        "the last snapshot must be kept"
    );
}

/// Runs `test` with logs captured per test, failing it if it takes longer than `limit`, whatever
/// goes wrong inside.
pub async fn bounded_by(limit: Duration, test: impl Future<Output = ()>) {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("keymgr=debug")
        .try_init();
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"));
}

/// Eight label sets that all prefer the same few numbers, so identity allocators collide.
#[allow(dead_code, reason = "used by the object store tests only")]
pub fn colliding_wants() -> Vec<keymgr::store::objects::Wanted> {
    (0..8)
        .map(|i| keymgr::store::objects::Wanted {
            key: format!("k8s:app=a{i}"),
            preferred: 300 + (i % 3),
            first: 256,
            end: 1 << 24,
        })
        .collect()
}

/// Runs [`colliding_wants`] through every store at once (half of them in reverse order, so the
/// races are real) and checks that all got a number for every key, all agree, and no number
/// holds two keys. Returns the allocation.
#[allow(dead_code, reason = "used by the object store tests only")]
pub async fn race_allocators(
    stores: &[Arc<keymgr::store::objects::ObjectStore>],
) -> std::collections::BTreeMap<String, u32> {
    let tasks: Vec<_> = stores
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(async move {
                let mut w = colliding_wants();
                if i % 2 == 1 {
                    w.reverse();
                }
                s.allocate(w).await.expect("allocate")
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("allocator task"));
    }
    let first = results[0].clone();
    assert_eq!(first.len(), 8, "{first:?}");
    for r in &results {
        assert_eq!(r, &first, "allocators disagree");
    }
    let numbers: std::collections::BTreeSet<u32> = first.values().copied().collect();
    assert_eq!(numbers.len(), 8, "a number holds two label sets: {first:?}");
    first
}

/// Follows `rx` in the background and counts the snapshots in which `node` is missing: a
/// restarted agent's record must never leave its peers' view, not even for one event.
pub fn count_absences(
    mut rx: watch::Receiver<Arc<Snapshot>>,
    node: &str,
) -> Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let absent = Arc::new(AtomicUsize::new(0));
    let (count, node) = (absent.clone(), node.to_owned());
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            if !rx.borrow_and_update().nodes.contains_key(&node) {
                count.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    absent
}
