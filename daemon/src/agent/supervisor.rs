//! The agent's task supervisor: every long-running control loop (key rotation, the policy loop,
//! the strict-mode guard's watcher, the admin and metrics listeners) runs under it, in one
//! `JoinSet` owned by the agent's event loop, so that no task can die unnoticed.
//!
//! A task that panics or returns is logged and reported at once in the health view (`/healthz`
//! answers 503 and `wiremesh encrypt status` names it), then started again from its factory
//! after a backoff. The loops are written to resume from what is on disk and in the kernel (the
//! key ring, the pinned policy maps, the saved policy), exactly as after an agent restart, so a
//! restart is a crash-resume. A task that keeps failing ([`MAX_FAILURES`] in a row) ends the
//! agent with an error naming it: the process supervisor (kubelet, systemd) restarts the whole
//! agent, while the data path process, the pinned maps and the strict guard keep enforcing.
//!
//! It must never leave the agent half-alive in silence: a task that is not running is always in
//! the health view.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;

/// A task's body; `Ok(())` is an exit too (a control loop is not supposed to end).
pub type TaskFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Makes a task's body, once at start and again at every restart.
pub type Factory = Box<dyn FnMut() -> TaskFuture + Send>;

/// Failures in a row (each soon after its start) after which the agent ends.
pub const MAX_FAILURES: u32 = 5;

/// How quickly tasks are restarted.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The first restart's delay; doubled at every failure in a row.
    pub first_backoff: Duration,
    /// A task that ran this long before failing starts its count of failures again.
    pub healthy_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            first_backoff: Duration::from_secs(1),
            healthy_after: Duration::from_secs(60),
        }
    }
}

pub use crate::api::health::{unhealthy, Health, TaskState, TaskStatus};

/// The agent gives up: a task failed [`MAX_FAILURES`] times in a row.
#[derive(Debug, thiserror::Error)]
#[error("task {task} failed {failures} times in a row; last: {reason}")]
pub struct GaveUp {
    pub task: &'static str,
    pub failures: u32,
    pub reason: String,
}

struct Task {
    name: &'static str,
    factory: Factory,
    started: Instant,
    /// Failures in a row.
    failures: u32,
    /// When a task that ended starts again.
    restart_at: Option<Instant>,
}

pub struct Supervisor {
    set: JoinSet<anyhow::Result<()>>,
    running: BTreeMap<Id, usize>,
    tasks: Vec<Task>,
    health: watch::Sender<Health>,
    timing: Timing,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new(Timing::default())
    }
}

impl Supervisor {
    pub fn new(timing: Timing) -> Self {
        Supervisor {
            timing,
            set: JoinSet::new(),
            running: BTreeMap::new(),
            tasks: Vec::new(),
            health: watch::channel(Health::new()).0,
        }
    }

    /// The health view, for the admin API.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// Starts `name` now; `factory` makes its body again at every restart.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, mut factory: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let factory: Factory = Box::new(move || Box::pin(factory()));
        self.tasks.push(Task {
            name,
            factory,
            started: Instant::now(),
            failures: 0,
            restart_at: None,
        });
        self.health.send_modify(|h| {
            h.insert(
                name.to_string(),
                TaskStatus {
                    state: TaskState::Running,
                    restarts: 0,
                    last_failure: None,
                },
            );
        });
        self.start(self.tasks.len() - 1);
    }

    fn start(&mut self, index: usize) {
        let task = &mut self.tasks[index];
        task.started = Instant::now();
        task.restart_at = None;
        let handle = self.set.spawn((task.factory)());
        self.running.insert(handle.id(), index);
    }

    /// Waits for the next event: a task ending (reported, its restart scheduled) or a restart
    /// falling due. Returns only when the agent must end; cancel-safe, for `select!`.
    pub async fn run(&mut self) -> GaveUp {
        loop {
            let due = self.tasks.iter().filter_map(|t| t.restart_at).min();
            tokio::select! {
                Some(ended) = self.set.join_next_with_id() => {
                    let (id, reason) = match ended {
                        Ok((id, Ok(()))) => (id, "returned".to_string()),
                        Ok((id, Err(e))) => (id, format!("failed: {e:#}")),
                        Err(e) => (e.id(), describe(&e)),
                    };
                    if let Some(gave_up) = self.ended(id, reason) {
                        return gave_up;
                    }
                }
                _ = sleep_until(due) => self.restart_due(),
            }
        }
    }

    fn ended(&mut self, id: Id, reason: String) -> Option<GaveUp> {
        let index = self.running.remove(&id)?;
        let task = &mut self.tasks[index];
        if task.started.elapsed() >= self.timing.healthy_after {
            task.failures = 0;
        }
        task.failures += 1;
        tracing::error!(
            task = task.name,
            failures = task.failures,
            "control loop {reason}"
        );
        let (name, failures) = (task.name, task.failures);
        self.health.send_modify(|h| {
            if let Some(s) = h.get_mut(name) {
                s.state = TaskState::Restarting;
                s.last_failure = Some(reason.clone());
            }
        });
        if failures >= MAX_FAILURES {
            return Some(GaveUp {
                task: name,
                failures,
                reason,
            });
        }
        let backoff = self.timing.first_backoff * 2u32.pow(failures - 1);
        self.tasks[index].restart_at = Some(Instant::now() + backoff);
        None
    }

    fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.tasks[i].restart_at.is_some_and(|at| at <= now))
            .collect();
        for index in due {
            let name = self.tasks[index].name;
            tracing::warn!(task = name, "restarting control loop");
            self.start(index);
            self.health.send_modify(|h| {
                if let Some(s) = h.get_mut(name) {
                    s.state = TaskState::Running;
                    s.restarts += 1;
                }
            });
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A panic's message (or a cancellation).
fn describe(e: &JoinError) -> String {
    if !e.is_panic() {
        return "was cancelled".to_string();
    }
    // `JoinError`'s Display includes the payload when it is a string.
    format!("panicked: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// Test timing: 10 ms backoff, healthy after 200 ms.
    const FAST: Timing = Timing {
        first_backoff: Duration::from_millis(10),
        healthy_after: Duration::from_millis(200),
    };

    /// A task that panics is reported at once with its message, restarted after the backoff,
    /// and counted.
    #[tokio::test]
    async fn a_panicking_task_is_reported_and_restarted() {
        let mut sup = Supervisor::new(FAST);
        let health = sup.health();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        sup.spawn("rotation", move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    panic!("injected fault");
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        sup.spawn("steady", || async {
            std::future::pending::<()>().await;
            Ok(())
        });

        let mut watching = health.clone();
        tokio::select! {
            gave_up = sup.run() => panic!("gave up: {gave_up}"),
            _ = watching.wait_for(|h| h["rotation"].state == TaskState::Restarting) => {}
        }
        let reported = health.borrow().clone();
        let why = unhealthy(&reported).expect("a restarting task makes the agent unhealthy");
        assert!(
            why.contains("task rotation") && why.contains("injected fault"),
            "{why}"
        );
        assert_eq!(reported["steady"].state, TaskState::Running);

        tokio::select! {
            gave_up = sup.run() => panic!("gave up: {gave_up}"),
            _ = watching.wait_for(|h| h["rotation"].state == TaskState::Running) => {}
        }
        let after = health.borrow().clone();
        assert_eq!(after["rotation"].restarts, 1);
        assert!(after["rotation"]
            .last_failure
            .as_deref()
            .is_some_and(|f| f.contains("injected fault")));
        assert_eq!(unhealthy(&after), None);
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    /// A task that returns (`Ok` or `Err`) is an ending too; one that keeps failing ends the
    /// agent with its name, after backoffs that double.
    #[tokio::test]
    async fn a_task_that_keeps_failing_ends_the_agent() {
        let mut sup = Supervisor::new(FAST);
        let health = sup.health();
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        sup.spawn("policy", move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Err(anyhow::anyhow!("maps unreadable")) }
        });
        let begun = Instant::now();
        let gave_up = sup.run().await;
        assert_eq!(gave_up.task, "policy");
        assert_eq!(gave_up.failures, MAX_FAILURES);
        assert!(gave_up.reason.contains("maps unreadable"), "{gave_up}");
        assert_eq!(runs.load(Ordering::SeqCst), MAX_FAILURES);
        // 10 + 20 + 40 + 80 ms of backoff between the five runs.
        assert!(
            begun.elapsed() >= Duration::from_millis(150),
            "{:?}",
            begun.elapsed()
        );
        assert_eq!(health.borrow()["policy"].state, TaskState::Restarting);
    }

    /// The control run of the two tests above: tasks that keep running are never reported.
    #[tokio::test]
    async fn running_tasks_are_healthy() {
        let mut sup = Supervisor::new(FAST);
        let health = sup.health();
        sup.spawn("a", || async {
            std::future::pending::<()>().await;
            Ok(())
        });
        let waited = tokio::time::timeout(Duration::from_millis(500), sup.run()).await;
        assert!(
            waited.is_err(),
            "the supervisor returned with nothing failing"
        );
        assert_eq!(unhealthy(&health.borrow()), None);
        assert_eq!(health.borrow()["a"].restarts, 0);
    }

    /// A task that ran long enough before failing starts a new count: a loop that fails once a
    /// day never ends the agent.
    #[tokio::test]
    async fn failures_far_apart_do_not_add_up() {
        let mut sup = Supervisor::new(FAST);
        sup.spawn("rare", || async {
            tokio::time::sleep(FAST.healthy_after * 2).await;
            Err(anyhow::anyhow!("rare failure"))
        });
        let waited = tokio::time::timeout(FAST.healthy_after * 2 * 8, sup.run()).await;
        assert!(waited.is_err(), "gave up on a task that failed only rarely");
    }
}
