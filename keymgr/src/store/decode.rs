//! Each backend's reading of one stored item, public so that fuzz targets and tests outside the
//! crate reach exactly the code the stores run (the stores call the same functions). Pure: bytes
//! in, a record (or object reference) or the reason it is refused out. Must never panic, whatever
//! the bytes: a store writer is not trusted.

use k8s_openapi::api::core::v1::Node;

use super::objects::{ObjectRef, StoredObjectError};
use crate::{NodeRecord, Rejected};

/// A dir store file `<file_stem>.json` holding `bytes`.
pub fn dir_record(file_stem: &str, bytes: &[u8]) -> Result<NodeRecord, Rejected> {
    super::decode_record(bytes, file_stem).map_err(|e| Rejected {
        source: format!("{file_stem}.json"),
        node_name: Some(file_stem.to_owned()),
        reason: e.to_string(),
    })
}

/// An etcd key under `nodes_prefix` and its value.
pub fn etcd_record(nodes_prefix: &str, key: &[u8], value: &[u8]) -> Result<NodeRecord, Rejected> {
    super::etcd::view::read(nodes_prefix, (key, value, 0)).map(|(_, _, rec)| rec)
}

/// A Kubernetes `Node` object as the API server sends it (JSON); `Ok(None)` when it carries no
/// wiremesh record.
pub fn kubernetes_node(cluster: &str, node_json: &[u8]) -> Result<Option<NodeRecord>, Rejected> {
    let node: Node = serde_json::from_slice(node_json).map_err(|e| Rejected {
        source: "Node".into(),
        node_name: None,
        reason: format!("invalid Node JSON: {e}"),
    })?;
    match super::kubernetes::node::read(cluster, &node) {
        None => Ok(None),
        Some(read) => read.map(|(_, _, rec)| Some(rec)),
    }
}

/// A cluster object in the dir store: the file `file_name` in `<dir>/objects/` holding `text`.
pub fn dir_object(file_name: &str, text: &str) -> Result<ObjectRef, StoredObjectError> {
    super::objects::dir::decode(file_name, text)
}

/// A cluster object in etcd: the key suffix after `<prefix>/v1/<cluster>/objects/` and its value.
pub fn etcd_object(key_suffix: &str, value: &str) -> Result<ObjectRef, StoredObjectError> {
    super::objects::etcd::parse(key_suffix, value)
}
