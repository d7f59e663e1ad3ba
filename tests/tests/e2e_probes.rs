//! kubelet's probes on `healthAddress` (127.0.0.1:9879 in each node's namespace, as the
//! DaemonSet has it): `/healthz` and `/readyz` answer 200 on a running agent, `/readyz` turns 503
//! while the data path does not answer and 200 again once it does, liveness stays 200 (a stuck
//! data path is the agent's to fix, not kubelet's), and nothing but the probes is served.

mod common;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use wiremesh_lab::Host;

/// How long a thawed data path may take to answer again.
const RECOVERY: Duration = Duration::from_secs(20);

#[test]
fn readiness_follows_the_data_path_and_liveness_the_tasks() {
    common::require_agent();
    let lab = common::lab(2, 1);
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    for node in [1, 2] {
        for path in ["/healthz", "/readyz"] {
            let (code, body) = lab.node(node).probe(path).expect("probe");
            assert_eq!(code, 200, "node-{node} {path}: {body}");
        }
    }
    let (code, _) = lab.node(1).probe("/metrics").expect("probe");
    assert_eq!(code, 404, "healthAddress serves only the probes");

    // The data path stops answering (frozen with SIGSTOP: killed, the agent replaces it faster
    // than a probe can look): readiness must say so, and turn 200 again once it answers.
    let pid = lab
        .node(1)
        .datapath()
        .pid()
        .expect("node-1's data path pid");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
    nix::sys::signal::kill(pid, Signal::SIGSTOP).expect("SIGSTOP the data path");
    let frozen = lab.node(1).probe("/readyz");
    nix::sys::signal::kill(pid, Signal::SIGCONT).expect("SIGCONT the data path");
    let (code, body) = frozen.expect("probe /readyz");
    assert_eq!(
        code, 503,
        "node-1's /readyz with its data path frozen: {body}"
    );
    assert!(
        body.contains("data path"),
        "the 503 names the data path: {body:?}"
    );
    let deadline = Instant::now() + RECOVERY;
    loop {
        let (code, body) = lab.node(1).probe("/readyz").expect("probe /readyz");
        if code == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-1's /readyz stays {code} after its data path was thawed: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Liveness stayed 200 throughout: a dead data path is the agent's to fix, not kubelet's.
    let (code, body) = lab.node(1).probe("/healthz").expect("probe /healthz");
    assert_eq!(code, 200, "{body}");
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
}
