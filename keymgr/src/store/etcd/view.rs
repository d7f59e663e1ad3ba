//! The pure half of the etcd store: the node keys as last listed and watched, turned into a
//! [`Snapshot`] of valid records. No I/O; the session feeds it keys and values.

use crate::store::records::{Read, Records};
use crate::store::refused::Origin;
use crate::store::{decode_record, DecodeError, Snapshot};
use crate::{Admission, NodeRecord, Rejected, Seniority};

/// One key as etcd returns it: the key, its value and its `create_revision`, which is the
/// record's seniority (it stays while the key is rewritten, and only a key deleted and created
/// again gets a later one).
pub(super) type Kv<'a> = (&'a [u8], &'a [u8], i64);

/// Every key under the nodes prefix, parsed when it arrives and validated against the others as
/// it changes; a bad record is warned about once per change, not once per event.
#[derive(Debug)]
pub(super) struct View {
    records: Records,
}

impl View {
    pub(super) fn new(admission: Admission) -> Self {
        Self {
            records: Records::new(Origin::EtcdKey, admission),
        }
    }

    /// Replaces everything with a fresh listing.
    pub(super) fn replace<'a>(
        &mut self,
        nodes_prefix: &str,
        kvs: impl IntoIterator<Item = Kv<'a>>,
    ) {
        let reads = kvs.into_iter().map(|kv| read(nodes_prefix, kv));
        self.records.replace(reads);
    }

    pub(super) fn put(&mut self, nodes_prefix: &str, kv: Kv<'_>) {
        self.records.put(read(nodes_prefix, kv));
    }

    pub(super) fn delete(&mut self, key: &[u8]) {
        self.records.delete(&String::from_utf8_lossy(key));
    }

    /// The valid records; refused ones are logged (naming the key and the reason) once per change.
    pub(super) fn snapshot(&self) -> Snapshot {
        self.records.snapshot()
    }
}

pub(crate) fn read(nodes_prefix: &str, (key, value, created): Kv<'_>) -> Read {
    let key = String::from_utf8_lossy(key).into_owned();
    match parse(nodes_prefix, &key, value) {
        Ok(rec) => Ok((key, Seniority(u128::try_from(created).unwrap_or(0)), rec)),
        Err(e) => Err(Rejected {
            // The key names the node even when its value cannot be read.
            node_name: key.rsplit('/').next().map(str::to_owned),
            source: key,
            reason: e.to_string(),
        }),
    }
}

/// Why an etcd key under the nodes prefix holds no record.
#[derive(Debug, thiserror::Error)]
enum KeyError {
    #[error("key is not {nodes_prefix}<nodeName>")]
    NotANodeKey { nodes_prefix: String },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

fn parse(nodes_prefix: &str, key: &str, value: &[u8]) -> Result<NodeRecord, KeyError> {
    let name = key.strip_prefix(nodes_prefix).unwrap_or(key);
    if name.is_empty() || name.contains('/') {
        return Err(KeyError::NotANodeKey {
            nodes_prefix: nodes_prefix.to_string(),
        });
    }
    Ok(decode_record(value, name)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrivateKey;

    const P: &str = "/wiremesh/v1/lab/nodes/";

    fn rec(name: &str, n: u8) -> NodeRecord {
        let key = PrivateKey::generate().public_key();
        NodeRecord {
            cluster_name: "lab".into(),
            pod_cidrs: vec![format!("10.244.{n}.0/24").parse().unwrap()],
            node_ips: vec![],
            ..NodeRecord::new(name, key, format!("198.18.0.{n}:51871").parse().unwrap())
        }
    }

    fn key(name: &str) -> Vec<u8> {
        format!("{P}{name}").into_bytes()
    }

    #[test]
    fn puts_and_deletes_update_the_snapshot() {
        let mut v = View::new(Admission::default());
        let a = rec("node-1", 1);
        let json = serde_json::to_vec(&a).unwrap();
        v.replace(P, [(&key("node-1")[..], &json[..], 5)]);
        assert_eq!(v.snapshot().nodes.get("node-1"), Some(&a));
        let b = rec("node-2", 2);
        v.put(P, (&key("node-2"), &serde_json::to_vec(&b).unwrap(), 7));
        assert_eq!(v.snapshot().nodes.len(), 2);
        v.delete(&key("node-1"));
        assert_eq!(
            v.snapshot().nodes.keys().collect::<Vec<_>>(),
            vec!["node-2"]
        );
        v.replace(P, []);
        assert!(v.snapshot().nodes.is_empty());
    }

    #[test]
    fn bad_records_are_refused_with_the_reason_and_others_kept() {
        let mut v = View::new(Admission::default());
        v.put(
            P,
            (
                &key("node-1"),
                &serde_json::to_vec(&rec("node-1", 1)).unwrap(),
                7,
            ),
        );
        v.put(P, (&key("node-2"), b"{ not json", 7));
        v.put(
            P,
            (
                &key("node-3"),
                &serde_json::to_vec(&rec("node-4", 4)).unwrap(),
                7,
            ),
        );
        v.put(
            P,
            (&key("a/b"), &serde_json::to_vec(&rec("b", 5)).unwrap(), 7),
        );
        let mut zero = serde_json::to_value(rec("node-6", 6)).unwrap();
        zero["publicKey"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
        v.put(P, (&key("node-6"), zero.to_string().as_bytes(), 7));
        let snap = v.snapshot();
        assert_eq!(snap.nodes.keys().collect::<Vec<_>>(), vec!["node-1"]);
        let reasons = |k: &str| v.records.reason(&format!("{P}{k}")).unwrap().to_owned();
        assert!(
            reasons("node-2").contains("key must be a string"),
            "{}",
            reasons("node-2")
        );
        assert!(reasons("node-3").contains("node-4"));
        assert!(reasons("a/b").contains("<nodeName>"));
        assert!(reasons("node-6").contains("all-zero"));
    }

    #[test]
    fn a_conflict_refuses_the_key_created_later_whatever_its_name() {
        let mut v = View::new(Admission::default());
        let a = rec("node-2", 2);
        let mut b = rec("node-1", 1);
        b.public_key = a.public_key;
        v.put(P, (&key("node-2"), &serde_json::to_vec(&a).unwrap(), 7));
        v.put(P, (&key("node-1"), &serde_json::to_vec(&b).unwrap(), 9));
        assert_eq!(v.snapshot().nodes.keys().collect::<Vec<_>>(), ["node-2"]);
        assert_eq!(v.records.refused(), 1);
        let why = v.records.reason(&format!("{P}node-1")).unwrap();
        assert!(
            why.contains("field publicKey") && why.contains("node node-2"),
            "{why}"
        );
    }
}
