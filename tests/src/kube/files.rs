//! What the lab's API server and its clients read: the bearer tokens (random per lab, files of
//! mode 0600), the kubeconfigs (CA + `tokenFile`, so no secret is ever in a config or on a
//! command line the lab prints), the RBAC manifests it enforces, the Node manifests, and the
//! server's command line. Nothing here starts a process.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::addr::{node_ip, node_ip6, node_name, pod_cidr, pod_cidr6};
use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::options::SWITCH_IP;

use super::{kube_api_url, KUBE_API_PORT};

/// kubectl's user: a cluster admin (`system:masters` passes every RBAC check).
pub const ADMIN_USER: &str = "kubernetes-admin";
/// The agents' user: the DaemonSet's service account, as the API server authenticates it.
pub const AGENT_USER: &str = "system:serviceaccount:kube-system:wiremesh";
/// The groups the API server gives a service account of `kube-system`.
pub const AGENT_GROUPS: [&str; 3] = [
    "system:serviceaccounts",
    "system:serviceaccounts:kube-system",
    "system:authenticated",
];

/// Node `node`'s `Node` as kubelet registers it (and a cloud or IPAM controller completes it):
/// the lab's pod CIDRs in `spec.podCIDRs`, its underlay addresses as `InternalIP`s.
pub fn node_manifest(node: u8, dual_stack: bool) -> String {
    let name = node_name(node);
    let mut cidrs = vec![pod_cidr(node)];
    let mut addresses = vec![node_ip(node).to_string()];
    if dual_stack {
        cidrs.push(pod_cidr6(node));
        addresses.push(node_ip6(node).to_string());
    }
    let addresses: Vec<String> = addresses
        .iter()
        .map(|a| format!("{{type: InternalIP, address: \"{a}\"}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Node\n\
         metadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}, kubernetes.io/os: linux}}}}\n\
         spec: {{podCIDR: \"{}\", podCIDRs: [{}]}}\n\
         status: {{addresses: [{}, {{type: Hostname, address: {name}}}]}}\n",
        cidrs[0],
        cidrs
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", "),
        addresses.join(", ")
    )
}

/// Writes `manifest` to a file of its own under `<labdir>/kube/manifests`.
pub(crate) fn manifest_path(lab: &Lab, manifest: &str) -> Result<PathBuf> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = lab.layout().kube_dir().join("manifests");
    std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
    let path = dir.join(format!("{}.yaml", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, manifest).map_err(|e| LabError::io(&path, e))?;
    Ok(path)
}

/// The tokens, the kubeconfigs of kubectl and of every agent, and the RBAC file: `rbac`, or
/// what `kubectl kustomize deploy/kubernetes` renders.
pub(crate) fn write_all(lab: &Lab, rbac: Option<&str>) -> Result<()> {
    let api = lab.kube_api();
    let dir = api.dir();
    std::fs::create_dir_all(dir.join("tls")).map_err(|e| LabError::io(&dir, e))?;
    write_secret(&dir.join("admin.token"), &random_token()?)?;
    write_secret(&dir.join("agent.token"), &random_token()?)?;
    let ca = dir.join("tls/ca.crt");
    write(
        &api.admin_kubeconfig(),
        &kubeconfig(&ca, &dir.join("admin.token"), ADMIN_USER),
    )?;
    for node in lab.node_ids() {
        write(
            &api.agent_kubeconfig(node),
            &kubeconfig(&ca, &dir.join("agent.token"), AGENT_USER),
        )?;
    }
    let rbac = match rbac {
        Some(text) => text.to_owned(),
        None => deploy_rbac()?,
    };
    write(&api.rbac_path(), &rbac)
}

/// The RBAC documents of `deploy/kubernetes` as `kubectl kustomize` renders them (parsed and
/// checked by [`crate::deploy::render`], which panics naming the directory on a bad render).
pub fn deploy_rbac() -> Result<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deploy = manifest
        .parent()
        .unwrap_or(manifest)
        .join("deploy/kubernetes");
    Ok(crate::deploy::render(&deploy).rbac_yaml())
}

/// `wiremesh-fake-apiserver` in the switch namespace with the lab's files and two tokens.
pub(crate) fn server_command(lab: &Lab, binary: &Path) -> Result<Command> {
    let api = lab.kube_api();
    let dir = api.dir();
    let admin = read_secret(&dir.join("admin.token"))?;
    let agent = read_secret(&dir.join("agent.token"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.switch_ns()])
        .arg(binary)
        .args(["--listen", &format!("{SWITCH_IP}:{KUBE_API_PORT}")])
        .arg("--tls-dir")
        .arg(dir.join("tls"))
        .arg("--state")
        .arg(dir.join("state.json"))
        .arg("--audit")
        .arg(api.audit_path())
        .arg("--rbac")
        .arg(api.rbac_path())
        .arg("--token")
        .arg(format!("{admin}={ADMIN_USER}:system:masters"))
        .arg("--token")
        // A service account's groups (AGENT_GROUPS) come with its name, as kube-apiserver
        // gives them.
        .arg(format!("{agent}={AGENT_USER}"));
    Ok(cmd)
}

/// A kubeconfig for `user` at the lab's API server, trusting `ca` and reading its bearer token
/// from `token_file` (kubectl and kube-rs both read `tokenFile`).
fn kubeconfig(ca: &Path, token_file: &Path, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: lab\n  cluster:\n    server: {}\n    certificate-authority: {}\n\
         users:\n- name: \"{user}\"\n  user:\n    tokenFile: {}\n\
         contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: \"{user}\"\n\
         current-context: lab\n",
        kube_api_url(),
        ca.display(),
        token_file.display()
    )
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> Result<String> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| LabError::io(path, e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| LabError::io(path, e))
}

/// Writes a token readable by root only.
fn write_secret(path: &Path, token: &str) -> Result<()> {
    write(path, token)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| LabError::io(path, e))
}

fn read_secret(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| LabError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_manifest_carries_pod_cidrs_and_addresses() {
        let v: yaml_serde::Value =
            yaml_serde::from_str(&node_manifest(2, true)).expect("valid YAML");
        assert_eq!(v["metadata"]["name"], "node-2");
        assert_eq!(
            v["spec"]["podCIDRs"],
            yaml_serde::Value::from(vec!["10.244.2.0/24", "fd00:10:244:2::/64"])
        );
        assert_eq!(v["status"]["addresses"][0]["address"], "198.18.0.2");
        assert_eq!(v["status"]["addresses"][1]["address"], "2001:2::2");
        let single: yaml_serde::Value =
            yaml_serde::from_str(&node_manifest(1, false)).expect("valid YAML");
        assert_eq!(
            single["spec"]["podCIDRs"],
            yaml_serde::Value::from(vec!["10.244.1.0/24"])
        );
    }

    #[test]
    fn kubeconfig_names_the_ca_and_token_file_only() {
        let text = kubeconfig(Path::new("/l/ca.crt"), Path::new("/l/t"), AGENT_USER);
        let v: yaml_serde::Value = yaml_serde::from_str(&text).expect("valid YAML");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://198.18.0.254:6443"
        );
        assert_eq!(v["users"][0]["user"]["tokenFile"], "/l/t");
        assert_eq!(v["users"][0]["name"], AGENT_USER);
        assert!(v["users"][0]["user"]["token"].is_null());
    }
}
