//! `wiremesh-lab up`: a lab that stays until Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::Context;
use wiremesh_lab::{
    agent_binary, etcd_endpoint, node_ip, pod_cidr, pod_ip, Lab, LabOptions, WG_IFACE,
};

use super::{check_interrupted, section, stop_requested};

const READY: Duration = Duration::from_secs(20);
const HEALTH_EVERY: Duration = Duration::from_secs(1);

pub fn run(nodes: u8, pods: u8, agents: bool, etcd_ttl: Option<u64>) -> anyhow::Result<()> {
    section(&format!("Building a lab: {nodes} nodes × {pods} pods"));
    let options = match etcd_ttl {
        Some(secs) => LabOptions::etcd(Duration::from_secs(secs)),
        None => LabOptions::default(),
    };
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
    let mut reported = vec![false; usize::from(nodes)];
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
    if lab.options().uses_etcd() {
        println!(
            "store (etcd):       {} (data {}); etcdctl: ip netns exec {} env ETCDCTL_API=3 etcdctl --endpoints={} get --prefix /wiremesh",
            etcd_endpoint(),
            lab.etcd().data_dir().display(),
            lab.switch().ns(),
            etcd_endpoint()
        );
    } else {
        println!("store (shared dir): {}", lab.store().dir().display());
    }
    println!(
        "underlay capture:   ip netns exec {} tcpdump -nni br0",
        lab.switch().ns()
    );
    for node in lab.node_ids() {
        println!(
            "\nnode-{node}  underlay {}  pods {}",
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
