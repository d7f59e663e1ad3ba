//! Seeds of `store_record`: node records as agents publish them in the dir and etcd stores (with
//! and without a rotation under way), the malformed ones the store tests refuse, Kubernetes Node
//! objects as the API server sends them with wiremesh's annotations, and stored policy objects.

use std::path::Path;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keymgr::{NodeRecord, PrivateKey};
use wiremesh_fuzz::store_record::{encode, NODES_PREFIX};

fn record(name: &str, n: u8) -> NodeRecord {
    let key = PrivateKey::from_bytes([n; 32]).public_key();
    let endpoint = format!("198.18.0.{n}:51871").parse().expect("literal");
    NodeRecord {
        cluster_name: "lab".into(),
        pod_cidrs: vec![
            format!("10.244.{n}.0/24").parse().expect("literal"),
            format!("fd00:244:{n}::/64").parse().expect("literal"),
        ],
        node_ips: vec![format!("198.18.0.{n}").parse().expect("literal")],
        key_epoch: 1,
        ..NodeRecord::new(name, key, endpoint)
    }
}

fn node(name: &str, n: u8, annotations: serde_json::Value) -> Vec<u8> {
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: serde_json::from_value(annotations).expect("string annotations"),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(format!("10.244.{n}.0/24")),
            pod_cidrs: Some(vec![
                format!("10.244.{n}.0/24"),
                format!("fd00:244:{n}::/64"),
            ]),
            ..NodeSpec::default()
        }),
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: format!("198.18.0.{n}"),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: name.into(),
                },
            ]),
            ..NodeStatus::default()
        }),
    };
    serde_json::to_vec_pretty(&node).expect("a Node serialises")
}

/// Writes the `store_record` corpus under `corpus`.
pub fn write_all(corpus: &Path) -> std::io::Result<()> {
    let dir = corpus.join("store_record");
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(Path::new(&dir).join(name), bytes);
    let json = |r: &NodeRecord| serde_json::to_vec_pretty(r).expect("a record serialises");

    let plain = record("node-1", 1);
    let mut rotating = record("node-2", 2);
    rotating.key_epoch = 7;
    rotating.key_created = Some("2026-01-02T03:04:05Z".into());
    rotating.next_public_key = Some(PrivateKey::from_bytes([9; 32]).public_key());
    write("dir-record", encode(0, "node-1", &json(&plain)))?;
    write("dir-record-rotating", encode(0, "node-2", &json(&rotating)))?;
    write("dir-record-wrong-name", encode(0, "node-3", &json(&plain)))?;
    write("dir-not-json", encode(0, "node-2", b"{ not json"))?;
    let mut zero = serde_json::to_value(&plain).expect("a record serialises");
    zero["publicKey"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
    write("dir-zero-key", encode(0, "node-1", zero.to_string().as_bytes()))?;
    let key = |name: &str| format!("{NODES_PREFIX}{name}");
    write("etcd-record", encode(1, &key("node-1"), &serde_json::to_vec(&plain).expect("json")))?;
    write("etcd-record-rotating", encode(1, &key("node-2"), &json(&rotating)))?;
    write("etcd-nested-key", encode(1, &key("a/b"), &json(&plain)))?;

    let pub_b64 = |n: u8| PrivateKey::from_bytes([n; 32]).public_key().to_base64();
    let published = serde_json::json!({
        "wiremesh.io/wg-pub-key": pub_b64(1),
        "wiremesh.io/wg-endpoint": "198.18.0.1:51871",
        "wiremesh.io/wg-next-pub-key": pub_b64(9),
        "wiremesh.io/wg-key-epoch": "3",
        "wiremesh.io/wg-key-created": "2026-01-02T03:04:05Z",
        "wiremesh.io/owner": "owner-a",
        "wiremesh.io/heartbeat": "2026-01-02T03:04:05.000Z",
    });
    write("kube-node", encode(2, "", &node("node-1", 1, published)))?;
    let bad = serde_json::json!({ "wiremesh.io/wg-pub-key": "not base64!" });
    write("kube-node-bad-key", encode(2, "", &node("node-2", 2, bad)))?;
    write("kube-node-unpublished", encode(2, "", &node("node-3", 3, serde_json::json!({}))))?;

    let np = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": "allow-frontend", "namespace": "shop" },
        "spec": {
            "podSelector": { "matchLabels": { "app": "backend" } },
            "ingress": [{ "from": [{ "podSelector": { "matchLabels": { "app": "frontend" } } }],
                          "ports": [{ "protocol": "TCP", "port": 8080 }] }]
        }
    })
    .to_string();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "frontend", "labels": { "app": "frontend" } },
        "spec": { "nodeName": "node-1" },
        "status": { "podIP": "10.244.1.11" }
    })
    .to_string();
    let ccnp = serde_json::json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": { "name": "deny-all" }, "spec": { "endpointSelector": {} }
    })
    .to_string();
    write("dir-object-np", encode(3, "NetworkPolicy_shop_allow-frontend.json", np.as_bytes()))?;
    write("dir-object-pod", encode(3, "Pod_default_frontend.json", pod.as_bytes()))?;
    write("etcd-object-np", encode(4, "NetworkPolicy/shop/allow-frontend", np.as_bytes()))?;
    write("etcd-object-ccnp", encode(4, "CiliumClusterwideNetworkPolicy/_/deny-all", ccnp.as_bytes()))?;
    Ok(())
}
