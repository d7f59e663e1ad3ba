//! The node agent: loads the node key, brings up the data path, publishes this node's record,
//! and keeps the device and the routing table in step with the store until told to stop.

mod reconcile;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use keymgr::store::DirStore;
use keymgr::{KeyFile, NodeRecord, PrivateKey, PublicKey, Snapshot, Store};
use tokio::sync::watch;

use crate::admin::{AdminServer, AdminState};
use crate::config::{Config, DatapathKind, StoreConfig, WIREGUARD_OVERHEAD};
use crate::datapath::Datapath;
use crate::device::uapi_server::UapiServer;
use crate::device::SetRequest;
use crate::kernel::Kernel;
use crate::netlink::Netlink;
use crate::userspace;

/// Routes and peers are re-checked on this period even without store changes, so that a route
/// deleted by hand or a failed netlink call heals by itself.
const RESYNC_EVERY: Duration = Duration::from_secs(10);

pub async fn run(config: Config) -> Result<()> {
    tracing::debug!(?config, "configuration");
    let key_file = KeyFile::new(config.key_path());
    let (key, created) = key_file.load_or_create()?;
    let public_key = key.public_key();
    tracing::info!(
        key_file = %key_file.path().display(),
        public_key = %public_key,
        created,
        "node key loaded"
    );

    let store = match &config.store {
        StoreConfig::Dir { path } => Store::Dir(DirStore::open(path)?),
    };
    let netlink = Netlink::connect()?;
    let mtu = match config.mtu {
        0 => auto_mtu(&netlink, &config).await,
        m => m,
    };
    let (datapath, ifindex) = start_datapath(&config, &netlink, &key, mtu).await?;
    let datapath = Arc::new(datapath);
    tracing::info!(interface = %config.interface, datapath = datapath.kind(), mtu, port = config.listen_port, "interface up");

    let _uapi = match datapath.as_ref() {
        Datapath::Userspace(_) => Some(
            UapiServer::bind(&config.interface, datapath.clone())
                .with_context(|| format!("serving the WireGuard UAPI for {}", config.interface))?,
        ),
        // The kernel answers `wg` itself.
        Datapath::Kernel(_) => None,
    };

    let (names_tx, names_rx) = watch::channel(Arc::new(HashMap::new()));
    let admin_state = Arc::new(AdminState {
        interface: config.interface.clone(),
        public_key,
        mtu,
        node_name: config.node_name.clone(),
        cluster_name: config.cluster_name.clone(),
        store: store.describe(),
        datapath: datapath.clone(),
        node_names: names_rx,
    });
    let _admin = AdminServer::bind(&config.admin_socket(), admin_state)?;

    let record = NodeRecord {
        node_name: config.node_name.clone(),
        cluster_name: config.cluster_name.clone(),
        public_key,
        endpoint: config.endpoint,
        pod_cidrs: config.pod_cidrs.clone(),
        node_ips: config.node_ips.clone(),
    };
    store
        .publish(&record)
        .await
        .context("publishing this node's record")?;
    tracing::info!(store = %store.describe(), node = %config.node_name, "node record published");

    let mut reconciler = Reconciler {
        datapath: datapath.clone(),
        netlink,
        ifindex,
        self_name: config.node_name.clone(),
        self_key: public_key,
        keepalive: config.persistent_keepalive,
        peers: BTreeMap::new(),
        routes: BTreeSet::new(),
        names: names_tx,
        own_record_seen: false,
    };
    let mut snapshots = store.subscribe();
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
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        let snap = snapshots.borrow_and_update().clone();
        reconciler.reconcile(&snap).await;
    }
    tracing::info!("shutting down; the interface goes with the process");
    Ok(())
}

/// Underlay MTU minus WireGuard's overhead; 1420 (the usual 1500 - 80) if the underlay
/// interface cannot be found.
async fn auto_mtu(netlink: &Netlink, config: &Config) -> u32 {
    let mut candidates = vec![config.endpoint.ip()];
    candidates.extend(config.node_ips.iter().copied());
    for ip in candidates {
        if let Ok(Some(mtu)) = netlink.mtu_of_interface_with(ip).await {
            return mtu.saturating_sub(WIREGUARD_OVERHEAD).max(1280);
        }
    }
    tracing::info!("no local interface holds the endpoint or node IPs; assuming underlay MTU 1500");
    1500 - WIREGUARD_OVERHEAD
}

async fn start_datapath(
    config: &Config,
    netlink: &Netlink,
    key: &PrivateKey,
    mtu: u32,
) -> Result<(Datapath, u32)> {
    let want_kernel = match config.datapath {
        DatapathKind::Userspace => false,
        DatapathKind::Kernel | DatapathKind::Auto => true,
    };
    if want_kernel {
        let kernel = match netlink.link_index(&config.interface).await {
            Ok(index) => Ok(index),
            Err(_) => netlink.create_wireguard(&config.interface).await,
        };
        match kernel {
            Ok(index) => {
                let k = Kernel::configure(&config.interface, key, config.listen_port, mtu)
                    .with_context(|| {
                        format!("configuring kernel WireGuard on {}", config.interface)
                    })?;
                netlink.set_up(index, mtu).await?;
                return Ok((Datapath::Kernel(Arc::new(k)), index));
            }
            Err(e) if config.datapath == DatapathKind::Kernel => {
                return Err(e.context(
                    "datapath: kernel was requested but the WireGuard module is not available; \
                     load it (modprobe wireguard) or set datapath: userspace",
                ));
            }
            Err(e) => tracing::info!(
                reason = %format!("{e:#}"),
                "kernel WireGuard not available; using the userspace data path"
            ),
        }
    }
    let handle = userspace::start(&config.interface, key.clone(), config.listen_port)?;
    let index = netlink.link_index(&config.interface).await?;
    netlink.set_up(index, mtu).await?;
    Ok((Datapath::Userspace(handle), index))
}

struct Reconciler {
    datapath: Arc<Datapath>,
    netlink: Netlink,
    ifindex: u32,
    self_name: String,
    self_key: PublicKey,
    keepalive: u16,
    /// The peers in force, as last applied to the device.
    peers: BTreeMap<String, NodeRecord>,
    /// The routes this agent installed.
    routes: BTreeSet<IpNet>,
    names: watch::Sender<Arc<HashMap<PublicKey, String>>>,
    own_record_seen: bool,
}

impl Reconciler {
    async fn reconcile(&mut self, snap: &Snapshot) {
        self.check_own_record(snap);
        let mut desired = reconcile::desired(&snap.nodes, &self.self_name);
        desired.retain(|name, rec| {
            let ours = rec.public_key == self.self_key;
            if ours {
                tracing::warn!(node = %name, "record carries this node's own public key; ignored");
            }
            !ours
        });
        let plan = reconcile::plan(&self.peers, &desired, self.keepalive);
        if !plan.is_empty() {
            let set = SetRequest {
                peers: plan.set.peers,
                ..SetRequest::default()
            };
            if let Err(e) = self.datapath.set(set).await {
                tracing::error!(error = %e, "applying peer changes failed; retrying on the next resync");
                return;
            }
            for n in &plan.added {
                tracing::info!(peer = %n, endpoint = %desired[n].endpoint, "peer added");
            }
            for n in &plan.changed {
                tracing::info!(peer = %n, endpoint = %desired[n].endpoint, "peer updated");
            }
            for n in &plan.removed {
                tracing::info!(peer = %n, "peer removed");
            }
            self.peers = desired;
            let names = self
                .peers
                .iter()
                .map(|(n, r)| (r.public_key, n.clone()))
                .collect();
            self.names.send_replace(Arc::new(names));
        }
        self.sync_routes().await;
    }

    async fn sync_routes(&mut self) {
        let want = reconcile::routes(&self.peers);
        for net in self.routes.difference(&want).copied().collect::<Vec<_>>() {
            match self.netlink.delete_route(net, self.ifindex).await {
                Ok(()) => {
                    self.routes.remove(&net);
                }
                Err(e) => tracing::debug!(%net, error = %format!("{e:#}"), "route already gone"),
            }
            self.routes.remove(&net);
        }
        // Replacing an existing route is a no-op for the kernel, and re-adds one deleted by hand.
        for net in want {
            match self.netlink.replace_route(net, self.ifindex).await {
                Ok(()) => {
                    self.routes.insert(net);
                }
                Err(e) => {
                    tracing::warn!(%net, error = %format!("{e:#}"), "cannot route pod CIDR into the tunnel; retrying")
                }
            }
        }
    }

    /// Warns once when this node's record, seen before, leaves the store: peers then drop this
    /// node, and only an operator knows whether that was meant.
    fn check_own_record(&mut self, snap: &Snapshot) {
        let present = snap.nodes.contains_key(&self.self_name);
        if !present && self.own_record_seen {
            tracing::warn!(
                node = %self.self_name,
                "this node's record is no longer in the store (removed, or refused as invalid); \
                 peers will drop this node. Restart the agent to publish it again"
            );
        }
        self.own_record_seen = present;
    }
}
