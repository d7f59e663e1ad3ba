//! Unit tests of the rotation core: time is passed in, every step is answered by hand (or, for
//! the crash tests, by a fake world around a real key ring in a temporary directory).

use super::*;
use keymgr::ring::KeyRing;
use std::path::PathBuf;
use std::time::UNIX_EPOCH;
use wiremesh_datapath::model::{DeviceError, PeerState};

const INTERVAL: Duration = Duration::from_secs(24 * 3600);
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

fn timing() -> Timing {
    Timing {
        interval: INTERVAL,
        commit_timeout: COMMIT_TIMEOUT,
    }
}

/// A wall clock an hour after the key of `key_state` was created.
fn t0() -> Now {
    Now {
        instant: Instant::now(),
        wall: UNIX_EPOCH + Duration::from_secs(1_000_000 + 3600),
    }
}

fn after(now: Now, d: Duration) -> Now {
    Now {
        instant: now.instant + d,
        wall: now.wall + d,
    }
}

fn key_state(epoch: u64) -> KeyState {
    KeyState {
        epoch,
        created_unix: 1_000_000,
    }
}

fn record(key: &PrivateKey) -> NodeRecord {
    NodeRecord::new("n1", key.public_key(), "198.18.0.1:51871".parse().unwrap())
}

fn core(next: Option<PrivateKey>, startup: Startup, now: Now) -> (RotationCore, PrivateKey) {
    let current = PrivateKey::generate();
    let persisted = Persisted {
        state: key_state(1),
        next,
        record: record(&current),
    };
    let core = RotationCore::new(timing(), persisted, startup, &StoreHealth::Connected, now);
    (core, current)
}

fn drain(core: &mut RotationCore) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

fn names(actions: &[Action]) -> Vec<&'static str> {
    actions
        .iter()
        .map(|a| match a {
            Action::CheckEpoch(_) => "check-epoch",
            Action::StageOnDisk => "stage-on-disk",
            Action::StageInDatapath(_) => "stage-in-datapath",
            Action::Announce(_) => "announce",
            Action::ReadDatapath => "read-datapath",
            Action::CommitOnDisk(_) => "commit-on-disk",
            Action::SwitchDatapath(_) => "switch-datapath",
            Action::ReloadDatapathKey => "reload-datapath-key",
            Action::PublishKey(_) => "publish-key",
            Action::Own(_) => "own",
            Action::Reply(_) => "reply",
        })
        .collect()
}

fn peer(active: bool, ready_for: &[PublicKey]) -> PeerState {
    PeerState {
        public_key: PrivateKey::generate().public_key(),
        preshared_key: None,
        endpoint: None,
        persistent_keepalive: 0,
        allowed_ips: Vec::new(),
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        next_public_key: None,
        active_key: active.then(|| PrivateKey::generate().public_key()),
        ready_for: ready_for.to_vec(),
    }
}

fn device(peers: Vec<PeerState>) -> DeviceState {
    DeviceState {
        private_key: None,
        next_public_key: None,
        listen_port: 51871,
        fwmark: 0,
        peers,
        handshakes: None,
        process: None,
    }
}

/// Drives an operator's request up to the first read of the data path; returns the successor.
fn announce(core: &mut RotationCore, now: Now) -> PrivateKey {
    drain(core);
    core.handle_request(now).unwrap();
    assert_eq!(names(&drain(core)), ["check-epoch"]);
    core.handle_done(now).unwrap();
    assert_eq!(names(&drain(core)), ["stage-on-disk"]);
    let next = PrivateKey::generate();
    core.handle_staged(next.clone()).unwrap();
    let staged = drain(core);
    let [Action::StageInDatapath(k)] = &staged[..] else {
        panic!(
            "expected the successor for the data path: {:?}",
            names(&staged)
        );
    };
    assert_eq!(k.public_key(), next.public_key());
    core.handle_done(now).unwrap();
    let announced = drain(core);
    let [Action::Announce(rec)] = &announced[..] else {
        panic!("expected the announcement: {:?}", names(&announced));
    };
    assert_eq!(rec.next_public_key, Some(next.public_key()));
    assert_eq!(rec.key_epoch, 1);
    core.handle_done(now).unwrap();
    assert_eq!(names(&drain(core)), ["own", "read-datapath"]);
    next
}

#[test]
fn commits_only_after_every_active_peer_confirmed() {
    let now = t0();
    let (mut core, _) = core(None, Startup::Synced, now);
    let next = announce(&mut core, now).public_key();
    // One peer has a session with the successor, one has not, one is idle (no session at all).
    let mut peers = vec![peer(true, &[next]), peer(true, &[]), peer(false, &[])];
    core.handle_datapath_state(&device(peers.clone()), now)
        .unwrap();
    assert!(
        drain(&mut core).is_empty(),
        "committed with a peer unconfirmed"
    );
    let poll = after(now, POLL_EVERY);
    assert_eq!(core.poll_timeout(), Some(poll.instant));
    core.handle_timeout(poll);
    assert_eq!(names(&drain(&mut core)), ["read-datapath"]);
    core.handle_datapath_state(&device(peers.clone()), poll)
        .unwrap();
    assert!(
        drain(&mut core).is_empty(),
        "committed with a peer unconfirmed"
    );

    peers[1].ready_for.push(next);
    let poll = after(poll, POLL_EVERY);
    core.handle_timeout(poll);
    drain(&mut core);
    core.handle_datapath_state(&device(peers), poll).unwrap();
    let commit = drain(&mut core);
    let [Action::CommitOnDisk(state)] = &commit[..] else {
        panic!("expected the commit: {:?}", names(&commit));
    };
    assert_eq!(
        *state,
        key_state(1),
        "the commit starts from the current key state"
    );
}

#[test]
fn commit_timeout_commits_without_a_peer_that_never_confirms() {
    let now = t0();
    let (mut core, _) = core(None, Startup::Synced, now);
    announce(&mut core, now);
    let laggard = device(vec![peer(true, &[])]);
    let mut at = now;
    while at.instant < now.instant + COMMIT_TIMEOUT {
        core.handle_datapath_state(&laggard, at).unwrap();
        assert!(drain(&mut core).is_empty(), "committed before the timeout");
        at = after(at, POLL_EVERY * 50);
        core.handle_timeout(at);
        assert_eq!(names(&drain(&mut core)), ["read-datapath"]);
    }
    core.handle_datapath_state(&laggard, at).unwrap();
    assert_eq!(names(&drain(&mut core)), ["commit-on-disk"]);
}

#[test]
fn operator_request_is_answered_with_the_committed_key() {
    let now = t0();
    let (mut core, _) = core(None, Startup::Synced, now);
    let next = announce(&mut core, now);
    core.handle_datapath_state(&device(vec![]), now).unwrap();
    assert_eq!(names(&drain(&mut core)), ["commit-on-disk"]);
    let later = after(now, Duration::from_secs(1));
    let committed = KeyState {
        epoch: 2,
        created_unix: 1_000_000 + 3601,
    };
    core.handle_committed(next.clone(), committed).unwrap();
    let switch = drain(&mut core);
    let [Action::SwitchDatapath(k)] = &switch[..] else {
        panic!("expected the data path switch: {:?}", names(&switch));
    };
    assert_eq!(k.public_key(), next.public_key());
    core.handle_done(later).unwrap();
    let publish = drain(&mut core);
    let [Action::PublishKey(rec)] = &publish[..] else {
        panic!("expected the new record: {:?}", names(&publish));
    };
    assert_eq!(
        (rec.public_key, rec.next_public_key, rec.key_epoch),
        (next.public_key(), None, 2)
    );
    core.handle_done(later).unwrap();
    let end = drain(&mut core);
    let [Action::Own(own), Action::Reply(Ok(reply))] = &end[..] else {
        panic!("expected the new key and the reply: {:?}", names(&end));
    };
    assert_eq!(
        (own.public, own.epoch, own.next),
        (next.public_key(), 2, None)
    );
    assert_eq!(reply.public, next.public_key());
    assert!(core.is_idle());
    // The next rotation falls due one interval after the new key's creation.
    let due = later.instant + INTERVAL;
    assert_eq!(core.poll_timeout(), Some(due));
}

#[test]
fn operator_gets_the_first_error_and_the_rotation_retries_until_the_store_is_back() {
    let now = t0();
    let (mut core, _) = core(None, Startup::Synced, now);
    drain(&mut core);
    let since = now.wall - Duration::from_secs(30);
    core.handle_store_health(&StoreHealth::Unreachable {
        since,
        error: "connection refused".into(),
    });
    core.handle_request(now).unwrap();
    let failed = drain(&mut core);
    let [Action::Reply(Err(RotateError::StoreUnreachable { since: s }))] = &failed[..] else {
        panic!(
            "expected the operator to hear of the store: {:?}",
            names(&failed)
        );
    };
    assert_eq!(*s, since);
    assert!(
        !core.is_idle(),
        "a deferred rotation must not take a new request"
    );
    let retry = after(now, RETRY_AFTER);
    assert_eq!(core.poll_timeout(), Some(retry.instant));
    core.handle_timeout(after(now, RETRY_AFTER - Duration::from_millis(1)));
    assert!(drain(&mut core).is_empty(), "retried early");
    core.handle_timeout(retry);
    assert!(
        drain(&mut core).is_empty(),
        "began while the store is still down"
    );

    core.handle_store_health(&StoreHealth::Connected);
    let retry = after(retry, RETRY_AFTER);
    core.handle_timeout(retry);
    assert_eq!(names(&drain(&mut core)), ["check-epoch"]);
    let err = RotateError::Stage(keymgr::KeyError::Malformed);
    core.handle_failure(err, retry).unwrap();
    assert!(
        drain(&mut core).is_empty(),
        "the operator was answered twice"
    );
}

#[test]
fn interval_timer_starts_a_rotation_when_the_key_falls_due() {
    let now = t0();
    let (mut core, _) = core(None, Startup::Synced, now);
    assert_eq!(names(&drain(&mut core)), ["own"]);
    // The key is an hour old: due in interval minus an hour.
    let due = after(now, INTERVAL - Duration::from_secs(3600));
    assert_eq!(core.poll_timeout(), Some(due.instant));
    core.handle_timeout(Now {
        instant: due.instant - Duration::from_millis(1),
        ..due
    });
    assert!(drain(&mut core).is_empty(), "rotated early");
    core.handle_timeout(due);
    assert_eq!(names(&drain(&mut core)), ["check-epoch"]);
}

#[test]
fn zero_interval_never_rotates_by_itself_but_takes_requests() {
    let now = t0();
    let current = PrivateKey::generate();
    let persisted = Persisted {
        state: key_state(1),
        next: None,
        record: record(&current),
    };
    let timing = Timing {
        interval: Duration::ZERO,
        commit_timeout: COMMIT_TIMEOUT,
    };
    let mut core = RotationCore::new(
        timing,
        persisted,
        Startup::Synced,
        &StoreHealth::Connected,
        now,
    );
    let start = drain(&mut core);
    let [Action::Own(own)] = &start[..] else {
        panic!("expected the key: {:?}", names(&start));
    };
    assert_eq!(
        (own.public, own.next_rotation),
        (current.public_key(), None)
    );
    assert_eq!(core.poll_timeout(), None);
    core.handle_request(now).unwrap();
    assert_eq!(names(&drain(&mut core)), ["check-epoch"]);
}

#[test]
fn resume_after_staging_or_announcing_restages_the_same_key_and_announces_it() {
    // On disk, "staged" and "announced" look the same: the successor file exists.
    let now = t0();
    let next = PrivateKey::generate();
    let (mut core, _) = core(Some(next.clone()), Startup::Synced, now);
    assert_eq!(names(&drain(&mut core)), ["own", "check-epoch"]);
    core.handle_done(now).unwrap();
    let staged = drain(&mut core);
    let [Action::StageInDatapath(k)] = &staged[..] else {
        panic!(
            "expected the staged key re-staged, not a new one: {:?}",
            names(&staged)
        );
    };
    assert_eq!(k.public_key(), next.public_key());
    core.handle_done(now).unwrap();
    let announced = drain(&mut core);
    let [Action::Announce(rec)] = &announced[..] else {
        panic!("expected the announcement: {:?}", names(&announced));
    };
    assert_eq!(rec.next_public_key, Some(next.public_key()));
}

#[test]
fn resume_after_the_state_was_written_but_before_the_rename_commits_again() {
    // ring.commit writes epoch 2 first; a crash before the rename leaves the successor staged.
    let now = t0();
    let next = PrivateKey::generate();
    let current = PrivateKey::generate();
    let persisted = Persisted {
        state: key_state(2),
        next: Some(next.clone()),
        record: record(&current),
    };
    let mut core = RotationCore::new(
        timing(),
        persisted,
        Startup::Recovered,
        &StoreHealth::Connected,
        now,
    );
    assert_eq!(names(&drain(&mut core)), ["own", "check-epoch"]);
    core.handle_done(now).unwrap();
    drain(&mut core);
    core.handle_done(now).unwrap();
    drain(&mut core);
    core.handle_done(now).unwrap();
    assert_eq!(names(&drain(&mut core)), ["own", "read-datapath"]);
    core.handle_datapath_state(&device(vec![peer(true, &[next.public_key()])]), now)
        .unwrap();
    let commit = drain(&mut core);
    let [Action::CommitOnDisk(state)] = &commit[..] else {
        panic!("expected the commit: {:?}", names(&commit));
    };
    assert_eq!(
        state.epoch, 2,
        "the commit goes on from the epoch on disk (it skips one)"
    );
}

#[test]
fn resume_after_commit_puts_the_committed_key_in_the_data_path_and_the_store() {
    let now = t0();
    let (mut core, current) = core(None, Startup::Recovered, now);
    assert_eq!(names(&drain(&mut core)), ["own", "reload-datapath-key"]);
    core.handle_done(now).unwrap();
    let publish = drain(&mut core);
    let [Action::PublishKey(rec)] = &publish[..] else {
        panic!("expected the record republished: {:?}", names(&publish));
    };
    assert_eq!(
        (rec.public_key, rec.next_public_key),
        (current.public_key(), None)
    );
    core.handle_done(now).unwrap();
    assert_eq!(names(&drain(&mut core)), ["own"]);
    assert!(core.is_idle());
}

#[test]
fn synced_start_without_a_staged_key_only_reports_the_key() {
    let now = t0();
    let (mut core, current) = core(None, Startup::Synced, now);
    let start = drain(&mut core);
    let [Action::Own(own)] = &start[..] else {
        panic!("expected only the key: {:?}", names(&start));
    };
    assert_eq!(
        (own.public, own.epoch, own.next),
        (current.public_key(), 1, None)
    );
    assert!(core.is_idle());
}

#[test]
fn a_failure_after_the_commit_on_disk_retries_the_switch_not_a_new_rotation() {
    let now = t0();
    let (mut core, _) = core(None, Startup::Synced, now);
    let next = announce(&mut core, now);
    core.handle_datapath_state(&device(vec![]), now).unwrap();
    drain(&mut core);
    core.handle_committed(next.clone(), key_state(2)).unwrap();
    assert_eq!(names(&drain(&mut core)), ["switch-datapath"]);
    core.handle_failure(RotateError::SwitchDatapath(DeviceError::Stopped), now)
        .unwrap();
    assert!(matches!(
        &drain(&mut core)[..],
        [Action::Reply(Err(RotateError::SwitchDatapath(_)))]
    ));
    core.handle_timeout(after(now, RETRY_AFTER));
    let retry = drain(&mut core);
    let [Action::SwitchDatapath(k)] = &retry[..] else {
        panic!("expected the switch again: {:?}", names(&retry));
    };
    assert_eq!(k.public_key(), next.public_key());
}

#[test]
fn answers_the_core_did_not_ask_for_are_refused() {
    let now = t0();
    let (mut core, _) = core(None, Startup::Synced, now);
    drain(&mut core);
    assert!(core.handle_done(now).is_err());
    assert!(core.handle_staged(PrivateKey::generate()).is_err());
    assert!(core.handle_datapath_state(&device(vec![]), now).is_err());
    assert!(core
        .handle_committed(PrivateKey::generate(), key_state(2))
        .is_err());
    core.handle_request(now).unwrap();
    assert!(core.handle_request(now).is_err(), "two rotations at once");
    assert!(core.handle_staged(PrivateKey::generate()).is_err());
}

/// The data path, the store and the key ring around a core, for crash tests. The data path and
/// the store outlive the rotator, as they do when the agent restarts one.
struct World {
    ring: KeyRing,
    dir: PathBuf,
    datapath_key: PublicKey,
    datapath_staged: Option<PublicKey>,
    published: Vec<NodeRecord>,
    steps: usize,
}

impl World {
    /// Performs `action`; `false` for a step that changed the world (one a crash can follow).
    fn perform(&mut self, core: &mut RotationCore, action: Action, now: Now) -> bool {
        let r = match action {
            Action::Own(_) | Action::Reply(_) => return false,
            Action::CheckEpoch(state) => {
                self.ring.next_epoch(&state).unwrap();
                core.handle_done(now)
            }
            Action::StageOnDisk => core.handle_staged(self.ring.stage().unwrap()),
            Action::StageInDatapath(k) => {
                self.datapath_staged = Some(k.public_key());
                core.handle_done(now)
            }
            Action::Announce(rec) | Action::PublishKey(rec) => {
                self.published.push(rec);
                core.handle_done(now)
            }
            Action::ReadDatapath => {
                // The one peer handshakes with the staged key at once.
                let ready: Vec<PublicKey> = self.datapath_staged.into_iter().collect();
                core.handle_datapath_state(&device(vec![peer(true, &ready)]), now)
            }
            Action::CommitOnDisk(state) => {
                let (key, state) = self.ring.commit(&state).unwrap();
                core.handle_committed(key, state)
            }
            Action::SwitchDatapath(k) => {
                self.switch(k.public_key());
                core.handle_done(now)
            }
            Action::ReloadDatapathKey => {
                self.switch(self.ring.key_file().load().unwrap().public_key());
                core.handle_done(now)
            }
        };
        r.unwrap();
        self.check_peers_can_reach_us();
        true
    }

    fn switch(&mut self, key: PublicKey) {
        if self.datapath_staged == Some(key) {
            self.datapath_staged = None;
        }
        self.datapath_key = key;
    }

    /// Make before break: a key the store announces is one the data path answers to.
    fn check_peers_can_reach_us(&self) {
        let Some(rec) = self.published.last() else {
            return;
        };
        let held = [Some(self.datapath_key), self.datapath_staged];
        let reachable = held.contains(&Some(rec.public_key))
            || rec.next_public_key.is_some_and(|n| held.contains(&Some(n)));
        assert!(
            reachable,
            "the store announces keys the data path does not hold"
        );
    }

    /// Runs `core` until it is idle with nothing to do, or until `crash_after` steps in all.
    fn run(&mut self, core: &mut RotationCore, crash_after: usize) -> bool {
        let now = t0();
        while !core.is_idle() || !core.actions.is_empty() {
            let Some(action) = core.poll_action() else {
                core.handle_timeout(after(now, INTERVAL));
                continue;
            };
            if self.perform(core, action, now) {
                self.steps += 1;
                if self.steps == crash_after {
                    return false;
                }
            }
        }
        true
    }

    fn restart(&self) -> RotationCore {
        let loaded = KeyRing::new(&self.dir, "wg0").load_or_create().unwrap();
        let persisted = Persisted {
            state: loaded.state,
            next: loaded.next,
            record: record(&loaded.current),
        };
        RotationCore::new(
            timing(),
            persisted,
            Startup::Recovered,
            &StoreHealth::Connected,
            t0(),
        )
    }
}

#[test]
fn a_crash_after_any_step_resumes_to_one_committed_key_everywhere() {
    // An uninterrupted rotation takes 8 steps; crash after each of them in turn (9: no crash).
    for crash_after in 1..=9 {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::new(dir.path(), "wg0");
        let first = ring.load_or_create().unwrap();
        let mut world = World {
            ring,
            dir: dir.path().to_path_buf(),
            datapath_key: first.current.public_key(),
            datapath_staged: None,
            published: vec![record(&first.current)],
            steps: 0,
        };
        let persisted = Persisted {
            state: first.state,
            next: None,
            record: record(&first.current),
        };
        let mut core = RotationCore::new(
            timing(),
            persisted,
            Startup::Synced,
            &StoreHealth::Connected,
            t0(),
        );
        drain(&mut core);
        core.handle_request(t0()).unwrap();
        let finished = world.run(&mut core, crash_after);
        assert_eq!(finished, crash_after == 9, "crash after step {crash_after}");
        drop(core);
        let mut resumed = world.restart();
        assert!(
            world.run(&mut resumed, usize::MAX),
            "resumed after step {crash_after}"
        );

        let on_disk = KeyRing::new(dir.path(), "wg0").load_or_create().unwrap();
        let current = on_disk.current.public_key();
        let rotated = crash_after >= 2; // step 2 stages the successor on disk
        assert_eq!(
            current != first.current.public_key(),
            rotated,
            "step {crash_after}"
        );
        assert!(
            on_disk.next.is_none(),
            "step {crash_after}: a successor left staged"
        );
        assert_eq!(
            world.datapath_key, current,
            "step {crash_after}: data path key"
        );
        assert_eq!(world.datapath_staged, None, "step {crash_after}");
        let last = world.published.last().unwrap();
        assert_eq!(
            (last.public_key, last.next_public_key, last.key_epoch),
            (current, None, on_disk.state.epoch),
            "step {crash_after}: published record"
        );
        assert_eq!(resumed.own_key().public, current);
    }
}
