//! The etcd store: each agent keeps its node record at `<prefix>/v1/<cluster>/nodes/<nodeName>`
//! and its claim on the name at `<prefix>/v1/<cluster>/owners/<nodeName>`, both bound to one lease
//! it keeps alive, so a dead agent's record disappears from every peer after the lease TTL.
//!
//! Everything that talks to etcd runs in one background task (the [`session`] loop), which
//! reconnects on its own; this handle only exchanges values with it through `watch` channels. An
//! unreachable etcd never blocks or fails the agent: it keeps the last known peers and says so.

mod claim;
mod session;
pub(super) mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::backend::{Backend, Server};
use super::task::Handle;
use super::{Snapshot, StoreError, StoreHealth};
use crate::{Admission, NodeRecord};

/// How long one request to etcd may take before the connection counts as down.
pub(super) const RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `http://127.0.0.1:2379`; `https://` ones need [`EtcdConfig::tls`].
    pub endpoints: Vec<String>,
    /// Key prefix shared by every wiremesh key (`/wiremesh` by default).
    pub prefix: String,
    /// Client TLS; `None` for plain HTTP.
    pub tls: Option<EtcdTls>,
    /// TTL of the lease that keeps this node's record alive; its record disappears from its
    /// peers this long after the agent dies.
    pub lease_ttl: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/wiremesh".into(),
            tls: None,
            lease_ttl: Duration::from_secs(30),
        }
    }
}

/// PEM files for TLS to etcd. `cert` and `key` (client authentication) go together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What [`EtcdStore::claim`] found at first contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The node name is ours, our record (if published) is written and the snapshot is fresh.
    Claimed,
    /// etcd did not answer in time; the store keeps trying in the background and the snapshot
    /// stays at the `initial` one passed to [`EtcdStore::start`].
    Unreachable { error: String },
}

/// Keys, identity and connection settings, shared read-only with the background task.
#[derive(Debug)]
struct Target {
    endpoints: Vec<String>,
    endpoints_text: String,
    options: etcd_client::ConnectOptions,
    lease_ttl: Duration,
    node: String,
    owner_id: String,
    nodes_prefix: String,
    node_key: String,
    owner_key: String,
    /// A follower of another cluster's store: no lease, no claim, no writes.
    read_only: bool,
}

/// This node's handle on the etcd store. Use: [`EtcdStore::start`], then [`EtcdStore::claim`]
/// (refuse to start on `NodeNameTaken`), then [`EtcdStore::publish`], [`EtcdStore::subscribe`]
/// and [`EtcdStore::health`] (exit on `Conflict`). Dropping it stops the background task without
/// revoking the lease; [`EtcdStore::close`] revokes it.
pub struct EtcdStore {
    /// The desired record is its JSON, encoded once by `publish`.
    handle: Handle<Vec<u8>>,
}

impl EtcdStore {
    /// Validates the config, reads the TLS files and starts the background task. Never waits for
    /// etcd: until the first successful listing, [`EtcdStore::subscribe`] yields `initial` (the
    /// peers persisted from the agent's last run). Records are admitted as `admission` says.
    /// Must be called inside a tokio runtime.
    pub fn start(
        config: EtcdConfig,
        cluster: &str,
        node_name: &str,
        owner_id: &str,
        initial: Snapshot,
        admission: Admission,
    ) -> Result<Self, StoreError> {
        let target = Arc::new(Target::new(config, cluster, node_name, owner_id)?);
        let backend = Backend {
            node: target.node.clone(),
            write: format!("write of {}", target.node_key),
            claim_at: target.owner_key.clone(),
            claim_ends: "is released when its lease TTL runs out".into(),
            ..target.backend()
        };
        let span = tracing::info_span!("etcd_store", node = %target.node);
        Ok(Self::spawn(target, backend, span, initial, admission))
    }

    /// Follows the node records of `cluster` in an etcd that is not this node's own store
    /// (another cluster's, for the cluster mesh): read-only, it never takes a lease, claims a
    /// name or writes a key. Records are admitted as `admission` says; until the first listing
    /// [`EtcdStore::subscribe`] yields `initial`. Use it through [`super::RemoteStore`].
    pub(super) fn follow(
        config: EtcdConfig,
        cluster: &str,
        initial: Snapshot,
        admission: Admission,
    ) -> Result<Self, StoreError> {
        let target = Arc::new(Target::follower(config, cluster)?);
        let backend = Backend {
            write: "no write (read-only)".into(),
            ..target.backend()
        };
        let span = tracing::info_span!("etcd_follower", cluster = %cluster);
        Ok(Self::spawn(target, backend, span, initial, admission))
    }

    /// Starts the session task for `target`.
    fn spawn(
        target: Arc<Target>,
        backend: Backend,
        span: tracing::Span,
        initial: Snapshot,
        admission: Admission,
    ) -> Self {
        let handle = Handle::spawn(backend, initial, span, |link| {
            session::Shell {
                target,
                view: view::View::new(admission),
                link,
            }
            .run()
        });
        Self { handle }
    }

    /// Waits up to `timeout` for the first contact with etcd. `Err(NodeNameTaken)` means another
    /// live agent holds this node name and the caller must refuse to start.
    pub async fn claim(&self, timeout: Duration) -> Result<ClaimOutcome, StoreError> {
        self.handle.claim(timeout).await
    }

    /// Makes `record` this node's desired record and waits until it is written. While etcd is
    /// unreachable this fails with `Unavailable` at once, but the record stays desired and the
    /// background task writes it as soon as etcd is back (so does a lost lease).
    pub async fn publish(&self, record: &NodeRecord) -> Result<(), StoreError> {
        let encode = |record: &NodeRecord| {
            serde_json::to_vec(record).map_err(|source| StoreError::Encode {
                node: record.node_name.clone(),
                source,
            })
        };
        self.handle.publish(record, encode).await
    }

    /// Snapshots of the cluster's valid records (this node's own included).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.handle.subscribe()
    }

    /// Connection state; `Conflict` means another agent took this node name and this one must
    /// stop.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.handle.health()
    }

    pub fn describe(&self) -> &str {
        self.handle.describe()
    }

    /// Graceful shutdown: revokes the lease, so this node's record disappears from its peers at
    /// once instead of after the lease TTL.
    pub async fn close(self) {
        self.handle.close().await;
    }

    /// Stops without revoking the lease, as if the process had been killed: peers keep this
    /// node's record until the lease TTL runs out. Dropping the store does the same.
    pub fn abandon(self) {
        self.handle.abandon();
    }
}

impl Target {
    fn new(
        config: EtcdConfig,
        cluster: &str,
        node: &str,
        owner_id: &str,
    ) -> Result<Self, StoreError> {
        let bad = |field: &'static str, value: &str, reason: &'static str| StoreError::Config {
            field,
            value: value.into(),
            reason,
        };
        let options = connect_options(&config)?;
        for (field, value) in [("cluster", cluster), ("nodeName", node)] {
            if value.is_empty() || value.contains('/') {
                return Err(bad(field, value, "must be non-empty and contain no '/'"));
            }
        }
        if owner_id.is_empty() {
            return Err(bad("ownerId", owner_id, "must be non-empty"));
        }
        if config.lease_ttl < Duration::from_secs(1) {
            let ttl = format!("{:?}", config.lease_ttl);
            return Err(bad("leaseTTL", &ttl, "etcd leases last at least 1 s"));
        }
        let root = format!(
            "{}/v1/{cluster}",
            config.prefix.trim_end_matches('/').to_owned()
        );
        let nodes_prefix = format!("{root}/nodes/");
        Ok(Self {
            endpoints_text: config.endpoints.join(","),
            endpoints: config.endpoints,
            options,
            lease_ttl: config.lease_ttl,
            node: node.into(),
            owner_id: owner_id.into(),
            node_key: format!("{nodes_prefix}{node}"),
            nodes_prefix,
            owner_key: format!("{root}/owners/{node}"),
            read_only: false,
        })
    }

    /// How a store of this target names itself; the node and claim fields empty (a follower's).
    fn backend(&self) -> Backend {
        Backend {
            server: Server::Etcd {
                endpoints: self.endpoints_text.clone(),
            },
            describe: format!(
                "etcd:{}{}",
                self.endpoints_text,
                self.nodes_prefix.trim_end_matches('/')
            ),
            node: String::new(),
            write: String::new(),
            following: self.nodes_prefix.clone(),
            claim_at: String::new(),
            claim_ends: String::new(),
            patience: 2 * RPC_TIMEOUT,
        }
    }

    /// The target of a read-only follower of `cluster`'s node records.
    fn follower(config: EtcdConfig, cluster: &str) -> Result<Self, StoreError> {
        if cluster.is_empty() || cluster.contains('/') {
            return Err(StoreError::Config {
                field: "cluster",
                value: cluster.into(),
                reason: "must be non-empty and contain no '/'",
            });
        }
        let options = connect_options(&config)?;
        let prefix = config.prefix.trim_end_matches('/');
        let nodes_prefix = format!("{prefix}/v1/{cluster}/nodes/");
        Ok(Self {
            endpoints_text: config.endpoints.join(","),
            endpoints: config.endpoints,
            options,
            lease_ttl: config.lease_ttl,
            node: String::new(),
            owner_id: String::new(),
            node_key: String::new(),
            nodes_prefix,
            owner_key: String::new(),
            read_only: true,
        })
    }
}

/// How every client of this store connects: timeouts, keep-alive and TLS, checked against the
/// endpoints (the error names the offending field).
pub(super) fn connect_options(
    config: &EtcdConfig,
) -> Result<etcd_client::ConnectOptions, StoreError> {
    let bad = |field: &'static str, value: &str, reason: &'static str| StoreError::Config {
        field,
        value: value.into(),
        reason,
    };
    if config.endpoints.is_empty() {
        return Err(bad("endpoints", "[]", "at least one etcd URL is needed"));
    }
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(RPC_TIMEOUT)
        // etcd refuses clients that ping more often than every 5 s (too_many_pings).
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(false);
    if let Some(tls) = &config.tls {
        if let Some(ep) = config.endpoints.iter().find(|e| e.starts_with("http://")) {
            return Err(bad(
                "endpoints",
                ep,
                "TLS is configured: use an https:// URL",
            ));
        }
        options = options.with_tls(tls_options(tls)?);
    }
    Ok(options)
}

fn tls_options(tls: &EtcdTls) -> Result<etcd_client::TlsOptions, StoreError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })
    };
    let ca = etcd_client::Certificate::from_pem(read(&tls.ca)?);
    let options = etcd_client::TlsOptions::new().ca_certificate(ca);
    match (&tls.cert, &tls.key) {
        (None, None) => Ok(options),
        (Some(cert), Some(key)) => {
            let identity = etcd_client::Identity::from_pem(read(cert)?, read(key)?);
            Ok(options.identity(identity))
        }
        (Some(path), None) | (None, Some(path)) => Err(StoreError::Config {
            field: "tls",
            value: path.display().to_string(),
            reason: "a client certificate needs its key and a key its certificate",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(config: EtcdConfig) -> Result<Target, StoreError> {
        Target::new(config, "lab", "node-1", "owner-a")
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let t = target(EtcdConfig {
            prefix: "/wm/".into(),
            ..EtcdConfig::default()
        })
        .unwrap();
        assert_eq!(t.node_key, "/wm/v1/lab/nodes/node-1");
        assert_eq!(t.owner_key, "/wm/v1/lab/owners/node-1");
        assert_eq!(t.nodes_prefix, "/wm/v1/lab/nodes/");
    }

    #[test]
    fn bad_config_names_the_offending_value() {
        let e = target(EtcdConfig {
            endpoints: vec![],
            ..EtcdConfig::default()
        });
        assert!(matches!(
            e,
            Err(StoreError::Config {
                field: "endpoints",
                ..
            })
        ));
        let e = Target::new(EtcdConfig::default(), "lab", "a/b", "o")
            .err()
            .unwrap();
        assert!(e.to_string().contains("a/b"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("missing-ca.pem");
        let e = target(EtcdConfig {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            tls: Some(EtcdTls {
                ca: ca.clone(),
                cert: None,
                key: None,
            }),
            ..EtcdConfig::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains(&ca.display().to_string()), "{e}");
        std::fs::write(&ca, "not a pem").unwrap();
        let e = target(EtcdConfig {
            tls: Some(EtcdTls {
                ca,
                cert: None,
                key: None,
            }),
            ..EtcdConfig::default()
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains("http://127.0.0.1:2379"), "{e}");
    }
}
