//! The OCI runtime config a pod's container gets, written the way kubelet and containerd write
//! it: the unpacked image's `config.json` rewritten from the DaemonSet's pod template. Pure: the
//! host side of every volume comes from [`PodHost`], so nothing here touches the machine.
//!
//! Covered: `hostNetwork` (the node's network namespace, the host's UTS), the container's
//! command/args and env (literal values and the `spec.nodeName`, `status.hostIP` and
//! `status.podIP` field references), the
//! capabilities (containerd's default set adjusted by `securityContext.capabilities`),
//! `privileged` (refused: the DaemonSet must not need it), `readOnlyRootFilesystem`,
//! `allowPrivilegeEscalation`, hostPath / ConfigMap / emptyDir / projected service-account
//! volumes as bind mounts with their propagation. Anything else in the pod spec that would change how the
//! container runs is an error naming the field, so the test never runs something the manifest
//! does not say.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume, VolumeMount};
use serde_json::{json, Value};

use crate::error::{LabError, Result};

/// containerd's default capability set for a container that is not privileged
/// (containerd `oci.WithDefaultCapabilities`'s list, as the CRI plugin applies it).
pub const CONTAINERD_DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Where kubelet projects the service-account token volume.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What the node provides for one container: the things kubelet and containerd take from the
/// node rather than from the manifest.
#[derive(Debug, Clone)]
pub struct PodHost {
    /// The node's name (`spec.nodeName` once the pod is scheduled).
    pub node_name: String,
    /// The node's address (`status.hostIP`; a hostNetwork pod's `status.podIP` too).
    pub host_ip: String,
    /// The node's network namespace (`hostNetwork: true`), e.g. `/run/netns/<ns>`.
    pub netns: PathBuf,
    /// Each hostPath volume's `path` → the directory or file standing for it on this node.
    pub host_paths: Vec<(String, PathBuf)>,
    /// The directory holding each ConfigMap volume's files, by ConfigMap name.
    pub config_maps: Vec<(String, PathBuf)>,
    /// The projected service-account directory (`token`, `ca.crt`, `namespace`), if the pod
    /// mounts one.
    pub service_account: Option<PathBuf>,
    /// Each emptyDir volume's directory, by volume name: the pod's own, empty at its start
    /// (`medium: Memory` is a tmpfs under kubelet; here a directory of the container's).
    pub empty_dirs: Vec<(String, PathBuf)>,
    /// Environment variables kubelet injects (`KUBERNETES_SERVICE_HOST`/`_PORT`).
    pub injected_env: Vec<(String, String)>,
}

impl PodHost {
    fn host_path(&self, path: &str) -> Result<&Path> {
        lookup(&self.host_paths, path, "hostPath")
    }

    fn config_map(&self, name: &str) -> Result<&Path> {
        lookup(&self.config_maps, name, "configMap")
    }

    fn empty_dir(&self, name: &str) -> Result<&Path> {
        lookup(&self.empty_dirs, name, "emptyDir")
    }
}

fn lookup<'a>(list: &'a [(String, PathBuf)], key: &str, what: &str) -> Result<&'a Path> {
    list.iter()
        .find(|(k, _)| k == key)
        .map(|(_, p)| p.as_path())
        .ok_or_else(|| LabError::Check(format!("no host side for the {what} volume '{key}'")))
}

/// The container named `name` in `pod`, or an error naming what the pod holds.
pub fn container<'a>(pod: &'a PodSpec, name: &str) -> Result<&'a Container> {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| {
            let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
            LabError::Check(format!(
                "the pod has no container '{name}' (it has {names:?})"
            ))
        })
}

/// Rewrites `base` (the `config.json` umoci unpacked) for `container` of `pod` on `host`.
pub fn runtime_config(
    mut base: Value,
    pod: &PodSpec,
    container: &Container,
    host: &PodHost,
) -> Result<Value> {
    check_supported(pod, container)?;
    let process = process(&base, container, host)?;
    base["process"] = process;
    base["linux"]["namespaces"] = namespaces(pod, host)?;
    if let Some(obj) = base.as_object_mut() {
        // The host's UTS namespace (hostNetwork): runc refuses a hostname without its own.
        obj.remove("hostname");
    }
    let read_only = container
        .security_context
        .as_ref()
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false);
    base["root"]["readonly"] = json!(read_only);
    let mounts = base["mounts"].as_array().cloned().unwrap_or_default();
    let mut mounts: Vec<Value> = mounts
        .into_iter()
        // containerd mounts no cgroup filesystem for a pod that does not ask for one.
        .filter(|m| m["destination"] != "/sys/fs/cgroup")
        .collect();
    mounts.extend(volume_mounts(pod, container, host)?);
    base["mounts"] = Value::Array(mounts);
    // containerd's default device rules also admit the TUN device (c 10:200).
    base["linux"]["resources"]["devices"] = json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
    ]);
    base["linux"]["maskedPaths"] = json!([
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ]);
    base["linux"]["readonlyPaths"] = json!([
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]);
    Ok(base)
}

/// Refuses pod and container settings this runner does not reproduce.
fn check_supported(pod: &PodSpec, container: &Container) -> Result<()> {
    if pod.host_network != Some(true) {
        return Err(LabError::Check(
            "the pod is not hostNetwork: this runner puts the container in the node's network \
             namespace only"
                .into(),
        ));
    }
    let sc = container.security_context.as_ref();
    if sc.and_then(|s| s.privileged) == Some(true) {
        return Err(LabError::Check(
            "securityContext.privileged is true: the DaemonSet must run with its listed \
             capabilities only"
                .into(),
        ));
    }
    if sc.and_then(|s| s.run_as_user).is_some_and(|u| u != 0) {
        return Err(LabError::Check(
            "securityContext.runAsUser is not 0: the image has only root".into(),
        ));
    }
    if pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        return Err(LabError::Check("hostPID/hostIPC are not reproduced".into()));
    }
    Ok(())
}

/// `process`: args, env, capabilities, no terminal.
fn process(base: &Value, container: &Container, host: &PodHost) -> Result<Value> {
    let mut args: Vec<String> = match &container.command {
        Some(cmd) => cmd.clone(),
        None => base["process"]["args"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    };
    args.extend(container.args.iter().flatten().cloned());
    if args.is_empty() {
        return Err(LabError::Check(format!(
            "container '{}': neither command nor the image's entrypoint",
            container.name
        )));
    }
    let mut env: Vec<String> = base["process"]["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    env.retain(|e| !e.starts_with("TERM="));
    for (k, v) in &host.injected_env {
        env.push(format!("{k}={v}"));
    }
    for var in container.env.iter().flatten() {
        env.push(format!("{}={}", var.name, env_value(var, host)?));
    }
    let caps = capabilities(container);
    let sc = container.security_context.as_ref();
    let no_new_privs = sc.and_then(|s| s.allow_privilege_escalation) == Some(false);
    Ok(json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": env,
        "cwd": container.working_dir.clone().unwrap_or_else(|| "/".into()),
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
        },
        // No rlimits: CRI containers inherit containerd's own (here: the test's).
        "noNewPrivileges": no_new_privs,
    }))
}

fn env_value(var: &k8s_openapi::api::core::v1::EnvVar, host: &PodHost) -> Result<String> {
    if let Some(v) = &var.value {
        return Ok(v.clone());
    }
    let field = var
        .value_from
        .as_ref()
        .and_then(|f| f.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    match field {
        Some("spec.nodeName") => Ok(host.node_name.clone()),
        Some("status.hostIP" | "status.podIP") => Ok(host.host_ip.clone()),
        other => Err(LabError::Check(format!(
            "env {}: source {other:?} is not reproduced (only value and fieldRef spec.nodeName, \
             status.hostIP, status.podIP)",
            var.name
        ))),
    }
}

/// containerd's default set, minus `drop` (`ALL` drops every one), plus `add`: the names as
/// the OCI spec spells them (`CAP_` prefix).
pub fn capabilities(container: &Container) -> Vec<String> {
    let caps = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    let spelled = |c: &String| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let drop: Vec<String> = caps
        .and_then(|c| c.drop.as_ref())
        .map(|d| d.iter().map(spelled).collect())
        .unwrap_or_default();
    let mut set: Vec<String> = if drop.iter().any(|d| d == "CAP_ALL") {
        Vec::new()
    } else {
        CONTAINERD_DEFAULT_CAPS
            .iter()
            .map(|c| (*c).to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for add in caps.and_then(|c| c.add.as_ref()).into_iter().flatten() {
        let add = spelled(add);
        if !set.contains(&add) {
            set.push(add);
        }
    }
    set
}

/// The node's network namespace; own mount, PID and IPC namespaces; the host's UTS.
fn namespaces(pod: &PodSpec, host: &PodHost) -> Result<Value> {
    debug_assert_eq!(pod.host_network, Some(true));
    if !host.netns.exists() {
        return Err(LabError::Check(format!(
            "the node's network namespace {} does not exist",
            host.netns.display()
        )));
    }
    Ok(json!([
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "mount"},
        {"type": "network", "path": host.netns},
    ]))
}

/// One bind mount per volume mount of the container.
fn volume_mounts(pod: &PodSpec, container: &Container, host: &PodHost) -> Result<Vec<Value>> {
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let volume = volumes.iter().find(|v| v.name == vm.name).ok_or_else(|| {
            LabError::Check(format!(
                "volumeMount '{}' names no volume of the pod",
                vm.name
            ))
        })?;
        mounts.push(bind_mount(volume, vm, host)?);
    }
    // The ServiceAccount admission plugin adds the token projection to every pod that does
    // not opt out; kubelet mounts it read-only.
    let automount = pod.automount_service_account_token != Some(false);
    let listed = mounts
        .iter()
        .any(|m| m["destination"] == SERVICE_ACCOUNT_DIR);
    if let (true, false, Some(dir)) = (automount, listed, &host.service_account) {
        mounts.push(json!({
            "destination": SERVICE_ACCOUNT_DIR,
            "type": "bind",
            "source": dir,
            "options": ["rbind", "rprivate", "ro"],
        }));
    }
    Ok(mounts)
}

fn bind_mount(volume: &Volume, vm: &VolumeMount, host: &PodHost) -> Result<Value> {
    let (source, forced_ro) = if let Some(hp) = &volume.host_path {
        (host.host_path(&hp.path)?.to_path_buf(), false)
    } else if let Some(cm) = &volume.config_map {
        // kubelet projects ConfigMaps read-only whatever the mount says.
        (host.config_map(&cm.name)?.to_path_buf(), true)
    } else if volume.empty_dir.is_some() {
        (host.empty_dir(&volume.name)?.to_path_buf(), false)
    } else if volume.projected.is_some() && vm.mount_path == SERVICE_ACCOUNT_DIR {
        let dir = host.service_account.clone().ok_or_else(|| {
            LabError::Check("the pod mounts a service-account token but none was given".into())
        })?;
        (dir, true)
    } else {
        return Err(LabError::Check(format!(
            "volume '{}': only hostPath, configMap, emptyDir and the service-account \
             projection are reproduced",
            volume.name
        )));
    };
    if vm.sub_path.is_some() || vm.sub_path_expr.is_some() {
        return Err(LabError::Check(format!(
            "volumeMount '{}': subPath is not reproduced",
            vm.name
        )));
    }
    let mut options = vec!["rbind".to_string()];
    options.push(propagation(vm)?.into());
    if forced_ro || vm.read_only == Some(true) {
        options.push("ro".into());
    }
    Ok(json!({
        "destination": vm.mount_path,
        "type": "bind",
        "source": source,
        "options": options,
    }))
}

/// `mountPropagation` as containerd maps it.
fn propagation(vm: &VolumeMount) -> Result<&'static str> {
    match vm.mount_propagation.as_deref() {
        None | Some("None") => Ok("rprivate"),
        Some("HostToContainer") => Ok("rslave"),
        Some("Bidirectional") => Ok("rshared"),
        Some(other) => Err(LabError::Check(format!(
            "volumeMount '{}': unknown mountPropagation '{other}'",
            vm.name
        ))),
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
