//! `wiremesh encrypt status`: the JSON the admin API serves and the text the CLI prints, in the
//! spirit of `cilium-dbg encrypt status`. Public keys only, never a private key.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::health::{self, Health};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptStatus {
    pub encryption: String,
    pub interface: String,
    pub public_key: String,
    pub listen_port: u16,
    pub mtu: u32,
    pub datapath: String,
    /// The data-path process's version and PID (the userspace data path only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_process: Option<DatapathProcess>,
    pub node_name: String,
    pub cluster_name: String,
    pub store: String,
    pub store_health: StoreHealthStatus,
    pub key_epoch: u64,
    /// RFC 3339.
    pub key_created: String,
    /// RFC 3339, or null when automatic rotation is off.
    pub next_rotation: Option<String>,
    /// The announced successor key while a rotation is under way.
    pub next_public_key: Option<String>,
    /// The strict-mode guard (absent from agents that predate it).
    #[serde(default)]
    pub strict_mode: crate::strict::StrictStatus,
    pub peers: Vec<PeerStatus>,
    /// The agent's supervised tasks; left out while every one runs and none was restarted,
    /// so a healthy agent's status reads as it always has.
    #[serde(default, skip_serializing_if = "health::is_quiet")]
    pub tasks: Health,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathProcess {
    pub version: String,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// `None` for a peer added by hand (`wg set`) rather than learned from the store.
    pub node_name: Option<String>,
    pub public_key: String,
    pub endpoint: Option<String>,
    #[serde(rename = "allowedIPs")]
    pub allowed_ips: Vec<String>,
    /// RFC 3339, or null before the first handshake.
    pub last_handshake: Option<String>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Key epoch of the peer key this node's session uses now.
    pub key_epoch: Option<u64>,
    pub next_public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreHealthStatus {
    /// `connected`, `unreachable` or `conflict`.
    pub state: String,
    /// RFC 3339: since when the store has been unreachable.
    pub since: Option<String>,
    pub error: Option<String>,
}

pub fn store_health(h: &keymgr::store::StoreHealth) -> StoreHealthStatus {
    use keymgr::store::StoreHealth as H;
    match h {
        H::Connected => StoreHealthStatus {
            state: "connected".into(),
            since: None,
            error: None,
        },
        H::Unreachable { since, error } => StoreHealthStatus {
            state: "unreachable".into(),
            since: Some(rfc3339(*since)),
            error: Some(error.clone()),
        },
        H::Conflict { owner } => StoreHealthStatus {
            state: "conflict".into(),
            since: None,
            error: Some(format!("node name taken by owner {owner}")),
        },
    }
}

/// One node of `encrypt status --all-nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub node_name: String,
    pub cluster_name: String,
    pub key_epoch: u64,
    pub public_key: String,
    pub next_public_key: Option<String>,
    pub endpoint: String,
    /// The key this node's data path uses for that node.
    pub key_in_use: Option<String>,
    pub key_state: KeyState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyState {
    ThisNode,
    /// The key in use is the published one.
    Matches,
    /// The key in use is the node's announced successor (a rotation is under way).
    Rotating,
    /// The key in use is neither: traffic to that node will fail.
    Stale,
    /// The data path has no peer for that node (yet).
    NotConfigured,
}

pub fn render_nodes(nodes: &[NodeStatus]) -> String {
    let mut out = format!(
        "{:<20} {:>5}  {:<24} {}\n",
        "NODE", "EPOCH", "ENDPOINT", "KEY"
    );
    for n in nodes {
        let key = match n.key_state {
            KeyState::ThisNode => "this node".to_string(),
            KeyState::Matches => "ok: in use = published".to_string(),
            KeyState::Rotating => "ok: rotating to the announced successor".to_string(),
            KeyState::Stale => format!(
                "STALE: in use {} but published {}",
                n.key_in_use.as_deref().unwrap_or("-"),
                n.public_key
            ),
            KeyState::NotConfigured => "NOT CONFIGURED: no peer in the data path".to_string(),
        };
        out.push_str(&format!(
            "{:<20} {:>5}  {:<24} {}\n",
            n.node_name, n.key_epoch, n.endpoint, key
        ));
    }
    out
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl EncryptStatus {
    pub fn render(&self, now: SystemTime) -> String {
        let mut out = format!(
            "Encryption: Wireguard\nInterface: {}\n\tPublic key: {}\n\tKey epoch: {} (created {}, next rotation {}{})\n\tListen port: {}\n\tMTU: {}\n\tData path: {}\n\tStore: {}{}\n\tNumber of peers: {}\n",
            self.interface,
            self.public_key,
            self.key_epoch,
            self.key_created,
            self.next_rotation.as_deref().unwrap_or("off"),
            self.next_public_key.as_deref().map(|k| format!("; rotating to {k}")).unwrap_or_default(),
            self.listen_port,
            self.mtu,
            match &self.datapath_process {
                Some(p) => format!("{} {} (pid {})", self.datapath, p.version, p.pid),
                None => self.datapath.clone(),
            },
            self.store,
            match (self.store_health.state.as_str(), &self.store_health.since, &self.store_health.error) {
                ("connected", _, _) => String::new(),
                (state, since, error) => format!(
                    " ({state}{}{})",
                    since.as_deref().map(|s| format!(" since {s}")).unwrap_or_default(),
                    error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                ),
            },
            self.peers.len()
        );
        out.push_str(&self.strict_mode.render());
        for line in health::render(&self.tasks).lines() {
            out.push_str(&format!("\t{line}\n"));
        }
        for p in &self.peers {
            let handshake = p
                .last_handshake
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .map_or_else(
                    || "never".to_string(),
                    |t| {
                        let age = now.duration_since(t).unwrap_or(Duration::ZERO);
                        format!(
                            "{} ago",
                            humantime::format_duration(Duration::from_secs(age.as_secs()))
                        )
                    },
                );
            out.push_str(&format!(
                "\tPeer {}: endpoint {}, allowed IPs {}, latest handshake {}, rx {} B, tx {} B\n\t\tpublic key {} (epoch {})\n",
                p.node_name.as_deref().unwrap_or("(not from the store)"),
                p.endpoint.as_deref().unwrap_or("(none)"),
                if p.allowed_ips.is_empty() { "(none)".to_string() } else { p.allowed_ips.join(",") },
                handshake,
                p.rx_bytes,
                p.tx_bytes,
                p.public_key,
                p.key_epoch.map_or("?".to_string(), |e| e.to_string()),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(now: SystemTime) -> EncryptStatus {
        EncryptStatus {
            encryption: "Wireguard".into(),
            interface: "wiremesh_wg0".into(),
            public_key: "PUB".into(),
            listen_port: 51871,
            mtu: 1420,
            datapath: "userspace".into(),
            datapath_process: None,
            node_name: "node-1".into(),
            cluster_name: "default".into(),
            store: "dir:/x".into(),
            store_health: store_health(&keymgr::store::StoreHealth::Connected),
            key_epoch: 3,
            key_created: rfc3339(now),
            next_rotation: None,
            next_public_key: None,
            strict_mode: crate::strict::StrictStatus {
                enabled: true,
                installed: true,
                drops: crate::strict::DropCounts {
                    egress_ipv4: 7,
                    ..Default::default()
                },
                reinstalls: 0,
                error: None,
            },
            peers: vec![PeerStatus {
                node_name: Some("node-2".into()),
                public_key: "PEER".into(),
                endpoint: Some("198.18.0.2:51871".into()),
                allowed_ips: vec!["10.244.2.0/24".into()],
                last_handshake: Some(rfc3339(now - Duration::from_secs(3))),
                rx_bytes: 1,
                tx_bytes: 2,
                key_epoch: Some(1),
                next_public_key: None,
            }],
            tasks: Health::default(),
        }
    }

    #[test]
    fn renders_cilium_style_header_and_one_line_per_peer() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = sample(now);
        let text = s.render(now);
        assert!(
            text.starts_with("Encryption: Wireguard\nInterface: wiremesh_wg0\n\tPublic key: PUB\n")
        );
        assert!(text.contains("\tNumber of peers: 1\n"));
        assert!(
            text.contains("\tStrict mode: on (table inet wiremesh), dropped egress 7 / 0, ingress 0 / 0 packets (IPv4 / IPv6)\n"),
            "{text}"
        );
        assert!(text.contains("Peer node-2: endpoint 198.18.0.2:51871, allowed IPs 10.244.2.0/24, latest handshake 3s ago"));
        let json = serde_json::to_value(&s).unwrap();
        for k in [
            "keyEpoch",
            "keyCreated",
            "nextRotation",
            "encryption",
            "interface",
            "publicKey",
            "listenPort",
            "mtu",
            "datapath",
            "peers",
        ] {
            assert!(json.get(k).is_some(), "{k}");
        }
        for k in [
            "keyEpoch",
            "nodeName",
            "publicKey",
            "endpoint",
            "allowedIPs",
            "lastHandshake",
            "rxBytes",
            "txBytes",
        ] {
            assert!(json["peers"][0].get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn task_health_shows_only_when_a_task_restarted() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let healthy = sample(now);
        let json = serde_json::to_value(&healthy).unwrap();
        assert!(json.get("tasks").is_none(), "{json}");
        assert!(!healthy.render(now).contains("Task "));
        let mut failed = sample(now);
        failed.tasks.insert(
            "rotation".into(),
            crate::api::TaskStatus {
                state: crate::api::TaskState::Restarting,
                restarts: 0,
                last_failure: Some("panicked".into()),
            },
        );
        let json = serde_json::to_string(&failed).unwrap();
        assert!(
            json.contains(r#""tasks":{"rotation":{"state":"restarting""#),
            "{json}"
        );
        let text = failed.render(now);
        assert!(
            text.contains(
                "\tTask rotation: RESTARTING (restarted 0 times, last failure: panicked)\n"
            ),
            "{text}"
        );
        let back: EncryptStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back.tasks, failed.tasks);
    }
}
