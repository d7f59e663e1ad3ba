//! The node's keys on disk across a rotation: the current key (`<interface>.key`), the staged
//! successor (`<interface>.key.next`, present only while a rotation is under way) and the key's
//! serial and age (`<interface>.keystate.json`). Every write is atomic, so a crash at any step
//! leaves a node that comes back with a valid key and, if it was rotating, resumes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{KeyError, KeyFile, PrivateKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyState {
    /// 1 for the node's first key, one more per committed rotation.
    pub epoch: u64,
    /// When the current key was created, seconds since the Unix epoch.
    pub created_unix: u64,
}

impl KeyState {
    /// When the current key was created; a time past what the clock can hold (a corrupt state
    /// file) reads as the Unix epoch, so the key counts as due for rotation.
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH
            .checked_add(Duration::from_secs(self.created_unix))
            .unwrap_or(UNIX_EPOCH)
    }
}

pub struct Loaded {
    pub current: PrivateKey,
    pub created_now: bool,
    pub state: KeyState,
    /// A successor staged before the agent last stopped: the rotation resumes.
    pub next: Option<PrivateKey>,
}

pub struct KeyRing {
    current: KeyFile,
    next: KeyFile,
    state_path: PathBuf,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl KeyRing {
    pub fn new(state_dir: &Path, interface: &str) -> Self {
        Self {
            current: KeyFile::new(state_dir.join(format!("{interface}.key"))),
            next: KeyFile::new(state_dir.join(format!("{interface}.key.next"))),
            state_path: state_dir.join(format!("{interface}.keystate.json")),
        }
    }

    pub fn key_file(&self) -> &KeyFile {
        &self.current
    }

    pub fn load_or_create(&self) -> Result<Loaded, KeyError> {
        let (current, created_now) = self.current.load_or_create()?;
        let state = match (created_now, self.read_state()) {
            (false, Some(s)) => s,
            // A key older than the state file (or from before rotation existed): age unknown,
            // so count from now.
            _ => {
                let s = KeyState {
                    epoch: 1,
                    created_unix: unix_now(),
                };
                self.write_state(&s)?;
                s
            }
        };
        let next = match self.next.path().exists() {
            true => Some(self.next.load()?),
            false => None,
        };
        Ok(Loaded {
            current,
            created_now,
            state,
            next,
        })
    }

    /// Creates the successor key, or returns the one already staged.
    pub fn stage(&self) -> Result<PrivateKey, KeyError> {
        if self.next.path().exists() {
            return self.next.load();
        }
        let key = PrivateKey::generate();
        self.next.store(&key)?;
        Ok(key)
    }

    /// Makes the staged key current. The state is written first: a crash between the two
    /// writes leaves the old key with a newer serial and the successor still staged, and the
    /// restarted agent completes the rotation.
    pub fn commit(&self, state: &KeyState) -> Result<(PrivateKey, KeyState), KeyError> {
        let epoch = self.next_epoch(state)?;
        let key = self.next.load()?;
        let new_state = KeyState {
            epoch,
            created_unix: unix_now(),
        };
        self.write_state(&new_state)?;
        std::fs::rename(self.next.path(), self.current.path()).map_err(|source| KeyError::Io {
            path: self.current.path().to_path_buf(),
            source,
        })?;
        Ok((key, new_state))
    }

    /// The epoch after `state`'s. A record never carries `u64::MAX` (its successor's epoch would
    /// not exist), so neither does a committed key.
    pub fn next_epoch(&self, state: &KeyState) -> Result<u64, KeyError> {
        match state.epoch.checked_add(1) {
            Some(next) if next < u64::MAX => Ok(next),
            _ => Err(KeyError::EpochExhausted {
                path: self.state_path.clone(),
                epoch: state.epoch,
            }),
        }
    }

    fn read_state(&self) -> Option<KeyState> {
        let bytes = std::fs::read(&self.state_path).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_state(&self, state: &KeyState) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: self.state_path.clone(),
            source,
        };
        let tmp = self.state_path.with_extension("json.tmp");
        let json = serde_json::to_vec(state).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, &self.state_path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rotation_stages_then_commits_and_survives_a_restart_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::new(dir.path(), "wg0");
        let first = ring.load_or_create().unwrap();
        assert_eq!(first.state.epoch, 1);
        assert!(first.next.is_none());

        let next = ring.stage().unwrap();
        let mode = std::fs::metadata(dir.path().join("wg0.key.next"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Crash here: the restarted agent sees the staged key and resumes.
        let again = KeyRing::new(dir.path(), "wg0").load_or_create().unwrap();
        assert_eq!(again.current.public_key(), first.current.public_key());
        assert_eq!(again.next.map(|k| k.public_key()), Some(next.public_key()));
        assert_eq!(
            ring.stage().unwrap().public_key(),
            next.public_key(),
            "staging twice must reuse the key"
        );

        let (committed, state) = ring.commit(&again.state).unwrap();
        assert_eq!(committed.public_key(), next.public_key());
        assert_eq!(state.epoch, 2);
        let after = KeyRing::new(dir.path(), "wg0").load_or_create().unwrap();
        assert_eq!(after.current.public_key(), next.public_key());
        assert_eq!(after.state.epoch, 2);
        assert!(after.next.is_none());
    }

    #[test]
    fn an_exhausted_epoch_refuses_to_commit_instead_of_overflowing() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::new(dir.path(), "wg0");
        let loaded = ring.load_or_create().unwrap();
        ring.stage().unwrap();
        for epoch in [u64::MAX - 1, u64::MAX] {
            let state = KeyState {
                epoch,
                ..loaded.state
            };
            let Err(e) = ring.commit(&state) else {
                panic!("committed past the last epoch from {epoch}");
            };
            assert!(e.to_string().contains("keyEpoch"), "{e}");
        }
        let state = KeyState {
            epoch: u64::MAX - 2,
            ..loaded.state
        };
        let (_, committed) = ring.commit(&state).unwrap();
        assert_eq!(committed.epoch, u64::MAX - 1);
    }
}
