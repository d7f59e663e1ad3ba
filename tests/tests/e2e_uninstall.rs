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
    // A second cleanup finds nothing and succeeds.
    let again = cleanup(&lab, 1);
    assert!(
        again.status.success() && String::from_utf8_lossy(&again.stdout).contains("nothing"),
        "a second cleanup: {}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
}
