//! The embedded store: one JSON file per node in a directory (`<path>/<nodeName>.json`), written
//! atomically and watched with inotify. It needs no server; nodes share it through whatever
//! keeps the directory in sync (a shared volume, configuration management, or the lab's shared
//! directory).
//!
//! A record's seniority (which of two conflicting records stays in force) is the inode change
//! time of its node's marker `.<nodeName>.since`, created empty at the node's first publish and
//! never written again, so a record keeps its place across rewrites; a record without a marker
//! (written by hand) ranks by its own file's change time. Nobody can set a change time into the
//! past, and on a shared volume every reader sees the same times. A directory copied between
//! machines gets each machine's own times, so conflicts may be settled differently there.
//! Files are read up to [`MAX_RECORD_BYTES`]; a longer one is refused.

use std::ffi::OsStr;
use std::io::{Read as _, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::sync::watch;

use super::records::{Read, Records};
use super::refused::Origin;
use super::{decode_record, send_if_changed, DecodeError, Snapshot, StoreError};
use crate::{Admission, NodeRecord, Rejected, Seniority};

/// The largest record file read; a record is a few hundred bytes.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// How long to let a burst of file events settle before rescanning.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A full rescan also runs on this period, so a lost inotify event (queue overflow) heals.
const RESCAN_EVERY: Duration = Duration::from_secs(10);

pub struct DirStore {
    path: PathBuf,
    rx: watch::Receiver<Arc<Snapshot>>,
    rescan: tokio::sync::mpsc::Sender<()>,
}

impl DirStore {
    /// Opens (creating if needed) the directory, scans it once, and starts watching it;
    /// records are admitted as `admission` says. Must be called inside a tokio runtime.
    pub fn open(path: impl Into<PathBuf>, admission: Admission) -> Result<Self, StoreError> {
        let path = path.into();
        std::fs::create_dir_all(&path).map_err(|source| io(&path, source))?;
        let inotify = Inotify::init().map_err(|source| io(&path, source))?;
        let mask = WatchMask::CREATE
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        inotify
            .watches()
            .add(&path, mask)
            .map_err(|source| io(&path, source))?;
        let events = inotify
            .into_event_stream([0u8; 4096])
            .map_err(|source| io(&path, source))?;

        let mut scanner = Scanner {
            records: Records::new(Origin::File, admission),
        };
        let (tx, rx) = watch::channel(Arc::new(scanner.scan(&path)));
        let (rescan, rescan_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(watch_loop(path.clone(), events, scanner, tx, rescan_rx));
        Ok(Self { path, rx, rescan })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }

    pub async fn publish(&self, record: &NodeRecord) -> Result<(), StoreError> {
        let path = self.path.clone();
        let record = record.clone();
        let node = record.node_name.clone();
        let json = serde_json::to_vec_pretty(&record).map_err(|source| StoreError::Encode {
            node: node.clone(),
            source,
        })?;
        tokio::task::spawn_blocking(move || write_atomically(&path, &node, &json))
            .await
            .map_err(|e| io(&self.path, std::io::Error::other(e)))??;
        // Do not wait for inotify: the caller may read its own record right after publishing.
        let _ = self.rescan.try_send(());
        Ok(())
    }
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomically(dir: &Path, node: &str, json: &[u8]) -> Result<(), StoreError> {
    mark_first_publish(dir, node)?;
    let target = dir.join(format!("{node}.json"));
    let tmp = dir.join(format!(".{node}.json.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(json)
        .and_then(|()| f.sync_all())
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &target).map_err(|e| io(&target, e))
}

/// The marker whose change time is `node`'s seniority.
fn marker(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!(".{node}.since"))
}

/// Creates `node`'s marker unless it exists: its change time is the node's first publish.
fn mark_first_publish(dir: &Path, node: &str) -> Result<(), StoreError> {
    let path = marker(dir, node);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(&path, e)),
    }
}

/// When the record `<dir>/<node>.json` was first published (see the module header).
fn seniority(dir: &Path, node: &str, file: &std::fs::Metadata) -> Seniority {
    let marked = std::fs::symlink_metadata(marker(dir, node));
    let meta = marked.as_ref().unwrap_or(file);
    let secs = u128::try_from(meta.ctime()).unwrap_or(0);
    let nanos = u128::try_from(meta.ctime_nsec()).unwrap_or(0);
    Seniority(secs * 1_000_000_000 + nanos)
}

async fn watch_loop(
    path: PathBuf,
    mut events: inotify::EventStream<[u8; 4096]>,
    mut scanner: Scanner,
    tx: watch::Sender<Arc<Snapshot>>,
    mut rescan: tokio::sync::mpsc::Receiver<()>,
) {
    let mut tick = tokio::time::interval(RESCAN_EVERY);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(_)) => {
                    tokio::time::sleep(DEBOUNCE).await;
                    // Drain what arrived meanwhile; one rescan covers them all.
                    while let Some(Some(_)) = futures::FutureExt::now_or_never(events.next()) {}
                }
                Some(Err(e)) => {
                    tracing::warn!(store = %path.display(), error = %e, "inotify error; relying on periodic rescans");
                    tokio::time::sleep(RESCAN_EVERY).await;
                }
                None => {
                    tracing::error!(store = %path.display(), "inotify stream ended; relying on periodic rescans");
                    tokio::time::sleep(RESCAN_EVERY).await;
                }
            },
            Some(()) = rescan.recv() => {}
            _ = tick.tick() => {}
        }
        send_if_changed(&tx, scanner.scan(&path));
        if tx.is_closed() {
            return;
        }
    }
}

/// Turns the directory's files into a snapshot; a bad file is warned about once per change, not
/// once per rescan.
struct Scanner {
    records: Records,
}

impl Scanner {
    fn scan(&mut self, dir: &Path) -> Snapshot {
        self.records.replace(read_dir(dir));
        self.records.snapshot()
    }
}

fn read_dir(dir: &Path) -> Vec<Read> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(store = %dir.display(), error = %e, "cannot read store directory");
            return Vec::new();
        }
    };
    let mut reads = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || path.extension() != Some(OsStr::new("json")) {
            continue;
        }
        let source = path.display().to_string();
        reads.push(match read_record(&path) {
            Ok((rec, meta)) => Ok((source, seniority(dir, &rec.node_name, &meta), rec)),
            Err(e) => Err(Rejected {
                // The file is named after the node even when its content cannot be read.
                node_name: path.file_stem().map(|s| s.to_string_lossy().into_owned()),
                source,
                reason: e.to_string(),
            }),
        });
    }
    reads
}

/// Why a file of the store holds no record. The refusal names the file, so the text does not.
#[derive(Debug, thiserror::Error)]
enum FileError {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error(
        "the file is larger than {} bytes; a record is a few hundred",
        MAX_RECORD_BYTES
    )]
    TooLarge,
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The record in `path` and the file's metadata, or why it is refused.
fn read_record(path: &Path) -> Result<(NodeRecord, std::fs::Metadata), FileError> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut bytes = Vec::new();
    let mut limited = file.take(MAX_RECORD_BYTES + 1);
    limited.read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(FileError::TooLarge);
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((decode_record(&bytes, &stem)?, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PrivateKey;

    fn rec(name: &str, n: u8) -> NodeRecord {
        let key = PrivateKey::generate().public_key();
        NodeRecord {
            cluster_name: "lab".into(),
            pod_cidrs: vec![format!("10.244.{n}.0/24").parse().unwrap()],
            node_ips: vec![format!("198.18.0.{n}").parse().unwrap()],
            ..NodeRecord::new(name, key, format!("198.18.0.{n}:51871").parse().unwrap())
        }
    }

    async fn wait_for(
        rx: &mut watch::Receiver<Arc<Snapshot>>,
        f: impl Fn(&Snapshot) -> bool,
    ) -> Arc<Snapshot> {
        tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let snap = rx.borrow_and_update().clone();
                if f(&snap) {
                    return snap;
                }
                rx.changed().await.expect("store watcher stopped");
            }
        })
        .await
        .expect("store did not reach the expected state within 2 s")
    }

    #[tokio::test]
    async fn publish_then_watch_add_change_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path(), Admission::default()).unwrap();
        let mut rx = store.subscribe();
        let a = rec("node-1", 1);
        store.publish(&a).await.unwrap();
        wait_for(&mut rx, |s| s.nodes.get("node-1") == Some(&a)).await;

        // Another writer (a peer) adds a record: seen through inotify.
        let b = rec("node-2", 2);
        write_atomically(dir.path(), "node-2", &serde_json::to_vec(&b).unwrap()).unwrap();
        wait_for(&mut rx, |s| s.nodes.len() == 2).await;

        let mut b2 = b.clone();
        b2.endpoint = "198.18.0.9:51871".parse().unwrap();
        write_atomically(dir.path(), "node-2", &serde_json::to_vec(&b2).unwrap()).unwrap();
        wait_for(&mut rx, |s| s.nodes.get("node-2") == Some(&b2)).await;

        std::fs::remove_file(dir.path().join("node-2.json")).unwrap();
        wait_for(&mut rx, |s| !s.nodes.contains_key("node-2")).await;
    }

    #[tokio::test]
    async fn malformed_and_zero_key_records_are_ignored_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let good = rec("node-1", 1);
        write_atomically(dir.path(), "node-1", &serde_json::to_vec(&good).unwrap()).unwrap();
        std::fs::write(dir.path().join("node-2.json"), b"{ not json").unwrap();
        let mut zero = serde_json::to_value(rec("node-3", 3)).unwrap();
        zero["publicKey"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
        std::fs::write(dir.path().join("node-3.json"), zero.to_string()).unwrap();
        let mut misnamed = rec("node-4", 4);
        misnamed.node_name = "node-5".into();
        std::fs::write(
            dir.path().join("node-4.json"),
            serde_json::to_vec(&misnamed).unwrap(),
        )
        .unwrap();

        let store = DirStore::open(dir.path(), Admission::default()).unwrap();
        let snap = store.subscribe().borrow().clone();
        assert_eq!(snap.nodes.keys().collect::<Vec<_>>(), vec!["node-1"]);
    }

    #[test]
    fn rejections_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-2.json"), b"{\"nodeName\": 3}").unwrap();
        let bad: Vec<Rejected> = read_dir(dir.path())
            .into_iter()
            .map(|r| r.unwrap_err())
            .collect();
        assert_eq!(bad.len(), 1);
        assert!(bad[0].source.ends_with("node-2.json"), "{bad:?}");
        assert!(bad[0].reason.contains("nodeName"), "{bad:?}");
    }
}
