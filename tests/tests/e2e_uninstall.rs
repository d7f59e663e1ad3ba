//! Uninstalling leaves nothing of wiremesh's on a node: after the agent stops (the DaemonSet
//! deleted, `systemctl disable --now`), `wiremesh cleanup --purge` removes the data path and
//! the proxy, the WireGuard interface and its routes, the policy programs on every interface,
//! the pinned maps, the strict-mode and L7 nftables tables, the L7 policy routing, the state and
//! the run directory. Each leftover is looked for before the cleanup too (the control: every
//! detector finds its thing on a running node), and the other node is untouched. While an
//! agent runs, the cleanup refuses.

mod common;

use std::path::PathBuf;
use std::process::Command;

use wiremesh_lab::{namespace_manifest, Host, Lab, PodSpec};

const POLICY: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: demo}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
"#;

/// Runs `program args` in node `node`'s network namespace; stdout, or a panic naming it.
fn in_node(lab: &Lab, node: u8, program: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.node(node).ns(), program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?} in node-{node}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The config value `key:` of the node's agent config (a path), as the agent reads it.
fn config_path(lab: &Lab, node: u8, key: &str) -> PathBuf {
    let yaml = lab.node(node).agent().config_yaml();
    let v: serde_json::Value = yaml_serde::from_str(&yaml).expect("agent config parses");
    let v = key.split('.').fold(&v, |v, k| &v[k]);
    PathBuf::from(
        v.as_str()
            .unwrap_or_else(|| panic!("{key} not in the lab config")),
    )
}

/// Everything of wiremesh's found on node `node`, one line each.
fn leftovers(lab: &Lab, node: u8) -> Vec<String> {
    let mut found = Vec::new();
    let links = in_node(lab, node, "ip", &["-o", "link", "show"]);
    if links.contains("wiremesh_wg0") {
        found.push("interface wiremesh_wg0".to_string());
    }
    let routes = in_node(lab, node, "ip", &["route", "show", "proto", "static"]);
    if routes.contains("wiremesh_wg0") {
        found.push(format!("routes into the tunnel: {}", routes.trim()));
    }
    for name in links
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
    {
        for hook in ["ingress", "egress"] {
            let filters = in_node(lab, node, "tc", &["filter", "show", "dev", &name, hook]);
            if filters.contains("handle 0x574d") {
                found.push(format!("tc {hook} filter on {name}"));
            }
        }
    }
    let pins = config_path(lab, node, "policy.bpfPinDir");
    if pins.exists() {
        found.push(format!("pinned maps in {}", pins.display()));
    }
    let tables = in_node(lab, node, "nft", &["list", "tables"]);
    for table in ["inet wiremesh\n", "inet wiremesh_l7\n"] {
        if format!("{tables}\n").contains(table) {
            found.push(format!("nftables table {}", table.trim()));
        }
    }
    for v in ["-4", "-6"] {
        if in_node(lab, node, "ip", &[v, "rule", "show"]).contains("lookup 2611") {
            found.push(format!("ip {v} rule lookup 2611"));
        }
    }
    for pid in [lab.node(node).datapath().pid()].into_iter().flatten() {
        found.push(format!("data path pid {pid}"));
    }
    let state = config_path(lab, node, "stateDir");
    let kept = std::fs::read_dir(&state).map_or(0, Iterator::count);
    if kept > 0 {
        found.push(format!("stateDir {} ({kept} entries)", state.display()));
    }
    found
}

fn cleanup(lab: &Lab, node: u8) -> std::process::Output {
    let bin = wiremesh_lab::agent_binary().expect("the wiremesh binary");
    let config = lab.node(node).agent().config_path();
    lab.node(node)
        .cmd(&bin)
        .args(["cleanup", "--purge", "--config"])
        .arg(&config)
        .output()
        .expect("running wiremesh cleanup")
}

#[test]
fn cleanup_leaves_nothing_and_refuses_while_the_agent_runs() {
    common::require_agent();
    let lab = common::lab(2, 1);
    common::start_mesh(&lab);
    let a = PodSpec::new("demo", "a", Host::Pod(1, 1)).label("app", "a");
    let b = PodSpec::new("demo", "b", Host::Pod(2, 1)).label("app", "b");
    let objects = [namespace_manifest("demo", &[]), a.manifest(), b.manifest()].join("---\n");
    lab.node(1).agent().apply(&objects).expect("apply the pods");
    lab.node(1).agent().apply(POLICY).expect("apply the policy");
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));

    // The control: on a running node every detector finds its thing.
    let before = leftovers(&lab, 1);
    for what in [
        "interface wiremesh_wg0",
        "routes into the tunnel",
        "tc ingress filter on",
        "pinned maps",
        "nftables table inet wiremesh",
        "nftables table inet wiremesh_l7",
        "ip -4 rule lookup 2611",
        "data path pid",
        "stateDir",
    ] {
        assert!(
            before.iter().any(|l| l.starts_with(what)),
            "the detector for {what:?} finds nothing on a running node: {before:#?}"
        );
    }

    let refused = cleanup(&lab, 1);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "cleanup while the agent runs must refuse: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        leftovers(&lab, 1).len() >= before.len(),
        "a refused cleanup removed something"
    );

    lab.node(1).agent().stop().expect("stop node-1's agent");
    let done = cleanup(&lab, 1);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(done.status.success(), "wiremesh cleanup failed:\n{said}");
    let after = leftovers(&lab, 1);
    assert!(
        after.is_empty(),
        "left on node-1 after cleanup: {after:#?}\n{said}"
    );
    assert!(
        said.contains("strict mode"),
        "the cleanup says strict mode is gone:\n{said}"
    );

    // The other node is untouched.
    let other = leftovers(&lab, 2);
    assert!(
        other.iter().any(|l| l == "interface wiremesh_wg0"),
        "node-2 lost its interface: {other:#?}"
    );
    // A second cleanup, as the cleanup DaemonSet runs it (`--wait`): finds nothing, then
    // stays up until SIGTERM and exits 0.
    second_cleanup_waits_for_sigterm(&lab, 1);
}

fn second_cleanup_waits_for_sigterm(lab: &Lab, node: u8) {
    use std::io::{BufRead, BufReader};
    let bin = wiremesh_lab::agent_binary().expect("the wiremesh binary");
    let config = lab.node(node).agent().config_path();
    let mut child = lab
        .node(node)
        .cmd(&bin)
        .args(["cleanup", "--purge", "--wait", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running wiremesh cleanup --wait");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !said
        .iter()
        .any(|l: &String| l.contains("waiting for SIGTERM"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("cleanup --wait never said it was waiting: {said:?}");
            }
        }
    }
    assert!(
        said.iter()
            .any(|l| l.contains("nothing of wiremesh's was left")),
        "a second cleanup found something: {said:?}"
    );
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "cleanup --wait exited by itself"
    );
    // The child is `ip netns exec … unshare … sh -c … wiremesh`: signal the whole group
    // of processes under it by finding the wiremesh process.
    let pid = wiremesh_pid_under(child.id()).expect("the wiremesh cleanup process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = child.wait().expect("wait for cleanup --wait");
    assert!(status.success(), "cleanup --wait on SIGTERM: {status}");
}

/// The `wiremesh` process among `root`'s descendants (the lab wraps commands in `ip netns exec`
/// and `unshare`, which exec, and `sh`, which may fork).
fn wiremesh_pid_under(root: u32) -> Option<i32> {
    let mut frontier = vec![root];
    for _ in 0..8 {
        let mut next = Vec::new();
        for pid in frontier {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "wiremesh" {
                return i32::try_from(pid).ok();
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            next.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        frontier = next;
    }
    None
}
