//! `GET /v1/clustermesh`: the cluster mesh as this agent sees it (`wiremesh clustermesh status`):
//! this cluster, and per remote cluster whether it is admitted or refused (and why), whether its
//! store answers (since when, the last error), how many of its nodes are peers, which of its
//! records are refused, and when it was last in sync.

use serde::{Deserialize, Serialize};

/// The whole answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMeshStatus {
    pub local: LocalCluster,
    pub clusters: Vec<RemoteClusterStatus>,
    /// The last `SIGHUP` reload, RFC 3339, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reloaded: Option<String>,
    /// Why the last reload was not applied (the config in force stays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalCluster {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u8>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    /// Nodes of this cluster in its store.
    pub nodes: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteClusterStatus {
    pub name: String,
    pub id: u8,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    /// Where its store is read, e.g. `etcd:http://…/wiremesh/v1/c2/nodes`.
    pub store: String,
    /// `admitted` or `refused`.
    pub state: String,
    /// Why it was refused: the conflict, naming both clusters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    pub connected: bool,
    /// While connected, since when; while not, since when it has been unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its nodes that are peers of this one.
    pub nodes: usize,
    /// Its pods known to this node's policy (from its store's Pods).
    pub endpoints: usize,
    /// The security identities of those pods here.
    pub identities: usize,
    /// Its records refused, each with the reason.
    pub refused_records: Vec<String>,
    /// The last time its view changed, or its store was (re)connected and listed afresh.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<String>,
}

impl ClusterMeshStatus {
    /// The text `wiremesh clustermesh status` prints.
    pub fn render(&self) -> String {
        let l = &self.local;
        let id = l.id.map_or_else(|| "none".to_string(), |i| i.to_string());
        let mut out = format!(
            "Cluster: {} (ID {id}), pod CIDRs {}, {} node(s)\n",
            l.name,
            l.pod_cidrs.join(", "),
            l.nodes
        );
        if self.clusters.is_empty() {
            out.push_str("Remote clusters: none (no clusterMesh in the config)\n");
        } else {
            out.push_str(&format!("Remote clusters: {}\n", self.clusters.len()));
        }
        for c in &self.clusters {
            out.push_str(&render_remote(c));
        }
        if let Some(at) = &self.reloaded {
            out.push_str(&format!("Config reloaded at {at}\n"));
        }
        if let Some(e) = &self.reload_error {
            out.push_str(&format!("Last reload NOT applied: {e}\n"));
        }
        out
    }
}

fn render_remote(c: &RemoteClusterStatus) -> String {
    let mut out = format!(
        "  {} (ID {}), pod CIDRs {}: {}\n",
        c.name,
        c.id,
        c.pod_cidrs.join(", "),
        c.state
    );
    if let Some(why) = &c.refusal {
        out.push_str(&format!("\tRefused: {why}\n"));
        return out;
    }
    let since = c.since.as_deref().unwrap_or("?");
    if c.connected {
        out.push_str(&format!("\tStore: {} connected since {since}\n", c.store));
    } else {
        out.push_str(&format!("\tStore: {} UNREACHABLE since {since}\n", c.store));
    }
    if let Some(e) = &c.last_error {
        out.push_str(&format!("\tLast error: {e}\n"));
    }
    out.push_str(&format!(
        "\tNodes: {}, endpoints: {}, identities: {}, last sync {}\n",
        c.nodes,
        c.endpoints,
        c.identities,
        c.last_sync.as_deref().unwrap_or("never")
    ));
    for r in &c.refused_records {
        out.push_str(&format!("\tRefused record: {r}\n"));
    }
    out
}
