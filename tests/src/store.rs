//! The lab's stores, one per cluster: in the dir store one `<nodeName>.json` per node, which
//! agents publish and watch (in an etcd lab, the same records in the cluster's etcd).
//! Tests edit it as an operator or a sync tool would: atomically (a dot-file in the same
//! directory, then a rename), so a watcher never reads half a record.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use keymgr::{NodeRecord, PublicKey};
use serde::Serialize;
use serde_json::Value;

use crate::addr::{node_ip, node_name, pod_cidr, WG_PORT};
use crate::agent::CLUSTER_NAME;
use crate::error::{LabError, Result};
use crate::handles::StoreHandle;

const POLL: Duration = Duration::from_millis(100);

/// The record lab node `node` of a one-cluster lab publishes with `public_key`, as the agents
/// read it (in a multi-cluster lab, set `cluster_name` to [`crate::Lab::cluster_name`]).
pub fn node_record(node: u8, public_key: PublicKey) -> NodeRecord {
    NodeRecord {
        node_name: node_name(node),
        cluster_name: CLUSTER_NAME.into(),
        public_key,
        endpoint: SocketAddr::new(node_ip(node).into(), WG_PORT),
        // The lab's address plan is valid CIDR text by construction (`10.244.<node>.0/24`).
        pod_cidrs: vec![pod_cidr(node)
            .parse()
            .expect("the lab's pod CIDRs are valid")],
        node_ips: vec![node_ip(node).into()],
        key_epoch: 0,
        key_created: None,
        next_public_key: None,
    }
}

impl StoreHandle<'_> {
    /// The cluster whose store this is.
    pub fn cluster(&self) -> u8 {
        self.cluster
    }

    /// `<labdir>/store` (`<labdir>/store-c<c>`), the dir store's directory (unused in an etcd
    /// lab).
    pub fn dir(&self) -> PathBuf {
        self.lab.layout().store_dir(self.cluster)
    }

    /// `<store>/<name>.json`.
    pub fn record_path(&self, name: &str) -> PathBuf {
        self.dir().join(format!("{name}.json"))
    }

    /// The raw record `name`, if present (from the dir store, or from etcd in an etcd lab).
    pub fn read_record_bytes(&self, name: &str) -> Result<Option<Vec<u8>>> {
        if self.lab.options().uses_etcd() {
            let etcd = self.lab.cluster_etcd(self.cluster);
            return etcd.get(&etcd.node_key(name));
        }
        let path = self.record_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LabError::io(path, e)),
        }
    }

    /// The record `name`, parsed, if present.
    pub fn read_record(&self, name: &str) -> Result<Option<Value>> {
        let Some(bytes) = self.read_record_bytes(name)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| LabError::Parse {
                what: format!("store record {name}"),
                input: String::from_utf8_lossy(&bytes).into_owned(),
            })
    }

    /// Waits until the record `name` exists and parses (an agent publishes it at start-up);
    /// polls every 100 ms.
    pub fn wait_record(&self, name: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.read_record(name) {
                Ok(Some(record)) => return Ok(record),
                Ok(None) => "absent".to_owned(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("store record {name}"),
                    after: timeout,
                    last,
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Writes `record` (a [`NodeRecord`], or any JSON, valid or not) as `<nodeName>.json`,
    /// atomically.
    pub fn write_record(&self, record: &impl Serialize) -> Result<()> {
        let record = serde_json::to_value(record)
            .map_err(|e| LabError::Check(format!("cannot encode a record: {e}")))?;
        let name = record
            .get("nodeName")
            .and_then(Value::as_str)
            .ok_or_else(|| LabError::Check(format!("record without a nodeName: {record}")))?;
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| LabError::Check(format!("cannot encode record {name}: {e}")))?;
        self.write_record_bytes(name, &bytes)
    }

    /// Writes `bytes` as `<name>.json`, atomically (in etcd: puts it at the node's key, with no
    /// lease).
    pub fn write_record_bytes(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if self.lab.options().uses_etcd() {
            let etcd = self.lab.cluster_etcd(self.cluster);
            return etcd.put(&etcd.node_key(name), bytes);
        }
        let tmp = self.dir().join(format!(".{name}.json.lab-tmp"));
        std::fs::write(&tmp, bytes).map_err(|e| LabError::io(&tmp, e))?;
        let path = self.record_path(name);
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io(&path, e))
    }

    /// Removes the record `name` and returns what it held.
    pub fn remove_record(&self, name: &str) -> Result<Vec<u8>> {
        if self.lab.options().uses_etcd() {
            let etcd = self.lab.cluster_etcd(self.cluster);
            let key = etcd.node_key(name);
            let bytes = etcd
                .get(&key)?
                .ok_or_else(|| LabError::Check(format!("no record at {key} in etcd")))?;
            etcd.del(&key)?;
            return Ok(bytes);
        }
        let path = self.record_path(name);
        let bytes = std::fs::read(&path).map_err(|e| LabError::io(&path, e))?;
        std::fs::remove_file(&path).map_err(|e| LabError::io(&path, e))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn record_has_the_store_fields() {
        let key = PublicKey::from_base64("AgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICE=")
            .expect("a valid key");
        let r = serde_json::to_value(node_record(3, key)).expect("a record encodes");
        assert_eq!(r["nodeName"], "node-3");
        assert_eq!(r["clusterName"], "lab");
        assert_eq!(r["endpoint"], "198.18.0.3:51871");
        assert_eq!(r["podCIDRs"], json!(["10.244.3.0/24"]));
        assert_eq!(r["nodeIPs"], json!(["198.18.0.3"]));
    }
}
