//! The objects the fake API server holds, their resourceVersions and watch history, and the
//! state file that keeps them across restarts. Pure data plus one synchronous file write per
//! change; it must never touch the network.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::resources::{self, Resource};

/// The key of one object: resource, namespace (empty if cluster-scoped), name.
pub type Key = (&'static str, String, String);

/// Everything the server holds.
#[derive(Default)]
pub struct State {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    /// Every change as a watch event, by resourceVersion, with the plural; history up to
    /// `compacted` is gone.
    pub log: Vec<(u64, &'static str, Value)>,
    pub compacted: u64,
    /// Test hooks and counters.
    pub forced_conflicts: u32,
    pub patches: u32,
    pub create_conflicts: u32,
    /// CRD groups tests have "uninstalled" (their objects are kept).
    pub uninstalled: BTreeSet<String>,
}

/// The state, shared by every connection, with the wake-up for watches and the state file.
pub struct Store {
    pub state: Mutex<State>,
    /// The latest resourceVersion, to wake watches.
    pub head: watch::Sender<u64>,
    file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state file {path}: object {index} ({api_version} {kind}): {reason}")]
    Object {
        path: PathBuf,
        index: usize,
        api_version: String,
        kind: String,
        reason: &'static str,
    },
}

/// A change to one object: the watch event type and the new object (`None` deletes).
pub type Change = (&'static str, Option<Value>);

impl Store {
    /// An empty store, or (with `file`) the one saved there, whose history starts empty: watches
    /// resuming from before the restart get 410 Gone, as after a real API server's restart.
    pub fn open(file: Option<PathBuf>) -> Result<Self, StateError> {
        let mut state = State::default();
        if let Some(path) = &file {
            if path.exists() {
                state = load(path)?;
            }
        }
        let head = watch::channel(state.rv).0;
        Ok(Self {
            state: Mutex::new(state),
            head,
            file,
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock: no holder panics")
    }

    /// Changes one object under a new resourceVersion and logs the watch event: `f` gets the
    /// object as stored and names the event and the new object, or leaves everything as it is
    /// (`None`). Returns the object as stored (or as it was, deleted).
    pub fn change(
        &self,
        r: &'static Resource,
        namespace: &str,
        name: &str,
        f: impl FnOnce(Option<&Value>) -> Option<Change>,
        compact: bool,
    ) -> Option<Value> {
        let mut st = self.lock();
        let key = (r.plural, namespace.to_owned(), name.to_owned());
        let (event, new) = f(st.objects.get(&key))?;
        let rv = st.rv + 1;
        let object = match new {
            Some(v) => {
                let v = stamp(r, namespace, name, v, st.objects.get(&key), rv);
                st.objects.insert(key, v.clone());
                v
            }
            None => {
                let mut v = st.objects.remove(&key)?;
                v["metadata"]["resourceVersion"] = rv.to_string().into();
                v
            }
        };
        st.rv = rv;
        if compact {
            st.log.clear();
            st.compacted = rv;
        } else {
            let e = json!({ "type": event, "object": object });
            st.log.push((rv, r.plural, e));
        }
        self.save(&st);
        drop(st);
        self.head.send_replace(rv);
        Some(object)
    }

    /// Writes the state file (write to a temporary file, then rename), if there is one. A
    /// failure is reported on stderr: the change stands, as in memory.
    fn save(&self, st: &State) {
        let Some(path) = &self.file else { return };
        if let Err(e) = save(path, st) {
            eprintln!("wiremesh-fake-apiserver: {e}");
        }
    }
}

/// Server-set fields: apiVersion, kind, name, namespace, resourceVersion, and on create uid,
/// creationTimestamp (whole seconds, as the real server), generation; `generation` moves when
/// anything but metadata and status changes.
fn stamp(
    r: &Resource,
    namespace: &str,
    name: &str,
    mut v: Value,
    old: Option<&Value>,
    rv: u64,
) -> Value {
    v["apiVersion"] = r.api_version().into();
    v["kind"] = r.kind.into();
    if !v["metadata"].is_object() {
        v["metadata"] = json!({});
    }
    let meta = &mut v["metadata"];
    meta["name"] = name.into();
    if r.namespaced {
        meta["namespace"] = namespace.into();
    }
    meta["resourceVersion"] = rv.to_string().into();
    meta["managedFields"] = json!([{ "manager": "kubectl", "operation": "Update" }]);
    let generation = match old {
        None => 1,
        Some(old) => {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let spec_changed = ["spec", "data", "specs"].iter().any(|f| old[f] != v[f]);
            g + i64::from(spec_changed)
        }
    };
    let meta = &mut v["metadata"];
    meta["generation"] = generation.into();
    match old {
        Some(old) => {
            meta["uid"] = old["metadata"]["uid"].clone();
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        }
        None => {
            meta["uid"] = format!("uid-{name}-{rv}").into();
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
            meta["creationTimestamp"] = now.to_string().into();
        }
    }
    v
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: Option<&Value>, patch: &Value) -> Option<Value> {
    let Value::Object(p) = patch else {
        return Some(patch.clone());
    };
    let mut out = match target {
        Some(Value::Object(t)) => t.clone(),
        _ => serde_json::Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else if let Some(m) = merge(out.get(k), v) {
            out.insert(k.clone(), m);
        }
    }
    Some(Value::Object(out))
}

fn save(path: &Path, st: &State) -> Result<(), StateError> {
    let objects: Vec<&Value> = st.objects.values().collect();
    let doc = json!({ "resourceVersion": st.rv, "objects": objects });
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let text = serde_json::to_vec_pretty(&doc).expect("JSON values serialise");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn load(path: &Path) -> Result<State, StateError> {
    let text = std::fs::read(path).map_err(|source| StateError::Io {
        path: path.to_owned(),
        source,
    })?;
    let doc: Value = serde_json::from_slice(&text).map_err(|source| StateError::Json {
        path: path.to_owned(),
        source,
    })?;
    let rv = doc["resourceVersion"].as_u64().unwrap_or(0);
    let mut st = State {
        rv,
        compacted: rv,
        ..State::default()
    };
    let objects = doc["objects"].as_array().cloned().unwrap_or_default();
    for (index, v) in objects.into_iter().enumerate() {
        let fail = |reason| StateError::Object {
            path: path.to_owned(),
            index,
            api_version: v["apiVersion"].as_str().unwrap_or("").to_owned(),
            kind: v["kind"].as_str().unwrap_or("").to_owned(),
            reason,
        };
        let r = resources::of_kind(v["kind"].as_str().unwrap_or(""))
            .ok_or_else(|| fail("kind not served"))?;
        let name = v["metadata"]["name"]
            .as_str()
            .ok_or_else(|| fail("no metadata.name"))?;
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
        st.objects
            .insert((r.plural, ns.to_owned(), name.to_owned()), v.clone());
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_reopen_with_history_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state.json");
        let r = resources::of_kind("Namespace").expect("served");
        let store = Store::open(Some(file.clone())).expect("open");
        let ns = json!({ "metadata": { "name": "a" } });
        store.change(r, "", "a", |_| Some(("ADDED", Some(ns))), false);
        let uid =
            store.lock().objects[&(r.plural, String::new(), "a".into())]["metadata"]["uid"].clone();
        drop(store);
        let store = Store::open(Some(file)).expect("reopen");
        let st = store.lock();
        assert_eq!((st.rv, st.compacted), (1, 1));
        assert!(st.log.is_empty());
        let a = &st.objects[&(r.plural, String::new(), "a".into())];
        assert_eq!(
            (&a["metadata"]["uid"], &a["kind"]),
            (&uid, &json!("Namespace"))
        );
    }
}
