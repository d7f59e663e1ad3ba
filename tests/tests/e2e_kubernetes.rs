//! The agent end to end on the Kubernetes store. The lab's API server is
//! `wiremesh-fake-apiserver`, a process on the underlay switch that stands in for
//! kube-apiserver (which cannot be installed here), serving HTTPS with bearer tokens and
//! enforcing the RBAC rendered from `deploy/kubernetes` for the agents' service account during
//! the whole run. Everything a cluster admin does goes through the real `kubectl`
//! (`create/replace/delete -f`): the Nodes (before any agent starts), a Namespace and its Pods,
//! a CiliumNetworkPolicy and a NetworkPolicy. Checked: pods on different nodes reach each other
//! and only WireGuard crosses the underlay between nodes; each policy denies a probe that
//! passed, follows a replaced Pod, Namespace or policy, and is lifted by its deletion; a key
//! rotation reaches the Node's annotations with no ping lost at 100/s; the API server killed and
//! restarted on its state loses no ping, the agents reconnect, and a policy created after the
//! restart is enforced. At the end the audit log shows no request of the agents refused, and
//! replaying it against deploy/'s RBAC with any single verb removed refuses some request the
//! agents made: the roles grant nothing the agent does not use. A second test runs an agent
//! under a ClusterRole without `patch` on nodes and sees it refused, live.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use wiremesh_lab::{
    marker, namespace_manifest, node_name, Host, KeyRotation, Lab, LabOptions, PodSpec, Proto,
    AGENT_USER, KUBE_API_PORT, SWITCH_IP,
};

const PORT: u16 = 8080;
const PROBE: Duration = Duration::from_millis(700);
const ENFORCED: Duration = Duration::from_secs(10);
const RECONNECT: Duration = Duration::from_secs(20);
const CLIENT: Host = Host::Pod(1, 1);
const SERVER: Host = Host::Pod(2, 1);

fn client(role: Option<&str>) -> String {
    let pod = PodSpec::new("app", "client", CLIENT);
    role.map_or(pod.clone(), |r| pod.label("role", r))
        .manifest()
}

fn server() -> String {
    PodSpec::new("app", "server", SERVER).manifest()
}

/// Ingress to the server on [`PORT`] only from pods labelled `role: <role>`.
fn cnp(role: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {{name: server-ingress, namespace: app}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{pod: server}}}}\n  ingress:\n\
         \x20 - fromEndpoints: [{{matchLabels: {{role: {role}}}}}]\n\
         \x20   toPorts: [{{ports: [{{port: \"{PORT}\", protocol: TCP}}]}}]\n"
    )
}

/// Ingress to the server only from namespaces labelled `team: <team>`.
fn netpol(team: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: from-team, namespace: app}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: server}}}}\n  policyTypes: [Ingress]\n\
         \x20 ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{team: {team}}}}}}}]}}]\n"
    )
}

fn kubectl(lab: &Lab, verb: &str, manifest: &str) {
    lab.kubectl_file(verb, manifest)
        .unwrap_or_else(|e| panic!("kubectl {verb}: {e}\n{manifest}"));
}

/// The client's probe of the server reaches `want` within [`ENFORCED`], or the test fails
/// naming `after`.
fn expect_probe(lab: &Lab, want: bool, after: &str) {
    let probe = [(CLIENT, SERVER.ip(), PORT, Proto::Tcp)];
    let got = lab.probe_until(&probe, &[want], PROBE, ENFORCED);
    let verdict = |ok: bool| if ok { "allowed" } else { "denied" };
    assert_eq!(
        got,
        [want],
        "after {after}: client -> server:{PORT} {} (expected {})",
        verdict(got[0]),
        verdict(want)
    );
}

fn node_json(lab: &Lab, node: u8) -> Value {
    let out = lab
        .kubectl_ok(&["get", "node", &node_name(node), "-o", "json"])
        .unwrap_or_else(|e| panic!("kubectl get node: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl printed no JSON ({e}): {out}"))
}

fn annotation(node: &Value, key: &str) -> String {
    node["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn wait_connected(lab: &Lab, node: u8, within: Duration) {
    lab.node(node)
        .agent()
        .wait_status("storeHealth connected", within, |s| {
            s["storeHealth"]["state"] == "connected"
        })
        .unwrap_or_else(|e| panic!("node-{node}'s store did not reconnect: {e}"));
}

#[test]
fn the_agent_runs_end_to_end_on_the_kubernetes_store_under_deploys_rbac() {
    common::require_agent();
    let options =
        LabOptions::kubernetes().key_rotation(KeyRotation::manual(Duration::from_secs(30)));
    let lab = common::lab_with(2, 1, options);
    let nodes = lab
        .kubectl_ok(&["get", "nodes", "-o", "name"])
        .expect("kubectl get nodes");
    assert_eq!(
        nodes.lines().count(),
        2,
        "Nodes created before the agents: {nodes}"
    );
    common::start_mesh(&lab);
    for node in lab.node_ids() {
        let (key, _) = common::key_and_epoch(&lab, node);
        let published = annotation(&node_json(&lab, node), "wiremesh.io/wg-pub-key");
        assert_eq!(
            published, key,
            "node-{node}'s Node annotation holds its key"
        );
    }
    kubectl(&lab, "create", &namespace_manifest("app", &[]));
    kubectl(&lab, "create", &[client(None), server()].join("---\n"));
    common::assert_ping(&lab, CLIENT, SERVER);
    common::assert_ping(&lab, SERVER, CLIENT);
    only_wireguard_between_nodes(&lab);

    let _servers = lab.serve(&[SERVER], &[PORT], &[]).expect("echo server");
    expect_probe(&lab, true, "no policy");
    policies_follow_kubectl(&lab);
    rotation_reaches_the_node_annotations(&lab);
    restart_loses_nothing(&lab);
    let records = lab.kube_api().audit().expect("audit log");
    kube_rbac::check_audit(&records, &lab.kube_api().rbac_path());
}

/// A marker exchanged both ways never shows on the underlay, and between nodes nothing but
/// WireGuard flows (the agents' HTTPS to the API server on the switch is counted apart).
fn only_wireguard_between_nodes(lab: &Lab) {
    let mark = marker();
    let capture = lab
        .switch()
        .capture("tunnel")
        .expect("tcpdump on the underlay");
    for (from, to) in [(CLIENT, SERVER), (SERVER, CLIENT)] {
        let got = lab
            .host(from)
            .tcp_send(to, &mark, common::TRAFFIC)
            .unwrap_or_else(|e| panic!("TCP {from} -> {to}: {e}"));
        assert_eq!(got, mark, "TCP {from} -> {to}");
    }
    let report = capture
        .stop()
        .and_then(|f| f.analyze(&mark))
        .expect("capture decodes");
    eprintln!("underlay: {}", report.summary());
    let api = format!("{SWITCH_IP}.{KUBE_API_PORT}");
    let other: Vec<&String> = report.other.iter().filter(|o| !o.contains(&api)).collect();
    assert!(
        !report.marker_found,
        "marker in the clear:\n{}",
        report.summary()
    );
    assert!(
        other.is_empty(),
        "non-WireGuard traffic between nodes: {other:?}"
    );
    assert!(
        report.wireguard > 0,
        "no WireGuard captured:\n{}",
        report.summary()
    );
}

/// A CiliumNetworkPolicy and a NetworkPolicy, each created, followed through replaced Pods,
/// Namespaces and policies, and deleted, all with kubectl.
fn policies_follow_kubectl(lab: &Lab) {
    kubectl(lab, "create", &cnp("allowed"));
    expect_probe(
        lab,
        false,
        "kubectl create -f a CNP admitting role=allowed only",
    );
    kubectl(lab, "replace", &client(Some("allowed")));
    expect_probe(
        lab,
        true,
        "kubectl replace -f the client Pod with role=allowed",
    );
    kubectl(lab, "delete", &client(Some("allowed")));
    expect_probe(lab, false, "kubectl delete -f the client Pod");
    kubectl(lab, "create", &client(Some("allowed")));
    expect_probe(lab, true, "kubectl create -f the client Pod again");
    kubectl(lab, "replace", &cnp("admin"));
    expect_probe(
        lab,
        false,
        "kubectl replace -f the CNP admitting role=admin only",
    );
    kubectl(lab, "delete", &cnp("admin"));
    expect_probe(lab, true, "kubectl delete -f the CNP");

    kubectl(lab, "create", &netpol("blue"));
    expect_probe(
        lab,
        false,
        "kubectl create -f a NetworkPolicy admitting team=blue",
    );
    kubectl(
        lab,
        "replace",
        &namespace_manifest("app", &[("team", "blue")]),
    );
    expect_probe(lab, true, "kubectl replace -f Namespace app with team=blue");
    kubectl(lab, "replace", &netpol("red"));
    expect_probe(
        lab,
        false,
        "kubectl replace -f the NetworkPolicy admitting team=red",
    );
    kubectl(lab, "delete", &netpol("red"));
    expect_probe(lab, true, "kubectl delete -f the NetworkPolicy");
}

/// `wiremesh keys rotate` on node 1 under a 100/s ping: the Node's annotations carry the new
/// key and epoch, and no ping is lost.
fn rotation_reaches_the_node_annotations(lab: &Lab) {
    let (ping, spec) = common::fast_ping(lab, CLIENT, SERVER, 10);
    std::thread::sleep(Duration::from_secs(1));
    let out = lab
        .node(1)
        .agent()
        .rotate_keys(Duration::from_secs(30))
        .expect("wiremesh keys rotate");
    let (key, epoch) = common::key_and_epoch(lab, 1);
    assert!(
        out.contains(&key),
        "rotate printed {out:?}, status has {key}"
    );
    let deadline = Instant::now() + ENFORCED;
    let node = loop {
        let node = node_json(lab, 1);
        let published = annotation(&node, "wiremesh.io/wg-pub-key");
        if published == key || Instant::now() > deadline {
            break node;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(annotation(&node, "wiremesh.io/wg-pub-key"), key, "{node}");
    assert_eq!(
        annotation(&node, "wiremesh.io/wg-key-epoch"),
        epoch.to_string(),
        "{node}"
    );
    common::assert_no_loss(ping, &spec, "a key rotation through Node annotations");
}

/// The API server killed and restarted on its state mid-ping: nothing lost, both agents back
/// to `connected`, and a policy created after the restart is enforced.
fn restart_loses_nothing(lab: &Lab) {
    let (ping, spec) = common::fast_ping(lab, CLIENT, SERVER, 10);
    std::thread::sleep(Duration::from_secs(1));
    lab.kube_api()
        .stop_with(nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    std::thread::sleep(Duration::from_secs(3));
    lab.kube_api().start().expect("restart on the same state");
    for node in lab.node_ids() {
        wait_connected(lab, node, RECONNECT);
    }
    let nodes = lab
        .kubectl_ok(&["get", "nodes", "-o", "name"])
        .expect("get nodes");
    assert_eq!(
        nodes.lines().count(),
        2,
        "Nodes kept across the restart: {nodes}"
    );
    kubectl(lab, "create", &cnp("admin"));
    expect_probe(lab, false, "a CNP created after the API server restarted");
    common::assert_no_loss(ping, &spec, "the API server killed and restarted");
    kubectl(lab, "delete", &cnp("admin"));
    expect_probe(lab, true, "deleting it");
}

/// deploy/'s RBAC with `patch` on nodes removed: the agent's claim of its Node is refused
/// (403 in the audit log) and its status says the store is not connected.
#[test]
fn an_agent_without_patch_on_nodes_is_refused_live() {
    common::require_agent();
    let rbac = wiremesh_lab::deploy_rbac().expect("deploy/'s RBAC");
    let rbac = kube_rbac::without_verb_on(&rbac, "nodes", "patch");
    let lab = common::lab_with(1, 1, LabOptions::kubernetes_with_rbac(rbac));
    lab.start_agents(common::READY).expect("agent starts");
    let status = lab
        .node(1)
        .agent()
        .wait_status("a store error", RECONNECT, |s| {
            s["storeHealth"]["state"] != "connected" && !s["storeHealth"].is_null()
        })
        .unwrap_or_else(|e| panic!("the agent never reported the refusal: {e}"));
    let health = status["storeHealth"].to_string();
    assert!(
        health.contains("403") || health.to_lowercase().contains("forbidden"),
        "storeHealth does not name the refusal: {health}"
    );
    let records = lab.kube_api().audit().expect("audit log");
    let refused = records.iter().any(|r| {
        r["user"] == AGENT_USER
            && r["verb"] == "patch"
            && r["resource"] == "nodes"
            && r["code"] == 403
    });
    assert!(
        refused,
        "no 403 for the agent's patch of its Node in the audit log"
    );
}

/// The audit log against the RBAC manifests, as enforced and with one verb fewer.
mod kube_rbac {
    use std::path::Path;

    use serde_json::Value;
    use wiremesh_fake_apiserver::rbac::{Authorizer, Decision};
    use wiremesh_fake_apiserver::AuditRecord;
    use wiremesh_lab::AGENT_USER;

    /// The documents of a multi-document YAML file, as JSON values.
    fn documents(text: &str) -> Vec<Value> {
        yaml_serde::Deserializer::from_str(text)
            .map(|d| {
                let v: yaml_serde::Value =
                    serde::Deserialize::deserialize(d).expect("RBAC manifests are YAML");
                serde_json::to_value(v).expect("YAML maps to JSON")
            })
            .filter(|v| !v.is_null())
            .collect()
    }

    fn render(docs: &[Value]) -> String {
        docs.iter()
            .map(|d| yaml_serde::to_string(d).expect("JSON serialises to YAML"))
            .collect::<Vec<_>>()
            .join("---\n")
    }

    fn is_role(doc: &Value) -> bool {
        matches!(doc["kind"].as_str(), Some("ClusterRole" | "Role"))
    }

    /// `rbac` with `verb` removed from every role rule on `resource`.
    pub fn without_verb_on(rbac: &str, resource: &str, verb: &str) -> String {
        let mut docs = documents(rbac);
        let mut removed = 0;
        for doc in docs.iter_mut().filter(|d| is_role(d)) {
            for rule in doc["rules"].as_array_mut().into_iter().flatten() {
                let on = rule["resources"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == resource));
                if let (true, Some(verbs)) = (on, rule["verbs"].as_array_mut()) {
                    let before = verbs.len();
                    verbs.retain(|v| v != verb);
                    removed += before - verbs.len();
                }
            }
        }
        assert!(removed > 0, "no role grants {verb} on {resource}:\n{rbac}");
        render(&docs)
    }

    /// Every (description, RBAC text) with exactly one verb of one role rule removed.
    fn one_verb_fewer(rbac: &str) -> Vec<(String, String)> {
        let docs = documents(rbac);
        let mut variants = Vec::new();
        for (d, doc) in docs.iter().enumerate().filter(|(_, d)| is_role(d)) {
            let rules = doc["rules"].as_array().cloned().unwrap_or_default();
            for (r, rule) in rules.iter().enumerate() {
                for (v, verb) in rule["verbs"].as_array().into_iter().flatten().enumerate() {
                    let mut changed = docs.clone();
                    let verbs = changed[d]["rules"][r]["verbs"]
                        .as_array_mut()
                        .expect("the rule has verbs");
                    verbs.remove(v);
                    let what = format!(
                        "{} {}: verb {verb} of rule {r} ({} {})",
                        doc["kind"], doc["metadata"]["name"], rule["apiGroups"], rule["resources"]
                    );
                    variants.push((what, render(&changed)));
                }
            }
        }
        variants
    }

    /// No request of the agents was refused, and every single verb of every role is needed by
    /// some request they made.
    pub fn check_audit(records: &[Value], rbac_path: &Path) {
        let agent: Vec<AuditRecord> = records
            .iter()
            .filter(|r| r["user"] == AGENT_USER)
            .map(|r| serde_json::from_value(r.clone()).expect("an audit record"))
            .collect();
        assert!(
            !agent.is_empty(),
            "the audit log holds no request of the agents"
        );
        let refused: Vec<&AuditRecord> = agent
            .iter()
            .filter(|r| r.code == 401 || r.code == 403)
            .collect();
        assert!(refused.is_empty(), "the agents were refused: {refused:?}");
        let rbac = std::fs::read_to_string(rbac_path)
            .unwrap_or_else(|e| panic!("{}: {e}", rbac_path.display()));
        let enforced = Authorizer::from_yaml(&rbac).expect("the enforced RBAC loads");
        for r in &agent {
            let decision = enforced.authorize(&r.attributes());
            assert_eq!(decision, Decision::Allow, "the replay disagrees on {r:?}");
        }
        let unused = unused_verbs(&rbac, &agent);
        assert!(
            unused.is_empty(),
            "verbs the agents never used in this run (remove them from deploy/): {unused:#?}"
        );
        // Control: a verb the agent never sends, added to the first role rule, is found.
        let mut docs = documents(&rbac);
        let role = docs.iter_mut().find(|d| is_role(d)).expect("a role");
        role["rules"][0]["verbs"]
            .as_array_mut()
            .expect("verbs")
            .push("deletecollection".into());
        let extra = unused_verbs(&render(&docs), &agent);
        assert!(
            extra.len() == 1 && extra[0].contains("deletecollection"),
            "the unused-verb detector missed an added verb: {extra:#?}"
        );
    }

    /// The verbs whose removal (one at a time) refuses none of `agent`'s requests.
    fn unused_verbs(rbac: &str, agent: &[AuditRecord]) -> Vec<String> {
        let variants = one_verb_fewer(rbac);
        assert!(!variants.is_empty(), "no role rule with verbs in:\n{rbac}");
        let mut unused = Vec::new();
        for (what, text) in variants {
            let authorizer = Authorizer::from_yaml(&text).expect("a modified RBAC loads");
            if agent
                .iter()
                .all(|r| authorizer.authorize(&r.attributes()) == Decision::Allow)
            {
                unused.push(what);
            }
        }
        unused
    }
}
