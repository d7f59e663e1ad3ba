//! Why a key rotation step failed, and why the rotator itself stopped. Owns the error types
//! only; it must never carry a private key (keys are not `Display`, and no variant holds one).

use std::fmt;
use std::time::SystemTime;

use keymgr::{KeyError, StoreError};
use wiremesh_datapath::model::DeviceError;

use crate::status::rfc3339;

/// A rotation step that failed. The rotation is retried; the operator who asked for it is told.
///
/// Each message is the step followed by its cause's whole chain, the text `wiremesh keys
/// rotate` and the agent's log print. The cause is kept as a typed value but deliberately not
/// exposed as `source()`: the message already holds the chain, and a report that walks sources
/// would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(
        "the store has been unreachable since {}; a rotation is never half-done, so it waits for the store",
        rfc3339(*since)
    )]
    StoreUnreachable { since: SystemTime },
    #[error("starting a key rotation: {}", Chain(.0))]
    Start(KeyError),
    #[error("staging the successor key: {}", Chain(.0))]
    Stage(KeyError),
    #[error("staging the successor key in the data path: {}", Chain(.0))]
    StageInDatapath(DeviceError),
    #[error("announcing the successor key: {}", Chain(.0))]
    Announce(StoreError),
    #[error("reading the data path: {0}")]
    ReadDatapath(DeviceError),
    #[error("committing the new key file: {}", Chain(.0))]
    Commit(KeyError),
    #[error("reading the committed key file: {}", Chain(.0))]
    ReloadKey(KeyError),
    #[error("switching the data path to the new key: {}", Chain(.0))]
    SwitchDatapath(DeviceError),
    #[error("publishing the new key: {}", Chain(.0))]
    PublishKey(StoreError),
}

/// The shell answered a step the core was not waiting for: a bug in the shell, which ends the
/// rotator (its supervisor restarts it from the key ring on disk) rather than guessing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "key rotation: got {answer} while {phase} (a bug in the rotator); it stops rather than guess"
)]
pub struct OutOfStep {
    pub answer: &'static str,
    pub phase: &'static str,
}

/// An error and its sources joined by ": ", as `anyhow` prints `{:#}`.
struct Chain<'a, E>(&'a E);

impl<E: std::error::Error> fmt::Display for Chain<'_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn io_error() -> KeyError {
        KeyError::Io {
            path: PathBuf::from("/var/lib/wiremesh/wm0.key.next"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        }
    }

    #[test]
    fn rotation_error_reads_like_the_context_chain_it_replaces() {
        let typed = RotateError::Stage(io_error()).to_string();
        let chained = format!(
            "{:#}",
            anyhow::Error::new(io_error()).context("staging the successor key")
        );
        assert_eq!(typed, chained);
        assert!(typed.contains("wm0.key.next"), "{typed}");
    }

    #[test]
    fn rotation_error_names_when_the_store_went_away() {
        let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        let text = RotateError::StoreUnreachable { since }.to_string();
        assert!(text.contains("since 1970-01-02T00:00:00Z;"), "{text}");
        assert!(text.ends_with("so it waits for the store"), "{text}");
    }
}
