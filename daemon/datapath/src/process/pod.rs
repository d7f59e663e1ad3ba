//! The data path as a pod of its own DaemonSet (`wiremesh datapath --config`, with the agent's
//! `datapathProcess: external`): what lets a rolling update replace it with no packet lost.
//!
//! The DaemonSet surges (`maxSurge: 1, maxUnavailable: 0`): the new pod starts beside the old
//! one, takes the data path over through the handover socket ([`super::upgrade`]), and is
//! ready only once the old one has let go; then the old pod is deleted. The old process must
//! not exit when it hands over (its container would restart and take the data path back): it
//! stays, idle, until it is stopped.
//!
//! Kubelet learns which of the two is serving from the status file this module keeps in the
//! pod's own directory (an `emptyDir`), which `wiremesh datapath-probe` reads: a probe runs in
//! the pod's PID namespace, so the process is told apart by its [`crate::instance`], which the
//! UAPI answer carries.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use wiremesh_key::{KeyFile, PrivateKey};

use crate::uapi::client::UapiClient;

/// The status file's name in the pod's directory.
const STATUS_FILE: &str = "datapath.status";
/// How long a probe waits for the UAPI answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a data path waiting for its key says so.
const KEY_WAIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Where this process is in its life, as the probes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The node key is not there yet (the agent creates it at its first start).
    WaitingForKey,
    /// Took the data path over; its predecessor still serves the old sessions.
    TakingOver,
    /// The node's data path, alone.
    Active,
    /// Handed over to a successor: idle until stopped.
    HandedOver,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::WaitingForKey => "waiting-for-key",
            Phase::TakingOver => "taking-over",
            Phase::Active => "active",
            Phase::HandedOver => "handed-over",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Phase::WaitingForKey,
            Phase::TakingOver,
            Phase::Active,
            Phase::HandedOver,
        ]
        .into_iter()
        .find(|p| p.as_str() == text)
    }
}

/// The status file of one data-path process.
#[derive(Debug, Clone)]
pub struct Status {
    dir: PathBuf,
    uapi: PathBuf,
}

impl Status {
    /// `dir` is the pod's own directory; `uapi` the interface's UAPI socket.
    pub fn new(dir: &Path, uapi: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            uapi: uapi.to_path_buf(),
        }
    }

    /// Records `phase` (written to a temporary file and renamed: a probe never reads half).
    pub fn set(&self, phase: Phase) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let text = format!(
            "phase={}\ninstance={:016x}\nuapi={}\n",
            phase.as_str(),
            crate::instance(),
            self.uapi.display()
        );
        let path = self.dir.join(STATUS_FILE);
        let tmp = self.dir.join(format!("{STATUS_FILE}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(phase = phase.as_str(), "data-path status");
        Ok(())
    }
}

/// A status file as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    phase: Phase,
    instance: u64,
    uapi: PathBuf,
}

fn read(dir: &Path) -> Result<Recorded> {
    let path = dir.join(STATUS_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} (has the data path started?)", path.display()))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| anyhow!("{}: no {key}", path.display()))
    };
    let phase = field("phase")?;
    Ok(Recorded {
        phase: Phase::parse(phase)
            .ok_or_else(|| anyhow!("{}: unknown phase {phase:?}", path.display()))?,
        instance: u64::from_str_radix(field("instance")?, 16)
            .map_err(|_| anyhow!("{}: instance is not hexadecimal", path.display()))?,
        uapi: PathBuf::from(field("uapi")?),
    })
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Ready: this pod's process is the node's data path, alone (its predecessor let go), and
    /// answers on the interface's socket.
    Readiness,
    /// Alive: waiting for the key, idle after a handover, or answering on the socket as itself.
    Liveness,
}

/// Runs `probe` against the process whose status is in `dir`: `Ok` with what was seen, or why
/// it fails.
pub async fn probe(dir: &Path, probe: Probe) -> Result<String> {
    let status = read(dir)?;
    match (probe, status.phase) {
        (Probe::Liveness, Phase::WaitingForKey | Phase::HandedOver) => {
            return Ok(format!("alive: {}", status.phase.as_str()))
        }
        (Probe::Readiness, Phase::Active) | (Probe::Liveness, _) => {}
        (Probe::Readiness, phase) => bail!("not ready: {}", phase.as_str()),
    }
    let client = UapiClient::new(status.uapi.clone());
    let state = tokio::time::timeout(PROBE_TIMEOUT, client.get())
        .await
        .map_err(|_| {
            anyhow!(
                "{} did not answer within {PROBE_TIMEOUT:?}",
                status.uapi.display()
            )
        })?
        .with_context(|| format!("asking {}", status.uapi.display()))?;
    let serving = state.process.map(|p| p.instance);
    if serving != Some(status.instance) {
        bail!(
            "{} is served by another data-path process (instance {}), not this pod's ({:016x})",
            status.uapi.display(),
            serving.map_or_else(|| "unknown".into(), |i| format!("{i:016x}")),
            status.instance
        );
    }
    Ok(format!(
        "{}: serving {} with {} peers",
        status.phase.as_str(),
        status.uapi.display(),
        state.peers.len()
    ))
}

/// The node key, once the agent has created it.
pub async fn wait_for_key(path: &Path, status: Option<&Status>) -> Result<PrivateKey> {
    let file = KeyFile::new(path);
    if !path.exists() {
        if let Some(status) = status {
            status.set(Phase::WaitingForKey)?;
        }
        let mut said = Instant::now() - KEY_WAIT_LOG_EVERY;
        while !path.exists() {
            if said.elapsed() >= KEY_WAIT_LOG_EVERY {
                tracing::info!(path = %path.display(), "waiting for the agent to create the node key");
                said = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(file.load()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_unknown_phases_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let status = Status::new(dir.path(), Path::new("/run/wireguard/wm0.sock"));
        for phase in [
            Phase::WaitingForKey,
            Phase::TakingOver,
            Phase::Active,
            Phase::HandedOver,
        ] {
            status.set(phase).unwrap();
            let got = read(dir.path()).unwrap();
            assert_eq!(got.phase, phase);
            assert_eq!(got.instance, crate::instance());
            assert_eq!(got.uapi, Path::new("/run/wireguard/wm0.sock"));
        }
        std::fs::write(
            dir.path().join(STATUS_FILE),
            "phase=sleeping\ninstance=1\nuapi=/x\n",
        )
        .unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("unknown phase \"sleeping\""), "{err}");
    }

    #[tokio::test]
    async fn probes_answer_from_the_phase_without_a_socket_only_where_they_may() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no.sock");
        let status = Status::new(dir.path(), &missing);
        let err = probe(dir.path(), Probe::Readiness).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("has the data path started"),
            "{err:#}"
        );
        status.set(Phase::WaitingForKey).unwrap();
        probe(dir.path(), Probe::Liveness).await.unwrap();
        assert!(probe(dir.path(), Probe::Readiness).await.is_err());
        status.set(Phase::HandedOver).unwrap();
        probe(dir.path(), Probe::Liveness).await.unwrap();
        assert!(probe(dir.path(), Probe::Readiness).await.is_err());
        // Active but nothing answers on the socket: neither alive nor ready.
        status.set(Phase::Active).unwrap();
        let err = probe(dir.path(), Probe::Readiness).await.unwrap_err();
        assert!(format!("{err:#}").contains("no.sock"), "{err:#}");
        assert!(probe(dir.path(), Probe::Liveness).await.is_err());
    }
}
