//! Unit tests of the policy planner: every input and answer is fed by hand and time is passed
//! in, so each test is a script of what the shell would see.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keymgr::store::objects::{ObjectRef, ObjectSet, StoredObject};
use keymgr::{Snapshot, StoreError};
use wiremesh_datapath::netlink::RouteTo;
use wiremesh_enforce::{Desired, EnforceError};

use super::action::{
    Action, AttachOps, AttachResults, HostOp, HostResult, Observation, RouteLookup,
};
use super::planner::{PassReport, Planner, PlannerConfig, RESYNC_EVERY};
use super::saved::{Saved, SavedError};
use super::{NotEnforced, PolicyCounters, PolicyState};

const NODE: &str = "node-1";
const WG: &str = "wiremesh_wg0";

const POD_A: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: demo, labels: {app: a}}\n\
spec: {nodeName: node-1, containers: [{name: c, image: i}]}\nstatus: {podIPs: [{ip: 10.244.1.10}]}\n";
const POD_B: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: demo, labels: {app: b}}\n\
spec: {nodeName: node-1, containers: [{name: c, image: i}]}\nstatus: {podIPs: [{ip: 10.244.1.11}]}\n";
const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: deny, namespace: demo}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n";
const ALLOW_80: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: allow, namespace: demo}\n\
spec: {podSelector: {matchLabels: {app: a}}, ingress: [{ports: [{port: 80}]}]}\n";
const HOST: &str = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\n\
metadata: {name: host}\nspec:\n  nodeSelector: {matchLabels: {kubernetes.io/hostname: node-1}}\n  \
ingress: [{fromEntities: [cluster]}]\n";
const BAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
metadata: {name: bad, namespace: demo}\nspec: {podSelector: {}, bogus: 1}\n";

/// An object set; `synced`: the store has listed every kind.
fn objects(synced: bool, manifests: &[&str]) -> Arc<ObjectSet> {
    let mut set = ObjectSet {
        synced,
        ..ObjectSet::default()
    };
    for (i, m) in manifests.iter().enumerate() {
        let r = ObjectRef {
            kind: "Test".into(),
            namespace: "demo".into(),
            name: format!("o{i}"),
        };
        let origin = format!("test/o{i}");
        set.objects.insert(
            r,
            StoredObject {
                origin,
                manifest: m.to_string(),
            },
        );
    }
    Arc::new(set)
}

fn planner(fresh_maps: bool, now: Instant) -> (Planner, Arc<PolicyCounters>) {
    let counters = Arc::new(PolicyCounters::default());
    let cfg = PlannerConfig {
        node_name: NODE.into(),
        wg_ifname: WG.into(),
        saved_path: PathBuf::from("/state/policy.json"),
        enforcing: true,
        fresh_maps,
    };
    let state = Arc::new(PolicyState::default());
    let mut p = Planner::new(cfg, counters.clone(), state, now);
    p.handle_saved(Ok(None));
    p.handle_nodes(Arc::new(Snapshot::default()));
    (p, counters)
}

/// What the fake kernel, store, enforcer and disk answer.
struct Env {
    links: BTreeMap<String, u32>,
    routes: BTreeMap<IpAddr, RouteTo>,
    allocation_fails: bool,
    attach_fails: BTreeSet<String>,
    apply_fails: bool,
    save_fails: bool,
}

impl Env {
    /// veth-a (10) routes 10.244.1.10, veth-b (11) 10.244.1.11; the WireGuard device is 5.
    fn new() -> Self {
        let route = |name: &str, ifindex| RouteTo {
            ifindex,
            ifname: name.into(),
            gateway: false,
        };
        Self {
            links: BTreeMap::from([("veth-a".into(), 10), ("veth-b".into(), 11), (WG.into(), 5)]),
            routes: BTreeMap::from([
                (ip("10.244.1.10"), route("veth-a", 10)),
                (ip("10.244.1.11"), route("veth-b", 11)),
            ]),
            allocation_fails: false,
            attach_fails: BTreeSet::new(),
            apply_fails: false,
            save_fails: false,
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn io_error() -> std::io::Error {
    std::io::Error::other("injected")
}

/// What the planner asked for, in order.
#[derive(Debug, Clone, PartialEq)]
enum Did {
    Addresses,
    Allocate,
    State { generation: u64, refused: bool },
    Observe(Vec<String>),
    Attach(AttachOps),
    Apply(Desired),
    Counters,
    Save(Saved),
    Report(PassReport),
}

/// Plays the shell: carries out every action the planner has, answering from `env`.
fn drive(p: &mut Planner, env: &Env) -> Vec<Did> {
    let mut did = Vec::new();
    while let Some(action) = p.poll_action() {
        match action {
            Action::ListLocalAddresses => {
                did.push(Did::Addresses);
                p.handle_local_addresses(Ok(vec![ip("198.18.0.1")]));
            }
            Action::AllocateIdentities(wanted) => {
                did.push(Did::Allocate);
                p.handle_identities(if env.allocation_fails {
                    Err(StoreError::Unavailable {
                        endpoints: "http://etcd".into(),
                        reason: "injected".into(),
                    })
                } else {
                    Ok(wanted.into_iter().map(|w| (w.key, w.preferred)).collect())
                });
            }
            Action::PublishState(s) => did.push(Did::State {
                generation: s.generation,
                refused: s.refused.is_some(),
            }),
            Action::Observe(endpoints) => {
                did.push(Did::Observe(
                    endpoints.iter().map(|e| e.0.clone()).collect(),
                ));
                let routes = endpoints
                    .into_iter()
                    .map(|(endpoint, ip)| RouteLookup {
                        endpoint,
                        ip,
                        route: Ok(env.routes.get(&ip).cloned()),
                    })
                    .collect();
                let links = env.links.clone();
                p.handle_links(Ok(Observation { links, routes }));
            }
            Action::Attach(ops) => {
                did.push(Did::Attach(ops.clone()));
                p.handle_attach_result(attach(env, ops));
            }
            Action::Apply(desired) => {
                did.push(Did::Apply(*desired));
                p.handle_apply_result(if env.apply_fails {
                    Err(EnforceError::FailClosed {
                        failed: 1,
                        endpoints: vec![10],
                        first: "map full".into(),
                    })
                } else {
                    Ok(())
                });
            }
            Action::ReadCounters(_) => did.push(Did::Counters),
            Action::Save(saved) => {
                did.push(Did::Save(*saved));
                p.handle_save_result(if env.save_fails {
                    Err(SavedError::Io {
                        path: "/state/policy.json".into(),
                        source: io_error(),
                    })
                } else {
                    Ok(())
                });
            }
            Action::PublishReport(r) => did.push(Did::Report(r)),
        }
    }
    did
}

fn attach(env: &Env, ops: AttachOps) -> AttachResults {
    let on = |name: &str| -> Result<u32, EnforceError> {
        if env.attach_fails.contains(name) {
            return Err(EnforceError::Interface {
                ifname: name.into(),
                source: io_error(),
            });
        }
        Ok(env.links[name])
    };
    AttachResults {
        attached: ops.attach.iter().map(|n| (n.clone(), on(n))).collect(),
        detached: ops.detach.iter().map(|n| (n.clone(), Ok(()))).collect(),
        host: ops.host.map(|op| match op {
            HostOp::Attach => HostResult::Attached(on(&ops.wg)),
            HostOp::Tunnel => HostResult::Tunnel(on(&ops.wg)),
        }),
    }
}

/// The generations published by a compile (an endpoint report republishes the same one).
fn generations(did: &[Did]) -> Vec<u64> {
    let mut out: Vec<u64> = did
        .iter()
        .filter_map(|d| match d {
            Did::State {
                generation,
                refused: false,
            } => Some(*generation),
            _ => None,
        })
        .collect();
    out.dedup();
    out
}

fn applies(did: &[Did]) -> Vec<&Desired> {
    did.iter()
        .filter_map(|d| match d {
            Did::Apply(desired) => Some(desired),
            _ => None,
        })
        .collect()
}

fn saves(did: &[Did]) -> Vec<&Saved> {
    did.iter()
        .filter_map(|d| match d {
            Did::Save(s) => Some(s),
            _ => None,
        })
        .collect()
}

fn attaches(did: &[Did]) -> Vec<&AttachOps> {
    did.iter()
        .filter_map(|d| match d {
            Did::Attach(ops) => Some(ops),
            _ => None,
        })
        .collect()
}

fn report(did: &[Did]) -> PassReport {
    match did.last() {
        Some(Did::Report(r)) => *r,
        other => panic!("a pass ends with its report, not {other:?}"),
    }
}

fn saved_record(manifests: &[&str], interfaces: &[&str]) -> Saved {
    let interfaces = interfaces.iter().map(|s| s.to_string()).collect();
    Saved::new(
        NODE,
        &objects(true, manifests),
        BTreeMap::new(),
        BTreeMap::new(),
        interfaces,
    )
}

#[test]
fn the_saved_policy_stays_in_force_until_the_store_has_listed_every_kind() {
    let t0 = Instant::now();
    let (mut p, _) = planner(true, t0);
    let env = Env::new();
    p.handle_saved(Ok(Some(saved_record(&[POD_A, DENY], &["veth-a"]))));
    // The store has listed the pods but not the policies yet.
    p.handle_objects(objects(false, &[POD_A]));
    let first = drive(&mut p, &env);
    assert_eq!(generations(&first), vec![1], "the saved set is taken");
    assert_eq!(p.state().bundle.policies.len(), 1, "with its policy");
    let in_force = applies(&first)[0].clone();
    assert!(
        in_force.endpoints.contains_key(&10),
        "demo/a enforced on veth-a"
    );
    assert!(saves(&first).is_empty(), "the saved set is not saved again");

    // More partial listings and ticks: nothing replaces the saved policy.
    for (i, partial) in [objects(false, &[]), objects(false, &[POD_A, ALLOW_80])]
        .into_iter()
        .enumerate()
    {
        p.handle_objects(partial);
        p.handle_timeout(t0 + RESYNC_EVERY * (i as u32 + 1));
        let did = drive(&mut p, &env);
        assert!(generations(&did).is_empty(), "pass {i}: {did:?}");
        assert_eq!(applies(&did), vec![&in_force], "pass {i}: the same maps");
        assert_eq!(p.state().bundle.policies.len(), 1);
    }

    // The first complete listing replaces it, and is saved.
    p.handle_objects(objects(true, &[POD_A]));
    let did = drive(&mut p, &env);
    assert_eq!(generations(&did), vec![2]);
    assert!(p.state().bundle.policies.is_empty(), "the store's set");
    assert_ne!(applies(&did)[0], &in_force);
    assert_eq!(saves(&did).len(), 1);
}

#[test]
fn without_a_saved_policy_the_pinned_maps_are_untouched_until_the_store_has_listed() {
    let t0 = Instant::now();
    let (mut p, _) = planner(false, t0);
    let env = Env::new();
    p.handle_objects(objects(false, &[POD_A]));
    let did = drive(&mut p, &env);
    assert_eq!(
        did,
        vec![Did::Report(PassReport {
            passes: 1,
            ..PassReport::default()
        })],
        "no map or interface is touched, yet the pass is reported for start-up to go on"
    );
    p.handle_timeout(t0 + RESYNC_EVERY);
    let did = drive(&mut p, &env);
    assert!(applies(&did).is_empty() && generations(&did).is_empty());
    assert_eq!(report(&did).passes, 2);

    p.handle_objects(objects(true, &[POD_A, DENY]));
    let did = drive(&mut p, &env);
    assert_eq!(generations(&did), vec![1]);
    assert_eq!(applies(&did).len(), 1);
}

#[test]
fn object_changes_before_the_next_pass_make_one_compile_and_one_apply() {
    let t0 = Instant::now();
    let (mut p, _) = planner(false, t0);
    let env = Env::new();
    p.handle_objects(objects(true, &[POD_A]));
    drive(&mut p, &env);

    // Three changes while idle: one pass, with the newest.
    p.handle_objects(objects(true, &[POD_A, DENY]));
    p.handle_objects(objects(true, &[POD_A, ALLOW_80]));
    p.handle_objects(objects(true, &[POD_A, DENY, ALLOW_80]));
    let did = drive(&mut p, &env);
    assert_eq!(generations(&did), vec![2], "{did:?}");
    assert_eq!(applies(&did).len(), 1);
    assert_eq!(p.state().bundle.policies.len(), 2, "the newest set");

    // Changes that arrive during a pass: that pass ends with its own set, then one more.
    p.handle_objects(objects(true, &[POD_A]));
    assert!(matches!(p.poll_action(), Some(Action::ListLocalAddresses)));
    p.handle_objects(objects(true, &[POD_A, DENY]));
    p.handle_nodes(Arc::new(Snapshot::default()));
    p.handle_objects(objects(true, &[POD_A, ALLOW_80]));
    p.handle_local_addresses(Ok(vec![]));
    let did = drive(&mut p, &env);
    assert_eq!(generations(&did), vec![3, 4], "{did:?}");
    assert_eq!(applies(&did).len(), 2);
    let reports = did.iter().filter(|d| matches!(d, Did::Report(_))).count();
    assert_eq!(reports, 2);
    assert_eq!(p.state().bundle.policies.len(), 1);
    assert!(
        drive(&mut p, &env).is_empty(),
        "nothing more until an input"
    );
}

#[test]
fn a_new_endpoint_interface_gets_its_programs_before_its_policy() {
    let t0 = Instant::now();
    let (mut p, _) = planner(false, t0);
    let mut env = Env::new();
    p.handle_objects(objects(true, &[POD_A, DENY]));
    let did = drive(&mut p, &env);
    assert_eq!(attaches(&did)[0].attach, vec!["veth-a".to_string()]);

    // demo/b appears; its veth refuses the programs at first.
    env.attach_fails.insert("veth-b".into());
    p.handle_objects(objects(true, &[POD_A, POD_B, DENY]));
    let did = drive(&mut p, &env);
    let attach_at = did.iter().position(|d| matches!(d, Did::Attach(_)));
    let apply_at = did.iter().position(|d| matches!(d, Did::Apply(_)));
    assert!(attach_at < apply_at, "programs first: {did:?}");
    assert_eq!(attaches(&did)[0].attach, vec!["veth-b".to_string()]);
    assert!(
        !applies(&did)[0].endpoints.contains_key(&11),
        "no config for an interface without the programs"
    );
    assert_eq!(
        p.state().endpoints["demo/b"],
        Err(NotEnforced::NotAttached {
            ifname: "veth-b".into()
        })
    );
    assert_eq!(saves(&did)[0].interfaces, vec!["veth-a".to_string()]);

    // The next tick attaches again; then demo/b is enforced and saved.
    env.attach_fails.clear();
    p.handle_timeout(t0 + RESYNC_EVERY);
    let did = drive(&mut p, &env);
    assert_eq!(attaches(&did)[0].attach, vec!["veth-b".to_string()]);
    assert!(applies(&did)[0].endpoints.contains_key(&11));
    assert_eq!(p.state().endpoints["demo/b"], Ok("veth-b".into()));
    assert_eq!(saves(&did)[0].interfaces, vec!["veth-a", "veth-b"]);

    // Settled: a tick attaches nothing and saves nothing.
    p.handle_timeout(t0 + RESYNC_EVERY * 2);
    let did = drive(&mut p, &env);
    assert!(
        attaches(&did).is_empty() && saves(&did).is_empty(),
        "{did:?}"
    );
}

#[test]
fn the_host_endpoint_is_settled_only_once_its_programs_are_on_the_new_wireguard_device() {
    let t0 = Instant::now();
    let (mut p, _) = planner(false, t0);
    let mut env = Env::new();
    p.handle_objects(objects(true, &[POD_A, HOST]));
    let did = drive(&mut p, &env);
    assert_eq!(attaches(&did)[0].host, Some(HostOp::Attach));
    assert!(applies(&did)[0].endpoints.contains_key(&5));
    assert!(report(&did).host_settled_on(5));

    // A restarted data path: a new device, announced by the kernel.
    env.links.insert(WG.into(), 9);
    env.attach_fails.insert(WG.into());
    p.handle_link_event();
    let did = drive(&mut p, &env);
    assert!(!report(&did).host_settled_on(9), "its attach failed");
    assert!(!applies(&did)[0].endpoints.contains_key(&9));
    env.attach_fails.clear();
    p.handle_link_event();
    let did = drive(&mut p, &env);
    assert_eq!(attaches(&did)[0].host, Some(HostOp::Attach));
    assert!(report(&did).host_settled_on(9));
    assert!(applies(&did)[0].endpoints.contains_key(&9));
}

#[test]
fn an_apply_failure_is_counted_and_the_next_tick_applies_again() {
    let t0 = Instant::now();
    let (mut p, counters) = planner(false, t0);
    let mut env = Env::new();
    env.apply_fails = true;
    p.handle_objects(objects(true, &[POD_A, DENY]));
    let did = drive(&mut p, &env);
    let failed = applies(&did)[0].clone();
    assert_eq!(counters.apply_failures.load(Relaxed), 1);
    assert_eq!(counters.applies.load(Relaxed), 0);
    assert_eq!(report(&did).passes, 1, "the pass is reported anyway");

    env.apply_fails = false;
    assert!(drive(&mut p, &env).is_empty(), "no pass before the timeout");
    p.handle_timeout(t0 + RESYNC_EVERY - Duration::from_millis(1));
    assert!(drive(&mut p, &env).is_empty(), "not yet");
    p.handle_timeout(t0 + RESYNC_EVERY);
    let did = drive(&mut p, &env);
    assert_eq!(applies(&did), vec![&failed], "the same maps, again");
    assert!(generations(&did).is_empty(), "without compiling again");
    assert_eq!(counters.applies.load(Relaxed), 1);
    assert_eq!(counters.apply_failures.load(Relaxed), 1);
}

#[test]
fn the_timer_ticks_every_period_and_skips_ticks_missed_during_a_long_pass() {
    let t0 = Instant::now();
    let (mut p, _) = planner(false, t0);
    assert_eq!(p.poll_timeout(), t0 + RESYNC_EVERY);
    p.handle_timeout(t0 + RESYNC_EVERY * 3 + Duration::from_millis(500));
    assert_eq!(p.poll_timeout(), t0 + RESYNC_EVERY * 4);
}

#[test]
fn a_failed_identity_allocation_is_retried_until_the_store_allocates() {
    let t0 = Instant::now();
    let (mut p, _) = planner(false, t0);
    let mut env = Env::new();
    env.allocation_fails = true;
    p.handle_objects(objects(true, &[POD_A, DENY]));
    let did = drive(&mut p, &env);
    assert_eq!(generations(&did), vec![1], "enforced with local numbers");
    p.handle_timeout(t0 + RESYNC_EVERY);
    let did = drive(&mut p, &env);
    assert!(did.contains(&Did::Allocate), "asked again: {did:?}");
    env.allocation_fails = false;
    p.handle_timeout(t0 + RESYNC_EVERY * 2);
    let did = drive(&mut p, &env);
    assert_eq!(generations(&did), vec![3]);
    p.handle_timeout(t0 + RESYNC_EVERY * 3);
    let did = drive(&mut p, &env);
    assert!(!did.contains(&Did::Allocate), "allocated: {did:?}");
}

#[test]
fn a_set_that_does_not_load_leaves_the_policy_in_force_and_is_counted_once() {
    let t0 = Instant::now();
    let (mut p, counters) = planner(false, t0);
    let env = Env::new();
    p.handle_objects(objects(true, &[POD_A, DENY]));
    let did = drive(&mut p, &env);
    let in_force = applies(&did)[0].clone();
    p.handle_objects(objects(true, &[POD_A, BAD]));
    let did = drive(&mut p, &env);
    assert!(did.contains(&Did::State {
        generation: 1,
        refused: true
    }));
    assert_eq!(applies(&did), vec![&in_force], "the maps stay as they were");
    assert!(saves(&did).is_empty(), "a refused set is never saved");
    // The same refusal again (another copy of the set): not counted twice.
    p.handle_objects(objects(true, &[POD_A, BAD]));
    drive(&mut p, &env);
    assert_eq!(counters.load_failures.load(Relaxed), 1);
    p.handle_objects(objects(true, &[POD_A]));
    let did = drive(&mut p, &env);
    assert_eq!(generations(&did), vec![2]);
    assert_eq!(p.state().refused, None);
}

#[test]
fn saved_interfaces_are_closed_on_fresh_maps_when_the_saved_objects_do_not_load() {
    let t0 = Instant::now();
    let env = Env::new();
    for fresh in [true, false] {
        let (mut p, _) = planner(fresh, t0);
        p.handle_saved(Ok(Some(saved_record(&[POD_A, BAD], &["veth-a"]))));
        p.handle_objects(objects(false, &[]));
        let did = drive(&mut p, &env);
        if fresh {
            assert_eq!(attaches(&did)[0].attach, vec!["veth-a".to_string()]);
            assert!(
                !applies(&did)[0].endpoints.contains_key(&10),
                "programs without a config: closed"
            );
        } else {
            // A restarted agent's pinned maps hold an accepted policy already: no pod
            // interface is closed (the WireGuard device gets its tunnel program, as always).
            assert!(
                attaches(&did).iter().all(|a| a.attach.is_empty()),
                "{did:?}"
            );
        }
    }
}

#[test]
fn the_accepted_set_is_saved_when_it_changes_and_again_after_a_failed_write() {
    let t0 = Instant::now();
    let (mut p, _) = planner(false, t0);
    let mut env = Env::new();
    env.save_fails = true;
    p.handle_objects(objects(true, &[POD_A, DENY]));
    let did = drive(&mut p, &env);
    assert_eq!(saves(&did).len(), 1);
    env.save_fails = false;
    p.handle_timeout(t0 + RESYNC_EVERY);
    let did = drive(&mut p, &env);
    let saved = saves(&did);
    assert_eq!(saved.len(), 1, "written again after the failure");
    assert_eq!(saved[0].objects.len(), 2);
    assert_eq!(saved[0].interfaces, vec!["veth-a".to_string()]);
    p.handle_timeout(t0 + RESYNC_EVERY * 2);
    assert!(
        saves(&drive(&mut p, &env)).is_empty(),
        "unchanged: not again"
    );
}

#[test]
fn a_fresh_planner_after_a_restart_continues_the_policy_in_force() {
    let t0 = Instant::now();
    let env = Env::new();
    let (mut first, _) = planner(true, t0);
    first.handle_objects(objects(true, &[POD_A, DENY]));
    let before = applies(&drive(&mut first, &env))[0].clone();
    let published = first.state().clone();

    // The loop died; a new one starts from the published state, the pinned maps and the file.
    let cfg = PlannerConfig {
        node_name: NODE.into(),
        wg_ifname: WG.into(),
        saved_path: PathBuf::from("/state/policy.json"),
        enforcing: true,
        fresh_maps: false,
    };
    let counters = Arc::new(PolicyCounters::default());
    let mut p = Planner::new(cfg, counters, published, t0);
    p.handle_saved(Ok(Some(saved_record(&[POD_A, DENY], &["veth-a"]))));
    p.handle_objects(objects(true, &[POD_A, DENY]));
    let did = drive(&mut p, &env);
    assert_eq!(generations(&did), vec![2], "the generation goes on");
    assert_eq!(
        attaches(&did)[0].attach,
        vec!["veth-a".to_string()],
        "attached again (in place)"
    );
    assert_eq!(applies(&did)[0], &before, "the same maps");
    assert_eq!(report(&did).passes, 1);
}

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
