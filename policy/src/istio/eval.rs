//! Istio's authorization decision for one request (or one L4 connection) at the destination
//! workload, from the AuthorizationPolicies that apply to it, in Istio's documented order
//! (istio.io, reference "Authorization Policy"): CUSTOM (refused here), then DENY — any
//! matching DENY policy denies —, then ALLOW — if any ALLOW policy applies to the workload the
//! request must match one of them, otherwise it is allowed. AUDIT policies never change the
//! verdict; they only mark the request audited. Pure: the proxy and the trace both call it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::model::{Action, AuthzPolicy, AuthzRule, IstioId};
use crate::http::HttpRequest;

/// What a policy is evaluated against. `http` is `None` for an L4 connection (no request read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IstioRequest {
    pub source_ip: IpAddr,
    /// `<trustDomain>/ns/<ns>/sa/<sa>`; `None` when the source is no mesh workload.
    pub source_principal: Option<String>,
    pub source_namespace: Option<String>,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    pub http: Option<HttpRequest>,
}

/// The policy and rule that decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deciding {
    pub policy: IstioId,
    pub action: Action,
    /// `spec.rules[1]`.
    pub rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IstioDecision {
    pub allowed: bool,
    /// Some AUDIT policy matched (the verdict is unchanged).
    pub audited: bool,
    /// The rule that denied (DENY) or allowed (ALLOW); `None` when no policy rule decided
    /// (no ALLOW policy applies, or none matched).
    pub deciding: Option<Deciding>,
    /// The AUDIT rule that matched, if any.
    pub audited_by: Option<Deciding>,
    pub reason: String,
}

/// Whether `rule` of a policy with `action` matches `req`.
///
/// A connection seen without its HTTP request (L4) cannot be matched against HTTP fields.
/// wiremesh then does what istiod does when it hands a policy to ztunnel (Istio
/// `pilot/pkg/serviceregistry/kube/controller/ambient/authorization.go`, `handleRule`: "L7
/// policies never match for ALLOW; For DENY they will always match, so it is more
/// restrictive"; ambientmesh.io "Use a waypoint proxy for L7 authorization policy": a policy
/// with L7 attributes enforced by ztunnel "will fail safe"): an ALLOW (or AUDIT) rule that
/// reads HTTP does not match at all, a DENY rule matches on its L4 fields alone.
pub fn rule_matches(rule: &AuthzRule, action: Action, req: &IstioRequest) -> bool {
    let l4 = req.http.is_none();
    if l4 && action != Action::Deny && rule.needs_http() {
        return false;
    }
    let l4_deny = l4 && action == Action::Deny;
    (rule.from.is_empty() || rule.from.iter().any(|s| s.matches(req)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| o.matches(req, l4_deny)))
        && rule.when.iter().all(|c| c.matches(req, l4_deny))
}

/// The first rule of `policy` that matches `req` (a policy without rules matches nothing).
pub fn policy_match(policy: &AuthzPolicy, req: &IstioRequest) -> Option<Deciding> {
    let rule = policy
        .rules
        .iter()
        .find(|r| rule_matches(r, policy.action, req))?;
    Some(Deciding {
        policy: policy.id.clone(),
        action: policy.action,
        rule: rule.field.clone(),
    })
}

/// The decision for `req` at a workload to which exactly `policies` apply.
pub fn evaluate(policies: &[&AuthzPolicy], req: &IstioRequest) -> IstioDecision {
    let of = |a: Action| policies.iter().filter(move |p| p.action == a);
    let audited_by = of(Action::Audit).find_map(|p| policy_match(p, req));
    let audited = audited_by.is_some();
    if let Some(d) = of(Action::Deny).find_map(|p| policy_match(p, req)) {
        return IstioDecision {
            allowed: false,
            audited,
            reason: format!("denied by DENY policy {} {}", d.policy, d.rule),
            deciding: Some(d),
            audited_by,
        };
    }
    let allows = of(Action::Allow).count();
    if allows == 0 {
        return IstioDecision {
            allowed: true,
            audited,
            deciding: None,
            audited_by,
            reason: "no ALLOW policy applies to the workload".into(),
        };
    }
    match of(Action::Allow).find_map(|p| policy_match(p, req)) {
        Some(d) => IstioDecision {
            allowed: true,
            audited,
            reason: format!("allowed by ALLOW policy {} {}", d.policy, d.rule),
            deciding: Some(d),
            audited_by,
        },
        None => IstioDecision {
            allowed: false,
            audited,
            deciding: None,
            audited_by,
            reason: format!(
                "{allows} ALLOW polic{} appl{} to the workload and no rule matches",
                if allows == 1 { "y" } else { "ies" },
                if allows == 1 { "ies" } else { "y" }
            ),
        },
    }
}
