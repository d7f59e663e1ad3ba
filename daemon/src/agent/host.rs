//! A host without pods (`hostAddress`, a VM or bare-metal machine): its agent publishes, in its
//! own cluster's store, a Pod for its endpoint (its `labels` at `hostAddress`, marked as a host
//! endpoint, on no node) and a Node with the same labels, so that every agent — in every
//! linked cluster — gives its address an identity that `fromEndpoints`/`toEndpoints` select,
//! and `nodeSelector` host policies select the host itself. Retried until the store takes it.

use std::time::Duration;

use keymgr::store::objects::{ObjectRef, ObjectStore};
use serde_json::{json, Value};

use crate::config::Config;

const RETRY_EVERY: Duration = Duration::from_secs(5);

/// The Pod and the Node that stand for this host, if it is one.
pub fn objects(config: &Config) -> Vec<Value> {
    let Some(ip) = config.host_address else {
        return Vec::new();
    };
    let annotations = json!({ policy::model::HOST_ENDPOINT_ANNOTATION: "true" });
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": config.node_name,
            "namespace": config.host_namespace,
            "labels": config.labels,
            "annotations": annotations,
        },
        "status": { "podIPs": [{ "ip": ip.to_string() }] },
    });
    let addresses: Vec<Value> = config
        .node_ips
        .iter()
        .map(|a| json!({ "type": "InternalIP", "address": a.to_string() }))
        .collect();
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": config.node_name, "labels": config.labels },
        "status": { "addresses": addresses },
    });
    vec![pod, node]
}

/// Writes [`objects`] into the store, retrying until it answers.
pub async fn publish(config: Config, store: std::sync::Arc<ObjectStore>) {
    let objects: Vec<(ObjectRef, String)> = objects(&config)
        .into_iter()
        .filter_map(|v| Some((ObjectRef::of(&v).ok()?, v.to_string())))
        .collect();
    if objects.is_empty() {
        return;
    }
    let mut warned = false;
    loop {
        match store.write(objects.clone(), Vec::new()).await {
            Ok(()) => {
                tracing::info!(
                    node = %config.node_name,
                    namespace = %config.host_namespace,
                    labels = ?config.labels,
                    "host endpoint published (Pod and Node with this host's labels)"
                );
                return;
            }
            Err(e) if !warned => {
                tracing::warn!("publishing this host's endpoint: {e}; retrying every {RETRY_EVERY:?} (until then its address counts as world to policy)");
                warned = true;
            }
            Err(e) => tracing::debug!("publishing this host's endpoint: {e}"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the host publishes loads as a host endpoint with its labels, on no node, and as
    /// a Node with the same labels (what `nodeSelector` reads).
    #[test]
    fn the_host_loads_as_a_host_endpoint_and_a_labelled_node() {
        let text = "nodeName: vm-1\nnodeIPs: [198.18.0.9]\nclusterPodCIDRs: [10.244.0.0/16]\n\
                    hostAddress: 10.244.200.1\nlabels: {role: db-vm}\nhostNamespace: vms\n";
        let config = Config::parse(text, std::path::Path::new("agent.yaml")).unwrap();
        let docs: Vec<String> = objects(&config).iter().map(Value::to_string).collect();
        let texts = docs.iter().map(|d| ("host", d.as_str()));
        let b = policy::load_with(texts, policy::LoadOptions::default()).unwrap();
        let ep = b.endpoint("vms", "vm-1").expect("the host endpoint");
        assert!(ep.host && ep.node.is_none(), "{ep:?}");
        assert_eq!(ep.labels["role"], "db-vm");
        assert_eq!(
            ep.ips,
            vec!["10.244.200.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(b.nodes["vm-1"].labels["role"], "db-vm");
        // Not a host: nothing to publish.
        let node = Config::parse(
            "nodeName: n1\nnodeIPs: [198.18.0.1]\nclusterPodCIDRs: [10.244.0.0/16]\n",
            std::path::Path::new("agent.yaml"),
        )
        .unwrap();
        assert!(objects(&node).is_empty());
    }
}
