//! AuthorizationPolicy spec → [`AuthzPolicy`]: validation as Istio's webhook does it, plus the
//! refusals of what wiremesh cannot enforce as written (CUSTOM, providers, JWT fields, SNI,
//! targetRefs to anything but a Service). Every error names the field. It must never accept a
//! field and then ignore it: a dropped field changes what the policy allows.

use ipnet::IpNet;

use super::model::{
    Action, AuthzPolicy, AuthzRule, Condition, ConditionKey, IstioId, IstioKind, OperationMatch,
    SourceMatch, StrMatch, Values, Workloads,
};
use super::spec::{self, AuthorizationPolicySpec, TargetRef};
use crate::error::FieldError;
use crate::parse::parse_cidr;

pub(crate) fn unsupported(field: impl Into<String>, why: &str) -> FieldError {
    FieldError::new(
        field,
        format!(
            "valid Istio, but not supported by wiremesh ({why}); refused rather than ignored, \
             since ignoring it would change what the policy allows"
        ),
    )
}

/// Converts the spec of AuthorizationPolicy `namespace/name`; `root` is the root namespace.
pub fn authorization_policy(
    spec: &AuthorizationPolicySpec,
    namespace: &str,
    name: &str,
    root: &str,
) -> Result<AuthzPolicy, FieldError> {
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => Action::Allow,
        Some("DENY") => Action::Deny,
        Some("AUDIT") => Action::Audit,
        Some("CUSTOM") => {
            return Err(unsupported(
                "spec.action",
                "CUSTOM needs an ext_authz provider",
            ))
        }
        Some(other) => {
            return Err(FieldError::new(
                "spec.action",
                format!("unknown action {other:?} (expected ALLOW, DENY, AUDIT or CUSTOM)"),
            ))
        }
    };
    if spec.provider.is_some() {
        return Err(unsupported(
            "spec.provider",
            "CUSTOM actions are not enforced",
        ));
    }
    let workloads = workloads(spec, namespace, root)?;
    let rules = spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(r, &format!("spec.rules[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AuthzPolicy {
        id: IstioId {
            kind: IstioKind::AuthorizationPolicy,
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
        action,
        workloads,
        rules,
    })
}

fn workloads(
    spec: &AuthorizationPolicySpec,
    namespace: &str,
    root: &str,
) -> Result<Workloads, FieldError> {
    let mut refs: Vec<(&TargetRef, String)> = Vec::new();
    if let Some(r) = &spec.target_ref {
        refs.push((r, "spec.targetRef".into()));
    }
    for (i, r) in spec.target_refs.iter().flatten().enumerate() {
        refs.push((r, format!("spec.targetRefs[{i}]")));
    }
    if spec.target_ref.is_some() && spec.target_refs.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(FieldError::new(
            "spec.targetRef",
            "targetRef and targetRefs are mutually exclusive",
        ));
    }
    let labels = spec.selector.as_ref().and_then(|s| s.match_labels.clone());
    if !refs.is_empty() {
        if spec.selector.is_some() {
            // Istio's validation: "only one of targetRefs or workloadSelector can be set".
            return Err(FieldError::new(
                "spec.selector",
                "selector and targetRefs are mutually exclusive",
            ));
        }
        let mut names = Vec::new();
        for (r, field) in refs {
            names.push(service_ref(r, &field, namespace)?);
        }
        return Ok(Workloads::Services(names));
    }
    Ok(match labels {
        Some(l) if !l.is_empty() => Workloads::Selector(l),
        _ if namespace == root => Workloads::Mesh,
        _ => Workloads::Namespace,
    })
}

/// A targetRef must name a core Service in the policy's own namespace.
fn service_ref(r: &TargetRef, field: &str, namespace: &str) -> Result<String, FieldError> {
    let core = matches!(r.group.as_deref(), None | Some("") | Some("core"));
    if !core || r.kind != "Service" {
        return Err(unsupported(
            format!("{field}.kind"),
            &format!(
                "only kind Service of the core group can be targeted, not {}/{} (no Gateway, \
                 waypoint or ServiceEntry here)",
                r.group.as_deref().unwrap_or(""),
                r.kind
            ),
        ));
    }
    if let Some(ns) = r.namespace.as_deref().filter(|ns| *ns != namespace) {
        return Err(FieldError::new(
            format!("{field}.namespace"),
            format!("targetRef namespace {ns:?} must be the policy's own ({namespace:?})"),
        ));
    }
    Ok(r.name.clone())
}

fn rule(r: &spec::Rule, field: &str) -> Result<AuthzRule, FieldError> {
    let mut from = Vec::new();
    for (i, f) in r.from.iter().flatten().enumerate() {
        let ff = format!("{field}.from[{i}].source");
        let Some(s) = &f.source else {
            return Err(FieldError::new(ff, "`from.source` must not be nil"));
        };
        from.push(source(s, &ff)?);
    }
    let mut to = Vec::new();
    for (i, t) in r.to.iter().flatten().enumerate() {
        let tf = format!("{field}.to[{i}].operation");
        let Some(o) = &t.operation else {
            return Err(FieldError::new(tf, "`to.operation` must not be nil"));
        };
        to.push(operation(o, &tf)?);
    }
    let mut when = Vec::new();
    for (i, c) in r.when.iter().flatten().enumerate() {
        when.push(condition(c, &format!("{field}.when[{i}]"))?);
    }
    Ok(AuthzRule {
        field: field.to_string(),
        from,
        to,
        when,
    })
}

fn list(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or_default()
}

fn source(s: &spec::Source, field: &str) -> Result<SourceMatch, FieldError> {
    for (name, v) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
    ] {
        if !list(v).is_empty() {
            return Err(unsupported(
                format!("{field}.{name}"),
                "no JWT authentication",
            ));
        }
    }
    for (name, v) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        if !list(v).is_empty() {
            return Err(unsupported(format!("{field}.{name}"), "use principals"));
        }
    }
    let strs =
        |v: &Option<Vec<String>>, name: &str| strings(list(v), &format!("{field}.{name}"), false);
    let ips = |v: &Option<Vec<String>>, name: &str| cidrs(list(v), &format!("{field}.{name}"));
    let out = SourceMatch {
        principals: strs(&s.principals, "principals")?,
        not_principals: strs(&s.not_principals, "notPrincipals")?,
        namespaces: strs(&s.namespaces, "namespaces")?,
        not_namespaces: strs(&s.not_namespaces, "notNamespaces")?,
        ip_blocks: ips(&s.ip_blocks, "ipBlocks")?,
        not_ip_blocks: ips(&s.not_ip_blocks, "notIpBlocks")?,
        remote_ip_blocks: ips(&s.remote_ip_blocks, "remoteIpBlocks")?,
        not_remote_ip_blocks: ips(&s.not_remote_ip_blocks, "notRemoteIpBlocks")?,
    };
    if out == SourceMatch::default() {
        return Err(FieldError::new(field, "`from.source` must not be empty"));
    }
    Ok(out)
}

fn operation(o: &spec::Operation, field: &str) -> Result<OperationMatch, FieldError> {
    let strs = |v: &Option<Vec<String>>, name: &str, lower| {
        strings(list(v), &format!("{field}.{name}"), lower)
    };
    let out = OperationMatch {
        hosts: strs(&o.hosts, "hosts", true)?,
        not_hosts: strs(&o.not_hosts, "notHosts", true)?,
        ports: ports(list(&o.ports), &format!("{field}.ports"))?,
        not_ports: ports(list(&o.not_ports), &format!("{field}.notPorts"))?,
        methods: strs(&o.methods, "methods", false)?,
        not_methods: strs(&o.not_methods, "notMethods", false)?,
        paths: strs(&o.paths, "paths", false)?,
        not_paths: strs(&o.not_paths, "notPaths", false)?,
    };
    if out == OperationMatch::default() {
        return Err(FieldError::new(field, "`to.operation` must not be empty"));
    }
    for (i, p) in list(&o.paths).iter().chain(list(&o.not_paths)).enumerate() {
        if p.contains('{') {
            return Err(unsupported(
                format!("{field}.paths[{i}]"),
                "path templates ({*}, {**}) are not matched",
            ));
        }
    }
    Ok(out)
}

fn condition(c: &spec::Condition, field: &str) -> Result<Condition, FieldError> {
    let key = condition_key(&c.key, &format!("{field}.key"))?;
    let typed = |v: &Option<Vec<String>>, name: &str| -> Result<Values, FieldError> {
        let f = format!("{field}.{name}");
        Ok(match key {
            ConditionKey::SourceIp | ConditionKey::DestinationIp => Values::Ip(cidrs(list(v), &f)?),
            ConditionKey::DestinationPort => Values::Port(ports(list(v), &f)?),
            _ => Values::Str(strings(list(v), &f, false)?),
        })
    };
    let values = typed(&c.values, "values")?;
    let not_values = typed(&c.not_values, "notValues")?;
    if values.is_empty() && not_values.is_empty() {
        return Err(FieldError::new(
            field,
            "at least one of values or notValues must be set",
        ));
    }
    Ok(Condition {
        key,
        values,
        not_values,
    })
}

fn condition_key(key: &str, field: &str) -> Result<ConditionKey, FieldError> {
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        if name.is_empty() {
            return Err(FieldError::new(
                field,
                "request.headers[] needs a header name",
            ));
        }
        return Ok(ConditionKey::Header(name.to_string()));
    }
    Ok(match key {
        "source.ip" | "remote.ip" => ConditionKey::SourceIp,
        "source.namespace" => ConditionKey::SourceNamespace,
        "source.principal" => ConditionKey::SourcePrincipal,
        "destination.ip" => ConditionKey::DestinationIp,
        "destination.port" => ConditionKey::DestinationPort,
        "connection.sni" => return Err(unsupported(field, "connection.sni: no TLS inspection")),
        k if k.starts_with("request.auth.") => {
            return Err(unsupported(field, &format!("{k}: no JWT authentication")))
        }
        k if k.starts_with("experimental.") => {
            return Err(unsupported(field, &format!("{k}: experimental keys")))
        }
        other => {
            return Err(FieldError::new(
                field,
                format!(
                    "unsupported key {other:?} (expected request.headers[NAME], source.ip, \
                     remote.ip, source.namespace, source.principal, destination.ip or \
                     destination.port)"
                ),
            ))
        }
    })
}

/// Istio's string forms; `lower` for hosts, which match case-insensitively.
fn strings(v: &[String], field: &str, lower: bool) -> Result<Vec<StrMatch>, FieldError> {
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            if s.is_empty() {
                return Err(FieldError::new(format!("{field}[{i}]"), "empty value"));
            }
            let s = if lower {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            };
            Ok(str_match(&s))
        })
        .collect()
}

/// `*` any non-empty value, `*abc` suffix, `abc*` prefix, else exact (Istio's
/// `StringMatcherWithPrefix` order: suffix is tried before prefix).
pub fn str_match(s: &str) -> StrMatch {
    if s == "*" {
        StrMatch::Present
    } else if let Some(rest) = s.strip_prefix('*') {
        StrMatch::Suffix(rest.to_string())
    } else if let Some(rest) = s.strip_suffix('*') {
        StrMatch::Prefix(rest.to_string())
    } else {
        StrMatch::Exact(s.to_string())
    }
}

fn cidrs(v: &[String], field: &str) -> Result<Vec<IpNet>, FieldError> {
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            parse_cidr(s, true).map_err(|e| FieldError::new(format!("{field}[{i}]"), e.to_string()))
        })
        .collect()
}

fn ports(v: &[String], field: &str) -> Result<Vec<u16>, FieldError> {
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                FieldError::new(
                    format!("{field}[{i}]"),
                    format!("invalid port {s:?} (expected a number 1-65535)"),
                )
            })
        })
        .collect()
}
