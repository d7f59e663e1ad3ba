//! Tests of the config: every key, every error named, all errors at once.

use super::*;

/// Parses `text` as written, or with the lab's cluster pool added when it names neither of
/// the strict-mode keys (so that each test states only what it is about).
fn parse(text: &str) -> Result<Config, String> {
    let text = if text.contains("clusterPodCIDRs") || text.contains("strictMode") {
        text.to_string()
    } else {
        format!("clusterPodCIDRs: [10.244.0.0/16, fd00:10:244::/56]\n{text}")
    };
    Config::parse(&text, Path::new("/etc/wiremesh/agent.yaml")).map_err(|e| e.to_string())
}

const FULL: &str = "
nodeName: node-1
clusterName: default
interface: wiremesh_wg0
listenPort: 51871
mtu: 0
stateDir: /var/lib/wiremesh
runDir: /run/wiremesh
endpoint: 198.18.0.1:51871
nodeIPs: [198.18.0.1]
podCIDRs: [10.244.1.0/24, fd00:10:244:1::/64]
store:
  kind: dir
  dir: { path: /var/lib/wiremesh/store }
";

#[test]
fn documented_example_parses() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.node_name, "node-1");
    assert_eq!(c.endpoint, "198.18.0.1:51871".parse().unwrap());
    assert_eq!(c.pod_cidrs.len(), 2);
    assert_eq!(
        c.key_path(),
        PathBuf::from("/var/lib/wiremesh/wiremesh_wg0.key")
    );
    assert_eq!(c.datapath, DatapathKind::Auto);
}

#[test]
fn defaults_apply() {
    let c = parse("nodeName: n1\nnodeIPs: [198.18.0.7]\n").unwrap();
    assert_eq!(c.interface, "wiremesh_wg0");
    assert_eq!(c.listen_port, 51871);
    assert_eq!(c.endpoint, "198.18.0.7:51871".parse().unwrap());
    assert_eq!(c.cluster_name, "default");
    assert!(c.offload, "offloads are on unless switched off");
}

#[test]
fn an_external_data_path_is_the_userspace_one_only() {
    let base = "nodeName: n1\nnodeIPs: [198.18.0.7]\n";
    let c = parse(base).unwrap();
    assert_eq!(c.datapath_process, DatapathProcess::Agent);
    let c = parse(&format!(
        "{base}datapath: userspace\ndatapathProcess: external\n"
    ))
    .unwrap();
    assert_eq!(c.datapath_process, DatapathProcess::External);
    for datapath in ["auto", "kernel"] {
        let e = parse(&format!(
            "{base}datapath: {datapath}\ndatapathProcess: external\n"
        ))
        .unwrap_err();
        assert!(
            e.contains("datapathProcess: external needs datapath: userspace"),
            "{e}"
        );
    }
    let e = parse(&format!("{base}datapathProcess: systemd\n")).unwrap_err();
    assert!(e.contains("datapathProcess"), "{e}");
}

#[test]
fn offloads_can_be_switched_off() {
    let c = parse("nodeName: n1\nnodeIPs: [198.18.0.7]\noffload: false\n").unwrap();
    assert!(!c.offload);
    let e = parse("nodeName: n1\nnodeIPs: [198.18.0.7]\noffload: sometimes\n").unwrap_err();
    assert!(e.contains("offload"), "{e}");
}

#[test]
fn unknown_key_is_named() {
    let err = parse("nodeName: n1\nnodeIPs: [198.18.0.1]\nlistenPrt: 1\n").unwrap_err();
    assert!(err.contains("listenPrt"), "{err}");
    assert!(err.contains("agent.yaml"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let err =
        parse("podCIDRs: [10.244.1.0/33, 10.244.1.5/24]\nnodeIPs: [nope]\nmtu: 5\n").unwrap_err();
    for needle in [
        "nodeName: required",
        "podCIDRs[0]",
        "podCIDRs[1]",
        "nodeIPs[0]",
        "mtu: 5",
        "endpoint",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn unsupported_store_kind_says_so() {
    let err = parse("nodeName: n1\nnodeIPs: [198.18.0.1]\nstore: { kind: consul }\n").unwrap_err();
    assert!(err.contains("consul"), "{err}");
    let c = parse("nodeName: n1\nnodeIPs: [198.18.0.1]\nstore: { kind: kubernetes, kubernetes: { heartbeat: 5s, ownerTTL: 20s } }\n").unwrap();
    let StoreConfig::Kubernetes(k) = c.store else {
        panic!("not kubernetes")
    };
    assert_eq!(k.owner_ttl, Duration::from_secs(20));
    let err = parse("nodeName: n1\nnodeIPs: [198.18.0.1]\nstore: { kind: kubernetes, kubernetes: { heartbeat: 30s, ownerTTL: 40s } }\n").unwrap_err();
    assert!(err.contains("store.kubernetes.ownerTTL"), "{err}");
}

#[test]
fn etcd_store() {
    let c = parse(
        "nodeName: n1\nnodeIPs: [198.18.0.1]\nstore:\n  kind: etcd\n  etcd: { endpoints: [http://198.18.0.254:2379], prefix: /wm, leaseTTL: 10s }\n",
    )
    .unwrap();
    let StoreConfig::Etcd(e) = c.store else {
        panic!("not etcd")
    };
    assert_eq!(e.endpoints, vec!["http://198.18.0.254:2379"]);
    assert_eq!(e.prefix, "/wm");
    assert_eq!(e.lease_ttl, Duration::from_secs(10));
    let err = parse("nodeName: n1\nnodeIPs: [198.18.0.1]\nstore: { kind: etcd, etcd: { endpoints: [localhost:2379], leaseTTL: 1s } }\n").unwrap_err();
    assert!(
        err.contains("store.etcd.endpoints[0]") && err.contains("store.etcd.leaseTTL"),
        "{err}"
    );
}

#[test]
fn key_rotation_durations() {
    let c = parse(
        "nodeName: n1\nnodeIPs: [198.18.0.1]\nkeyRotation: { interval: 0, commitTimeout: 30s }\n",
    )
    .unwrap();
    assert!(c.key_rotation.interval.is_zero());
    assert_eq!(c.key_rotation.commit_timeout, Duration::from_secs(30));
    assert_eq!(
        parse("nodeName: n1\nnodeIPs: [198.18.0.1]\n")
            .unwrap()
            .key_rotation
            .interval,
        Duration::from_secs(86400)
    );
    let err = parse("nodeName: n1\nnodeIPs: [198.18.0.1]\nkeyRotation: { interval: soon }\n")
        .unwrap_err();
    assert!(err.contains("keyRotation.interval"), "{err}");
}

#[test]
fn strict_mode_refuses_an_underlay_inside_the_pool() {
    let err = parse("nodeName: n1\nnodeIPs: [10.244.9.1]\n").unwrap_err();
    assert!(
        err.contains("nodeIPs[0]: 10.244.9.1 lies inside clusterPodCIDRs (10.244.0.0/16)")
            && err.contains("endpoint: 10.244.9.1"),
        "{err}"
    );
    parse("strictMode: false\nnodeName: n1\nnodeIPs: [10.244.9.1]\nclusterPodCIDRs: [10.244.0.0/16]\n")
        .expect("without strict mode nothing is dropped, so the overlap is allowed");
}

#[test]
fn strict_mode_is_on_by_default_and_needs_the_cluster_pool() {
    let c = parse("nodeName: n1\nnodeIPs: [198.18.0.1]\n").unwrap();
    assert!(c.strict_mode);
    assert_eq!(c.cluster_pod_cidrs.len(), 2);
    let err = parse("strictMode: true\nnodeName: n1\nnodeIPs: [198.18.0.1]\n").unwrap_err();
    assert!(
        err.contains("clusterPodCIDRs: required") && err.contains("strictMode: false"),
        "{err}"
    );
    let c = parse("strictMode: false\nnodeName: n1\nnodeIPs: [198.18.0.1]\n").unwrap();
    assert!(!c.strict_mode && c.cluster_pod_cidrs.is_empty());
}

#[test]
fn pod_cidrs_must_lie_in_the_cluster_pool() {
    let err = parse(
        "clusterPodCIDRs: [10.244.0.0/16, 10.300.0.0/16]\nnodeName: n1\nnodeIPs: [198.18.0.1]\npodCIDRs: [10.244.1.0/24, 10.245.1.0/24]\n",
    )
    .unwrap_err();
    assert!(err.contains("clusterPodCIDRs[1]"), "{err}");
    assert!(
        err.contains("podCIDRs[1]: 10.245.1.0/24 is not inside clusterPodCIDRs"),
        "{err}"
    );
    assert!(!err.contains("podCIDRs[0]"), "{err}");
}

#[test]
fn admin_group_must_exist() {
    let c = parse("nodeName: n1\nnodeIPs: [198.18.0.1]\nadminGroup: nogroup\n").unwrap();
    assert_eq!(c.admin_group, Some(65534));
    let c = parse("nodeName: n1\nnodeIPs: [198.18.0.1]\nadminGroup: \"65534\"\n").unwrap();
    assert_eq!(c.admin_group, Some(65534));
    let err =
        parse("nodeName: n1\nnodeIPs: [198.18.0.1]\nadminGroup: no-such-group-wm\n").unwrap_err();
    assert!(
        err.contains("adminGroup") && err.contains("groupadd"),
        "{err}"
    );
    let err = parse("nodeName: n1\nnodeIPs: [198.18.0.1]\nadminGroup: root\n").unwrap_err();
    assert!(err.contains("gid 0"), "{err}");
    assert_eq!(
        parse("nodeName: n1\nnodeIPs: [198.18.0.1]\n")
            .unwrap()
            .admin_group,
        None
    );
}

#[test]
fn ipv6_endpoint() {
    let c = parse("nodeName: n1\nendpoint: \"[fd00::1]:51871\"\n").unwrap();
    assert!(c.endpoint.is_ipv6());
}

/// What a tool writes with [`ConfigFile`] is read back as the same file: keys not set are not
/// written, a bare-number duration stays a number, and every section survives.
#[test]
fn config_file_round_trips_through_yaml() {
    let file = ConfigFile {
        node_name: Some("node-1".into()),
        endpoint: Some("198.18.0.1:51871".into()),
        cluster_pod_cidrs: Some(vec!["10.244.0.0/16".into()]),
        store: Some(StoreSection {
            kind: StoreKind::Etcd,
            dir: None,
            etcd: Some(EtcdStoreSection {
                endpoints: Some(vec!["http://127.0.0.1:2379".into()]),
                lease_ttl: Some("5s".into()),
                ..EtcdStoreSection::default()
            }),
            kubernetes: None,
        }),
        key_rotation: Some(KeyRotationSection {
            interval: Some("0".into()),
            commit_timeout: Some("30s".into()),
        }),
        policy: Some(PolicySection {
            enforcement: Some(Enforcement::Never),
            bpf_pin_dir: None,
        }),
        ..ConfigFile::default()
    };
    let yaml = yaml_serde::to_string(&file).unwrap();
    assert!(yaml.contains("interval: 0\n"), "{yaml}");
    assert!(
        !yaml.contains("mtu"),
        "unset keys must not be written: {yaml}"
    );
    let back: ConfigFile = yaml_serde::from_str(&yaml).unwrap();
    assert_eq!(back, file);
    let config = Config::parse(&yaml, Path::new("/t.yaml")).unwrap();
    assert_eq!(config.key_rotation.interval, Duration::ZERO);
    assert_eq!(config.policy.enforcement, Enforcement::Never);
}

const MESH: &str = "
nodeName: node-1
nodeIPs: [198.18.0.1]
clusterName: c1
clusterID: 1
clusterPodCIDRs: [10.244.0.0/17]
clusterMesh:
  clusters:
    - name: c2
      id: 2
      podCIDRs: [10.244.128.0/17]
      etcd: { endpoints: [http://198.18.0.254:2380], prefix: /wm }
    - name: c3
      id: 3
      podCIDRs: [10.245.0.0/16]
      dir: { path: /var/lib/wiremesh/c3 }
";

#[test]
fn cluster_mesh_lists_remote_clusters_with_their_stores() {
    let c = parse(MESH).unwrap();
    assert_eq!(c.cluster_id.map(|i| i.get()), Some(1));
    assert_eq!(c.cluster_mesh.len(), 2);
    let c2 = &c.cluster_mesh[0];
    assert_eq!(c2.cluster.name, "c2");
    assert_eq!(c2.cluster.id.get(), 2);
    assert_eq!(
        c2.cluster.pod_cidrs,
        vec!["10.244.128.0/17".parse().unwrap()]
    );
    let RemoteStoreConfig::Etcd(etcd) = &c2.store else {
        panic!("{:?}", c2.store)
    };
    assert_eq!(etcd.endpoints, vec!["http://198.18.0.254:2380"]);
    assert_eq!(etcd.prefix, "/wm");
    assert_eq!(
        c.cluster_mesh[1].store,
        RemoteStoreConfig::Dir {
            path: "/var/lib/wiremesh/c3".into()
        }
    );
    // Without clusterMesh, nothing is linked and no ID is needed.
    let alone = parse("nodeName: n1\nnodeIPs: [198.18.0.7]\n").unwrap();
    assert!(alone.cluster_mesh.is_empty() && alone.cluster_id.is_none());
}

#[test]
fn cluster_mesh_errors_name_the_entry_and_field() {
    let bad = MESH
        .replace("clusterID: 1\n", "")
        .replace("id: 2", "id: 256")
        .replace("10.245.0.0/16", "10.245.0.1/16")
        .replace("prefix: /wm", "prefix: wm");
    let e = parse(&bad).unwrap_err();
    for needle in [
        "clusterID: required with clusterMesh",
        "clusterMesh.clusters[0].id: 256 is out of range",
        "clusterMesh.clusters[0].etcd.prefix: \"wm\" must start with '/'",
        "clusterMesh.clusters[1].podCIDRs[0]: \"10.245.0.1/16\" has host bits set",
    ] {
        assert!(e.contains(needle), "{needle:?} missing from {e}");
    }
    let neither = MESH.replace("      dir: { path: /var/lib/wiremesh/c3 }\n", "");
    let e = parse(&neither).unwrap_err();
    assert!(e.contains("clusterMesh.clusters[1]: no store"), "{e}");
    let both = MESH.replace(
        "      dir: { path: /var/lib/wiremesh/c3 }\n",
        "      dir: { path: /var/lib/wiremesh/c3 }\n      etcd: { endpoints: [http://a:1] }\n",
    );
    let e = parse(&both).unwrap_err();
    assert!(
        e.contains("clusterMesh.clusters[1]: both etcd and dir"),
        "{e}"
    );
    let e = parse(&MESH.replace("name: c3", "name: C_3")).unwrap_err();
    assert!(e.contains("clusterMesh.clusters[1].name: \"C_3\""), "{e}");
    let e = parse(&MESH.replace("clusterID: 1", "clusterID: 0")).unwrap_err();
    assert!(e.contains("clusterID: 0 is out of range"), "{e}");
    // Strict mode's guard covers the remote pools: the underlay may not lie inside one.
    let e = parse(&MESH.replace("198.18.0.1", "10.245.0.1")).unwrap_err();
    assert!(e.contains("nodeIPs[0]: 10.245.0.1 lies inside"), "{e}");
}

#[test]
fn clusters_that_collide_are_not_a_config_error() {
    // Refused at run time, one cluster at a time, so that the others stay in force.
    let dup = MESH
        .replace("id: 3", "id: 2")
        .replace("10.245.0.0/16", "10.244.128.0/18");
    assert_eq!(parse(&dup).unwrap().cluster_mesh.len(), 2);
}

#[test]
fn host_address_is_published_as_a_host_route_of_the_pod_network() {
    let c = parse("nodeName: vm-1\nnodeIPs: [198.18.0.9]\nhostAddress: 10.244.200.1\n").unwrap();
    assert_eq!(c.host_address, Some("10.244.200.1".parse().unwrap()));
    assert_eq!(
        c.published_pod_cidrs(),
        vec!["10.244.200.1/32".parse::<IpNet>().unwrap()]
    );
    let v6 =
        parse("nodeName: vm-1\nnodeIPs: [198.18.0.9]\nhostAddress: fd00:10:244:c8::1\n").unwrap();
    assert_eq!(
        v6.published_pod_cidrs(),
        vec!["fd00:10:244:c8::1/128".parse::<IpNet>().unwrap()]
    );
    let e = parse("nodeName: vm-1\nnodeIPs: [198.18.0.9]\nhostAddress: 10.99.0.1\n").unwrap_err();
    assert!(
        e.contains("hostAddress: 10.99.0.1 is not inside clusterPodCIDRs"),
        "{e}"
    );
    let e = parse(
        "nodeName: n\nnodeIPs: [198.18.0.9]\npodCIDRs: [10.244.9.0/24]\nhostAddress: 10.244.9.1\n",
    )
    .unwrap_err();
    assert!(
        e.contains("hostAddress: 10.244.9.1 lies inside podCIDRs[0]"),
        "{e}"
    );
    let e = parse("nodeName: n\nnodeIPs: [198.18.0.9]\nhostAddress: vm\n").unwrap_err();
    assert!(
        e.contains("hostAddress: \"vm\" is not an IP address"),
        "{e}"
    );
}

#[test]
fn host_labels_need_a_host_address_and_label_syntax() {
    let c = parse(
        "nodeName: vm-1\nnodeIPs: [198.18.0.9]\nhostAddress: 10.244.200.1\nlabels: {role: db-vm, example.com/tier: \"\"}\n",
    )
    .unwrap();
    assert_eq!(c.labels["role"], "db-vm");
    assert_eq!(c.host_namespace, "default");
    let e = parse("nodeName: n\nnodeIPs: [198.18.0.9]\nlabels: {role: db}\n").unwrap_err();
    assert!(e.contains("labels: needs hostAddress"), "{e}");
    let e = parse(
        "nodeName: n\nnodeIPs: [198.18.0.9]\nhostAddress: 10.244.200.1\nlabels: {\"bad key!\": x, ok: \"-no\"}\nhostNamespace: Not_OK\n",
    )
    .unwrap_err();
    for needle in [
        "labels: key \"bad key!\" is not a label key",
        "labels.ok: value \"-no\" is not a label value",
        "hostNamespace: \"Not_OK\"",
    ] {
        assert!(e.contains(needle), "{needle:?} missing from {e}");
    }
}

#[test]
fn node_name_is_taken_from_the_environment_as_a_daemonset_sets_it() {
    use super::validate::expand_env;
    let env = |var: &str| (var == "NODE_NAME").then(|| "node-7".to_string());
    assert_eq!(expand_env("${NODE_NAME}", env).unwrap(), "node-7");
    assert_eq!(expand_env("a-${NODE_NAME}-b", env).unwrap(), "a-node-7-b");
    assert_eq!(expand_env("plain", env).unwrap(), "plain");
    let e = expand_env("${HOSTNAME_UNSET}", env).unwrap_err();
    assert!(e.contains("HOSTNAME_UNSET, which is not set"), "{e}");
    let e = expand_env("${NODE_NAME", env).unwrap_err();
    assert!(e.contains("without a closing"), "{e}");
    // Through the parser: an unset variable is an error naming the key, never an empty name.
    let e = parse("nodeName: ${WIREMESH_TEST_SURELY_UNSET}\nnodeIPs: [198.18.0.9]\n").unwrap_err();
    assert!(
        e.contains("nodeName: \"${WIREMESH_TEST_SURELY_UNSET}\" names"),
        "{e}"
    );
    let e = parse("nodeName: n\nnodeIPs: [\"${WIREMESH_TEST_SURELY_UNSET}\"]\n").unwrap_err();
    assert!(
        e.contains("nodeIPs[0]: \"${WIREMESH_TEST_SURELY_UNSET}\" names"),
        "{e}"
    );
}

#[test]
fn health_address_is_an_address_and_not_the_metrics_one() {
    let c = parse("nodeName: n\nnodeIPs: [198.18.0.9]\nhealthAddress: 127.0.0.1:9879\n").unwrap();
    assert_eq!(c.health_address, Some("127.0.0.1:9879".parse().unwrap()));
    let e = parse("nodeName: n\nnodeIPs: [198.18.0.9]\nhealthAddress: localhost\n").unwrap_err();
    assert!(
        e.contains("healthAddress: \"localhost\" is not ip:port"),
        "{e}"
    );
    let e = parse(
        "nodeName: n\nnodeIPs: [198.18.0.9]\nhealthAddress: 0.0.0.0:9962\nmetricsAddress: 0.0.0.0:9962\n",
    )
    .unwrap_err();
    assert!(
        e.contains("healthAddress: 0.0.0.0:9962 is also metricsAddress"),
        "{e}"
    );
}
