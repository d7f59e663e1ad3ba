//! Harness of the `store_record` fuzz target: one stored item as a hostile store writer could
//! write it, read by the decoder each backend runs (`keymgr::store::decode`).
//!
//! Input: a backend byte, then the item's name up to the first `\n`, then its value.
//! Backends: 0 dir record file (name = file stem), 1 etcd record (name = key under the nodes
//! prefix), 2 Kubernetes Node object (JSON; name unused), 3 dir object file (name = file name),
//! 4 etcd object (name = key suffix).
//!
//! Properties: nothing panics; a decoded record is valid and belongs to the node it is stored
//! under; a record written back as JSON reads back equal (what an agent publishes, every agent
//! reads); an object decoded under one backend's name is found under the name the other
//! backend gives it.

use keymgr::store::decode;
use keymgr::store::objects::{ObjectRef, StoredObjectError};
use keymgr::NodeRecord;

pub const NODES_PREFIX: &str = "/wiremesh/v1/lab/nodes/";
pub const CLUSTER: &str = "lab";

/// Encodes one input (for seeds).
pub fn encode(backend: u8, name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![backend];
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(value);
    out
}

pub fn run(data: &[u8]) {
    let Some((&backend, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let name = String::from_utf8_lossy(&rest[..split]);
    let value = rest.get(split + 1..).unwrap_or_default();
    match backend % 5 {
        0 => {
            if let Ok(rec) = decode::dir_record(&name, value) {
                check_record(&rec, Some(&name));
            }
        }
        1 => {
            if let Ok(rec) = decode::etcd_record(NODES_PREFIX, name.as_bytes(), value) {
                let node = name.strip_prefix(NODES_PREFIX).unwrap_or(&name);
                check_record(&rec, Some(node));
            }
        }
        2 => {
            if let Ok(Some(rec)) = decode::kubernetes_node(CLUSTER, value) {
                check_record(&rec, None);
            }
        }
        3 => check_object(decode::dir_object(&name, &String::from_utf8_lossy(value)), value),
        _ => check_object(decode::etcd_object(&name, &String::from_utf8_lossy(value)), value),
    }
}

fn check_record(rec: &NodeRecord, stored_under: Option<&str>) {
    assert_eq!(rec.validate(), Ok(()), "a decoder handed out an invalid record");
    if let Some(name) = stored_under {
        assert_eq!(rec.node_name, name, "a record was accepted under another node's name");
    }
    let json = serde_json::to_vec(rec).expect("a record serialises");
    let back = decode::dir_record(&rec.node_name, &json)
        .unwrap_or_else(|e| panic!("a decoded record does not read back: {e:?}"));
    assert_eq!(&back, rec, "a record changed on a round trip through JSON");
}

fn check_object(decoded: Result<ObjectRef, StoredObjectError>, value: &[u8]) {
    let Ok(r) = decoded else {
        return;
    };
    let text = String::from_utf8_lossy(value);
    let file = format!("{}_{}_{}.json", r.kind, r.namespace, r.name);
    match decode::dir_object(&file, &text) {
        Ok(back) => assert_eq!(back, r, "dir name {file}"),
        Err(e) => panic!("dir name {file}: {r} refused: {e}"),
    }
    let ns = if r.namespace.is_empty() { "_" } else { &r.namespace };
    let key = format!("{}/{ns}/{}", r.kind, r.name);
    match decode::etcd_object(&key, &text) {
        Ok(back) => assert_eq!(back, r, "etcd key {key}"),
        Err(e) => panic!("etcd key {key}: {r} refused: {e}"),
    }
}
