//! Bringing the maps to a [`Desired`] state, make-before-break, failing closed on error.

use std::time::Instant;

use ipnet::IpNet;

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::MapError;
use tracing::{error, info};

use super::maps::{IpcacheData, IpcacheValue, PolicyKey, PolicyValue};
use super::{plan, Desired, EnforceError, Enforcer, Plan};

/// Failed updates: the endpoint they affect (`None`: the shared ipcache, so every endpoint) and
/// what failed.
type Failures = Vec<(Option<u32>, String)>;
type IpcachePlan = Plan<IpNet, u32>;
type PolicyPlan = Plan<PolicyKey, u32>;

impl Enforcer {
    /// Brings the maps to `desired`, incrementally and make-before-break: new and changed
    /// entries first, stale ones last, so a flow allowed before and after is never denied in
    /// between (established flows ride on connection tracking regardless).
    ///
    /// A failed update marks the endpoints it affects fail-closed (all of them if the shared
    /// ipcache failed), logs at ERROR and returns [`EnforceError::FailClosed`].
    pub fn apply(&mut self, desired: &Desired) -> Result<(), EnforceError> {
        let started = Instant::now();
        let mut failures: Failures = Vec::new();

        let ipcache_plan = plan(&self.ipcache_state, &desired.ipcache);
        let policy_plan = plan(&self.policy_state, &desired.policy);
        self.upsert(&ipcache_plan, &policy_plan, &mut failures);
        self.write_endpoints(desired, &mut failures);
        // Removals only once everything new is in place.
        self.remove_stale(desired, &ipcache_plan, &policy_plan, &mut failures);

        let changed = !(policy_plan.upserts.is_empty()
            && policy_plan.removals.is_empty()
            && ipcache_plan.upserts.is_empty()
            && ipcache_plan.removals.is_empty());
        if failures.is_empty() && !changed {
            return Ok(());
        }
        if failures.is_empty() {
            info!(
                policy_upserts = policy_plan.upserts.len(),
                policy_removals = policy_plan.removals.len(),
                ipcache_upserts = ipcache_plan.upserts.len(),
                ipcache_removals = ipcache_plan.removals.len(),
                elapsed = ?started.elapsed(),
                "policy maps updated"
            );
            return Ok(());
        }
        self.fail_closed_after(desired, &failures)
    }

    /// New and changed entries: the ipcache first, then the policy.
    fn upsert(
        &mut self,
        ipcache_plan: &IpcachePlan,
        policy_plan: &PolicyPlan,
        failures: &mut Failures,
    ) {
        for (net, identity) in &ipcache_plan.upserts {
            let (len, data) = IpcacheData::of(net);
            let value = IpcacheValue {
                identity: *identity,
            };
            match self.ipcache.insert(&LpmKey::new(len, data), value, 0) {
                Ok(()) => {
                    self.ipcache_state.insert(*net, *identity);
                }
                Err(e) => failures.push((None, format!("ipcache {net}: {e}"))),
            }
        }
        for (key, flags) in &policy_plan.upserts {
            match self.policy.insert(key, PolicyValue { flags: *flags }, 0) {
                Ok(()) => {
                    self.policy_state.insert(*key, *flags);
                }
                Err(e) => failures.push((Some(key.ifindex), format!("policy {key:?}: {e}"))),
            }
        }
    }

    /// Every wanted endpoint's config, fail-closed where an update for it (or the shared
    /// ipcache) failed.
    fn write_endpoints(&mut self, desired: &Desired, failures: &mut Failures) {
        let failed_all = failures.iter().any(|(ep, _)| ep.is_none());
        let failed_eps: Vec<u32> = failures.iter().filter_map(|(ep, _)| *ep).collect();
        for (&ifindex, config) in &desired.endpoints {
            let fail = failed_all || failed_eps.contains(&ifindex);
            if let Err(e) = self.write_endpoint(ifindex, config.value(fail)) {
                failures.push((Some(ifindex), e.to_string()));
            }
        }
    }

    /// Stale entries and endpoints. A failed removal leaves an entry of the old policy; the
    /// endpoint is failed closed rather than left with it.
    fn remove_stale(
        &mut self,
        desired: &Desired,
        ipcache_plan: &IpcachePlan,
        policy_plan: &PolicyPlan,
        failures: &mut Failures,
    ) {
        for key in &policy_plan.removals {
            match self.policy.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {
                    self.policy_state.remove(key);
                }
                Err(e) => {
                    failures.push((Some(key.ifindex), format!("removing policy {key:?}: {e}")))
                }
            }
        }
        for net in &ipcache_plan.removals {
            let (len, data) = IpcacheData::of(net);
            match self.ipcache.remove(&LpmKey::new(len, data)) {
                Ok(()) | Err(MapError::KeyNotFound) => {
                    self.ipcache_state.remove(net);
                }
                Err(e) => failures.push((None, format!("removing ipcache {net}: {e}"))),
            }
        }
        // Endpoints no longer wanted lose their config (their interfaces drop everything).
        let stale: Vec<u32> = self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !desired.endpoints.contains_key(ifindex))
            .collect();
        for ifindex in stale {
            if let Err(e) = self.remove_endpoint(ifindex) {
                failures.push((Some(ifindex), e.to_string()));
            }
        }
    }

    fn fail_closed_after(
        &mut self,
        desired: &Desired,
        failures: &Failures,
    ) -> Result<(), EnforceError> {
        let mut endpoints: Vec<u32> = if failures.iter().any(|(ep, _)| ep.is_none()) {
            desired.endpoints.keys().copied().collect()
        } else {
            failures.iter().filter_map(|(ep, _)| *ep).collect()
        };
        endpoints.sort_unstable();
        endpoints.dedup();
        for &ifindex in &endpoints {
            if let Err(e) = self.fail_closed(ifindex) {
                // The endpoint map itself refuses: the interface keeps whatever it had.
                error!(ifindex, error = %e, "cannot mark endpoint fail-closed; detach its interface");
            }
        }
        let first = failures.first().map(|(_, m)| m.clone()).unwrap_or_default();
        error!(
            failed = failures.len(),
            ?endpoints,
            first = %first,
            "policy map update failed: endpoints fail closed (drop all) until the next successful apply; \
             check map capacity (bpftool map show) and memlock limits"
        );
        Err(EnforceError::FailClosed {
            failed: failures.len(),
            endpoints,
            first,
        })
    }
}
