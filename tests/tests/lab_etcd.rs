//! The lab's etcd, without any agent: it serves on the switch's underlay address, keeps its data
//! across a stop and start, `etcdctl` works, and the leak detector files node-to-etcd traffic as
//! store traffic, not as a leak between nodes. Teardown stops it.

mod common;

use std::time::Duration;

use wiremesh_lab::{etcd_node_key, Host, Lab, LabOptions, SWITCH_IP};

#[test]
fn etcd_runs_on_the_switch_survives_restart_and_is_not_a_leak() {
    common::require_prerequisites();
    let mut lab = common::lab_with(2, 0, LabOptions::etcd(common::LEASE_TTL));
    assert!(
        lab.etcd().running(),
        "etcd is not running after the lab was built"
    );
    let addrs = lab
        .host(Host::Node(1))
        .ip(&["-4", "-o", "addr", "show", "eth0"])
        .expect("node-1's address");
    assert!(addrs.contains("198.18.0.1/24"), "{addrs}");
    common::assert_ping(&lab, Host::Node(1), Host::Node(2));
    lab.host(Host::Node(1))
        .wait_reachable(SWITCH_IP, Duration::from_secs(5))
        .expect("node-1 reaches the switch's address");

    let key = etcd_node_key("node-7");
    lab.etcd().put(&key, b"{\"x\": 1}").expect("etcdctl put");
    assert_eq!(
        lab.etcd().get(&key).expect("etcdctl get").as_deref(),
        Some(&b"{\"x\": 1}"[..])
    );
    lab.etcd().stop().expect("etcd stops");
    assert!(!lab.etcd().running());
    assert!(
        lab.etcd().ctl(&["endpoint", "health"]).is_err(),
        "etcd still answers after stop_etcd"
    );
    lab.etcd().start().expect("etcd starts again");
    assert_eq!(
        lab.etcd().get(&key).expect("get after restart").as_deref(),
        Some(&b"{\"x\": 1}"[..]),
        "etcd lost its data across a restart"
    );
    assert!(lab.etcd().del(&key).expect("etcdctl del"));
    assert_eq!(lab.etcd().get(&key).expect("get after del"), None);

    // A node talking to etcd is store traffic, not a leak between nodes.
    let capture = lab.switch().capture("etcd").expect("tcpdump starts");
    let mut nc = lab.node(1).cmd("nc");
    nc.args(["-z", "-n", "-w", "2", &SWITCH_IP.to_string(), "2379"]);
    wiremesh_lab::run(&mut nc, Duration::from_secs(10)).expect("node-1 connects to etcd");
    let report = capture
        .stop()
        .expect("capture stops")
        .analyze(b"WMLEAKNOTHERE000")
        .expect("capture decodes");
    assert!(
        report.store > 0,
        "no store traffic seen:\n{}",
        report.summary()
    );
    assert!(
        report.other.is_empty(),
        "etcd traffic classified as a leak:\n{}",
        report.summary()
    );

    let prefix = lab.prefix().to_owned();
    lab.teardown().expect("teardown");
    assert_no_etcd_left(&lab, &prefix);
}

fn assert_no_etcd_left(lab: &Lab, prefix: &str) {
    assert!(!lab.etcd().running(), "etcd still running after teardown");
    let out = wiremesh_lab::output(
        std::process::Command::new("pgrep").args(["-f", &format!("{prefix}/etcd")]),
        None,
        Duration::from_secs(5),
    )
    .expect("pgrep runs");
    assert!(
        out.stdout.is_empty(),
        "an etcd of lab {prefix} survived teardown: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
