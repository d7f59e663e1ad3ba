//! The agent config of a lab VM (`/etc/wiremesh/agent.yaml` inside it): the config the lab
//! would give the node, as a host without pods joins. Pure.

use std::net::Ipv4Addr;

use wiremesh::config::ConfigFile;

use crate::addr::MAX_NODES;
use crate::clusters::LabLayout;
use crate::options::{agent_config_file, LabOptions};

/// Where the VM sees the lab's dir store: under the unit's `StateDirectory`, the one place
/// besides the runtime directories and the BPF filesystem that the unit leaves writable.
pub const VM_STORE_DIR: &str = "/var/lib/wiremesh/store";

/// The third octet of every VM's host address: above every node's pod CIDR
/// (`10.244.<1..=MAX_NODES>.0/24`), inside the pool `10.244.0.0/16`.
const HOST_NET: u8 = 250;
const _: () = assert!(HOST_NET > MAX_NODES);

/// The `hostAddress` of a VM on node `node`: `10.244.250.<node>`, inside `clusterPodCIDRs`
/// and inside no node's pod CIDR.
pub fn vm_host_address(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, HOST_NET, node)
}

/// The label every lab VM's endpoint carries (`labels`), for policies to select it by.
pub const VM_LABEL: (&str, &str) = ("role", "db-vm");

/// Node `node`'s config ([`agent_config_file`]) for a host without pods under the shipped
/// unit: no `podCIDRs`, a `hostAddress` ([`vm_host_address`]), the agent's default state,
/// run and pin directories (the unit's `StateDirectory`, `RuntimeDirectory` and
/// `ReadWritePaths=/sys/fs/bpf`), and the dir store at [`VM_STORE_DIR`]. An etcd store is
/// the lab's as it is: the VM reaches the switch over the node's underlay.
pub fn vm_config_file(node: u8, layout: &LabLayout, options: &LabOptions) -> ConfigFile {
    let mut file = agent_config_file(node, layout, options);
    file.pod_cidrs = Some(Vec::new());
    file.host_address = Some(vm_host_address(node).to_string());
    file.labels = Some([(VM_LABEL.0.to_string(), VM_LABEL.1.to_string())].into());
    file.state_dir = None;
    file.run_dir = None;
    file.policy = None;
    if let Some(dir) = file.store.as_mut().and_then(|s| s.dir.as_mut()) {
        dir.path = VM_STORE_DIR.into();
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clusters::ClusterPlan;
    use crate::options::config_yaml;
    use std::path::Path;
    use wiremesh::config::{Config, StoreConfig};

    /// The agent loads the VM's config as the lab writes it, on both stores.
    #[test]
    fn the_agent_loads_the_vm_config() {
        let layout = LabLayout::new("/tmp/l", ClusterPlan::new(1, 3));
        let dir = std::env::temp_dir().join(format!("wiremesh-lab-vm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for (name, options) in [
            ("dir", LabOptions::default().default_route()),
            ("etcd", LabOptions::etcd(std::time::Duration::from_secs(5))),
        ] {
            let yaml = config_yaml(&vm_config_file(3, &layout, &options));
            let path = dir.join(format!("{name}.yaml"));
            std::fs::write(&path, &yaml).expect("write config");
            let config = Config::load(&path).unwrap_or_else(|e| {
                panic!("the agent refuses the VM's {name} config: {e}\n{yaml}")
            });
            assert_eq!(config.node_name, "node-3");
            assert!(config.pod_cidrs.is_empty(), "{name}");
            assert_eq!(config.host_address, Some(vm_host_address(3).into()));
            assert_eq!(config.state_dir, Path::new("/var/lib/wiremesh"));
            assert_eq!(config.run_dir, Path::new("/run/wiremesh"));
            assert!(config.strict_mode);
            if let StoreConfig::Dir { path } = &config.store {
                assert_eq!(path, Path::new(VM_STORE_DIR));
            }
            assert_eq!(config.policy.bpf_pin_dir, Path::new("/sys/fs/bpf/wiremesh"));
        }
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
