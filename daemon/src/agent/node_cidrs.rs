//! A DaemonSet's agent has no `podCIDRs` in its config: one ConfigMap serves every node, and the
//! downward API does not carry a Node's `spec.podCIDRs`. With the Kubernetes store the agent
//! reads them from its own Node before anything else, so that strict mode's guard is installed
//! with this node's pods as local from the first moment (without them every packet between two
//! pods of this node would be dropped as pool traffic off the tunnel), and they are checked
//! exactly as configured ones are: inside `clusterPodCIDRs`, or the agent does not start.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::config::{Config, StoreConfig};

/// How long start-up keeps asking an API server that does not answer.
const WAIT: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(2);

/// `config` with its Node's pod CIDRs when it names none and reads the Kubernetes store (a host
/// with `hostAddress` has no pods: left as it is).
pub async fn from_node(mut config: Config) -> Result<Config> {
    let StoreConfig::Kubernetes(kube) = &config.store else {
        return Ok(config);
    };
    if !config.pod_cidrs.is_empty() || config.host_address.is_some() {
        return Ok(config);
    }
    let deadline = Instant::now() + WAIT;
    let cidrs = loop {
        match keymgr::store::node_pod_cidrs(kube, &config.node_name).await {
            Ok(cidrs) => break cidrs,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!("reading this node's spec.podCIDRs: {e}; retrying");
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => bail!(
                "podCIDRs: not in the config, and Node {}'s spec.podCIDRs could not be read within {WAIT:?}: {e}",
                config.node_name
            ),
        }
    };
    for cidr in &cidrs {
        if !config
            .cluster_pod_cidrs
            .iter()
            .any(|pool| pool.contains(cidr))
        {
            bail!(
                "Node {} spec.podCIDRs: {cidr} is outside clusterPodCIDRs {:?}; set clusterPodCIDRs to the cluster's pod CIDR",
                config.node_name,
                config.cluster_pod_cidrs
            );
        }
    }
    if cidrs.is_empty() {
        tracing::warn!(
            node = %config.node_name,
            "Node has no spec.podCIDRs: this node has no pods of its own in the mesh"
        );
    } else {
        tracing::info!(node = %config.node_name, pod_cidrs = ?cidrs, "pod CIDRs from the Node's spec.podCIDRs");
    }
    config.pod_cidrs = cidrs;
    Ok(config)
}
