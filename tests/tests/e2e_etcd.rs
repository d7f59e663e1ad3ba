//! Agents on a real etcd 3.4 (in the lab's switch namespace): they converge; a node that joins
//! later is reachable within 2 s of its agent being started; a second agent claiming a live
//! node's name refuses to start; a record with an invalid key is refused with a WARN while every
//! other peer keeps working; a node whose agent and data path stop (SIGTERM) or die (SIGKILL)
//! leaves every peer's status when its lease expires: not before TTL - 2 s, within TTL + 3 s.

mod common;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use wiremesh_lab::{
    etcd_owner_key, node_name, peer_names, pod_ip, unix_now, Host, Lab, LabOptions, PingLog,
};

const JOIN_LIMIT: Duration = Duration::from_secs(2);
/// An all-zero X25519 public key, which every record validator must refuse.
const ZERO_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

#[test]
fn agents_on_etcd_converge_join_refuse_impostors_and_expire() {
    common::require_agent();
    let lab = common::lab_with(4, 1, LabOptions::etcd(common::LEASE_TTL));
    common::start_some(&lab, &[1, 2, 3]);
    for a in 1..=3 {
        for b in (1..=3).filter(|&b| b != a) {
            common::assert_ping(&lab, Host::Pod(a, 1), Host::Pod(b, 1));
        }
    }
    check_published_records(&lab);
    join_fourth_node(&lab);
    impostor_refuses(&lab);
    invalid_record_refused(&lab);
    graceful_stop_leaves(&lab);
    crash_expires_with_the_lease(&lab);
}

/// Every record in etcd carries the documented fields, and every node name has an owner.
fn check_published_records(lab: &Lab) {
    for n in 1..=3 {
        let name = node_name(n);
        let record = lab
            .store()
            .read_record(&name)
            .unwrap_or_else(|e| panic!("reading {name}'s record: {e}"))
            .unwrap_or_else(|| panic!("{name} has no record in etcd"));
        for field in [
            "nodeName",
            "clusterName",
            "publicKey",
            "endpoint",
            "podCIDRs",
            "keyEpoch",
            "keyCreated",
        ] {
            assert!(
                record.get(field).is_some(),
                "{name}'s record lacks {field}: {record}"
            );
        }
        let status = lab.node(n).agent().status().expect("status");
        for field in ["keyEpoch", "keyCreated", "nextRotation", "nextPublicKey"] {
            assert!(
                status.get(field).is_some(),
                "node-{n}'s status lacks {field}: {status}"
            );
        }
        assert_eq!(
            status["storeHealth"]["state"], "connected",
            "node-{n}'s storeHealth: {status}"
        );
        for p in wiremesh_lab::peers(&status) {
            assert!(
                p["keyEpoch"].is_u64(),
                "node-{n}'s peer without keyEpoch: {p}"
            );
        }
        let status_key = status["publicKey"].clone();
        assert_eq!(
            record["publicKey"], status_key,
            "{name}'s record vs its status"
        );
        let owner = lab
            .etcd()
            .get(&etcd_owner_key(&name))
            .unwrap_or_else(|e| panic!("reading {name}'s owner key: {e}"));
        assert!(
            owner.is_some(),
            "no owner key {} in etcd",
            etcd_owner_key(&name)
        );
    }
}

/// Node 4 starts while node 1's pod pings its pod at 100/s; the first reply must come within
/// 2 s of node 4's agent being started (which is before its record appears in etcd and before
/// it answers status, so this is the strictest reading). Ping's `-D` timestamps make the
/// measurement exact to 10 ms, whatever the polling of etcd and status costs.
fn join_fourth_node(lab: &Lab) {
    let ping = wiremesh_lab::Ping::new(pod_ip(4, 1))
        .count(3000)
        .interval(Duration::from_millis(10))
        .per_reply();
    let mut probe = lab
        .host(Host::Pod(1, 1))
        .spawn_ping(&ping)
        .expect("ping starts");
    let started = unix_now();
    lab.node(4).agent().start().expect("start node-4's agent");
    let deadline = Instant::now() + common::READY;
    let record_at = loop {
        if lab.store().read_record("node-4").ok().flatten().is_some() {
            break unix_now();
        }
        assert!(
            Instant::now() < deadline,
            "node-4's record did not appear in etcd within {:?}",
            common::READY
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    lab.node(4)
        .agent()
        .wait_status("the agent to answer status", common::READY, |_| true)
        .unwrap_or_else(|e| panic!("{e}"));
    let ready_at = unix_now();
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        if let Some(t) = PingLog::parse(&probe.log()).first_reply_at() {
            break t;
        }
        if Instant::now() >= deadline {
            let status = lab
                .node(1)
                .agent()
                .status()
                .map(|s| s.to_string())
                .unwrap_or_default();
            panic!(
                "node-1's pod got no reply from node-4's pod within 15 s of node-4's status \
                 answering; node-1 status: {status}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    probe.kill();
    let after_start = first - started;
    eprintln!(
        "node-4: record seen in etcd by <= {:.3}s after agent start, status answered {:.3}s \
         after start; first reply from its pod {after_start:.3}s after agent start",
        record_at - started,
        ready_at - started,
    );
    assert!(
        after_start <= JOIN_LIMIT.as_secs_f64(),
        "node-4's pod answered node-1's pod only {after_start:.3}s after node-4's agent was \
         started (limit {JOIN_LIMIT:?})"
    );
}

/// A second agent configured as node-1 (its own state dir, so its own owner id) must refuse.
fn impostor_refuses(lab: &Lab) {
    let base = lab.extra_agent_dir("impostor");
    let yaml: String = lab
        .node(1)
        .agent()
        .config_yaml()
        .lines()
        .map(|l| {
            if l.starts_with("stateDir:") {
                format!("stateDir: \"{}\"", base.join("state").display())
            } else if l.starts_with("interface:") {
                "interface: wmimpostor0".into()
            } else if l.starts_with("listenPort:") {
                "listenPort: 51999".into()
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let key_before = lab
        .store()
        .read_record("node-1")
        .expect("read")
        .expect("present")["publicKey"]
        .clone();
    let (status, log) = lab
        .node(1)
        .agent()
        .run_with("impostor", &yaml, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("second agent named node-1 did not exit: {e}"));
    eprintln!(
        "second agent named node-1 exited with {status}:\n{}",
        wiremesh_lab::tail(&log, 5)
    );
    assert!(
        !status.success(),
        "a second agent named node-1 started (exit {status}):\n{log}"
    );
    let lower = log.to_lowercase();
    assert!(
        lower.contains("node-1") && lower.contains("held by a live agent"),
        "the refusal does not say node-1 is held by a live agent:\n{log}"
    );
    let key_after = lab
        .store()
        .read_record("node-1")
        .expect("read")
        .expect("present")["publicKey"]
        .clone();
    assert_eq!(
        key_after, key_before,
        "the impostor changed node-1's record"
    );
    let impostor_run = base.join("run").join("datapath.pid");
    assert!(
        !impostor_run.exists(),
        "the refused agent started a data path ({})",
        impostor_run.display()
    );
    let links = lab
        .host(Host::Node(1))
        .ip(&["-o", "link", "show"])
        .expect("node-1's links");
    assert!(
        !links.contains("wmimpostor0"),
        "the refused agent left an interface: {links}"
    );
    common::assert_ping(lab, Host::Pod(2, 1), Host::Pod(1, 1));
}

/// A record with an all-zero key is refused with a WARN naming it; the others keep working.
fn invalid_record_refused(lab: &Lab) {
    let from = lab.node(1).agent().log_len();
    let bad = json!({
        "nodeName": "node-8", "clusterName": wiremesh_lab::CLUSTER_NAME, "publicKey": ZERO_KEY,
        "endpoint": "198.18.0.8:51871", "podCIDRs": ["10.244.8.0/24"], "nodeIPs": ["198.18.0.8"],
        "keyEpoch": 0,
    });
    lab.store().write_record(&bad).expect("put the bad record");
    let line = lab
        .node(1)
        .agent()
        .wait_log(from, "a WARN about node-8", Duration::from_secs(5), |l| {
            l.contains("WARN") && l.contains("node-8")
        })
        .unwrap_or_else(|e| panic!("invalid record not reported: {e}"));
    eprintln!("node-1 on the invalid record: {line}");
    let status = lab.node(1).agent().status().expect("status");
    assert!(
        !peer_names(&status).contains(&"node-8".to_owned()),
        "node-8 with an all-zero key became a peer: {status}"
    );
    for b in [2, 3, 4] {
        common::assert_ping(lab, Host::Pod(1, 1), Host::Pod(b, 1));
    }
    lab.store()
        .remove_record("node-8")
        .expect("delete the bad record");
}

/// Polls node `observer`'s status until `gone` is no longer a peer; the time since `since`.
fn time_until_gone(
    lab: &Lab,
    observer: u8,
    gone: &str,
    since: Instant,
    limit: Duration,
) -> Duration {
    loop {
        let status: Value = lab
            .node(observer)
            .agent()
            .status()
            .unwrap_or_else(|e| panic!("status of node-{observer}: {e}"));
        if !peer_names(&status).iter().any(|n| n == gone) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "{gone} still in node-{observer}'s status {:?} after it stopped: {:?}",
            since.elapsed(),
            peer_names(&status)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The earliest a record can vanish once its agent is gone: the lease was last renewed up to a
/// keep-alive period (a fraction of the TTL) before, so expiry comes between roughly TTL - 2 s and
/// the TTL. Earlier means something other than the lease removed it.
fn earliest_expiry() -> Duration {
    common::LEASE_TTL - Duration::from_secs(2)
}

/// Stops (`signal` to the agent, SIGTERM to the data path) node `node` and asserts node 1 drops
/// it when its lease expires.
fn leaves_with_the_lease(lab: &Lab, node: u8, signal: Signal) {
    let limit = common::LEASE_TTL + Duration::from_secs(3);
    let name = node_name(node);
    let stopped = Instant::now();
    match signal {
        Signal::SIGKILL => lab.node(node).agent().kill(),
        _ => lab.node(node).agent().stop(),
    }
    .unwrap_or_else(|e| panic!("stopping {name}'s agent: {e}"));
    lab.node(node)
        .datapath()
        .stop(Signal::SIGTERM, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("SIGTERM to {name}'s data path: {e}"));
    let gone = time_until_gone(lab, 1, &name, stopped, limit + Duration::from_secs(5));
    eprintln!("{name} ({signal}) left node-1's status {gone:?} after its agent was stopped");
    assert!(
        gone <= limit,
        "{name} left node-1's status only after {gone:?} (limit {limit:?})"
    );
    assert!(
        gone >= earliest_expiry(),
        "{name} left after {gone:?}, before its lease (TTL {:?}) can have expired",
        common::LEASE_TTL
    );
    assert!(
        lab.store().read_record(&name).expect("read").is_none(),
        "{name}'s record is still in etcd after it left"
    );
}

/// SIGTERM: the agent stops but deliberately leaves its record (its data path could outlive
/// it); with the data path stopped too, the node goes when the lease expires.
fn graceful_stop_leaves(lab: &Lab) {
    leaves_with_the_lease(lab, 3, Signal::SIGTERM);
}

/// SIGKILL: nothing is revoked; the record lives until the lease expires.
fn crash_expires_with_the_lease(lab: &Lab) {
    leaves_with_the_lease(lab, 4, Signal::SIGKILL);
    common::assert_ping(lab, Host::Pod(1, 1), Host::Pod(2, 1));
}
