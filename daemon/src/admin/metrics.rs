//! Prometheus metrics, `wiremesh_` prefixed, built at scrape time from the same views the admin
//! API reads (this node's key, the store's health, policy) and from the reconcile loop's latest
//! read of the data path (at most one resync, 5 s, old). A scrape must never reach the data path:
//! the metrics port faces the network, and scrapes must not cost packets. Served on the admin
//! socket at `/metrics` and, when `metricsAddress` is set, on that TCP address (which serves
//! nothing else).

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

use tokio::net::TcpListener;
use tokio::sync::watch;
use wiremesh_datapath::listen::Limits;
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
    /// The cluster mesh as the agent last published it.
    pub clustermesh: watch::Receiver<crate::api::ClusterMeshStatus>,
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

/// Serves `GET /metrics` only (never the admin endpoints) on `listener`, for Prometheus.
pub fn serve(
    listener: Arc<TcpListener>,
    view: Arc<MetricsView>,
    limits: Limits,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    super::tcp::serve("metrics", listener, limits, move |req| {
        let answer = scrape(&req, &view);
        async move { answer }
    })
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
    register_clustermesh(&mut registry, view);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

/// Per remote cluster of `clusterMesh`: admitted or refused, its store connected, its nodes
/// that are peers, its records refused.
fn register_clustermesh(registry: &mut Registry, view: &MetricsView) {
    let status = view.clustermesh.borrow().clone();
    let admitted = Family::<ClusterLabels, Gauge<i64>>::default();
    let connected = Family::<ClusterLabels, Gauge<i64>>::default();
    let nodes = Family::<ClusterLabels, Gauge<i64>>::default();
    let refused = Family::<ClusterLabels, Gauge<i64>>::default();
    for c in &status.clusters {
        let labels = ClusterLabels {
            cluster: c.name.clone(),
        };
        let is_admitted = c.state == "admitted";
        admitted.get_or_create(&labels).set(i64::from(is_admitted));
        if is_admitted {
            connected.get_or_create(&labels).set(i64::from(c.connected));
            nodes.get_or_create(&labels).set(c.nodes as i64);
            refused
                .get_or_create(&labels)
                .set(c.refused_records.len() as i64);
        }
    }
    registry.register(
        "clustermesh_remote_admitted",
        "1 if the remote cluster is in the mesh, 0 if it was refused (wiremesh clustermesh status says why)",
        admitted,
    );
    registry.register(
        "clustermesh_remote_connected",
        "1 if the remote cluster's store answers (its last known nodes stay peers either way)",
        connected,
    );
    registry.register(
        "clustermesh_remote_nodes",
        "The remote cluster's nodes that are peers of this one",
        nodes,
    );
    registry.register(
        "clustermesh_remote_refused_records",
        "The remote cluster's node records refused here",
        refused,
    );
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
#[path = "metrics_tests.rs"]
mod tests;
