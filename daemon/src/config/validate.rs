//! From the file as written to the validated [`Config`]: defaults applied, every value checked,
//! every problem collected (with its key) so that one run of the agent reports them all. It
//! reads nothing but the file's values (and the host's group database for `adminGroup`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::host::host;
use super::store::{etcd_config, kube_config};
use super::{
    Config, ConfigFile, Enforcement, KeyRotation, KeyRotationSection, PolicyConfig, PolicySection,
    StoreConfig, StoreKind, StoreSection, DEFAULT_INTERFACE, DEFAULT_PORT,
};

impl ConfigFile {
    /// The validated config, or every problem found (in the order of the keys).
    pub(super) fn validate(self) -> Result<Config, Vec<String>> {
        let mut errors = Vec::new();
        let node_name = node_name(self.node_name, &mut errors);
        let cluster_name = cluster_name(self.cluster_name, &mut errors);
        let mesh_set = has_clusters(self.cluster_mesh.as_ref());
        let cluster_id = super::mesh::cluster_id(self.cluster_id, &mut errors);
        let cluster_mesh = super::mesh::cluster_mesh(self.cluster_mesh, &mut errors);
        let interface = interface(self.interface, &mut errors);
        let listen_port = self.listen_port.unwrap_or(DEFAULT_PORT);
        let mtu = mtu(self.mtu, &mut errors);
        let node_ips = node_ips(self.node_ips, &mut errors);
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
        let raw_host = (self.host_address, self.labels, self.host_namespace);
        let (host_address, labels, host_namespace) =
            host(raw_host, &pod_cidrs, &cluster_pod_cidrs, &mut errors);
        let strict_mode = self.strict_mode.unwrap_or(true);
        pool_checks(strict_mode, &pod_cidrs, &cluster_pod_cidrs, &mut errors);
        let endpoint = endpoint(self.endpoint, &node_ips, listen_port, &mut errors);
        mesh_needs(mesh_set, cluster_id, &cluster_pod_cidrs, &mut errors);
        if strict_mode {
            let pools = guarded_pools(&cluster_pod_cidrs, &cluster_mesh);
            underlay_outside_pool(&node_ips, endpoint, &pools, &mut errors);
        }
        let store = store_config(self.store, &mut errors);
        let key_rotation = key_rotation(self.key_rotation, &mut errors);
        let (metrics_address, health_address) =
            listen_addresses(self.metrics_address, self.health_address, &mut errors);
        let admin_group = admin_group(self.admin_group.as_deref(), &mut errors);
        let policy = policy_config(self.policy, &mut errors);
        let (datapath, datapath_process) =
            super::datapath(self.datapath, self.datapath_process, &mut errors);
        let (Some(endpoint), Some(store), true) = (endpoint, store, errors.is_empty()) else {
            return Err(errors);
        };
        Ok(Config {
            path: PathBuf::new(),
            node_name,
            cluster_name,
            cluster_id,
            cluster_mesh,
            interface,
            listen_port,
            mtu,
            state_dir: self.state_dir.unwrap_or_else(|| "/var/lib/wiremesh".into()),
            run_dir: self
                .run_dir
                .unwrap_or_else(|| crate::api::DEFAULT_RUN_DIR.into()),
            endpoint,
            node_ips,
            pod_cidrs,
            host_address,
            labels,
            host_namespace,
            cluster_pod_cidrs,
            strict_mode,
            persistent_keepalive: self.persistent_keepalive.unwrap_or(0),
            datapath,
            datapath_process,
            offload: self.offload.unwrap_or(true),
            store,
            key_rotation,
            metrics_address,
            health_address,
            admin_group,
            policy,
        })
    }
}

/// `adminGroup`: absent or empty is none.
fn admin_group(raw: Option<&str>, errors: &mut Vec<String>) -> Option<u32> {
    raw.map(str::trim)
        .filter(|g| !g.is_empty())
        .and_then(|g| resolve_group(g, errors))
}

fn node_name(raw: Option<String>, errors: &mut Vec<String>) -> String {
    let raw = match raw.map(|n| expand_env(&n, |var| std::env::var(var).ok())) {
        Some(Err(e)) => {
            errors.push(format!("nodeName: {e}"));
            return String::new();
        }
        Some(Ok(n)) => Some(n),
        None => None,
    };
    match raw {
        Some(n) if policy::names::is_dns_subdomain(&n) => n,
        Some(n) => {
            errors.push(format!("nodeName: {n:?} is not a lowercase RFC 1123 name"));
            String::new()
        }
        None => {
            errors.push("nodeName: required (this node's name, unique in the cluster)".into());
            String::new()
        }
    }
}

/// Replaces each `${VAR}` in `value` with the variable's value from `lookup`: how a
/// DaemonSet hands every agent its node's name (`nodeName: ${NODE_NAME}`, with `NODE_NAME` from
/// the downward API's `spec.nodeName`). An unset or empty variable, or an unclosed `${`, is an
/// error: a node must never run under a name it did not mean.
pub(crate) fn expand_env(
    value: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{value:?}: `${{` without a closing `}}`"))?;
        let var = &after[..end];
        match lookup(var).filter(|v| !v.is_empty()) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "{value:?} names the environment variable {var}, which is not set (in a \
                     DaemonSet, set it from the downward API, e.g. fieldRef spec.nodeName)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn node_ips(raw: Option<Vec<String>>, errors: &mut Vec<String>) -> Vec<IpAddr> {
    raw.unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            // `${NODE_IP}`: a DaemonSet's status.hostIP from the downward API.
            let s = match expand_env(raw, |var| std::env::var(var).ok()) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(format!("nodeIPs[{i}]: {e}"));
                    return None;
                }
            };
            match s.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    errors.push(format!("nodeIPs[{i}]: {s:?} is not an IP address"));
                    None
                }
            }
        })
        .collect()
}

/// Strict mode needs the cluster's pool, and every local pod CIDR must lie inside it.
fn pool_checks(
    strict_mode: bool,
    pod_cidrs: &[IpNet],
    cluster_pod_cidrs: &[IpNet],
    errors: &mut Vec<String>,
) {
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
}

/// A cluster mesh needs this cluster's ID (identities carry it) and its pool (the others' must
/// not overlap it).
fn mesh_needs(
    mesh_set: bool,
    cluster_id: Option<cluster_mesh::ClusterId>,
    cluster_pod_cidrs: &[IpNet],
    errors: &mut Vec<String>,
) {
    if !mesh_set {
        return;
    }
    if cluster_id.is_none() {
        errors.push(
            "clusterID: required with clusterMesh (this cluster's ID, 1-255, unique in the mesh)"
                .into(),
        );
    }
    if cluster_pod_cidrs.is_empty() {
        errors.push(
            "clusterPodCIDRs: required with clusterMesh (the clusters' pools must be disjoint)"
                .into(),
        );
    }
}

/// Every pool strict mode's guard covers: this cluster's and every remote cluster's.
fn guarded_pools(local: &[IpNet], remotes: &[super::RemoteCluster]) -> Vec<IpNet> {
    let remote = remotes.iter().flat_map(|r| r.cluster.pod_cidrs.iter());
    local.iter().chain(remote).copied().collect()
}

fn has_clusters(mesh: Option<&super::ClusterMeshSection>) -> bool {
    mesh.is_some_and(|m| !m.clusters.is_empty())
}

fn cluster_name(raw: Option<String>, errors: &mut Vec<String>) -> String {
    let name = raw.unwrap_or_else(|| "default".into());
    if !policy::names::is_dns_subdomain(&name) {
        errors.push(format!(
            "clusterName: {name:?} is not a lowercase RFC 1123 name"
        ));
    }
    name
}

fn interface(raw: Option<String>, errors: &mut Vec<String>) -> String {
    let interface = raw.unwrap_or_else(|| DEFAULT_INTERFACE.into());
    if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ', '\0']) {
        errors.push(format!("interface: {interface:?} is not a valid Linux interface name (1-15 characters, no '/' or spaces)"));
    }
    interface
}

fn mtu(raw: Option<u32>, errors: &mut Vec<String>) -> u32 {
    let mtu = raw.unwrap_or(0);
    if mtu != 0 && !(1280..=65_535).contains(&mtu) {
        errors.push(format!(
            "mtu: {mtu} is out of range (0 for auto, or 1280-65535)"
        ));
    }
    mtu
}

/// `endpoint`, else the first node IP at `listen_port`.
fn endpoint(
    raw: Option<String>,
    node_ips: &[IpAddr],
    listen_port: u16,
    errors: &mut Vec<String>,
) -> Option<SocketAddr> {
    match (raw, node_ips.first()) {
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
    }
}

fn store_config(raw: Option<StoreSection>, errors: &mut Vec<String>) -> Option<StoreConfig> {
    match raw {
        None => Some(StoreConfig::Dir {
            path: PathBuf::from("/var/lib/wiremesh/store"),
        }),
        Some(StoreSection {
            kind: StoreKind::Dir,
            dir,
            ..
        }) => Some(StoreConfig::Dir {
            path: dir.map_or_else(|| PathBuf::from("/var/lib/wiremesh/store"), |d| d.path),
        }),
        Some(StoreSection {
            kind: StoreKind::Etcd,
            etcd,
            ..
        }) => Some(StoreConfig::Etcd(etcd_config("store.etcd", etcd, errors))),
        Some(StoreSection {
            kind: StoreKind::Kubernetes,
            kubernetes,
            ..
        }) => Some(StoreConfig::Kubernetes(kube_config(kubernetes, errors))),
    }
}

fn key_rotation(raw: Option<KeyRotationSection>, errors: &mut Vec<String>) -> KeyRotation {
    let rotation = raw.unwrap_or_default();
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
    KeyRotation {
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
    }
}

/// `metricsAddress` and `healthAddress`, which must differ.
fn listen_addresses(
    metrics: Option<String>,
    health: Option<String>,
    errors: &mut Vec<String>,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let metrics = socket_address("metricsAddress", metrics, errors);
    let health = socket_address("healthAddress", health, errors);
    if let Some(h) = health.filter(|h| Some(*h) == metrics) {
        errors.push(format!(
            "healthAddress: {h} is also metricsAddress; give the probes their own port"
        ));
    }
    (metrics, health)
}

/// An optional listening address (`metricsAddress`, `healthAddress`); empty is off.
fn socket_address(key: &str, raw: Option<String>, errors: &mut Vec<String>) -> Option<SocketAddr> {
    match raw.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!("{key}: {s:?} is not ip:port (e.g. 127.0.0.1:9879)"));
                None
            }
        },
    }
}

fn policy_config(raw: Option<PolicySection>, errors: &mut Vec<String>) -> PolicyConfig {
    let raw = raw.unwrap_or_default();
    let policy = PolicyConfig {
        enforcement: raw.enforcement.unwrap_or(Enforcement::Default),
        bpf_pin_dir: raw
            .bpf_pin_dir
            .unwrap_or_else(|| wiremesh_enforce::DEFAULT_PIN_DIR.into()),
    };
    if !policy.bpf_pin_dir.is_absolute() {
        errors.push(format!(
            "policy.bpfPinDir: {:?} must be an absolute path",
            policy.bpf_pin_dir
        ));
    }
    policy
}

/// A list of CIDRs under `key`, each without host bits; every bad entry is reported by index.
pub(super) fn cidrs(
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
