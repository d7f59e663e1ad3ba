//! What every connection and the control socket share: the configuration in force (one
//! `Arc<Snapshot>` swapped whole, read once per request), the flow log, and the proxy's
//! settings. A refused configuration never replaces the one in force; an accepted one is
//! written to the state file (atomic rename) so that a restarted proxy enforces it at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::config::{ConfigError, L7Config};
use crate::flows::FlowLog;
use crate::forward::Mode;
use crate::server::ProxyLimits;
use crate::snapshot::Snapshot;

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// `SO_MARK` of upstream connections, so the eBPF programs let proxy traffic through.
    pub mark: u32,
    pub limits: ProxyLimits,
    /// Where the accepted configuration is kept across restarts.
    pub state_file: Option<PathBuf>,
}

/// State shared by every task of the proxy.
pub struct Shared {
    current: RwLock<Arc<Snapshot>>,
    pub flows: FlowLog,
    pub settings: Settings,
    /// One permit per downstream connection served, across every listener and worker
    /// (`settings.limits.max_conns` in all).
    pub conns: Arc<tokio::sync::Semaphore>,
}

/// Why the state file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the proxy state file {path}: {source}")]
pub struct SaveError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl Shared {
    /// With no configuration: everything redirected here is denied until one arrives.
    pub fn new(settings: Settings) -> Self {
        Self {
            current: RwLock::new(Arc::new(Snapshot::empty())),
            flows: FlowLog::default(),
            conns: Arc::new(tokio::sync::Semaphore::new(settings.limits.max_conns)),
            settings,
        }
    }

    /// The configuration in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Decodes `cfg` entirely and puts it in force; on error the one in force stays.
    pub fn apply(&self, cfg: &L7Config) -> Result<u64, ConfigError> {
        let snap = Arc::new(Snapshot::decode(cfg)?);
        let version = snap.version;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = snap;
        tracing::info!(
            version,
            endpoints = cfg.endpoints.len(),
            "L7 configuration in force"
        );
        Ok(version)
    }

    /// Writes `cfg` to the state file, if there is one.
    pub fn save(&self, cfg: &L7Config) -> Result<(), SaveError> {
        let Some(path) = &self.settings.state_file else {
            return Ok(());
        };
        save_atomically(path, cfg).map_err(|source| SaveError {
            path: path.clone(),
            source,
        })
    }
}

fn save_atomically(path: &Path, cfg: &L7Config) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_vec(cfg).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    // Root only: the file maps every pod of the cluster to its labels and policy.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The configuration saved in `path`: `Ok(None)` when there is no file.
pub fn load_state(path: &Path) -> Result<Option<L7Config>, LoadStateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LoadStateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    crate::config::parse(&bytes)
        .map(Some)
        .map_err(|source| LoadStateError::Invalid {
            path: path.to_path_buf(),
            source,
        })
}

/// Why the state file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadStateError {
    #[error("cannot read the proxy state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the proxy state file {path} is invalid: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}
