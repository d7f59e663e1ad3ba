//! The peers in force, kept in `<stateDir>/peers.json`: after a restart the agent knows what the
//! (still running) data path holds, and with a store it cannot reach it starts on these peers.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use keymgr::NodeRecord;

pub struct PeerFile {
    path: PathBuf,
}

impl PeerFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("peers.json"),
        }
    }

    pub fn load(&self) -> BTreeMap<String, NodeRecord> {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return BTreeMap::new();
        };
        match serde_json::from_slice::<Vec<NodeRecord>>(&bytes) {
            Ok(recs) => recs.into_iter().map(|r| (r.node_name.clone(), r)).collect(),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "ignoring unreadable list of last known peers");
                BTreeMap::new()
            }
        }
    }

    pub fn save(&self, peers: &BTreeMap<String, NodeRecord>) {
        let recs: Vec<&NodeRecord> = peers.values().collect();
        let tmp = self.path.with_extension("json.tmp");
        let result = serde_json::to_vec_pretty(&recs)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&json)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &self.path)
            });
        if let Err(e) = result {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot save the list of last known peers");
        }
    }
}
