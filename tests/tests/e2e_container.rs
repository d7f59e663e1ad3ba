//! The wiremesh image (scripts/build-image.sh) run with `runc` exactly as the DaemonSet in
//! deploy/kubernetes says — the node's network namespace as host network, the DaemonSet's
//! capabilities (containerd's defaults adjusted by its securityContext), its hostPath volumes
//! as the node's own directories, its ConfigMap unmodified, kubelet's service environment and
//! the service account's projected token (the lab's fake API server, on the Kubernetes
//! store: the agent uses the in-cluster config as in a pod) — stands in for
//! node-3's agent: it becomes ready by its readiness probe, the other nodes' agents list it,
//! pods ping across nodes both ways with nothing but WireGuard on the underlay, `wiremesh
//! encrypt status` inside the container lists its peers, and once the container is stopped
//! strict mode still drops node-3's pod traffic.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use wiremesh_lab::container::{build_image, render_workload, Container, PodRun, Workload};
use wiremesh_lab::{marker, peer_names, Host, Lab, LabOptions, Ping};

/// How long the containerised agent has to answer its readiness probe.
const READY: Duration = Duration::from_secs(60);
const CONVERGE: Duration = Duration::from_secs(30);
const CONTAINER_NODE: u8 = 3;
/// The DaemonSet's container.
const CONTAINER: &str = "wiremesh";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// node-3's agent as the DaemonSet's container, from the image tagged `tag` in `out`.
fn run_agent_container(lab: &Lab, workload: &Workload, image_out: &Path, tag: &str) -> Container {
    let pod = workload
        .daemonset
        .spec
        .template
        .spec
        .as_ref()
        .expect("the DaemonSet has a pod template");
    // The ConfigMaps as rendered: the config is the DaemonSet's, unmodified.
    let config_maps = workload
        .config_maps
        .iter()
        .map(|(name, cm)| (name.clone(), cm.data.clone().unwrap_or_default()))
        .collect();
    let namespace = workload
        .daemonset
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = PodRun {
        pod,
        container: CONTAINER,
        config_maps,
        service_account: Some(
            lab.service_account_token(&namespace)
                .expect("the lab's service-account token"),
        ),
    };
    let host = lab.pod_host(CONTAINER_NODE).expect("node-3's host side");
    let image = wiremesh_lab::container::Image {
        layout: image_out.join("wiremesh"),
        tag: tag.to_string(),
    };
    let id = format!("{}-{tag}", lab.prefix());
    let work = lab.dir().join(format!("container-{tag}"));
    let netns = lab.node(CONTAINER_NODE).ns();
    Container::run(&id, &work, &image, &spec, host, &netns)
        .unwrap_or_else(|e| panic!("running the DaemonSet's container on node-3: {e}"))
}

#[test]
fn daemonset_container_joins_the_mesh_and_carries_pod_traffic() {
    common::require_agent();
    wiremesh_lab::require_tools(&["runc", "umoci", "skopeo", "kubectl", "curl"])
        .unwrap_or_else(|e| panic!("{e}"));
    let binary = wiremesh_lab::agent_binary().expect("agent binary");
    let tag = format!("e2e-{}", std::process::id());
    let out = std::env::temp_dir().join(format!("wiremesh-image-{tag}"));
    let (_, report) =
        build_image(&binary, &tag, &out).unwrap_or_else(|e| panic!("scripts/build-image.sh: {e}"));
    eprintln!("{report}");
    // WIREMESH_LAB_DEPLOY_DIR: a modified copy of the manifests, to try a change to them.
    let deploy = std::env::var_os("WIREMESH_LAB_DEPLOY_DIR")
        .map_or_else(|| repo().join("deploy/kubernetes"), PathBuf::from);
    let workload =
        render_workload(&deploy).unwrap_or_else(|e| panic!("rendering deploy/kubernetes: {e}"));

    let lab = common::lab_with(3, 1, LabOptions::kubernetes().default_route());
    common::start_some(&lab, &[1, 2]);
    let mut container = run_agent_container(&lab, &workload, &out, &tag);
    // The bundle holds its own copy of the root file system: the image is no longer needed.
    let _ = std::fs::remove_dir_all(&out);
    if let Err(e) = container.wait_ready(READY) {
        lab.dump_logs();
        panic!("{e}");
    }
    for node in [1, 2] {
        lab.node(node)
            .agent()
            .wait_status("node-3 listed as a peer", CONVERGE, |s| {
                peer_names(s).iter().any(|n| n == "node-3")
            })
            .unwrap_or_else(|e| panic!("node-{node}'s agent never saw node-3: {e}"));
    }
    for other in [1, 2] {
        common::assert_ping(&lab, Host::Pod(CONTAINER_NODE, 1), Host::Pod(other, 1));
        common::assert_ping(&lab, Host::Pod(other, 1), Host::Pod(CONTAINER_NODE, 1));
    }
    underlay_carries_only_wireguard(&lab);
    status_inside_the_container(&container);

    container
        .stop(Duration::from_secs(10))
        .expect("the container stops");
    strict_mode_outlives_the_container(&lab);
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

/// `wiremesh encrypt status` run inside the container lists node-1 and node-2.
fn status_inside_the_container(container: &Container) {
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
