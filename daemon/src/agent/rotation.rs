//! Automatic key rotation, make before break (docs/key-rotation.md):
//! 1. stage a successor key on disk and in the data path, which then accepts handshakes for it;
//! 2. announce it in this node's record (`nextPublicKey`); peers accept it alongside the old one;
//! 3. wait until every active peer has a session with the new key — proven in-band by the
//!    handshake itself — while traffic keeps flowing on the old sessions;
//! 4. commit: the new key becomes the key on disk, in the data path and in the record; old
//!    sessions keep decrypting for a grace period, then go.
//!
//! A rotation that falls due while the store is unreachable waits for it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use keymgr::ring::{KeyRing, KeyState};
use keymgr::store::StoreHealth;
use keymgr::{NodeRecord, PrivateKey, PublicKey, Store};
use tokio::sync::{mpsc, oneshot, watch};

use crate::status::rfc3339;
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::model::SetRequest;

/// This node's key as the admin API reports it.
#[derive(Debug, Clone)]
pub struct OwnKey {
    pub public: PublicKey,
    pub epoch: u64,
    pub created: SystemTime,
    pub next: Option<PublicKey>,
    pub next_rotation: Option<SystemTime>,
}

pub type RotateRequest = oneshot::Sender<Result<OwnKey, String>>;

pub struct Rotator {
    pub ring: KeyRing,
    pub state: KeyState,
    pub next: Option<PrivateKey>,
    pub record: NodeRecord,
    pub store: Arc<Store>,
    pub datapath: Arc<Datapath>,
    /// Zero disables automatic rotation.
    pub interval: Duration,
    pub commit_timeout: Duration,
    pub own: watch::Sender<OwnKey>,
    pub requests: mpsc::Receiver<RotateRequest>,
}

impl Rotator {
    pub fn own_key(&self) -> OwnKey {
        OwnKey {
            public: self.record.public_key,
            epoch: self.state.epoch,
            created: self.state.created(),
            next: self.record.next_public_key,
            next_rotation: (!self.interval.is_zero())
                .then(|| self.state.created().checked_add(self.interval))
                .flatten(),
        }
    }

    /// This node's record as it must be published now.
    pub fn current_record(&self) -> NodeRecord {
        NodeRecord {
            key_epoch: self.state.epoch,
            key_created: Some(rfc3339(self.state.created())),
            ..self.record.clone()
        }
    }

    pub async fn run(mut self) {
        self.own.send_replace(self.own_key());
        if self.next.is_some() {
            tracing::info!("resuming the key rotation that was under way when the agent stopped");
            self.rotate_until_done(None).await;
        }
        loop {
            let due = self.own_key().next_rotation.map(|t| {
                let wait = t
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::Instant::now() + wait
            });
            tokio::select! {
                _ = sleep_until(due) => self.rotate_until_done(None).await,
                req = self.requests.recv() => match req {
                    Some(reply) => self.rotate_until_done(Some(reply)).await,
                    None => return,
                },
            }
        }
    }

    async fn rotate_until_done(&mut self, mut reply: Option<RotateRequest>) {
        loop {
            match self.rotate().await {
                Ok(()) => {
                    if let Some(r) = reply.take() {
                        let _ = r.send(Ok(self.own_key()));
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "key rotation deferred; retrying in 5 s");
                    if let Some(r) = reply.take() {
                        let _ = r.send(Err(format!("{e:#}")));
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    async fn rotate(&mut self) -> Result<()> {
        if let StoreHealth::Unreachable { since, .. } = &*self.store.health().borrow() {
            bail!(
                "the store has been unreachable since {}; a rotation is never half-done, so it waits for the store",
                rfc3339(*since)
            );
        }
        // Before anything is staged: a rotation that cannot commit must not begin.
        let next_epoch = self
            .ring
            .next_epoch(&self.state)
            .context("starting a key rotation")?;
        let next = match &self.next {
            Some(k) => k.clone(),
            None => self.ring.stage().context("staging the successor key")?,
        };
        self.next = Some(next.clone());
        let next_pub = next.public_key();
        let req = SetRequest {
            next_private_key: Some(Some(next.clone())),
            ..SetRequest::default()
        };
        self.datapath
            .set(req)
            .await
            .context("staging the successor key in the data path")?;
        self.record.next_public_key = Some(next_pub);
        self.store
            .publish(&self.current_record())
            .await
            .context("announcing the successor key")?;
        self.own.send_replace(self.own_key());
        tracing::info!(epoch = next_epoch, next_public_key = %next_pub, "key rotation: successor announced");

        let laggards = self.wait_for_peers(next_pub).await?;
        if !laggards.is_empty() {
            tracing::warn!(
                peers = ?laggards,
                timeout = ?self.commit_timeout,
                "key rotation: these peers never made a session with the new key; committing anyway (their sessions restart)"
            );
        }

        let (key, state) = self
            .ring
            .commit(&self.state)
            .context("committing the new key file")?;
        let req = SetRequest {
            private_key: Some(key.clone()),
            ..SetRequest::default()
        };
        self.datapath
            .set(req)
            .await
            .context("switching the data path to the new key")?;
        self.state = state;
        self.next = None;
        self.record.public_key = key.public_key();
        self.record.next_public_key = None;
        self.store
            .publish(&self.current_record())
            .await
            .context("publishing the new key")?;
        self.own.send_replace(self.own_key());
        tracing::info!(epoch = self.state.epoch, public_key = %self.record.public_key, "key rotation: committed");
        Ok(())
    }

    /// Waits until every active peer has a session with `next`; returns those that did not
    /// within the commit timeout. An idle peer (no session at all) has nothing to lose.
    async fn wait_for_peers(&self, next: PublicKey) -> Result<Vec<PublicKey>> {
        let deadline = Instant::now() + self.commit_timeout;
        loop {
            let state = self
                .datapath
                .get()
                .await
                .map_err(|e| anyhow!("reading the data path: {e}"))?;
            let laggards: Vec<PublicKey> = state
                .peers
                .iter()
                .filter(|p| p.active_key.is_some() && !p.ready_for.contains(&next))
                .map(|p| p.public_key)
                .collect();
            if laggards.is_empty() || Instant::now() >= deadline {
                return Ok(laggards);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
