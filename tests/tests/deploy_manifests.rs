//! deploy/kubernetes against the binary: every kustomization renders (`kubectl kustomize`) into
//! known kinds with no field k8s-openapi does not know, the ConfigMap's agent.yaml loads with
//! the agent's own config parser, the DaemonSet mounts, probes, ports and capabilities agree
//! with that config and the systemd unit, the ClusterRole grants exactly the stores' calls for
//! `policy::kinds`, the CRDs serve its CRD kinds. Needs kubectl (fails, naming it, without).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Once;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use policy::kinds::KINDS;
use wiremesh::config::{Config, StoreConfig};
use wiremesh_lab::deploy::{
    agent_container, assert_runs_on_every_node, deploy_dir, mount_of, parse, pod, render,
    systemd_capabilities, Document, ManifestError, Rendered, CONFIG_KEY, CONFIG_MAP,
};

/// Capabilities beyond the systemd unit's a container needs, each with its reason: none.
const CONTAINER_ONLY_CAPS: &[&str] = &[];

fn default_render() -> Rendered {
    render(&deploy_dir())
}

/// The agent's config from the ConfigMap, loaded as `wiremesh agent` loads it, with the
/// environment the DaemonSet gives it.
fn agent_config(rendered: &Rendered) -> Config {
    static ENV: Once = Once::new();
    ENV.call_once(|| {
        std::env::set_var("NODE_NAME", "node-a");
        std::env::set_var("NODE_IP", "192.0.2.10");
    });
    let path = Path::new("/etc/wiremesh").join(CONFIG_KEY);
    Config::parse(rendered.agent_yaml(), &path)
        .unwrap_or_else(|e| panic!("ConfigMap {CONFIG_MAP} key {CONFIG_KEY}: {e}"))
}

/// Asserts `path` lies in a writable hostPath mount of the same host directory.
fn assert_host_dir(ds: &DaemonSet, what: &str, path: &Path) {
    let (at, read_only, vol) =
        mount_of(ds, path).unwrap_or_else(|| panic!("{what} {}: not mounted", path.display()));
    let host = vol.host_path.as_ref().unwrap_or_else(|| {
        panic!(
            "{what} {}: volume {} is not a hostPath",
            path.display(),
            vol.name
        )
    });
    assert_eq!(
        Path::new(&host.path),
        at,
        "{what}: the host's directory differs from the pod's"
    );
    assert!(!read_only, "{what} {}: mounted read-only", path.display());
}

fn port_of(address: Option<SocketAddr>, key: &str) -> SocketAddr {
    address.unwrap_or_else(|| panic!("agent.yaml: {key} is off; the DaemonSet needs it"))
}

#[test]
fn every_kustomization_renders_into_known_kinds_and_fields() {
    for dir in [
        deploy_dir(),
        deploy_dir().join("base"),
        deploy_dir().join("overlays/etcd"),
    ] {
        let rendered = render(&dir);
        assert!(
            rendered.documents().count() >= 3,
            "{}: too few documents",
            dir.display()
        );
        rendered.daemonset();
        rendered.agent_yaml();
    }
}

#[test]
fn a_misspelt_field_or_an_unexpected_kind_is_refused() {
    let text = default_render().rendered_text().to_owned();
    assert!(parse(&text).is_ok(), "the rendered text parses as it is");
    let misspelt = text.replacen("hostNetwork:", "hostNetwrk:", 1);
    match parse(&misspelt) {
        Err(ManifestError::UnknownFields { kind, name, paths }) => {
            // Whichever DaemonSet the kustomize version renders first.
            assert_eq!(kind, "DaemonSet");
            assert!(
                ["kube-system/wiremesh", "kube-system/wiremesh-datapath"].contains(&name.as_str()),
                "{name}"
            );
            assert_eq!(paths, [".spec.template.spec.hostNetwrk"]);
        }
        other => panic!("hostNetwrk was not refused: {other:?}"),
    }
    let wrong_type = text.replacen("hostNetwork: true", "hostNetwork: yes please", 1);
    assert!(matches!(
        parse(&wrong_type),
        Err(ManifestError::Type { .. })
    ));
    let deployment =
        format!("{text}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n");
    assert!(matches!(
        parse(&deployment),
        Err(ManifestError::UnexpectedKind { kind, .. }) if kind == "Deployment"
    ));
}

#[test]
fn the_config_map_is_the_kubernetes_store_in_cluster() {
    let config = agent_config(&default_render());
    assert_eq!(
        config.node_name, "node-a",
        "nodeName comes from ${{NODE_NAME}}"
    );
    assert_eq!(
        config.node_ips,
        ["192.0.2.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(config.strict_mode, "strictMode");
    assert_eq!(
        config.policy.enforcement,
        wiremesh::config::Enforcement::Default
    );
    match &config.store {
        StoreConfig::Kubernetes(kube) => assert!(kube.kubeconfig.is_none(), "in-cluster"),
        other => panic!("store: {other:?}, expected kubernetes"),
    }
}

#[test]
fn the_daemonset_runs_the_agent_on_the_config_map() {
    let rendered = default_render();
    let ds = rendered.daemonset();
    let c = agent_container(ds);
    let command = c.command.clone().unwrap_or_default();
    assert_eq!(
        command[..3],
        ["wiremesh", "agent", "--config"],
        "command: {command:?}"
    );
    assert_eq!(command.len(), 4, "command: {command:?}");
    let file = Path::new(&command[3]);
    let (at, read_only, vol) = mount_of(ds, file).expect("--config: not mounted");
    let cm = vol
        .config_map
        .as_ref()
        .expect("--config: not on a ConfigMap volume");
    assert_eq!(cm.name, CONFIG_MAP);
    assert!(cm.items.is_none(), "every key at its own name");
    assert_eq!(file, at.join(CONFIG_KEY));
    assert!(read_only);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        c.image.as_deref(),
        Some(format!("wiremesh:{version}").as_str())
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let env = |name: &str| {
        let var = c.env.iter().flatten().find(|e| e.name == name);
        var.and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(env("NODE_NAME").as_deref(), Some("spec.nodeName"));
    assert_eq!(env("NODE_IP").as_deref(), Some("status.hostIP"));
    let spec = pod(ds);
    assert_eq!(spec.service_account_name.as_deref(), Some("wiremesh"));
    assert_eq!(spec.automount_service_account_token, Some(true));
}

#[test]
fn every_directory_the_agent_uses_is_the_hosts() {
    let rendered = default_render();
    let (ds, config) = (rendered.daemonset(), agent_config(&rendered));
    assert_eq!(pod(ds).host_network, Some(true), "hostNetwork");
    assert_eq!(
        pod(ds).dns_policy.as_deref(),
        Some("ClusterFirstWithHostNet")
    );
    assert_host_dir(ds, "stateDir", &config.state_dir);
    assert_host_dir(ds, "runDir", &config.run_dir);
    assert_host_dir(ds, "policy.bpfPinDir", &config.policy.bpf_pin_dir);
    assert_host_dir(
        ds,
        "the UAPI socket directory",
        Path::new("/var/run/wireguard"),
    );
    let (_, _, tun) = mount_of(ds, Path::new("/dev/net/tun")).expect("/dev/net/tun: not mounted");
    let host = tun
        .host_path
        .as_ref()
        .expect("/dev/net/tun: not a hostPath");
    assert_eq!(
        (host.path.as_str(), host.type_.as_deref()),
        ("/dev/net/tun", Some("CharDevice"))
    );
}

#[test]
fn probes_and_ports_are_the_configs() {
    let rendered = default_render();
    let (ds, config) = (rendered.daemonset(), agent_config(&rendered));
    let c = agent_container(ds);
    let health = port_of(config.health_address, "healthAddress");
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.host.as_deref(), Some(health.ip().to_string().as_str()));
        assert_eq!(
            get.port,
            IntOrString::Int(health.port().into()),
            "{path} port"
        );
    }
    let ports = c.ports.as_ref().expect("no containerPorts");
    let metrics = port_of(config.metrics_address, "metricsAddress");
    let named = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("metrics");
    assert_eq!(named.container_port, i32::from(metrics.port()));
    let annotations = ds
        .spec
        .template
        .metadata
        .as_ref()
        .expect("template metadata");
    let scrape_port = annotations
        .annotations
        .as_ref()
        .and_then(|a| a.get("prometheus.io/port"));
    assert_eq!(scrape_port, Some(&metrics.port().to_string()));
    // listenPort is the data path's (deploy_datapath.rs checks it is declared nowhere).
    assert!(
        ports.iter().all(|p| p.protocol.as_deref() != Some("UDP")),
        "the agent declares a UDP port: {ports:?}"
    );
}

#[test]
fn the_pod_is_unprivileged_with_the_units_capabilities() {
    let rendered = default_render();
    let c = agent_container(rendered.daemonset());
    let sc = c.security_context.as_ref().expect("no securityContext");
    assert_eq!(sc.privileged, Some(false), "privileged");
    let caps = sc.capabilities.as_ref().expect("no capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_owned()][..]),
        "drop ALL first"
    );
    let added: BTreeSet<String> = caps.add.iter().flatten().cloned().collect();
    let unit = systemd_capabilities();
    assert!(
        added.is_superset(&unit),
        "added {added:?}, the unit grants {unit:?}"
    );
    let allowed: BTreeSet<String> = unit
        .iter()
        .cloned()
        .chain(CONTAINER_ONLY_CAPS.iter().map(|c| c.to_string()))
        .collect();
    assert!(
        added.is_subset(&allowed),
        "added {added:?}, beyond {allowed:?}"
    );
}

#[test]
fn every_node_runs_it_and_updates_never_hang() {
    let rendered = default_render();
    let ds = rendered.daemonset();
    assert_runs_on_every_node(ds);
    let strategy = ds.spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
    // A surge pod can never be scheduled beside the old one: hostNetwork makes every
    // containerPort a hostPort (kubernetes/kubernetes#106417).
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)), "maxSurge");
    assert_eq!(
        rolling.max_unavailable,
        Some(IntOrString::Int(1)),
        "maxUnavailable"
    );
}

/// (apiGroup, resource, verbs).
type Rule = (String, String, BTreeSet<String>);
#[test]
fn the_cluster_role_grants_exactly_what_the_stores_call() {
    let rendered = default_render();
    let mut granted = BTreeSet::<Rule>::new();
    for rule in &rendered.cluster_role().rules.clone().unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let verbs = rule.verbs.iter().cloned().collect();
                assert!(
                    granted.insert((group.clone(), resource.clone(), verbs)),
                    "{resource} twice"
                );
            }
        }
    }
    let verbs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let expected: BTreeSet<Rule> = KINDS
        .iter()
        .map(|k| {
            let v = if k.plural == "nodes" {
                verbs(&["get", "list", "watch", "patch"])
            } else {
                verbs(&["list", "watch"])
            };
            (k.group.to_owned(), k.plural.to_owned(), v)
        })
        .collect();
    assert_eq!(granted, expected);
    let roles = rendered.roles();
    let [role] = roles[..] else {
        panic!("{} Roles, expected one", roles.len())
    };
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some("kube-system"),
        "identities' namespace"
    );
    let rules = role.rules.clone().unwrap_or_default();
    let identity: Vec<Rule> = rules
        .iter()
        .map(|r| {
            (
                r.api_groups.clone().unwrap_or_default().join(","),
                r.resources.clone().unwrap_or_default().join(","),
                r.verbs.iter().cloned().collect(),
            )
        })
        .collect();
    assert_eq!(
        identity,
        [(
            String::new(),
            "configmaps".into(),
            verbs(&["get", "list", "create"])
        )]
    );
    let subjects: Vec<_> = rendered
        .documents()
        .filter_map(|d| match d {
            Document::ClusterRoleBinding(b) => b.subjects.clone(),
            Document::RoleBinding(b) => b.subjects.clone(),
            _ => None,
        })
        .flatten()
        .map(|s| (s.kind, s.name, s.namespace))
        .collect();
    let agent = (
        "ServiceAccount".to_owned(),
        "wiremesh".to_owned(),
        Some("kube-system".into()),
    );
    assert_eq!(
        subjects,
        [agent.clone(), agent],
        "both bindings name the agent's account only"
    );
    assert!(
        rendered.rbac_yaml().contains("kind: ClusterRole\n"),
        "rbac_yaml holds the roles"
    );
}

#[test]
fn the_crds_serve_every_crd_kind_the_policy_loader_reads() {
    let rendered = default_render();
    let crds = rendered.crds();
    let wanted: Vec<_> = KINDS.iter().filter(|k| k.crd).collect();
    assert_eq!(
        crds.len(),
        wanted.len(),
        "one CRD per CRD kind of policy::kinds"
    );
    for kind in wanted {
        let crd = crds
            .iter()
            .find(|c| c.spec.group == kind.group && c.spec.names.plural == kind.plural)
            .unwrap_or_else(|| panic!("no CRD for {}/{}", kind.group, kind.plural));
        let name = format!("{}.{}", kind.plural, kind.group);
        assert_eq!(crd.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(crd.spec.names.kind, kind.kind);
        let scope = if kind.namespaced {
            "Namespaced"
        } else {
            "Cluster"
        };
        assert_eq!(crd.spec.scope, scope, "{name}");
        let version = |v: &str| crd.spec.versions.iter().find(|x| x.name == v);
        let stored = version(kind.version).unwrap_or_else(|| panic!("{name}: no {}", kind.version));
        assert!(
            stored.served && stored.storage,
            "{name} {}: served and stored",
            kind.version
        );
        for other in kind.also_accepted {
            let v = other.rsplit('/').next().unwrap_or(other);
            assert!(
                version(v).is_some_and(|x| x.served),
                "{name}: {other} not served"
            );
        }
        for v in &crd.spec.versions {
            assert!(
                v.subresources.as_ref().is_some_and(|s| s.status.is_some()),
                "{name} status"
            );
            let schema = v
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref());
            let spec = schema
                .and_then(|s| s.properties.as_ref()?.get("spec"))
                .expect("spec");
            assert_eq!(
                spec.x_kubernetes_preserve_unknown_fields,
                Some(true),
                "{name} spec"
            );
        }
    }
    let short = |plural: &str| {
        let crd = crds
            .iter()
            .find(|c| c.spec.names.plural == plural)
            .expect(plural);
        crd.spec.names.short_names.clone().unwrap_or_default()
    };
    assert_eq!(short("ciliumnetworkpolicies"), ["cnp"]);
    assert_eq!(short("ciliumclusterwidenetworkpolicies"), ["ccnp"]);
}

#[test]
fn the_etcd_overlay_reads_etcd_with_the_secrets_certificate_only() {
    let rendered = render(&deploy_dir().join("overlays/etcd"));
    let (ds, config) = (rendered.daemonset(), agent_config(&rendered));
    let StoreConfig::Etcd(etcd) = &config.store else {
        panic!("store: {:?}", config.store)
    };
    let tls = etcd.tls.as_ref().expect("store.etcd.tls");
    for file in [
        &tls.ca,
        tls.cert.as_ref().expect("cert"),
        tls.key.as_ref().expect("key"),
    ] {
        let (_, read_only, vol) =
            mount_of(ds, file).unwrap_or_else(|| panic!("{}: not mounted", file.display()));
        let secret = vol
            .secret
            .as_ref()
            .unwrap_or_else(|| panic!("{}: not a Secret", file.display()));
        assert_eq!(secret.secret_name.as_deref(), Some("wiremesh-etcd-tls"));
        assert!(read_only, "{}: writable", file.display());
    }
    assert_eq!(
        pod(ds).automount_service_account_token,
        Some(false),
        "no API token"
    );
    let rbac = rendered
        .documents()
        .any(|d| matches!(d, Document::ClusterRole(_) | Document::Role(_)));
    assert!(!rbac, "the etcd store calls no Kubernetes API");
    assert_host_dir(ds, "stateDir", &config.state_dir);
}
