//! Multi-cluster labs ([`crate::LabOptions::clusters`]): which cluster each node belongs to, each
//! cluster's name, ID, pod pool and store, where a lab keeps its files, and which clusters each
//! cluster lists in its agents' `clusterMesh` at start. Pure: the lab and the agent configs
//! follow from it, and nothing here touches a namespace, a process or a file.
//!
//! With C clusters of N nodes, node `i` (1..=C×N) belongs to cluster `(i-1)/N + 1`, named
//! `c<c>` with `clusterID: c`; node addressing stays the single lab's ([`crate::addr`]), so each
//! cluster's pool is exactly its nodes' pod CIDRs and the pools are disjoint. A one-cluster lab
//! is the lab as it always was: cluster `lab`, pool `10.244.0.0/16`, no ID, no mesh.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use wiremesh::config::{
    ClusterMeshSection, DirStoreSection, EtcdStoreSection, KubeStoreSection, RemoteClusterSection,
    StoreSection,
};

use crate::addr::{node_name, pod_cidr, pod_cidr6, CLUSTER_POD_CIDR, CLUSTER_POD_CIDR6};
use crate::options::{
    config_duration, LabOptions, StoreKind, CLUSTER_NAME, ETCD_CLIENT_PORT, ETCD_PEER_PORT,
    ETCD_PREFIX, SWITCH_IP,
};

/// How often a Kubernetes lab's agents refresh `wiremesh.io/heartbeat`.
pub const KUBE_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);
/// Ports between one cluster's etcd and the next one's on the switch.
const ETCD_PORT_STRIDE: u16 = 100;

/// How a lab's nodes form clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterPlan {
    clusters: u8,
    nodes_per_cluster: u8,
}

impl ClusterPlan {
    /// `clusters` clusters of `nodes_per_cluster` nodes each (the lab checks the product fits).
    pub fn new(clusters: u8, nodes_per_cluster: u8) -> Self {
        Self {
            clusters: clusters.max(1),
            nodes_per_cluster: nodes_per_cluster.max(1),
        }
    }

    pub fn clusters(&self) -> u8 {
        self.clusters
    }

    pub fn nodes_per_cluster(&self) -> u8 {
        self.nodes_per_cluster
    }

    /// Whether the agents are configured for a cluster mesh (names `c<c>`, IDs, own pools).
    pub fn multi(&self) -> bool {
        self.clusters > 1
    }

    pub fn cluster_ids(&self) -> RangeInclusive<u8> {
        1..=self.clusters
    }

    /// The cluster node `node` belongs to.
    pub fn cluster_of(&self, node: u8) -> u8 {
        node.saturating_sub(1) / self.nodes_per_cluster + 1
    }

    /// The global ids of cluster `cluster`'s nodes.
    pub fn nodes_of(&self, cluster: u8) -> RangeInclusive<u8> {
        let first = cluster.saturating_sub(1) * self.nodes_per_cluster + 1;
        first..=first + self.nodes_per_cluster - 1
    }

    /// `lab` in a one-cluster lab, else `c<cluster>`.
    pub fn name(&self, cluster: u8) -> String {
        if self.multi() {
            format!("c{cluster}")
        } else {
            CLUSTER_NAME.into()
        }
    }

    /// The cluster's `clusterID` (none in a one-cluster lab).
    pub fn cluster_id(&self, cluster: u8) -> Option<u32> {
        self.multi().then_some(u32::from(cluster))
    }

    /// The cluster's `clusterPodCIDRs`: the whole `10.244.0.0/16` (and `fd00:10:244::/56`) in a
    /// one-cluster lab, else exactly its nodes' pod CIDRs, so that no two clusters' pools meet.
    pub fn pool(&self, cluster: u8, dual_stack: bool) -> Vec<String> {
        if !self.multi() {
            let mut pool = vec![CLUSTER_POD_CIDR.to_string()];
            if dual_stack {
                pool.push(CLUSTER_POD_CIDR6.to_string());
            }
            return pool;
        }
        let nodes = self.nodes_of(cluster);
        let mut pool: Vec<String> = nodes.clone().map(pod_cidr).collect();
        if dual_stack {
            pool.extend(nodes.map(pod_cidr6));
        }
        pool
    }

    /// How node `node` of cluster `viewer` names node `node` in `encrypt status`: `node-<i>` in
    /// its own cluster, `<cluster>/node-<i>` from another.
    pub fn peer_name(&self, viewer: u8, node: u8) -> String {
        let cluster = self.cluster_of(node);
        if cluster == self.cluster_of(viewer) {
            node_name(node)
        } else {
            format!("{}/{}", self.name(cluster), node_name(node))
        }
    }

    /// The clusters `cluster`'s agents list in `clusterMesh` at start: every other one, unless
    /// either side is in `options.unlinked` (those join at run time, by a test).
    pub fn linked(&self, cluster: u8, options: &LabOptions) -> Vec<u8> {
        if !self.multi() || options.unlinked.contains(&cluster) {
            return Vec::new();
        }
        self.cluster_ids()
            .filter(|&c| c != cluster && !options.unlinked.contains(&c))
            .collect()
    }
}

/// Where a lab keeps its files (`<labdir>` = `/tmp/wiremesh-lab/<prefix>`) and how its nodes
/// form clusters: what an agent's config needs besides its node and the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabLayout {
    pub dir: PathBuf,
    pub plan: ClusterPlan,
}

impl LabLayout {
    pub fn new(dir: impl Into<PathBuf>, plan: ClusterPlan) -> Self {
        Self {
            dir: dir.into(),
            plan,
        }
    }

    /// `<labdir>/n<i>`: the node's config, log, state and run directories.
    pub fn node_dir(&self, node: u8) -> PathBuf {
        self.dir.join(format!("n{node}"))
    }

    /// `<labdir>/n<i>/state`.
    pub fn state_dir(&self, node: u8) -> PathBuf {
        self.node_dir(node).join("state")
    }

    /// Cluster `cluster`'s dir store: `<labdir>/store`, or `<labdir>/store-c<c>` in a
    /// multi-cluster lab. Under `<labdir>`, which the agents' private mount namespaces share
    /// with the host, so every agent sees every cluster's store at this path.
    pub fn store_dir(&self, cluster: u8) -> PathBuf {
        self.dir.join(self.per_cluster("store", cluster))
    }

    /// Cluster `cluster`'s etcd data directory: `<labdir>/etcd`, or `<labdir>/etcd-c<c>`.
    pub fn etcd_data_dir(&self, cluster: u8) -> PathBuf {
        self.dir.join(self.per_cluster("etcd", cluster))
    }

    /// Cluster `cluster`'s etcd log: `<labdir>/etcd.log`, or `<labdir>/etcd-c<c>.log`.
    pub fn etcd_log(&self, cluster: u8) -> PathBuf {
        self.dir
            .join(format!("{}.log", self.per_cluster("etcd", cluster)))
    }

    /// `<labdir>/bpffs`, the lab's own BPF filesystem.
    pub fn bpffs_dir(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    fn per_cluster(&self, base: &str, cluster: u8) -> String {
        if self.plan.multi() {
            format!("{base}-c{cluster}")
        } else {
            base.to_owned()
        }
    }

    /// The `store:` section of cluster `cluster`'s own agents.
    pub fn store_section(&self, cluster: u8, options: &LabOptions) -> StoreSection {
        match &options.store {
            StoreKind::Dir => StoreSection {
                kind: wiremesh::config::StoreKind::Dir,
                dir: Some(DirStoreSection {
                    path: self.store_dir(cluster),
                }),
                etcd: None,
                kubernetes: None,
            },
            StoreKind::Etcd { lease_ttl } => StoreSection {
                kind: wiremesh::config::StoreKind::Etcd,
                dir: None,
                etcd: Some(EtcdStoreSection {
                    lease_ttl: Some(config_duration(*lease_ttl)),
                    ..etcd_section(cluster)
                }),
                kubernetes: None,
            },
            StoreKind::Kubernetes { .. } => StoreSection {
                kind: wiremesh::config::StoreKind::Kubernetes,
                dir: None,
                etcd: None,
                // Short, for tests; a claim outlives three missed heartbeats.
                kubernetes: Some(KubeStoreSection {
                    kubeconfig: None,
                    heartbeat: Some(config_duration(KUBE_HEARTBEAT)),
                    owner_ttl: Some(config_duration(KUBE_HEARTBEAT * 4)),
                }),
            },
        }
    }

    /// Node `node`'s `store:`: its cluster's, with its own kubeconfig on the Kubernetes store.
    pub fn node_store_section(&self, node: u8, options: &LabOptions) -> StoreSection {
        let mut section = self.store_section(self.plan.cluster_of(node), options);
        if let Some(kube) = section.kubernetes.as_mut() {
            kube.kubeconfig = Some(self.agent_kubeconfig(node));
        }
        section
    }

    /// Cluster `cluster` as another cluster's agents list it in `clusterMesh.clusters`: name,
    /// ID, pool and its store, read-only (etcd without a lease TTL, or its directory).
    pub fn remote_section(&self, cluster: u8, options: &LabOptions) -> RemoteClusterSection {
        let (etcd, dir) = match options.store {
            StoreKind::Dir => (
                None,
                Some(DirStoreSection {
                    path: self.store_dir(cluster),
                }),
            ),
            StoreKind::Etcd { .. } => (Some(etcd_section(cluster)), None),
            // A Kubernetes lab has one cluster ([`crate::Lab::with_options`] refuses more),
            // so no agent ever lists another.
            StoreKind::Kubernetes { .. } => (None, None),
        };
        RemoteClusterSection {
            name: self.plan.name(cluster),
            id: u32::from(cluster),
            pod_cidrs: self.plan.pool(cluster, options.dual_stack),
            etcd,
            dir,
        }
    }

    /// The `clusterMesh` section listing `remotes` (none when the list is empty).
    pub fn mesh_section(
        &self,
        remotes: impl IntoIterator<Item = u8>,
        options: &LabOptions,
    ) -> Option<ClusterMeshSection> {
        let clusters: Vec<_> = remotes
            .into_iter()
            .map(|c| self.remote_section(c, options))
            .collect();
        (!clusters.is_empty()).then_some(ClusterMeshSection { clusters })
    }
}

/// Cluster `cluster`'s etcd endpoint and prefix (no lease TTL, no TLS).
fn etcd_section(cluster: u8) -> EtcdStoreSection {
    EtcdStoreSection {
        endpoints: Some(vec![cluster_etcd_endpoint(cluster)]),
        prefix: Some(ETCD_PREFIX.into()),
        tls: None,
        lease_ttl: None,
    }
}

/// Cluster `cluster`'s etcd client port on the switch: 2379, 2479, 2579, ...
pub fn etcd_client_port(cluster: u8) -> u16 {
    ETCD_CLIENT_PORT + ETCD_PORT_STRIDE * u16::from(cluster.saturating_sub(1))
}

/// Cluster `cluster`'s etcd peer port: 2380, 2480, ...
pub fn etcd_peer_port(cluster: u8) -> u16 {
    ETCD_PEER_PORT + ETCD_PORT_STRIDE * u16::from(cluster.saturating_sub(1))
}

/// `http://198.18.0.254:<client port of cluster>`.
pub fn cluster_etcd_endpoint(cluster: u8) -> String {
    format!("http://{SWITCH_IP}:{}", etcd_client_port(cluster))
}

/// Whether `port` is a client or peer port of some lab cluster's etcd (the capture files
/// traffic to it as store traffic).
pub fn is_etcd_port(port: u16) -> bool {
    let Some(offset) = port.checked_sub(ETCD_CLIENT_PORT) else {
        return false;
    };
    let cluster = offset / ETCD_PORT_STRIDE;
    cluster < u16::from(crate::addr::MAX_NODES) && offset % ETCD_PORT_STRIDE <= 1
}

/// The etcd key of record kind `kind` (`nodes`, `owners`) for node `name` of cluster
/// `cluster_name`: `<prefix>/v1/<cluster>/<kind>/<name>`.
pub fn etcd_key_of(cluster_name: &str, kind: &str, name: &str) -> String {
    format!("{ETCD_PREFIX}/v1/{cluster_name}/{kind}/{name}")
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use wiremesh::config::{Config, RemoteStoreConfig, StoreConfig};

    use super::*;
    use crate::options::agent_config_with;

    #[test]
    fn nodes_fall_into_clusters_in_order() {
        let plan = ClusterPlan::new(3, 2);
        let clusters: Vec<u8> = (1..=6).map(|n| plan.cluster_of(n)).collect();
        assert_eq!(clusters, [1, 1, 2, 2, 3, 3]);
        assert_eq!(plan.nodes_of(2), 3..=4);
        assert_eq!(plan.name(3), "c3");
        assert_eq!(plan.cluster_id(3), Some(3));
        assert_eq!(plan.peer_name(1, 2), "node-2");
        assert_eq!(plan.peer_name(1, 4), "c2/node-4");
        assert_eq!(plan.peer_name(4, 1), "c1/node-1");
        assert_eq!(
            plan.pool(2, true),
            [
                "10.244.3.0/24",
                "10.244.4.0/24",
                "fd00:10:244:3::/64",
                "fd00:10:244:4::/64"
            ]
        );
        let single = ClusterPlan::new(1, 4);
        assert!(!single.multi());
        assert_eq!((single.cluster_of(4), single.name(1)), (1, "lab".into()));
        assert_eq!(single.cluster_id(1), None);
        assert_eq!(single.pool(1, false), [CLUSTER_POD_CIDR]);
    }

    #[test]
    fn each_cluster_has_its_own_etcd_ports_and_files() {
        assert_eq!((etcd_client_port(1), etcd_peer_port(1)), (2379, 2380));
        assert_eq!((etcd_client_port(2), etcd_peer_port(2)), (2479, 2480));
        assert_eq!(cluster_etcd_endpoint(3), "http://198.18.0.254:2579");
        for port in [2379, 2380, 2479, 2480, 2579] {
            assert!(is_etcd_port(port), "{port}");
        }
        for port in [2378, 2381, 2400, 2481, 51871, 22] {
            assert!(!is_etcd_port(port), "{port}");
        }
        let multi = LabLayout::new("/tmp/l", ClusterPlan::new(2, 2));
        assert_eq!(multi.store_dir(2), Path::new("/tmp/l/store-c2"));
        assert_eq!(multi.etcd_data_dir(1), Path::new("/tmp/l/etcd-c1"));
        assert_eq!(multi.etcd_log(2), Path::new("/tmp/l/etcd-c2.log"));
        let single = LabLayout::new("/tmp/l", ClusterPlan::new(1, 2));
        assert_eq!(single.store_dir(1), Path::new("/tmp/l/store"));
        assert_eq!(single.etcd_data_dir(1), Path::new("/tmp/l/etcd"));
        assert_eq!(
            etcd_key_of("c2", "nodes", "node-3"),
            "/wiremesh/v1/c2/nodes/node-3"
        );
    }

    /// Every config a 2-cluster lab writes, through the agent's own parser: each node names
    /// its cluster, ID and pool (exactly its cluster's nodes' pod CIDRs), its own cluster's
    /// store, and lists exactly the other clusters with their IDs, pools and stores.
    #[test]
    fn the_agent_loads_every_multi_cluster_config() {
        let etcd = || LabOptions::etcd(Duration::from_secs(5));
        let cases = [
            ("dir", LabOptions::default().clusters(2)),
            (
                "dir dual-stack",
                LabOptions::default().dual_stack().clusters(2),
            ),
            ("etcd", etcd().clusters(2)),
            ("etcd dual-stack", etcd().dual_stack().clusters(2)),
            ("three clusters", LabOptions::default().clusters(3)),
        ];
        for (case, options) in cases {
            let layout = LabLayout::new("/tmp/l", ClusterPlan::new(options.clusters, 2));
            let configs: Vec<Config> = (1..=options.clusters * 2)
                .map(|node| {
                    let yaml = agent_config_with(node, &layout, &options);
                    Config::parse(&yaml, Path::new("lab.yaml")).unwrap_or_else(|e| {
                        panic!("{case}: the agent refuses node-{node}'s config: {e}\n{yaml}")
                    })
                })
                .collect();
            for (node, config) in (1..).zip(&configs) {
                check_node(case, &layout, &options, node, config);
            }
            check_pools_disjoint(case, &configs);
        }
    }

    fn check_node(case: &str, layout: &LabLayout, options: &LabOptions, node: u8, config: &Config) {
        let plan = layout.plan;
        let cluster = plan.cluster_of(node);
        let at = format!("{case}, node-{node}");
        assert_eq!(config.cluster_name, format!("c{cluster}"), "{at}");
        assert_eq!(config.cluster_id.map(|id| id.get()), Some(cluster), "{at}");
        let pool: Vec<String> = config
            .cluster_pod_cidrs
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(pool, plan.pool(cluster, options.dual_stack), "{at}");
        for own in &config.pod_cidrs {
            assert!(
                config.cluster_pod_cidrs.contains(own),
                "{at}: {own} outside the pool"
            );
        }
        match &config.store {
            StoreConfig::Dir { path } => assert_eq!(path, &layout.store_dir(cluster), "{at}"),
            StoreConfig::Etcd(etcd) => {
                assert_eq!(etcd.endpoints, [cluster_etcd_endpoint(cluster)], "{at}");
            }
            StoreConfig::Kubernetes(_) => panic!("{at}: a Kubernetes store"),
        }
        let others: Vec<u8> = plan.cluster_ids().filter(|&c| c != cluster).collect();
        let listed: Vec<u8> = config
            .cluster_mesh
            .iter()
            .map(|r| r.cluster.id.get())
            .collect();
        assert_eq!(
            listed, others,
            "{at}: clusterMesh lists exactly the other clusters"
        );
        for remote in &config.cluster_mesh {
            let c = remote.cluster.id.get();
            assert_eq!(remote.cluster.name, format!("c{c}"), "{at}");
            let pods: Vec<String> = remote
                .cluster
                .pod_cidrs
                .iter()
                .map(|n| n.to_string())
                .collect();
            assert_eq!(pods, plan.pool(c, options.dual_stack), "{at}: c{c}'s pool");
            match &remote.store {
                RemoteStoreConfig::Dir { path } => {
                    assert!(!options.uses_etcd(), "{at}");
                    assert_eq!(path, &layout.store_dir(c), "{at}: c{c}'s store");
                }
                RemoteStoreConfig::Etcd(etcd) => {
                    assert!(options.uses_etcd(), "{at}");
                    assert_eq!(etcd.endpoints, [cluster_etcd_endpoint(c)], "{at}");
                    assert_eq!(etcd.prefix, ETCD_PREFIX, "{at}");
                }
            }
        }
    }

    /// No pod CIDR of one cluster's pool meets one of another's.
    fn check_pools_disjoint(case: &str, configs: &[Config]) {
        for a in configs {
            for b in configs.iter().filter(|b| b.cluster_name != a.cluster_name) {
                for x in &a.cluster_pod_cidrs {
                    for y in &b.cluster_pod_cidrs {
                        let meet = x.contains(&y.network()) || y.contains(&x.network());
                        assert!(
                            !meet,
                            "{case}: {} pool {x} meets {} pool {y}",
                            a.cluster_name, b.cluster_name
                        );
                    }
                }
            }
        }
    }

    /// An unlinked cluster lists nobody and nobody lists it; its config still carries its ID
    /// and pool, so linking it later changes only `clusterMesh`.
    #[test]
    fn unlinked_clusters_start_outside_the_mesh() {
        let options = LabOptions::default().clusters(3).unlinked(3);
        let plan = ClusterPlan::new(3, 1);
        assert_eq!(plan.linked(1, &options), [2]);
        assert_eq!(plan.linked(2, &options), [1]);
        assert!(plan.linked(3, &options).is_empty());
        let layout = LabLayout::new("/tmp/l", plan);
        let yaml = agent_config_with(3, &layout, &options);
        let config = Config::parse(&yaml, Path::new("lab.yaml")).unwrap_or_else(|e| {
            panic!("the agent refuses the unlinked node's config: {e}\n{yaml}")
        });
        assert!(config.cluster_mesh.is_empty(), "{yaml}");
        assert_eq!(config.cluster_id.map(|id| id.get()), Some(3));
        let section = layout.remote_section(3, &options);
        assert_eq!((section.name.as_str(), section.id), ("c3", 3));
        assert_eq!(section.pod_cidrs, ["10.244.3.0/24"]);
        assert_eq!(section.dir.map(|d| d.path), Some(layout.store_dir(3)));
    }
}
