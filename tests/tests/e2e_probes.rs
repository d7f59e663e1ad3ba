//! kubelet's probes on `healthAddress` (127.0.0.1:9879 in each node's namespace, as the
//! DaemonSet has it): `/healthz` and `/readyz` answer 200 on a running agent, `/readyz` turns 503
//! while the data path is gone and 200 again once the agent has started a new one, and nothing
//! but GET on those two paths is served.

mod common;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use wiremesh_lab::Host;

/// The agent starts a new data path at its next resync (every 5 s).
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

    // The data path dies: readiness must say so (and the control: it was 200 just before).
    lab.node(1)
        .datapath()
        .stop(Signal::SIGKILL, Duration::from_secs(5))
        .expect("kill node-1's data path");
    let deadline = Instant::now() + RECOVERY;
    let mut seen = Vec::new();
    loop {
        let (code, body) = lab.node(1).probe("/readyz").expect("probe /readyz");
        if seen.last().map(|(c, _)| *c) != Some(code) {
            seen.push((code, body));
        }
        let recovered = seen.len() >= 2 && code == 200;
        if recovered || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let codes: Vec<u16> = seen.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        codes,
        [503, 200],
        "node-1's /readyz after its data path was killed (expected 503, then 200 once the \
         agent started a new one): {seen:?}"
    );
    assert!(
        seen[0].1.contains("data path"),
        "the 503 names the data path: {:?}",
        seen[0].1
    );
    // Liveness stayed 200 throughout: a dead data path is the agent's to fix, not kubelet's.
    let (code, body) = lab.node(1).probe("/healthz").expect("probe /healthz");
    assert_eq!(code, 200, "{body}");
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
}
