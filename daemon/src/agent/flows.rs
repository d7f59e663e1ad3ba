//! Flow visibility (the supervised task `flows`): the eBPF programs' flow events (new
//! connections allowed or handed to the proxy, every drop) and the L7 proxy's request records
//! are gathered into one bounded ring, [`FlowLog`], that `wiremesh observe` reads through the
//! admin API. Kernel events are named here (pods, labels, identities, the policy that decided)
//! from the policy in force. The proxy's records are brought in only while someone observes
//! ([`Observers`]); its counters (per verdict, request latency) are read every 5 s for metrics.
//!
//! It must never slow the data path: the programs write to a ring buffer that loses events when
//! full, and this task only reads; memory is the ring's capacity, whether anyone observes or not;
//! the proxy does no work per request for the agent unless someone observes.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use policy::{Bundle, Compiled, Direction, Protocol};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use wiremesh_enforce::events::{self, FlowEvent};
use wiremesh_enforce::Reason;
use wiremesh_l7::client::ProxyClient;
use wiremesh_l7::flows::{Flow, FlowEndpoint, FlowLog, Stats, Verdict, L4};

use super::policy::PolicyState;
use crate::admin::flows::Observers;

/// Shortest time between two reads of the proxy's records while someone observes: under load
/// they come in batches (about one read per interval), not one read per request.
const PROXY_BATCH: Duration = Duration::from_millis(100);
/// How long the proxy's records keep being read after the last `observe` request.
const OBSERVED_FOR: Duration = Duration::from_secs(30);
/// How often the proxy's counters are read for metrics.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// How long to wait before reading a proxy or ring buffer that is not there yet.
const RETRY: Duration = Duration::from_secs(1);

pub struct FlowCollector {
    pub node: String,
    pub pin_dir: PathBuf,
    pub proxy_socket: PathBuf,
    pub policy: watch::Receiver<Arc<PolicyState>>,
    pub log: Arc<FlowLog>,
    pub observers: Arc<Observers>,
    /// The proxy's counters as last read (`None`: no proxy answering), for metrics.
    pub proxy_stats: Arc<watch::Sender<Option<Arc<Stats>>>>,
}

impl FlowCollector {
    /// Runs the readers; returns only if one fails for good.
    pub async fn run(self) -> Result<()> {
        tokio::try_join!(self.kernel(), self.proxy(), self.stats()).map(|_| ())
    }

    /// The programs' ring buffer, read whenever it is readable.
    async fn kernel(&self) -> Result<()> {
        let ring = loop {
            match events::open_events(&self.pin_dir) {
                Ok(ring) => break ring,
                // The policy loop pins it when it loads the programs.
                Err(_) => tokio::time::sleep(RETRY).await,
            }
        };
        // SAFETY: the ring buffer owns its map fd, which stays open and the same for as long
        // as the `RingBuf` lives, and the `AsyncFd` owns the `RingBuf`.
        let mut ring =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(std::io::Error::from)
                .context("polling the flow event ring buffer")?;
        tracing::debug!(fd = ring.get_ref().as_raw_fd(), "reading flow events");
        loop {
            let mut ready = ring.readable_mut().await?;
            let events = events::drain(ready.get_inner_mut());
            ready.clear_ready();
            let state = self.policy.borrow().clone();
            for event in events {
                self.log.record(describe(&event, &state, &self.node));
            }
        }
    }

    /// The proxy's records: nothing while nobody observes; from the first request on, what
    /// the proxy's ring holds after the last record brought in, then a read every
    /// [`PROXY_BATCH`] until nobody has asked for [`OBSERVED_FOR`].
    async fn proxy(&self) -> Result<()> {
        let client = ProxyClient::new(&self.proxy_socket);
        let mut asked = self.observers.asked.subscribe();
        let mut after = 0;
        loop {
            if asked.changed().await.is_err() {
                return Ok(());
            }
            let mut last_ask = tokio::time::Instant::now();
            while last_ask.elapsed() < OBSERVED_FOR {
                let started = tokio::time::Instant::now();
                let ask = *asked.borrow_and_update();
                // The proxy may have restarted since the last read (two O(1) calls a read).
                after = restarted_from(&client, after).await;
                if let Some(newest) = self.bring_in(&client, after).await {
                    after = newest;
                }
                self.observers.synced.send_replace(ask);
                let next = started + PROXY_BATCH;
                tokio::select! {
                    changed = asked.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        last_ask = tokio::time::Instant::now();
                        tokio::time::sleep_until(next).await;
                    }
                    _ = tokio::time::sleep_until(next) => {}
                }
            }
        }
    }

    /// Keeps the proxy's records after `after` in the log (uncounted: the proxy counts them);
    /// returns the new `after` (`None`: the proxy did not answer).
    async fn bring_in(&self, client: &ProxyClient, mut after: u64) -> Option<u64> {
        match client.flows(after, Duration::ZERO).await {
            Ok(flows) => {
                for flow in flows {
                    // A restarted proxy numbers from 1 again.
                    if flow.seq <= after && after != 0 {
                        after = 0;
                    }
                    after = after.max(flow.seq);
                    self.log.keep(flow);
                }
                Some(after)
            }
            Err(_) => None,
        }
    }

    /// The proxy's counters, every [`STATS_EVERY`] (O(1) for the proxy).
    async fn stats(&self) -> Result<()> {
        let client = ProxyClient::new(&self.proxy_socket);
        loop {
            let stats = client.stats().await.ok().map(Arc::new);
            self.proxy_stats.send_replace(stats);
            tokio::time::sleep(STATS_EVERY).await;
        }
    }
}

/// `after`, or 0 when the proxy's newest record is older than it: the proxy restarted, and
/// numbers its records from 1 again.
async fn restarted_from(client: &ProxyClient, after: u64) -> u64 {
    match client.stats().await {
        Ok(stats) if stats.last_seq < after => 0,
        _ => after,
    }
}

/// A kernel flow event as a flow record, named from the policy in force.
pub fn describe(event: &FlowEvent, state: &PolicyState, node: &str) -> Flow {
    let Some(t) = event.tuple else {
        let mut flow = Flow::now(
            FlowEndpoint::default(),
            FlowEndpoint::default(),
            Verdict::Dropped,
        );
        flow.l4 = L4 {
            protocol: "unknown".into(),
            port: 0,
        };
        flow.drop_reason = Some(reason_text(event.reason));
        return flow;
    };
    let side = |ip: IpAddr, port: u16| endpoint(&state.bundle, &state.compiled, node, ip, port);
    let verdict = if event.allowed {
        Verdict::Forwarded
    } else {
        Verdict::Dropped
    };
    let mut flow = Flow::now(
        side(t.source, t.source_port),
        side(t.destination, t.destination_port),
        verdict,
    );
    flow.time = wall_clock(event.ktime_ns);
    flow.l4 = L4 {
        protocol: protocol_name(t.protocol),
        port: t.destination_port,
    };
    if !event.allowed {
        flow.drop_reason = Some(reason_text(event.reason));
    }
    let direction = if event.ingress {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    flow.policy = deciding_policy(
        &state.bundle,
        t.source,
        t.destination,
        t.protocol,
        t.destination_port,
        direction,
        event,
    );
    flow
}

fn endpoint(
    bundle: &Bundle,
    compiled: &Compiled,
    node: &str,
    ip: IpAddr,
    port: u16,
) -> FlowEndpoint {
    let pod = bundle.endpoint_by_ip(ip);
    FlowEndpoint {
        namespace: pod.map(|p| p.namespace.clone()),
        pod: pod.map(|p| p.name.clone()),
        identity: compiled.identities.lookup(ip, Some(node)),
        labels: pod.map_or_else(Vec::new, |p| {
            p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
        }),
        ip: Some(ip),
        port,
    }
}

/// Which policy decided, as the trace explains it: the rule that denied or allowed on the side
/// that judged, or the policies that isolate the endpoint when no rule allowed it.
fn deciding_policy(
    bundle: &Bundle,
    from: IpAddr,
    to: IpAddr,
    protocol: u8,
    port: u16,
    direction: Direction,
    event: &FlowEvent,
) -> Option<String> {
    if event.reason == Reason::ProxyRedirect || event.reason == Reason::FromProxy {
        return Some("HTTP rules (L7 proxy)".into());
    }
    let protocol = Protocol::ALL.into_iter().find(|p| p.number() == protocol)?;
    let query = policy::Query {
        from: from.to_string(),
        to: to.to_string(),
        port: Some(port),
        protocol,
        http: None,
    };
    let result = policy::trace(bundle, &query).ok()?;
    if event.reason == Reason::AuthzDeny {
        // The programs refused it by the destination's AuthorizationPolicies.
        let istio = result.istio?;
        return Some(match istio.decision.and_then(|d| d.deciding) {
            Some(by) => format!("{} {}", by.policy, by.rule),
            None => format!("no ALLOW rule matches: {}", istio.policies.join(", ")),
        });
    }
    let side = match direction {
        Direction::Ingress => &result.ingress,
        Direction::Egress => &result.egress,
    };
    let rules = if event.allowed {
        &side.allowed_by
    } else {
        &side.denied_by
    };
    if let Some(rule) = rules.first() {
        return Some(format!("{} {}", rule.policy, rule.rule));
    }
    (!event.allowed && !side.selected_by.is_empty())
        .then(|| format!("default deny: {}", side.selected_by.join(", ")))
}

fn reason_text(reason: Reason) -> String {
    match reason {
        Reason::PolicyDeny => "Policy denied (deny rule)".into(),
        Reason::NoPolicy => "Policy denied".into(),
        Reason::AuthzDeny => "Authorization denied".into(),
        other => other.as_str().into(),
    }
}

fn protocol_name(number: u8) -> String {
    Protocol::ALL
        .into_iter()
        .find(|p| p.number() == number)
        .map_or_else(|| format!("proto-{number}"), |p| p.to_string())
}

/// A `bpf_ktime_get_ns` stamp (CLOCK_MONOTONIC) as wall-clock RFC 3339.
fn wall_clock(ktime_ns: u64) -> String {
    let now = SystemTime::now();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let monotonic = match unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } {
        0 => Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        ),
        _ => return humantime::format_rfc3339_millis(now).to_string(),
    };
    let ago = monotonic.saturating_sub(Duration::from_nanos(ktime_ns));
    humantime::format_rfc3339_millis(now - ago).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremesh_enforce::events::Tuple;

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: demo, labels: {app: b}}
spec: {nodeName: n2, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.244.2.3}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-isolated, namespace: demo}
spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}
"#;

    fn state() -> PolicyState {
        state_with("")
    }

    fn state_with(extra: &str) -> PolicyState {
        let bundle = policy::load([("t.yaml", MANIFESTS), ("e.yaml", extra)]).expect("loads");
        let compiled = Compiled::build(&bundle);
        PolicyState {
            bundle: Arc::new(bundle),
            compiled: Arc::new(compiled),
            ..PolicyState::default()
        }
    }

    fn event(allowed: bool, reason: Reason) -> FlowEvent {
        FlowEvent {
            ktime_ns: 0,
            ifindex: 7,
            ingress: true,
            allowed,
            reason,
            remote_identity: 0,
            tuple: Some(Tuple {
                source: "10.244.1.2".parse().expect("ip"),
                destination: "10.244.2.3".parse().expect("ip"),
                source_port: 40000,
                destination_port: 8080,
                protocol: 6,
                syn: true,
            }),
        }
    }

    /// A drop is named with both pods, their labels, the reason and the policy that isolates
    /// the destination.
    #[test]
    fn a_drop_names_the_pods_the_reason_and_the_policy() {
        let flow = describe(&event(false, Reason::NoPolicy), &state(), "n2");
        assert_eq!(flow.verdict, Verdict::Dropped);
        assert_eq!(flow.source.pod.as_deref(), Some("a"));
        assert_eq!(flow.destination.namespace.as_deref(), Some("demo"));
        assert!(flow.destination.labels.contains(&"app=b".to_string()));
        assert_eq!((flow.l4.protocol.as_str(), flow.l4.port), ("TCP", 8080));
        assert_eq!(flow.drop_reason.as_deref(), Some("Policy denied"));
        let policy = flow.policy.expect("a policy is named");
        assert!(policy.contains("b-isolated"), "{policy}");
    }

    /// A connection the programs refused by an AuthorizationPolicy names that policy.
    #[test]
    fn an_authorization_drop_names_the_authorization_policy() {
        let authz = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
            metadata: {name: b-only-web, namespace: demo}\n\
            spec: {selector: {matchLabels: {app: b}}, \
            rules: [{from: [{source: {namespaces: [web]}}]}]}\n";
        let flow = describe(&event(false, Reason::AuthzDeny), &state_with(authz), "n2");
        assert_eq!(flow.drop_reason.as_deref(), Some("Authorization denied"));
        assert_eq!(
            flow.policy.as_deref(),
            Some("no ALLOW rule matches: AuthorizationPolicy demo/b-only-web ALLOW")
        );
        // Control: the same event read as a NetworkPolicy drop names the NetworkPolicy.
        let flow = describe(&event(false, Reason::NoPolicy), &state_with(authz), "n2");
        assert!(flow.policy.is_some_and(|p| p.contains("b-isolated")));
    }

    #[test]
    fn an_allowed_connection_is_forwarded_without_a_drop_reason() {
        let flow = describe(&event(true, Reason::ProxyRedirect), &state(), "n2");
        assert_eq!(flow.verdict, Verdict::Forwarded);
        assert_eq!(flow.drop_reason, None);
        assert_eq!(flow.policy.as_deref(), Some("HTTP rules (L7 proxy)"));
    }

    /// A proxy with `n` request records and its control socket in `dir`.
    fn proxy_with_records(dir: &std::path::Path, n: usize) -> (Arc<wiremesh_l7::Shared>, PathBuf) {
        let shared = Arc::new(wiremesh_l7::Shared::new(wiremesh_l7::Settings {
            mode: wiremesh_l7::Mode::Test {
                upstream: "127.0.0.1:9".parse().unwrap(),
            },
            mark: 0,
            limits: Default::default(),
            state_file: None,
        }));
        record(&shared, n);
        let path = dir.join("proxy.sock");
        let listener = wiremesh_l7::control::bind(&path).expect("control socket");
        tokio::spawn(wiremesh_l7::control::serve(listener, shared.clone()));
        (shared, path)
    }

    fn record(shared: &wiremesh_l7::Shared, n: usize) {
        for _ in 0..n {
            shared.flows.record(Flow::now(
                FlowEndpoint::default(),
                FlowEndpoint::default(),
                Verdict::Forwarded,
            ));
        }
    }

    /// The proxy's records reach the agent's log only when someone reads the flows; its
    /// counters reach metrics whether or not anyone observes.
    #[tokio::test]
    async fn the_proxys_records_are_brought_in_only_while_someone_observes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (proxy, socket) = proxy_with_records(dir.path(), 3);
        let flows = crate::admin::flows::Flows::default();
        let mut stats = flows.proxy_stats.subscribe();
        let collector = FlowCollector {
            node: "n1".into(),
            pin_dir: dir.path().join("no-pins"),
            proxy_socket: socket,
            policy: watch::channel(Arc::new(state())).1,
            log: flows.log.clone(),
            observers: flows.observers.clone(),
            proxy_stats: flows.proxy_stats.clone(),
        };
        let task = tokio::spawn(collector.run());

        let counted = stats.wait_for(|s| s.as_ref().is_some_and(|s| s.forwarded == 3));
        tokio::time::timeout(Duration::from_secs(5), counted)
            .await
            .expect("the proxy's counters within 5 s")
            .expect("the collector runs");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            flows.log.after(0, 100).is_empty(),
            "nobody observes: no record is read from the proxy"
        );

        // Control: a reader brings them in before it reads.
        flows.observers.catch_up(Duration::from_secs(2)).await;
        assert_eq!(flows.log.after(0, 100).len(), 3, "caught up on a read");
        record(&proxy, 2);
        flows.observers.catch_up(Duration::from_secs(2)).await;
        let seqs: Vec<u64> = flows.log.after(0, 100).iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5], "each record once, in order");
        assert_eq!(
            flows.log.verdict_counts()[0],
            (Verdict::Forwarded, 0),
            "the proxy counts its records; the agent does not count them again"
        );

        // A restarted proxy numbers from 1 again: its records are brought in all the same.
        let (_restarted, _) = proxy_with_records(dir.path(), 2);
        flows.observers.catch_up(Duration::from_secs(2)).await;
        assert_eq!(
            flows.log.after(0, 100).len(),
            7,
            "the restarted proxy's 2 records too"
        );
        task.abort();
    }
}
