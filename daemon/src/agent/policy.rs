//! Policy in the agent: follows the cluster's objects (Namespaces, Pods, policies) and the node
//! records in the store, keeps the last object set that loads as the policy in force, and drives
//! the eBPF enforcer on the host-side interfaces of this node's endpoints.
//!
//! An object set that does not load (someone wrote a bad manifest straight into the store) never
//! replaces the one in force: it is logged at ERROR and counted, and the next good set wins. An
//! endpoint whose map update fails is failed closed by the enforcer.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use keymgr::store::objects::{ObjectSet, ObjectStore, Wanted};
use keymgr::Snapshot;
use policy::{Bundle, Compiled, Identities};
use tokio::sync::watch;

use crate::config::{Enforcement, PolicyConfig};
use crate::enforce::{Counter, Desired, EnforceError, Enforcer};
use crate::netlink::Netlink;

/// Interfaces appear after their pods' objects (and disappear): re-checked this often.
const RESYNC_EVERY: Duration = Duration::from_secs(2);

/// The policy in force: what the enforcer applies and what an online trace answers from.
#[derive(Clone)]
pub struct PolicyState {
    pub bundle: Arc<Bundle>,
    pub compiled: Arc<Compiled>,
    /// How many object sets have been loaded (1 for the first).
    pub generation: u64,
    /// Why the newest object set was refused, while the previous one stays in force.
    pub refused: Option<String>,
    /// This node's endpoints and the interface each is enforced on (`namespace/name` →
    /// interface), or why it is not.
    pub endpoints: BTreeMap<String, Result<String, String>>,
}

impl Default for PolicyState {
    /// No objects: nothing is isolated.
    fn default() -> Self {
        let bundle = Bundle::default();
        Self {
            compiled: Arc::new(Compiled::build(&bundle)),
            bundle: Arc::new(bundle),
            generation: 0,
            refused: None,
            endpoints: BTreeMap::new(),
        }
    }
}

/// Counters for metrics.
#[derive(Default)]
pub struct PolicyCounters {
    pub load_failures: AtomicU64,
    pub apply_failures: AtomicU64,
    pub applies: AtomicU64,
    /// The eBPF programs' packet counters as of the last pass, with the endpoint each
    /// interface serves.
    pub packets: std::sync::Mutex<Vec<(String, Counter)>>,
}

/// Loads an object set into a bundle and adds what the node records know about nodes (their
/// addresses are the `host` and `remote-node` identities).
pub fn load(set: &ObjectSet, nodes: &Snapshot) -> Result<Bundle, String> {
    let texts = set
        .objects
        .values()
        .map(|o| (o.origin.as_str(), o.manifest.as_str()));
    let mut bundle = policy::load(texts).map_err(|e| e.to_string())?;
    for rec in nodes.nodes.values() {
        let node = node_entry(&mut bundle, &rec.node_name);
        for ip in rec.node_ips.iter().copied().chain([rec.endpoint.ip()]) {
            if !node.ips.contains(&ip) {
                node.ips.push(ip);
            }
        }
    }
    Ok(bundle)
}

const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// The bundle's node `name`, added if missing, with the hostname label the kubelet gives every
/// Node (a node learnt only from a pod's `nodeName` has no labels).
fn node_entry<'b>(bundle: &'b mut Bundle, name: &str) -> &'b mut policy::model::Node {
    let node = bundle
        .nodes
        .entry(name.to_string())
        .or_insert_with(|| policy::model::Node {
            name: name.to_string(),
            ..Default::default()
        });
    node.labels
        .entry(HOSTNAME_LABEL.to_string())
        .or_insert_with(|| name.to_string());
    node
}

pub struct PolicyLoop {
    pub node_name: String,
    /// The WireGuard interface's name: the host endpoint's interface.
    pub wg_ifname: String,
    /// Where identity numbers are allocated cluster-wide.
    pub store: Arc<ObjectStore>,
    /// The WireGuard interface: never an endpoint's interface.
    pub wg_ifindex: u32,
    pub netlink: Netlink,
    pub objects: watch::Receiver<Arc<ObjectSet>>,
    pub nodes: watch::Receiver<Arc<Snapshot>>,
    pub state: watch::Sender<Arc<PolicyState>>,
    pub counters: Arc<PolicyCounters>,
}

/// Opens the enforcer (mounting the BPF filesystem at /sys/fs/bpf if it is missing, as Cilium
/// does). `None` when enforcement is off.
pub fn open_enforcer(config: &PolicyConfig) -> Result<Option<Enforcer>> {
    if config.enforcement == Enforcement::Never {
        tracing::warn!(
            "policy.enforcement is never: network policies are NOT enforced on this node"
        );
        return Ok(None);
    }
    let hint = "set policy.enforcement: never to run without policy enforcement";
    let enforcer = match Enforcer::open(&config.bpf_pin_dir) {
        Err(EnforceError::NotBpfFs { .. }) => {
            crate::enforce::ensure_bpf_fs(std::path::Path::new("/sys/fs/bpf"))
                .with_context(|| format!("mounting a BPF filesystem ({hint})"))?;
            Enforcer::open(&config.bpf_pin_dir)
        }
        other => other,
    };
    Ok(Some(enforcer.with_context(|| {
        format!("loading the eBPF policy programs ({hint})")
    })?))
}

impl PolicyLoop {
    pub async fn run(mut self, mut enforcer: Option<Enforcer>) {
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        let mut in_force: Option<(Arc<ObjectSet>, Arc<Snapshot>)> = None;
        let mut attached: BTreeMap<String, u32> = BTreeMap::new();
        let mut host_attached = false;
        let mut generation = 0;
        let mut last_refusal: Option<String> = None;
        let mut allocation_failed = false;
        loop {
            let set = self.objects.borrow_and_update().clone();
            let nodes = self.nodes.borrow_and_update().clone();
            let changed = allocation_failed
                || in_force
                    .as_ref()
                    .is_none_or(|(s, n)| !Arc::ptr_eq(s, &set) || !Arc::ptr_eq(n, &nodes));
            if !set.synced {
                // Until the store has answered, the pinned maps of the previous run stay in
                // force untouched.
                tokio::select! {
                    Ok(()) = self.objects.changed() => {}
                    _ = tick.tick() => {}
                }
                continue;
            }
            if changed {
                for (origin, reason) in &set.unreadable {
                    tracing::warn!(origin, "store entry is not a wiremesh object: {reason}");
                }
                let loaded = load(&set, &nodes);
                match loaded {
                    Ok(mut bundle) => {
                        self.add_local_addresses(&mut bundle).await;
                        generation += 1;
                        let (identities, failed) = self.identities(&bundle).await;
                        allocation_failed = failed;
                        let compiled =
                            Compiled::build_for(&bundle, identities, Some(&self.node_name));
                        let endpoints = self.state.borrow().endpoints.clone();
                        self.state.send_replace(Arc::new(PolicyState {
                            bundle: Arc::new(bundle),
                            compiled: Arc::new(compiled),
                            generation,
                            refused: None,
                            endpoints,
                        }));
                        last_refusal = None;
                    }
                    Err(e) => {
                        if last_refusal.as_deref() != Some(e.as_str()) {
                            tracing::error!(
                                error = %e,
                                "the store's objects do not load; the policy in force stays unchanged"
                            );
                            self.counters.load_failures.fetch_add(1, Ordering::Relaxed);
                            self.state.send_modify(|s| {
                                let mut next = (**s).clone();
                                next.refused = Some(e.clone());
                                *s = Arc::new(next);
                            });
                            last_refusal = Some(e);
                        }
                    }
                }
                in_force = Some((set, nodes));
            }
            if let Some(enf) = enforcer.as_mut() {
                self.enforce(enf, &mut attached, &mut host_attached).await;
            }
            tokio::select! {
                Ok(()) = self.objects.changed() => {}
                Ok(()) = self.nodes.changed() => {}
                _ = tick.tick() => {}
            }
        }
    }

    /// This host's own addresses (e.g. a pod gateway address inside its pod CIDR, which peers
    /// reach through the tunnel) belong to its node: the `host` identity here.
    async fn add_local_addresses(&self, bundle: &mut Bundle) {
        let addrs = match self.netlink.local_addresses().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("listing this host's addresses: {e:#}");
                return;
            }
        };
        let node = node_entry(bundle, &self.node_name);
        for ip in addrs {
            if !node.ips.contains(&ip) {
                node.ips.push(ip);
            }
        }
    }

    /// The bundle's identities with numbers allocated cluster-wide through the store. If the
    /// store cannot allocate (unreachable), numbers are derived locally for now (they never
    /// leave this node) and `true` says to try again.
    async fn identities(&self, bundle: &Bundle) -> (Identities, bool) {
        let local = Identities::build(bundle);
        let wanted: Vec<Wanted> = local
            .iter()
            .filter_map(|(_, labels)| {
                let (first, end) = labels.allocation_range()?;
                Some(Wanted {
                    key: labels.key(),
                    preferred: labels.preferred_id()?,
                    first,
                    end,
                })
            })
            .collect();
        match self.store.allocate(wanted).await {
            Ok(assigned) => {
                let ids = Identities::build_with(bundle, &|l| assigned.get(&l.key()).copied());
                (ids, false)
            }
            Err(e) => {
                tracing::warn!(
                    "cannot allocate identities through the store ({e}); numbering them locally \
                     until it answers"
                );
                (local, true)
            }
        }
    }

    /// Attaches the programs to every local endpoint's interface and brings the maps to the
    /// policy in force.
    async fn enforce(
        &mut self,
        enf: &mut Enforcer,
        attached: &mut BTreeMap<String, u32>,
        host_attached: &mut bool,
    ) {
        let state = self.state.borrow().clone();
        let local: Vec<(String, IpAddr)> = state
            .bundle
            .endpoints
            .iter()
            .filter(|ep| ep.node.as_deref() == Some(self.node_name.as_str()))
            .filter_map(|ep| {
                let mut ips = ep.ips.clone();
                ips.sort_by_key(|ip| !ip.is_ipv4());
                ips.first().map(|ip| (ep.qualified_name(), *ip))
            })
            .collect();
        let mut ifindexes = BTreeMap::new();
        let mut report = BTreeMap::new();
        for (name, ip) in local {
            match self.host_interface(ip).await {
                Ok((ifname, _)) => {
                    let ifindex = match attached.get(&ifname) {
                        Some(&i) => Ok(i),
                        None => tokio::task::block_in_place(|| enf.attach(&ifname)),
                    };
                    match ifindex {
                        Ok(i) => {
                            attached.insert(ifname.clone(), i);
                            ifindexes.insert(name.clone(), i);
                            report.insert(name, Ok(ifname));
                        }
                        Err(e) => {
                            tracing::error!(endpoint = %name, "{e}");
                            report.insert(name, Err(e.to_string()));
                        }
                    }
                }
                Err(why) => {
                    report.insert(name, Err(why));
                }
            }
        }
        let mut desired = Desired::from_compiled(
            &state.compiled.identities,
            &state.compiled.maps,
            &state.bundle,
            Some(&self.node_name),
            &ifindexes,
        );
        // This node as a host endpoint, on the WireGuard device, while a nodeSelector policy
        // selects it.
        match state.compiled.host_maps.get(&self.node_name) {
            Some(map) => {
                if !*host_attached {
                    match tokio::task::block_in_place(|| enf.attach_host(&self.wg_ifname)) {
                        Ok(_) => *host_attached = true,
                        Err(e) => {
                            tracing::error!(interface = %self.wg_ifname, "host endpoint: {e}")
                        }
                    }
                }
                if *host_attached {
                    desired.add_endpoint(self.wg_ifindex, policy::identity::HOST, map);
                    report.insert(
                        format!("host/{}", self.node_name),
                        Ok(self.wg_ifname.clone()),
                    );
                }
            }
            None if *host_attached => {
                if let Err(e) = tokio::task::block_in_place(|| enf.detach(&self.wg_ifname)) {
                    tracing::warn!(interface = %self.wg_ifname, "host endpoint detach: {e}");
                }
                *host_attached = false;
            }
            None => {}
        }
        match tokio::task::block_in_place(|| enf.apply(&desired)) {
            Ok(()) => {
                self.counters.applies.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.apply_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!("policy enforcement: {e}");
            }
        }
        // Interfaces whose endpoint is gone: detach (the interface may be gone already).
        let wanted: Vec<&u32> = ifindexes.values().collect();
        attached.retain(|ifname, ifindex| {
            if wanted.contains(&&*ifindex) {
                return true;
            }
            if let Err(e) = tokio::task::block_in_place(|| enf.detach(ifname)) {
                tracing::debug!(ifname, "detach: {e}");
            }
            false
        });
        let names: BTreeMap<u32, &String> = ifindexes.iter().map(|(n, i)| (*i, n)).collect();
        match tokio::task::block_in_place(|| enf.counters()) {
            Ok(counters) => {
                let named = counters
                    .into_iter()
                    .filter_map(|c| Some(((*names.get(&c.ifindex)?).clone(), c)))
                    .collect();
                if let Ok(mut p) = self.counters.packets.lock() {
                    *p = named;
                }
            }
            Err(e) => tracing::debug!("reading policy counters: {e}"),
        }
        if state.endpoints != report {
            self.state.send_modify(|s| {
                let mut next = (**s).clone();
                next.endpoints = report;
                *s = Arc::new(next);
            });
        }
    }

    /// The interface the node routes `ip` to, which must be a local one (not the tunnel, not via
    /// a gateway): the endpoint's host-side veth, as CNIs such as Calico set it up.
    async fn host_interface(&self, ip: IpAddr) -> Result<(String, u32), String> {
        let route = self
            .netlink
            .route_to(ip)
            .await
            .map_err(|e| format!("route lookup: {e:#}"))?;
        match route {
            None => Err(format!("no route to {ip}")),
            Some(r) if r.ifindex == self.wg_ifindex => Err(format!(
                "{ip} is routed into the tunnel, not to a local interface"
            )),
            Some(r) if r.gateway => Err(format!("{ip} is routed via a gateway ({})", r.ifname)),
            Some(r) => Ok((r.ifname, r.ifindex)),
        }
    }
}
