//! The hybrid host (issue 12, acceptance 5): a real systemd "VM" (a Debian root booted by
//! `systemd-nspawn -b` in node-3's network namespace) runs the agent under
//! `scripts/systemd/wiremesh.service` exactly as shipped, with no pods and a `hostAddress`, and
//! joins the mesh of nodes 1 and 2 (normal agents, one pod each). Strict mode is on and every
//! node has a default route to the switch, so anything that misses the tunnel really leaves and
//! is captured on the underlay.
//!
//! One test, in order: `systemctl enable --now wiremesh` joins the VM (both nodes list it, pods
//! and the VM ping and talk TCP both ways, only WireGuard crosses the underlay); policy selects
//! the VM by its `labels` (a pod's egress `toEndpoints`, and a `nodeSelector` host policy on the
//! VM itself, each with its control); the journal
//! holds the agent's lines; the unit's hardening is what the agent runs under; `systemctl
//! restart` under a 100/s ping loses nothing; `systemctl stop` leaves the data path forwarding
//! (KillMode=process), and with the data path killed too, strict mode drops both directions and
//! nothing crosses in clear (control: the guard table deleted, the VM's marker does leave);
//! `shutdown` leaves no container and no mount behind.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use wiremesh_lab::{
    marker, peer, test_data, unix_now, Host, Lab, LabOptions, LeakReport, Ping, VmHandle, VM_UNIT,
    WG_IFACE,
};

const VM: u8 = 3;
const POD1: Host = Host::Pod(1, 1);
const POD2: Host = Host::Pod(2, 1);
/// The capabilities `wiremesh.service` bounds the agent to: CAP_CHOWN (0), CAP_NET_ADMIN (12),
/// CAP_PERFMON (38), CAP_BPF (39).
const UNIT_CAPS: u64 = 1 | (1 << 12) | (1 << 38) | (1 << 39);
const UNIT_CAP_NAMES: [&str; 4] = ["cap_chown", "cap_net_admin", "cap_perfmon", "cap_bpf"];

/// Root, the lab's tools, the agent binary, and what a VM needs: a failure naming the missing
/// piece, never a skip.
fn require_vm_prerequisites() {
    common::require_agent();
    if let Err(e) = wiremesh_lab::require_tools(&["systemd-nspawn", "nsenter", "debootstrap"]) {
        panic!("the systemd VM test needs systemd-container and debootstrap: {e}");
    }
}

/// Panics with `what`, the error and the VM's journal and console tails.
fn vm_fail(vm: &VmHandle<'_>, what: &str, e: impl std::fmt::Display) -> ! {
    panic!("{what}: {e}\n{}", vm.diagnostics())
}

#[test]
fn a_systemd_vm_joins_the_mesh_under_the_shipped_unit() {
    require_vm_prerequisites();
    let lab = common::lab_with(3, 1, LabOptions::default().default_route());
    common::start_some(&lab, &[1, 2]);
    let vm = lab.vm(VM);
    let booted = Instant::now();
    vm.boot()
        .unwrap_or_else(|e| panic!("booting the VM on node-{VM}: {e}"));
    eprintln!("VM booted in {:?}", booted.elapsed());

    guard_holds_before_the_agent(&lab, &vm);
    join(&lab, &vm);
    traffic_both_ways(&lab, &vm);
    policy_selects_the_host_by_its_labels(&lab, &vm);
    journal_and_hardening(&vm);
    restart_loses_nothing(&lab, &vm);
    stop_is_strict(&lab, &vm);

    let init = vm.init_pid().expect("the VM runs");
    vm.shutdown().expect("the VM powers off");
    assert!(
        !std::path::Path::new(&format!("/proc/{init}")).exists(),
        "the VM's PID 1 ({init}) outlived its shutdown"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    assert!(
        !mounts.contains(&lab.dir().join("vm-n3").display().to_string()),
        "the VM's mounts outlived its shutdown:\n{mounts}"
    );
}

/// The boot-time guard (`wiremesh-guard.service`, enabled as its install line says) has the
/// strict-mode table in the node's kernel before the agent ever ran.
fn guard_holds_before_the_agent(lab: &Lab, vm: &VmHandle<'_>) {
    let guard = vm
        .systemctl(&["is-active", "wiremesh-guard.service"])
        .unwrap_or_else(|e| vm_fail(vm, "wiremesh-guard.service is not active", e));
    assert_eq!(guard.trim(), "active");
    assert!(
        lab.node(VM).guard().counters().expect("nft").is_some(),
        "no table inet wiremesh in node-{VM} before the agent started"
    );
    let state = vm
        .output(&["systemctl", "is-active", VM_UNIT])
        .expect("systemctl");
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "inactive");
}

/// `systemctl enable --now wiremesh`: the VM and both nodes list each other, the VM's peer
/// entry carries its host address as a /32, and the address is on the WireGuard interface.
fn join(lab: &Lab, vm: &VmHandle<'_>) {
    vm.systemctl(&["enable", "--now", "wiremesh"])
        .unwrap_or_else(|e| vm_fail(vm, "systemctl enable --now wiremesh", e));
    vm.wait_active(VM_UNIT, common::READY)
        .unwrap_or_else(|e| panic!("{e}"));
    lab.node(VM)
        .agent()
        .wait_peer_count(2, common::CONVERGE)
        .unwrap_or_else(|e| panic!("the VM did not learn nodes 1 and 2: {e}"));
    let host32 = format!("{}/32", vm.host_address());
    for node in [1, 2] {
        let status = lab
            .node(node)
            .agent()
            .wait_status("the VM as a peer", common::CONVERGE, |s| {
                peer(s, "node-3").is_some()
            })
            .unwrap_or_else(|e| vm_fail(vm, &format!("node-{node} does not list the VM"), e));
        let allowed = &peer(&status, "node-3").expect("listed")["allowedIPs"];
        assert_eq!(
            allowed,
            &serde_json::json!([host32]),
            "node-{node}: the VM's allowed IPs are its host address only"
        );
    }
    let addrs = lab
        .node(VM)
        .ip(&["-4", "addr", "show", "dev", WG_IFACE])
        .expect("ip addr");
    assert!(addrs.contains(&host32), "{WG_IFACE} in the VM: {addrs}");
}

fn assert_all(what: &str, result: wiremesh_lab::Result<wiremesh_lab::PingResult>) {
    match result {
        Ok(r) if r.all_received() => {}
        Ok(r) => panic!("{what}: {r}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Pods on nodes 1 and 2 ping the VM's host address and the VM pings them; TCP both ways;
/// meanwhile the underlay carries the marker nowhere, and WireGuard does cross (the control
/// for the strict-mode capture below).
fn traffic_both_ways(lab: &Lab, vm: &VmHandle<'_>) {
    let host: IpAddr = vm.host_address().into();
    for pod in [POD1, POD2] {
        lab.host(pod)
            .wait_reachable(host, common::CONVERGE)
            .unwrap_or_else(|e| vm_fail(vm, &format!("{pod} -> the VM"), e));
        vm.wait_reachable(pod.ip(), common::CONVERGE)
            .unwrap_or_else(|e| vm_fail(vm, &format!("the VM -> {pod}"), e));
    }
    let mark = marker();
    let capture = lab.switch().capture("vm-up").expect("tcpdump");
    for pod in [POD1, POD2] {
        let ping = Ping::new(host)
            .count(5)
            .interval(Duration::from_millis(50))
            .pattern(&mark);
        assert_all(&format!("{pod} -> the VM"), lab.host(pod).ping(&ping));
        let ping = Ping::new(pod.ip())
            .count(5)
            .interval(Duration::from_millis(50))
            .pattern(&mark);
        assert_all(&format!("the VM -> {pod}"), vm.ping(&ping));
    }
    let data = test_data(64 * 1024);
    let got = vm
        .tcp_from(POD1, &data, common::TRAFFIC)
        .unwrap_or_else(|e| vm_fail(vm, "TCP pod(1,1) -> the VM", e));
    assert!(
        got == data,
        "TCP pod(1,1) -> the VM: {} of {} bytes",
        got.len(),
        data.len()
    );
    let got = vm
        .tcp_to(POD2, &data, common::TRAFFIC)
        .unwrap_or_else(|e| vm_fail(vm, "TCP the VM -> pod(2,1)", e));
    assert!(
        got == data,
        "TCP the VM -> pod(2,1): {} of {} bytes",
        got.len(),
        data.len()
    );
    let report = analyze(capture, &mark);
    eprintln!("tunnel up: {}", report.summary());
    assert!(
        !report.marker_found && pod_packets(&report).is_empty() && report.wireguard > 0,
        "with the tunnel up, the underlay must carry WireGuard only:\n{}",
        report.summary()
    );
}

/// The VM's `labels` make it a policy peer and its node a host-policy subject: pod(1,1)'s egress
/// limited to `toEndpoints: role=db-vm` still reaches the VM and no longer pod(2,1); a host
/// policy (`nodeSelector: role=db-vm`) admitting only pod(1,1) keeps pod(2,1) out of the VM.
/// Each verdict is first seen the other way (the control).
fn policy_selects_the_host_by_its_labels(lab: &Lab, vm: &VmHandle<'_>) {
    use wiremesh_lab::{namespace_with_pods, PodSpec};
    let host: IpAddr = vm.host_address().into();
    let (role, value) = wiremesh_lab::VM_LABEL;
    let client = PodSpec::new("demo", "client", POD1).label("app", "client");
    let other = PodSpec::new("demo", "other", POD2).label("app", "other");
    let agent = lab.node(1).agent();
    agent
        .apply(&namespace_with_pods("demo", &[client, other]))
        .expect("the pods applied");
    let reaches = |from: Host, to: IpAddr| {
        let ping = Ping::new(to).count(2).interval(Duration::from_millis(100));
        lab.host(from).ping(&ping).is_ok_and(|r| r.received > 0)
    };
    let settle = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !check() {
            if Instant::now() > deadline {
                vm_fail(vm, what, "not seen within 15 s");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    settle("pod(1,1) -> pod(2,1) before any policy", &|| {
        reaches(POD1, POD2.ip().into())
    });
    let egress = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: client, namespace: demo}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n\
         \x20 - toEndpoints:\n    - matchLabels: {{{role}: {value}, io.kubernetes.pod.namespace: default}}\n"
    );
    agent.apply(&egress).expect("the egress policy applied");
    settle("pod(1,1) -> pod(2,1) blocked by its egress policy", &|| {
        !reaches(POD1, POD2.ip().into())
    });
    assert!(
        reaches(POD1, host),
        "pod(1,1) -> the VM, selected by its labels"
    );
    agent.delete(&egress).expect("the egress policy deleted");

    settle("pod(2,1) -> the VM before the host policy", &|| {
        reaches(POD2, host)
    });
    let host_policy = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: db-vm}}\n\
         spec:\n  nodeSelector: {{matchLabels: {{{role}: {value}}}}}\n  ingress:\n\
         \x20 - fromEndpoints:\n    - matchLabels: {{app: client}}\n"
    );
    agent.apply(&host_policy).expect("the host policy applied");
    settle("pod(2,1) -> the VM blocked by the host policy", &|| {
        !reaches(POD2, host)
    });
    assert!(
        reaches(POD1, host),
        "pod(1,1) -> the VM, admitted by the host policy"
    );
    agent.delete(&host_policy).expect("the host policy deleted");
    settle("pod(2,1) -> the VM after the host policy", &|| {
        reaches(POD2, host)
    });
}

fn analyze(capture: wiremesh_lab::Capture, mark: &[u8; 16]) -> LeakReport {
    capture
        .stop()
        .expect("tcpdump stops")
        .analyze(mark)
        .expect("capture decodes")
}

/// Packets on the underlay with a pod-network address (pods' or the VM's host address):
/// pod traffic in clear. (With the VM's data path gone, node-1's handshakes meet ICMP port
/// unreachable from node-3: underlay addresses only, not pod traffic.)
fn pod_packets(report: &LeakReport) -> Vec<&String> {
    report
        .other
        .iter()
        .filter(|l| l.contains(" 10.244."))
        .collect()
}

/// `journalctl -u wiremesh` has the agent's own lines, and the agent and its data path run
/// with exactly the unit's capabilities, no new privileges and a seccomp filter.
fn journal_and_hardening(vm: &VmHandle<'_>) {
    let journal = vm.journal(VM_UNIT).expect("journalctl");
    for line in ["agent ready", "host address on the WireGuard interface"] {
        assert!(
            journal.contains(line),
            "no {line:?} in the journal:\n{journal}"
        );
    }
    let bounding = vm
        .unit_property(VM_UNIT, "CapabilityBoundingSet")
        .expect("systemctl show");
    let mut names: Vec<&str> = bounding.split_whitespace().collect();
    names.sort_unstable();
    let mut want = UNIT_CAP_NAMES.to_vec();
    want.sort_unstable();
    assert_eq!(names, want, "CapabilityBoundingSet of {VM_UNIT}");
    let main = vm.unit_property(VM_UNIT, "MainPID").expect("MainPID");
    let datapath = vm
        .exec(&["cat", "/run/wiremesh/datapath.pid"])
        .expect("the agent's data path PID file");
    for (what, pid) in [("agent", main.trim()), ("data path", datapath.trim())] {
        let status = vm
            .exec(&["cat", &format!("/proc/{pid}/status")])
            .unwrap_or_else(|e| vm_fail(vm, &format!("/proc/{pid}/status of the {what}"), e));
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {name} in the {what}'s status:\n{status}"))
                .to_owned()
        };
        for caps in ["CapBnd:", "CapPrm:", "CapEff:"] {
            let value = u64::from_str_radix(&field(caps), 16).expect("hex capabilities");
            assert_eq!(
                value, UNIT_CAPS,
                "the {what}'s {caps} {value:#x}, the unit's set is {UNIT_CAPS:#x}"
            );
        }
        assert_eq!(field("NoNewPrivs:"), "1", "the {what}'s NoNewPrivs");
        assert_eq!(
            field("Seccomp:"),
            "2",
            "the {what} runs without the unit's seccomp filter"
        );
    }
}

/// `systemctl restart wiremesh` under a 100/s ping from pod(1,1) to the VM: not one lost; the
/// restarted agent re-attaches to the same data path. A loss is placed against the restart's
/// steps (and printed in Unix time, to hold against the journal).
fn restart_loses_nothing(lab: &Lab, vm: &VmHandle<'_>) {
    let datapath = vm
        .exec(&["cat", "/run/wiremesh/datapath.pid"])
        .expect("pid file");
    let ping = Ping::new(vm.host_address())
        .count(800)
        .interval(Duration::from_millis(10))
        .per_reply();
    // What reaches the VM's tunnel interface, to tell on a loss which side dropped.
    let wg = lab
        .host(Host::Node(VM))
        .capture("vm-wg0", WG_IFACE)
        .expect("tcpdump on the VM's WireGuard interface");
    let pinger = lab.host(POD1).spawn_ping(&ping).expect("ping starts");
    let mut events = vec![(unix_now(), "the ping started".to_owned())];
    std::thread::sleep(Duration::from_secs(2));
    events.push((unix_now(), "systemctl restart wiremesh".into()));
    vm.systemctl(&["restart", "wiremesh"])
        .unwrap_or_else(|e| vm_fail(vm, "systemctl restart wiremesh", e));
    events.push((unix_now(), "systemctl restart returned".into()));
    vm.wait_active(VM_UNIT, common::READY)
        .unwrap_or_else(|e| panic!("{e}"));
    lab.node(VM)
        .agent()
        .wait_peer_count(2, common::CONVERGE)
        .unwrap_or_else(|e| panic!("the restarted agent: {e}"));
    events.push((unix_now(), "the restarted agent answered status".into()));
    let log = common::finish_ping(pinger, &ping);
    let sent = log.summary.map_or(0, |s| s.sent);
    let losses = log.explain_losses(sent, &events);
    let lines = wg
        .stop()
        .and_then(|f| f.decode())
        .expect("the wg0 capture decodes");
    let count = |kind: &str| lines.iter().filter(|l| l.contains(kind)).count();
    let on_wg = format!(
        "on the VM's {WG_IFACE}: {} echo requests in, {} echo replies out",
        count("echo request"),
        count("echo reply")
    );
    eprintln!(
        "restart: {} of {sent} pings lost, longest gap {:?}, {on_wg}; events at {events:?}",
        losses.len(),
        log.longest_gap()
    );
    if !losses.is_empty() {
        let missing = log.missing(sent);
        let at = |seq: u32| log.time_of(seq).unwrap_or(0.0);
        panic!(
            "systemctl restart wiremesh in the VM: {} of {sent} pings lost (unix {:.3} .. \
             {:.3}; {on_wg}):\n  {}\n{}",
            losses.len(),
            at(missing[0]),
            at(missing[missing.len() - 1]),
            losses.join("\n  "),
            vm.diagnostics()
        );
    }
    assert_eq!(sent, ping.count, "ping sent {sent} of {}", ping.count);
    let after = vm
        .exec(&["cat", "/run/wiremesh/datapath.pid"])
        .expect("pid file");
    assert_eq!(after, datapath, "the restart replaced the data path");
}

/// `systemctl stop wiremesh`: the data path outlives the agent (KillMode=process) and keeps
/// forwarding. With it killed as well (the unit's documented way to remove the interface),
/// strict mode drops a pod's ping to the VM and the VM's to a pod, nothing with a pod address
/// crosses the underlay, and node-3's egress counter counts the VM's pings. The control: with
/// the guard table deleted, the same marker from the VM does leave in clear.
fn stop_is_strict(lab: &Lab, vm: &VmHandle<'_>) {
    vm.systemctl(&["stop", "wiremesh"])
        .unwrap_or_else(|e| vm_fail(vm, "systemctl stop wiremesh", e));
    let state = vm
        .output(&["systemctl", "is-active", VM_UNIT])
        .expect("systemctl");
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "inactive");
    let host: IpAddr = vm.host_address().into();
    let ping = Ping::new(host).count(5).interval(Duration::from_millis(50));
    assert_all(
        "pod(1,1) -> the VM with the agent stopped",
        lab.host(POD1).ping(&ping),
    );

    vm.exec(&["sh", "-c", "kill $(cat /run/wiremesh/datapath.pid)"])
        .unwrap_or_else(|e| vm_fail(vm, "killing the VM's data path", e));
    wait_link_gone(lab);
    let egress_before = lab.node(VM).guard().counter("egress_ipv4").expect("guard");
    let mark = marker();
    let capture = lab.switch().capture("vm-stopped").expect("tcpdump");
    let to_vm = Ping::new(host)
        .count(5)
        .interval(Duration::from_millis(100))
        .pattern(&mark);
    let r = lab.host(POD1).ping(&to_vm).expect("ping runs");
    let from_vm = Ping::new(POD1.ip())
        .count(5)
        .interval(Duration::from_millis(100))
        .pattern(&mark);
    let r2 = vm.ping(&from_vm).expect("ping runs in the VM");
    let report = analyze(capture, &mark);
    eprintln!("agent and data path stopped, strict: {}", report.summary());
    assert_eq!(
        (r.received, r2.received),
        (0, 0),
        "pings crossed with no tunnel"
    );
    assert!(
        !report.marker_found && pod_packets(&report).is_empty(),
        "strict mode: pod traffic crossed the underlay in clear:\n{}",
        report.summary()
    );
    let egress = lab.node(VM).guard().counter("egress_ipv4").expect("guard");
    assert!(
        egress >= egress_before + 5,
        "node-{VM}'s guard did not count the VM's 5 pings: {egress_before} -> {egress}"
    );

    lab.node(VM).guard().delete().expect("nft delete table");
    let capture = lab.switch().capture("vm-unguarded").expect("tcpdump");
    let _ = vm.ping(&from_vm);
    let control = analyze(capture, &mark);
    eprintln!("control, guard deleted: {}", control.summary());
    assert!(
        control.marker_found,
        "control: without the guard table the VM's marker did not leave in clear, so the \
         strict capture above proves nothing:\n{}",
        control.summary()
    );
}

/// Until the VM's WireGuard interface is gone from node-3 (its data path has exited).
fn wait_link_gone(lab: &Lab) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.node(VM).ip(&["link", "show", "dev", WG_IFACE]).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{WG_IFACE} still exists 10 s after its data path was killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
