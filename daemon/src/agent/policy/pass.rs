//! The enforcing half of a pass (pure): from the interfaces and routes the kernel lists, which
//! interface each local endpoint is enforced on, which interfaces carry the programs
//! ([`super::attach::plan`]), what the maps hold, and when the accepted set is saved.
//!
//! It must never leave an endpoint's interface open while that endpoint has a policy: an
//! interface whose endpoint cannot be resolved for a moment keeps the programs without an
//! endpoint config, which drops everything; an endpoint gets its config only on an interface
//! whose programs are attached.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use wiremesh_enforce::{Desired, EnforceError};

use super::action::{
    Action, AttachOps, AttachResults, HostOp, HostResult, NetlinkError, Observation, RouteLookup,
};
use super::attach::{self, HostAction, Observed, Plan};
use super::planner::{Enforcing, PassReport, Planner, Step};
use super::saved::{self, Saved, SavedError, Source};
use super::NotEnforced;

impl Planner {
    /// Enforces the policy in force, unless there is nothing to enforce: with nothing known
    /// yet, the pinned maps of the previous run stay untouched.
    pub(super) fn enforce(&mut self, source: Source) {
        let closed = saved::closed_interfaces(
            self.m.loaded,
            self.cfg.fresh_maps,
            self.saved.as_ref().map(|s| &s.saved),
        );
        let act = source != Source::Nothing || !closed.is_empty();
        if !act || !self.cfg.enforcing {
            self.finish_pass(PassReport::default());
            return;
        }
        let endpoints = local_endpoints(&self.state.bundle, &self.cfg.node_name);
        self.step = Step::Links { closed };
        self.actions.push_back(Action::Observe(endpoints));
    }

    /// The interfaces and routes the kernel lists now: plans the attachments.
    pub fn handle_links(&mut self, seen: Result<Observation, NetlinkError>) {
        let Some(closed) = self.expect_step("interface listing", |s| match s {
            Step::Links { closed } => Ok(closed),
            other => Err(other),
        }) else {
            return;
        };
        let seen = match seen {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("listing interfaces: {e}; policy pass skipped");
                let report = PassReport {
                    host_on: self.m.attached.host,
                    ..PassReport::default()
                };
                self.finish_pass(report);
                return;
            }
        };
        let wg_ifindex = seen.links.get(&self.cfg.wg_ifname).copied();
        let mut resolved = BTreeMap::new();
        let mut unresolved = Vec::new();
        let mut report = BTreeMap::new();
        for lookup in seen.routes {
            let endpoint = lookup.endpoint.clone();
            match self.host_interface(lookup, wg_ifindex) {
                Ok(iface) => {
                    resolved.insert(endpoint, iface);
                }
                Err(why) => {
                    report.insert(endpoint.clone(), Err(why));
                    unresolved.push(endpoint);
                }
            }
        }
        let host_wanted = self
            .state
            .compiled
            .host_maps
            .contains_key(&self.cfg.node_name);
        let observed = Observed {
            links: &seen.links,
            resolved: &resolved,
            unresolved: &unresolved,
            closed: &closed,
            wg: &self.cfg.wg_ifname,
            host_wanted,
        };
        let plan = attach::plan(&self.m.attached, &observed);
        attach::remember(&mut self.m.attached, &observed);
        for name in &plan.closed {
            tracing::info!(interface = %name, "policy programs on an interface whose endpoint is not resolved (or not loaded): it drops everything until it is");
        }
        let ops = self.forget_and_ops(&plan);
        let e = Enforcing {
            wg_ifindex,
            resolved,
            report,
            host_wanted,
            ifindexes: BTreeMap::new(),
        };
        if ops.is_empty() {
            self.apply(e);
        } else {
            self.step = Step::Attach(e);
            self.actions.push_back(Action::Attach(ops));
        }
    }

    /// Does the pure part of `plan` (forgetting what is gone) and returns the enforcer calls.
    fn forget_and_ops(&mut self, plan: &Plan) -> AttachOps {
        for name in &plan.forget {
            self.m.attached.pods.remove(name);
        }
        let host = match plan.host {
            HostAction::Keep => None,
            HostAction::Attach(_) => Some(HostOp::Attach),
            HostAction::Tunnel(_) => Some(HostOp::Tunnel),
            HostAction::Forget => {
                self.m.attached.host = None;
                self.m.attached.tunnel = None;
                None
            }
        };
        AttachOps {
            attach: plan.attach.iter().map(|(name, _)| name.clone()).collect(),
            detach: plan.detach.clone(),
            host,
            wg: self.cfg.wg_ifname.clone(),
        }
    }

    /// What the enforcer attached and detached: remembered, then on to the maps.
    pub fn handle_attach_result(&mut self, done: AttachResults) {
        let Some(e) = self.expect_step("attach result", |s| match s {
            Step::Attach(e) => Ok(e),
            other => Err(other),
        }) else {
            return;
        };
        let attached = &mut self.m.attached;
        for (name, result) in done.attached {
            match result {
                Ok(index) => {
                    attached.pods.insert(name, index);
                }
                Err(err) => {
                    tracing::error!(interface = %name, "{err}");
                    attached.pods.remove(&name);
                }
            }
        }
        for (name, result) in done.detached {
            // The interface may be going away as we speak.
            if let Err(err) = result {
                tracing::debug!(interface = %name, "detach: {err}");
            }
            attached.pods.remove(&name);
        }
        let wg = &self.cfg.wg_ifname;
        match done.host {
            None => {}
            Some(HostResult::Attached(Ok(index))) => {
                attached.host = Some(index);
                attached.tunnel = None;
            }
            Some(HostResult::Attached(Err(err))) => {
                tracing::error!(interface = %wg, "host endpoint: {err}");
                attached.host = None;
            }
            Some(HostResult::Tunnel(Ok(index))) => {
                attached.tunnel = Some(index);
                attached.host = None;
            }
            Some(HostResult::Tunnel(Err(err))) => {
                // Not fail-open: a SYN for a pod's HTTP rules that is not redirected is dropped
                // at the pod's interface. Retried next pass.
                tracing::error!(interface = %wg, "the tunnel's L7 redirect program: {err}");
                attached.tunnel = None;
            }
        }
        self.apply(e);
    }

    /// The maps for the endpoints whose interface carries the programs now.
    fn apply(&mut self, mut e: Enforcing) {
        let state = self.state.clone();
        for (ep, (ifname, ifindex)) in &e.resolved {
            if self.m.attached.pods.get(ifname) == Some(ifindex) {
                e.ifindexes.insert(ep.clone(), *ifindex);
                e.report.insert(ep.clone(), Ok(ifname.clone()));
            } else {
                let not = NotEnforced::NotAttached {
                    ifname: ifname.clone(),
                };
                e.report.insert(ep.clone(), Err(not));
            }
        }
        let node = &self.cfg.node_name;
        let mut desired = Desired::from_compiled(
            &state.compiled.identities,
            &state.compiled.maps,
            &state.bundle,
            Some(node),
            &e.ifindexes,
        );
        // This node as a host endpoint, on the WireGuard device it has now.
        let host_map = state.compiled.host_maps.get(node);
        if let (Some(map), Some(on)) = (host_map, self.m.attached.host) {
            if Some(on) == e.wg_ifindex {
                desired.add_endpoint(on, policy::identity::HOST, map);
                let wg = self.cfg.wg_ifname.clone();
                e.report.insert(format!("host/{node}"), Ok(wg));
            }
        }
        self.step = Step::Apply(e);
        self.actions.push_back(Action::Apply(Box::new(desired)));
    }

    /// The outcome of bringing the maps to the policy: a failure has failed the endpoints it
    /// touched closed (the enforcer does that) and the next pass applies again.
    pub fn handle_apply_result(&mut self, result: Result<(), EnforceError>) {
        let Some(e) = self.expect_step("apply result", |s| match s {
            Step::Apply(e) => Ok(e),
            other => Err(other),
        }) else {
            return;
        };
        match result {
            Ok(()) => {
                self.counters.applies.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.counters.apply_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!("policy enforcement: {err}");
            }
        }
        let names = e.ifindexes.iter().map(|(n, i)| (*i, n.clone())).collect();
        self.actions.push_back(Action::ReadCounters(names));
        if self.state.endpoints != e.report {
            let mut next = (*self.state).clone();
            next.endpoints = e.report;
            self.publish(next);
        }
        let mut interfaces: Vec<String> = e
            .resolved
            .into_iter()
            .filter(|(ep, _)| e.ifindexes.contains_key(ep))
            .map(|(_, (ifname, _))| ifname)
            .collect();
        interfaces.sort();
        interfaces.dedup();
        let report = PassReport {
            host_wanted: e.host_wanted,
            host_on: self.m.attached.host,
            ..PassReport::default()
        };
        self.save(report, interfaces);
    }

    /// Saves the set accepted from the store, with the node addresses and identity numbers it
    /// is compiled with and the interfaces it is enforced on, whenever one of them changed.
    fn save(&mut self, report: PassReport, interfaces: Vec<String>) {
        let Some((set, Source::Store)) = &self.m.accepted else {
            return self.finish_pass(report);
        };
        let now = (self.state.generation, interfaces);
        if self.m.saved_as.as_ref() == Some(&now) {
            return self.finish_pass(report);
        }
        let nodes = self
            .state
            .bundle
            .nodes
            .values()
            .map(|n| (n.name.clone(), n.ips.clone()))
            .collect();
        let identities = self
            .state
            .compiled
            .identities
            .iter()
            .filter(|(_, labels)| labels.allocation_range().is_some())
            .map(|(id, labels)| (labels.key(), id))
            .collect();
        let record = Saved::new(&self.cfg.node_name, set, nodes, identities, now.1.clone());
        self.step = Step::Save(report, now);
        self.actions.push_back(Action::Save(Box::new(record)));
    }

    /// Whether the accepted set reached the disk; if not it is written again at the next pass.
    pub fn handle_save_result(&mut self, result: Result<(), SavedError>) {
        let Some((report, now)) = self.expect_step("save result", |s| match s {
            Step::Save(report, now) => Ok((report, now)),
            other => Err(other),
        }) else {
            return;
        };
        match result {
            Ok(()) => self.m.saved_as = Some(now),
            Err(e) => tracing::error!(
                "saving the accepted policy: {e}; after a reboot with the store unreachable, \
                 this node would enforce an older policy or none"
            ),
        }
        self.finish_pass(report);
    }

    /// The interface the node routes the endpoint's address to, which must be a local one (not
    /// the tunnel, not via a gateway): the endpoint's host-side veth, as CNIs such as Calico
    /// set it up.
    fn host_interface(
        &self,
        lookup: RouteLookup,
        wg_ifindex: Option<u32>,
    ) -> Result<(String, u32), NotEnforced> {
        let ip = lookup.ip;
        let route = lookup.route.map_err(|e| NotEnforced::RouteLookup {
            reason: e.to_string(),
        })?;
        match route {
            None => Err(NotEnforced::NoRoute { ip }),
            Some(r) if Some(r.ifindex) == wg_ifindex || r.ifname == self.cfg.wg_ifname => {
                Err(NotEnforced::Tunnel { ip })
            }
            Some(r) if r.gateway => Err(NotEnforced::Gateway {
                ip,
                ifname: r.ifname,
            }),
            Some(r) => Ok((r.ifname, r.ifindex)),
        }
    }
}

/// This node's endpoints: `namespace/name` and the address that names each (IPv4 first).
fn local_endpoints(bundle: &policy::Bundle, node: &str) -> Vec<(String, IpAddr)> {
    bundle
        .endpoints
        .iter()
        .filter(|ep| ep.node.as_deref() == Some(node))
        .filter_map(|ep| {
            let mut ips = ep.ips.clone();
            ips.sort_by_key(|ip| !ip.is_ipv4());
            ips.first().map(|ip| (ep.qualified_name(), *ip))
        })
        .collect()
}
