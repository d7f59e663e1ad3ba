//! A decoded configuration: what every request is judged against. Built whole from an
//! [`L7Config`] (every regex compiled, every field checked) or not at all, then shared
//! read-only (`Arc`) by every connection; a new configuration replaces it as one value.
//! It must never be patched in place.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{decode_map, ConfigError, L7Config, PodInfo};

/// A local endpoint the proxy judges traffic for.
#[derive(Debug)]
pub struct LocalEndpoint {
    pub namespace: String,
    pub name: String,
    pub identity: u32,
    pub map: policy::PolicyMap,
    /// The Istio AuthorizationPolicies that apply to it (none: Istio allows).
    pub istio: Vec<policy::istio::AuthzPolicy>,
}

impl LocalEndpoint {
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The configuration in force.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    endpoints: HashMap<IpAddr, Arc<LocalEndpoint>>,
    /// Per prefix length (0..=128): network → identity.
    ipcache: Vec<HashMap<IpNet, u32>>,
    pods: HashMap<IpAddr, Arc<PodInfo>>,
    pub istio: policy::istio::IstioSettings,
}

impl Snapshot {
    /// No configuration: every endpoint unknown, so every request is denied.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Decodes `cfg` entirely, or refuses it with the first error.
    pub fn decode(cfg: &L7Config) -> Result<Self, ConfigError> {
        let mut endpoints: HashMap<IpAddr, Arc<LocalEndpoint>> = HashMap::new();
        for ep in &cfg.endpoints {
            let local = Arc::new(LocalEndpoint {
                namespace: ep.namespace.clone(),
                name: ep.name.clone(),
                identity: ep.identity,
                map: decode_map(ep)?,
                istio: ep.istio.clone(),
            });
            for ip in &ep.ips {
                if let Some(first) = endpoints.insert(*ip, local.clone()) {
                    return Err(ConfigError::DuplicateIp {
                        ip: *ip,
                        first: first.qualified_name(),
                        second: local.qualified_name(),
                    });
                }
            }
        }
        let mut ipcache = vec![HashMap::new(); 129];
        for (net, id) in &cfg.ipcache {
            ipcache[usize::from(net.prefix_len())].insert(net.trunc(), *id);
        }
        let mut pods = HashMap::new();
        for pod in &cfg.pods {
            let pod = Arc::new(pod.clone());
            for ip in &pod.ips {
                pods.insert(*ip, pod.clone());
            }
        }
        Ok(Self {
            version: cfg.version,
            endpoints,
            ipcache,
            pods,
            istio: cfg.istio.clone(),
        })
    }

    /// The local endpoint owning `ip`, if the proxy judges its traffic.
    pub fn endpoint(&self, ip: IpAddr) -> Option<&Arc<LocalEndpoint>> {
        self.endpoints.get(&canonical(ip))
    }

    /// The security identity of `ip`: longest prefix match, `world` when nothing matches.
    pub fn identity(&self, ip: IpAddr) -> u32 {
        let ip = canonical(ip);
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        for len in (0..=max).rev() {
            let Some(table) = self.ipcache.get(usize::from(len)) else {
                continue;
            };
            if table.is_empty() {
                continue;
            }
            if let Ok(net) = IpNet::new(ip, len) {
                if let Some(id) = table.get(&net.trunc()) {
                    return *id;
                }
            }
        }
        policy::identity::WORLD
    }

    /// The pod owning `ip`, anywhere in the cluster.
    pub fn pod(&self, ip: IpAddr) -> Option<&Arc<PodInfo>> {
        self.pods.get(&canonical(ip))
    }
}

/// An IPv4 client accepted on the `[::]` listener shows as `::ffff:a.b.c.d`; policy knows it
/// as `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
