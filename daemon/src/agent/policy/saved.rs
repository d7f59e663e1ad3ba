//! The last object set this node accepted, kept in `<stateDir>/policy.json` (0600, written
//! atomically: temporary file, fsync, rename, fsync of the directory) every time a set from the
//! store loads. At start, while the store has not answered, the policy loop enforces this set:
//! after a reboot the pinned maps and the tc filters are gone (bpffs does not persist), and a
//! node whose store is down would otherwise enforce nothing.
//!
//! It must never widen policy: only a set that loaded is saved, with the node addresses and
//! identity numbers it was compiled with, and the file is refused (the node enforces nothing
//! it did not accept) when it names another node or does not parse.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use keymgr::store::objects::{ObjectRef, ObjectSet, StoredObject};
use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "policy.json";
/// Bumped when the format changes incompatibly: an older file is then refused, not misread.
const VERSION: u32 = 1;

/// What is saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Saved {
    pub version: u32,
    /// The node that accepted the set (`nodeName`): a state directory moved to another node
    /// must not carry its policy along.
    pub node: String,
    pub objects: Vec<SavedObject>,
    /// Node name → addresses, as the set was compiled with (they make the `host` and
    /// `remote-node` identities; without them a node's address would be `world`).
    pub nodes: BTreeMap<String, Vec<IpAddr>>,
    /// Identity label key → number allocated cluster-wide.
    pub identities: BTreeMap<String, u32>,
    /// The interfaces this node's endpoints were enforced on: kept closed (programs attached,
    /// no endpoint config: every packet dropped) if the saved objects no longer load.
    pub interfaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SavedObject {
    #[serde(rename = "ref")]
    pub reference: ObjectRef,
    pub origin: String,
    pub manifest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a saved policy ({source}); delete it to start without one")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: field version: {found} is not {VERSION}, the format this agent reads")]
    Version { path: PathBuf, found: u32 },
    #[error(
        "{path}: field node: saved by node {found:?}, this is {expected:?} (a state directory \
         copied from another node?); delete it"
    )]
    OtherNode {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

impl Saved {
    /// The record of an accepted `set`.
    pub fn new(
        node: &str,
        set: &ObjectSet,
        nodes: BTreeMap<String, Vec<IpAddr>>,
        identities: BTreeMap<String, u32>,
        interfaces: Vec<String>,
    ) -> Self {
        Self {
            version: VERSION,
            node: node.to_string(),
            objects: set
                .objects
                .iter()
                .map(|(r, o)| SavedObject {
                    reference: r.clone(),
                    origin: o.origin.clone(),
                    manifest: o.manifest.clone(),
                })
                .collect(),
            nodes,
            identities,
            interfaces,
        }
    }

    /// The saved objects as a set. `synced` stays `false`: this is not the store's content.
    pub fn object_set(&self) -> ObjectSet {
        ObjectSet {
            objects: self
                .objects
                .iter()
                .map(|o| {
                    let stored = StoredObject {
                        origin: format!("{} (saved)", o.origin),
                        manifest: o.manifest.clone(),
                    };
                    (o.reference.clone(), stored)
                })
                .collect(),
            unreadable: BTreeMap::new(),
            synced: false,
        }
    }
}

/// `<stateDir>/policy.json`.
#[derive(Debug, Clone)]
pub struct SavedFile {
    path: PathBuf,
}

impl SavedFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved set of node `node`; `None` if there is none.
    pub fn load(&self, node: &str) -> Result<Option<Saved>, SavedError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.io(source)),
        };
        let saved: Saved = serde_json::from_slice(&bytes).map_err(|source| SavedError::Parse {
            path: self.path.clone(),
            source,
        })?;
        if saved.version != VERSION {
            return Err(SavedError::Version {
                path: self.path.clone(),
                found: saved.version,
            });
        }
        if saved.node != node {
            return Err(SavedError::OtherNode {
                path: self.path.clone(),
                found: saved.node,
                expected: node.to_string(),
            });
        }
        Ok(Some(saved))
    }

    /// Replaces the file atomically: a crash leaves the old file or the new one, whole.
    pub fn save(&self, saved: &Saved) -> Result<(), SavedError> {
        let json = serde_json::to_vec(saved).map_err(|e| self.io(std::io::Error::other(e)))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|source| SavedError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let tmp = self.path.with_extension("json.tmp");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&json)?;
                f.sync_all()
            });
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(SavedError::Io { path: tmp, source });
        }
        std::fs::rename(&tmp, &self.path).map_err(|source| self.io(source))?;
        // The rename itself must reach the disk before the set counts as saved.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SavedError::Io {
                path: dir.to_path_buf(),
                source,
            })
    }

    fn io(&self, source: std::io::Error) -> SavedError {
        SavedError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// Which object set the policy loop holds in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The store's: it has answered.
    Store,
    /// The saved one: the store has not answered since this agent started.
    Saved,
    /// Neither: nothing is known yet, so the pinned maps (if any) stay untouched.
    Nothing,
}

/// The store's set as soon as it has answered; until then the saved one, if any.
pub fn source(store_synced: bool, have_saved: bool) -> Source {
    match (store_synced, have_saved) {
        (true, _) => Source::Store,
        (false, true) => Source::Saved,
        (false, false) => Source::Nothing,
    }
}

/// The interfaces to keep closed while no set has loaded: the saved ones, but only on fresh
/// maps (after a reboot). Maps a previous agent pinned hold an accepted policy already, which
/// is narrower than nothing and wider than closing everything.
pub fn closed_interfaces(loaded_any: bool, fresh_maps: bool, saved: Option<&Saved>) -> Vec<String> {
    match saved {
        Some(s) if !loaded_any && fresh_maps => s.interfaces.clone(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set() -> ObjectSet {
        let mut set = ObjectSet {
            synced: true,
            ..ObjectSet::default()
        };
        let r = ObjectRef {
            kind: "NetworkPolicy".into(),
            namespace: "demo".into(),
            name: "deny".into(),
        };
        set.objects.insert(
            r,
            StoredObject {
                origin: "/wiremesh/v1/lab/objects/NetworkPolicy/demo/deny".into(),
                manifest: r#"{"kind":"NetworkPolicy"}"#.into(),
            },
        );
        set
    }

    fn saved() -> Saved {
        Saved::new(
            "node-2",
            &set(),
            BTreeMap::from([("node-1".into(), vec!["198.18.0.1".parse().unwrap()])]),
            BTreeMap::from([("k8s:app=a".into(), 300)]),
            vec!["pod1".into()],
        )
    }

    #[test]
    fn saves_atomically_0600_and_loads_what_it_saved() {
        let dir = tempfile::tempdir().unwrap();
        let file = SavedFile::new(dir.path());
        assert!(file.load("node-2").unwrap().is_none(), "no file: nothing");
        file.save(&saved()).unwrap();
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!file.path().with_extension("json.tmp").exists());
        let back = file.load("node-2").unwrap().expect("saved");
        assert_eq!(back, saved());
        let objects = back.object_set();
        assert!(!objects.synced, "a saved set is never the store's content");
        assert_eq!(objects.objects.len(), 1);
        assert_eq!(
            objects.objects.values().next().unwrap().manifest,
            r#"{"kind":"NetworkPolicy"}"#
        );
    }

    #[test]
    fn refuses_another_nodes_file_a_newer_format_and_garbage_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = SavedFile::new(dir.path());
        file.save(&saved()).unwrap();
        let e = file.load("node-3").unwrap_err().to_string();
        assert!(e.contains("policy.json") && e.contains("node-2"), "{e}");
        let mut newer = saved();
        newer.version = 2;
        file.save(&newer).unwrap();
        let e = file.load("node-2").unwrap_err().to_string();
        assert!(e.contains("field version"), "{e}");
        std::fs::write(file.path(), b"{\"version\":1").unwrap();
        let e = file.load("node-2").unwrap_err().to_string();
        assert!(
            e.contains("policy.json") && e.contains("not a saved policy"),
            "{e}"
        );
    }

    #[test]
    fn the_store_wins_as_soon_as_it_answers_and_the_saved_set_before() {
        assert_eq!(source(true, true), Source::Store);
        assert_eq!(source(true, false), Source::Store);
        assert_eq!(source(false, true), Source::Saved);
        assert_eq!(source(false, false), Source::Nothing);
    }

    #[test]
    fn saved_interfaces_stay_closed_only_on_fresh_maps_until_a_set_loads() {
        let s = saved();
        assert_eq!(closed_interfaces(false, true, Some(&s)), vec!["pod1"]);
        assert!(closed_interfaces(true, true, Some(&s)).is_empty());
        assert!(closed_interfaces(false, false, Some(&s)).is_empty());
        assert!(closed_interfaces(false, true, None).is_empty());
    }
}
