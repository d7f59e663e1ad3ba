//! Matching one request against Istio's fields: string forms, sources, operations, `when`
//! conditions, and which workloads a policy applies to. Pure functions of the policy and the
//! request; the combination of rules and policies into a verdict is `eval.rs`.

use std::net::IpAddr;

use ipnet::IpNet;

use super::eval::IstioRequest;
use super::model::{
    AuthzPolicy, Condition, ConditionKey, OperationMatch, SourceMatch, StrMatch, Values, Workloads,
};
use crate::model::{Bundle, Endpoint};

impl StrMatch {
    /// Whether `v` (absent: `None`) matches. `*` matches any non-empty value, as Envoy's
    /// presence match; an absent value matches nothing.
    pub fn matches(&self, v: Option<&str>) -> bool {
        let Some(v) = v else { return false };
        match self {
            StrMatch::Exact(s) => v == s,
            StrMatch::Prefix(s) => v.starts_with(s.as_str()),
            StrMatch::Suffix(s) => v.ends_with(s.as_str()),
            StrMatch::Present => !v.is_empty(),
        }
    }
}

/// A positive list (unset when empty) and its negation: the value must match one of `yes`
/// (if set) and none of `no`. A value that is absent fails `yes` and passes `no`, as Envoy's
/// `not_id` of a failed match does.
fn both<T>(yes: &[T], no: &[T], hit: impl Fn(&T) -> bool) -> bool {
    (yes.is_empty() || yes.iter().any(&hit)) && !no.iter().any(hit)
}

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

fn strs(yes: &[StrMatch], no: &[StrMatch], v: Option<&str>) -> bool {
    both(yes, no, |m| m.matches(v))
}

impl SourceMatch {
    pub fn matches(&self, req: &IstioRequest) -> bool {
        let ip = |n: &IpNet| n.contains(&req.source_ip);
        strs(
            &self.principals,
            &self.not_principals,
            req.source_principal.as_deref(),
        ) && strs(
            &self.namespaces,
            &self.not_namespaces,
            req.source_namespace.as_deref(),
        ) && both(&self.ip_blocks, &self.not_ip_blocks, ip)
            && both(&self.remote_ip_blocks, &self.not_remote_ip_blocks, ip)
    }
}

/// The request's host without its port, lower-case: Istio's host matchers accept
/// `example.com` and `example.com:8080` alike, case-insensitively.
fn host(req: &crate::http::HttpRequest) -> Option<String> {
    let h = req.host.as_deref()?.to_ascii_lowercase();
    Some(match h.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty()
                && port.chars().all(|c| c.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name.to_string()
        }
        _ => h,
    })
}

/// The request path without its query string or fragment: Istio matches `paths` on the path.
fn path(req: &crate::http::HttpRequest) -> Option<&str> {
    let p = req.path.as_deref()?;
    Some(p.split(['?', '#']).next().unwrap_or(p))
}

impl OperationMatch {
    /// Whether the operation matches; `l4_deny` evaluates a DENY rule on a connection with no
    /// HTTP request, where HTTP fields count as matching (see `eval.rs`).
    pub fn matches(&self, req: &IstioRequest, l4_deny: bool) -> bool {
        let port = |p: &u16| *p == req.destination_port;
        if !both(&self.ports, &self.not_ports, port) {
            return false;
        }
        let Some(http) = &req.http else {
            return l4_deny || !self.needs_http();
        };
        let host = host(http);
        strs(&self.hosts, &self.not_hosts, host.as_deref())
            && strs(&self.methods, &self.not_methods, http.method.as_deref())
            && strs(&self.paths, &self.not_paths, path(http))
    }
}

impl Condition {
    /// Whether the condition holds; `l4_deny` as for operations.
    pub fn matches(&self, req: &IstioRequest, l4_deny: bool) -> bool {
        let header;
        let s: Option<&str> = match &self.key {
            ConditionKey::Header(name) => {
                let Some(http) = &req.http else {
                    return l4_deny;
                };
                header = http
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string());
                header.as_deref()
            }
            ConditionKey::SourceNamespace => req.source_namespace.as_deref(),
            ConditionKey::SourcePrincipal => req.source_principal.as_deref(),
            ConditionKey::SourceIp
            | ConditionKey::DestinationIp
            | ConditionKey::DestinationPort => None,
        };
        let ip = match self.key {
            ConditionKey::DestinationIp => req.destination_ip,
            _ => req.source_ip,
        };
        let one = |v: &Values| -> Option<bool> {
            match v {
                _ if v.is_empty() => None,
                Values::Str(m) => Some(m.iter().any(|m| m.matches(s))),
                Values::Ip(nets) => Some(in_any(nets, ip)),
                Values::Port(ps) => Some(ps.contains(&req.destination_port)),
            }
        };
        one(&self.values) != Some(false) && one(&self.not_values) != Some(true)
    }
}

impl AuthzPolicy {
    /// Whether the policy applies to `workload`: mesh-wide, its namespace's, its labels
    /// selected, or a pod of a targeted Service (the Service's `spec.selector` in the
    /// policy's namespace; a Service that is missing or has no selector selects no pod).
    pub fn applies_to(&self, workload: &Endpoint, bundle: &Bundle) -> bool {
        let ns = &self.id.namespace;
        let labels_match = |sel: &crate::labels::Labels| {
            sel.iter().all(|(k, v)| workload.labels.get(k) == Some(v))
        };
        match &self.workloads {
            Workloads::Mesh => true,
            Workloads::Namespace => &workload.namespace == ns,
            Workloads::Selector(sel) => &workload.namespace == ns && labels_match(sel),
            Workloads::Services(names) => {
                &workload.namespace == ns
                    && names.iter().any(|name| {
                        bundle
                            .services
                            .get(&format!("{ns}/{name}"))
                            .and_then(|s| s.selector.as_ref())
                            .is_some_and(|sel| !sel.is_empty() && labels_match(sel))
                    })
            }
        }
    }
}
