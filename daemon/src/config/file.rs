//! The config file as written: every key of docs/config.md as an optional value, in the
//! file's own spelling (camelCase). Parsing it accepts exactly the documented keys (unknown keys
//! are an error: a misspelt key silently ignored is a setting silently not applied);
//! serialising it writes only the keys that are set, so tools (the lab) can write configs as
//! typed values. It never checks values: that is [`super::validate`]'s job, which reports every
//! problem at once.

use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};

use super::{DatapathKind, DatapathProcess, Enforcement, StoreKind};

/// The whole file. An empty file is `ConfigFile::default()`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// This node's name, unique in the cluster (required). `${VAR}` takes it from the
    /// environment (a DaemonSet's `NODE_NAME` from the downward API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Default `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// This cluster's ID in a cluster mesh, 1-255 (required with `clusterMesh`).
    #[serde(rename = "clusterID", skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<u32>,
    /// The other clusters this one is linked with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_mesh: Option<ClusterMeshSection>,
    /// The WireGuard interface; default `wiremesh_wg0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Default 51871.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// 0 or absent: derived from the underlay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
    /// `ip:port` (IPv6 as `[addr]:port`) or a bare address (then `listenPort`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(rename = "nodeIPs", skip_serializing_if = "Option::is_none")]
    pub node_ips: Option<Vec<String>>,
    #[serde(rename = "podCIDRs", skip_serializing_if = "Option::is_none")]
    pub pod_cidrs: Option<Vec<String>>,
    #[serde(rename = "clusterPodCIDRs", skip_serializing_if = "Option::is_none")]
    pub cluster_pod_cidrs: Option<Vec<String>>,
    /// A host without pods (VM, bare metal): its address in the pod network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_address: Option<String>,
    /// A host's labels: its identity's, as policy selects it (with `hostAddress`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    /// The namespace a host's endpoint is in (with `hostAddress`); default `default`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_namespace: Option<String>,
    /// Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict_mode: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datapath: Option<DatapathKind>,
    /// `agent` (default) or `external` (the data-path DaemonSet runs it; needs `userspace`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datapath_process: Option<DatapathProcess>,
    /// Userspace data path: the kernel's TUN and UDP segmentation/coalescing offloads.
    /// Default true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload: Option<bool>,
    /// Absent: the dir store at `/var/lib/wiremesh/store`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_rotation: Option<KeyRotationSection>,
    /// `ip:port` for Prometheus; absent or empty: the admin socket only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
    /// `ip:port` serving `/healthz` and `/readyz` (kubelet's probes); absent or empty: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_address: Option<String>,
    /// A group name or gid allowed to read status and metrics.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySection>,
}

/// `clusterMesh:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterMeshSection {
    #[serde(default)]
    pub clusters: Vec<RemoteClusterSection>,
}

/// `clusterMesh.clusters[]`: one remote cluster and where its store is read (exactly one of
/// `etcd` and `dir`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteClusterSection {
    pub name: String,
    /// Its `clusterID`.
    pub id: u32,
    /// Its `clusterPodCIDRs`.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdStoreSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<DirStoreSection>,
}

/// `policy:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<Enforcement>,
    /// Absolute path on a BPF filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_pin_dir: Option<PathBuf>,
}

/// `keyRotation:`. Durations as humantime text (`24h`, `90m`) or `0` to disable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRotationSection {
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration_text"
    )]
    pub interval: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration_text"
    )]
    pub commit_timeout: Option<String>,
}

/// `store:`: the kind, and the section of that kind (the others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreSection {
    pub kind: StoreKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<DirStoreSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdStoreSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeStoreSection>,
}

/// `store.kubernetes:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeStoreSection {
    /// Absent: in-cluster config, then `$KUBECONFIG`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration_text"
    )]
    pub heartbeat: Option<String>,
    #[serde(
        rename = "ownerTTL",
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration_text"
    )]
    pub owner_ttl: Option<String>,
}

/// `store.etcd:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdStoreSection {
    /// Client URLs (`http://` or `https://`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<String>>,
    /// Key prefix, starting with `/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTlsSection>,
    #[serde(
        rename = "leaseTTL",
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration_text"
    )]
    pub lease_ttl: Option<String>,
}

/// `store.etcd.tls:` (file paths; the key file is a secret, its path is not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTlsSection {
    pub ca: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// `store.dir:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirStoreSection {
    pub path: PathBuf,
}

/// A duration as a person writes it: a bare number (`0`) as a YAML number, anything else
/// (`24h`) as text. Parsing reads either form into the same text.
fn duration_text<S: Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value.as_deref() {
        Some(text) => match text.parse::<u64>() {
            Ok(n) => s.serialize_u64(n),
            Err(_) => s.serialize_str(text),
        },
        None => s.serialize_none(),
    }
}
