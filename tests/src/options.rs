//! What kind of lab to build: which store the agents share (the dir store, or an etcd server the
//! lab runs on the underlay switch), how their keys rotate, and how many clusters the nodes
//! form. The agent configs the lab writes follow from these options and the lab's layout
//! ([`crate::clusters`]).

use std::net::Ipv4Addr;
use std::time::Duration;

use wiremesh::config::{ConfigFile, KeyRotationSection, PolicySection};

use crate::addr::{endpoint, node_ip, node_ip6, node_name, pod_cidr, pod_cidr6, WG_IFACE, WG_PORT};
use crate::clusters::LabLayout;

/// The cluster name every node of a one-cluster lab is configured with.
pub const CLUSTER_NAME: &str = "lab";

/// Where the agent expects WireGuard UAPI sockets and its own runtime files. Each node sees its
/// own directories there through a private mount namespace, as separate hosts would.
pub const WG_RUN_DIR: &str = "/run/wireguard";
pub const AGENT_RUN_DIR: &str = wiremesh::api::DEFAULT_RUN_DIR;

/// The switch's address on the underlay (on `br0`), where the lab's etcd listens. It is no node's
/// address, so traffic to it is never mistaken for traffic between nodes.
pub const SWITCH_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// etcd's client and peer ports (cluster 1's; see [`crate::etcd_client_port`]).
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
/// The key prefix the lab's agents use in etcd (`store.etcd.prefix`).
pub const ETCD_PREFIX: &str = "/wiremesh";

/// `http://198.18.0.254:2379` (cluster 1's etcd).
pub fn etcd_endpoint() -> String {
    format!("http://{SWITCH_IP}:{ETCD_CLIENT_PORT}")
}

/// The store the agents of a cluster share (one store per cluster).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreKind {
    /// One directory on the host (`<labdir>/store`, per cluster `<labdir>/store-c<c>`).
    #[default]
    Dir,
    /// An etcd 3 server the lab runs in the switch namespace at [`SWITCH_IP`], its data in
    /// `<labdir>/etcd` (one per cluster: `<labdir>/etcd-c<c>` on client port
    /// [`crate::etcd_client_port`]); node records are bound to leases of `lease_ttl`.
    Etcd { lease_ttl: Duration },
    /// The lab's fake Kubernetes API server (`wiremesh-fake-apiserver`, standing in for
    /// kube-apiserver) in the switch namespace at [`SWITCH_IP`]:[`crate::KUBE_API_PORT`],
    /// enforcing the RBAC rendered from `deploy/kubernetes` (or `rbac`, when set, in its
    /// place); every Node is created with `kubectl` before the agents start (see
    /// [`crate::KubeApiHandle`]). One cluster only.
    Kubernetes {
        /// RBAC manifests (multi-document YAML) enforced in place of deploy/'s.
        rbac: Option<String>,
    },
}

/// The agents' `keyRotation` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRotation {
    /// Zero turns automatic rotation off.
    pub interval: Duration,
    pub commit_timeout: Duration,
}

impl KeyRotation {
    /// Only `wiremesh keys rotate` rotates, and a rotation commits within `commit_timeout`.
    pub fn manual(commit_timeout: Duration) -> Self {
        Self {
            interval: Duration::ZERO,
            commit_timeout,
        }
    }
}

/// How [`crate::Lab::with_options`] builds a lab. The default is what [`crate::Lab::new`] builds:
/// the dir store, no `keyRotation` section (the agent's defaults), IPv4 only, strict mode on, no
/// default routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabOptions {
    pub store: StoreKind,
    pub key_rotation: Option<KeyRotation>,
    /// Serve Prometheus metrics on `<node address>:<port>` (`metricsAddress`).
    pub metrics_port: Option<u16>,
    /// IPv6 as well: underlay `2001:2::<i>/64`, pods `fd00:10:244:<i>::<10+k>`, the agents'
    /// v6 `nodeIPs`, `podCIDRs` and `clusterPodCIDRs` (see [`crate::node_ip6`],
    /// [`crate::pod_ip6`]).
    pub dual_stack: bool,
    /// Every node gets a default route (v4, and v6 in a dual-stack lab) to the switch, which holds
    /// [`SWITCH_IP`] (and [`crate::addr::SWITCH_IP6`]) and forwards nothing: traffic that misses
    /// the tunnel really leaves the node and is captured on the underlay.
    pub default_route: bool,
    /// The agents' `strictMode`.
    pub strict_mode: bool,
    /// The agents' `offload` (the userspace data path's TUN and UDP offloads). Defaults to on,
    /// or to off when `WIREMESH_LAB_OFFLOAD=off`, so that whole test runs can prove the
    /// fallback a kernel without offloads gets.
    pub offload: bool,
    /// How many clusters the lab's nodes form (default 1). With C > 1 and N nodes per cluster
    /// ([`crate::Lab::with_options`]'s `nodes`), node `i` belongs to cluster `(i-1)/N + 1`,
    /// named `c<c>` with `clusterID: c`, each cluster with its own store and pool, and every
    /// cluster lists the others in `clusterMesh` ([`crate::ClusterPlan`]).
    pub clusters: u8,
    /// Clusters that start outside the mesh: they list no other cluster and none lists them,
    /// so a test can link them at run time ([`crate::Lab::link_clusters`]).
    pub unlinked: Vec<u8>,
}

/// Whether `WIREMESH_LAB_OFFLOAD` leaves offloads on (anything but `off`).
pub fn offload_from_env() -> bool {
    std::env::var("WIREMESH_LAB_OFFLOAD").map_or(true, |v| v != "off")
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            store: StoreKind::Dir,
            key_rotation: None,
            dual_stack: false,
            default_route: false,
            strict_mode: true,
            metrics_port: None,
            offload: offload_from_env(),
            clusters: 1,
            unlinked: Vec::new(),
        }
    }
}

impl LabOptions {
    /// Agents on the lab's etcd with leases of `lease_ttl`.
    pub fn etcd(lease_ttl: Duration) -> Self {
        Self {
            store: StoreKind::Etcd { lease_ttl },
            ..Self::default()
        }
    }

    /// Agents on the lab's fake Kubernetes API server, under deploy/'s RBAC.
    pub fn kubernetes() -> Self {
        Self {
            store: StoreKind::Kubernetes { rbac: None },
            ..Self::default()
        }
    }

    /// Agents on the lab's fake Kubernetes API server, under the RBAC manifests `rbac`.
    pub fn kubernetes_with_rbac(rbac: impl Into<String>) -> Self {
        Self {
            store: StoreKind::Kubernetes {
                rbac: Some(rbac.into()),
            },
            ..Self::default()
        }
    }

    pub fn key_rotation(mut self, rotation: KeyRotation) -> Self {
        self.key_rotation = Some(rotation);
        self
    }

    pub fn metrics_port(mut self, port: u16) -> Self {
        self.metrics_port = Some(port);
        self
    }

    pub fn uses_etcd(&self) -> bool {
        matches!(self.store, StoreKind::Etcd { .. })
    }

    pub fn uses_kubernetes(&self) -> bool {
        matches!(self.store, StoreKind::Kubernetes { .. })
    }

    pub fn dual_stack(mut self) -> Self {
        self.dual_stack = true;
        self
    }

    pub fn default_route(mut self) -> Self {
        self.default_route = true;
        self
    }

    pub fn strict_mode(mut self, on: bool) -> Self {
        self.strict_mode = on;
        self
    }

    pub fn offload(mut self, on: bool) -> Self {
        self.offload = on;
        self
    }

    /// `clusters` clusters of the lab's `nodes` nodes each.
    pub fn clusters(mut self, clusters: u8) -> Self {
        self.clusters = clusters;
        self
    }

    /// Cluster `cluster` starts unlinked (see [`LabOptions::unlinked`]).
    pub fn unlinked(mut self, cluster: u8) -> Self {
        self.unlinked.push(cluster);
        self
    }

    /// Whether the switch joins the underlay with an address of its own.
    pub fn switch_has_address(&self) -> bool {
        self.uses_etcd() || self.uses_kubernetes() || self.default_route
    }
}

/// A duration as the agent's config reads it (`0`, `5s`, `250ms`).
pub fn config_duration(d: Duration) -> String {
    if d.is_zero() {
        "0".into()
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The agent config of lab node `node` in a lab laid out as `layout`, with `options`.
pub fn agent_config_with(node: u8, layout: &LabLayout, options: &LabOptions) -> String {
    config_yaml(&agent_config_file(node, layout, options))
}

/// `file` as YAML.
pub fn config_yaml(file: &ConfigFile) -> String {
    // A ConfigFile is strings, numbers, paths and optional sections: YAML can hold each of
    // them, so serialising it cannot fail.
    yaml_serde::to_string(file).expect("a ConfigFile always serialises to YAML")
}

/// The typed config behind [`agent_config_with`]: the node's own cluster (name, ID, pool,
/// store) and the clusters it is linked with at start.
pub fn agent_config_file(node: u8, layout: &LabLayout, options: &LabOptions) -> ConfigFile {
    let plan = layout.plan;
    let cluster = plan.cluster_of(node);
    let (mut ips, mut cidrs) = (vec![node_ip(node).to_string()], vec![pod_cidr(node)]);
    if options.dual_stack {
        ips.push(node_ip6(node).to_string());
        cidrs.push(pod_cidr6(node));
    }
    ConfigFile {
        node_name: Some(node_name(node)),
        cluster_name: Some(plan.name(cluster)),
        cluster_id: plan.cluster_id(cluster),
        cluster_mesh: layout.mesh_section(plan.linked(cluster, options), options),
        interface: Some(WG_IFACE.into()),
        listen_port: Some(WG_PORT),
        state_dir: Some(layout.state_dir(node)),
        run_dir: Some(AGENT_RUN_DIR.into()),
        endpoint: Some(endpoint(node)),
        node_ips: Some(ips),
        pod_cidrs: Some(cidrs),
        cluster_pod_cidrs: Some(plan.pool(cluster, options.dual_stack)),
        strict_mode: Some(options.strict_mode),
        offload: (!options.offload).then_some(false),
        store: Some(layout.node_store_section(node, options)),
        policy: Some(PolicySection {
            enforcement: None,
            bpf_pin_dir: Some(layout.bpffs_dir().join(node_name(node))),
        }),
        metrics_address: options
            .metrics_port
            .map(|port| format!("{}:{port}", node_ip(node))),
        // kubelet's probes, as the DaemonSet has them: loopback of the node's namespace.
        health_address: Some(crate::HEALTH_ADDRESS.into()),
        key_rotation: options.key_rotation.map(|r| KeyRotationSection {
            interval: Some(config_duration(r.interval)),
            commit_timeout: Some(config_duration(r.commit_timeout)),
        }),
        ..ConfigFile::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusters::ClusterPlan;
    use std::path::Path;

    /// A one-cluster lab of three nodes in `/tmp/l`.
    fn layout() -> LabLayout {
        LabLayout::new("/tmp/l", ClusterPlan::new(1, 3))
    }

    #[test]
    fn durations_use_the_agents_syntax() {
        assert_eq!(config_duration(Duration::ZERO), "0");
        assert_eq!(config_duration(Duration::from_secs(5)), "5s");
        assert_eq!(config_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn etcd_config_names_the_switch_endpoint_and_rotation() {
        let options = LabOptions::etcd(Duration::from_secs(5))
            .key_rotation(KeyRotation::manual(Duration::from_secs(30)));
        let yaml = agent_config_with(3, &layout(), &options);
        let v: yaml_serde::Value = yaml_serde::from_str(&yaml).expect("config is valid YAML");
        let expected: yaml_serde::Value = yaml_serde::from_str(
            "{kind: etcd, etcd: {endpoints: [\"http://198.18.0.254:2379\"], prefix: /wiremesh, leaseTTL: 5s}}",
        )
        .expect("expected store is valid YAML");
        assert_eq!(v["store"], expected);
        assert_eq!(v["keyRotation"]["interval"], yaml_serde::Value::from(0));
        assert_eq!(v["keyRotation"]["commitTimeout"], "30s");
        assert_eq!(v["nodeName"], "node-3");
        assert_eq!(v["strictMode"], true);
        assert_eq!(v["nodeIPs"], yaml_serde::Value::from(vec!["198.18.0.3"]));
    }

    #[test]
    fn dual_stack_config_adds_the_v6_plan() {
        let options = LabOptions::default().dual_stack().strict_mode(false);
        let yaml = agent_config_with(2, &layout(), &options);
        let v: yaml_serde::Value = yaml_serde::from_str(&yaml).expect("config is valid YAML");
        assert_eq!(
            v["nodeIPs"],
            yaml_serde::Value::from(vec!["198.18.0.2", "2001:2::2"])
        );
        assert_eq!(
            v["podCIDRs"],
            yaml_serde::Value::from(vec!["10.244.2.0/24", "fd00:10:244:2::/64"])
        );
        assert_eq!(
            v["clusterPodCIDRs"],
            yaml_serde::Value::from(vec!["10.244.0.0/16", "fd00:10:244::/56"])
        );
        assert_eq!(v["strictMode"], false);
    }

    /// The agent itself loads every config the lab writes, for each store the lab runs and
    /// each option that adds keys: a config the agent refused would fail every e2e test at
    /// start-up instead of here.
    #[test]
    fn the_agent_loads_every_config_the_lab_writes() {
        use wiremesh::config::{Config, StoreConfig};
        let cases = [
            ("dir", LabOptions::default()),
            (
                "etcd",
                LabOptions::etcd(Duration::from_secs(5))
                    .key_rotation(KeyRotation::manual(Duration::from_millis(1500))),
            ),
            (
                "dual-stack",
                LabOptions::default()
                    .dual_stack()
                    .strict_mode(false)
                    .metrics_port(9871),
            ),
            ("kubernetes", LabOptions::kubernetes()),
        ];
        let dir = std::env::temp_dir().join(format!("wiremesh-lab-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (name, options) in cases {
            let yaml = agent_config_with(2, &layout(), &options);
            let path = dir.join(format!("{name}.yaml"));
            std::fs::write(&path, &yaml).expect("write config");
            let config = Config::load(&path).unwrap_or_else(|e| {
                panic!("the agent refuses the lab's {name} config: {e}\n{yaml}")
            });
            assert_eq!(config.node_name, "node-2", "{name}");
            assert_eq!(config.cluster_name, CLUSTER_NAME, "{name}");
            assert_eq!(config.cluster_id, None, "{name}");
            assert!(config.cluster_mesh.is_empty(), "{name}");
            assert_eq!(config.endpoint.to_string(), endpoint(2), "{name}");
            assert_eq!(config.strict_mode, options.strict_mode, "{name}");
            assert_eq!(
                config.policy.bpf_pin_dir,
                Path::new("/tmp/l/bpffs/node-2"),
                "{name}"
            );
            match (&options.store, &config.store) {
                (StoreKind::Dir, StoreConfig::Dir { path }) => {
                    assert_eq!(path, Path::new("/tmp/l/store"));
                }
                (StoreKind::Etcd { lease_ttl }, StoreConfig::Etcd(etcd)) => {
                    assert_eq!(etcd.endpoints, [etcd_endpoint()]);
                    assert_eq!(etcd.prefix, ETCD_PREFIX);
                    assert_eq!(etcd.lease_ttl, *lease_ttl);
                }
                (StoreKind::Kubernetes { .. }, StoreConfig::Kubernetes(kube)) => {
                    let want = layout().agent_kubeconfig(2);
                    assert_eq!(kube.kubeconfig.as_deref(), Some(want.as_path()));
                    assert_eq!(kube.heartbeat, crate::KUBE_HEARTBEAT);
                }
                (want, got) => panic!("{name}: store {want:?} loaded as {got:?}"),
            }
            if let Some(r) = options.key_rotation {
                assert_eq!(config.key_rotation.interval, r.interval, "{name}");
                assert_eq!(
                    config.key_rotation.commit_timeout, r.commit_timeout,
                    "{name}"
                );
            }
            if options.dual_stack {
                assert_eq!(config.node_ips.len(), 2, "{name}");
                assert_eq!(config.pod_cidrs.len(), 2, "{name}");
                assert_eq!(config.cluster_pod_cidrs.len(), 2, "{name}");
            }
            let metrics = options.metrics_port.map(|p| format!("{}:{p}", node_ip(2)));
            assert_eq!(
                config.metrics_address.map(|a| a.to_string()),
                metrics,
                "{name}"
            );
        }
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
