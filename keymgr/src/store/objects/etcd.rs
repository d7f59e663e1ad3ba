//! Objects in etcd: one key per object, `<prefix>/v1/<cluster>/objects/<Kind>/<ns|_>/<name>`,
//! holding the manifest as JSON. One background task lists and watches the prefix (reconnecting
//! with backoff, relisting after a compaction); writes go through a second client in one
//! transaction, so an apply is all or nothing.

use std::sync::Arc;
use std::time::Instant;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{watch, Mutex};

use super::{Claim, ObjectRef, ObjectSet, StoredObject, StoredObjectError};
use crate::store::etcd::{connect_options, RPC_TIMEOUT};
use crate::store::task::{rpc, Backoff, RpcError};
use crate::store::{EtcdConfig, StoreError};

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

pub struct EtcdObjects {
    endpoints: Vec<String>,
    options: etcd_client::ConnectOptions,
    prefix: String,
    /// `<prefix>/v1/<cluster>/identities/`: one key per allocated number.
    identities_prefix: String,
    describe: String,
    tx: Arc<watch::Sender<Arc<ObjectSet>>>,
    writer: Mutex<Option<Client>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdObjects {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdObjects {
    pub fn start(config: &EtcdConfig, cluster: &str) -> Result<Self, StoreError> {
        let options = connect_options(config)?;
        let prefix = format!(
            "{}/v1/{cluster}/objects/",
            config.prefix.trim_end_matches('/')
        );
        let (tx, _) = watch::channel(Arc::new(ObjectSet::default()));
        let tx = Arc::new(tx);
        let follower = Follower {
            endpoints: config.endpoints.clone(),
            options: options.clone(),
            prefix: prefix.clone(),
            tx: tx.clone(),
        };
        let task = tokio::spawn(follower.run());
        let identities_prefix = format!(
            "{}/v1/{cluster}/identities/",
            config.prefix.trim_end_matches('/')
        );
        Ok(Self {
            identities_prefix,
            describe: format!(
                "etcd:{}{}",
                config.endpoints.join(","),
                prefix.trim_end_matches('/')
            ),
            endpoints: config.endpoints.clone(),
            options,
            prefix,
            tx,
            writer: Mutex::new(None),
            task,
        })
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<ObjectSet>> {
        self.tx.subscribe()
    }

    pub async fn write(
        &self,
        objects: Vec<(ObjectRef, String)>,
        deletes: Vec<ObjectRef>,
    ) -> Result<(), StoreError> {
        let mut ops: Vec<TxnOp> = objects
            .into_iter()
            .map(|(r, json)| TxnOp::put(self.key(&r), json, None))
            .collect();
        ops.extend(deletes.iter().map(|r| TxnOp::delete(self.key(r), None)));
        // Beyond etcd's per-transaction limit the write is split (each part atomic).
        for chunk in ops.chunks(MAX_TXN_OPS) {
            let txn = Txn::new().and_then(chunk.to_vec());
            self.with_client("write objects", move |c| Box::pin(c.txn(txn)))
                .await?;
        }
        Ok(())
    }

    /// Runs `f` with the write client, connecting first if needed; a failed request drops the
    /// connection so that the next one reconnects.
    async fn with_client<T, F>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(
            &'c mut Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'c>,
        >,
    {
        let unavailable = |e: RpcError<etcd_client::Error>| StoreError::Unavailable {
            endpoints: self.endpoints.join(","),
            reason: e.to_string(),
        };
        let mut writer = self.writer.lock().await;
        if writer.is_none() {
            let connect = Client::connect(&self.endpoints, Some(self.options.clone()));
            *writer = Some(
                rpc("connect", RPC_TIMEOUT, connect)
                    .await
                    .map_err(unavailable)?,
            );
        }
        let client = writer.as_mut().expect("connected above");
        match rpc(what, RPC_TIMEOUT, f(client)).await {
            Ok(v) => Ok(v),
            Err(e) => {
                *writer = None;
                Err(unavailable(e))
            }
        }
    }

    /// Every allocation: number → labels key.
    pub(super) async fn identities(
        &self,
    ) -> Result<std::collections::BTreeMap<u32, String>, StoreError> {
        let prefix = self.identities_prefix.clone();
        let resp = self
            .with_client("list identities", move |c| {
                Box::pin(async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            })
            .await?;
        let mut out = std::collections::BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if let Some(id) = key
                .strip_prefix(&self.identities_prefix)
                .and_then(|n| n.parse::<u32>().ok())
            {
                out.insert(id, String::from_utf8_lossy(kv.value()).into_owned());
            }
        }
        Ok(out)
    }

    /// Creates the number's key holding `key` in a transaction that succeeds only while the
    /// number is free; otherwise reads who holds it.
    pub(super) async fn claim(&self, id: u32, key: &str) -> Result<Claim, StoreError> {
        let k = format!("{}{id}", self.identities_prefix);
        let value = key.to_string();
        let resp = self
            .with_client("allocate identity", move |c| {
                let txn = Txn::new()
                    .when([Compare::version(k.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(k.as_str(), value, None)])
                    .or_else([TxnOp::get(k.as_str(), None)]);
                Box::pin(async move { c.txn(txn).await })
            })
            .await?;
        if resp.succeeded() {
            return Ok(Claim::Ours);
        }
        let holder = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Claim::HeldBy(holder))
    }

    fn key(&self, r: &ObjectRef) -> String {
        format!("{}{}", self.prefix, r.key_suffix())
    }
}

/// Why a follower's session ended.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Rpc(#[from] RpcError<etcd_client::Error>),
    #[error("watch stream closed")]
    WatchClosed,
    #[error("watch: {0}")]
    Watch(#[source] etcd_client::Error),
}

/// The list + watch loop.
struct Follower {
    endpoints: Vec<String>,
    options: etcd_client::ConnectOptions,
    prefix: String,
    tx: Arc<watch::Sender<Arc<ObjectSet>>>,
}

impl Follower {
    async fn run(self) {
        let mut backoff = Backoff::default();
        loop {
            let began = Instant::now();
            let error = self.session().await;
            tracing::warn!(prefix = %self.prefix, "following objects in etcd: {error}; the objects last seen stay in force");
            tokio::time::sleep(backoff.after(began)).await;
        }
    }

    /// Lists, then watches, until something fails; returns why.
    async fn session(&self) -> FollowError {
        let connect = Client::connect(&self.endpoints, Some(self.options.clone()));
        let mut client = match rpc("connect", RPC_TIMEOUT, connect).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let mut entries: std::collections::BTreeMap<String, String> = Default::default();
        loop {
            let list = client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()));
            let listing = match rpc("list objects", RPC_TIMEOUT, list).await {
                Ok(l) => l,
                Err(e) => return e.into(),
            };
            entries.clear();
            for kv in listing.kvs() {
                entries.insert(
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                );
            }
            self.send(&entries);
            let rev = listing.header().map_or(0, |h| h.revision());
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(rev + 1);
            let watch = client.watch(self.prefix.as_str(), Some(opts));
            let mut stream = match rpc("watch objects", RPC_TIMEOUT, watch).await {
                Ok(w) => w,
                Err(e) => return e.into(),
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() || resp.compact_revision() != 0 => break,
                    Ok(Some(resp)) => {
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key()).into_owned();
                            match ev.event_type() {
                                EventType::Put => {
                                    entries.insert(
                                        key,
                                        String::from_utf8_lossy(kv.value()).into_owned(),
                                    );
                                }
                                EventType::Delete => {
                                    entries.remove(&key);
                                }
                            }
                        }
                        self.send(&entries);
                    }
                    Ok(None) => return FollowError::WatchClosed,
                    Err(e) => return FollowError::Watch(e),
                }
            }
        }
    }

    fn send(&self, entries: &std::collections::BTreeMap<String, String>) {
        let mut set = ObjectSet {
            synced: true,
            ..ObjectSet::default()
        };
        for (key, value) in entries {
            let suffix = key.strip_prefix(&self.prefix).unwrap_or(key);
            match parse(suffix, value) {
                Ok(r) => {
                    set.objects.insert(
                        r,
                        StoredObject {
                            origin: key.clone(),
                            manifest: value.clone(),
                        },
                    );
                }
                Err(reason) => {
                    set.unreadable.insert(key.clone(), reason.to_string());
                }
            }
        }
        self.tx.send_if_modified(|cur| {
            if **cur == set {
                return false;
            }
            *cur = Arc::new(set);
            true
        });
    }
}

pub(crate) fn parse(suffix: &str, value: &str) -> Result<ObjectRef, StoredObjectError> {
    let manifest: serde_json::Value =
        serde_json::from_str(value).map_err(StoredObjectError::Json)?;
    let r = ObjectRef::of(&manifest)?;
    if ObjectRef::from_key_suffix(suffix).as_ref() != Some(&r) {
        return Err(StoredObjectError::MisplacedKey {
            key: r.key_suffix(),
            object: r,
        });
    }
    Ok(r)
}
