//! The policy loop: picks the object set in force (the store's once it has answered, the saved
//! one until then), loads and compiles it, saves every set it accepts from the store, and runs an
//! enforcement pass on every change, on every link or route change the kernel announces, and
//! every 2 s.
//!
//! It must never enforce something broader than the last set this node accepted: a set that
//! does not load leaves the one in force, and the saved set is only ever one that loaded.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use keymgr::store::objects::{ObjectSet, ObjectStore, Wanted};
use keymgr::Snapshot;
use policy::{Bundle, Compiled, Identities};
use tokio::sync::watch;

use super::attach::Attached;
use super::saved::{self, Saved, SavedFile, Source};
use super::{load, node_entry, PolicyCounters, PolicyState};
use wiremesh_datapath::netlink::Netlink;
use wiremesh_enforce::Enforcer;

/// Interfaces appear after their pods' objects (and disappear): re-checked this often, besides
/// the kernel's link and route notifications.
const RESYNC_EVERY: Duration = Duration::from_secs(2);

pub struct PolicyLoop {
    pub node_name: String,
    /// The WireGuard interface's name: the host endpoint's interface, never a pod's.
    pub wg_ifname: String,
    /// Where identity numbers are allocated cluster-wide.
    pub store: Arc<ObjectStore>,
    pub netlink: Netlink,
    pub objects: watch::Receiver<Arc<ObjectSet>>,
    pub nodes: watch::Receiver<Arc<Snapshot>>,
    pub state: watch::Sender<Arc<PolicyState>>,
    pub counters: Arc<PolicyCounters>,
    /// The last set accepted from the store (`<stateDir>/policy.json`).
    pub saved: SavedFile,
    /// A report after every pass.
    pub passes: watch::Sender<PassReport>,
}

/// What the last pass did, for the agent's start-up and data path restarts to wait on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Passes completed (0: none yet).
    pub passes: u64,
    /// Whether a host policy selects this node.
    pub host_wanted: bool,
    /// The WireGuard device (ifindex) the host endpoint's programs are attached to.
    pub host_on: Option<u32>,
}

impl PassReport {
    /// Whether the host endpoint is enforced on the WireGuard device `ifindex`, or there is no
    /// host endpoint to enforce.
    pub fn host_settled_on(&self, ifindex: u32) -> bool {
        !self.host_wanted || self.host_on == Some(ifindex)
    }
}

/// What the loop remembers between passes.
#[derive(Default)]
pub(super) struct Memory {
    in_force: Option<(Arc<ObjectSet>, Arc<Snapshot>)>,
    /// The last set that loaded, and where it came from.
    accepted: Option<(Arc<ObjectSet>, Source)>,
    generation: u64,
    last_refusal: Option<String>,
    allocation_failed: bool,
    pub(super) attached: Attached,
    /// The generation and interfaces last written to the saved file.
    saved_as: Option<(u64, Vec<String>)>,
}

impl PolicyLoop {
    pub async fn run(mut self, mut enforcer: Option<Enforcer>) {
        let mut tick = tokio::time::interval(RESYNC_EVERY);
        let mut events = match wiremesh_datapath::link_events::subscribe() {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!("{e:#}; re-created interfaces get their policy programs within {RESYNC_EVERY:?} only");
                None
            }
        };
        let saved = self.load_saved();
        let saved_set = saved.as_ref().map(|s| Arc::new(s.object_set()));
        // Maps created empty: a reboot (or a first start), not a restarted agent.
        let fresh_maps = enforcer.as_ref().is_some_and(|e| !e.holds_policy());
        let mut m = Memory::default();
        let mut passes = 0;
        loop {
            let store_set = self.objects.borrow_and_update().clone();
            let nodes = self.nodes.borrow_and_update().clone();
            let source = saved::source(store_set.synced, saved_set.is_some());
            let set = match source {
                Source::Store => Some(store_set),
                Source::Saved => saved_set.clone(),
                Source::Nothing => None,
            };
            if let Some(set) = set {
                let changed = (m.allocation_failed && source == Source::Store)
                    || m.in_force
                        .as_ref()
                        .is_none_or(|(s, n)| !Arc::ptr_eq(s, &set) || !Arc::ptr_eq(n, &nodes));
                if changed {
                    self.take(&mut m, set, nodes, source, saved.as_ref()).await;
                }
            }
            let closed = saved::closed_interfaces(m.generation > 0, fresh_maps, saved.as_ref());
            let mut report = PassReport {
                passes: passes + 1,
                ..PassReport::default()
            };
            // With nothing known yet, the pinned maps of the previous run stay untouched.
            let act = source != Source::Nothing || !closed.is_empty();
            if let (true, Some(enf)) = (act, enforcer.as_mut()) {
                if let Some(outcome) = self.enforce(enf, &mut m.attached, &closed).await {
                    report.host_wanted = outcome.host_wanted;
                    self.save(&mut m, outcome.interfaces);
                }
                report.host_on = m.attached.host;
            }
            passes += 1;
            self.passes.send_replace(report);
            tokio::select! {
                Ok(()) = self.objects.changed() => {}
                Ok(()) = self.nodes.changed() => {}
                Some(()) = async { events.as_mut()?.recv().await } => {}
                _ = tick.tick() => {}
            }
        }
    }

    fn load_saved(&self) -> Option<Saved> {
        let path = self.saved.path().display().to_string();
        match self.saved.load(&self.node_name) {
            Ok(Some(s)) => {
                tracing::info!(file = %path, objects = s.objects.len(), "saved policy found: it is enforced until the store answers");
                Some(s)
            }
            Ok(None) => {
                tracing::info!(file = %path, "no saved policy: until the store answers, policy stays as the pinned maps hold it (none after a reboot)");
                None
            }
            Err(e) => {
                tracing::error!("{e}; until the store answers, policy stays as the pinned maps hold it (none after a reboot)");
                None
            }
        }
    }

    /// Loads `set` (with `nodes`) into the policy in force, or keeps the one in force if it
    /// does not load.
    async fn take(
        &mut self,
        m: &mut Memory,
        set: Arc<ObjectSet>,
        nodes: Arc<Snapshot>,
        source: Source,
        saved: Option<&Saved>,
    ) {
        if source == Source::Store {
            for (origin, reason) in &set.unreadable {
                tracing::warn!(origin, "store entry is not a wiremesh object: {reason}");
            }
        }
        match load(&set, &nodes) {
            Ok(mut bundle) => {
                self.add_local_addresses(&mut bundle).await;
                let identities = match (source, saved) {
                    (Source::Saved, Some(s)) => {
                        add_node_addresses(&mut bundle, &s.nodes);
                        m.allocation_failed = false;
                        Identities::build_with(&bundle, &|l| s.identities.get(&l.key()).copied())
                    }
                    _ => {
                        let (ids, failed) = self.identities(&bundle).await;
                        m.allocation_failed = failed;
                        ids
                    }
                };
                if source == Source::Saved {
                    tracing::warn!(
                        file = %self.saved.path().display(),
                        objects = set.objects.len(),
                        "the store has not answered yet: enforcing the policy this node last accepted"
                    );
                } else if m
                    .accepted
                    .as_ref()
                    .is_some_and(|(_, s)| *s == Source::Saved)
                {
                    tracing::info!("the store answered: its objects replace the saved policy");
                }
                m.generation += 1;
                let compiled = Compiled::build_for(&bundle, identities, Some(&self.node_name));
                let endpoints = self.state.borrow().endpoints.clone();
                self.state.send_replace(Arc::new(PolicyState {
                    bundle: Arc::new(bundle),
                    compiled: Arc::new(compiled),
                    generation: m.generation,
                    refused: None,
                    endpoints,
                }));
                m.last_refusal = None;
                m.accepted = Some((set.clone(), source));
            }
            Err(e) => {
                if m.last_refusal.as_deref() != Some(e.as_str()) {
                    tracing::error!(
                        error = %e,
                        saved = source == Source::Saved,
                        "the objects do not load; the policy in force stays unchanged"
                    );
                    self.counters.load_failures.fetch_add(1, Ordering::Relaxed);
                    self.state.send_modify(|s| {
                        let mut next = (**s).clone();
                        next.refused = Some(e.clone());
                        *s = Arc::new(next);
                    });
                    m.last_refusal = Some(e);
                }
            }
        }
        m.in_force = Some((set, nodes));
    }

    /// Saves the set accepted from the store, with the node addresses and identity numbers it
    /// is compiled with and the interfaces it is enforced on, whenever one of them changed.
    fn save(&self, m: &mut Memory, interfaces: Vec<String>) {
        let Some((set, Source::Store)) = &m.accepted else {
            return;
        };
        let now = (m.generation, interfaces);
        if m.saved_as.as_ref() == Some(&now) {
            return;
        }
        let state = self.state.borrow().clone();
        let nodes = state
            .bundle
            .nodes
            .values()
            .map(|n| (n.name.clone(), n.ips.clone()))
            .collect();
        let identities = state
            .compiled
            .identities
            .iter()
            .filter(|(_, labels)| labels.allocation_range().is_some())
            .map(|(id, labels)| (labels.key(), id))
            .collect();
        let record = Saved::new(&self.node_name, set, nodes, identities, now.1.clone());
        match self.saved.save(&record) {
            Ok(()) => m.saved_as = Some(now),
            Err(e) => tracing::error!(
                "saving the accepted policy: {e}; after a reboot with the store unreachable, \
                 this node would enforce an older policy or none"
            ),
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
        add_node_addresses(bundle, &BTreeMap::from([(self.node_name.clone(), addrs)]));
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
}

/// Adds node addresses (node name → addresses) to the bundle's nodes.
fn add_node_addresses(bundle: &mut Bundle, nodes: &BTreeMap<String, Vec<IpAddr>>) {
    for (name, ips) in nodes {
        let node = node_entry(bundle, name);
        for ip in ips {
            if !node.ips.contains(ip) {
                node.ips.push(*ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_data_path_waits_for_the_host_programs_on_its_new_device() {
        let none = PassReport::default();
        assert!(
            none.host_settled_on(9),
            "no host endpoint: nothing to wait for"
        );
        let old = PassReport {
            passes: 3,
            host_wanted: true,
            host_on: Some(5),
        };
        assert!(!old.host_settled_on(9), "still on the old device");
        let new = PassReport {
            host_on: Some(9),
            ..old
        };
        assert!(new.host_settled_on(9));
        let detached = PassReport {
            host_on: None,
            ..old
        };
        assert!(!detached.host_settled_on(9), "wanted but not attached");
    }
}
