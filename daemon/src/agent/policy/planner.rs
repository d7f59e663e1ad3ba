//! The policy planner: the pure core of the policy loop. It picks the object set in force (the
//! store's once the store has listed every kind, the saved one until then), loads and compiles
//! it, decides which interfaces carry the programs and what the maps hold, and when the
//! accepted set is saved. Inputs go in through `handle_*`, actions come out of
//! [`Planner::poll_action`], and [`Planner::poll_timeout`] says when to call
//! [`Planner::handle_timeout`].
//!
//! It never does I/O, never reads the clock and never blocks: netlink, the enforcer, the saved
//! file and the store are the shell's (`run.rs`); time is passed in. It must never enforce
//! something broader than the last set this node accepted: a set that does not load leaves the
//! one in force, and only a set from the store that loaded is saved.
//!
//! One pass at a time: inputs that arrive during a pass are kept (the newest of each) and make
//! one more pass after it, so any number of changes between two passes cost one compile.
//! `take.rs` holds the loading half of a pass, `pass.rs` the enforcing half.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keymgr::store::objects::ObjectSet;
use keymgr::Snapshot;
use policy::{Bundle, Identities};

use super::action::Action;
use super::attach::Attached;
use super::saved::{Saved, SavedError, Source};
use super::{NotEnforced, PolicyCounters, PolicyState};

/// Interfaces appear after their pods' objects (and disappear): re-checked this often, besides
/// the kernel's link and route notifications.
pub const RESYNC_EVERY: Duration = Duration::from_secs(2);

/// What a pass did, for the agent's start-up and data path restarts to wait on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Passes completed (0: none yet).
    pub passes: u64,
    /// Whether a host policy selects this node.
    pub host_wanted: bool,
    /// The WireGuard device (ifindex) the host endpoint's programs are attached to.
    pub host_on: Option<u32>,
}

impl PassReport {
    /// Whether the host endpoint is enforced on the WireGuard device `ifindex`, or there is no
    /// host endpoint to enforce.
    pub fn host_settled_on(&self, ifindex: u32) -> bool {
        !self.host_wanted || self.host_on == Some(ifindex)
    }
}

/// What the planner is told once, at its start.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    pub node_name: String,
    /// The WireGuard interface's name: the host endpoint's interface, never a pod's.
    pub wg_ifname: String,
    /// The saved file, named in logs only.
    pub saved_path: PathBuf,
    /// Whether there is an enforcer (`policy.enforcement` is not `never`).
    pub enforcing: bool,
    /// Whether the enforcer's maps were created empty: a reboot (or a first start), not a
    /// restarted agent or loop, whose pinned maps hold an accepted policy.
    pub fresh_maps: bool,
}

/// The saved set, as read at the start.
pub(super) struct SavedSet {
    pub saved: Saved,
    pub set: Arc<ObjectSet>,
}

/// What the planner remembers between passes.
#[derive(Default)]
pub(super) struct Memory {
    pub in_force: Option<(Arc<ObjectSet>, Arc<Snapshot>)>,
    /// The last set that loaded, and where it came from.
    pub accepted: Option<(Arc<ObjectSet>, Source)>,
    /// Whether a set has loaded since this planner started.
    pub loaded: bool,
    pub last_refusal: Option<String>,
    pub allocation_failed: bool,
    pub attached: Attached,
    /// The generation and interfaces last written to the saved file.
    pub saved_as: Option<(u64, Vec<String>)>,
}

/// A set being loaded, between its I/O steps.
pub(super) struct Taking {
    pub source: Source,
    pub set: Arc<ObjectSet>,
    pub nodes: Arc<Snapshot>,
    pub bundle: Bundle,
}

/// The enforcing half of a pass, between its I/O steps.
pub(super) struct Enforcing {
    pub wg_ifindex: Option<u32>,
    /// Local endpoints → the interface (name, ifindex) their address is routed to.
    pub resolved: BTreeMap<String, (String, u32)>,
    /// Local endpoint → the interface it is enforced on, or why not.
    pub report: BTreeMap<String, Result<String, NotEnforced>>,
    pub host_wanted: bool,
    /// Endpoint → ifindex, for those whose interface carries the programs.
    pub ifindexes: BTreeMap<String, u32>,
}

/// Which answer a pass waits for.
#[derive(Default)]
pub(super) enum Step {
    #[default]
    Idle,
    Addresses(Box<Taking>),
    Identities(Box<(Taking, Identities)>),
    Links {
        closed: Vec<String>,
    },
    Attach(Enforcing),
    Apply(Enforcing),
    Save(PassReport, (u64, Vec<String>)),
}

pub struct Planner {
    pub(super) cfg: PlannerConfig,
    pub(super) counters: Arc<PolicyCounters>,
    /// The store's newest set (`synced` says whether it has listed every kind yet).
    pub(super) objects: Arc<ObjectSet>,
    pub(super) nodes: Arc<Snapshot>,
    pub(super) saved: Option<SavedSet>,
    pub(super) state: Arc<PolicyState>,
    pub(super) m: Memory,
    pub(super) step: Step,
    pub(super) actions: VecDeque<Action>,
    /// A pass is wanted (an input arrived or the period elapsed since the last one began).
    due: bool,
    next_tick: Instant,
    passes: u64,
}

impl Planner {
    /// A planner whose policy in force is `state` (the default one at the agent's start; the
    /// last one published when a loop is restarted), with its first pass due at once.
    pub fn new(
        cfg: PlannerConfig,
        counters: Arc<PolicyCounters>,
        state: Arc<PolicyState>,
        now: Instant,
    ) -> Self {
        Self {
            cfg,
            counters,
            objects: Arc::new(ObjectSet::default()),
            nodes: Arc::new(Snapshot::default()),
            saved: None,
            state,
            m: Memory::default(),
            step: Step::Idle,
            actions: VecDeque::new(),
            due: true,
            next_tick: now + RESYNC_EVERY,
            passes: 0,
        }
    }

    /// The set this node saved in its last run, as the shell read it.
    pub fn handle_saved(&mut self, read: Result<Option<Saved>, SavedError>) {
        let path = self.cfg.saved_path.display().to_string();
        self.saved = match read {
            Ok(Some(s)) => {
                tracing::info!(file = %path, objects = s.objects.len(), "saved policy found: it is enforced until the store answers");
                let set = Arc::new(s.object_set());
                Some(SavedSet { saved: s, set })
            }
            Ok(None) => {
                tracing::info!(file = %path, "no saved policy: until the store answers, policy stays as the pinned maps hold it (none after a reboot)");
                None
            }
            Err(e) => {
                tracing::error!("{e}; until the store answers, policy stays as the pinned maps hold it (none after a reboot)");
                None
            }
        };
    }

    /// The object store's newest set. Until `set.synced` (every kind listed once) it never
    /// replaces the policy in force.
    pub fn handle_objects(&mut self, set: Arc<ObjectSet>) {
        self.objects = set;
        self.due = true;
    }

    /// The store's newest node records (their addresses are the `host` and `remote-node`
    /// identities).
    pub fn handle_nodes(&mut self, nodes: Arc<Snapshot>) {
        self.nodes = nodes;
        self.due = true;
    }

    /// The kernel announced a link or route change: interfaces are checked again.
    pub fn handle_link_event(&mut self) {
        self.due = true;
    }

    /// Time has passed: every [`RESYNC_EVERY`] a pass checks the interfaces again.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.due = true;
        // Ticks missed while a pass ran are not made up: one pass covers them.
        while self.next_tick <= now {
            self.next_tick += RESYNC_EVERY;
        }
    }

    /// When [`Planner::handle_timeout`] is next wanted.
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// The next thing to do. `None`: nothing until the next input or timeout (or until the
    /// answer to the last action, which is then owed).
    pub fn poll_action(&mut self) -> Option<Action> {
        if self.actions.is_empty() && matches!(self.step, Step::Idle) && self.due {
            self.begin_pass();
        }
        self.actions.pop_front()
    }

    /// The policy in force (the shell learns it from [`Action::PublishState`]).
    #[cfg(test)]
    pub fn state(&self) -> &Arc<PolicyState> {
        &self.state
    }

    pub(super) fn publish(&mut self, state: PolicyState) {
        self.state = Arc::new(state);
        self.actions
            .push_back(Action::PublishState(self.state.clone()));
    }

    /// Starts a pass with the newest inputs.
    fn begin_pass(&mut self) {
        self.due = false;
        self.take_or_keep();
    }

    pub(super) fn finish_pass(&mut self, mut report: PassReport) {
        self.passes += 1;
        report.passes = self.passes;
        self.step = Step::Idle;
        self.actions.push_back(Action::PublishReport(report));
    }

    /// Takes the step the answer `what` belongs to, or logs and keeps the current one: an
    /// answer nobody asked for changes nothing.
    pub(super) fn expect_step<T>(
        &mut self,
        what: &str,
        pick: impl FnOnce(Step) -> Result<T, Step>,
    ) -> Option<T> {
        match pick(std::mem::take(&mut self.step)) {
            Ok(t) => Some(t),
            Err(step) => {
                tracing::debug!("policy planner: unexpected {what}, ignored");
                self.step = step;
                None
            }
        }
    }
}
