//! The L7 proxy process as the agent keeps it (the supervised task `proxy`): started detached,
//! like the data path, or re-attached to when one is already running; configured from the
//! policy in force on every change; started again and re-configured if it died.
//!
//! It must never make the proxy less strict than the policy in force: a configuration the proxy
//! refuses leaves the previous one in place (and is logged), and a proxy that is down fails
//! closed on its own (a redirected connection finds no listener and is dropped at the pod's
//! interface). The proxy keeps serving with its last configuration while the agent is gone.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use tokio::sync::watch;
use wiremesh_l7::client::ProxyClient;
use wiremesh_l7::config::L7Config;

use super::policy::PolicyState;
use super::start::spawn_detached;
use crate::config::Config;
use crate::l7::Listeners;

/// How often the proxy is checked for life between policy changes.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long a started proxy may take to answer on its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ProxyKeeper {
    pub node: String,
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    pub listeners: Listeners,
    pub policy: watch::Receiver<Arc<PolicyState>>,
}

impl ProxyKeeper {
    pub fn new(
        config: &Config,
        listeners: Listeners,
        policy: watch::Receiver<Arc<PolicyState>>,
    ) -> Self {
        Self {
            node: config.node_name.clone(),
            run_dir: config.run_dir.clone(),
            state_dir: config.state_dir.clone(),
            listeners,
            policy,
        }
    }

    fn control_socket(&self) -> PathBuf {
        self.run_dir.join("proxy.sock")
    }

    /// Keeps the proxy running and configured; returns only on a failure to start it.
    pub async fn run(mut self) -> Result<()> {
        let client = ProxyClient::new(self.control_socket());
        // What was last pushed (its version, and the config without it).
        let mut pushed: Option<(u64, L7Config)> = None;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            let running = match client.config_version().await {
                Ok(version) => version,
                Err(e) => {
                    if pushed.is_some() {
                        tracing::warn!(error = %e, "the L7 proxy does not answer; starting it again");
                    }
                    self.start(&client).await?;
                    pushed = None;
                    client.config_version().await.unwrap_or(0)
                }
            };
            let state = self.policy.borrow_and_update().clone();
            let wanted = L7Config::build(&state.compiled, &state.bundle, &self.node, 0);
            let current = pushed
                .as_ref()
                .is_some_and(|(version, config)| *version == running && *config == wanted);
            if !current {
                let mut config = wanted.clone();
                config.version = next_version(running);
                match client.put_config(&config).await {
                    Ok(applied) => {
                        tracing::info!(
                            version = applied.version,
                            endpoints = config.endpoints.len(),
                            "L7 proxy configured"
                        );
                        pushed = Some((applied.version, wanted));
                    }
                    // The proxy keeps the configuration it had; tried again at the next check.
                    Err(e) => tracing::error!(error = %e, "configuring the L7 proxy"),
                }
            }
            tokio::select! {
                changed = self.policy.changed() => {
                    if changed.is_err() {
                        bail!("the policy loop's state channel closed");
                    }
                }
                _ = tick.tick() => {}
            }
        }
    }

    /// Starts `wiremesh proxy` and waits until it answers.
    async fn start(&self, client: &ProxyClient) -> Result<()> {
        let args: Vec<std::ffi::OsString> = vec![
            "--ingress-port".into(),
            self.listeners.ingress_port.to_string().into(),
            "--egress-port".into(),
            self.listeners.egress_port.to_string().into(),
            "--control-socket".into(),
            self.control_socket().into(),
            "--state-file".into(),
            self.state_dir.join("l7-config.json").into(),
            "--pid-file".into(),
            self.run_dir.join("proxy.pid").into(),
        ];
        spawn_detached("proxy", "L7 proxy", &args, None)?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if client.config_version().await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the L7 proxy did not answer on {} within {START_TIMEOUT:?} (see its log lines above)",
                    self.control_socket().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A version above `running` and unique across agent restarts: milliseconds since the epoch.
fn next_version(running: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now.max(running.saturating_add(1))
}
