//! The pure half of the Kubernetes store: a `Node` object read as a node record, the annotation
//! patch that publishes one, the ownership rule, and the set of Nodes as last listed and watched
//! turned into a [`Snapshot`] of valid records. No I/O and no clock: callers pass `now`.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use serde_json::{json, Map, Value};

use crate::store::records::{Read, Records};
use crate::store::refused::Origin;
use crate::store::Snapshot;
use crate::{Admission, KeyError, NodeRecord, PublicKey, RecordError, Rejected, Seniority};

pub(super) const PUB_KEY: &str = "wiremesh.io/wg-pub-key";
pub(super) const ENDPOINT: &str = "wiremesh.io/wg-endpoint";
pub(super) const NEXT_PUB_KEY: &str = "wiremesh.io/wg-next-pub-key";
pub(super) const KEY_EPOCH: &str = "wiremesh.io/wg-key-epoch";
pub(super) const KEY_CREATED: &str = "wiremesh.io/wg-key-created";
pub(super) const OWNER: &str = "wiremesh.io/owner";
pub(super) const HEARTBEAT: &str = "wiremesh.io/heartbeat";

fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// Why a Node's annotations (or its spec) hold no valid record.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeError {
    #[error("{annotation} {value:?}: {source}")]
    Key {
        annotation: &'static str,
        value: String,
        #[source]
        source: KeyError,
    },
    #[error("{} is missing", ENDPOINT)]
    NoEndpoint,
    #[error("{} {value:?} is not ip:port: {source}", ENDPOINT)]
    Endpoint {
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("{} {value:?} is not a number: {source}", KEY_EPOCH)]
    Epoch {
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("spec.podCIDRs {value:?}: {source}")]
    PodCidr {
        value: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    #[error(transparent)]
    Invalid(#[from] RecordError),
}

fn parse_key(annotation: &'static str, value: &str) -> Result<PublicKey, NodeError> {
    PublicKey::from_base64(value).map_err(|source| NodeError::Key {
        annotation,
        value: value.to_string(),
        source,
    })
}

/// The record a Node carries, `Ok(None)` when it has no `wg-pub-key` annotation (not a wiremesh
/// node, or not published yet). Pod CIDRs and node IPs come from the Node itself (set by the
/// control plane and kubelet), never from annotations, so an agent cannot claim another range.
pub(super) fn record(node: &Node, cluster: &str) -> Result<Option<NodeRecord>, NodeError> {
    let Some(key) = annotation(node, PUB_KEY) else {
        return Ok(None);
    };
    let name = node.metadata.name.clone().unwrap_or_default();
    let public_key = parse_key(PUB_KEY, key)?;
    let endpoint = annotation(node, ENDPOINT).ok_or(NodeError::NoEndpoint)?;
    let endpoint = endpoint.parse().map_err(|source| NodeError::Endpoint {
        value: endpoint.to_string(),
        source,
    })?;
    let next_public_key = match annotation(node, NEXT_PUB_KEY) {
        None | Some("") => None,
        Some(k) => Some(parse_key(NEXT_PUB_KEY, k)?),
    };
    let key_epoch = match annotation(node, KEY_EPOCH) {
        None => 0,
        Some(e) => e.parse().map_err(|source| NodeError::Epoch {
            value: e.to_string(),
            source,
        })?,
    };
    let spec = node.spec.as_ref();
    let cidrs = match spec.and_then(|s| s.pod_cidrs.clone()) {
        Some(list) if !list.is_empty() => list,
        _ => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    };
    let pod_cidrs = cidrs
        .iter()
        .map(|c| {
            c.parse::<IpNet>().map_err(|source| NodeError::PodCidr {
                value: c.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    let mut node_ips: Vec<IpAddr> = Vec::new();
    for kind in ["InternalIP", "ExternalIP"] {
        let of_kind = addresses.into_iter().flatten().filter(|a| a.type_ == kind);
        node_ips.extend(of_kind.filter_map(|a| a.address.parse::<IpAddr>().ok()));
    }
    let rec = NodeRecord {
        cluster_name: cluster.into(),
        pod_cidrs,
        node_ips,
        key_epoch,
        key_created: annotation(node, KEY_CREATED).map(str::to_owned),
        next_public_key,
        ..NodeRecord::new(name, public_key, endpoint)
    };
    rec.validate()?;
    Ok(Some(rec))
}

/// The annotations that publish `rec` (absent optional fields are removed: `null` in a merge
/// patch), plus our claim on the Node.
pub(super) fn annotations(rec: Option<&NodeRecord>, owner: &str, now: SystemTime) -> Value {
    let mut a = Map::new();
    a.insert(OWNER.into(), owner.into());
    let beat = humantime::format_rfc3339_millis(now).to_string();
    a.insert(HEARTBEAT.into(), beat.into());
    if let Some(rec) = rec {
        a.insert(PUB_KEY.into(), rec.public_key.to_base64().into());
        a.insert(ENDPOINT.into(), rec.endpoint.to_string().into());
        let next = rec.next_public_key.map(|k| k.to_base64());
        a.insert(NEXT_PUB_KEY.into(), next.map_or(Value::Null, Value::from));
        a.insert(KEY_EPOCH.into(), rec.key_epoch.to_string().into());
        let created = rec.key_created.clone();
        a.insert(KEY_CREATED.into(), created.map_or(Value::Null, Value::from));
    }
    Value::Object(a)
}

/// A merge patch of `annotations` that only applies to the Node at `resource_version`.
pub(super) fn patch(annotations: Value, resource_version: Option<&str>) -> Value {
    json!({ "metadata": { "resourceVersion": resource_version, "annotations": annotations } })
}

/// Who may write the Node's wiremesh annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ownership {
    /// Unclaimed, or ours already.
    Free,
    /// Another owner's claim whose heartbeat is older than the owner TTL (or unreadable).
    Stale { owner: String },
    /// Another live agent holds the name.
    Taken { owner: String },
}

pub(super) fn ownership(node: &Node, me: &str, ttl: Duration, now: SystemTime) -> Ownership {
    let owner = match annotation(node, OWNER) {
        None | Some("") => return Ownership::Free,
        Some(o) if o == me => return Ownership::Free,
        Some(o) => o.to_owned(),
    };
    let beat = annotation(node, HEARTBEAT).and_then(|b| humantime::parse_rfc3339(b).ok());
    // A heartbeat from the future (clock skew) counts as fresh: refusing is the safe side.
    match beat.map(|b| now.duration_since(b).unwrap_or_default()) {
        Some(age) if age <= ttl => Ownership::Taken { owner },
        _ => Ownership::Stale { owner },
    }
}

/// Every Node as last listed and watched, parsed when it arrives and validated against the others
/// as it changes; a refused record is warned about once per change, not once per event.
#[derive(Debug)]
pub(super) struct View {
    records: Records,
}

impl View {
    pub(super) fn new(admission: Admission) -> Self {
        Self {
            records: Records::new(Origin::Node, admission),
        }
    }

    /// Replaces everything with a fresh listing.
    pub(super) fn replace<'a>(&mut self, cluster: &str, nodes: impl IntoIterator<Item = &'a Node>) {
        let reads = nodes.into_iter().filter_map(|n| read(cluster, n));
        self.records.replace(reads);
    }

    pub(super) fn put(&mut self, cluster: &str, node: &Node) {
        match read(cluster, node) {
            Some(read) => self.records.put(read),
            None => self.delete(node),
        }
    }

    pub(super) fn delete(&mut self, node: &Node) {
        if let Some(name) = &node.metadata.name {
            self.records.delete(&source(name));
        }
    }

    /// The valid records; refused ones are logged (naming the Node and the reason) once per
    /// change.
    pub(super) fn snapshot(&self) -> Snapshot {
        self.records.snapshot()
    }

    #[cfg(test)]
    fn reason(&self, name: &str) -> Option<&str> {
        self.records.reason(&source(name))
    }
}

/// When the Node was created, in seconds (the API server's precision): the record's seniority.
/// The API server sets it and no client can change it. A Node without one ranks first, as the
/// API server never serves such a Node.
fn seniority(node: &Node) -> Seniority {
    let created = node.metadata.creation_timestamp.as_ref();
    let secs = created.map_or(0, |t| t.0.as_second());
    Seniority(u128::try_from(secs).unwrap_or(0))
}

fn source(name: &str) -> String {
    format!("Node/{name}")
}

/// The record a Node holds or why it is refused; `None` when it holds none (not a wiremesh node,
/// or not published yet).
pub(crate) fn read(cluster: &str, node: &Node) -> Option<Read> {
    let name = node.metadata.name.as_deref()?;
    let source = source(name);
    match record(node, cluster) {
        Ok(Some(rec)) => Some(Ok((source, seniority(node), rec))),
        Ok(None) => None,
        Err(e) => Some(Err(Rejected {
            source,
            node_name: Some(name.to_owned()),
            reason: e.to_string(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrivateKey;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str, n: u8, annotations: Value) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: serde_json::from_value(annotations).unwrap(),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some(format!("10.244.{n}.0/24")),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "ExternalIP".into(),
                        address: format!("198.19.0.{n}"),
                    },
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: name.into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: format!("198.18.0.{n}"),
                    },
                ]),
                ..NodeStatus::default()
            }),
        }
    }

    fn published(name: &str, n: u8) -> (NodeRecord, Node) {
        let key = PrivateKey::generate().public_key();
        let mut rec = NodeRecord::new(name, key, format!("198.18.0.{n}:51871").parse().unwrap());
        rec.key_epoch = 3;
        rec.next_public_key = Some(PrivateKey::generate().public_key());
        let now = SystemTime::now();
        let mut a = annotations(Some(&rec), "owner-a", now);
        a.as_object_mut().unwrap().retain(|_, v| !v.is_null());
        (rec, node(name, n, a))
    }

    #[test]
    fn a_published_node_reads_back_with_cidrs_and_ips_from_the_node() {
        let (rec, n) = published("node-1", 1);
        let got = record(&n, "lab").unwrap().unwrap();
        assert_eq!(got.public_key, rec.public_key);
        assert_eq!(got.next_public_key, rec.next_public_key);
        assert_eq!((got.endpoint, got.key_epoch), (rec.endpoint, 3));
        assert_eq!(got.cluster_name, "lab");
        assert_eq!(
            got.pod_cidrs,
            vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
        );
        let ips: Vec<IpAddr> = vec!["198.18.0.1".parse().unwrap(), "198.19.0.1".parse().unwrap()];
        assert_eq!(got.node_ips, ips, "InternalIP first");
        assert!(matches!(
            record(&node("node-2", 2, json!({})), "lab"),
            Ok(None)
        ));
    }

    #[test]
    fn bad_annotations_are_refused_with_the_reason_and_others_kept() {
        let mut v = View::new(Admission::default());
        let (_, good) = published("node-1", 1);
        v.put("lab", &good);
        let bad = json!({ PUB_KEY: "not base64!", ENDPOINT: "198.18.0.2:51871" });
        v.put("lab", &node("node-2", 2, bad));
        let zero = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        v.put(
            "lab",
            &node(
                "node-3",
                3,
                json!({ PUB_KEY: zero, ENDPOINT: "198.18.0.3:1" }),
            ),
        );
        let key = PrivateKey::generate().public_key().to_base64();
        v.put(
            "lab",
            &node("node-4", 4, json!({ PUB_KEY: key, ENDPOINT: "nowhere" })),
        );
        v.put("lab", &node("node-5", 5, json!({ PUB_KEY: key })));
        let snap = v.snapshot();
        assert_eq!(snap.nodes.keys().collect::<Vec<_>>(), vec!["node-1"]);
        assert!(v.reason("node-2").unwrap().contains("not base64!"));
        assert!(v.reason("node-3").unwrap().contains("all-zero"));
        assert!(v.reason("node-4").unwrap().contains("nowhere"));
        assert!(v.reason("node-5").unwrap().contains("missing"));
        v.delete(&good);
        assert!(v.snapshot().nodes.is_empty());
    }

    #[test]
    fn a_claim_is_taken_only_while_its_heartbeat_is_fresh() {
        let now = SystemTime::now();
        let ttl = Duration::from_secs(40);
        let claimed = |owner: &str, age: u64| {
            let beat = humantime::format_rfc3339_seconds(now - Duration::from_secs(age));
            node("n", 1, json!({ OWNER: owner, HEARTBEAT: beat.to_string() }))
        };
        assert_eq!(
            ownership(&node("n", 1, json!({})), "me", ttl, now),
            Ownership::Free
        );
        assert_eq!(
            ownership(&claimed("me", 5), "me", ttl, now),
            Ownership::Free
        );
        let taken = Ownership::Taken {
            owner: "other".into(),
        };
        assert_eq!(ownership(&claimed("other", 5), "me", ttl, now), taken);
        let stale = Ownership::Stale {
            owner: "other".into(),
        };
        assert_eq!(ownership(&claimed("other", 60), "me", ttl, now), stale);
        let garbled = node("n", 1, json!({ OWNER: "other", HEARTBEAT: "yesterday" }));
        assert_eq!(ownership(&garbled, "me", ttl, now), stale);
    }
}
