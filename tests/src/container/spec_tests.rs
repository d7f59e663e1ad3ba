//! The pod spec → OCI config mapping, on a DaemonSet-like pod.

use super::*;
use crate::container::parse_workload;

const POD: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: a}}
    spec:
      hostNetwork: true
      containers:
      - name: agent
        image: agent:1
        command: [agent, run]
        args: [--verbose]
        env:
        - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        - {name: LEVEL, value: debug}
        - {name: NODE_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
        securityContext:
          capabilities: {drop: [ALL], add: [NET_ADMIN, BPF]}
        volumeMounts:
        - {name: bpf, mountPath: /sys/fs/bpf, mountPropagation: Bidirectional}
        - {name: config, mountPath: /etc/agent}
      volumes:
      - {name: bpf, hostPath: {path: /sys/fs/bpf}}
      - {name: config, configMap: {name: agent-config}}
"#;

fn pod() -> PodSpec {
    let workload = parse_workload(POD).expect("the test DaemonSet parses");
    let (_, ds) = workload
        .daemonsets
        .into_iter()
        .next()
        .expect("one DaemonSet");
    ds.spec.template.spec.expect("a pod template")
}

fn host() -> PodHost {
    PodHost {
        node_name: "node-3".into(),
        host_ip: "198.18.0.3".into(),
        // Any existing path stands for the namespace here.
        netns: PathBuf::from("/"),
        host_paths: vec![("/sys/fs/bpf".into(), "/lab/bpffs/node-3-pod".into())],
        config_maps: vec![("agent-config".into(), "/work/cm".into())],
        empty_dirs: Vec::new(),
        service_account: Some("/work/sa".into()),
        injected_env: vec![("KUBERNETES_SERVICE_HOST".into(), "198.18.0.254".into())],
    }
}

fn base() -> Value {
    json!({
        "process": {"args": ["entry"], "env": ["PATH=/bin", "TERM=xterm"], "terminal": true},
        "hostname": "umoci-default",
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc"},
                   {"destination": "/sys/fs/cgroup", "type": "cgroup"}],
        "linux": {"namespaces": [{"type": "network"}, {"type": "uts"}]},
    })
}

#[test]
fn drop_all_then_add_keeps_exactly_the_added() {
    let pod = pod();
    let caps = capabilities(&pod.containers[0]);
    assert_eq!(caps, ["CAP_NET_ADMIN", "CAP_BPF"]);
}

#[test]
fn no_capabilities_section_is_containerds_default_set() {
    let mut pod = pod();
    pod.containers[0].security_context = None;
    assert_eq!(capabilities(&pod.containers[0]), CONTAINERD_DEFAULT_CAPS);
}

#[test]
fn config_follows_the_pod_spec() {
    let pod = pod();
    let config = runtime_config(base(), &pod, &pod.containers[0], &host()).expect("maps");
    let process = &config["process"];
    assert_eq!(process["args"], json!(["agent", "run", "--verbose"]));
    assert_eq!(process["terminal"], json!(false));
    let env = process["env"].as_array().expect("env");
    for want in [
        "NODE_NAME=node-3",
        "LEVEL=debug",
        "NODE_IP=198.18.0.3",
        "PATH=/bin",
        "KUBERNETES_SERVICE_HOST=198.18.0.254",
    ] {
        assert!(env.contains(&json!(want)), "{want} missing from {env:?}");
    }
    assert!(
        config.get("hostname").is_none(),
        "hostNetwork shares the host's UTS"
    );
    let ns = config["linux"]["namespaces"]
        .as_array()
        .expect("namespaces");
    assert!(ns.contains(&json!({"type": "network", "path": "/"})));
    assert!(!ns.iter().any(|n| n["type"] == "uts"));
    let mounts = config["mounts"].as_array().expect("mounts");
    let find = |dest: &str| {
        mounts
            .iter()
            .find(|m| m["destination"] == dest)
            .unwrap_or_else(|| panic!("no mount at {dest}: {mounts:?}"))
    };
    assert_eq!(find("/sys/fs/bpf")["source"], "/lab/bpffs/node-3-pod");
    assert_eq!(find("/sys/fs/bpf")["options"], json!(["rbind", "rshared"]));
    assert_eq!(
        find("/etc/agent")["options"],
        json!(["rbind", "rprivate", "ro"])
    );
    assert_eq!(find(SERVICE_ACCOUNT_DIR)["source"], "/work/sa");
    assert!(!mounts.iter().any(|m| m["destination"] == "/sys/fs/cgroup"));
}

#[test]
fn privileged_and_unknown_volumes_are_refused() {
    let mut pod = pod();
    let mut privileged = pod.clone();
    let sc = privileged.containers[0]
        .security_context
        .as_mut()
        .expect("sc");
    sc.privileged = Some(true);
    let err = runtime_config(base(), &privileged, &privileged.containers[0], &host());
    assert!(format!("{err:?}").contains("privileged"), "{err:?}");
    pod.volumes.as_mut().expect("volumes")[0]
        .host_path
        .as_mut()
        .expect("hp")
        .path = "/etc/elsewhere".into();
    let err = runtime_config(base(), &pod, &pod.containers[0], &host());
    assert!(format!("{err:?}").contains("/etc/elsewhere"), "{err:?}");
}
