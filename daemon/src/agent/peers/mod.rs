//! The node's peers: applies store snapshots to the data path and the routing table,
//! remembering what is in force. [`plan`] is the pure diff; [`Reconciler`] does the I/O.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use keymgr::{NodeRecord, PublicKey, Snapshot};
use tokio::sync::watch;

use super::persist::PeerFile;
use super::rotation::OwnKey;
use super::start::{Origin, Started};
use crate::config::Config;
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::model::{DeviceError, DeviceState, DeviceView, SetRequest};
use wiremesh_datapath::netlink::Netlink;

pub struct Reconciler {
    pub datapath: Arc<Datapath>,
    pub netlink: Netlink,
    /// The WireGuard interface, by name and by index.
    pub interface: String,
    pub ifindex: u32,
    /// The data-path process last seen ([`wiremesh_datapath::instance`]; `None`: not yet, or the
    /// kernel module).
    pub instance: Option<u64>,
    pub self_name: String,
    pub own: watch::Receiver<OwnKey>,
    pub keepalive: u16,
    /// The peers in force, as last applied to the data path.
    pub peers: BTreeMap<String, NodeRecord>,
    /// The routes this agent installed.
    pub routes: BTreeSet<IpNet>,
    /// Which node, at which key epoch, each peer key belongs to (for status).
    pub names: watch::Sender<Arc<HashMap<PublicKey, PeerKey>>>,
    pub peer_file: PeerFile,
    pub own_record_seen: bool,
    /// The latest read of the data path, for metrics (which must not read it themselves).
    pub view: watch::Sender<Option<Arc<DeviceView>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerKey {
    pub node: String,
    pub epoch: u64,
    /// The key the node publishes now (as opposed to its announced successor).
    pub published: bool,
}

impl Reconciler {
    /// The peers reconciler for the data path `started`; its name and view channels are closed until
    /// the caller gives it its own.
    pub fn for_started(
        config: &Config,
        started: &Started,
        netlink: &Netlink,
        own: watch::Receiver<OwnKey>,
        peer_file: PeerFile,
    ) -> Self {
        Self {
            datapath: started.datapath.clone(),
            netlink: netlink.clone(),
            interface: config.interface.clone(),
            ifindex: started.ifindex,
            instance: None,
            self_name: config.node_name.clone(),
            own,
            keepalive: config.persistent_keepalive,
            // A data path that outlived the previous agent holds the peers that agent applied.
            peers: match started.origin {
                Origin::Attached => peer_file.load(),
                Origin::Fresh => Default::default(),
            },
            routes: BTreeSet::new(),
            names: watch::channel(Arc::new(HashMap::new())).0,
            peer_file,
            own_record_seen: false,
            view: watch::channel(None).0,
        }
    }

    /// After a new data path replaced one that died: nothing is in force any more.
    pub fn reset(&mut self, ifindex: u32) {
        self.ifindex = ifindex;
        self.peers.clear();
        self.routes.clear();
    }

    /// Applies `snap`; an `Err` means the data path is gone.
    pub async fn reconcile(&mut self, snap: &Snapshot) -> Result<(), DeviceError> {
        // A data path that died without anything left to change would otherwise go unnoticed.
        self.refresh_view().await?;
        self.check_own_record(snap);
        let mut desired = plan::desired(&snap.nodes, &self.self_name);
        desired.retain(|name, rec| {
            let own = self.own.borrow();
            let ours = rec.keys().any(|k| k == own.public || Some(k) == own.next);
            if ours {
                tracing::warn!(node = %name, "record carries this node's own public key; ignored");
            }
            !ours
        });
        let plan = plan::plan(&self.peers, &desired, self.keepalive);
        if !plan.is_empty() {
            let set = SetRequest {
                peers: plan.set.peers,
                ..SetRequest::default()
            };
            match self.datapath.set(set).await {
                Ok(()) => {}
                Err(DeviceError::Stopped) => return Err(DeviceError::Stopped),
                Err(e) => {
                    tracing::error!(error = %e, "applying peer changes failed; retrying on the next resync");
                    return Ok(());
                }
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
            self.peer_file.save(&self.peers);
            self.refresh_view().await?;
        }
        // Also when nothing changed: a re-attached agent starts with the peers in force but no
        // names published yet.
        self.publish_names();
        self.sync_routes().await;
        Ok(())
    }

    /// Reads the data path and publishes what it holds for metrics; `Err` only when it is gone
    /// (or replaced by one that holds nothing of what was applied).
    async fn refresh_view(&mut self) -> Result<(), DeviceError> {
        match self.datapath.get().await {
            Ok(state) => {
                self.check_replaced(&state).await?;
                let view = DeviceView::of(state, std::time::SystemTime::now());
                self.view.send_replace(Some(Arc::new(view)));
                Ok(())
            }
            Err(DeviceError::Stopped) => Err(DeviceError::Stopped),
            Err(e) => {
                tracing::debug!(error = %e, "reading the data path for metrics");
                Ok(())
            }
        }
    }

    /// Another data-path process on a new interface — an external data path's pod restarted
    /// between two resyncs — holds none of the peers and routes applied: it counts as the old
    /// one gone, so that the event loop starts over with it. A successor that took over in
    /// place (same interface) holds everything and is only noted.
    async fn check_replaced(&mut self, state: &DeviceState) -> Result<(), DeviceError> {
        let instance = state.process.as_ref().map(|p| p.instance);
        let previous = std::mem::replace(&mut self.instance, instance);
        if previous.is_none() || previous == instance {
            return Ok(());
        }
        match self.netlink.link_index(&self.interface).await {
            Ok(index) if index == self.ifindex => {
                tracing::info!("the data path was taken over in place by a new process");
                Ok(())
            }
            _ => {
                tracing::warn!(
                    interface = %self.interface,
                    "a new data path replaced the one configured (the interface was re-created); \
                     configuring it from scratch"
                );
                Err(DeviceError::Stopped)
            }
        }
    }

    fn publish_names(&self) {
        let mut names = HashMap::new();
        for (n, r) in &self.peers {
            let (node, epoch) = (n.clone(), r.key_epoch);
            names.insert(
                r.public_key,
                PeerKey {
                    node: node.clone(),
                    epoch,
                    published: true,
                },
            );
            if let Some(k) = r.next_public_key {
                names.insert(
                    k,
                    PeerKey {
                        node,
                        epoch: epoch.saturating_add(1),
                        published: false,
                    },
                );
            }
        }
        self.names.send_if_modified(|cur| {
            if **cur == names {
                return false;
            }
            *cur = Arc::new(names);
            true
        });
    }

    async fn sync_routes(&mut self) {
        let want = plan::routes(&self.peers);
        for net in self.routes.difference(&want).copied().collect::<Vec<_>>() {
            if let Err(e) = self.netlink.delete_route(net, self.ifindex).await {
                tracing::debug!(%net, error = %format!("{e:#}"), "route already gone");
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
