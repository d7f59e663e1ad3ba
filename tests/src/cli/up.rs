//! `wiremesh-lab up`: a lab that stays until Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::Context;
use wiremesh_lab::{
    agent_binary, kube_api_url, node_ip, pod_cidr, pod_ip, Lab, LabOptions, AGENT_USER, WG_IFACE,
};

use super::{check_interrupted, section, stop_requested};

const READY: Duration = Duration::from_secs(20);
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// What `up` was asked for.
pub struct UpArgs {
    /// Per cluster.
    pub nodes: u8,
    pub clusters: u8,
    pub pods: u8,
    pub agents: bool,
    pub store: UpStore,
}

/// `--store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreChoice {
    Dir,
    Etcd,
    Kubernetes,
}

/// The store `up` builds the lab on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpStore {
    Dir,
    Etcd { lease_ttl_secs: u64 },
    Kubernetes,
}

impl StoreChoice {
    /// `--store` and `--etcd TTL` together (clap refuses both at once); etcd's lease TTL is
    /// 5 s unless `--etcd` names one.
    pub fn resolve(store: Option<Self>, etcd_ttl: Option<u64>) -> UpStore {
        match (store, etcd_ttl) {
            (_, Some(lease_ttl_secs)) => UpStore::Etcd { lease_ttl_secs },
            (Some(Self::Etcd), None) => UpStore::Etcd { lease_ttl_secs: 5 },
            (Some(Self::Kubernetes), None) => UpStore::Kubernetes,
            (Some(Self::Dir) | None, None) => UpStore::Dir,
        }
    }
}

pub fn run(args: &UpArgs) -> anyhow::Result<()> {
    let UpArgs {
        nodes,
        clusters,
        pods,
        agents,
        store,
    } = *args;
    let shape = if clusters > 1 {
        format!("{clusters} clusters × {nodes} nodes × {pods} pods")
    } else {
        format!("{nodes} nodes × {pods} pods")
    };
    section(&format!("Building a lab: {shape}"));
    let options = match store {
        UpStore::Etcd { lease_ttl_secs } => LabOptions::etcd(Duration::from_secs(lease_ttl_secs)),
        UpStore::Kubernetes => LabOptions::kubernetes(),
        UpStore::Dir => LabOptions::default(),
    }
    .clusters(clusters);
    let lab = Lab::with_options(nodes, pods, options).context("building the lab")?;
    check_interrupted()?;
    if agents {
        section("Starting agents");
        if let Err(e) = lab.start_agents(READY) {
            lab.dump_logs();
            return Err(e).context("starting agents");
        }
    }
    print_access(&lab);
    println!("\nPress Ctrl-C to tear the lab down.");
    let mut reported = vec![false; usize::from(lab.nodes())];
    let mut last_check = Instant::now();
    while !stop_requested() {
        std::thread::sleep(Duration::from_millis(100));
        if !agents || last_check.elapsed() < HEALTH_EVERY {
            continue;
        }
        last_check = Instant::now();
        for (node, seen) in lab.node_ids().zip(reported.iter_mut()) {
            if let (false, Err(e)) = (*seen, lab.node(node).agent().check_running()) {
                eprintln!("\nwiremesh-lab: WARNING: {e}");
                *seen = true;
            }
        }
    }
    section("Tearing down");
    Ok(())
}

fn print_access(lab: &Lab) {
    let bin = agent_binary().map_or_else(|_| "wiremesh".to_owned(), |p| p.display().to_string());
    section(&format!(
        "Lab {} is up (working directory {})",
        lab.prefix(),
        lab.dir().display()
    ));
    for cluster in lab.cluster_ids() {
        print_cluster(lab, cluster);
    }
    println!(
        "underlay capture:   ip netns exec {} tcpdump -nni br0",
        lab.switch().ns()
    );
    for node in lab.node_ids() {
        let cluster = if lab.clusters() > 1 {
            format!("  cluster {}", lab.cluster_name(lab.cluster_of(node)))
        } else {
            String::new()
        };
        println!(
            "\nnode-{node}{cluster}  underlay {}  pods {}",
            node_ip(node),
            pod_cidr(node)
        );
        match lab.node(node).agent().pid() {
            Some(pid) => {
                println!(
                    "  agent pid {pid}, log {}",
                    lab.node(node).dir().join("agent.log").display()
                );
                println!("  shell as the agent sees it:  nsenter -t {pid} -n -m bash");
            }
            None => println!("  no agent running"),
        }
        println!(
            "  shell with the node's mounts: {}",
            lab.node(node).shell_line("bash")
        );
        println!("    (inside: wg show {WG_IFACE}; {bin} encrypt status)");
        for pod in lab.pod_ids() {
            println!(
                "  pod-{pod} {:<12} ip netns exec {} bash",
                pod_ip(node, pod),
                lab.pod(node, pod).ns()
            );
        }
    }
}

/// One cluster's name, ID, pool and store (in a one-cluster lab, only its store).
fn print_cluster(lab: &Lab, cluster: u8) {
    let section = lab.cluster_section(cluster);
    if lab.clusters() > 1 {
        let nodes = lab.cluster_nodes(cluster);
        println!(
            "cluster {} (clusterID {}): nodes {}..={}, pool {}",
            section.name,
            section.id,
            nodes.start(),
            nodes.end(),
            section.pod_cidrs.join(", ")
        );
        let first = *lab.cluster_nodes(cluster).start();
        let linked: Vec<String> = lab
            .cluster_mesh_of(first)
            .into_iter()
            .map(|c| c.name)
            .collect();
        println!("  clusterMesh lists:  {}", or_none(&linked));
    }
    let indent = if lab.clusters() > 1 { "  " } else { "" };
    let store = lab.cluster_store(cluster);
    if lab.options().uses_etcd() {
        let etcd = lab.cluster_etcd(cluster);
        println!(
            "{indent}store (etcd):       {} (data {}); etcdctl: ip netns exec {} env ETCDCTL_API=3 etcdctl --endpoints={} get --prefix /wiremesh",
            etcd.endpoint(),
            etcd.data_dir().display(),
            lab.switch().ns(),
            etcd.endpoint()
        );
    } else if lab.options().uses_kubernetes() {
        print_kube(lab);
    } else {
        println!("{indent}store (shared dir): {}", store.dir().display());
    }
}

/// Where the fake API server is and how to drive it with kubectl.
fn print_kube(lab: &Lab) {
    let api = lab.kube_api();
    println!(
        "store (Kubernetes): {} — wiremesh-fake-apiserver (pid {}), standing in for \
         kube-apiserver, enforcing {} for the agents ({AGENT_USER})",
        kube_api_url(),
        api.pid().map_or_else(|| "?".into(), |p| p.to_string()),
        api.rbac_path().display()
    );
    println!(
        "  kubectl:  ip netns exec {} kubectl --kubeconfig {} get nodes -o wide",
        lab.switch().ns(),
        api.admin_kubeconfig().display()
    );
    println!("            (create/replace/delete -f FILE --validate=false: Namespaces, Pods, NetworkPolicies, CiliumNetworkPolicies)");
    println!(
        "  audit log: {}   state: {}",
        api.audit_path().display(),
        api.dir().join("state.json").display()
    );
}

fn or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}
