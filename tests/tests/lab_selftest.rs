//! The lab itself, without any agent: topology, commands inside nodes and pods, traffic helpers,
//! the leak detector, and cleanup. If this fails, the agent tests' failures mean nothing.

mod common;

use std::time::Duration;

use wiremesh_lab::{marker, node_ip, pod_ip, BgProcess, Host, Lab, Ping, LAB_ROOT};

#[test]
fn lab_topology_traffic_capture_and_cleanup() {
    common::require_prerequisites();
    let mut lab = common::lab(2, 2);
    let prefix = lab.prefix().to_owned();
    let dir = lab.dir().to_path_buf();

    // Pods reach their node's gateway, each other, and the node's underlay address.
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(1, 2));
    lab.host(Host::Pod(1, 1))
        .wait_reachable(wiremesh_lab::node_gateway(1), Duration::from_secs(5))
        .expect("pod reaches its gateway");
    common::assert_ping(&lab, Host::Node(1), Host::Node(2));

    // Without a tunnel or a bypass there is no route between nodes' pods.
    let blocked = lab
        .pod(1, 1)
        .ping(
            &Ping::new(pod_ip(2, 1))
                .count(1)
                .interval(Duration::from_millis(200)),
        )
        .expect("ping runs");
    assert_eq!(
        blocked.received, 0,
        "pods of different nodes must not reach each other by default"
    );

    // With the bypass, traffic crosses the underlay in the clear, and the detector sees it.
    lab.node(1).bypass_tunnel(2).expect("bypass 1->2");
    lab.node(2).bypass_tunnel(1).expect("bypass 2->1");
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 2));
    lab.host(Host::Pod(2, 1))
        .tcp_transfer(Host::Pod(1, 2), 256 * 1024, common::TRAFFIC)
        .expect("TCP over the bypass");

    let mark = marker();
    let capture = lab.switch().capture("selftest").expect("tcpdump starts");
    let got = lab
        .host(Host::Pod(1, 1))
        .tcp_send(Host::Pod(2, 1), &mark, common::TRAFFIC)
        .expect("marker over TCP");
    assert_eq!(got, mark);
    let report = capture
        .stop()
        .expect("capture stops")
        .analyze(&mark)
        .expect("capture decodes");
    assert!(
        report.marker_found,
        "detector missed a cleartext marker:\n{}",
        report.summary()
    );
    assert!(
        !report.is_clean(),
        "cleartext TCP must count as a leak:\n{}",
        report.summary()
    );

    let capture = lab
        .switch()
        .capture("selftest-ping")
        .expect("tcpdump starts");
    let ping = Ping::new(pod_ip(2, 2)).count(2).pattern(&mark);
    assert!(lab
        .host(Host::Pod(1, 2))
        .ping(&ping)
        .expect("ping runs")
        .all_received());
    let file = capture.stop().expect("capture stops");
    assert!(
        file.contains(&mark).expect("pcap readable"),
        "marker in ping payload not seen"
    );

    lab.node(1).remove_bypass(2).expect("remove bypass");
    let blocked = lab
        .pod(1, 1)
        .ping(
            &Ping::new(pod_ip(2, 1))
                .count(1)
                .interval(Duration::from_millis(200)),
        )
        .expect("ping runs");
    assert_eq!(blocked.received, 0, "bypass removal did not take effect");

    // node(1).cmd sees the node's own /run/wireguard (not the host's); its PID is the program's.
    let mut touch = lab.node(1).cmd("sh");
    touch.args([
        "-c",
        "touch /run/wireguard/probe /run/wiremesh/probe && ip -4 -o addr show dev eth0",
    ]);
    let out = wiremesh_lab::run(&mut touch, Duration::from_secs(10)).expect("node_cmd runs");
    assert!(
        out.contains(&node_ip(1).to_string()),
        "node_cmd is not in node 1's netns: {out}"
    );
    assert!(lab.node(1).dir().join("wireguard/probe").exists());
    assert!(lab.node(1).dir().join("run/probe").exists());
    assert!(
        !std::path::Path::new("/run/wireguard/probe").exists(),
        "bind mount leaked to the host"
    );
    let mut sleep_cmd = lab.node(2).cmd("sleep");
    sleep_cmd.arg("30");
    let mut sleeper =
        BgProcess::spawn("sleep", &mut sleep_cmd, &lab.dir().join("sleep.log")).expect("spawn");
    let comm_path = format!("/proc/{}/comm", sleeper.pid());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&comm_path)
        .unwrap_or_default()
        .trim()
        != "sleep"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "node_cmd's PID never became the program's own"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sleeper.kill();

    lab.teardown().expect("teardown");
    drop(lab);
    let listing = wiremesh_lab::run(
        std::process::Command::new("ip").args(["netns", "list"]),
        Duration::from_secs(5),
    )
    .expect("ip netns list");
    assert!(
        !listing.contains(&format!("{prefix}-")),
        "namespaces left behind:\n{listing}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(dir.starts_with(LAB_ROOT));
}

#[test]
fn parallel_labs_do_not_collide() {
    common::require_prerequisites();
    let a = Lab::new(1, 1).expect("lab a");
    let b = Lab::new(1, 1).expect("lab b");
    assert_ne!(a.prefix(), b.prefix());
    common::assert_ping(&a, Host::Pod(1, 1), Host::Node(1));
    common::assert_ping(&b, Host::Pod(1, 1), Host::Node(1));
}
