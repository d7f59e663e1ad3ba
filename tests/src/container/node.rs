//! What a lab node gives a pod's container, as a real node's kubelet would: the node's network
//! namespace, each hostPath as the node's own directory for it (the lab's agents see their
//! node's private directories at the same paths: `/run/wiremesh`, `/run/wireguard`, the state
//! directory, a BPF pin directory of their own), the environment kubelet injects, and the
//! service account's token and CA as the lab's API server issued them.

use std::path::{Path, PathBuf};

use super::{Container, Image, PodHost, PodRun, ServiceAccountToken, Workload};
use crate::addr::{node_ip, node_name};
use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::options::SWITCH_IP;

impl Lab {
    /// `/run/netns/<ns>` of node `node`.
    pub fn node_netns_path(&self, node: u8) -> PathBuf {
        Path::new("/run/netns").join(self.node_ns(node))
    }

    /// The host side of a pod on node `node`: hostPaths mapped to the node's directories
    /// (created here), the node's network namespace, kubelet's service environment.
    pub fn pod_host(&self, node: u8) -> Result<PodHost> {
        let base = self.node_dir(node);
        let bpf = self.bpffs_dir().join(format!("{}-pod", node_name(node)));
        let xtables = base.join("xtables.lock");
        for dir in [base.join("run"), base.join("wireguard"), bpf.clone()] {
            std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&xtables)
            .map_err(|e| LabError::io(&xtables, e))?;
        let state = self.layout().state_dir(node);
        std::fs::create_dir_all(&state).map_err(|e| LabError::io(&state, e))?;
        let host_paths = [
            ("/run/wiremesh", base.join("run")),
            ("/var/run/wiremesh", base.join("run")),
            ("/run/wireguard", base.join("wireguard")),
            ("/var/run/wireguard", base.join("wireguard")),
            ("/var/lib/wiremesh", state),
            ("/sys/fs/bpf", bpf),
            ("/run/xtables.lock", xtables),
            ("/dev/net/tun", PathBuf::from("/dev/net/tun")),
            ("/lib/modules", PathBuf::from("/lib/modules")),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .to_vec();
        Ok(PodHost {
            node_name: node_name(node),
            host_ip: node_ip(node).to_string(),
            netns: self.node_netns_path(node),
            host_paths,
            config_maps: Vec::new(),
            service_account: None,
            empty_dirs: Vec::new(),
            injected_env: vec![
                ("KUBERNETES_SERVICE_HOST".into(), SWITCH_IP.to_string()),
                (
                    "KUBERNETES_SERVICE_PORT".into(),
                    crate::KUBE_API_PORT.to_string(),
                ),
            ],
        })
    }

    /// The agents' service-account token and the API server's CA (Kubernetes labs):
    /// `<labdir>/kube/agent.token` and `<labdir>/kube/tls/ca.crt`.
    pub fn service_account_token(&self, namespace: &str) -> Result<ServiceAccountToken> {
        let kube = self.layout().kube_dir();
        let token_path = kube.join("agent.token");
        let ca_path = kube.join("tls/ca.crt");
        let token =
            std::fs::read_to_string(&token_path).map_err(|e| LabError::io(&token_path, e))?;
        let ca_crt = std::fs::read(&ca_path).map_err(|e| LabError::io(&ca_path, e))?;
        Ok(ServiceAccountToken {
            token: token.trim().to_string(),
            ca_crt,
            namespace: namespace.to_string(),
        })
    }

    /// Runs container `container` of DaemonSet `daemonset` of `workload` on node `node` from
    /// `image`, as kubelet would: the ConfigMaps as rendered (unmodified), the service
    /// account's token if the pod mounts one, the node's host side. `name` tells this container
    /// apart from others of the lab (its ID and work directory).
    pub fn run_pod_container(
        &self,
        node: u8,
        workload: &Workload,
        which: (&str, &str),
        image: &Image,
        name: &str,
    ) -> Result<Container> {
        let mut container = self.prepare_pod_container(node, workload, which, image, name)?;
        container.start()?;
        Ok(container)
    }

    /// [`Lab::run_pod_container`] up to the start ([`Container::prepare`]).
    pub fn prepare_pod_container(
        &self,
        node: u8,
        workload: &Workload,
        (daemonset, container): (&str, &str),
        image: &Image,
        name: &str,
    ) -> Result<Container> {
        let ds = workload.daemonset(daemonset)?;
        let pod =
            ds.spec.template.spec.as_ref().ok_or_else(|| {
                LabError::Check(format!("DaemonSet {daemonset} has no pod template"))
            })?;
        let config_maps = workload
            .config_maps
            .iter()
            .map(|(name, cm)| (name.clone(), cm.data.clone().unwrap_or_default()))
            .collect();
        let namespace = ds.metadata.namespace.as_deref().unwrap_or("default");
        let service_account = match pod.automount_service_account_token {
            Some(false) => None,
            _ => Some(self.service_account_token(namespace)?),
        };
        let spec = PodRun {
            pod,
            container,
            config_maps,
            service_account,
        };
        let id = format!("{}-{name}", self.prefix());
        let work = self.dir().join(format!("container-{name}"));
        let netns = self.node(node).ns();
        Container::prepare(&id, &work, image, &spec, self.pod_host(node)?, &netns)
    }
}
