//! Strict mode: the kernel guard that keeps pod traffic between nodes inside the tunnel. The
//! nftables table `inet wiremesh` (see [`ruleset`]) drops a packet for a remote pod that would
//! leave by any interface but the WireGuard one (so nothing leaves in clear while a peer is
//! missing, the data path is dead or restarting, or the agent is down), and a packet from a remote
//! pod's address that arrives by any interface but the WireGuard one (spoofed from the underlay).
//!
//! It lives in the kernel: installed by `wiremesh guard` at boot and by the agent first thing at
//! start, it outlives both. This module is the I/O shell: it applies the table through `nft -j`
//! (the `nftables` crate), watches that it stays complete (re-installing it after, say, a
//! firewall's `flush ruleset`), and caches its drop counters for status and metrics, which never
//! run `nft` themselves. It must never leave a window without the table while strict mode is on.

pub mod ruleset;

use std::time::Duration;

use ipnet::IpNet;
use nftables::helper::{self, NftablesError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Config;
pub use ruleset::{Direction, DropCounts, Family, GuardSpec, Listed, DIRECTIONS, FAMILIES};

/// How often the agent re-reads the table: the freshness of the drop counters, and the longest a
/// table removed by hand stays missing while the agent runs.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(
        "strictMode: cannot run nft ({source}); install the nftables package (Debian: nftables), \
         or set strictMode: false to run without the guarantee that pod traffic never leaves \
         the node in clear"
    )]
    NoNft {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "strictMode: nft failed {action} table inet {}: {stderr}",
        ruleset::TABLE
    )]
    Failed {
        action: &'static str,
        stderr: String,
    },
    #[error("strictMode: reading table inet {}: {source}", ruleset::TABLE)]
    Listing {
        #[source]
        source: serde_json::Error,
    },
}

fn describe(action: &'static str, e: NftablesError) -> GuardError {
    match e {
        NftablesError::NftExecution { inner, .. } => GuardError::NoNft { source: inner },
        NftablesError::NftFailed { stderr, .. } => GuardError::Failed {
            action,
            stderr: stderr.trim().to_string(),
        },
        other => GuardError::Failed {
            action,
            stderr: other.to_string(),
        },
    }
}

/// Installs (or replaces, atomically) the guard table. Blocking: runs `nft`.
pub fn install(spec: &GuardSpec) -> Result<(), GuardError> {
    helper::apply_ruleset(&ruleset::install(spec)).map_err(|e| describe("installing", e))
}

/// Removes the guard table if it is there. Blocking: runs `nft`.
pub fn remove() -> Result<(), GuardError> {
    helper::apply_ruleset(&ruleset::remove()).map_err(|e| describe("removing", e))
}

/// The table's counters and whether it is complete and built from `spec`; `None` when there is
/// no such table. Blocking.
pub fn list(spec: &GuardSpec) -> Result<Option<Listed>, GuardError> {
    let args = ["list", "table", "inet", ruleset::TABLE];
    match helper::get_current_ruleset_raw(helper::DEFAULT_NFT, args) {
        Ok(json) => ruleset::parse_listing(&json, &spec.fingerprint())
            .map(Some)
            .map_err(|source| GuardError::Listing { source }),
        // nft says "No such file or directory" for a table that does not exist.
        Err(NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file") => Ok(None),
        Err(e) => Err(describe("listing", e)),
    }
}

/// Strict mode as `encrypt status` and the metrics show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StrictStatus {
    /// The config's `strictMode`.
    pub enabled: bool,
    /// The table was complete in the kernel at the last check.
    pub installed: bool,
    /// Packets dropped since the table was last installed.
    pub drops: DropCounts,
    /// Times the agent found the table missing or damaged and installed it again.
    pub reinstalls: u64,
    /// The last check's error, if it failed.
    pub error: Option<String>,
}

impl StrictStatus {
    /// The `encrypt status` line.
    pub fn render(&self) -> String {
        let d = &self.drops;
        let state = match (self.enabled, self.installed) {
            (false, _) => {
                return "\tStrict mode: OFF (strictMode: false): pod traffic is not guarded\n"
                    .into()
            }
            (true, true) => format!("on (table inet {})", ruleset::TABLE),
            (true, false) => format!(
                "ON BUT NOT VERIFIED: {}",
                self.error
                    .as_deref()
                    .unwrap_or("table inet wiremesh missing")
            ),
        };
        let again = match self.reinstalls {
            0 => String::new(),
            n => format!("; re-installed {n} time(s)"),
        };
        format!(
            "\tStrict mode: {state}, dropped egress {} / {}, ingress {} / {} packets (IPv4 / IPv6){again}\n",
            d.egress_ipv4, d.egress_ipv6, d.ingress_ipv4, d.ingress_ipv6
        )
    }
}

/// The strict guard as the agent holds it: its status for the admin API and, with
/// `strictMode: true`, the watcher that keeps the table in place (a supervised task).
pub struct Strict {
    pub status: watch::Receiver<StrictStatus>,
    pub watcher: Option<Watcher>,
}

/// Re-reads the guard table every [`CHECK_EVERY`] and installs it again when it is gone. Cheap
/// to clone; every [`Watcher::run`] goes on from the status the previous run published (its
/// re-install count included), so a restarted watcher is a crash-resume.
#[derive(Clone)]
pub struct Watcher {
    spec: std::sync::Arc<watch::Sender<GuardSpec>>,
    status: watch::Sender<StrictStatus>,
}

impl Watcher {
    /// The watcher's loop; it only ends by panicking.
    pub fn run(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        watch_table(self.spec.subscribe(), self.status.clone())
    }

    /// After a reload: the guard covers `config`'s pools as well as every pool it covered
    /// before. It never narrows while the agent runs (a cluster removed from the mesh keeps its
    /// pool dropped, not sent in clear, until the agent restarts with the new config); `true`
    /// when the table was installed anew.
    pub async fn widen(&self, config: &Config) -> Result<bool, GuardError> {
        let mut wanted = self.spec.borrow().clone();
        let more = GuardSpec::from_config(config);
        let pools: Vec<IpNet> = wanted.pool.iter().chain(&more.pool).copied().collect();
        let pool = IpNet::aggregate(&pools);
        if pool == wanted.pool {
            return Ok(false);
        }
        wanted.pool = pool;
        let applied = wanted.clone();
        tokio::task::spawn_blocking(move || install(&applied))
            .await
            .map_err(|e| GuardError::Failed {
                action: "widening",
                stderr: e.to_string(),
            })??;
        tracing::info!(pool = ?wanted.pool, "strict mode: guard widened to the new clusters' pools");
        self.spec.send_replace(wanted);
        Ok(true)
    }
}

/// Applies `strictMode` at agent start, before anything else touches the network: installs the
/// guard (refusing to start if it cannot), or removes it with a WARN. The caller runs the
/// returned watcher.
pub async fn start(config: &Config) -> anyhow::Result<Strict> {
    if !config.strict_mode {
        tokio::task::spawn_blocking(remove).await??;
        tracing::warn!(
            "strictMode is false: pod traffic to other nodes is sent in clear whenever a peer is \
             missing or the data path is down, and packets spoofing remote pod addresses are \
             accepted from the underlay; set strictMode: true with clusterPodCIDRs to guard them"
        );
        let (_, status) = watch::channel(StrictStatus::default());
        return Ok(Strict {
            status,
            watcher: None,
        });
    }
    let spec = GuardSpec::from_config(config);
    let applied = spec.clone();
    tokio::task::spawn_blocking(move || install(&applied)).await??;
    tracing::info!(
        table = %format!("inet {}", ruleset::TABLE),
        interface = %spec.interface,
        pool = ?spec.pool,
        local = ?spec.local,
        "strict mode: pod traffic to and from other nodes passes only through the tunnel"
    );
    let (tx, status) = watch::channel(StrictStatus {
        enabled: true,
        installed: true,
        ..StrictStatus::default()
    });
    Ok(Strict {
        status,
        watcher: Some(Watcher {
            spec: std::sync::Arc::new(watch::channel(spec).0),
            status: tx,
        }),
    })
}

/// Re-reads the table every [`CHECK_EVERY`]; a missing or damaged table is installed again.
async fn watch_table(spec: watch::Receiver<GuardSpec>, tx: watch::Sender<StrictStatus>) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tick.tick().await;
        let spec = spec.borrow().clone();
        let wanted = spec.clone();
        let listed = tokio::task::spawn_blocking(move || list(&wanted)).await;
        let mut status = tx.borrow().clone();
        match listed {
            Ok(Ok(Some(l))) if l.complete => {
                status.installed = true;
                status.drops = l.drops;
                status.error = None;
            }
            Ok(Ok(found)) => {
                tracing::warn!(
                    found = if found.is_some() {
                        "incomplete"
                    } else {
                        "missing"
                    },
                    "strict mode: table inet {} was removed or changed behind the agent's back \
                     (a firewall reload running `flush ruleset`?); installing it again",
                    ruleset::TABLE
                );
                let again = spec.clone();
                let result = tokio::task::spawn_blocking(move || install(&again)).await;
                status.reinstalls += 1;
                status.drops = DropCounts::default();
                match result {
                    Ok(Ok(())) => {
                        status.installed = true;
                        status.error = None;
                    }
                    Ok(Err(e)) => fail(&mut status, e.to_string()),
                    Err(e) => fail(&mut status, e.to_string()),
                }
            }
            Ok(Err(e)) => fail(&mut status, e.to_string()),
            Err(e) => fail(&mut status, e.to_string()),
        }
        tx.send_replace(status);
    }
}

fn fail(status: &mut StrictStatus, error: String) {
    tracing::error!(%error, "strict mode: cannot check or install the guard table");
    status.installed = false;
    status.error = Some(error);
}

/// `wiremesh guard`: installs (or, with `strictMode: false`, removes) the table from the config
/// alone, with no store and no data path, so that it holds from boot on. Idempotent.
pub fn guard_once(config: &Config) -> Result<String, GuardError> {
    if !config.strict_mode {
        remove()?;
        return Ok(format!(
            "strictMode is false: table inet {} removed (pod traffic is not guarded)",
            ruleset::TABLE
        ));
    }
    let spec = GuardSpec::from_config(config);
    install(&spec)?;
    let nets = |n: &[ipnet::IpNet]| {
        n.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(format!(
        "table inet {} installed: pool [{}] (local [{}]) only through {}",
        ruleset::TABLE,
        nets(&spec.pool),
        nets(&spec.local),
        spec.interface
    ))
}
