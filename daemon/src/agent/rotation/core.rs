//! The key-rotation protocol (docs/key-rotation.md) as a sans-IO state machine: stage a
//! successor, announce it, wait until every active peer has a session with it, commit.
//!
//! Inputs go in through `handle_*` (answers to the steps it asked for, the store's health, the
//! operator's request, the time); steps come out of `poll_action`, the next wake-up out of
//! `poll_timeout`. It never touches a file, a socket, the clock or a task: the caller passes
//! `Now` in and performs every `Action`. One step is out at a time, and the core refuses an
//! answer it did not ask for (`OutOfStep`) instead of guessing.
//!
//! Built from the key ring on disk, it resumes wherever a crash left the rotation: a staged
//! successor is re-staged, re-announced and committed; a key committed on disk but perhaps not
//! yet in the data path or the store is put there (`Startup::Recovered`).

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use keymgr::ring::KeyState;
use keymgr::store::StoreHealth;
use keymgr::{NodeRecord, PrivateKey, PublicKey};
use wiremesh_datapath::model::DeviceState;

use super::error::{OutOfStep, RotateError};
use crate::status::rfc3339;

/// A failed attempt is tried again after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);
/// While waiting for peers, the data path is read this often.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// The time, as the caller read it: the monotonic clock for waits, the wall clock for the key's
/// age (which survives restarts).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

/// This node's key as the admin API reports it.
#[derive(Debug, Clone)]
pub struct OwnKey {
    pub public: PublicKey,
    pub epoch: u64,
    pub created: SystemTime,
    pub next: Option<PublicKey>,
    pub next_rotation: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Zero disables automatic rotation.
    pub interval: Duration,
    /// How long a rotation waits for active peers before committing without them.
    pub commit_timeout: Duration,
}

/// What the data path and the store hold when a rotator starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Startup {
    /// The agent's start-up just gave the data path the ring's current key and published the
    /// record: nothing to put right.
    Synced,
    /// This rotator replaces one that stopped at an unknown step: a key committed on disk may not
    /// be in the data path or the store yet, so it is put there first.
    Recovered,
}

/// The rotation state as the key ring on disk holds it (`KeyRing::load_or_create`).
pub struct Persisted {
    pub state: KeyState,
    /// The staged successor, present while a rotation is under way.
    pub next: Option<PrivateKey>,
    /// This node's record; `public_key` is the ring's current key.
    pub record: NodeRecord,
}

/// A step for the shell. Each step but `Own` and `Reply` is answered with `handle_failure` or
/// the `handle_*` its doc names.
#[derive(Debug)]
pub enum Action {
    /// `KeyRing::next_epoch(state)`: a rotation that cannot commit must not begin. `handle_done`.
    CheckEpoch(KeyState),
    /// `KeyRing::stage`. `handle_staged`.
    StageOnDisk,
    /// The data path accepts handshakes for this key too. `handle_done`.
    StageInDatapath(PrivateKey),
    /// Publish the record carrying `nextPublicKey`. `handle_done`.
    Announce(NodeRecord),
    /// Read the data path's peers. `handle_datapath_state`.
    ReadDatapath,
    /// `KeyRing::commit(state)`. `handle_committed`.
    CommitOnDisk(KeyState),
    /// Make this the data path's key (it promotes the staged key, keeping its sessions).
    /// `handle_done`.
    SwitchDatapath(PrivateKey),
    /// Load the ring's current key and make it the data path's key. `handle_done`.
    ReloadDatapathKey,
    /// Publish the record of the committed key. `handle_done`.
    PublishKey(NodeRecord),
    /// The admin API's and the reconciler's view of this node's key changed.
    Own(OwnKey),
    /// The outcome of the operator's request.
    Reply(Result<OwnKey, RotateError>),
}

/// The step whose answer the core waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    CheckEpoch,
    Stage,
    StageInDatapath,
    Announce,
    ReadDatapath,
    Commit,
    Switch,
    PublishKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle {
        due: Option<Instant>,
    },
    Awaiting(Step),
    /// Some active peer has no session with the successor yet.
    Waiting {
        poll_at: Instant,
    },
    Retry {
        at: Instant,
    },
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Idle { .. } => "idle",
            Phase::Awaiting(_) => "waiting for another step",
            Phase::Waiting { .. } => "waiting for peers",
            Phase::Retry { .. } => "waiting to retry",
        }
    }
}

/// How the key committed on disk reaches the data path.
#[derive(Debug)]
enum Finish {
    /// This rotation committed it: the key in hand.
    Committed(PrivateKey),
    /// A previous rotator may have committed it: the shell reads it from the ring.
    Recovered,
}

pub struct RotationCore {
    timing: Timing,
    state: KeyState,
    next: Option<PrivateKey>,
    record: NodeRecord,
    phase: Phase,
    store_down_since: Option<SystemTime>,
    /// The operator asked for this rotation and has not been answered yet.
    operator_waiting: bool,
    /// A key is committed on disk and must still reach the data path and the store.
    finish: Option<Finish>,
    /// When the wait for peers gives up on the laggards.
    commit_by: Option<Instant>,
    actions: VecDeque<Action>,
}

impl RotationCore {
    /// Builds the core from the ring on disk and takes its first steps.
    pub fn new(
        timing: Timing,
        persisted: Persisted,
        startup: Startup,
        health: &StoreHealth,
        now: Now,
    ) -> Self {
        let mut core = Self {
            timing,
            state: persisted.state,
            next: persisted.next,
            record: persisted.record,
            phase: Phase::Idle { due: None },
            store_down_since: None,
            operator_waiting: false,
            finish: None,
            commit_by: None,
            actions: VecDeque::new(),
        };
        core.handle_store_health(health);
        core.actions.push_back(Action::Own(core.own_key()));
        if core.next.is_some() {
            tracing::info!("resuming the key rotation that was under way when the agent stopped");
            core.begin(now);
        } else if startup == Startup::Recovered {
            core.finish = Some(Finish::Recovered);
            core.begin(now);
        } else {
            core.idle(now);
        }
        core
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must be called next; `None` while a step is out or nothing is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { due } => due,
            Phase::Awaiting(_) => None,
            Phase::Waiting { poll_at } => Some(poll_at),
            Phase::Retry { at } => Some(at),
        }
    }

    /// Whether an operator's request can be taken now; a request that arrives during a rotation
    /// waits for it to end, then starts a rotation of its own.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle { .. })
    }

    pub fn handle_store_health(&mut self, health: &StoreHealth) {
        self.store_down_since = match health {
            StoreHealth::Unreachable { since, .. } => Some(*since),
            StoreHealth::Connected | StoreHealth::Conflict { .. } => None,
        };
    }

    pub fn handle_timeout(&mut self, now: Now) {
        match self.phase {
            Phase::Idle { due: Some(due) } if now.instant >= due => self.begin(now),
            Phase::Retry { at } if now.instant >= at => self.begin(now),
            Phase::Waiting { poll_at } if now.instant >= poll_at => {
                self.ask(Action::ReadDatapath, Step::ReadDatapath)
            }
            Phase::Idle { .. }
            | Phase::Awaiting(_)
            | Phase::Waiting { .. }
            | Phase::Retry { .. } => {}
        }
    }

    /// The operator asked for a rotation now; the outcome comes out as `Action::Reply`.
    pub fn handle_request(&mut self, now: Now) -> Result<(), OutOfStep> {
        if !self.is_idle() {
            return Err(self.out_of_step("a rotation request"));
        }
        self.operator_waiting = true;
        self.begin(now);
        Ok(())
    }

    /// The step out succeeded (one answered by `handle_done`).
    pub fn handle_done(&mut self, now: Now) -> Result<(), OutOfStep> {
        match self.phase {
            Phase::Awaiting(Step::CheckEpoch) => match &self.next {
                Some(next) => self.stage_in_datapath(next.clone()),
                None => self.ask(Action::StageOnDisk, Step::Stage),
            },
            Phase::Awaiting(Step::StageInDatapath) => {
                self.record.next_public_key = self.next.as_ref().map(PrivateKey::public_key);
                self.ask(Action::Announce(self.record()), Step::Announce);
            }
            Phase::Awaiting(Step::Announce) => self.announced(now),
            Phase::Awaiting(Step::Switch) => {
                self.ask(Action::PublishKey(self.record()), Step::PublishKey)
            }
            Phase::Awaiting(Step::PublishKey) => self.published(now),
            _ => return Err(self.out_of_step("a step done")),
        }
        Ok(())
    }

    /// The successor is staged on disk.
    pub fn handle_staged(&mut self, next: PrivateKey) -> Result<(), OutOfStep> {
        if self.phase != Phase::Awaiting(Step::Stage) {
            return Err(self.out_of_step("a staged key"));
        }
        self.next = Some(next.clone());
        self.stage_in_datapath(next);
        Ok(())
    }

    /// The data path's peers: commit once every active peer has a session with the successor,
    /// or the commit timeout has passed. A peer with no session at all has nothing to lose.
    pub fn handle_datapath_state(
        &mut self,
        state: &DeviceState,
        now: Now,
    ) -> Result<(), OutOfStep> {
        let (Phase::Awaiting(Step::ReadDatapath), Some(next), Some(commit_by)) =
            (self.phase, &self.next, self.commit_by)
        else {
            return Err(self.out_of_step("the data path's state"));
        };
        let next = next.public_key();
        let laggards: Vec<PublicKey> = state
            .peers
            .iter()
            .filter(|p| p.active_key.is_some() && !p.ready_for.contains(&next))
            .map(|p| p.public_key)
            .collect();
        if !laggards.is_empty() && now.instant < commit_by {
            self.phase = Phase::Waiting {
                poll_at: now.instant + POLL_EVERY,
            };
            return Ok(());
        }
        if !laggards.is_empty() {
            tracing::warn!(
                peers = ?laggards,
                timeout = ?self.timing.commit_timeout,
                "key rotation: these peers never made a session with the new key; committing anyway (their sessions restart)"
            );
        }
        self.ask(Action::CommitOnDisk(self.state), Step::Commit);
        Ok(())
    }

    /// The successor is the key on disk: from here on the rotation only moves forward, so a
    /// failure retries putting `key` in the data path and the store, never a new rotation.
    pub fn handle_committed(&mut self, key: PrivateKey, state: KeyState) -> Result<(), OutOfStep> {
        if self.phase != Phase::Awaiting(Step::Commit) {
            return Err(self.out_of_step("a committed key"));
        }
        self.state = state;
        self.next = None;
        self.commit_by = None;
        self.record.public_key = key.public_key();
        self.record.next_public_key = None;
        self.finish = Some(Finish::Committed(key.clone()));
        self.ask(Action::SwitchDatapath(key), Step::Switch);
        Ok(())
    }

    /// The step out failed: the attempt is retried after `RETRY_AFTER`; the operator, if one
    /// is waiting, gets this first error.
    pub fn handle_failure(&mut self, error: RotateError, now: Now) -> Result<(), OutOfStep> {
        if !matches!(self.phase, Phase::Awaiting(_)) {
            return Err(self.out_of_step("a failure"));
        }
        self.fail(error, now);
        Ok(())
    }

    pub fn own_key(&self) -> OwnKey {
        OwnKey {
            public: self.record.public_key,
            epoch: self.state.epoch,
            created: self.state.created(),
            next: self.record.next_public_key,
            next_rotation: next_rotation(&self.state, self.timing.interval),
        }
    }

    /// This node's record as it must be published now.
    pub fn record(&self) -> NodeRecord {
        record_of(&self.record, &self.state)
    }

    /// Starts (or restarts) an attempt: finishes a commit first, else a rotation from the top.
    fn begin(&mut self, now: Now) {
        match &self.finish {
            Some(Finish::Committed(key)) => {
                self.ask(Action::SwitchDatapath(key.clone()), Step::Switch)
            }
            Some(Finish::Recovered) => self.ask(Action::ReloadDatapathKey, Step::Switch),
            None => match self.store_down_since {
                Some(since) => self.fail(RotateError::StoreUnreachable { since }, now),
                None => self.ask(Action::CheckEpoch(self.state), Step::CheckEpoch),
            },
        }
    }

    fn stage_in_datapath(&mut self, next: PrivateKey) {
        self.ask(Action::StageInDatapath(next), Step::StageInDatapath);
    }

    fn announced(&mut self, now: Now) {
        self.actions.push_back(Action::Own(self.own_key()));
        if let Some(next) = self.record.next_public_key {
            tracing::info!(epoch = self.state.epoch.saturating_add(1), next_public_key = %next, "key rotation: successor announced");
        }
        self.commit_by = Some(now.instant + self.timing.commit_timeout);
        self.ask(Action::ReadDatapath, Step::ReadDatapath);
    }

    fn published(&mut self, now: Now) {
        let own = self.own_key();
        self.actions.push_back(Action::Own(own.clone()));
        match self.finish.take() {
            Some(Finish::Committed(_)) => {
                tracing::info!(epoch = self.state.epoch, public_key = %self.record.public_key, "key rotation: committed")
            }
            Some(Finish::Recovered) | None => {
                tracing::info!(epoch = self.state.epoch, public_key = %self.record.public_key, "key rotation: the committed key is in the data path and the store")
            }
        }
        if std::mem::take(&mut self.operator_waiting) {
            self.actions.push_back(Action::Reply(Ok(own)));
        }
        self.idle(now);
    }

    fn fail(&mut self, error: RotateError, now: Now) {
        tracing::warn!(error = %error, "key rotation deferred; retrying in 5 s");
        if std::mem::take(&mut self.operator_waiting) {
            self.actions.push_back(Action::Reply(Err(error)));
        }
        self.phase = Phase::Retry {
            at: now.instant + RETRY_AFTER,
        };
    }

    /// Idle until the current key falls due; the wall-clock due time is turned into a
    /// monotonic one now, once, so a clock step does not fire the timer early or late twice.
    fn idle(&mut self, now: Now) {
        let due = next_rotation(&self.state, self.timing.interval).and_then(|at| {
            let wait = at.duration_since(now.wall).unwrap_or(Duration::ZERO);
            now.instant.checked_add(wait)
        });
        self.phase = Phase::Idle { due };
    }

    fn ask(&mut self, action: Action, step: Step) {
        self.actions.push_back(action);
        self.phase = Phase::Awaiting(step);
    }

    fn out_of_step(&self, answer: &'static str) -> OutOfStep {
        OutOfStep {
            answer,
            phase: self.phase.name(),
        }
    }
}

/// When the key of `state` falls due; `None` when automatic rotation is off.
fn next_rotation(state: &KeyState, interval: Duration) -> Option<SystemTime> {
    (!interval.is_zero())
        .then(|| state.created().checked_add(interval))
        .flatten()
}

/// `record` with the key serial and age of `state`.
pub fn record_of(record: &NodeRecord, state: &KeyState) -> NodeRecord {
    NodeRecord {
        key_epoch: state.epoch,
        key_created: Some(rfc3339(state.created())),
        ..record.clone()
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
