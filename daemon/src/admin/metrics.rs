//! Prometheus metrics, `wiremesh_` prefixed, built at scrape time from the same views the admin
//! API reads (this node's key, the store's health, policy) and from the reconcile loop's latest
//! read of the data path (at most one resync, 5 s, old). A scrape must never reach the data path:
//! the metrics port faces the network, and scrapes must not cost packets. Served on the admin
//! socket at `/metrics` and, when `metricsAddress` is set, on that TCP address (which serves
//! nothing else).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wiremesh_datapath::listen::{self, Limits};
use wiremesh_datapath::model::{DeviceView, PeerState};

use super::encrypt::EncryptView;
use super::server::{Reply, Routes};
use super::view::{PeerNames, PolicyTotals, PolicyView, View};
use crate::api::paths;

/// What the metrics are built from: views only, never the data path itself.
pub struct MetricsView {
    /// This node's key, the peers' names, the store's health, strict mode.
    pub node: Arc<EncryptView>,
    /// The data path as the reconcile loop last read it (private key removed), so that a
    /// scrape never costs the data path a UAPI round trip.
    pub device: watch::Receiver<Option<Arc<DeviceView>>>,
    pub policy: View<PolicyView>,
    pub totals: View<PolicyTotals>,
    /// The kernel's flow events, counted per verdict as they arrive.
    pub flows: Arc<wiremesh_l7::flows::FlowLog>,
    /// The L7 proxy's counters (per verdict, request latency) as last read, every 5 s.
    pub proxy_stats: watch::Receiver<Option<Arc<wiremesh_l7::flows::Stats>>>,
}

/// The latency histogram the proxy keeps, as Prometheus's histogram in seconds (empty while
/// no proxy answers).
#[derive(Debug)]
struct ProxyLatency(Option<Arc<wiremesh_l7::flows::Stats>>);

impl prometheus_client::encoding::EncodeMetric for ProxyLatency {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let bounds = wiremesh_l7::flows::LATENCY_BOUNDS_MS
            .iter()
            .map(|ms| ms / 1000.0)
            .chain(std::iter::once(f64::INFINITY));
        let (sum, count, buckets) = match &self.0 {
            Some(s) => (
                s.latency_sum_ms / 1000.0,
                s.latency_count,
                bounds.zip(s.latency_buckets.iter().copied()).collect(),
            ),
            None => (0.0, 0, bounds.map(|b| (b, 0)).collect::<Vec<_>>()),
        };
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

/// Flows seen (kernel connection and drop events, HTTP requests) by verdict, and HTTP latency.
fn register_flows(registry: &mut Registry, view: &MetricsView) {
    use wiremesh_l7::flows::Verdict;
    let flows = Family::<VerdictLabels, Counter<u64, AtomicU64>>::default();
    let proxy = view.proxy_stats.borrow().clone();
    for (verdict, kernel) in view.flows.verdict_counts() {
        let proxied = proxy.as_ref().map_or(0, |s| match verdict {
            Verdict::Forwarded => s.forwarded,
            Verdict::Dropped => s.dropped,
            Verdict::Audit => s.audit,
            Verdict::Error => s.error,
        });
        let n = kernel + proxied;
        let verdict = match verdict {
            Verdict::Forwarded => "FORWARDED",
            Verdict::Dropped => "DROPPED",
            Verdict::Audit => "AUDIT",
            Verdict::Error => "ERROR",
        };
        flows.get_or_create(&VerdictLabels { verdict }).inc_by(n);
    }
    registry.register(
        "flows",
        "Flows seen on this node (new connections, drops, HTTP requests), by verdict",
        flows,
    );
    registry.register(
        "http_request_duration_seconds",
        "Latency of HTTP requests through the L7 proxy, from the request to the response head",
        ProxyLatency(proxy),
    );
}

/// `GET /metrics` on the admin socket.
pub fn register(routes: &mut Routes, view: Arc<MetricsView>) {
    routes.get(paths::METRICS, move |_| {
        let reply = reply(&view);
        async move { reply }
    });
}

fn reply(view: &MetricsView) -> Reply {
    match render(view) {
        Ok(s) => Reply::ok(s),
        Err(e) => Reply::error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// Why `metricsAddress` could not be served.
#[derive(Debug, thiserror::Error)]
#[error("binding metricsAddress {addr}")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `metricsAddress` (network-facing), so that a taken port fails start-up.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves `GET /metrics` only (never the admin endpoints) on `listener`, for Prometheus: the
/// accept loop, which the agent runs as a supervised task (a restarted loop serves the same
/// listening socket). It only ends by panicking.
pub fn serve(
    listener: Arc<TcpListener>,
    view: Arc<MetricsView>,
    limits: Limits,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    listen::accept_loop(
        "metrics",
        limits.max_conns,
        move || {
            let listener = listener.clone();
            async move { listener.accept().await.map(|(s, _)| s) }
        },
        move |stream: TcpStream, permit| {
            let view = view.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let view = view.clone();
                    async move { Ok::<_, Infallible>(scrape(&req, &view)) }
                });
                crate::http::serve_http(stream, limits, svc).await;
                drop(permit);
            });
        },
    )
}

fn scrape(req: &Request<Incoming>, view: &MetricsView) -> Response<Full<Bytes>> {
    let reply = match (req.method(), req.uri().path()) {
        (&Method::GET, paths::METRICS) => reply(view),
        (_, paths::METRICS) => Reply::with(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET /metrics is served here\n".into(),
        ),
        _ => Reply::with(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let mut r = Response::new(Full::new(Bytes::from(reply.body)));
    *r.status_mut() = reply.code;
    r
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PacketLabels {
    endpoint: String,
    direction: &'static str,
    verdict: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    direction: &'static str,
    family: &'static str,
}

/// Strict mode: whether the guard table is in force, and its drop counters (read by the agent
/// every 2 s; a scrape never runs `nft`).
fn register_strict(registry: &mut Registry, view: &MetricsView) {
    let strict = view.node.strict.borrow().clone();
    let on = Gauge::<i64>::default();
    on.set(i64::from(strict.enabled && strict.installed));
    registry.register(
        "strict_mode_enforced",
        "1 while the strict-mode table inet wiremesh is in force",
        on,
    );
    let drops = Family::<DropLabels, Counter<u64, AtomicU64>>::default();
    for direction in crate::strict::DIRECTIONS {
        for family in crate::strict::FAMILIES {
            let labels = DropLabels {
                direction: direction.as_str(),
                family: family.as_str(),
            };
            drops
                .get_or_create(&labels)
                .inc_by(strict.drops.get(direction, family));
        }
    }
    registry.register(
        "strict_mode_drops",
        "Packets strict mode dropped: egress = to a remote pod by an interface other than the tunnel, ingress = from a remote pod's address by an interface other than the tunnel",
        drops,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    enforced: &'static str,
}

/// Policy: generation in force, refusals, enforcement failures, endpoints, and the eBPF
/// programs' packet counters per endpoint, direction, verdict and reason.
fn register_policy(registry: &mut Registry, view: &MetricsView) {
    let policy = view.policy.get();
    let c = view.totals.get();
    let generation = Gauge::<i64>::default();
    generation.set(policy.generation as i64);
    registry.register(
        "policy_generation",
        "Object sets loaded since start (the policy in force)",
        generation,
    );
    for (name, help, value) in [
        (
            "policy_load_failures",
            "Object sets from the store that did not load (the previous stayed in force)",
            c.load_failures,
        ),
        (
            "policy_apply_failures",
            "eBPF map updates that failed (endpoints failed closed)",
            c.apply_failures,
        ),
    ] {
        let counter = Counter::<u64, AtomicU64>::default();
        counter.inc_by(value);
        registry.register(name, help, counter);
    }
    let endpoints = Family::<EndpointLabels, Gauge<i64>>::default();
    for (enforced, n) in [
        ("true", policy.endpoints_enforced),
        ("false", policy.endpoints_failed),
    ] {
        // A label appears only once an endpoint carries it, as with one `inc` per endpoint.
        if n > 0 {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            endpoints.get_or_create(&EndpointLabels { enforced }).set(n);
        }
    }
    registry.register(
        "policy_endpoints",
        "This node's endpoints, by whether their interface is enforced",
        endpoints,
    );
    let packets = Family::<PacketLabels, Counter<u64, AtomicU64>>::default();
    for (endpoint, counter) in &c.packets {
        let labels = PacketLabels {
            endpoint: endpoint.clone(),
            direction: if counter.ingress { "ingress" } else { "egress" },
            verdict: if counter.allowed {
                "allowed"
            } else {
                "dropped"
            },
            reason: counter.reason.as_str(),
        };
        packets.get_or_create(&labels).inc_by(counter.packets);
    }
    registry.register(
        "policy_packets",
        "Packets judged by the eBPF policy programs",
        packets,
    );
}

/// The Prometheus text for the views' current values.
pub fn render(view: &MetricsView) -> Result<String, std::fmt::Error> {
    let device = view.device.borrow().clone();
    let (device_peers, taken) = match &device {
        Some(v) => (v.state.peers.as_slice(), v.taken),
        None => (&[][..], UNIX_EPOCH),
    };
    let names = view.node.names.get();
    let own = view.node.own.get();
    let store_up = matches!(
        *view.node.store_health.borrow(),
        keymgr::store::StoreHealth::Connected
    );

    let mut registry = Registry::with_prefix("wiremesh");
    let peers = Gauge::<i64>::default();
    peers.set(device_peers.len() as i64);
    registry.register("peers", "Peers configured in the data path", peers);
    let epoch = Gauge::<i64>::default();
    epoch.set(i64::try_from(own.epoch).unwrap_or(i64::MAX));
    registry.register("key_epoch", "Serial of this node's current key", epoch);
    let rotating = Gauge::<i64>::default();
    rotating.set(i64::from(own.next.is_some()));
    registry.register(
        "key_rotation_in_progress",
        "1 while a successor key is announced",
        rotating,
    );
    let up = Gauge::<i64>::default();
    up.set(i64::from(store_up));
    registry.register("store_up", "1 if the store is reachable", up);
    let view_at = Gauge::<i64>::default();
    view_at.set(taken.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64);
    registry.register(
        "datapath_view_timestamp_seconds",
        "Unix time of the data-path read the peer metrics come from (0: none yet)",
        view_at,
    );
    register_peers(&mut registry, device_peers, &names);
    if let Some(stats) = device.as_ref().and_then(|v| v.state.handshakes) {
        let handshakes = Family::<HandshakeLabels, Counter<u64, AtomicU64>>::default();
        for (outcome, n) in stats.outcomes() {
            handshakes
                .get_or_create(&HandshakeLabels { outcome })
                .inc_by(n);
        }
        registry.register(
            "handshakes",
            "Handshake initiations received from the underlay, by what the flood defence did with them",
            handshakes,
        );
    }
    register_policy(&mut registry, view);
    register_strict(&mut registry, view);
    register_flows(&mut registry, view);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Per peer, named by node where the store knows the key: bytes and the latest handshake.
fn register_peers(registry: &mut Registry, device_peers: &[PeerState], names: &PeerNames) {
    let rx = Family::<PeerLabels, Counter<u64, AtomicU64>>::default();
    let tx = Family::<PeerLabels, Counter<u64, AtomicU64>>::default();
    let handshake = Family::<PeerLabels, Gauge<i64>>::default();
    for p in device_peers {
        let labels = PeerLabels {
            node: names
                .get(&p.public_key)
                .map_or_else(|| p.public_key.to_base64(), |i| i.node.clone()),
        };
        rx.get_or_create(&labels).inc_by(p.rx_bytes);
        tx.get_or_create(&labels).inc_by(p.tx_bytes);
        let at = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        handshake.get_or_create(&labels).set(at as i64);
    }
    registry.register(
        "peer_rx_bytes",
        "Bytes received from a peer (decrypted)",
        rx,
    );
    registry.register(
        "peer_tx_bytes",
        "Bytes sent to a peer (before encryption)",
        tx,
    );
    registry.register(
        "peer_last_handshake_timestamp_seconds",
        "Unix time of the latest handshake with a peer (0: never)",
        handshake,
    );
}

#[cfg(test)]
mod tests {
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
        }
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
}
