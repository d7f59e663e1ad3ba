//! The policy loop's I/O shell: feeds the [`Planner`] the store's objects and node records, the
//! kernel's link and route notifications and the time, and carries out its actions: netlink
//! look-ups, the enforcer (blocking: on tokio's blocking pool, one call at a time, never on a
//! runtime thread), the saved file, and the `state` and `passes` watch channels.
//!
//! It decides nothing: what to take, attach, apply or save is the planner's. It returns only on
//! a fatal error (a blocking task that panicked, which takes the enforcer with it): the caller
//! may start a fresh loop with a re-opened enforcer, which finds the maps pinned and the saved
//! file where this one left them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use keymgr::store::objects::{ObjectSet, ObjectStore};
use keymgr::Snapshot;
use tokio::sync::{mpsc, watch};
use wiremesh_datapath::netlink::Netlink;
use wiremesh_enforce::Enforcer;

use super::action::{
    Action, AttachOps, AttachResults, HostOp, HostResult, NetlinkError, Observation, RouteLookup,
};
use super::planner::{PassReport, Planner, PlannerConfig, RESYNC_EVERY};
use super::saved::{Saved, SavedError, SavedFile};
use super::{PolicyCounters, PolicyState};

/// Clone it to start the loop again (a supervisor's restart): every field is a handle.
#[derive(Clone)]
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

/// Why the policy loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoopError {
    #[error("the policy loop's blocking task ({what}) failed: {source}")]
    Blocking {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("the policy planner asked for {what} with enforcement off (a bug)")]
    NoEnforcer { what: &'static str },
}

impl PolicyLoop {
    /// Runs until a fatal error; `enforcer` is `None` when enforcement is off (the policy is
    /// still loaded and published, for the online trace; nothing is attached or saved).
    pub async fn run(mut self, enforcer: Option<Enforcer>) -> Result<(), PolicyLoopError> {
        let mut events = match wiremesh_datapath::link_events::subscribe() {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!("{e:#}; re-created interfaces get their policy programs within {RESYNC_EVERY:?} only");
                None
            }
        };
        let cfg = PlannerConfig {
            node_name: self.node_name.clone(),
            wg_ifname: self.wg_ifname.clone(),
            saved_path: self.saved.path().to_path_buf(),
            enforcing: enforcer.is_some(),
            // Maps created empty: a reboot (or a first start), not a restarted agent.
            fresh_maps: enforcer.as_ref().is_some_and(|e| !e.holds_policy()),
        };
        let initial = self.state.borrow().clone();
        let mut planner = Planner::new(cfg, self.counters.clone(), initial, Instant::now());
        let (file, node) = (self.saved.clone(), self.node_name.clone());
        planner.handle_saved(blocking("reading the saved policy", move || file.load(&node)).await?);
        planner.handle_objects(self.objects.borrow_and_update().clone());
        planner.handle_nodes(self.nodes.borrow_and_update().clone());
        let mut enforcer = BlockingEnforcer(enforcer);
        loop {
            while let Some(action) = planner.poll_action() {
                self.execute(&mut planner, &mut enforcer, action).await?;
            }
            let deadline = tokio::time::Instant::from_std(planner.poll_timeout());
            tokio::select! {
                Ok(()) = self.objects.changed() => {
                    planner.handle_objects(self.objects.borrow_and_update().clone());
                }
                Ok(()) = self.nodes.changed() => {
                    planner.handle_nodes(self.nodes.borrow_and_update().clone());
                }
                Some(()) = next_event(&mut events) => planner.handle_link_event(),
                () = tokio::time::sleep_until(deadline) => planner.handle_timeout(Instant::now()),
            }
            // A pass starts from the newest of every input, as one change woke it.
            if self.objects.has_changed().unwrap_or(false) {
                planner.handle_objects(self.objects.borrow_and_update().clone());
            }
            if self.nodes.has_changed().unwrap_or(false) {
                planner.handle_nodes(self.nodes.borrow_and_update().clone());
            }
        }
    }

    async fn execute(
        &self,
        planner: &mut Planner,
        enforcer: &mut BlockingEnforcer,
        action: Action,
    ) -> Result<(), PolicyLoopError> {
        match action {
            Action::ListLocalAddresses => {
                let addrs = self.netlink.local_addresses().await.map_err(NetlinkError);
                planner.handle_local_addresses(addrs);
            }
            Action::AllocateIdentities(wanted) => {
                planner.handle_identities(self.store.allocate(wanted).await);
            }
            Action::PublishState(state) => {
                self.state.send_replace(state);
            }
            Action::Observe(endpoints) => planner.handle_links(self.observe(endpoints).await),
            Action::Attach(ops) => {
                let done = enforcer
                    .call("attaching programs", move |e| carry_out(e, ops))
                    .await?;
                planner.handle_attach_result(done);
            }
            Action::Apply(desired) => {
                let result = enforcer
                    .call("applying the maps", move |e| e.apply(&desired))
                    .await?;
                planner.handle_apply_result(result);
            }
            Action::ReadCounters(names) => self.read_counters(enforcer, names).await?,
            Action::Save(record) => {
                let result = self.save(*record).await?;
                planner.handle_save_result(result);
            }
            Action::PublishReport(report) => {
                self.passes.send_replace(report);
            }
        }
        Ok(())
    }

    /// The interfaces, then the route to each endpoint's address.
    async fn observe(&self, endpoints: Vec<(String, IpAddr)>) -> Result<Observation, NetlinkError> {
        let links = self.netlink.links().await.map_err(NetlinkError)?;
        let mut routes = Vec::with_capacity(endpoints.len());
        for (endpoint, ip) in endpoints {
            let route = self.netlink.route_to(ip).await.map_err(NetlinkError);
            routes.push(RouteLookup {
                endpoint,
                ip,
                route,
            });
        }
        Ok(Observation { links, routes })
    }

    async fn read_counters(
        &self,
        enforcer: &mut BlockingEnforcer,
        names: BTreeMap<u32, String>,
    ) -> Result<(), PolicyLoopError> {
        match enforcer.call("reading counters", |e| e.counters()).await? {
            Ok(counters) => {
                let named = counters
                    .into_iter()
                    .filter_map(|c| Some((names.get(&c.ifindex)?.clone(), c)))
                    .collect();
                if let Ok(mut p) = self.counters.packets.lock() {
                    *p = named;
                }
            }
            Err(e) => tracing::debug!("reading policy counters: {e}"),
        }
        Ok(())
    }

    async fn save(&self, record: Saved) -> Result<Result<(), SavedError>, PolicyLoopError> {
        let file = self.saved.clone();
        blocking("saving the policy", move || file.save(&record)).await
    }
}

async fn next_event(events: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    events.as_mut()?.recv().await
}

/// Runs blocking file I/O off the runtime's threads.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PolicyLoopError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| PolicyLoopError::Blocking { what, source })
}

/// The enforcer, lent to the blocking pool for one call at a time.
struct BlockingEnforcer(Option<Enforcer>);

impl BlockingEnforcer {
    async fn call<T: Send + 'static>(
        &mut self,
        what: &'static str,
        f: impl FnOnce(&mut Enforcer) -> T + Send + 'static,
    ) -> Result<T, PolicyLoopError> {
        let Some(mut enforcer) = self.0.take() else {
            return Err(PolicyLoopError::NoEnforcer { what });
        };
        let (enforcer, out) = blocking(what, move || {
            let out = f(&mut enforcer);
            (enforcer, out)
        })
        .await?;
        self.0 = Some(enforcer);
        Ok(out)
    }
}

/// Carries out the enforcer calls of an attachment plan (blocking netlink calls).
fn carry_out(enf: &mut Enforcer, ops: AttachOps) -> AttachResults {
    let attached = ops
        .attach
        .into_iter()
        .map(|name| {
            let result = enf.attach(&name);
            (name, result)
        })
        .collect();
    let detached = ops
        .detach
        .into_iter()
        .map(|name| {
            let result = enf.detach(&name);
            (name, result)
        })
        .collect();
    let host = ops.host.map(|op| match op {
        HostOp::Attach => HostResult::Attached(enf.attach_host(&ops.wg)),
        HostOp::Tunnel => HostResult::Tunnel(enf.attach_tunnel(&ops.wg)),
    });
    AttachResults {
        attached,
        detached,
        host,
    }
}
