//! The views the admin server reads: small read-only snapshots of state that other parts of
//! the agent own and publish. A [`View`] is how a handler reads one; the types here are what
//! it sees. Nothing here can change the agent's state, and nothing here knows the agent's
//! types: the agent projects its own state into these (`agent/views.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use keymgr::PublicKey;
use tokio::sync::watch;

/// A read-only view: each [`View::get`] sees the owner's latest value.
pub struct View<T>(Arc<dyn Fn() -> T + Send + Sync>);

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: 'static> View<T> {
    pub fn new(read: impl Fn() -> T + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }

    /// `rx`'s latest value seen through `project` (which runs on each read, under the watch's
    /// read lock: keep it a copy).
    pub fn of<S: Send + Sync + 'static>(
        rx: watch::Receiver<S>,
        project: impl Fn(&S) -> T + Send + Sync + 'static,
    ) -> Self {
        Self::new(move || project(&rx.borrow()))
    }

    /// A value that never changes (tests, and facts known at start).
    pub fn fixed(value: T) -> Self
    where
        T: Clone + Send + Sync,
    {
        Self::new(move || value.clone())
    }

    pub fn get(&self) -> T {
        (self.0)()
    }
}

/// This node's key as the rotator last published it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnKeyView {
    pub public: PublicKey,
    pub epoch: u64,
    pub created: SystemTime,
    /// The announced successor while a rotation is under way.
    pub next: Option<PublicKey>,
    /// `None` when automatic rotation is off.
    pub next_rotation: Option<SystemTime>,
}

/// Which node a peer key belongs to, and that key's epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerName {
    pub node: String,
    pub epoch: u64,
}

/// Every peer key the store knows (published keys and announced successors).
pub type PeerNames = Arc<HashMap<PublicKey, PeerName>>;

/// The policy in force, as the online trace and the metrics read it.
#[derive(Clone, Default)]
pub struct PolicyView {
    pub bundle: Arc<policy::Bundle>,
    /// Object sets loaded since start (0: none yet).
    pub generation: u64,
    /// Why the newest object set was refused, while the previous one stays in force.
    pub refused: Option<String>,
    /// This node's endpoints whose interface is enforced, and those that are not.
    pub endpoints_enforced: u64,
    pub endpoints_failed: u64,
}

/// The policy loop's counters, for metrics.
#[derive(Debug, Clone, Default)]
pub struct PolicyTotals {
    pub load_failures: u64,
    pub apply_failures: u64,
    /// The eBPF programs' packet counters as of the last pass, with the endpoint each
    /// interface serves.
    pub packets: Vec<(String, wiremesh_enforce::Counter)>,
}
