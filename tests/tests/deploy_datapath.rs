//! deploy/kubernetes's data-path DaemonSet against the binary and the agent's DaemonSet: it
//! runs `wiremesh datapath` on the agent's own ConfigMap (which says `datapathProcess:
//! external`, so the agent never starts a data path of its own), sees the same host directories
//! as the agent (the key, the handover socket, the UAPI socket, the TUN device), rolls by a
//! surge (the only lossless way to replace it), declares no port (which would keep the surge pod
//! from being scheduled), probes with `wiremesh datapath-probe` on a status directory of the
//! pod's own, outlasts a handover when stopped, and has no capability the agent lacks. Needs
//! kubectl (fails, naming it, without).

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use wiremesh::config::{Config, DatapathKind, DatapathProcess};
use wiremesh_lab::deploy::{
    agent_container, assert_runs_on_every_node, container, deploy_dir, mount_in, mount_of, pod,
    render, Rendered, CONFIG_KEY, CONFIG_MAP, DATAPATH_CONTAINER, DATAPATH_DAEMONSET,
};

fn config(rendered: &Rendered) -> Config {
    std::env::set_var("NODE_NAME", "node-a");
    std::env::set_var("NODE_IP", "192.0.2.10");
    Config::parse(
        rendered.agent_yaml(),
        &Path::new("/etc/wiremesh").join(CONFIG_KEY),
    )
    .unwrap_or_else(|e| panic!("ConfigMap {CONFIG_MAP} key {CONFIG_KEY}: {e}"))
}

fn datapath(rendered: &Rendered) -> &DaemonSet {
    rendered.daemonset_named(DATAPATH_DAEMONSET)
}

/// `--flag value` of `command`.
fn flag<'a>(command: &'a [String], name: &str) -> &'a str {
    let at = command
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("{name} missing from {command:?}"));
    command
        .get(at + 1)
        .unwrap_or_else(|| panic!("{name} without a value in {command:?}"))
}

#[test]
fn every_kustomization_runs_the_data_path_beside_an_agent_that_never_starts_one() {
    for dir in [deploy_dir(), deploy_dir().join("overlays/etcd")] {
        let rendered = render(&dir);
        let names: BTreeSet<&str> = rendered.daemonset_names().into_iter().collect();
        assert_eq!(
            names,
            BTreeSet::from(["wiremesh", DATAPATH_DAEMONSET]),
            "{}",
            dir.display()
        );
        let config = config(&rendered);
        assert_eq!(
            config.datapath,
            DatapathKind::Userspace,
            "{}",
            dir.display()
        );
        assert_eq!(
            config.datapath_process,
            DatapathProcess::External,
            "{}",
            dir.display()
        );
    }
    // Uninstall keeps neither.
    let cleanup = render(&deploy_dir().join("cleanup"));
    assert_eq!(cleanup.daemonset_names(), ["wiremesh-cleanup"]);
}

#[test]
fn the_data_path_reads_the_agents_config_and_directories() {
    let rendered = render(&deploy_dir());
    let (ds, agent_ds, config) = (datapath(&rendered), rendered.daemonset(), config(&rendered));
    let c = container(ds, DATAPATH_CONTAINER);
    let command = c.command.clone().unwrap_or_default();
    assert_eq!(command[..2], ["wiremesh", "datapath"], "{command:?}");
    let file = Path::new(flag(&command, "--config"));
    let (at, _, vol) = mount_in(ds, c, file).expect("--config: not mounted");
    let cm = vol.config_map.as_ref().expect("--config: not a ConfigMap");
    assert_eq!(
        (cm.name.as_str(), file),
        (CONFIG_MAP, at.join(CONFIG_KEY).as_path())
    );
    // The same host directory as the agent's for every path both use.
    let uapi = Path::new(wiremesh_datapath::uapi::server::SOCKET_DIR);
    let shared = [
        ("the node key", config.key_path(), true),
        (
            "the handover socket (runDir)",
            config.run_dir.join("x.sock"),
            false,
        ),
        ("the UAPI socket", uapi.join("x.sock"), false),
        ("the TUN device", "/dev/net/tun".into(), false),
    ];
    for (what, path, read_only_ok) in shared {
        let (_, ro, v) = mount_in(ds, c, &path).unwrap_or_else(|| panic!("{what}: not mounted"));
        let (_, _, agent_v) = mount_of(agent_ds, &path).expect("the agent mounts it");
        let host = v.host_path.as_ref().map(|h| h.path.clone());
        assert!(host.is_some(), "{what}: not a hostPath");
        assert_eq!(
            host,
            agent_v.host_path.as_ref().map(|h| h.path.clone()),
            "{what}"
        );
        assert!(read_only_ok || !ro, "{what}: read-only");
    }
    // The config's ${VAR}s: the same downward-API sources as the agent's.
    let env = |c: &k8s_openapi::api::core::v1::Container| {
        let vars = c.env.iter().flatten();
        let sources = vars.filter_map(|e| {
            let f = e.value_from.as_ref()?.field_ref.as_ref()?;
            Some((e.name.clone(), f.field_path.clone()))
        });
        sources.collect::<BTreeSet<_>>()
    };
    assert_eq!(env(c), env(agent_container(agent_ds)));
    assert_eq!(pod(ds).host_network, Some(true));
    assert_eq!(pod(ds).automount_service_account_token, Some(false));
}

#[test]
fn it_rolls_by_a_surge_with_no_port_to_block_it() {
    let rendered = render(&deploy_dir());
    let ds = datapath(&rendered);
    let strategy = ds.spec.update_strategy.as_ref().expect("updateStrategy");
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)), "maxSurge");
    assert_eq!(
        rolling.max_unavailable,
        Some(IntOrString::Int(0)),
        "maxUnavailable"
    );
    let spec = pod(ds);
    for c in &spec.containers {
        assert!(
            c.ports.is_none(),
            "{}: ports {:?} would block the surge",
            c.name,
            c.ports
        );
    }
    // Nobody declares listenPort: a hostPort on it would be the data path's, and block it.
    let port = i32::from(config(&rendered).listen_port);
    for c in &pod(rendered.daemonset()).containers {
        let ports = c.ports.iter().flatten();
        assert!(
            ports.clone().all(|p| p.container_port != port),
            "{}: {port}",
            c.name
        );
    }
    assert_runs_on_every_node(ds);
    // A pod stopped in the middle of a handover serves the old sessions until let go.
    let grace = spec
        .termination_grace_period_seconds
        .expect("a grace period");
    let cap = wiremesh_datapath::process::HANDOVER_CAP.as_secs();
    assert!(
        grace > cap as i64,
        "terminationGracePeriodSeconds {grace} <= {cap}"
    );
}

#[test]
fn its_probes_are_datapath_probe_on_the_pods_own_status_dir() {
    let rendered = render(&deploy_dir());
    let ds = datapath(&rendered);
    let c = container(ds, DATAPATH_CONTAINER);
    let command = c.command.clone().unwrap_or_default();
    let status_dir = flag(&command, "--status-dir");
    let (at, ro, vol) = mount_in(ds, c, Path::new(status_dir)).expect("--status-dir: not mounted");
    assert_eq!(
        at,
        Path::new(status_dir),
        "--status-dir is the mount itself"
    );
    assert!(
        !ro && vol.empty_dir.is_some(),
        "--status-dir: not a writable emptyDir"
    );
    let exec = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.exec.as_ref()?.command.clone())
            .expect("an exec probe")
    };
    let readiness = exec(&c.readiness_probe);
    assert_eq!(readiness[..2], ["wiremesh", "datapath-probe"]);
    assert_eq!(flag(&readiness, "--status-dir"), status_dir);
    assert!(!readiness.contains(&"--liveness".to_owned()));
    let liveness = exec(&c.liveness_probe);
    assert_eq!(liveness[..2], ["wiremesh", "datapath-probe"]);
    assert_eq!(flag(&liveness, "--status-dir"), status_dir);
    assert!(liveness.contains(&"--liveness".to_owned()));
}

#[test]
fn it_has_no_capability_the_agent_lacks() {
    let rendered = render(&deploy_dir());
    let caps = |c: &k8s_openapi::api::core::v1::Container| {
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
        caps.add.iter().flatten().cloned().collect::<BTreeSet<_>>()
    };
    let ours = caps(container(datapath(&rendered), DATAPATH_CONTAINER));
    let agent = caps(agent_container(rendered.daemonset()));
    assert!(
        ours.contains("NET_ADMIN"),
        "the TUN device needs NET_ADMIN: {ours:?}"
    );
    assert!(
        ours.is_subset(&agent),
        "{ours:?} beyond the agent's {agent:?}"
    );
}
