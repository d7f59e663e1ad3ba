//! Handles per role: what a user of the lab acts on. [`Lab::node`] gives a [`NodeHandle`] (the
//! node's namespace, links and kernel state), which gives its [`AgentHandle`] (the wiremesh agent:
//! start, stop, status, logs, policy objects), [`DatapathHandle`] (the data-path process) and
//! [`GuardHandle`] (strict mode's nftables guard). [`Lab::host`] and [`Lab::pod`] give a
//! [`HostHandle`] (traffic from a node or pod), [`Lab::store`] the node records,
//! [`Lab::etcd`] the etcd server (per cluster: [`Lab::cluster_store`], [`Lab::cluster_etcd`]),
//! [`Lab::switch`] the underlay switch and [`Lab::vm`] a systemd VM in a node ([`VmHandle`]).
//!
//! This file holds the handles and how to get one; each role's methods live with the code of
//! that topic (`agent.rs`, `traffic.rs`, `store.rs`, ...). Handles are small borrowed views that
//! name the role once (`lab.node(2).agent().status()`); they hold no state of their own and must
//! never outlive or bypass the [`Lab`] that owns every process and namespace, so teardown stays
//! the lab's alone.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use crate::addr::{node_name, Host};
use crate::error::Result;
use crate::lab::Lab;

impl Lab {
    /// Node `node` (1-based).
    pub fn node(&self, node: u8) -> NodeHandle<'_> {
        NodeHandle { lab: self, node }
    }

    /// Pod `pod` of node `node` (both 1-based).
    pub fn pod(&self, node: u8, pod: u8) -> HostHandle<'_> {
        self.host(Host::Pod(node, pod))
    }

    /// A node or a pod, for traffic.
    pub fn host(&self, host: Host) -> HostHandle<'_> {
        HostHandle { lab: self, host }
    }

    /// The store every node shares (cluster 1's in a multi-cluster lab).
    pub fn store(&self) -> StoreHandle<'_> {
        self.cluster_store(1)
    }

    /// Cluster `cluster`'s store (1-based).
    pub fn cluster_store(&self, cluster: u8) -> StoreHandle<'_> {
        StoreHandle { lab: self, cluster }
    }

    /// The etcd server on the switch (etcd labs only; cluster 1's in a multi-cluster lab).
    pub fn etcd(&self) -> EtcdHandle<'_> {
        self.cluster_etcd(1)
    }

    /// Cluster `cluster`'s etcd server (etcd labs only).
    pub fn cluster_etcd(&self, cluster: u8) -> EtcdHandle<'_> {
        EtcdHandle { lab: self, cluster }
    }

    /// The underlay switch namespace (bridge `br0`).
    pub fn switch(&self) -> SwitchHandle<'_> {
        SwitchHandle { lab: self }
    }

    /// The systemd VM in node `node` (1-based), booted with [`VmHandle::boot`] in place of
    /// the node's agent.
    pub fn vm(&self, node: u8) -> VmHandle<'_> {
        VmHandle { lab: self, node }
    }
}

/// One node: its network namespace, directories, links and kernel state.
#[derive(Debug, Clone, Copy)]
pub struct NodeHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) node: u8,
}

impl<'a> NodeHandle<'a> {
    pub fn id(&self) -> u8 {
        self.node
    }

    /// `node-<i>`, the node's name in the store.
    pub fn name(&self) -> String {
        node_name(self.node)
    }

    /// The wiremesh agent on this node.
    pub fn agent(&self) -> AgentHandle<'a> {
        AgentHandle {
            lab: self.lab,
            node: self.node,
        }
    }

    /// The data-path process the agent started on this node.
    pub fn datapath(&self) -> DatapathHandle<'a> {
        DatapathHandle {
            lab: self.lab,
            node: self.node,
        }
    }

    /// Strict mode's nftables guard table in this node's namespace.
    pub fn guard(&self) -> GuardHandle<'a> {
        GuardHandle {
            lab: self.lab,
            node: self.node,
        }
    }

    /// The node itself as a traffic endpoint.
    pub fn host(&self) -> HostHandle<'a> {
        self.lab.host(Host::Node(self.node))
    }

    /// Pod `pod` of this node.
    pub fn pod(&self, pod: u8) -> HostHandle<'a> {
        self.lab.pod(self.node, pod)
    }

    pub fn ns(&self) -> String {
        self.lab.node_ns(self.node)
    }

    /// `<labdir>/n<i>`: the node's config, log, state and run directories.
    pub fn dir(&self) -> PathBuf {
        self.lab.node_dir(self.node)
    }

    /// A command in the node's network namespace with the node's own `/run/wireguard` and
    /// `/run/wiremesh` bind-mounted (as the agent sees them). Append arguments as usual.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        self.lab.node_cmd(self.node, program)
    }

    /// The shell command line equivalent to [`NodeHandle::cmd`], for humans.
    pub fn shell_line(&self, program: &str) -> String {
        self.lab.node_shell_line(self.node, program)
    }

    /// Runs `ip -n <node ns> <args>` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.lab.ip(Host::Node(self.node), args)
    }
}

/// The wiremesh agent of one node.
#[derive(Debug, Clone, Copy)]
pub struct AgentHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) node: u8,
}

/// The data-path process of one node.
#[derive(Debug, Clone, Copy)]
pub struct DatapathHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) node: u8,
}

/// Strict mode's nftables guard of one node.
#[derive(Debug, Clone, Copy)]
pub struct GuardHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) node: u8,
}

/// A node or pod as a traffic endpoint.
#[derive(Debug, Clone, Copy)]
pub struct HostHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) host: Host,
}

impl HostHandle<'_> {
    pub fn host(&self) -> Host {
        self.host
    }

    pub fn ns(&self) -> String {
        self.lab.ns(self.host)
    }

    /// A command in this host's namespace (for a node, with its run directories mounted).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        self.lab.host_cmd(self.host, program)
    }

    /// Runs `ip -n <ns> <args>` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        self.lab.ip(self.host, args)
    }
}

/// The store one cluster's nodes share: one JSON record per node.
#[derive(Debug, Clone, Copy)]
pub struct StoreHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) cluster: u8,
}

/// The etcd server an etcd lab runs on the switch for one cluster.
#[derive(Debug, Clone, Copy)]
pub struct EtcdHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) cluster: u8,
}

/// The systemd VM ("hybrid host") in one node's network namespace.
#[derive(Debug, Clone, Copy)]
pub struct VmHandle<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) node: u8,
}

/// The underlay switch namespace.
#[derive(Debug, Clone, Copy)]
pub struct SwitchHandle<'a> {
    pub(crate) lab: &'a Lab,
}

impl SwitchHandle<'_> {
    pub fn ns(&self) -> String {
        self.lab.switch_ns()
    }
}
