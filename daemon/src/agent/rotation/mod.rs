//! Automatic key rotation, make before break (docs/key-rotation.md):
//! 1. stage a successor key on disk and in the data path, which then accepts handshakes for it;
//! 2. announce it in this node's record (`nextPublicKey`); peers accept it alongside the old one;
//! 3. wait until every active peer has a session with the new key — proven in-band by the
//!    handshake itself — while traffic keeps flowing on the old sessions;
//! 4. commit: the new key becomes the key on disk, in the data path and in the record; old
//!    sessions keep decrypting for a grace period, then go.
//!
//! A rotation that falls due while the store is unreachable waits for it.
//!
//! The protocol's decisions live in `core` (pure, tested with time passed in); this file is the
//! I/O shell: it performs each step on the key ring, the store and the data path, feeds the
//! outcome back, sleeps until the core's next timeout and takes the operator's requests. It
//! decides nothing itself.

mod core;
mod error;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use keymgr::ring::{KeyRing, KeyState};
use keymgr::{NodeRecord, PrivateKey, Store};
use tokio::sync::{mpsc, oneshot, watch};

use self::core::{Action, Now, Persisted, RotationCore, Timing};
pub use self::core::{OwnKey, Startup};
pub use self::error::{OutOfStep, RotateError};
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::model::SetRequest;

/// The operator's `wiremesh keys rotate`: answered with the committed key, or with the first
/// error of the rotation (which carries on retrying).
pub type RotateRequest = oneshot::Sender<Result<OwnKey, RotateError>>;

pub struct Rotator {
    pub ring: KeyRing,
    pub state: KeyState,
    pub next: Option<PrivateKey>,
    pub record: NodeRecord,
    pub store: Arc<Store>,
    pub datapath: Arc<Datapath>,
    /// Zero disables automatic rotation.
    pub interval: Duration,
    pub commit_timeout: Duration,
    pub own: watch::Sender<OwnKey>,
    /// Shared with the rotators that may follow this one (a supervisor's restart).
    pub requests: Arc<tokio::sync::Mutex<mpsc::Receiver<RotateRequest>>>,
    /// `Synced` at the agent's start-up; `Recovered` for a rotator built from the ring after
    /// another one stopped.
    pub startup: Startup,
}

impl Rotator {
    /// This node's record as it must be published now.
    pub fn current_record(&self) -> NodeRecord {
        core::record_of(&self.record, &self.state)
    }

    /// Runs rotations until the operator's request channel closes (`Ok`). Every failed step is
    /// retried; the only error is the shell and core falling out of step, a bug after which a
    /// rotator built afresh from the ring resumes where this one stopped.
    pub async fn run(self) -> Result<(), OutOfStep> {
        let Rotator {
            ring,
            state,
            next,
            record,
            store,
            datapath,
            interval,
            commit_timeout,
            own,
            requests,
            startup,
        } = self;
        // Held while this rotator runs; released when it ends, however it ends.
        let mut requests = requests.lock_owned().await;
        let health = store.health();
        let timing = Timing {
            interval,
            commit_timeout,
        };
        let persisted = Persisted {
            state,
            next,
            record,
        };
        let mut core = RotationCore::new(timing, persisted, startup, &health.borrow(), now());
        let mut shell = Shell {
            ring,
            store,
            datapath,
            own,
            reply: None,
        };
        loop {
            while let Some(action) = core.poll_action() {
                shell.perform(&mut core, action).await?;
            }
            let timeout = core.poll_timeout().map(tokio::time::Instant::from_std);
            tokio::select! {
                () = sleep_until(timeout) => {
                    core.handle_store_health(&health.borrow());
                    core.handle_timeout(now());
                }
                req = requests.recv(), if core.is_idle() => {
                    let Some(reply) = req else {
                        return Ok(());
                    };
                    shell.reply = Some(reply);
                    core.handle_store_health(&health.borrow());
                    core.handle_request(now())?;
                }
            }
        }
    }
}

/// The I/O the core's steps need.
struct Shell {
    ring: KeyRing,
    store: Arc<Store>,
    datapath: Arc<Datapath>,
    own: watch::Sender<OwnKey>,
    /// The operator's request being served.
    reply: Option<RotateRequest>,
}

impl Shell {
    /// Performs one step and gives the core its outcome.
    async fn perform(&mut self, core: &mut RotationCore, action: Action) -> Result<(), OutOfStep> {
        match action {
            Action::Own(key) => {
                self.own.send_replace(key);
                Ok(())
            }
            Action::Reply(outcome) => {
                if let Some(reply) = self.reply.take() {
                    // The operator may have given up waiting; the rotation stands either way.
                    let _ = reply.send(outcome);
                }
                Ok(())
            }
            Action::CheckEpoch(state) => {
                let checked = self.ring.next_epoch(&state).map_err(RotateError::Start);
                answer(core, checked, |core, _| core.handle_done(now()))
            }
            Action::StageOnDisk => {
                let staged = self.ring.stage().map_err(RotateError::Stage);
                answer(core, staged, |core, key| core.handle_staged(key))
            }
            Action::StageInDatapath(key) => {
                let req = SetRequest {
                    next_private_key: Some(Some(key)),
                    ..SetRequest::default()
                };
                let set = self.datapath.set(req).await;
                answer(core, set.map_err(RotateError::StageInDatapath), done)
            }
            Action::Announce(record) => {
                let published = self.store.publish(&record).await;
                answer(core, published.map_err(RotateError::Announce), done)
            }
            Action::ReadDatapath => {
                let state = self.datapath.get().await.map_err(RotateError::ReadDatapath);
                answer(core, state, |core, state| {
                    core.handle_datapath_state(&state, now())
                })
            }
            Action::CommitOnDisk(state) => {
                let committed = self.ring.commit(&state).map_err(RotateError::Commit);
                answer(core, committed, |core, (key, state)| {
                    core.handle_committed(key, state)
                })
            }
            Action::SwitchDatapath(key) => {
                let set = self.switch(key).await;
                answer(core, set, done)
            }
            Action::ReloadDatapathKey => {
                let set = match self.ring.key_file().load() {
                    Ok(key) => self.switch(key).await,
                    Err(e) => Err(RotateError::ReloadKey(e)),
                };
                answer(core, set, done)
            }
            Action::PublishKey(record) => {
                let published = self.store.publish(&record).await;
                answer(core, published.map_err(RotateError::PublishKey), done)
            }
        }
    }

    async fn switch(&self, key: PrivateKey) -> Result<(), RotateError> {
        let req = SetRequest {
            private_key: Some(key),
            ..SetRequest::default()
        };
        self.datapath
            .set(req)
            .await
            .map_err(RotateError::SwitchDatapath)
    }
}

/// Feeds a step's outcome to the core: `ok` with its value, or the failure.
fn answer<T>(
    core: &mut RotationCore,
    outcome: Result<T, RotateError>,
    ok: impl FnOnce(&mut RotationCore, T) -> Result<(), OutOfStep>,
) -> Result<(), OutOfStep> {
    match outcome {
        Ok(value) => ok(core, value),
        Err(e) => core.handle_failure(e, now()),
    }
}

fn done(core: &mut RotationCore, (): ()) -> Result<(), OutOfStep> {
    core.handle_done(now())
}

/// The one place the rotator reads the clock.
fn now() -> Now {
    Now {
        instant: Instant::now(),
        wall: SystemTime::now(),
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
