//! The health a server-backed store reports, and the logs that go with each change: one WARN per
//! outage (later failures of the same outage at DEBUG), INFO on recovery, ERROR once per
//! conflicting owner.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::backend::Backend;
use super::StoreHealth;

pub(super) struct HealthReporter {
    tx: watch::Sender<StoreHealth>,
    backend: Arc<Backend>,
    /// Whether the current outage has been logged at WARN.
    warned: bool,
}

impl HealthReporter {
    pub(super) fn new(tx: watch::Sender<StoreHealth>, backend: Arc<Backend>) -> Self {
        Self {
            tx,
            backend,
            warned: false,
        }
    }

    /// The server answered, the node name is ours and the peers are freshly listed.
    pub(super) fn connected(&mut self) {
        let b = &self.backend;
        let since = match &*self.tx.borrow() {
            StoreHealth::Connected => return,
            StoreHealth::Unreachable { since, .. } if self.warned => Some(*since),
            _ => None,
        };
        match since {
            Some(since) => {
                let down = since.elapsed().unwrap_or_default();
                let down = humantime::format_duration(Duration::from_secs(down.as_secs()));
                if b.node.is_empty() {
                    tracing::info!(
                        "{} reachable again after {down}; relisted {}",
                        b.server,
                        b.following
                    );
                } else {
                    tracing::info!(
                        "{} reachable again after {down}; peers relisted, node name {} claimed",
                        b.server,
                        b.node
                    );
                }
            }
            None if b.node.is_empty() => {
                tracing::info!(
                    "connected to {}; following {} (read-only)",
                    b.server,
                    b.following
                )
            }
            None => tracing::info!(
                "connected to {}; node name {} claimed, following {}",
                b.server,
                b.node,
                b.following
            ),
        }
        self.warned = false;
        self.tx.send_replace(StoreHealth::Connected);
    }

    /// A session failed with `error`; the outage started with the first such failure.
    pub(super) fn unreachable(&mut self, error: String) {
        let since = match &*self.tx.borrow() {
            StoreHealth::Unreachable { since, .. } => *since,
            _ => SystemTime::now(),
        };
        if self.warned {
            tracing::debug!("{} still unreachable: {error}", self.backend.server);
        } else {
            tracing::warn!(
                "{} unreachable since {}: {error}; keeping the last known peers, retrying",
                self.backend.server,
                humantime::format_rfc3339_seconds(since)
            );
            self.warned = true;
        }
        self.tx
            .send_replace(StoreHealth::Unreachable { since, error });
    }

    /// Another live agent, `owner`, holds this node's name.
    pub(super) fn conflict(&mut self, owner: String) {
        let b = &self.backend;
        let known = matches!(&*self.tx.borrow(), StoreHealth::Conflict { owner: o } if *o == owner);
        if !known {
            tracing::error!(
                "node name {} is held by another live agent (owner id {owner:?} in {}); this agent \
                 must not run under the same name: stop the other agent or rename this node. If \
                 that agent is gone, its claim {}",
                b.node,
                b.claim_at,
                b.claim_ends
            );
        }
        self.warned = false;
        self.tx.send_replace(StoreHealth::Conflict { owner });
    }
}
