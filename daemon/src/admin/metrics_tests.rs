use std::collections::HashMap;

use keymgr::store::StoreHealth;
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::uapi::client::UapiClient;
use wiremesh_enforce::Reason;

use super::*;
use crate::admin::encrypt::NodeFacts;
use crate::admin::view::OwnKeyView;

fn view(policy: PolicyView, totals: PolicyTotals) -> MetricsView {
    let own = OwnKeyView {
        public: keymgr::PrivateKey::generate().public_key(),
        epoch: 7,
        created: UNIX_EPOCH,
        next: None,
        next_rotation: None,
    };
    let node = EncryptView {
        facts: NodeFacts {
            interface: "wm0".into(),
            mtu: 1420,
            node_name: "n1".into(),
            cluster_name: "c".into(),
            store: "test".into(),
        },
        // Never asked: metrics read views only.
        datapath: Arc::new(Datapath::Process(UapiClient::new("/nonexistent"))),
        store_health: watch::channel(StoreHealth::Connected).1,
        snapshots: watch::channel(Default::default()).1,
        own: View::fixed(own),
        names: View::fixed(Arc::new(HashMap::new())),
        strict: watch::channel(Default::default()).1,
        health: watch::channel(Default::default()).1,
    };
    MetricsView {
        node: Arc::new(node),
        device: watch::channel(None).1,
        policy: View::fixed(policy),
        totals: View::fixed(totals),
        flows: Arc::new(wiremesh_l7::flows::FlowLog::default()),
        proxy_stats: watch::channel(None).1,
        clustermesh: watch::channel(Default::default()).1,
    }
}

/// Each remote cluster gets its gauges; a refused one is only `admitted 0`.
#[test]
fn remote_clusters_are_reported_per_cluster() {
    use crate::api::clustermesh::{ClusterMeshStatus, RemoteClusterStatus};
    let mut view = view(PolicyView::default(), PolicyTotals::default());
    let status = ClusterMeshStatus {
        clusters: vec![
            RemoteClusterStatus {
                name: "c2".into(),
                state: "admitted".into(),
                connected: false,
                nodes: 3,
                refused_records: vec!["node node-9: bad".into()],
                ..Default::default()
            },
            RemoteClusterStatus {
                name: "c3".into(),
                state: "refused".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    view.clustermesh = watch::channel(status).1;
    let text = super::render(&view).unwrap();
    for line in [
        "wiremesh_clustermesh_remote_admitted{cluster=\"c2\"} 1",
        "wiremesh_clustermesh_remote_admitted{cluster=\"c3\"} 0",
        "wiremesh_clustermesh_remote_connected{cluster=\"c2\"} 0",
        "wiremesh_clustermesh_remote_nodes{cluster=\"c2\"} 3",
        "wiremesh_clustermesh_remote_refused_records{cluster=\"c2\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    assert!(!text.contains("wiremesh_clustermesh_remote_nodes{cluster=\"c3\"}"));
}

/// Flows are counted by verdict, the kernel's and the proxy's together, and the proxy's
/// latency buckets become the histogram (cumulative, in seconds).
#[test]
fn flows_are_counted_by_verdict_and_http_latency_is_a_histogram() {
    use wiremesh_l7::flows::{Flow, FlowEndpoint, FlowLog, Verdict};
    let (tx, rx) = watch::channel(None);
    let mut view = view(PolicyView::default(), PolicyTotals::default());
    view.proxy_stats = rx;
    for verdict in [Verdict::Dropped, Verdict::Dropped, Verdict::Forwarded] {
        view.flows.record(Flow::now(
            FlowEndpoint::default(),
            FlowEndpoint::default(),
            verdict,
        ));
    }
    let text = render(&view).unwrap();
    assert!(
        text.contains("wiremesh_http_request_duration_seconds_count 0"),
        "no proxy: an empty histogram\n{text}"
    );
    // The proxy's own log: one forwarded request of 3 ms, one of 0.2 ms, one denied.
    let proxy = FlowLog::default();
    for (verdict, ms) in [
        (Verdict::Forwarded, 3.0),
        (Verdict::Forwarded, 0.2),
        (Verdict::Dropped, 0.1),
    ] {
        let mut flow = Flow::now(FlowEndpoint::default(), FlowEndpoint::default(), verdict);
        flow.l7 = Some(wiremesh_l7::flows::L7 {
            method: "GET".into(),
            path: "/".into(),
            status: 200,
            latency_ms: ms,
        });
        proxy.record(flow);
    }
    tx.send_replace(Some(Arc::new(proxy.snapshot(1))));
    let text = render(&view).unwrap();
    for line in [
        "wiremesh_flows_total{verdict=\"DROPPED\"} 3",
        "wiremesh_flows_total{verdict=\"FORWARDED\"} 3",
        "# TYPE wiremesh_http_request_duration_seconds histogram",
        "wiremesh_http_request_duration_seconds_count 3",
        "wiremesh_http_request_duration_seconds_bucket{le=\"0.0005\"} 2",
        "wiremesh_http_request_duration_seconds_bucket{le=\"0.0025\"} 2",
        "wiremesh_http_request_duration_seconds_bucket{le=\"0.005\"} 3",
        "wiremesh_http_request_duration_seconds_bucket{le=\"+Inf\"} 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    let sum = text
        .lines()
        .find_map(|l| l.strip_prefix("wiremesh_http_request_duration_seconds_sum "))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("a sum");
    assert!((sum - 0.0033).abs() < 1e-6, "{sum}");
}

#[test]
fn policy_endpoints_and_counters_come_from_the_views() {
    let policy = PolicyView {
        generation: 3,
        endpoints_enforced: 2,
        ..Default::default()
    };
    let counter = wiremesh_enforce::Counter {
        ifindex: 9,
        ingress: true,
        allowed: false,
        reason: Reason::PolicyDeny,
        packets: 5,
        bytes: 500,
    };
    let totals = PolicyTotals {
        load_failures: 1,
        apply_failures: 0,
        packets: vec![("x/a".into(), counter)],
    };
    let text = render(&view(policy, totals)).unwrap();
    for want in [
        "wiremesh_key_epoch 7\n",
        "wiremesh_store_up 1\n",
        "wiremesh_policy_generation 3\n",
        "wiremesh_policy_load_failures_total 1\n",
        "wiremesh_policy_endpoints{enforced=\"true\"} 2\n",
        "wiremesh_policy_packets_total{endpoint=\"x/a\",direction=\"ingress\",verdict=\"dropped\",reason=\"policy-deny\"} 5\n",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    // A label no endpoint carries is not shown (as when each endpoint counted itself).
    assert!(!text.contains("enforced=\"false\""), "{text}");
}
