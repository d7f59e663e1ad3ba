//! The wiremesh image (scripts/build-image.sh) run with `runc` exactly as the DaemonSets in
//! deploy/kubernetes say — the node's network namespace as host network, each container's
//! capabilities (containerd's defaults adjusted by its securityContext), the hostPath volumes
//! as the node's own directories, emptyDirs of the pod's own, the ConfigMap unmodified,
//! kubelet's service environment and the service account's projected token (the lab's fake API
//! server, on the Kubernetes store: the agent uses the in-cluster config as in a pod) — stands
//! in for node-3's agent and data path: both become ready by their readiness probes, the other
//! nodes' agents list node-3, pods ping across nodes both ways with nothing but WireGuard on the
//! underlay, `wiremesh encrypt status` inside the agent's container lists its peers, and once
//! the containers are stopped strict mode still drops node-3's pod traffic.
//!
//! The rolling update of both DaemonSets, image v1 to v2 (the v2 binary of
//! [`common::versions::v2_binary`]), under 100 pings/s each way, loses nothing; see
//! [`rolling_updates_of_both_daemonsets_lose_no_packet`].

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::versions::{v2_binary, version_of};

use wiremesh_lab::container::{build_image, render_workload, Container, Image, Workload};
use wiremesh_lab::{marker, peer_names, Host, Lab, LabOptions, Ping};

/// How long the containerised agent has to answer its readiness probe.
const READY: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(30);
const CONTAINER_NODE: u8 = 3;
/// Pings each way run this long around the rolling updates.
const ROLLOUT_TRAFFIC_SECS: u32 = 60;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The agent's DaemonSet and container; the data path's.
const AGENT: (&str, &str) = ("wiremesh", "wiremesh");
const DATAPATH: (&str, &str) = ("wiremesh-datapath", "datapath");

/// Builds the image of `binary` tagged `tag` into a directory of its own; returns the image.
fn image(binary: &Path, tag: &str) -> Image {
    let out = std::env::temp_dir().join(format!("wiremesh-image-{tag}"));
    let (image, report) =
        build_image(binary, tag, &out).unwrap_or_else(|e| panic!("scripts/build-image.sh: {e}"));
    eprintln!("{report}");
    image
}

/// The manifests: `deploy/kubernetes`, or WIREMESH_LAB_DEPLOY_DIR (a modified copy, to try a
/// change to them).
fn workload() -> Workload {
    let deploy = std::env::var_os("WIREMESH_LAB_DEPLOY_DIR")
        .map_or_else(|| repo().join("deploy/kubernetes"), PathBuf::from);
    render_workload(&deploy).unwrap_or_else(|e| panic!("rendering deploy/kubernetes: {e}"))
}

/// Container `which` on node-3 from `image`, started.
fn run(lab: &Lab, workload: &Workload, which: (&str, &str), image: &Image) -> Container {
    let name = format!("{}-{}", which.1, image.tag);
    lab.run_pod_container(CONTAINER_NODE, workload, which, image, &name)
        .unwrap_or_else(|e| panic!("running {} of {} on node-3: {e}", which.1, which.0))
}

/// Container `which` on node-3 from `image`, ready by its readiness probe.
fn run_ready(lab: &Lab, workload: &Workload, which: (&str, &str), image: &Image) -> Container {
    let container = run(lab, workload, which, image);
    if let Err(e) = container.wait_ready(READY) {
        lab.dump_logs();
        panic!("{e}");
    }
    container
}

/// node-3's two pods from `image`, both ready: (agent, data path). Kubelet starts them in no
/// particular order; the agent first here, so the data path waits for the node key and the
/// agent for the data path.
fn start_node3(lab: &Lab, workload: &Workload, image: &Image) -> (Container, Container) {
    let agent = run(lab, workload, AGENT, image);
    let datapath = run_ready(lab, workload, DATAPATH, image);
    if let Err(e) = agent.wait_ready(READY) {
        lab.dump_logs();
        panic!("{e}\nthe data path's log:\n{}", datapath.log());
    }
    // Each bundle holds its own copy of the root file system: the image is no longer needed.
    if let Some(out) = image.layout.parent() {
        let _ = std::fs::remove_dir_all(out);
    }
    others_see_node3(lab);
    (agent, datapath)
}

fn require_container_tools() {
    common::require_agent();
    wiremesh_lab::require_tools(&["runc", "umoci", "skopeo", "kubectl", "curl"])
        .unwrap_or_else(|e| panic!("{e}"));
}

/// node-1's and node-2's agents list node-3.
fn others_see_node3(lab: &Lab) {
    for node in [1, 2] {
        lab.node(node)
            .agent()
            .wait_status("node-3 listed as a peer", CONVERGE, |s| {
                peer_names(s).iter().any(|n| n == "node-3")
            })
            .unwrap_or_else(|e| panic!("node-{node}'s agent never saw node-3: {e}"));
    }
}

#[test]
fn daemonset_container_joins_the_mesh_and_carries_pod_traffic() {
    require_container_tools();
    let binary = wiremesh_lab::agent_binary().expect("agent binary");
    let image = image(&binary, &format!("e2e-{}", std::process::id()));
    let workload = workload();

    let lab = common::lab_with(3, 1, LabOptions::kubernetes().default_route());
    common::start_some(&lab, &[1, 2]);
    let (mut agent, mut datapath) = start_node3(&lab, &workload, &image);
    for other in [1, 2] {
        common::assert_ping(&lab, Host::Pod(CONTAINER_NODE, 1), Host::Pod(other, 1));
        common::assert_ping(&lab, Host::Pod(other, 1), Host::Pod(CONTAINER_NODE, 1));
    }
    underlay_carries_only_wireguard(&lab);
    let _ = status_inside_the_container(&agent);

    for c in [&mut agent, &mut datapath] {
        c.stop(Duration::from_secs(10))
            .expect("the container stops");
    }
    strict_mode_outlives_the_container(&lab);
}

/// Both DaemonSets roll from image v1 to v2 on node-3 while its pod and node-1's ping each other
/// at 100/s: the agent's as its strategy says (maxUnavailable: 1, the old pod stopped before the
/// new one starts), then the data path's (maxSurge: 1: the new pod beside the old one, the old
/// one deleted once the new one is ready). 0 lost each way; the old data-path pod is not ready
/// but alive once its successor is (so kubelet neither keeps routing to it nor restarts it);
/// `encrypt status` in the v2 agent's container names v2's data path. The control run proves the
/// loss counter: the data path's pod replaced old-first instead loses pings.
#[test]
fn rolling_updates_of_both_daemonsets_lose_no_packet() {
    require_container_tools();
    let v1_bin = wiremesh_lab::agent_binary().expect("agent binary");
    let v1_bin = v1_bin.canonicalize().unwrap_or(v1_bin);
    let (v2_bin, v2_version) = v2_binary(&version_of(&v1_bin));
    let pid = std::process::id();
    let v1 = image(&v1_bin, &format!("v1-{pid}"));
    let v2 = image(&v2_bin, &format!("v2-{pid}"));
    let workload = workload();

    let lab = common::lab_with(3, 1, LabOptions::kubernetes().default_route());
    common::start_some(&lab, &[1, 2]);
    let (mut agent_v1, mut datapath_v1) = start_node3(&lab, &workload, &v1);
    let (a, b) = (Host::Pod(CONTAINER_NODE, 1), Host::Pod(1, 1));
    common::assert_ping(&lab, a, b);
    common::assert_ping(&lab, b, a);

    let there = common::fast_ping(&lab, a, b, ROLLOUT_TRAFFIC_SECS);
    let back = common::fast_ping(&lab, b, a, ROLLOUT_TRAFFIC_SECS);
    std::thread::sleep(Duration::from_secs(3));
    agent_v1
        .stop(Duration::from_secs(30))
        .expect("the v1 agent's container stops");
    let agent_v2 = run_ready(&lab, &workload, AGENT, &v2);
    let mut datapath_v2 = run_ready(&lab, &workload, DATAPATH, &v2);
    let old = datapath_v1.probe_readiness().expect("readiness probe runs");
    assert!(
        !old.passed,
        "the v1 data-path pod is still ready beside its successor: {old:?}"
    );
    let old = datapath_v1.probe_liveness().expect("liveness probe runs");
    assert!(
        old.passed,
        "the v1 data-path pod fails liveness after handing over (kubelet would restart it): {old:?}"
    );
    datapath_v1
        .stop(Duration::from_secs(40))
        .expect("the v1 data path's container stops");
    common::assert_no_loss(there.0, &there.1, "pod(3) -> pod(1) across both rollouts");
    common::assert_no_loss(back.0, &back.1, "pod(1) -> pod(3) across both rollouts");
    let status = status_inside_the_container(&agent_v2);
    assert_eq!(
        status["datapathProcess"]["version"].as_str(),
        Some(v2_version.as_str()),
        "the data path after the rollout: {status}"
    );

    // The control run: the data path's pod replaced old-first, as a DaemonSet without surge
    // does (its image already pulled, so the node is without a data path for well under the
    // agent's resync: the agent must notice the new one by itself).
    let mut replacement = lab
        .prepare_pod_container(CONTAINER_NODE, &workload, DATAPATH, &v2, "datapath-again")
        .unwrap_or_else(|e| panic!("preparing the replacement data path: {e}"));
    if let Some(out) = v2.layout.parent() {
        let _ = std::fs::remove_dir_all(out);
    }
    let there = common::fast_ping(&lab, a, b, 15);
    std::thread::sleep(Duration::from_secs(2));
    datapath_v2
        .stop(Duration::from_secs(40))
        .expect("the v2 data path's container stops");
    replacement
        .start()
        .expect("the replacement data path starts");
    replacement
        .wait_ready(READY)
        .unwrap_or_else(|e| panic!("the replacement data path: {e}"));
    let log = common::finish_ping(there.0, &there.1);
    let sent = log.summary.map_or(0, |s| s.sent);
    let lost = log.missing(sent).len();
    eprintln!(
        "control run: {lost} of {sent} pings lost with the data path's pod replaced old-first"
    );
    assert!(
        lost > 0,
        "the control run lost nothing: the loss counter sees nothing"
    );
    // Fail closed, then heal: the agent configures the new data path by itself.
    common::assert_ping(&lab, a, b);
    common::assert_ping(&lab, b, a);
}

/// A marker over TCP and in pings between node-3's pod and node-1's crosses the underlay only
/// inside WireGuard.
fn underlay_carries_only_wireguard(lab: &Lab) {
    let mark = marker();
    let (a, b) = (Host::Pod(CONTAINER_NODE, 1), Host::Pod(1, 1));
    let capture = lab.switch().capture("container").expect("tcpdump starts");
    for (from, to) in [(a, b), (b, a)] {
        let got = lab
            .host(from)
            .tcp_send(to, &mark, common::TRAFFIC)
            .unwrap_or_else(|e| panic!("TCP {from} -> {to}: {e}"));
        assert_eq!(got, mark, "TCP {from} -> {to} did not deliver the marker");
        let ping = Ping::new(to.ip())
            .count(3)
            .interval(Duration::from_millis(100))
            .pattern(&mark);
        let result = lab.host(from).ping(&ping).expect("ping runs");
        assert!(result.all_received(), "ping {from} -> {to}: {result}");
    }
    let report = capture
        .stop()
        .expect("tcpdump stops")
        .analyze(&mark)
        .expect("capture decodes");
    assert!(
        !report.marker_found,
        "marker in the clear:\n{}",
        report.summary()
    );
    assert!(
        report.other.is_empty(),
        "traffic other than WireGuard between nodes:\n{}",
        report.summary()
    );
    assert!(
        report.wireguard > 0,
        "no WireGuard captured, so the capture proves nothing:\n{}",
        report.summary()
    );
}

/// `wiremesh encrypt status` run inside the container lists node-1 and node-2; the status.
fn status_inside_the_container(container: &Container) -> serde_json::Value {
    let out = container
        .exec(&["wiremesh", "encrypt", "status", "--json"])
        .expect("runc exec runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wiremesh encrypt status inside the container: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("status JSON from the container: {e}: {stdout}"));
    let mut names = peer_names(&status);
    names.sort();
    assert_eq!(
        names,
        ["node-1", "node-2"],
        "peers inside the container: {status}"
    );
    status
}

/// With the container gone, node-3's guard table is still in place and drops its pod's
/// traffic to node-1's pod: nothing leaves in the clear.
fn strict_mode_outlives_the_container(lab: &Lab) {
    let guard = lab.node(CONTAINER_NODE).guard();
    let before = guard.counters().expect("nft runs");
    assert!(
        before.is_some(),
        "node-3's strict-mode table went away with the container"
    );
    let mark = marker();
    let capture = lab.switch().capture("stopped").expect("tcpdump starts");
    let ping = Ping::new(Host::Pod(1, 1).ip())
        .count(3)
        .interval(Duration::from_millis(100))
        .pattern(&mark);
    let result = lab
        .host(Host::Pod(CONTAINER_NODE, 1))
        .ping(&ping)
        .expect("ping runs");
    let report = capture
        .stop()
        .expect("tcpdump stops")
        .analyze(&mark)
        .expect("capture decodes");
    assert!(
        !report.marker_found,
        "clear text after stop:\n{}",
        report.summary()
    );
    assert_eq!(
        result.received, 0,
        "pings got through with no agent: {result}"
    );
    let after = guard.counters().expect("nft runs").unwrap_or_default();
    let sum = |c: &std::collections::BTreeMap<String, u64>| c.values().sum::<u64>();
    let dropped = sum(&after).saturating_sub(before.as_ref().map_or(0, sum));
    assert!(
        dropped > 0,
        "the guard counted no drop: {before:?} -> {after:?}"
    );
}
