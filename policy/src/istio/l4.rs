//! How the AuthorizationPolicies that apply to a workload are enforced, and for policies that
//! read nothing but the connection, the policy map entries the eBPF programs enforce them with,
//! without the proxy, as ztunnel enforces them in Istio's ambient mode.
//!
//! Such a policy's verdict depends only on the source's principal and namespace (both fixed by
//! its security identity: the service account is one of the identity's labels) and on the
//! destination port. So the decision of [`super::evaluate`] is computed here once per known
//! identity and per port class — each port a rule names, and one port standing for every
//! other — and written as entries of the endpoint's *authorization* map. The programs consult
//! that map after the NetworkPolicy map admitted a new TCP connection; a connection is admitted
//! only if both say so, and an identity without an entry (one allocated after this map was
//! built) is refused: the map fails closed.
//!
//! A policy whose verdict depends on anything an identity does not fix — an HTTP attribute, a
//! source or destination address (`ipBlocks`, `remoteIpBlocks`, `source.ip`,
//! `destination.ip`) — or an AUDIT policy (whose matches must be recorded one by one) is
//! enforced by the L7 proxy instead, in waypoint mode: every TCP connection to the workload goes
//! through it, HTTP or not.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use super::eval::{evaluate, IstioRequest};
use super::model::{Action, AuthzPolicy, AuthzRule, ConditionKey, IstioSettings, Values};
use crate::compile::{Entry, Key, PolicyMap};
use crate::identity::{Identities, IdentityId};
use crate::model::{Direction, Protocol};

/// How a workload's AuthorizationPolicies are enforced.
#[derive(Debug, Clone)]
pub enum AuthzEnforcement {
    /// No AuthorizationPolicy applies.
    None,
    /// By the eBPF programs with this authorization map (ingress keys, TCP only).
    Programs(PolicyMap),
    /// By the L7 proxy, for this reason: every TCP connection to the workload is redirected.
    Proxy(&'static str),
}

/// How `policies` (those applying to one workload) are enforced, given every identity that
/// exists now.
pub fn enforcement(
    policies: &[&AuthzPolicy],
    identities: &Identities,
    istio: &IstioSettings,
) -> AuthzEnforcement {
    if policies.is_empty() {
        return AuthzEnforcement::None;
    }
    if let Some(why) = policies.iter().find_map(|p| needs_proxy(p)) {
        return AuthzEnforcement::Proxy(why);
    }
    AuthzEnforcement::Programs(authorization_map(policies, identities, istio))
}

/// Why `policy` cannot be decided from the source identity and the port alone, if it cannot.
pub fn needs_proxy(policy: &AuthzPolicy) -> Option<&'static str> {
    if policy.action == Action::Audit {
        return Some("an AUDIT policy applies: the proxy records each audited connection");
    }
    if policy.needs_http() {
        return Some("a policy reads HTTP attributes");
    }
    if policy.rules.iter().any(reads_addresses) {
        return Some("a policy matches source or destination addresses");
    }
    None
}

fn reads_addresses(rule: &AuthzRule) -> bool {
    rule.from.iter().any(|s| {
        !(s.ip_blocks.is_empty()
            && s.not_ip_blocks.is_empty()
            && s.remote_ip_blocks.is_empty()
            && s.not_remote_ip_blocks.is_empty())
    }) || rule
        .when
        .iter()
        .any(|c| matches!(c.key, ConditionKey::SourceIp | ConditionKey::DestinationIp))
}

/// Every destination port a rule of `policies` names (in `ports`, `notPorts` or a
/// `destination.port` condition).
fn named_ports(policies: &[&AuthzPolicy]) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for rule in policies.iter().flat_map(|p| &p.rules) {
        for op in &rule.to {
            out.extend(op.ports.iter().chain(&op.not_ports));
        }
        for c in &rule.when {
            for v in [&c.values, &c.not_values] {
                if let Values::Port(ps) = v {
                    out.extend(ps);
                }
            }
        }
    }
    out
}

/// The authorization map: for each identity, an allow entry for every port (prefix 0) when a
/// port no rule names is allowed, and for each named port an entry where its verdict differs
/// from that (an allow, or a deny that overrides the wildcard). `policies` must not need the
/// proxy ([`needs_proxy`]).
pub fn authorization_map(
    policies: &[&AuthzPolicy],
    identities: &Identities,
    istio: &IstioSettings,
) -> PolicyMap {
    let ports = named_ports(policies);
    // Port 0 is no TCP port; the first port no rule names stands for all of them.
    let other = (1..=u16::MAX).find(|p| !ports.contains(p));
    let tcp = Protocol::Tcp.number();
    let key = |identity: IdentityId, port: u16, prefix: u8| Key {
        direction: Direction::Ingress,
        identity,
        protocol: tcp,
        port,
        prefix,
    };
    let allow = Entry {
        deny: false,
        allow: true,
        http: None,
    };
    let deny = Entry {
        deny: true,
        allow: false,
        http: None,
    };
    let mut entries = Vec::new();
    for (identity, labels) in identities.iter() {
        let principal = labels.principal(istio);
        let allowed = |port: u16| {
            let req = IstioRequest {
                // Unread: no policy here matches on an address (`needs_proxy`).
                source_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                source_principal: principal.as_ref().map(|(p, _)| p.clone()),
                source_namespace: principal.as_ref().map(|(_, ns)| ns.clone()),
                destination_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                destination_port: port,
                http: None,
            };
            evaluate(policies, &req).allowed
        };
        let others = other.is_some_and(allowed);
        if others {
            entries.push((key(identity, 0, 0), allow.clone()));
        }
        for &port in &ports {
            match (allowed(port), others) {
                (true, false) => entries.push((key(identity, port, 16), allow.clone())),
                (false, true) => entries.push((key(identity, port, 16), deny.clone())),
                _ => {}
            }
        }
    }
    PolicyMap::from_entries(entries)
}
