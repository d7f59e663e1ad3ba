//! `wiremesh policy trace`: would a connection be allowed, and why (NetworkPolicy and Cilium
//! on both sides, Istio at the destination, [`istio`]).

mod istio;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::QueryError;
use crate::eval::{evaluate, DirectionEval, Remote};
use crate::http::{HttpRequest, HttpRule};
use crate::model::{Bundle, Direction, Endpoint, Protocol};
pub use istio::IstioReport;
use istio::IstioSource;

/// One question: may `from` open a connection to `to`?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `namespace/pod` or an IP address.
    pub from: String,
    pub to: String,
    /// Destination port; for ICMP/ICMPv6 the ICMP type (default: echo request).
    pub port: Option<u16>,
    pub protocol: Protocol,
    pub http: Option<HttpRequest>,
}

/// The batch format: one JSON object per line.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct QueryLine {
    from: String,
    to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<HttpRequest>,
}

impl Query {
    /// Parses a batch line (`line` is 1-based, for messages).
    pub fn from_json_line(text: &str, line: usize) -> Result<Self, QueryError> {
        let q: QueryLine = serde_json::from_str(text).map_err(|e| QueryError::BadQueryLine {
            line,
            message: e.to_string(),
        })?;
        let protocol = match q.protocol.as_deref() {
            None => Protocol::Tcp,
            Some(p) => Protocol::parse(p).ok_or_else(|| QueryError::BadProtocol(p.to_string()))?,
        };
        Ok(Self {
            from: q.from,
            to: q.to,
            port: q.port,
            protocol,
            http: q.http,
        })
    }

    /// The batch line that [`Query::from_json_line`] reads back as this query.
    pub fn to_json_line(&self) -> String {
        let line = QueryLine {
            from: self.from.clone(),
            to: self.to.clone(),
            port: self.port,
            protocol: Some(self.protocol.to_string()),
            http: self.http.clone(),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

#[cfg(test)]
mod query_line_tests {
    use super::*;

    #[test]
    fn json_lines_round_trip() {
        let q = Query {
            from: "x/a".into(),
            to: "10.0.0.1".into(),
            port: Some(53),
            protocol: Protocol::Udp,
            http: Some(HttpRequest {
                method: Some("GET".into()),
                ..HttpRequest::default()
            }),
        };
        assert_eq!(Query::from_json_line(&q.to_json_line(), 1).unwrap(), q);
        let icmp = Query {
            port: None,
            protocol: Protocol::Icmp,
            http: None,
            ..q
        };
        assert_eq!(
            Query::from_json_line(&icmp.to_json_line(), 1).unwrap(),
            icmp
        );
    }
}

/// Parses `PORT` or `PORT/PROTO` (or just `PROTO` for ICMP) as the CLI's `--port` takes it.
pub fn parse_port(s: &str) -> Result<(Option<u16>, Protocol), QueryError> {
    let bad = || QueryError::BadPort(s.to_string());
    let (port, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, Protocol::parse(proto).ok_or_else(bad)?),
        None => match Protocol::parse(s) {
            Some(proto) => return Ok((None, proto)),
            None => (s, Protocol::Tcp),
        },
    };
    Ok((Some(port.parse().map_err(|_| bad())?), proto))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeniedBy {
    Egress,
    Ingress,
    /// Istio at the destination: an AuthorizationPolicy or PeerAuthentication STRICT.
    Istio,
    L7,
}

/// A rule that matched.
#[derive(Debug, Clone, Serialize)]
pub struct RuleRef {
    pub policy: String,
    pub rule: String,
}

/// One side of the connection: the source's egress or the destination's ingress.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SideReport {
    /// `namespace/pod`, or `None` when this end is not an endpoint (no policy applies).
    pub endpoint: Option<String>,
    /// The other end as this side sees it.
    pub peer: String,
    pub verdict: Verdict,
    pub isolated: bool,
    pub selected_by: Vec<String>,
    pub allowed_by: Vec<RuleRef>,
    pub denied_by: Vec<RuleRef>,
    /// Human-readable reason.
    pub reason: String,
    /// L7 rules that would apply to the allowed connection (`rule-field: description`).
    pub l7_rules: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceResult {
    pub verdict: Verdict,
    pub denied_by: Option<DeniedBy>,
    pub egress: SideReport,
    pub ingress: SideReport,
    /// `Some(true)` if some L7 rule admits the query's HTTP request, `Some(false)` if none
    /// does, `None` when no L7 rule applies or the query carries no HTTP request.
    pub l7_matched: Option<bool>,
    /// Istio at the destination workload (TCP only, as Istio); `None` when no Istio policy
    /// concerns it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioReport>,
}

enum Party<'a> {
    Pod(&'a Endpoint),
    Ip(IpAddr),
}

fn resolve<'a>(bundle: &'a Bundle, s: &str) -> Result<Party<'a>, QueryError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(match bundle.endpoint_by_ip(ip) {
            Some(ep) => Party::Pod(ep),
            None => Party::Ip(ip),
        });
    }
    let parts: Vec<&str> = s.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(QueryError::BadPeer(s.to_string()));
    }
    let found = match parts[..] {
        // A remote cluster's pod (cluster mesh): `cluster/namespace/name`.
        [cluster, ns, name] => bundle.remote_endpoint(cluster, ns, name),
        [_, _] if bundle.host_network_pods.contains(s) => {
            return Err(QueryError::HostNetworkPod(s.to_string()))
        }
        [ns, name] => bundle.endpoint(ns, name),
        _ => return Err(QueryError::BadPeer(s.to_string())),
    };
    found
        .map(Party::Pod)
        .ok_or_else(|| QueryError::UnknownPod(s.to_string()))
}

/// The address a pod uses towards `other`: the same family as `other` if it is an address,
/// else its first address (a query naming an address wins: `from: 10.0.0.5`).
fn pod_ip(ep: &Endpoint, named: Option<IpAddr>, other: Option<IpAddr>) -> Option<IpAddr> {
    named.or_else(|| match other {
        Some(o) => ep
            .ips
            .iter()
            .find(|ip| ip.is_ipv4() == o.is_ipv4())
            .copied(),
        None => ep.ips.first().copied(),
    })
}

fn remote_of<'a>(
    bundle: &'a Bundle,
    party: &Party<'a>,
    ip: Option<IpAddr>,
    local: &Endpoint,
) -> Remote<'a> {
    match party {
        Party::Pod(ep) => Remote::Endpoint { endpoint: ep, ip },
        Party::Ip(ip) => match bundle.node_by_ip(*ip) {
            Some(node) => Remote::Node {
                name: &node.name,
                ip: *ip,
                ips: &node.ips,
                own: local.node.as_deref() == Some(node.name.as_str()),
            },
            None => Remote::World(*ip),
        },
    }
}

fn describe(remote: &Remote<'_>) -> String {
    match remote {
        Remote::Endpoint {
            endpoint,
            ip: Some(ip),
        } => format!("{} ({ip})", endpoint.qualified_name()),
        Remote::Endpoint { endpoint, ip: None } => {
            format!("{} (no address)", endpoint.qualified_name())
        }
        Remote::Node {
            name,
            ip,
            own: true,
            ..
        } => format!("node {name} ({ip}), the endpoint's own node"),
        Remote::Node {
            name,
            ip,
            own: false,
            ..
        } => format!("node {name} ({ip})"),
        Remote::World(ip) => format!("{ip} (world)"),
    }
}

fn side(local: &Endpoint, remote: &Remote<'_>, dir: Direction, eval: &DirectionEval) -> SideReport {
    let refs = |hits: &[crate::eval::RuleHit]| {
        hits.iter()
            .map(|h| RuleRef {
                policy: h.policy.to_string(),
                rule: h.rule.clone(),
            })
            .collect::<Vec<_>>()
    };
    let allowed = eval.allowed();
    let reason = if !eval.denied_by.is_empty() {
        format!("denied by {} deny rule(s)", eval.denied_by.len())
    } else if !eval.isolated() {
        format!("not isolated for {dir}: no policy selects it for {dir}")
    } else if eval.own_node {
        "traffic from the endpoint's own node is always allowed".to_string()
    } else if allowed {
        format!("allowed by {} rule(s)", eval.allowed_by.len())
    } else {
        format!("isolated for {dir} and no rule allows this")
    };
    let l7_rules = if allowed {
        eval.l7_rules()
            .unwrap_or_default()
            .iter()
            .map(|r| format!("{}: {r}", r.field))
            .collect()
    } else {
        Vec::new()
    };
    SideReport {
        endpoint: Some(local.qualified_name()),
        peer: describe(remote),
        verdict: if allowed {
            Verdict::Allowed
        } else {
            Verdict::Denied
        },
        isolated: eval.isolated(),
        selected_by: eval.isolated_by.iter().map(ToString::to_string).collect(),
        allowed_by: refs(&eval.allowed_by),
        denied_by: refs(&eval.denied_by),
        reason,
        l7_rules,
    }
}

fn not_endpoint(what: &str, dir: Direction) -> SideReport {
    SideReport {
        endpoint: None,
        peer: String::new(),
        verdict: Verdict::Allowed,
        isolated: false,
        selected_by: Vec::new(),
        allowed_by: Vec::new(),
        denied_by: Vec::new(),
        reason: format!("{what} is not a pod endpoint: no {dir} policy applies"),
        l7_rules: Vec::new(),
    }
}

/// The verdict of `this` party's `dir` policy on traffic with `other` (at `other_ip`):
/// (allowed, its report, the L7 rules that restrict the allowed traffic). A party that is no
/// pod endpoint has no policy and allows.
fn one_side(
    bundle: &Bundle,
    (this, dir): (&Party<'_>, Direction),
    (other, other_ip): (&Party<'_>, Option<IpAddr>),
    (protocol, port): (Protocol, u16),
) -> (bool, SideReport, Option<Vec<HttpRule>>) {
    match this {
        Party::Pod(ep) => {
            let remote = remote_of(bundle, other, other_ip, ep);
            let e = evaluate(bundle, ep, dir, &remote, protocol, port);
            let l7 = e.allowed().then(|| e.l7_rules()).flatten();
            (e.allowed(), side(ep, &remote, dir, &e), l7)
        }
        Party::Ip(ip) => (true, not_endpoint(&ip.to_string(), dir), None),
    }
}

/// Answers one query from the manifests in `bundle`.
pub fn trace(bundle: &Bundle, q: &Query) -> Result<TraceResult, QueryError> {
    let port = match (q.port, q.protocol) {
        (Some(p), _) => p,
        // ICMP echo request, the usual reachability probe.
        (None, Protocol::Icmp) => 8,
        (None, Protocol::Icmpv6) => 128,
        (None, p) => {
            return Err(QueryError::MissingPort {
                protocol: p.to_string(),
            })
        }
    };
    let src = resolve(bundle, &q.from)?;
    let dst = resolve(bundle, &q.to)?;
    let named = |s: &str| s.parse::<IpAddr>().ok();
    let other_ip = |p: &Party<'_>, s: &str| match p {
        Party::Ip(ip) => Some(*ip),
        Party::Pod(ep) => named(s).or_else(|| ep.ips.first().copied()),
    };
    let src_ip = match &src {
        Party::Pod(ep) => pod_ip(ep, named(&q.from), other_ip(&dst, &q.to)),
        Party::Ip(ip) => Some(*ip),
    };
    let dst_ip = match &dst {
        Party::Pod(ep) => pod_ip(ep, named(&q.to), src_ip),
        Party::Ip(ip) => Some(*ip),
    };
    let packet = (q.protocol, port);
    let egress = one_side(bundle, (&src, Direction::Egress), (&dst, dst_ip), packet);
    let ingress = one_side(bundle, (&dst, Direction::Ingress), (&src, src_ip), packet);
    // Each side that restricts L7 filters on its own: a rule of every such side must admit
    // the request.
    let l7_matched = match &q.http {
        Some(req) if egress.2.is_some() || ingress.2.is_some() => Some(
            [&egress.2, &ingress.2]
                .into_iter()
                .flatten()
                .all(|rules| rules.iter().any(|r| r.matches(req))),
        ),
        _ => None,
    };
    let istio = match (&dst, &src) {
        (Party::Pod(ep), _) if q.protocol == Protocol::Tcp => {
            istio_source(bundle, &src, src_ip, ep)
                .and_then(|s| istio::report(bundle, (ep, dst_ip?, port), &s, q.http.as_ref()))
        }
        _ => None,
    };
    let denied_by = if !egress.0 {
        Some(DeniedBy::Egress)
    } else if !ingress.0 {
        Some(DeniedBy::Ingress)
    } else if istio.as_ref().is_some_and(|i| !i.allowed) {
        Some(DeniedBy::Istio)
    } else if l7_matched == Some(false) {
        Some(DeniedBy::L7)
    } else {
        None
    };
    Ok(TraceResult {
        verdict: if denied_by.is_none() {
            Verdict::Allowed
        } else {
            Verdict::Denied
        },
        denied_by,
        egress: egress.1,
        ingress: ingress.1,
        l7_matched,
        istio,
    })
}

/// The source as Istio sees it at `dst`: a pod has its principal and namespace; a remote node
/// came through the tunnel without a workload identity; the world is outside the mesh.
fn istio_source(
    bundle: &Bundle,
    src: &Party<'_>,
    src_ip: Option<IpAddr>,
    dst: &Endpoint,
) -> Option<IstioSource> {
    let ip = src_ip?;
    Some(match src {
        Party::Pod(ep) => IstioSource {
            ip,
            principal: Some(bundle.principal(ep)),
            namespace: Some(ep.namespace.clone()),
            mesh: true,
            own_node: false,
        },
        Party::Ip(ip) => {
            let node = bundle.node_by_ip(*ip);
            let own_node = node.is_some_and(|n| dst.node.as_deref() == Some(n.name.as_str()));
            IstioSource {
                ip: *ip,
                principal: None,
                namespace: None,
                mesh: node.is_some() && !own_node,
                own_node,
            }
        }
    })
}
