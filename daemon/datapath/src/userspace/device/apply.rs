//! Configuring the device: a `SetRequest` applied to the pure core (keys staged or replaced,
//! peers added, changed or removed, and their tunnels kept in step with our keys). Part of
//! [`Device`], in a file of its own; never touches a packet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use wiremesh_key::{PrivateKey, PublicKey};

use super::{Device, Peer};
use crate::model::{DeviceError, PeerChange, SetRequest};
use crate::userspace::allowed_ips::AllowedIps;
use crate::userspace::gate::UNDER_LOAD as HANDSHAKE_RATE_LIMIT;
use crate::userspace::peer::{new_tunn, LocalKey, Tunnel, RETIRE_GRACE};

impl Device {
    /// Applies everything but `listen_port` and `fwmark`, which belong to the I/O shell.
    pub fn apply(&mut self, req: SetRequest, now: Instant) -> Result<(), DeviceError> {
        if let Some(next) = req.next_private_key {
            self.stage_key(next, now);
        }
        if let Some(key) = req.private_key {
            self.set_key(key, now);
        }
        if req.replace_peers {
            self.peers.clear();
            self.by_key.clear();
            self.by_index.clear();
            self.allowed = AllowedIps::new();
        }
        for change in req.peers {
            self.apply_peer(change, now);
        }
        Ok(())
    }

    fn stage_key(&mut self, next: Option<PrivateKey>, now: Instant) {
        if self.locals.len() > 1 {
            self.locals.remove(0);
        }
        if let Some(key) = next {
            if key.public_key() != self.current().public {
                self.locals
                    .insert(0, LocalKey::new(key, HANDSHAKE_RATE_LIMIT));
            }
        }
        self.sync_all(now);
    }

    fn set_key(&mut self, key: PrivateKey, now: Instant) {
        let public = key.public_key();
        if public == self.current().public && self.locals.len() == 1 {
            return;
        }
        // Committing the staged key keeps its sessions; any other key starts afresh.
        self.locals.retain(|k| k.public == public);
        if self.locals.is_empty() {
            self.locals.push(LocalKey::new(key, HANDSHAKE_RATE_LIMIT));
        }
        self.sync_all(now);
    }

    fn sync_all(&mut self, now: Instant) {
        let ids: Vec<u32> = self.peers.keys().copied().collect();
        for id in ids {
            self.sync_tunnels(id, now);
        }
    }

    /// Makes a peer's tunnels exactly one per (our key, its key) pair in use; tunnels whose keys
    /// left are retired (decrypt-only for a grace period) rather than dropped.
    fn sync_tunnels(&mut self, id: u32, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let remotes: Vec<PublicKey> = peer.remote_keys().collect();
        for t in &mut peer.tunnels {
            let wanted =
                remotes.contains(&t.remote) && self.locals.iter().any(|l| l.public == t.local);
            if !wanted && t.retire_at.is_none() {
                t.retire_at = Some(now + RETIRE_GRACE);
            }
        }
        for local in &self.locals {
            for remote in &remotes {
                if peer.tunnel_for(&local.public, remote).is_some() {
                    continue;
                }
                let index = allocate_index(&mut self.next_index, &self.by_index);
                let tunn = new_tunn(local, *remote, index, peer.preshared_key, peer.keepalive);
                peer.tunnels.push(Tunnel {
                    index,
                    local: local.public,
                    remote: *remote,
                    tunn,
                    retire_at: None,
                    last_kick: None,
                });
                self.by_index.insert(index, id);
            }
        }
    }

    fn remove_peer(&mut self, id: u32) {
        if let Some(peer) = self.peers.remove(&id) {
            self.by_key.retain(|_, v| *v != id);
            for t in &peer.tunnels {
                self.by_index.remove(&t.index);
            }
            self.allowed.remove_value(id);
        }
    }

    fn apply_peer(&mut self, change: PeerChange, now: Instant) {
        let existing = self.by_key.get(&change.public_key).copied();
        if change.remove {
            if let Some(id) = existing {
                self.remove_peer(id);
            }
            return;
        }
        let id = match existing {
            Some(id) => id,
            None if change.update_only => return,
            None => {
                if self.locals.iter().any(|l| l.public == change.public_key) {
                    tracing::warn!("refusing to add one of this device's own keys as a peer");
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.peers.insert(id, Peer::new(id, change.public_key));
                self.by_key.insert(change.public_key, id);
                self.new_peers.push(id);
                id
            }
        };
        let peer = self
            .peers
            .get_mut(&id)
            .expect("by_key and peers are kept in step");
        if peer.next_key == Some(change.public_key) {
            // The peer committed its rotation: its successor key becomes its key.
            self.by_key.remove(&peer.public_key);
            peer.public_key = change.public_key;
            peer.next_key = None;
        }
        if let Some(next) = change.next_public_key {
            if let Some(old) = peer.next_key.take() {
                self.by_key.remove(&old);
            }
            peer.next_key = next.filter(|k| *k != peer.public_key);
            if let Some(k) = peer.next_key {
                self.by_key.insert(k, id);
            }
        }
        let psk = change.preshared_key.unwrap_or(peer.preshared_key);
        let keepalive = change.persistent_keepalive.unwrap_or(peer.keepalive);
        if psk != peer.preshared_key || keepalive != peer.keepalive {
            // boringtun fixes both at construction: retire the tunnels, rebuild afresh.
            peer.preshared_key = psk;
            peer.keepalive = keepalive;
            for t in &mut peer.tunnels {
                t.retire_at.get_or_insert(now);
            }
        }
        if let Some(ep) = change.endpoint {
            peer.endpoint = Some(SocketAddr::new(ep.ip().to_canonical(), ep.port()));
        }
        if change.replace_allowed_ips {
            self.allowed.remove_value(id);
        }
        for net in change.allowed_ips {
            self.allowed.insert(net, id);
        }
        self.sync_tunnels(id, now);
    }
}

/// Session indices carry the tunnel in their upper 24 bits; pick one no live tunnel uses.
fn allocate_index(next: &mut u32, used: &HashMap<u32, u32>) -> u32 {
    loop {
        let idx = *next;
        *next = (*next + 1) & 0x00ff_ffff;
        if idx != 0 && !used.contains_key(&idx) {
            return idx;
        }
    }
}
