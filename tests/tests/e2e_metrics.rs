//! `/metrics` matches its documentation: the list of metrics in docs/config.md (the
//! `metricsAddress` row) is parsed here, and a running lab agent with peers, traffic and a policy
//! in force is scraped on both its admin socket and its `metricsAddress`. Every documented family
//! must be present with samples, the type its name promises (`_total`: counter, otherwise gauge)
//! and the labels the docs list; no undocumented `wiremesh_` family may exist. So documentation
//! and code cannot drift apart, whoever adds a metric.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wiremesh_lab::{
    documented_metrics, namespace_manifest, node_ip, parse_exposition, DocumentedMetric,
    Exposition, Host, LabOptions, PodSpec,
};

const METRICS_PORT: u16 = 9871;
const SETTLE: Duration = Duration::from_secs(30);

const POLICY: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: demo}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
"#;

fn docs() -> Vec<DocumentedMetric> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let documented = documented_metrics(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(
        documented.len() >= 10,
        "{path} documents only {documented:?}: the parser lost the list"
    );
    documented
}

/// The label names of one sample's label text (`a="x",b="y"`).
fn label_names(labels: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        names.insert(name.trim_start_matches(',').trim().to_owned());
        // Skip the quoted value, honouring backslash escapes.
        let mut escaped = false;
        let end = after
            .char_indices()
            .find(|&(_, c)| {
                let done = c == '"' && !escaped;
                escaped = c == '\\' && !escaped;
                done
            })
            .map_or(after.len(), |(i, _)| i + 1);
        rest = &after[end..];
    }
    names
}

/// Everything wrong with `scrape` against the documented list; empty when it matches.
fn problems(scrape: &Exposition, documented: &[DocumentedMetric]) -> Vec<String> {
    let mut out = Vec::new();
    for doc in documented {
        let (family, kind) = doc.family();
        let Some(f) = scrape.get(family) else {
            out.push(format!("{} is documented but not exposed", doc.name));
            continue;
        };
        if f.kind != kind {
            out.push(format!(
                "{} is a {}, its name promises a {kind}",
                doc.name, f.kind
            ));
        }
        if f.samples.is_empty() {
            out.push(format!("{} has no sample", doc.name));
        }
        let want: BTreeSet<String> = doc.labels.iter().cloned().collect();
        for (name, labels, _) in &f.samples {
            let mut got = label_names(labels);
            // A histogram's buckets carry their bound besides the documented labels.
            if kind == "histogram" {
                got.remove("le");
            }
            if got != want {
                out.push(format!("{name} has labels {got:?}, documented {want:?}"));
            }
        }
    }
    let families: BTreeSet<&str> = documented.iter().map(|d| d.family().0).collect();
    for name in scrape.keys().filter(|n| n.starts_with("wiremesh_")) {
        if !families.contains(name.as_str()) {
            out.push(format!(
                "{name} is exposed but not documented in docs/config.md (metricsAddress)"
            ));
        }
    }
    out
}

/// Node `node` links (by SIGHUP) a remote cluster read from a directory of its own, so that the
/// per-cluster metrics have a sample; this cluster becomes `clusterID: 1`.
fn link_a_remote_cluster(lab: &wiremesh_lab::Lab, node: u8) {
    let remote = lab.dir().join("remote-c9");
    std::fs::create_dir_all(&remote).expect("the remote cluster's store");
    let yaml = format!(
        "{}clusterID: 1\nclusterMesh:\n  clusters:\n  - {{name: c9, id: 9, podCIDRs: [10.245.0.0/16], dir: {{path: {}}}}}\n",
        lab.node(node).agent().config_yaml(),
        remote.display()
    );
    lab.node(node)
        .agent()
        .reload_with(&yaml)
        .expect("reloading with a remote cluster");
}

#[test]
fn every_documented_metric_is_exposed_and_nothing_else() {
    let documented = docs();
    common::require_agent();
    let lab = common::lab_with(2, 1, LabOptions::default().metrics_port(METRICS_PORT));
    common::start_mesh(&lab);
    common::assert_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
    common::assert_ping(&lab, Host::Pod(2, 1), Host::Pod(1, 1));
    link_a_remote_cluster(&lab, 2);
    let a = PodSpec::new("demo", "a", Host::Pod(1, 1)).label("app", "a");
    let b = PodSpec::new("demo", "b", Host::Pod(2, 1)).label("app", "b");
    let objects = [namespace_manifest("demo", &[]), a.manifest(), b.manifest()].join("---\n");
    lab.node(1).agent().apply(&objects).expect("apply the pods");
    lab.node(1).agent().apply(POLICY).expect("apply the policy");

    // Set-up: the policy reaches node-2's enforcement and counts packets (bounded wait).
    let tcp = format!("{}:{METRICS_PORT}", node_ip(2));
    let deadline = Instant::now() + SETTLE;
    let (admin, network) = loop {
        // Traffic for the packet counters; the policy allows it, but it may be settling.
        let _ = common::check_ping(&lab, Host::Pod(1, 1), Host::Pod(2, 1));
        let scrape = |text: Result<String, _>, what: &str| {
            let text = text.unwrap_or_else(|e| panic!("scraping node-2's {what}: {e}"));
            parse_exposition(&text).unwrap_or_else(|e| panic!("node-2's {what}: {e}"))
        };
        let admin = scrape(lab.node(2).agent().metrics(), "admin socket /metrics");
        let network = scrape(lab.node(2).metrics_tcp(&tcp), "metricsAddress /metrics");
        let left = problems(&admin, &documented);
        if left.is_empty() || Instant::now() >= deadline {
            break (admin, network);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let admin_problems = problems(&admin, &documented);
    assert!(
        admin_problems.is_empty(),
        "node-2's /metrics (admin socket) against docs/config.md:\n  {}",
        admin_problems.join("\n  ")
    );
    let network_problems = problems(&network, &documented);
    assert!(
        network_problems.is_empty(),
        "node-2's /metrics on metricsAddress {tcp} against docs/config.md:\n  {}",
        network_problems.join("\n  ")
    );
    assert_eq!(
        admin.keys().collect::<Vec<_>>(),
        network.keys().collect::<Vec<_>>(),
        "the admin socket and metricsAddress expose different families"
    );
    eprintln!(
        "{} documented families present with their types and labels on both endpoints",
        documented.len()
    );
}

#[test]
fn the_checker_sees_drift() {
    // The detector's control: an undocumented family, a missing one, a wrong type and a wrong
    // label set are each reported.
    let documented = vec![
        DocumentedMetric {
            name: "wiremesh_peers".into(),
            labels: vec![],
        },
        DocumentedMetric {
            name: "wiremesh_gone_total".into(),
            labels: vec![],
        },
        DocumentedMetric {
            name: "wiremesh_x_total".into(),
            labels: vec!["a".into()],
        },
    ];
    let scrape = parse_exposition(
        "# TYPE wiremesh_peers counter\nwiremesh_peers_total 1\n\
         # TYPE wiremesh_x counter\nwiremesh_x_total{b=\"1\"} 1\n\
         # TYPE wiremesh_new gauge\nwiremesh_new 1\n",
    )
    .expect("valid exposition");
    let p = problems(&scrape, &documented);
    assert_eq!(p.len(), 4, "{p:#?}");
    assert!(p
        .iter()
        .any(|s| s.contains("wiremesh_gone_total is documented but not exposed")));
    assert!(p.iter().any(|s| s.contains("wiremesh_peers is a counter")));
    assert!(p.iter().any(|s| s.contains("has labels")));
    assert!(p
        .iter()
        .any(|s| s.contains("wiremesh_new is exposed but not documented")));
    assert_eq!(
        label_names(r#"endpoint="demo/b",reason="a \"q\", x",verdict="allowed""#),
        ["endpoint", "reason", "verdict"].map(String::from).into()
    );
}
