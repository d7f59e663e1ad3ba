//! The node agent: loads the node key, brings up (or re-attaches to) the data path, publishes
//! this node's record, keeps the data path and the routing table in step with the store, and
//! rotates the key on schedule. It holds no packet state: killing it drops nothing.

pub mod peers;
pub mod persist;
pub mod policy;
pub mod rotation;
mod start;
pub mod supervisor;
mod views;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keymgr::ring::KeyRing;
use keymgr::store::objects::ObjectStore;
use keymgr::store::{ClaimOutcome, DirStore, EtcdStore, KubeStore};
use keymgr::{Admission, NodeRecord, Store};
use tokio::sync::{mpsc, watch};

use crate::admin::AdminServer;
use crate::config::{Config, StoreConfig};
use peers::Reconciler;
use persist::PeerFile;
use rotation::{OwnKey, Rotator, Startup};
use start::Origin;
use wiremesh_datapath::listen::{Access, Limits};
use wiremesh_datapath::model::DeviceError;
use wiremesh_datapath::netlink::Netlink;

/// What this node admits from the store beyond the records' own rules: pod ranges inside the
/// cluster's pool, and none over this node's own addresses.
fn admission(config: &Config) -> Admission {
    let mut local_addresses = config.node_ips.clone();
    local_addresses.push(config.endpoint.ip());
    Admission {
        cluster_pod_cidrs: config.cluster_pod_cidrs.clone(),
        local_addresses,
    }
}

async fn open_store(config: &Config, peer_file: &PeerFile) -> Result<Store> {
    let admission = admission(config);
    if let StoreConfig::Dir { path } = &config.store {
        return Ok(Store::Dir(DirStore::open(path, admission)?));
    }
    let owner = persist::owner_id(&config.state_dir).with_context(|| {
        format!(
            "reading or creating {}/owner-id",
            config.state_dir.display()
        )
    })?;
    // Until the store answers, the peers of the last run are the best knowledge there is.
    let last = peer_file.load();
    let initial = keymgr::Snapshot {
        nodes: last.clone().into(),
    };
    let (cluster, node) = (config.cluster_name.as_str(), config.node_name.as_str());
    let (store, claim) = match &config.store {
        StoreConfig::Dir { .. } => unreachable!("handled above"),
        StoreConfig::Etcd(c) => {
            let s = EtcdStore::start(c.clone(), cluster, node, &owner, initial, admission)?;
            let claim = s.claim(CLAIM_TIMEOUT).await?;
            (Store::Etcd(s), claim)
        }
        StoreConfig::Kubernetes(c) => {
            let s = KubeStore::start(c.clone(), cluster, node, &owner, initial, admission)?;
            let claim = s.claim(CLAIM_TIMEOUT).await?;
            (Store::Kubernetes(s), claim)
        }
    };
    match claim {
        ClaimOutcome::Claimed => {
            tracing::info!(owner = %owner, store = %store.describe(), "node name claimed")
        }
        ClaimOutcome::Unreachable { error } => tracing::warn!(
            store = %store.describe(),
            last_known_peers = last.len(),
            "store unreachable at start ({error}); running on the last known peers and retrying"
        ),
    }
    Ok(store)
}

/// Where the cluster's objects (Namespaces, Pods, policies) are kept: next to the node records.
fn open_objects(config: &Config) -> Result<ObjectStore> {
    Ok(match &config.store {
        StoreConfig::Dir { path } => ObjectStore::dir(path)?,
        StoreConfig::Etcd(c) => ObjectStore::etcd(c, &config.cluster_name)?,
        StoreConfig::Kubernetes(c) => ObjectStore::kubernetes(c)?,
    })
}

/// How long peers wait for a policy pass before they are configured anyway.
const POLICY_WAIT: Duration = Duration::from_secs(10);

/// Waits until a policy pass reports `done`, at most [`POLICY_WAIT`].
async fn wait_policy(
    passes: &mut watch::Receiver<policy::PassReport>,
    what: &str,
    done: impl Fn(&policy::PassReport) -> bool,
) {
    let waited = tokio::time::timeout(POLICY_WAIT, passes.wait_for(|r| done(r))).await;
    if !matches!(waited, Ok(Ok(_))) {
        tracing::error!(
            "{what} did not complete within {POLICY_WAIT:?}; configuring peers anyway (see the policy errors above)"
        );
    }
}

/// How long start-up waits for the store before carrying on with the last known peers.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

/// Routes and peers are re-checked on this period even without store changes, so that a route
/// deleted by hand, a failed netlink call or a data path that died heals by itself.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

pub async fn run(config: Config) -> Result<()> {
    tracing::debug!(?config, "configuration");
    // Before the data path, the store or the key: pod traffic must never find a moment with
    // neither the tunnel nor the guard.
    let strict = crate::strict::start(&config).await?;
    let ring = KeyRing::new(&config.state_dir, &config.interface);
    let keys = ring.load_or_create()?;
    let public_key = keys.current.public_key();
    tracing::info!(
        key_file = %ring.key_file().path().display(),
        public_key = %public_key,
        epoch = keys.state.epoch,
        created = keys.created_now,
        "node key loaded"
    );

    let peer_file = PeerFile::new(&config.state_dir);
    let store = Arc::new(open_store(&config, &peer_file).await?);
    let netlink = Netlink::connect()?;
    let mtu = match config.mtu {
        0 => start::auto_mtu(&netlink, &config).await,
        m => m,
    };
    let datapath_exited = Arc::new(tokio::sync::Notify::new());
    let started = start::start(&config, &netlink, &keys.current, mtu, &datapath_exited).await?;
    let datapath = started.datapath.clone();
    tracing::info!(interface = %config.interface, datapath = datapath.kind(), mtu, port = config.listen_port, "interface up");

    let record = NodeRecord {
        cluster_name: config.cluster_name.clone(),
        pod_cidrs: config.pod_cidrs.clone(),
        node_ips: config.node_ips.clone(),
        ..NodeRecord::new(&config.node_name, public_key, config.endpoint)
    };
    let (own_tx, own_rx) = watch::channel(OwnKey {
        public: public_key,
        epoch: keys.state.epoch,
        created: keys.state.created(),
        next: None,
        next_rotation: None,
    });
    let (rotate_tx, rotate_rx) = mpsc::channel(4);
    let rotator = Rotator {
        ring,
        state: keys.state,
        next: keys.next,
        record,
        store: store.clone(),
        datapath: datapath.clone(),
        interval: config.key_rotation.interval,
        commit_timeout: config.key_rotation.commit_timeout,
        own: own_tx,
        requests: rotate_rx,
        startup: Startup::Synced,
    };
    match store.publish(&rotator.current_record()).await {
        Ok(()) => {
            tracing::info!(store = %store.describe(), node = %config.node_name, "node record published")
        }
        // The store keeps the record and writes it when it is reachable again.
        Err(
            e @ (keymgr::StoreError::Unavailable { .. }
            | keymgr::StoreError::KubeUnavailable { .. }),
        ) => {
            tracing::warn!("{e}")
        }
        Err(e) => return Err(e).context("publishing this node's record"),
    }

    let objects = Arc::new(open_objects(&config)?);
    let enforcer = policy::open_enforcer(&config.policy)?;
    let (policy_tx, policy_rx) = watch::channel(Arc::new(policy::PolicyState::default()));
    let policy_counters = Arc::new(policy::PolicyCounters::default());

    let (names_tx, names_rx) = watch::channel(Arc::new(HashMap::new()));
    let (view_tx, view_rx) = watch::channel(None);
    // The task supervisor publishes its tasks' health here.
    let (_health_tx, health_rx) = watch::channel(crate::api::Health::default());
    let published = views::Published {
        store: store.clone(),
        datapath: datapath.clone(),
        names: names_rx,
        own: own_rx.clone(),
        rotate: rotate_tx,
        objects: objects.clone(),
        policy: policy_rx,
        policy_counters: policy_counters.clone(),
        device_view: view_rx,
        strict,
        health: health_rx,
    };
    let admin_views = views::admin_views(&config, mtu, published);
    let access = Access {
        reader_gid: config.admin_group,
    };
    let _admin = AdminServer::bind(
        &config.admin_socket(),
        admin_views.routes(),
        access,
        Limits::ADMIN,
    )?;
    if let Some(addr) = config.metrics_address {
        let listener = crate::admin::metrics::bind(addr).await?;
        crate::admin::metrics::serve(listener, admin_views.metrics, Limits::METRICS);
    }

    let mut reconciler = Reconciler {
        datapath: datapath.clone(),
        netlink: netlink.clone(),
        ifindex: started.ifindex,
        self_name: config.node_name.clone(),
        own: own_rx,
        keepalive: config.persistent_keepalive,
        // A data path that outlived the previous agent holds the peers that agent applied.
        peers: match started.origin {
            Origin::Attached => peer_file.load(),
            Origin::Fresh => Default::default(),
        },
        routes: BTreeSet::new(),
        names: names_tx,
        peer_file,
        own_record_seen: false,
        view: view_tx,
    };
    tokio::spawn(rotator.run());
    let (passes_tx, mut passes) = watch::channel(policy::PassReport::default());
    let policy_loop = policy::PolicyLoop {
        store: objects.clone(),
        wg_ifname: config.interface.clone(),
        node_name: config.node_name.clone(),
        netlink: netlink.clone(),
        objects: objects.subscribe(),
        nodes: store.subscribe(),
        state: policy_tx,
        counters: policy_counters,
        saved: policy::saved::SavedFile::new(&config.state_dir),
        passes: passes_tx,
    };
    tokio::spawn(policy_loop.run(enforcer));
    // No peer is configured before the policy (the store's, or the saved one after a reboot)
    // is on this node's interfaces: a fresh data path takes no packet for a pod before then.
    wait_policy(&mut passes, "the first policy pass", |r| r.passes > 0).await;

    let mut snapshots = store.subscribe();
    let mut health = store.health();
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!("agent ready");
    loop {
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    bail!("the store watcher stopped");
                }
            }
            _ = resync.tick() => {}
            _ = datapath_exited.notified() => {}
            Ok(()) = health.changed() => {
                if let keymgr::store::StoreHealth::Conflict { owner } = &*health.borrow_and_update() {
                    bail!(
                        "another agent (owner {owner}) took this node's name {} in the store; stopping so that two agents never publish one node",
                        config.node_name
                    );
                }
                continue;
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        let snap = snapshots.borrow_and_update().clone();
        if let Err(DeviceError::Stopped) = reconciler.reconcile(&snap).await {
            tracing::error!("the data path is gone; starting a new one (sessions restart)");
            let restarted = async {
                let key = keymgr::KeyFile::new(config.key_path()).load()?;
                start::start(&config, &netlink, &key, mtu, &datapath_exited).await
            };
            match restarted.await {
                Ok(s) => {
                    // The new WireGuard device has no tc filters: the host endpoint's
                    // programs go on it before any peer does.
                    wait_policy(
                        &mut passes,
                        "the host endpoint's programs on the new WireGuard device",
                        |r| r.host_settled_on(s.ifindex),
                    )
                    .await;
                    reconciler.reset(s.ifindex);
                    if let Err(e) = reconciler.reconcile(&snap).await {
                        tracing::error!(error = %e, "the new data path failed at once; retrying");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot restart the data path; retrying")
                }
            }
        }
    }
    tracing::info!("agent stopping; the data path keeps forwarding with the peers it has");
    Ok(())
}
