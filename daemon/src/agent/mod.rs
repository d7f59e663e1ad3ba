//! The node agent: loads the node key, brings up (or re-attaches to) the data path, publishes
//! this node's record, keeps the data path and the routing table in step with the store, and
//! rotates the key on schedule. It holds no packet state: killing it drops nothing.

pub mod clustermesh;
mod event_loop;
pub mod flows;
pub mod host;
mod node_cidrs;
pub mod peers;
pub mod persist;
pub mod policy;
pub mod proxy;
pub mod rotation;
pub mod start;
pub mod supervisor;
mod views;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use keymgr::ring::KeyRing;
use keymgr::ring::Loaded;
use keymgr::store::objects::ObjectStore;
use keymgr::store::{ClaimOutcome, DirStore, EtcdStore, KubeStore};
use keymgr::{Admission, NodeRecord, Store};
use tokio::sync::{mpsc, watch, Notify};

use crate::admin::probes::ProbeView;
use crate::admin::AdminServer;
use crate::config::{Config, StoreConfig};
use event_loop::EventLoop;
use peers::Reconciler;
use persist::PeerFile;
use rotation::{OwnKey, RotateRequest, Rotator, Startup};
use supervisor::Supervisor;
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::listen::{Access, Limits};
use wiremesh_datapath::netlink::Netlink;

/// What this node admits from the store beyond the records' own rules: pod ranges inside the
/// cluster's pool, and none over this node's own addresses.
fn admission(config: &Config) -> Admission {
    let mut local_addresses = config.node_ips.clone();
    local_addresses.push(config.endpoint.ip());
    Admission {
        cluster_pod_cidrs: config.cluster_pod_cidrs.clone(),
        local_addresses,
    }
}

async fn open_store(config: &Config, peer_file: &PeerFile) -> Result<Store> {
    let admission = admission(config);
    if let StoreConfig::Dir { path } = &config.store {
        return Ok(Store::Dir(DirStore::open(path, admission)?));
    }
    let owner = persist::owner_id(&config.state_dir).with_context(|| {
        format!(
            "reading or creating {}/owner-id",
            config.state_dir.display()
        )
    })?;
    // Until the store answers, the peers of the last run are the best knowledge there is (the
    // remote clusters' ones, `<cluster>/<node>`, go to their own followers).
    let mut last = peer_file.load();
    last.retain(|name, _| !name.contains('/'));
    let initial = keymgr::Snapshot {
        nodes: last.clone().into(),
    };
    let (cluster, node) = (config.cluster_name.as_str(), config.node_name.as_str());
    let (store, claim) = match &config.store {
        StoreConfig::Dir { .. } => unreachable!("handled above"),
        StoreConfig::Etcd(c) => {
            let s = EtcdStore::start(c.clone(), cluster, node, &owner, initial, admission)?;
            let claim = s.claim(CLAIM_TIMEOUT).await?;
            (Store::Etcd(s), claim)
        }
        StoreConfig::Kubernetes(c) => {
            let s = KubeStore::start(c.clone(), cluster, node, &owner, initial, admission)?;
            let claim = s.claim(CLAIM_TIMEOUT).await?;
            (Store::Kubernetes(s), claim)
        }
    };
    match claim {
        ClaimOutcome::Claimed => {
            tracing::info!(owner = %owner, store = %store.describe(), "node name claimed")
        }
        ClaimOutcome::Unreachable { error } => tracing::warn!(
            store = %store.describe(),
            last_known_peers = last.len(),
            "store unreachable at start ({error}); running on the last known peers and retrying"
        ),
    }
    Ok(store)
}

/// Where the cluster's objects (Namespaces, Pods, policies) are kept: next to the node records.
fn open_objects(config: &Config) -> Result<ObjectStore> {
    Ok(match &config.store {
        StoreConfig::Dir { path } => ObjectStore::dir(path)?,
        StoreConfig::Etcd(c) => ObjectStore::etcd(c, &config.cluster_name)?,
        StoreConfig::Kubernetes(c) => ObjectStore::kubernetes(c)?,
    })
}

/// How long peers wait for a policy pass before they are configured anyway.
const POLICY_WAIT: Duration = Duration::from_secs(10);

/// Waits until a policy pass reports `done`, at most [`POLICY_WAIT`].
async fn wait_policy(
    passes: &mut watch::Receiver<policy::PassReport>,
    what: &str,
    done: impl Fn(&policy::PassReport) -> bool,
) {
    let waited = tokio::time::timeout(POLICY_WAIT, passes.wait_for(|r| done(r))).await;
    if !matches!(waited, Ok(Ok(_))) {
        tracing::error!(
            "{what} did not complete within {POLICY_WAIT:?}; configuring peers anyway (see the policy errors above)"
        );
    }
}

/// How long start-up waits for the store before carrying on with the last known peers.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(config: Config) -> Result<()> {
    tracing::debug!(?config, "configuration");
    let config = node_cidrs::from_node(config).await?;
    // Before the data path, the store or the key: pod traffic must never find a moment with
    // neither the tunnel nor the guard.
    let mut supervisor = Supervisor::default();
    let (strict, strict_watcher) = start_strict(&mut supervisor, &config).await?;
    let keys = load_keys(&config)?;
    let peer_file = PeerFile::new(&config.state_dir);
    let store = Arc::new(open_store(&config, &peer_file).await?);
    let netlink = Netlink::connect()?;
    let mtu = match config.mtu {
        0 => start::auto_mtu(&netlink, &config).await,
        m => m,
    };
    let datapath_exited = Arc::new(Notify::new());
    let exited = &datapath_exited;
    let started = start::start(&config, &netlink, &keys.current, mtu, exited, None).await?;
    let datapath = started.datapath.clone();
    tracing::info!(interface = %config.interface, datapath = datapath.kind(), mtu, port = config.listen_port, "interface up");

    let (rotate_tx, rotate_rx) = mpsc::channel(4);
    let own = start_rotation(&mut supervisor, &config, &store, &datapath, keys, rotate_rx).await?;
    let objects = Arc::new(open_objects(&config)?);
    tokio::spawn(host::publish(config.clone(), objects.clone()));
    let mesh = start_mesh(&config, &peer_file);
    let policy_objects = clustermesh::policy_objects(objects.subscribe(), mesh.objects());
    let policy = start_policy(
        &mut supervisor,
        &config,
        &store,
        &objects,
        policy_objects,
        &netlink,
    )?;
    start_proxy(&mut supervisor, &config, &netlink, &policy.state).await?;
    let flows = start_flows(&mut supervisor, &config, &policy.state);

    let (names_tx, names_rx) = watch::channel(Arc::new(HashMap::new()));
    let (view_tx, view_rx) = watch::channel(None);
    let published = views::Published {
        store: store.clone(),
        datapath: datapath.clone(),
        names: names_rx,
        own: own.clone(),
        rotate: rotate_tx,
        objects: objects.clone(),
        policy: policy.state,
        policy_counters: policy.counters,
        device_view: view_rx,
        strict,
        health: supervisor.health(),
        flows,
        clustermesh: mesh.subscribe(),
    };
    let (ready_tx, ready) = watch::channel(false);
    let _admin = serve_admin(&mut supervisor, &config, mtu, published, ready).await?;

    let reconciler = Reconciler {
        names: names_tx,
        view: view_tx,
        ..Reconciler::for_started(&config, &started, &netlink, own, peer_file)
    };
    let mut agent = EventLoop {
        config: &config,
        netlink,
        mtu,
        store,
        reconciler,
        passes: policy.passes,
        datapath_exited,
        supervisor,
        mesh,
        strict: strict_watcher,
    };
    // No peer is configured before the policy (the store's, or the saved one after a reboot)
    // is on this node's interfaces: a fresh data path takes no packet for a pod before then.
    wait_policy(&mut agent.passes, "the first policy pass", |r| r.passes > 0).await;
    agent.run(ready_tx).await
}

/// The cluster mesh of `config`, its remote clusters followed (from the last known peers
/// until their stores answer).
fn start_mesh(config: &Config, peer_file: &PeerFile) -> clustermesh::ClusterMesh {
    let mut mesh = clustermesh::ClusterMesh::new(config, peer_file.load());
    mesh.apply(config);
    mesh
}

/// Puts the strict-mode guard in place and has the supervisor watch over it.
async fn start_strict(
    supervisor: &mut Supervisor,
    config: &Config,
) -> Result<(
    watch::Receiver<crate::strict::StrictStatus>,
    Option<crate::strict::Watcher>,
)> {
    let strict = crate::strict::start(config).await?;
    let kept = strict.watcher.clone();
    if let Some(watcher) = strict.watcher {
        supervisor.spawn("strict-guard", move || {
            let watching = watcher.run();
            async move {
                watching.await;
                Ok(())
            }
        });
    }
    Ok((strict.status, kept))
}

/// Loads the node key from the key ring, creating it on the first start.
fn load_keys(config: &Config) -> Result<Loaded> {
    let ring = KeyRing::new(&config.state_dir, &config.interface);
    let keys = ring.load_or_create()?;
    tracing::info!(
        key_file = %ring.key_file().path().display(),
        public_key = %keys.current.public_key(),
        epoch = keys.state.epoch,
        created = keys.created_now,
        "node key loaded"
    );
    Ok(keys)
}

/// Publishes this node's record and starts the key rotator under the supervisor; returns the
/// view of this node's own key. A restarted rotator is built afresh from the key ring on disk
/// (`Startup::Recovered`): a crash-resume, as after an agent restart.
async fn start_rotation(
    supervisor: &mut Supervisor,
    config: &Config,
    store: &Arc<Store>,
    datapath: &Arc<Datapath>,
    keys: Loaded,
    requests: mpsc::Receiver<RotateRequest>,
) -> Result<watch::Receiver<OwnKey>> {
    let public_key = keys.current.public_key();
    let template = NodeRecord {
        cluster_name: config.cluster_name.clone(),
        pod_cidrs: config.published_pod_cidrs(),
        node_ips: config.node_ips.clone(),
        ..NodeRecord::new(&config.node_name, public_key, config.endpoint)
    };
    let (own_tx, own_rx) = watch::channel(OwnKey {
        public: public_key,
        epoch: keys.state.epoch,
        created: keys.state.created(),
        next: None,
        next_rotation: None,
    });
    let requests = Arc::new(tokio::sync::Mutex::new(requests));
    let (state_dir, interface) = (config.state_dir.clone(), config.interface.clone());
    let (store, datapath) = (store.clone(), datapath.clone());
    let (interval, commit_timeout) = (
        config.key_rotation.interval,
        config.key_rotation.commit_timeout,
    );
    let rotator = move |keys: Loaded, startup: Startup| Rotator {
        ring: KeyRing::new(&state_dir, &interface),
        state: keys.state,
        next: keys.next,
        record: NodeRecord {
            public_key: keys.current.public_key(),
            ..template.clone()
        },
        store: store.clone(),
        datapath: datapath.clone(),
        interval,
        commit_timeout,
        own: own_tx.clone(),
        requests: requests.clone(),
        startup,
    };
    let first = rotator(keys, Startup::Synced);
    publish_record(config, &first).await?;
    let mut first = Some(first);
    let ring = KeyRing::new(&config.state_dir, &config.interface);
    supervisor.spawn("rotation", move || {
        let next = match first.take() {
            Some(r) => Ok(r),
            None => ring
                .load_or_create()
                .map(|keys| rotator(keys, Startup::Recovered)),
        };
        async move { Ok(next?.run().await?) }
    });
    Ok(own_rx)
}

async fn publish_record(config: &Config, rotator: &Rotator) -> Result<()> {
    let store = &rotator.store;
    match store.publish(&rotator.current_record()).await {
        Ok(()) => {
            tracing::info!(store = %store.describe(), node = %config.node_name, "node record published")
        }
        // The store keeps the record and writes it when it is reachable again.
        Err(
            e @ (keymgr::StoreError::Unavailable { .. }
            | keymgr::StoreError::KubeUnavailable { .. }),
        ) => {
            tracing::warn!("{e}")
        }
        Err(e) => return Err(e).context("publishing this node's record"),
    }
    Ok(())
}

/// What the policy loop publishes.
struct PolicyOutputs {
    state: watch::Receiver<Arc<policy::PolicyState>>,
    counters: Arc<policy::PolicyCounters>,
    passes: watch::Receiver<policy::PassReport>,
}

/// Loads the eBPF programs and starts the policy loop under the supervisor; it takes
/// `policy_objects` (the cluster's objects, with a cluster mesh the remote clusters' endpoints
/// too) and allocates identities in `objects`. A restarted loop
/// loads them again (re-opening the pinned maps) and goes on from the policy in force.
fn start_policy(
    supervisor: &mut Supervisor,
    config: &Config,
    store: &Store,
    objects: &Arc<ObjectStore>,
    policy_objects: watch::Receiver<Arc<keymgr::store::objects::ObjectSet>>,
    netlink: &Netlink,
) -> Result<PolicyOutputs> {
    let enforcer = policy::open_enforcer(&config.policy)?;
    let (state_tx, state) = watch::channel(Arc::new(policy::PolicyState::default()));
    let counters = Arc::new(policy::PolicyCounters::default());
    let (passes_tx, passes) = watch::channel(policy::PassReport::default());
    let policy_loop = policy::PolicyLoop {
        store: objects.clone(),
        wg_ifname: config.interface.clone(),
        node_name: config.node_name.clone(),
        netlink: netlink.clone(),
        objects: policy_objects,
        nodes: store.subscribe(),
        state: state_tx,
        counters: counters.clone(),
        saved: policy::saved::SavedFile::new(&config.state_dir),
        passes: passes_tx,
    };
    let mut first = Some(enforcer);
    let policy_config = config.policy.clone();
    supervisor.spawn("policy", move || {
        let enforcer = first
            .take()
            .map_or_else(|| policy::open_enforcer(&policy_config), Ok);
        let policy_loop = policy_loop.clone();
        async move { Ok(policy_loop.run(enforcer?).await?) }
    });
    Ok(PolicyOutputs {
        state,
        counters,
        passes,
    })
}

/// With policy enforcement on, installs the kernel's redirect to the L7 proxy and keeps the
/// proxy process running and configured (the supervised task `proxy`).
async fn start_proxy(
    supervisor: &mut Supervisor,
    config: &Config,
    netlink: &Netlink,
    policy: &watch::Receiver<Arc<policy::PolicyState>>,
) -> Result<()> {
    if config.policy.enforcement == crate::config::Enforcement::Never {
        return Ok(());
    }
    let listeners = crate::l7::DEFAULT_LISTENERS;
    crate::l7::install(netlink, listeners).await?;
    let (config, policy) = (config.clone(), policy.clone());
    supervisor.spawn("proxy", move || {
        proxy::ProxyKeeper::new(&config, listeners, policy.clone()).run()
    });
    Ok(())
}

/// Gathers the programs' flow events and, while someone observes, the proxy's request records
/// for `wiremesh observe`, and the proxy's counters for metrics (the supervised task `flows`);
/// the log is empty when nothing is enforced.
fn start_flows(
    supervisor: &mut Supervisor,
    config: &Config,
    policy: &watch::Receiver<Arc<policy::PolicyState>>,
) -> views::Flows {
    let flows = views::Flows::default();
    if config.policy.enforcement == crate::config::Enforcement::Never {
        return flows;
    }
    let (node, pin_dir) = (config.node_name.clone(), config.policy.bpf_pin_dir.clone());
    let proxy_socket = config.run_dir.join("proxy.sock");
    let (policy, shared) = (policy.clone(), flows.clone());
    supervisor.spawn("flows", move || {
        flows::FlowCollector {
            node: node.clone(),
            pin_dir: pin_dir.clone(),
            proxy_socket: proxy_socket.clone(),
            policy: policy.clone(),
            log: shared.log.clone(),
            observers: shared.observers.clone(),
            proxy_stats: shared.proxy_stats.clone(),
        }
        .run()
    });
    flows
}

/// Binds the admin socket and, when configured, the metrics listener (so that a taken socket
/// fails start-up) and serves each under the supervisor. The returned server removes the
/// socket file when dropped.
async fn serve_admin(
    supervisor: &mut Supervisor,
    config: &Config,
    mtu: u32,
    published: views::Published,
    started: watch::Receiver<bool>,
) -> Result<AdminServer> {
    let probes = Arc::new(ProbeView {
        health: supervisor.health(),
        started,
        datapath: published.datapath.clone(),
    });
    let admin_views = views::admin_views(config, mtu, published);
    let access = Access {
        reader_gid: config.admin_group,
    };
    let admin = AdminServer::bind(
        &config.admin_socket(),
        admin_views.routes(),
        access,
        Limits::ADMIN,
    )?;
    let acceptor = admin.acceptor();
    supervisor.spawn("admin", move || {
        let accepting = acceptor.serve();
        async move {
            accepting.await;
            Ok(())
        }
    });
    if let Some(addr) = config.metrics_address {
        let listener = Arc::new(crate::admin::tcp::bind("metricsAddress", addr).await?);
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
        let view = admin_views.metrics;
        supervisor.spawn("metrics", move || {
            let accepting =
                crate::admin::metrics::serve(listener.clone(), view.clone(), Limits::METRICS);
            async move {
                accepting.await;
                Ok(())
            }
        });
    }
    if let Some(addr) = config.health_address {
        let listener = Arc::new(crate::admin::tcp::bind("healthAddress", addr).await?);
        tracing::info!(%addr, "serving /healthz and /readyz");
        supervisor.spawn("health", move || {
            let accepting =
                crate::admin::probes::serve(listener.clone(), probes.clone(), Limits::METRICS);
            async move {
                accepting.await;
                Ok(())
            }
        });
    }
    Ok(admin)
}
