//! The agent's configuration: one YAML file, every key documented in docs/config.md, validated
//! at start-up with every problem reported at once. [`ConfigFile`] (`file.rs`) is the file as
//! written, serde both ways so tools can write configs as typed values; `validate.rs` turns it
//! into [`Config`] and `store.rs` checks the store sections. Nothing here opens a socket or
//! touches the network: loading a config must never change the host.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

mod file;
mod host;
mod mesh;
mod store;
mod validate;

pub use file::{
    ClusterMeshSection, ConfigFile, DirStoreSection, EtcdStoreSection, EtcdTlsSection,
    KeyRotationSection, KubeStoreSection, PolicySection, RemoteClusterSection, StoreSection,
};

pub const DEFAULT_INTERFACE: &str = "wiremesh_wg0";
pub const DEFAULT_PORT: u16 = 51871;
/// Outer IPv6 header (40) + UDP (8) + WireGuard data header (16) + Poly1305 tag (16): the
/// largest overhead, so the same MTU works over IPv4 and IPv6 underlays.
pub const WIREGUARD_OVERHEAD: u32 = 80;

/// Whether local endpoints get the eBPF policy programs (Cilium's `policy-enforcement-mode`
/// without `always`: an endpoint no policy selects is not isolated, as Kubernetes specifies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    Default,
    Never,
}

/// Policy enforcement settings.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub enforcement: Enforcement,
    /// Where the eBPF maps are pinned (on a BPF filesystem, mounted if missing).
    pub bpf_pin_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    Auto,
    Userspace,
    Kernel,
}

/// Who runs the userspace data-path process (`datapathProcess`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathProcess {
    /// The agent starts it (detached, so it outlives agent restarts) and upgrades it in place
    /// when the agent's version differs: a systemd host.
    #[default]
    Agent,
    /// Something else runs `wiremesh datapath --config` (the `wiremesh-datapath` DaemonSet):
    /// the agent only attaches to it and waits for it, never starts or replaces it.
    External,
}

/// `datapath` and `datapathProcess`: an external process runs only the userspace data path.
pub(super) fn datapath(
    kind: Option<DatapathKind>,
    process: Option<DatapathProcess>,
    errors: &mut Vec<String>,
) -> (DatapathKind, DatapathProcess) {
    let kind = kind.unwrap_or(DatapathKind::Auto);
    let process = process.unwrap_or_default();
    if process == DatapathProcess::External && kind != DatapathKind::Userspace {
        errors.push(
            "datapathProcess: external needs datapath: userspace (the data-path process runs \
             the userspace data path; the kernel module needs no process)"
                .into(),
        );
    }
    (kind, process)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Dir,
    Etcd,
    Kubernetes,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (empty for a config parsed from text alone); the agent
    /// reads it again on `SIGHUP`.
    pub path: PathBuf,
    pub node_name: String,
    pub cluster_name: String,
    /// This cluster's ID in a cluster mesh (`clusterID`).
    pub cluster_id: Option<cluster_mesh::ClusterId>,
    /// The remote clusters (`clusterMesh.clusters`), in the file's order; whether each is
    /// admitted is decided at run time (a conflict refuses one, not the config).
    pub cluster_mesh: Vec<RemoteCluster>,
    pub interface: String,
    pub listen_port: u16,
    /// 0 = derive from the underlay.
    pub mtu: u32,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub endpoint: SocketAddr,
    pub node_ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    /// A host without pods (`hostAddress`): its address inside the cluster's pool, published
    /// as a /32 (/128) pod CIDR of this node and put on the WireGuard interface.
    pub host_address: Option<IpAddr>,
    /// A host's labels (`labels`): its endpoint's, published with `hostAddress`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The namespace of a host's endpoint (`hostNamespace`).
    pub host_namespace: String,
    /// The cluster's whole pod address pool(s): every node's `podCIDRs` lie inside them.
    pub cluster_pod_cidrs: Vec<IpNet>,
    /// Pod traffic to or from another node is encrypted or dropped, never sent or accepted in
    /// clear (requires `cluster_pod_cidrs`).
    pub strict_mode: bool,
    pub persistent_keepalive: u16,
    pub datapath: DatapathKind,
    pub datapath_process: DatapathProcess,
    /// The userspace data path uses the kernel's TUN and UDP offloads.
    pub offload: bool,
    pub store: StoreConfig,
    pub key_rotation: KeyRotation,
    /// Where Prometheus scrapes `/metrics`; `None` serves them on the admin socket only.
    pub metrics_address: Option<SocketAddr>,
    /// Where kubelet probes `/healthz` (liveness) and `/readyz` (readiness); `None`: off.
    pub health_address: Option<SocketAddr>,
    /// The group (gid) whose members may read status and metrics on the admin and UAPI
    /// sockets; `None`: root only.
    pub admin_group: Option<u32>,
    pub policy: PolicyConfig,
}

#[derive(Debug, Clone)]
pub struct KeyRotation {
    /// Zero disables automatic rotation (`wiremesh keys rotate` still works).
    pub interval: Duration,
    /// How long a rotation waits for every active peer to handshake with the new key.
    pub commit_timeout: Duration,
}

/// One remote cluster of `clusterMesh.clusters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCluster {
    pub cluster: cluster_mesh::Cluster,
    pub store: RemoteStoreConfig,
}

/// Where a remote cluster's store is read (read-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteStoreConfig {
    Dir { path: PathBuf },
    Etcd(keymgr::store::EtcdConfig),
}

#[derive(Debug, Clone)]
pub enum StoreConfig {
    Dir { path: PathBuf },
    Etcd(keymgr::store::EtcdConfig),
    Kubernetes(keymgr::store::KubeConfig),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {} error(s):\n{}", .errors.len(), .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, errors: Vec<String> },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            yaml_serde::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.into(),
                message: describe_yaml_error(&e),
            })?
        };
        let mut config = raw.validate().map_err(|errors| ConfigError::Invalid {
            path: path.into(),
            errors,
        })?;
        config.path = path.into();
        Ok(config)
    }

    /// The pod CIDRs this node publishes: its `podCIDRs`, and its `hostAddress` as a host
    /// route.
    pub fn published_pod_cidrs(&self) -> Vec<IpNet> {
        let mut cidrs = self.pod_cidrs.clone();
        cidrs.extend(self.host_address.map(IpNet::from));
        cidrs
    }

    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join(format!("{}.key", self.interface))
    }

    pub fn admin_socket(&self) -> PathBuf {
        crate::api::socket_path(&self.run_dir)
    }
}

fn describe_yaml_error(e: &yaml_serde::Error) -> String {
    match e.location() {
        Some(loc) => format!("line {}, column {}: {e}", loc.line(), loc.column()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
