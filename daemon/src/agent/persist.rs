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

/// This agent's identity as the owner of its node name in the store: random, created once in
/// `<stateDir>/owner-id` and kept, so a restarted agent reclaims its name at once while a second
/// agent elsewhere under the same name is refused.
pub fn owner_id(state_dir: &Path) -> std::io::Result<String> {
    let path = state_dir.join("owner-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_string());
        }
    }
    std::fs::create_dir_all(state_dir)?;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = format!(
        "{host}/{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}
