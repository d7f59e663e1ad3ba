//! A multi-cluster lab at run time: its shape (which cluster each node is in, each cluster's
//! name), each cluster as another's `clusterMesh` lists it, and changing a node's `clusterMesh`
//! while its agent runs: the config file rewritten (atomically), then SIGHUP to the agent's PID,
//! as an operator would. What a node lists is kept by the lab, so a restarted agent reads the
//! same file its predecessor was last told to read.

use std::ops::RangeInclusive;

use nix::sys::signal::Signal;
use wiremesh::config::{ClusterMeshSection, ConfigFile, RemoteClusterSection};

use crate::error::{LabError, Result};
use crate::handles::AgentHandle;
use crate::lab::{Lab, NodeKind};
use crate::options::{agent_config_file, config_yaml};

impl Lab {
    /// How many clusters the lab's nodes form (1 unless [`crate::LabOptions::clusters`]).
    pub fn clusters(&self) -> u8 {
        self.layout().plan.clusters()
    }

    pub fn cluster_ids(&self) -> RangeInclusive<u8> {
        self.layout().plan.cluster_ids()
    }

    /// The cluster node `node` belongs to.
    pub fn cluster_of(&self, node: u8) -> u8 {
        self.layout().plan.cluster_of(node)
    }

    /// The nodes of cluster `cluster`.
    pub fn cluster_nodes(&self, cluster: u8) -> RangeInclusive<u8> {
        self.layout().plan.nodes_of(cluster)
    }

    /// `c<cluster>` (`lab` in a one-cluster lab): its `clusterName`.
    pub fn cluster_name(&self, cluster: u8) -> String {
        self.layout().plan.name(cluster)
    }

    /// The name under which node `viewer`'s `encrypt status` lists node `node`: `node-<i>`, or
    /// `c<c>/node-<i>` for a node of another cluster.
    pub fn peer_name(&self, viewer: u8, node: u8) -> String {
        self.layout().plan.peer_name(viewer, node)
    }

    /// Cluster `cluster` as another cluster's `clusterMesh.clusters` lists it: name, ID, pool
    /// and store (read-only).
    pub fn cluster_section(&self, cluster: u8) -> RemoteClusterSection {
        self.layout().remote_section(cluster, self.options())
    }

    /// The clusters node `node`'s config lists now: those the lab linked it with at start, or
    /// what [`AgentHandle::set_cluster_mesh`] last set.
    pub fn cluster_mesh_of(&self, node: u8) -> Vec<RemoteClusterSection> {
        self.config_file(node)
            .cluster_mesh
            .map(|m| m.clusters)
            .unwrap_or_default()
    }

    /// The config the lab gives node `node`'s agent.
    pub(crate) fn config_file(&self, node: u8) -> ConfigFile {
        let mut file = agent_config_file(node, self.layout(), self.options());
        if let Some(clusters) = self.meshes_guard().get(slot(node)).cloned().flatten() {
            file.cluster_mesh = (!clusters.is_empty()).then_some(ClusterMeshSection { clusters });
        }
        file
    }

    /// The peers node `node`'s status should list with the links in force: the other nodes
    /// of its cluster, and every node of each lab cluster its config lists.
    pub fn expected_peers(&self, node: u8) -> Vec<String> {
        let listed: Vec<String> = self
            .cluster_mesh_of(node)
            .into_iter()
            .map(|c| c.name)
            .collect();
        self.node_ids()
            .filter(|&n| n != node)
            .filter(|&n| {
                let cluster = self.cluster_of(n);
                cluster == self.cluster_of(node) || listed.contains(&self.cluster_name(cluster))
            })
            .map(|n| self.peer_name(node, n))
            .collect()
    }

    /// Links clusters `a` and `b` both ways: every node of each lists the other (if it did not
    /// already), and each running agent is told by SIGHUP. Nodes without a running agent
    /// read it when started.
    pub fn link_clusters(&self, a: u8, b: u8) -> Result<()> {
        self.relink(a, b, true)
    }

    /// Undoes [`Lab::link_clusters`]: neither cluster's nodes list the other any more.
    pub fn unlink_clusters(&self, a: u8, b: u8) -> Result<()> {
        self.relink(a, b, false)
    }

    fn relink(&self, a: u8, b: u8, link: bool) -> Result<()> {
        for cluster in [a, b] {
            if !self.cluster_ids().contains(&cluster) || a == b {
                return Err(LabError::Check(format!(
                    "cannot (un)link clusters {a} and {b}: the lab has clusters 1..={}",
                    self.clusters()
                )));
            }
        }
        for (here, there) in [(a, b), (b, a)] {
            let name = self.cluster_name(there);
            for node in self.cluster_nodes(here) {
                let mut mesh = self.cluster_mesh_of(node);
                mesh.retain(|c| c.name != name);
                if link {
                    mesh.push(self.cluster_section(there));
                }
                let agent = self.node(node).agent();
                if agent.running_agent() {
                    agent.set_cluster_mesh(mesh)?;
                } else {
                    self.record_mesh(node, mesh);
                }
            }
        }
        Ok(())
    }

    fn record_mesh(&self, node: u8, clusters: Vec<RemoteClusterSection>) {
        if let Some(entry) = self.meshes_guard().get_mut(slot(node)) {
            *entry = Some(clusters);
        }
    }

    fn meshes_guard(&self) -> std::sync::MutexGuard<'_, Vec<Option<Vec<RemoteClusterSection>>>> {
        // Plain data: a poisoned lock is still consistent.
        self.meshes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Index of node `node` in the per-node tables (node 0 maps out of range).
fn slot(node: u8) -> usize {
    usize::from(node).wrapping_sub(1)
}

impl AgentHandle<'_> {
    /// Sets the clusters this node's config lists (`clusterMesh.clusters`; empty: no
    /// `clusterMesh`), rewrites its config file and sends the running agent SIGHUP. The lab
    /// keeps the list for later starts even when this fails because no agent runs.
    pub fn set_cluster_mesh(&self, clusters: Vec<RemoteClusterSection>) -> Result<()> {
        let node = self.node;
        self.lab.record_mesh(node, clusters);
        self.reload()
    }

    /// Writes the lab's config for this node again (with what [`AgentHandle::set_cluster_mesh`]
    /// set) and sends the agent SIGHUP.
    pub fn reload(&self) -> Result<()> {
        self.reload_with(&config_yaml(&self.lab.config_file(self.node)))
    }

    /// Replaces the agent's config file with `yaml` (anything, valid or not: a refused reload
    /// is a test case too) and sends the agent SIGHUP. Only once the agent answers status:
    /// before it handles SIGHUP, the signal's default action ends it. [`AgentHandle::start`]
    /// writes the lab's config again.
    pub fn reload_with(&self, yaml: &str) -> Result<()> {
        let node = self.node;
        if !self.running_agent() {
            return Err(LabError::Node {
                node,
                what: "no wiremesh agent is running to reload its config".into(),
            });
        }
        let path = self.config_path();
        let tmp = path.with_extension("yaml.lab-tmp");
        std::fs::write(&tmp, yaml).map_err(|e| LabError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| LabError::io(&path, e))?;
        let mut procs = self.lab.procs();
        let Some(p) = procs.get_mut(slot(node)).and_then(Option::as_mut) else {
            return Err(LabError::Node {
                node,
                what: "the agent stopped before SIGHUP".into(),
            });
        };
        p.proc.signal(Signal::SIGHUP);
        Ok(())
    }

    /// Whether the node runs a wiremesh agent (not wireguard-go) that has not exited.
    pub(crate) fn running_agent(&self) -> bool {
        let mut procs = self.lab.procs();
        procs
            .get_mut(slot(self.node))
            .and_then(Option::as_mut)
            .is_some_and(|p| p.kind == NodeKind::Agent && p.proc.exited().is_none())
    }
}
