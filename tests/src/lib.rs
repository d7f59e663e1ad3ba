//! wiremesh lab: throwaway clusters in network namespaces for end-to-end tests and demos.
//!
//! A [`Lab`] owns a switch namespace (a bridge, the underlay `198.18.0.0/24`), N node namespaces
//! plugged into it, and P pod namespaces behind each node (Calico-style /32 routes, pod CIDR
//! `10.244.<node>.0/24`). It starts the wiremesh agent (or stock wireguard-go) inside nodes, each
//! with a private mount namespace so `/run/wireguard` and `/run/wiremesh` are per node, as on
//! separate hosts. The agents share a dir store, or an etcd server the lab runs on the switch
//! ([`LabOptions`]); a multi-cluster lab has one store (or etcd) per cluster and links the
//! clusters through their agents' `clusterMesh` ([`ClusterPlan`]). It drives traffic (ping, TCP via nc) and captures the underlay.
//!
//! Users act on one role at a time through borrowed handles: `lab.node(2).agent().status()`,
//! `lab.node(1).datapath().pid()`, `lab.pod(1, 1).ping(..)`, `lab.store().read_record(..)`,
//! `lab.switch().capture(..)` (see [`handles`] and tests/README.md).
//!
//! It must never touch anything it did not create: every namespace is named with the lab's unique
//! prefix, processes are stopped by the PID the lab holds, and nothing is ever routed out of the
//! lab's namespaces. Every wait is bounded, and dropping a `Lab` (also while a test panics) stops
//! its processes and deletes its namespaces. It is test tooling: it shells out to `ip`, `wg`,
//! `tcpdump`, `nc` and `ping` rather than reimplementing them.

mod addr;
mod agent;
mod capture;
mod claim;
mod clusters;
pub mod container;
mod control;
pub mod deploy;
mod error;
mod etcd;
mod exec;
mod flood;
mod grpc;
pub mod handles;
mod http;
mod kube;
mod lab;
mod lifecycle;
mod mesh;
mod metrics;
mod netpol;
mod options;
mod policy;
mod raw;
mod store;
mod stream;
mod strict;
mod topology;
mod traffic;
mod vm;
mod wggo;
mod wgshow;

/// Every lab agent's `healthAddress` (kubelet's probes), in its own node's namespace: the
/// DaemonSet's (deploy/kubernetes).
pub const HEALTH_ADDRESS: &str = "127.0.0.1:9879";

pub use addr::{
    endpoint, node_gateway, node_gateway6, node_ip, node_ip6, node_name, pod_cidr, pod_cidr6,
    pod_ip, pod_ip6, Host, CLUSTER_POD_CIDR, CLUSTER_POD_CIDR6, SWITCH_IP6, WG_IFACE, WG_MTU,
    WG_PORT,
};
pub use agent::{
    agent_binary, agent_config, peer, peer_names, peers, CLUSTER_NAME, LOG_TAIL_LINES,
};
pub use capture::{classify, contains, marker, Capture, CaptureFile, LeakReport, Packet};
pub use claim::LAB_ROOT;
pub use clusters::{
    cluster_etcd_endpoint, etcd_client_port, etcd_key_of, etcd_peer_port, ClusterPlan, LabLayout,
    KUBE_HEARTBEAT,
};
pub use control::{tail, unix_now};
pub use error::{LabError, Result};
pub use etcd::{etcd_node_key, etcd_owner_key};
pub use exec::{output, preflight, require_root, require_tools, run, which, BgProcess};
pub use flood::{flood, initiation, mac1_key, FloodReport, FloodSpec, INITIATION_LEN};
pub use grpc::{GrpcOutcome, GrpcServer};
pub use handles::{
    AgentHandle, DatapathHandle, EtcdHandle, GuardHandle, HostHandle, NodeHandle, StoreHandle,
    SwitchHandle, VmHandle,
};
pub use http::{lab_binary, HttpReply, HttpRequest, HttpServer};
pub use kube::{
    deploy_rbac, fake_apiserver_binary, kube_api_url, node_manifest, KubeApiHandle, ADMIN_USER,
    AGENT_GROUPS, AGENT_USER, KUBE_API_PORT,
};
pub use lab::{Lab, NodeKind, AGENT_RUN_DIR, WG_RUN_DIR};
pub use lifecycle::PolicyHooks;
pub use metrics::{
    documented_metrics, parse_exposition, parse_udp_snmp, process_cpu, DocumentedMetric,
    Exposition, MetricFamily,
};
pub use netpol::{
    netpol_pod, NetpolModel, Reachability, NETPOL_NAMESPACES, NETPOL_PODS, NETPOL_TCP_PORTS,
    NETPOL_UDP_PORTS,
};
pub use options::{
    agent_config_file, agent_config_with, config_duration, config_yaml, etcd_endpoint,
    offload_from_env, KeyRotation, LabOptions, StoreKind, ETCD_CLIENT_PORT, ETCD_PEER_PORT,
    ETCD_PREFIX, SWITCH_IP,
};
pub use policy::{namespace_manifest, namespace_with_pods, render_matrix, PodSpec, Proto, Servers};
pub use raw::{RawEnd, RawReply, RawSend};
pub use store::node_record;
pub use stream::{IperfClient, IperfReport, PingLog};
pub use strict::GUARD_TABLE;
pub use topology::{BYPASS_PREF, BYPASS_TABLE};
pub use traffic::{test_data, Bulk, Ping, PingResult};
pub use vm::{
    prepare_rootfs, vm_config_file, vm_host_address, VM_AGENT_BIN, VM_LABEL, VM_ROOTFS,
    VM_STORE_DIR, VM_UNIT,
};
pub use wggo::KeyPair;
pub use wgshow::{parse_wg_show, WgPeer};
