//! The verdict for one HTTP request: pure, from the configuration snapshot, the direction,
//! the local endpoint, the remote address, the port and the request's parts. Exactly
//! `PolicyMap::lookup(direction, remote identity, TCP, port)`: not allowed → deny; allowed
//! without HTTP rules → allow; allowed with rules → allow iff one rule matches. A local
//! endpoint the configuration does not know is denied (fail closed). It must never allow
//! anything the map does not.

use std::net::IpAddr;

use policy::istio::{AuthzPolicy, IstioDecision, IstioRequest};
use policy::{Direction, HttpRequest, Protocol};

use crate::snapshot::{canonical, LocalEndpoint, Snapshot};

/// The status Cilium's proxy answers a denied request with.
pub const DENIED_STATUS: u16 = 403;
/// The body of that answer, byte for byte.
pub const DENIED_BODY: &str = "Access denied\r\n";
/// The body Istio's proxies answer a request an AuthorizationPolicy denies with (status 403).
pub const RBAC_DENIED_BODY: &str = "RBAC: access denied";

/// The parts of a request that rules look at.
#[derive(Debug, Clone, Default)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: Option<&'a str>,
    pub headers: Vec<(&'a str, &'a str)>,
}

/// Why a request was allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The map allows the connection and puts no HTTP rules on it.
    Unrestricted,
    /// The rule at this manifest field matched.
    RuleMatched(String),
    /// The configuration does not know the local endpoint.
    UnknownEndpoint,
    /// The map does not allow the connection at all (no allow entry, or a deny entry).
    L4Denied,
    /// The connection is allowed only for HTTP rules, and none matched.
    NoRuleMatched,
    /// Cilium's policy allowed it and Istio's AuthorizationPolicies denied it.
    IstioDenied,
}

/// The verdict for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// Whether the map allows the connection (`None` when the local endpoint is unknown).
    pub map_allowed: Option<bool>,
    /// `namespace/name` of the local endpoint, when known.
    pub local: Option<String>,
    pub remote_identity: u32,
    /// The matching rule as text (`method=GET path=/a/.*`): the rule's field names its place
    /// in its manifest, not the policy, so flows show both.
    pub rule: Option<String>,
    /// Istio's decision, when AuthorizationPolicies apply to the local endpoint and Cilium's
    /// policy allowed the request (Istio is judged at the destination only, after Cilium).
    pub istio: Option<IstioDecision>,
}

impl Decision {
    /// The status to answer with when denied.
    pub fn status(&self) -> Option<u16> {
        (!self.allowed).then_some(DENIED_STATUS)
    }

    /// The body to answer a denied request with: Istio's wording when an Istio policy denied
    /// it, Cilium's otherwise.
    pub fn denied_body(&self) -> &'static str {
        match self.reason {
            Reason::IstioDenied => RBAC_DENIED_BODY,
            _ => DENIED_BODY,
        }
    }

    /// An Istio AUDIT policy matched the request.
    pub fn audited(&self) -> bool {
        self.istio.as_ref().is_some_and(|d| d.audited)
    }

    /// The rule field that allowed the request, if one did.
    pub fn matched(&self) -> Option<&str> {
        match &self.reason {
            Reason::RuleMatched(field) => Some(field),
            _ => None,
        }
    }

    /// What a flow record shows as the deciding policy.
    pub fn policy_label(&self) -> Option<String> {
        let cilium = self.cilium_label();
        let Some(istio) = &self.istio else {
            return cilium;
        };
        let mut label = match (&self.reason, cilium) {
            (Reason::IstioDenied, _) | (_, None) => istio.reason.clone(),
            (_, Some(cilium)) => format!("{cilium}; {}", istio.reason),
        };
        if let Some(a) = &istio.audited_by {
            label.push_str(&format!("; audited by {} {}", a.policy, a.rule));
        }
        Some(label)
    }

    fn cilium_label(&self) -> Option<String> {
        match &self.reason {
            Reason::RuleMatched(field) => Some(match &self.rule {
                Some(rule) => format!("{field} ({rule})"),
                None => field.clone(),
            }),
            Reason::Unrestricted => Some("L4 allow (no HTTP rules)".into()),
            Reason::UnknownEndpoint => Some("no L7 configuration for the endpoint".into()),
            Reason::L4Denied => Some("L3/L4 policy".into()),
            Reason::NoRuleMatched => Some("no rules.http entry matched".into()),
            Reason::IstioDenied => None,
        }
    }
}

/// Judges one request on a connection between the local endpoint at `local_ip` and a remote
/// at `remote_ip`, to TCP `port` (the original destination's).
pub fn decide(
    snap: &Snapshot,
    dir: Direction,
    local_ip: IpAddr,
    remote_ip: IpAddr,
    port: u16,
    req: &RequestParts<'_>,
) -> Decision {
    let remote_identity = snap.identity(remote_ip);
    let Some(local) = snap.endpoint(local_ip) else {
        return Decision {
            allowed: false,
            reason: Reason::UnknownEndpoint,
            map_allowed: None,
            local: None,
            remote_identity,
            rule: None,
            istio: None,
        };
    };
    let (map_allowed, rules) = local
        .map
        .lookup_rules(dir, remote_identity, Protocol::Tcp, port);
    let request = http_request(req);
    let mut rule = None;
    let (mut allowed, mut reason) = match (map_allowed, rules) {
        (false, _) => (false, Reason::L4Denied),
        (true, None) => (true, Reason::Unrestricted),
        (true, Some(rules)) => match rules.iter().find(|r| r.matches(&request)) {
            Some(r) => {
                rule = Some(r.to_string());
                (true, Reason::RuleMatched(r.field.clone()))
            }
            None => (false, Reason::NoRuleMatched),
        },
    };
    let mut istio = None;
    if allowed && dir == Direction::Ingress && !local.istio.is_empty() {
        let d = judge_istio(snap, local, local_ip, remote_ip, port, Some(request));
        if !d.allowed {
            allowed = false;
            reason = Reason::IstioDenied;
        }
        istio = Some(d);
    }
    Decision {
        allowed,
        reason,
        map_allowed: Some(map_allowed),
        local: Some(local.qualified_name()),
        remote_identity,
        rule,
        istio,
    }
}

/// The verdict for a connection into a local endpoint whose first bytes are not HTTP: `None`
/// unless only Istio brought it to the proxy (the endpoint has AuthorizationPolicies and
/// Cilium's policy allows the connection without HTTP rules), and then Istio's decision for
/// the connection without a request, as ztunnel makes it (an ALLOW rule that reads HTTP
/// matches nothing, a DENY rule matches on its L4 fields alone).
pub fn decide_opaque(
    snap: &Snapshot,
    local_ip: IpAddr,
    remote_ip: IpAddr,
    port: u16,
) -> Option<Decision> {
    let local = snap.endpoint(local_ip)?;
    if local.istio.is_empty() {
        return None;
    }
    let remote_identity = snap.identity(remote_ip);
    let (map_allowed, rules) =
        local
            .map
            .lookup_rules(Direction::Ingress, remote_identity, Protocol::Tcp, port);
    if !map_allowed || rules.is_some() {
        return None;
    }
    let d = judge_istio(snap, local, local_ip, remote_ip, port, None);
    Some(Decision {
        allowed: d.allowed,
        reason: if d.allowed {
            Reason::Unrestricted
        } else {
            Reason::IstioDenied
        },
        map_allowed: Some(true),
        local: Some(local.qualified_name()),
        remote_identity,
        rule: None,
        istio: Some(d),
    })
}

/// Istio's decision at the local endpoint for a request from `remote_ip`: the source's
/// principal and namespace are those of the pod owning the address (the tunnel authenticated
/// it; a local pod cannot send from another's address), none for any other source.
fn judge_istio(
    snap: &Snapshot,
    local: &LocalEndpoint,
    local_ip: IpAddr,
    remote_ip: IpAddr,
    port: u16,
    request: Option<HttpRequest>,
) -> IstioDecision {
    let pod = snap.pod(remote_ip);
    let req = IstioRequest {
        source_ip: canonical(remote_ip),
        source_principal: pod.map(|p| snap.istio.principal(&p.namespace, &p.service_account)),
        source_namespace: pod.map(|p| p.namespace.clone()),
        destination_ip: canonical(local_ip),
        destination_port: port,
        http: request,
    };
    let policies: Vec<&AuthzPolicy> = local.istio.iter().collect();
    policy::istio::evaluate(&policies, &req)
}

/// Judges one request from `client` to `dst` that arrived on the `dir` listener: by the local
/// endpoint's rules in that direction and, for an egress request whose server is a local pod
/// with HTTP rules of its own, by the server's ingress rules too (the proxy's upstream
/// connection is admitted at the server's interface without a second redirect).
pub fn decide_request(
    snap: &Snapshot,
    dir: Direction,
    client: IpAddr,
    dst: std::net::SocketAddr,
    req: &RequestParts<'_>,
) -> Decision {
    let (local, remote) = match dir {
        Direction::Ingress => (dst.ip(), client),
        Direction::Egress => (client, dst.ip()),
    };
    let decision = decide(snap, dir, local, remote, dst.port(), req);
    if decision.allowed && dir == Direction::Egress && snap.endpoint(dst.ip()).is_some() {
        let ingress = decide(snap, Direction::Ingress, dst.ip(), client, dst.port(), req);
        if !ingress.allowed {
            return ingress;
        }
    }
    decision
}

fn http_request(req: &RequestParts<'_>) -> HttpRequest {
    HttpRequest {
        method: Some(req.method.to_string()),
        path: Some(req.path.to_string()),
        host: req.host.map(str::to_string),
        headers: req
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
