//! The agent's event loop, once everything is started: changes of the store and of the remote
//! clusters' stores, and a periodic resync, reconcile the peers and routes; a data path that
//! died is started again; the supervisor's tasks are watched (one that keeps failing ends the
//! agent); SIGHUP reloads the config's `clusterMesh`; SIGTERM and Ctrl-C stop it.
//!
//! It must never configure a peer on a new WireGuard device before the host endpoint's policy
//! programs are on it, and never stop the data path: the data path outlives the agent.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use keymgr::store::StoreHealth;
use keymgr::{Snapshot, Store};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{watch, Notify};
use wiremesh_datapath::model::DeviceError;
use wiremesh_datapath::netlink::Netlink;

use super::clustermesh::ClusterMesh;
use super::peers::Reconciler;
use super::supervisor::Supervisor;
use super::{policy, start, wait_policy};
use crate::config::Config;

/// Routes and peers are re-checked on this period even without store changes, so that a route
/// deleted by hand, a failed netlink call or a data path that died heals by itself.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

pub(super) struct EventLoop<'a> {
    pub config: &'a Config,
    pub netlink: Netlink,
    pub mtu: u32,
    pub store: Arc<Store>,
    pub reconciler: Reconciler,
    pub passes: watch::Receiver<policy::PassReport>,
    pub datapath_exited: Arc<Notify>,
    pub supervisor: Supervisor,
    pub mesh: ClusterMesh,
    /// Strict mode's guard, widened when a reload adds clusters.
    pub strict: Option<crate::strict::Watcher>,
}

impl EventLoop<'_> {
    /// Runs until SIGTERM; `started` turns true after the first reconcile (readiness).
    pub async fn run(&mut self, started: watch::Sender<bool>) -> Result<()> {
        let mut snapshots = self.store.subscribe();
        let mut health = self.store.health();
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let changes = self.mesh.changes.clone();
        tracing::info!("agent ready");
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        bail!("the store watcher stopped");
                    }
                }
                _ = resync.tick() => self.mesh.retry(),
                () = changes.notified() => {}
                _ = sighup.recv() => self.reload().await,
                _ = self.datapath_exited.notified() => {}
                Ok(()) = health.changed() => {
                    if let StoreHealth::Conflict { owner } = &*health.borrow_and_update() {
                        bail!(
                            "another agent (owner {owner}) took this node's name {} in the store; stopping so that two agents never publish one node",
                            self.config.node_name
                        );
                    }
                    continue;
                }
                gave_up = self.supervisor.run() => {
                    return Err(anyhow::Error::new(gave_up).context(
                        "a control loop keeps failing; the agent stops (the data path, the pinned policy maps and the strict guard stay in force)",
                    ));
                }
                _ = sigterm.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
            let local = snapshots.borrow_and_update().clone();
            let snap = self.mesh.merge(&local);
            self.reconcile(&snap).await;
            started.send_if_modified(|s| !std::mem::replace(s, true));
        }
        tracing::info!("agent stopping; the data path keeps forwarding with the peers it has");
        Ok(())
    }

    /// `SIGHUP`: reads the config file again and applies its `clusterMesh` (the other settings
    /// take effect at the next start). An invalid file changes nothing.
    async fn reload(&mut self) {
        let path = &self.config.path;
        let config = match crate::config::Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload on SIGHUP refused, the config in force stays: {e}");
                self.mesh.reloaded(Some(e.to_string()));
                return;
            }
        };
        if config.cluster_name != self.config.cluster_name
            || config.cluster_pod_cidrs != self.config.cluster_pod_cidrs
        {
            tracing::warn!("reload on SIGHUP: clusterName and clusterPodCIDRs take effect at the next start only");
        }
        if let Some(guard) = &self.strict {
            if let Err(e) = guard.widen(&config).await {
                // Without the guard over the new pools, the new clusters are not linked.
                tracing::error!("reload on SIGHUP refused: {e}");
                self.mesh.reloaded(Some(e.to_string()));
                return;
            }
        }
        let mesh = crate::config::Config {
            cluster_id: config.cluster_id,
            cluster_mesh: config.cluster_mesh,
            ..self.config.clone()
        };
        self.mesh.apply(&mesh);
        self.mesh.reloaded(None);
        tracing::info!(
            clusters = mesh.cluster_mesh.len(),
            "config reloaded on SIGHUP: clusterMesh applied"
        );
    }

    /// Applies `snap`; a data path that is gone is started again and gets everything anew.
    async fn reconcile(&mut self, snap: &Snapshot) {
        let Err(DeviceError::Stopped) = self.reconciler.reconcile(snap).await else {
            return;
        };
        tracing::error!("the data path is gone; starting a new one (sessions restart)");
        let config = self.config;
        let restarted = async {
            let key = keymgr::KeyFile::new(config.key_path()).load()?;
            start::start(
                config,
                &self.netlink,
                &key,
                self.mtu,
                &self.datapath_exited,
                Some(start::EXTERNAL_RESTART_WAIT),
            )
            .await
        };
        match restarted.await {
            Ok(s) => {
                // The new WireGuard device has no tc filters: the host endpoint's programs go
                // on it before any peer does.
                wait_policy(
                    &mut self.passes,
                    "the host endpoint's programs on the new WireGuard device",
                    |r| r.host_settled_on(s.ifindex),
                )
                .await;
                self.reconciler.reset(s.ifindex);
                if let Err(e) = self.reconciler.reconcile(snap).await {
                    tracing::error!(error = %e, "the new data path failed at once; retrying");
                }
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot restart the data path; retrying")
            }
        }
    }
}
