//! The loading half of a pass (pure): which set is in force, and loading a changed one into the
//! policy in force, with this host's addresses and identity numbers allocated cluster-wide (or,
//! for the saved set, the ones it was compiled with).
//!
//! It must never replace the policy in force with a set that does not load, nor with the
//! store's content before the store has listed it once.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use keymgr::store::objects::{ObjectSet, Wanted};
use keymgr::{Snapshot, StoreError};
use policy::{Bundle, Compiled, Identities};

use super::action::{Action, NetlinkError};
use super::planner::{Planner, Step, Taking};
use super::saved::{self, Source};
use super::{load, node_entry, PolicyState};

impl Planner {
    /// Picks the set in force for this pass and takes it if it changed; then enforces.
    pub(super) fn take_or_keep(&mut self) {
        let source = saved::source(self.objects.synced, self.saved.is_some());
        let set = match source {
            Source::Store => Some(self.objects.clone()),
            Source::Saved => self.saved.as_ref().map(|s| s.set.clone()),
            Source::Nothing => None,
        };
        let nodes = self.nodes.clone();
        if let Some(set) = set {
            let changed = (self.m.allocation_failed && source == Source::Store)
                || self
                    .m
                    .in_force
                    .as_ref()
                    .is_none_or(|(s, n)| !Arc::ptr_eq(s, &set) || !Arc::ptr_eq(n, &nodes));
            if changed {
                self.take(set, nodes, source);
                return;
            }
        }
        self.enforce(source);
    }

    /// Loads `set` (with `nodes`): on to this host's addresses, or keeps the policy in force if
    /// it does not load.
    fn take(&mut self, set: Arc<ObjectSet>, nodes: Arc<Snapshot>, source: Source) {
        if source == Source::Store {
            for (origin, reason) in &set.unreadable {
                tracing::warn!(origin, "store entry is not a wiremesh object: {reason}");
            }
        }
        match load(&set, &nodes) {
            Ok(bundle) => {
                self.step = Step::Addresses(Box::new(Taking {
                    source,
                    set,
                    nodes,
                    bundle,
                }));
                self.actions.push_back(Action::ListLocalAddresses);
            }
            Err(e) => {
                self.refuse(e.to_string(), source);
                self.m.in_force = Some((set, nodes));
                self.enforce(source);
            }
        }
    }

    /// This host's own addresses (e.g. a pod gateway address inside its pod CIDR, which peers
    /// reach through the tunnel) belong to its node: the `host` identity here.
    pub fn handle_local_addresses(&mut self, addrs: Result<Vec<IpAddr>, NetlinkError>) {
        let Some(mut t) = self.expect_step("host addresses", |s| match s {
            Step::Addresses(t) => Ok(t),
            other => Err(other),
        }) else {
            return;
        };
        match addrs {
            Ok(a) => {
                let own = BTreeMap::from([(self.cfg.node_name.clone(), a)]);
                add_node_addresses(&mut t.bundle, &own);
            }
            Err(e) => tracing::warn!("listing this host's addresses: {e}"),
        }
        if let (Source::Saved, Some(s)) = (t.source, &self.saved) {
            add_node_addresses(&mut t.bundle, &s.saved.nodes);
            self.m.allocation_failed = false;
            let ids =
                Identities::build_with(&t.bundle, &|l| s.saved.identities.get(&l.key()).copied());
            self.accept(*t, ids);
            return;
        }
        let local = Identities::build(&t.bundle);
        let wanted = wanted(&local);
        self.step = Step::Identities(Box::new((*t, local)));
        self.actions.push_back(Action::AllocateIdentities(wanted));
    }

    /// The identity numbers the store allocated. If it could not (unreachable), numbers are
    /// derived locally for now (they never leave this node) and the set is taken again at the
    /// next pass.
    pub fn handle_identities(&mut self, assigned: Result<BTreeMap<String, u32>, StoreError>) {
        let Some((t, local)) = self.expect_step("identity allocation", |s| match s {
            Step::Identities(taking) => Ok(*taking),
            other => Err(other),
        }) else {
            return;
        };
        let ids = match assigned {
            Ok(assigned) => {
                self.m.allocation_failed = false;
                Identities::build_with(&t.bundle, &|l| assigned.get(&l.key()).copied())
            }
            Err(e) => {
                tracing::warn!(
                    "cannot allocate identities through the store ({e}); numbering them locally \
                     until it answers"
                );
                self.m.allocation_failed = true;
                local
            }
        };
        self.accept(t, ids);
    }

    /// Compiles the loaded set into the policy in force, then enforces.
    fn accept(&mut self, t: Taking, identities: Identities) {
        if t.source == Source::Saved {
            tracing::warn!(
                file = %self.cfg.saved_path.display(),
                objects = t.set.objects.len(),
                "the store has not answered yet: enforcing the policy this node last accepted"
            );
        } else if self
            .m
            .accepted
            .as_ref()
            .is_some_and(|(_, s)| *s == Source::Saved)
        {
            tracing::info!("the store answered: its objects replace the saved policy");
        }
        let compiled = Compiled::build_for(&t.bundle, identities, Some(&self.cfg.node_name));
        let state = PolicyState {
            bundle: Arc::new(t.bundle),
            compiled: Arc::new(compiled),
            generation: self.state.generation + 1,
            refused: None,
            endpoints: self.state.endpoints.clone(),
        };
        self.publish(state);
        self.m.loaded = true;
        self.m.last_refusal = None;
        self.m.accepted = Some((t.set.clone(), t.source));
        self.m.in_force = Some((t.set, t.nodes));
        self.enforce(t.source);
    }

    /// Keeps the policy in force; a new reason is logged, counted and published once.
    fn refuse(&mut self, why: String, source: Source) {
        if self.m.last_refusal.as_deref() == Some(why.as_str()) {
            return;
        }
        tracing::error!(
            error = %why,
            saved = source == Source::Saved,
            "the objects do not load; the policy in force stays unchanged"
        );
        self.counters.load_failures.fetch_add(1, Ordering::Relaxed);
        let mut next = (*self.state).clone();
        next.refused = Some(why.clone());
        self.publish(next);
        self.m.last_refusal = Some(why);
    }
}

/// The label sets that need a number allocated cluster-wide.
fn wanted(local: &Identities) -> Vec<Wanted> {
    local
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
        .collect()
}

/// Adds node addresses (node name → addresses) to the bundle's nodes.
pub(super) fn add_node_addresses(bundle: &mut Bundle, nodes: &BTreeMap<String, Vec<IpAddr>>) {
    for (name, ips) in nodes {
        let node = node_entry(bundle, name);
        for ip in ips {
            if !node.ips.contains(ip) {
                node.ips.push(*ip);
            }
        }
    }
}
