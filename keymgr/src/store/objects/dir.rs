//! Objects in a directory: `<store dir>/objects/<Kind>_<namespace>_<name>.json`, each written
//! atomically (temporary file, then rename), followed by a scan every [`SCAN_EVERY`] that
//! re-reads only files whose size, modification time or inode changed.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::{Claim, ObjectRef, ObjectSet, StoredObject, StoredObjectError};
use crate::store::StoreError;

const SCAN_EVERY: Duration = Duration::from_millis(200);

pub struct DirObjects {
    path: PathBuf,
    tx: Arc<watch::Sender<Arc<ObjectSet>>>,
    rescan: Arc<Notify>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a file looked like when last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime_ns: i128,
    ino: u64,
}

impl DirObjects {
    /// Creates the directory if needed, reads it and follows it. Must be called inside a tokio
    /// runtime.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut scanner = Scanner::default();
        let first = scanner.scan(path);
        let (tx, _) = watch::channel(Arc::new(first));
        let tx = Arc::new(tx);
        let rescan = Arc::new(Notify::new());
        let task = tokio::spawn({
            let (path, tx, rescan) = (path.to_path_buf(), tx.clone(), rescan.clone());
            async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(SCAN_EVERY) => {}
                        () = rescan.notified() => {}
                    }
                    let (p, mut s) = (path.clone(), std::mem::take(&mut scanner));
                    let Ok((set, s)) = tokio::task::spawn_blocking(move || {
                        let set = s.scan(&p);
                        (set, s)
                    })
                    .await
                    else {
                        return;
                    };
                    scanner = s;
                    tx.send_if_modified(|cur| {
                        if **cur == set {
                            return false;
                        }
                        *cur = Arc::new(set);
                        true
                    });
                }
            }
        });
        Ok(Self {
            path: path.to_path_buf(),
            tx,
            rescan,
            _task: AbortOnDrop(task),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ObjectSet>> {
        self.tx.subscribe()
    }

    pub async fn write(
        &self,
        objects: Vec<(ObjectRef, String)>,
        deletes: Vec<ObjectRef>,
    ) -> Result<(), StoreError> {
        let dir = self.path.clone();
        tokio::task::spawn_blocking(move || {
            for (r, json) in &objects {
                write_atomically(&dir, &r.file_name(), json.as_bytes())?;
            }
            for r in &deletes {
                let path = dir.join(r.file_name());
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StoreError::Io { path, source }),
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })??;
        self.rescan.notify_one();
        Ok(())
    }
}

impl DirObjects {
    /// `<store dir>/identities/<number>`, each holding the labels key it was allocated to.
    fn identities_dir(&self) -> PathBuf {
        self.path.parent().unwrap_or(&self.path).join("identities")
    }

    /// Every allocation: number → labels key.
    pub(super) async fn identities(&self) -> Result<BTreeMap<u32, String>, StoreError> {
        let dir = self.identities_dir();
        tokio::task::spawn_blocking(move || {
            let mut out = BTreeMap::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
                Err(source) => return Err(StoreError::Io { path: dir, source }),
            };
            for entry in entries.flatten() {
                let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Ok(key) = std::fs::read_to_string(entry.path()) {
                    out.insert(id, key);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Io {
            path: self.identities_dir(),
            source: std::io::Error::other(e),
        })?
    }

    /// Creates `<number>` holding `key` unless it exists: the complete file is written aside and
    /// hard-linked into place, which fails if the name is taken, so a reader never sees a
    /// half-written allocation and two writers never both win.
    pub(super) async fn claim(&self, id: u32, key: &str) -> Result<Claim, StoreError> {
        let dir = self.identities_dir();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                path: dir.clone(),
                source,
            })?;
            let target = dir.join(id.to_string());
            // A name no other claimant (thread, process or host sharing the directory) uses.
            let nonce = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
            let tmp = dir.join(format!(".{id}.{nonce:016x}.tmp"));
            std::fs::write(&tmp, &key).map_err(|source| StoreError::Io {
                path: tmp.clone(),
                source,
            })?;
            let linked = std::fs::hard_link(&tmp, &target);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(Claim::Ours),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder =
                        std::fs::read_to_string(&target).map_err(|source| StoreError::Io {
                            path: target.clone(),
                            source,
                        })?;
                    Ok(Claim::HeldBy(holder))
                }
                Err(source) => Err(StoreError::Io {
                    path: target,
                    source,
                }),
            }
        })
        .await
        .map_err(|e| StoreError::Io {
            path: self.identities_dir(),
            source: std::io::Error::other(e),
        })?
    }
}

fn write_atomically(dir: &Path, file: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let target = dir.join(file);
    let tmp = dir.join(format!(".{file}.tmp"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &target).map_err(io(&target))
}

/// A file read: the object and its manifest, or why it is not one.
type Read = Result<(ObjectRef, String), StoredObjectError>;

/// The last scan's files, so that unchanged ones are not read again.
#[derive(Default)]
struct Scanner {
    seen: BTreeMap<PathBuf, (Stamp, Read)>,
}

impl Scanner {
    fn scan(&mut self, dir: &Path) -> ObjectSet {
        let mut seen = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot read the objects directory: {e}");
                // Keep what was there: an unreadable directory is not an empty one.
                return self.to_set();
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || path.extension() != Some(OsStr::new("json")) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            let stamp = Stamp {
                len: meta.len(),
                mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
                ino: meta.ino(),
            };
            let parsed = match self.seen.remove(&path) {
                Some((old, parsed)) if old == stamp => parsed,
                _ => read(&path, &name),
            };
            seen.insert(path, (stamp, parsed));
        }
        self.seen = seen;
        self.to_set()
    }

    fn to_set(&self) -> ObjectSet {
        let mut set = ObjectSet {
            synced: true,
            ..ObjectSet::default()
        };
        for (path, (_, parsed)) in &self.seen {
            let origin = path.display().to_string();
            match parsed {
                Ok((r, manifest)) => {
                    set.objects.insert(
                        r.clone(),
                        StoredObject {
                            origin,
                            manifest: manifest.clone(),
                        },
                    );
                }
                Err(reason) => {
                    set.unreadable.insert(origin, reason.to_string());
                }
            }
        }
        set
    }
}

fn read(path: &Path, file: &str) -> Read {
    let text = std::fs::read_to_string(path).map_err(StoredObjectError::Read)?;
    Ok((decode(file, &text)?, text))
}

/// The object a file named `file` holds, refused unless the file is named after it.
pub(crate) fn decode(file: &str, text: &str) -> Result<ObjectRef, StoredObjectError> {
    let manifest: serde_json::Value =
        serde_json::from_str(text).map_err(StoredObjectError::Json)?;
    let r = ObjectRef::of(&manifest)?;
    if ObjectRef::from_file_name(file).as_ref() != Some(&r) {
        return Err(StoredObjectError::MisplacedFile {
            file: r.file_name(),
            object: r,
        });
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait_for(
        rx: &mut watch::Receiver<Arc<ObjectSet>>,
        what: &str,
        pred: impl Fn(&ObjectSet) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if pred(&rx.borrow_and_update()) {
                return;
            }
            tokio::time::timeout_at(deadline, rx.changed())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap();
        }
    }

    #[tokio::test]
    async fn writes_deletes_and_foreign_files_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirObjects::open(&dir.path().join("objects")).unwrap();
        let mut rx = store.subscribe();
        let pod = serde_json::json!({"kind": "Pod", "metadata": {"name": "a", "namespace": "x"}});
        let r = ObjectRef::of(&pod).unwrap();
        store
            .write(vec![(r.clone(), pod.to_string())], vec![])
            .await
            .unwrap();
        wait_for(&mut rx, "the pod", |s| s.objects.contains_key(&r)).await;
        std::fs::write(store.path().join("Pod_x_b.json"), pod.to_string()).unwrap();
        std::fs::write(store.path().join("junk.json"), "{").unwrap();
        wait_for(&mut rx, "two unreadable files", |s| s.unreadable.len() == 2).await;
        let set = rx.borrow().clone();
        let reasons: Vec<&String> = set.unreadable.values().collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("belongs in Pod_x_a.json")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("invalid JSON")),
            "{reasons:?}"
        );
        store.write(vec![], vec![r.clone()]).await.unwrap();
        wait_for(&mut rx, "the pod's removal", |s| s.objects.is_empty()).await;
    }
}
