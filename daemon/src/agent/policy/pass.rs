//! One enforcement pass: finds each local endpoint's host-side interface (route lookup), puts
//! the programs on every interface that needs them and takes them off the others
//! ([`super::attach::plan`]), and brings the maps to the policy in force.
//!
//! It must never leave an endpoint's interface open while that endpoint has a policy: an
//! interface whose endpoint cannot be resolved for a moment keeps the programs without an
//! endpoint config, which drops everything.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use wiremesh_enforce::{Desired, Enforcer};

use super::attach::{self, Attached, HostAction, Observed, Plan};
use super::run::PolicyLoop;

/// What a pass found, for the loop.
pub(super) struct Outcome {
    /// Whether a host policy selects this node.
    pub host_wanted: bool,
    /// The interfaces the local endpoints are enforced on.
    pub interfaces: Vec<String>,
}

impl PolicyLoop {
    /// Attaches the programs where they are needed and brings the maps to the policy in force.
    /// `closed`: interfaces to keep closed whatever the policy says. `None` if the interfaces
    /// cannot be listed (nothing is changed then).
    pub(super) async fn enforce(
        &mut self,
        enf: &mut Enforcer,
        attached: &mut Attached,
        closed: &[String],
    ) -> Option<Outcome> {
        let state = self.state.borrow().clone();
        let links = match self.netlink.links().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("listing interfaces: {e:#}; policy pass skipped");
                return None;
            }
        };
        let wg_ifindex = links.get(&self.wg_ifname).copied();
        let mut resolved = BTreeMap::new();
        let mut unresolved = Vec::new();
        let mut report = BTreeMap::new();
        for (name, ip) in local_endpoints(&state.bundle, &self.node_name) {
            match self.host_interface(ip, wg_ifindex).await {
                Ok(iface) => {
                    resolved.insert(name, iface);
                }
                Err(why) => {
                    report.insert(name.clone(), Err(why));
                    unresolved.push(name);
                }
            }
        }
        let host_map = state.compiled.host_maps.get(&self.node_name);
        let seen = Observed {
            links: &links,
            resolved: &resolved,
            unresolved: &unresolved,
            closed,
            wg: &self.wg_ifname,
            host_wanted: host_map.is_some(),
        };
        let plan = attach::plan(attached, &seen);
        attach::remember(attached, &seen);
        for name in &plan.closed {
            tracing::info!(interface = %name, "policy programs on an interface whose endpoint is not resolved (or not loaded): it drops everything until it is");
        }
        tokio::task::block_in_place(|| carry_out(enf, attached, &plan, &self.wg_ifname));

        let mut ifindexes = BTreeMap::new();
        for (ep, (ifname, ifindex)) in &resolved {
            if attached.pods.get(ifname) == Some(ifindex) {
                ifindexes.insert(ep.clone(), *ifindex);
                report.insert(ep.clone(), Ok(ifname.clone()));
            } else {
                report.insert(
                    ep.clone(),
                    Err(format!("the policy programs are not attached to {ifname}")),
                );
            }
        }
        let mut desired = Desired::from_compiled(
            &state.compiled.identities,
            &state.compiled.maps,
            &state.bundle,
            Some(&self.node_name),
            &ifindexes,
        );
        // This node as a host endpoint, on the WireGuard device it has now.
        if let (Some(map), Some(on)) = (host_map, attached.host) {
            if Some(on) == wg_ifindex {
                desired.add_endpoint(on, policy::identity::HOST, map);
                report.insert(
                    format!("host/{}", self.node_name),
                    Ok(self.wg_ifname.clone()),
                );
            }
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
        self.read_counters(enf, &ifindexes);
        if state.endpoints != report {
            self.state.send_modify(|s| {
                let mut next = (**s).clone();
                next.endpoints = report;
                *s = std::sync::Arc::new(next);
            });
        }
        let mut interfaces: Vec<String> = resolved
            .into_iter()
            .filter(|(ep, _)| ifindexes.contains_key(ep))
            .map(|(_, (ifname, _))| ifname)
            .collect();
        interfaces.sort();
        interfaces.dedup();
        Some(Outcome {
            host_wanted: host_map.is_some(),
            interfaces,
        })
    }

    fn read_counters(&self, enf: &Enforcer, ifindexes: &BTreeMap<String, u32>) {
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
    }

    /// The interface the node routes `ip` to, which must be a local one (not the tunnel, not via
    /// a gateway): the endpoint's host-side veth, as CNIs such as Calico set it up.
    async fn host_interface(
        &self,
        ip: IpAddr,
        wg_ifindex: Option<u32>,
    ) -> Result<(String, u32), String> {
        let route = self
            .netlink
            .route_to(ip)
            .await
            .map_err(|e| format!("route lookup: {e:#}"))?;
        match route {
            None => Err(format!("no route to {ip}")),
            Some(r) if Some(r.ifindex) == wg_ifindex || r.ifname == self.wg_ifname => Err(format!(
                "{ip} is routed into the tunnel, not to a local interface"
            )),
            Some(r) if r.gateway => Err(format!("{ip} is routed via a gateway ({})", r.ifname)),
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

/// Carries out the attachment plan (blocking netlink calls), recording what now carries the
/// programs.
fn carry_out(enf: &mut Enforcer, attached: &mut Attached, plan: &Plan, wg: &str) {
    for (name, _) in &plan.attach {
        match enf.attach(name) {
            Ok(index) => {
                attached.pods.insert(name.clone(), index);
            }
            Err(e) => {
                tracing::error!(interface = %name, "{e}");
                attached.pods.remove(name);
            }
        }
    }
    for name in &plan.detach {
        // The interface may be going away as we speak.
        if let Err(e) = enf.detach(name) {
            tracing::debug!(interface = %name, "detach: {e}");
        }
        attached.pods.remove(name);
    }
    for name in &plan.forget {
        attached.pods.remove(name);
    }
    match plan.host {
        HostAction::Keep => {}
        HostAction::Attach(_) => match enf.attach_host(wg) {
            Ok(index) => attached.host = Some(index),
            Err(e) => {
                tracing::error!(interface = %wg, "host endpoint: {e}");
                attached.host = None;
            }
        },
        HostAction::Detach => {
            if let Err(e) = enf.detach(wg) {
                tracing::warn!(interface = %wg, "host endpoint detach: {e}");
            }
            attached.host = None;
        }
        HostAction::Forget => attached.host = None,
    }
}
