//! The lab's one error type. Every variant names what it was doing (the command line, the path,
//! the node) so a failing end-to-end test explains itself without a debugger.

use std::path::PathBuf;
use std::time::Duration;

pub type Result<T> = std::result::Result<T, LabError>;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the lab must run as root (it creates network namespaces, veths and bind mounts); \
         run e.g. `sudo -E cargo test -p wiremesh-lab`"
    )]
    NotRoot,
    #[error("required tool `{tool}` is not on PATH (install the Debian package `{package}`)")]
    MissingTool { tool: String, package: String },
    #[error(
        "agent binary {} does not exist; build it with `cargo build --bins` \
         (or point WIREMESH_BIN at it)", path.display()
    )]
    MissingAgent { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not start `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("`{cmd}` did not finish within {after:?} and was killed; stderr so far: {stderr}")]
    CommandTimeout {
        cmd: String,
        after: Duration,
        stderr: String,
    },
    #[error("timed out after {after:?} waiting for {what}; last observation: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    #[error("cannot parse {what} from {input:?}")]
    Parse { what: String, input: String },
    #[error("node {node}: {what}")]
    Node { node: u8, what: String },
    #[error("{0}")]
    Check(String),
    #[error("flooder: {0}")]
    Flood(String),
}

impl LabError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
