//! The `store:` section's etcd and Kubernetes settings, checked into keymgr's store configs
//! (the dir store needs no more than its path). Problems are collected, never fatal one by one.

use std::time::Duration;

use super::{EtcdStoreSection, KubeStoreSection};

/// The etcd section at `key` (`store.etcd`, or `clusterMesh.clusters[i].etcd`).
pub(super) fn etcd_config(
    key: &str,
    raw: Option<EtcdStoreSection>,
    errors: &mut Vec<String>,
) -> keymgr::store::EtcdConfig {
    let mut config = keymgr::store::EtcdConfig::default();
    let Some(raw) = raw else { return config };
    if let Some(endpoints) = raw.endpoints {
        if endpoints.is_empty() {
            errors.push(format!(
                "{key}.endpoints: empty; list at least one client URL, e.g. http://127.0.0.1:2379"
            ));
        }
        for (i, e) in endpoints.iter().enumerate() {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                errors.push(format!(
                    "{key}.endpoints[{i}]: {e:?} is not an http:// or https:// URL"
                ));
            }
        }
        config.endpoints = endpoints;
    }
    if let Some(prefix) = raw.prefix {
        if !prefix.starts_with('/') {
            errors.push(format!("{key}.prefix: {prefix:?} must start with '/'"));
        }
        config.prefix = prefix.trim_end_matches('/').to_string();
    }
    if let Some(ttl) = raw.lease_ttl {
        match humantime::parse_duration(&ttl) {
            Ok(d) if d >= Duration::from_secs(2) => config.lease_ttl = d,
            Ok(_) => errors.push(format!(
                "{key}.leaseTTL: {ttl:?} is too short (at least 2s)"
            )),
            Err(e) => errors.push(format!(
                "{key}.leaseTTL: {ttl:?} is not a duration (e.g. 30s): {e}"
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

pub(super) fn kube_config(
    raw: Option<KubeStoreSection>,
    errors: &mut Vec<String>,
) -> keymgr::store::KubeConfig {
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
