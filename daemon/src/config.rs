//! The agent's configuration: one YAML file, every key documented in docs/config.md, validated
//! at start-up with every problem reported at once.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

pub const DEFAULT_INTERFACE: &str = "wiremesh_wg0";
pub const DEFAULT_PORT: u16 = 51871;
/// Outer IPv6 header (40) + UDP (8) + WireGuard data header (16) + Poly1305 tag (16): the
/// largest overhead, so the same MTU works over IPv4 and IPv6 underlays.
pub const WIREGUARD_OVERHEAD: u32 = 80;

/// The file as written. Unknown keys are an error: a misspelt key silently ignored is a
/// setting silently not applied.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    node_name: Option<String>,
    cluster_name: Option<String>,
    interface: Option<String>,
    listen_port: Option<u16>,
    mtu: Option<u32>,
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    endpoint: Option<String>,
    #[serde(rename = "nodeIPs")]
    node_ips: Option<Vec<String>>,
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
    #[serde(rename = "clusterPodCIDRs")]
    cluster_pod_cidrs: Option<Vec<String>>,
    strict_mode: Option<bool>,
    persistent_keepalive: Option<u16>,
    datapath: Option<DatapathKind>,
    store: Option<RawStore>,
    key_rotation: Option<RawKeyRotation>,
    metrics_address: Option<String>,
    admin_group: Option<String>,
    policy: Option<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicy {
    enforcement: Option<Enforcement>,
    bpf_pin_dir: Option<PathBuf>,
}

/// Whether local endpoints get the eBPF policy programs (Cilium's `policy-enforcement-mode`
/// without `always`: an endpoint no policy selects is not isolated, as Kubernetes specifies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawKeyRotation {
    interval: Option<String>,
    commit_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawStore {
    kind: StoreKind,
    dir: Option<RawDirStore>,
    etcd: Option<RawEtcdStore>,
    kubernetes: Option<RawKubeStore>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawKubeStore {
    kubeconfig: Option<PathBuf>,
    heartbeat: Option<String>,
    #[serde(rename = "ownerTTL")]
    owner_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEtcdStore {
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    tls: Option<RawEtcdTls>,
    #[serde(rename = "leaseTTL")]
    lease_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcdTls {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirStore {
    path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    Auto,
    Userspace,
    Kernel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Dir,
    Etcd,
    Kubernetes,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub cluster_name: String,
    pub interface: String,
    pub listen_port: u16,
    /// 0 = derive from the underlay.
    pub mtu: u32,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub endpoint: SocketAddr,
    pub node_ips: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    /// The cluster's whole pod address pool(s): every node's `podCIDRs` lie inside them.
    pub cluster_pod_cidrs: Vec<IpNet>,
    /// Pod traffic to or from another node is encrypted or dropped, never sent or accepted in
    /// clear (requires `cluster_pod_cidrs`).
    pub strict_mode: bool,
    pub persistent_keepalive: u16,
    pub datapath: DatapathKind,
    pub store: StoreConfig,
    pub key_rotation: KeyRotation,
    /// Where Prometheus scrapes `/metrics`; `None` serves them on the admin socket only.
    pub metrics_address: Option<SocketAddr>,
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
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            yaml_serde::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.into(),
                message: describe_yaml_error(&e),
            })?
        };
        raw.validate().map_err(|errors| ConfigError::Invalid {
            path: path.into(),
            errors,
        })
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

impl RawConfig {
    fn validate(self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let node_name = match self.node_name {
            Some(n) if is_dns_subdomain(&n) => n,
            Some(n) => {
                errors.push(format!("nodeName: {n:?} is not a lowercase RFC 1123 name"));
                String::new()
            }
            None => {
                errors.push("nodeName: required (this node's name, unique in the cluster)".into());
                String::new()
            }
        };
        let cluster_name = self.cluster_name.unwrap_or_else(|| "default".into());
        if !is_dns_subdomain(&cluster_name) {
            errors.push(format!(
                "clusterName: {cluster_name:?} is not a lowercase RFC 1123 name"
            ));
        }
        let interface = self.interface.unwrap_or_else(|| DEFAULT_INTERFACE.into());
        if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ', '\0']) {
            errors.push(format!("interface: {interface:?} is not a valid Linux interface name (1-15 characters, no '/' or spaces)"));
        }
        let listen_port = self.listen_port.unwrap_or(DEFAULT_PORT);
        let mtu = self.mtu.unwrap_or(0);
        if mtu != 0 && !(1280..=65_535).contains(&mtu) {
            errors.push(format!(
                "mtu: {mtu} is out of range (0 for auto, or 1280-65535)"
            ));
        }
        let node_ips: Vec<IpAddr> = self
            .node_ips
            .unwrap_or_default()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    errors.push(format!("nodeIPs[{i}]: {s:?} is not an IP address"));
                    None
                }
            })
            .collect();
        let pod_cidrs = cidrs(
            "podCIDRs",
            self.pod_cidrs,
            "10.244.1.0/24 or fd00:10:244:1::/64",
            &mut errors,
        );
        let cluster_pod_cidrs = cidrs(
            "clusterPodCIDRs",
            self.cluster_pod_cidrs,
            "10.244.0.0/16 or fd00:10:244::/56",
            &mut errors,
        );
        let strict_mode = self.strict_mode.unwrap_or(true);
        if strict_mode && cluster_pod_cidrs.is_empty() {
            errors.push(
                "clusterPodCIDRs: required while strictMode is true (the default): the cluster's pod \
                 address pool(s), e.g. [10.244.0.0/16, fd00:10:244::/56], so that pod traffic to \
                 other nodes is encrypted or dropped, never sent in clear; set strictMode: false \
                 to run without this guarantee"
                    .into(),
            );
        }
        for (i, net) in pod_cidrs.iter().enumerate() {
            if !cluster_pod_cidrs.is_empty() && !cluster_pod_cidrs.iter().any(|c| c.contains(net)) {
                errors.push(format!(
                    "podCIDRs[{i}]: {net} is not inside clusterPodCIDRs ({})",
                    cluster_pod_cidrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let endpoint = match (self.endpoint, node_ips.first()) {
            (Some(s), _) => match parse_endpoint(&s, listen_port) {
                Some(ep) => Some(ep),
                None => {
                    errors.push(format!(
                        "endpoint: {s:?} is not ip:port (IPv6 as [addr]:port)"
                    ));
                    None
                }
            },
            (None, Some(ip)) => Some(SocketAddr::new(*ip, listen_port)),
            (None, None) => {
                errors.push("endpoint: required when nodeIPs is empty (how other nodes reach this one, ip:port)".into());
                None
            }
        };
        if strict_mode {
            underlay_outside_pool(&node_ips, endpoint, &cluster_pod_cidrs, &mut errors);
        }
        let store = match self.store {
            None => Some(StoreConfig::Dir {
                path: PathBuf::from("/var/lib/wiremesh/store"),
            }),
            Some(RawStore {
                kind: StoreKind::Dir,
                dir,
                ..
            }) => Some(StoreConfig::Dir {
                path: dir.map_or_else(|| PathBuf::from("/var/lib/wiremesh/store"), |d| d.path),
            }),
            Some(RawStore {
                kind: StoreKind::Etcd,
                etcd,
                ..
            }) => Some(StoreConfig::Etcd(etcd_config(etcd, &mut errors))),
            Some(RawStore {
                kind: StoreKind::Kubernetes,
                kubernetes,
                ..
            }) => Some(StoreConfig::Kubernetes(kube_config(
                kubernetes,
                &mut errors,
            ))),
        };
        let rotation = self.key_rotation.unwrap_or(RawKeyRotation {
            interval: None,
            commit_timeout: None,
        });
        let mut duration = |key: &str, value: Option<String>, default: Duration| match value {
            None => default,
            Some(v) if v.trim() == "0" => Duration::ZERO,
            Some(v) => humantime::parse_duration(&v).unwrap_or_else(|e| {
                errors.push(format!(
                    "{key}: {v:?} is not a duration (e.g. 24h, 90m, 0 to disable): {e}"
                ));
                default
            }),
        };
        let key_rotation = KeyRotation {
            interval: duration(
                "keyRotation.interval",
                rotation.interval,
                Duration::from_secs(24 * 3600),
            ),
            commit_timeout: duration(
                "keyRotation.commitTimeout",
                rotation.commit_timeout,
                Duration::from_secs(60),
            ),
        };
        let metrics_address = match self.metrics_address.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(format!(
                        "metricsAddress: {s:?} is not ip:port (e.g. 0.0.0.0:9871)"
                    ));
                    None
                }
            },
        };
        let admin_group = self
            .admin_group
            .as_deref()
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .and_then(|g| resolve_group(g, &mut errors));
        let raw_policy = self.policy.unwrap_or(RawPolicy {
            enforcement: None,
            bpf_pin_dir: None,
        });
        let policy = PolicyConfig {
            enforcement: raw_policy.enforcement.unwrap_or(Enforcement::Default),
            bpf_pin_dir: raw_policy
                .bpf_pin_dir
                .unwrap_or_else(|| wiremesh_enforce::DEFAULT_PIN_DIR.into()),
        };
        if !policy.bpf_pin_dir.is_absolute() {
            errors.push(format!(
                "policy.bpfPinDir: {:?} must be an absolute path",
                policy.bpf_pin_dir
            ));
        }
        let (Some(endpoint), Some(store), true) = (endpoint, store, errors.is_empty()) else {
            return Err(errors);
        };
        Ok(Config {
            node_name,
            cluster_name,
            interface,
            listen_port,
            mtu,
            state_dir: self.state_dir.unwrap_or_else(|| "/var/lib/wiremesh".into()),
            run_dir: self.run_dir.unwrap_or_else(|| "/run/wiremesh".into()),
            endpoint,
            node_ips,
            pod_cidrs,
            cluster_pod_cidrs,
            strict_mode,
            persistent_keepalive: self.persistent_keepalive.unwrap_or(0),
            datapath: self.datapath.unwrap_or(DatapathKind::Auto),
            store,
            key_rotation,
            metrics_address,
            admin_group,
            policy,
        })
    }
}

fn etcd_config(raw: Option<RawEtcdStore>, errors: &mut Vec<String>) -> keymgr::store::EtcdConfig {
    let mut config = keymgr::store::EtcdConfig::default();
    let Some(raw) = raw else { return config };
    if let Some(endpoints) = raw.endpoints {
        if endpoints.is_empty() {
            errors.push("store.etcd.endpoints: empty; list at least one client URL, e.g. http://127.0.0.1:2379".into());
        }
        for (i, e) in endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                errors.push(format!(
                    "store.etcd.endpoints[{i}]: {e:?} is not an http:// or https:// URL"
                ));
            }
        }
        config.endpoints = endpoints;
    }
    if let Some(prefix) = raw.prefix {
        if !prefix.starts_with('/') {
            errors.push(format!("store.etcd.prefix: {prefix:?} must start with '/'"));
        }
        config.prefix = prefix.trim_end_matches('/').to_string();
    }
    if let Some(ttl) = raw.lease_ttl {
        match humantime::parse_duration(&ttl) {
            Ok(d) if d >= Duration::from_secs(2) => config.lease_ttl = d,
            Ok(_) => errors.push(format!(
                "store.etcd.leaseTTL: {ttl:?} is too short (at least 2s)"
            )),
            Err(e) => errors.push(format!(
                "store.etcd.leaseTTL: {ttl:?} is not a duration (e.g. 30s): {e}"
            )),
        }
    }
    config.tls = raw.tls.map(|t| keymgr::store::EtcdTls {
        ca: t.ca,
        cert: t.cert,
        key: t.key,
    });
    config
}

fn kube_config(raw: Option<RawKubeStore>, errors: &mut Vec<String>) -> keymgr::store::KubeConfig {
    let mut config = keymgr::store::KubeConfig::default();
    let Some(raw) = raw else { return config };
    config.kubeconfig = raw.kubeconfig;
    let mut duration = |key: &str, value: Option<String>, into: &mut Duration| {
        if let Some(v) = value {
            match humantime::parse_duration(&v) {
                Ok(d) => *into = d,
                Err(e) => errors.push(format!("{key}: {v:?} is not a duration (e.g. 10s): {e}")),
            }
        }
    };
    duration(
        "store.kubernetes.heartbeat",
        raw.heartbeat,
        &mut config.heartbeat,
    );
    duration(
        "store.kubernetes.ownerTTL",
        raw.owner_ttl,
        &mut config.owner_ttl,
    );
    if config.owner_ttl < config.heartbeat * 2 {
        errors.push(format!(
            "store.kubernetes.ownerTTL: {:?} must be at least twice heartbeat ({:?})",
            config.owner_ttl, config.heartbeat
        ));
    }
    config
}

/// A list of CIDRs under `key`, each without host bits; every bad entry is reported by index.
fn cidrs(
    key: &str,
    raw: Option<Vec<String>>,
    example: &str,
    errors: &mut Vec<String>,
) -> Vec<IpNet> {
    raw.unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s.parse::<IpNet>() {
            Ok(net) if net.trunc() == net => Some(net),
            Ok(net) => {
                errors.push(format!(
                    "{key}[{i}]: {s:?} has host bits set (did you mean {}?)",
                    net.trunc()
                ));
                None
            }
            Err(_) => {
                errors.push(format!("{key}[{i}]: {s:?} is not a CIDR (e.g. {example})"));
                None
            }
        })
        .collect()
}

/// A group name or numeric gid, which must exist on this host (a misspelt group would leave
/// the sockets root-only without saying so).
fn resolve_group(name: &str, errors: &mut Vec<String>) -> Option<u32> {
    let found = match name.parse::<u32>() {
        Ok(gid) => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)),
        Err(_) => nix::unistd::Group::from_name(name),
    };
    match found {
        Ok(Some(g)) if g.gid.as_raw() != 0 => Some(g.gid.as_raw()),
        Ok(Some(_)) => {
            errors.push(format!(
                "adminGroup: {name:?} is gid 0 (root's group); name a group of its own for read-only access"
            ));
            None
        }
        Ok(None) => {
            errors.push(format!(
                "adminGroup: no group {name:?} on this host (create it with `groupadd {name}`, or remove the key for root-only sockets)"
            ));
            None
        }
        Err(e) => {
            errors.push(format!("adminGroup: cannot look up {name:?}: {e}"));
            None
        }
    }
}

fn parse_endpoint(s: &str, default_port: u16) -> Option<SocketAddr> {
    s.parse::<SocketAddr>().ok().or_else(|| {
        s.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Strict mode drops pool traffic that leaves by any interface but the tunnel, so an underlay
/// address inside the pool would have the guard drop the tunnel's own packets.
fn underlay_outside_pool(
    node_ips: &[IpAddr],
    endpoint: Option<SocketAddr>,
    pool: &[IpNet],
    errors: &mut Vec<String>,
) {
    let named = node_ips
        .iter()
        .enumerate()
        .map(|(i, ip)| (format!("nodeIPs[{i}]"), *ip))
        .chain(endpoint.map(|e| ("endpoint".to_string(), e.ip())));
    for (field, ip) in named {
        if let Some(net) = pool.iter().find(|net| net.contains(&ip)) {
            errors.push(format!(
                "{field}: {ip} lies inside clusterPodCIDRs ({net}); with strictMode the guard \
                 would drop the tunnel's own packets: the underlay must be outside the pod pool"
            ));
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
