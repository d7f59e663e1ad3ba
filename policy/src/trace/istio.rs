//! The Istio part of a trace: at the destination workload (Istio policy is ingress-side only),
//! the PeerAuthentication mode in force and whether the source satisfies it, and the
//! AuthorizationPolicy decision for the connection or, when the query carries an HTTP request,
//! for that request. It only reports; `trace.rs` folds the verdict in.

use std::net::IpAddr;

use serde::Serialize;

use crate::http::HttpRequest;
use crate::istio::eval::{policy_match, IstioDecision, IstioRequest};
use crate::istio::l4::needs_proxy;
use crate::istio::{admits, effective_mode, evaluate, Action, AuthzPolicy, MtlsMode};
use crate::model::{Bundle, Endpoint};

/// What Istio's policies say of the query at the destination workload.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IstioReport {
    /// AuthorizationPolicies that apply to the destination (`Kind ns/name ACTION`).
    pub policies: Vec<String>,
    /// The PeerAuthentication mode in force on the destination port.
    pub mtls_mode: MtlsMode,
    /// The source came through the tunnel from a mesh node or is a mesh pod of that node.
    pub from_mesh: bool,
    /// Some applying policy reads HTTP: the connection goes through the L7 filter, which
    /// decides each request.
    pub needs_http: bool,
    /// Who enforces the AuthorizationPolicies on a node: `eBPF programs` when they read only
    /// what the source identity and the port fix, else `L7 proxy (<why>)`; `None` when none
    /// applies.
    pub enforced_by: Option<String>,
    /// The AuthorizationPolicy decision; `None` when it depends on the HTTP request and the
    /// query carries none.
    pub decision: Option<IstioDecision>,
    pub allowed: bool,
    pub reason: String,
}

/// Who the source is, for Istio.
pub(super) struct IstioSource {
    pub ip: IpAddr,
    pub principal: Option<String>,
    pub namespace: Option<String>,
    /// Arrived through the tunnel (a pod or a remote node) or is a pod of the same node.
    pub mesh: bool,
    /// The destination's own node (kubelet probes): exempt from STRICT, as Istio rewrites
    /// probes so that they pass.
    pub own_node: bool,
}

/// The report for a TCP query to `dst`; `None` when no Istio policy concerns it.
pub(super) fn report(
    bundle: &Bundle,
    dst: (&Endpoint, IpAddr, u16),
    src: &IstioSource,
    http: Option<&HttpRequest>,
) -> Option<IstioReport> {
    let (ep, dst_ip, port) = dst;
    let policies = bundle.authz_for(ep);
    let any_peer_authn = !bundle.peer_authn.is_empty();
    if policies.is_empty() && !any_peer_authn {
        return None;
    }
    let mtls_mode = effective_mode(&bundle.peer_authn, &bundle.istio, ep, port);
    let mtls_ok = src.own_node || admits(mtls_mode, src.mesh);
    let needs_http = policies.iter().any(|p| p.needs_http());
    let req = IstioRequest {
        source_ip: src.ip,
        source_principal: src.principal.clone(),
        source_namespace: src.namespace.clone(),
        destination_ip: dst_ip,
        destination_port: port,
        http: http.cloned(),
    };
    let decision = (http.is_some() || !needs_http).then(|| evaluate(&policies, &req));
    let (allowed, reason) = if !mtls_ok {
        (
            false,
            format!(
                "PeerAuthentication mode {mtls_mode}: the source did not come through the \
                 tunnel from a mesh node nor from a mesh pod of this node"
            ),
        )
    } else if let Some(d) = &decision {
        (d.allowed, d.reason.clone())
    } else {
        per_request(&policies, &req)
    };
    Some(IstioReport {
        policies: policies
            .iter()
            .map(|p| format!("{} {}", p.id, p.action))
            .collect(),
        mtls_mode,
        from_mesh: src.mesh,
        needs_http,
        enforced_by: enforced_by(&policies),
        decision,
        allowed,
        reason,
    })
}

fn enforced_by(policies: &[&AuthzPolicy]) -> Option<String> {
    if policies.is_empty() {
        return None;
    }
    Some(match policies.iter().find_map(|p| needs_proxy(p)) {
        Some(why) => format!("L7 proxy ({why})"),
        None => "eBPF programs".into(),
    })
}

/// A connection whose requests the L7 filter decides one by one: only a DENY rule that reads
/// no HTTP denies it whatever the request.
fn per_request(policies: &[&AuthzPolicy], req: &IstioRequest) -> (bool, String) {
    let l4_only_denies = policies
        .iter()
        .filter(|p| p.action == Action::Deny)
        .find_map(|p| {
            let l4: AuthzPolicy = AuthzPolicy {
                rules: p
                    .rules
                    .iter()
                    .filter(|r| !r.needs_http())
                    .cloned()
                    .collect(),
                ..(*p).clone()
            };
            policy_match(&l4, req)
        });
    match l4_only_denies {
        Some(d) => (
            false,
            format!(
                "denied by DENY policy {} {} whatever the request",
                d.policy, d.rule
            ),
        ),
        None => (
            true,
            "the L7 filter decides each HTTP request (trace one with an HTTP method and path)"
                .into(),
        ),
    }
}
