//! The L4 and L7 half of a Cilium rule: `toPorts` entries (ports, ranges, named ports and their
//! `rules`) and `icmps` fields, read into port specs. What wiremesh cannot enforce as written
//! (an HTTP rule without the L7 model, a narrow DNS rule, TLS interception) is refused by name:
//! enforcing only the port would allow more than the rule says.

use yaml_serde::Value;

use super::{unsupported, Ctx};
use crate::cilium::{HttpRuleSpec, L7Rules, PortProtocol, PortRule, StrOrInt};
use crate::error::FieldError;
use crate::http::{HttpRule, Pattern};
use crate::model::{PortSpec, PortValue, ProtoMatch, Protocol};
use crate::parse::valid_port_name;

/// One `toPorts` entry: a port spec per listed port (or one for every port), each carrying the
/// entry's HTTP rules.
pub(super) fn port_rule(
    pr: &PortRule,
    field: &str,
    ctx: Ctx<'_>,
) -> Result<Vec<PortSpec>, FieldError> {
    for (name, present) in [
        ("terminatingTLS", pr.terminating_tls.is_some()),
        ("originatingTLS", pr.originating_tls.is_some()),
        ("serverNames", pr.server_names.is_some()),
        ("listener", pr.listener.is_some()),
    ] {
        if present {
            return Err(unsupported(format!("{field}.{name}")));
        }
    }
    let http = match &pr.rules {
        None => None,
        Some(rules) => l7_rules(rules, &format!("{field}.rules"), ctx)?,
    };
    let Some(ports) = pr.ports.as_ref().filter(|p| !p.is_empty()) else {
        return Ok(vec![PortSpec {
            protocol: ProtoMatch::AnyL4,
            port: PortValue::All,
            http,
        }]);
    };
    let mut out = Vec::new();
    for (i, pp) in ports.iter().enumerate() {
        let f = format!("{field}.ports[{i}]");
        out.push(PortSpec {
            protocol: protocol(pp, &f)?,
            port: port(pp, &f)?,
            http: http.clone(),
        });
    }
    Ok(out)
}

/// Cilium docs, PortProtocol.protocol: "Accepted values: TCP, UDP, SCTP, ANY. Matching on ICMP
/// is not supported." Default ANY.
fn protocol(pp: &PortProtocol, f: &str) -> Result<ProtoMatch, FieldError> {
    Ok(match pp.protocol.as_deref() {
        None | Some("ANY") => ProtoMatch::AnyL4,
        Some("TCP") => ProtoMatch::One(Protocol::Tcp),
        Some("UDP") => ProtoMatch::One(Protocol::Udp),
        Some("SCTP") => ProtoMatch::One(Protocol::Sctp),
        Some(other) => {
            return Err(FieldError::new(
                format!("{f}.protocol"),
                format!("unsupported protocol {other:?} (expected TCP, UDP, SCTP or ANY)"),
            ))
        }
    })
}

/// The port (or range, or name) of one `ports[i]` entry at field `f`.
fn port(pp: &PortProtocol, f: &str) -> Result<PortValue, FieldError> {
    let number = match &pp.port {
        None => Some(0),
        Some(StrOrInt::Int(n)) => Some(*n),
        Some(StrOrInt::Str(s)) => s.parse::<i64>().ok(),
    };
    match (number, &pp.port) {
        (Some(n), _) => port_range(n, pp.end_port, f),
        (None, Some(StrOrInt::Str(name))) => {
            if pp.end_port.is_some() {
                return Err(FieldError::new(
                    format!("{f}.endPort"),
                    format!("endPort cannot be used with the named port {name:?}"),
                ));
            }
            valid_port_name(name)
                .map_err(|e| FieldError::new(format!("{f}.port"), e.to_string()))?;
            Ok(PortValue::Named(name.clone()))
        }
        (None, _) => Ok(PortValue::All),
    }
}

/// Port `n` up to `end_port`, at field `f`.
fn port_range(n: i64, end_port: Option<i64>, f: &str) -> Result<PortValue, FieldError> {
    let start = u16::try_from(n).map_err(|_| {
        FieldError::new(
            format!("{f}.port"),
            format!("port {n} is out of range (0-65535)"),
        )
    })?;
    let end = match end_port {
        None | Some(0) => start,
        Some(e) => u16::try_from(e)
            .ok()
            .filter(|e| *e >= start)
            .ok_or_else(|| {
                FieldError::new(
                    format!("{f}.endPort"),
                    format!("endPort {e} must be within 0-65535 and not below port {start}"),
                )
            })?,
    };
    // Cilium docs: "If omitted or zero, any port matches."
    Ok(if start == 0 {
        PortValue::All
    } else {
        PortValue::Range(start, end)
    })
}

/// A port rule's `rules` (`field` = `...toPorts[i].rules`): the HTTP rules that restrict it
/// (`None`: unrestricted). HTTP rules are accepted when `ctx.l7_model` (the default: the L7
/// filter enforces them); DNS rules only when they allow every query (`matchPattern: "*"`,
/// Cilium's "visibility" rule); Kafka and generic L7 never, since nothing enforces them and an
/// L4 allow would let every request through.
fn l7_rules(
    rules: &L7Rules,
    field: &str,
    ctx: Ctx<'_>,
) -> Result<Option<Vec<HttpRule>>, FieldError> {
    let present = |v: &Option<Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::Sequence(list)) => !list.is_empty(),
        Some(_) => true,
    };
    let http = rules.http.as_ref().filter(|l| !l.is_empty());
    let dns = present(&rules.dns);
    if ctx.deny {
        return Err(FieldError::new(
            field,
            "L7 rules are not allowed in deny rules",
        ));
    }
    for (name, v) in [
        ("kafka", &rules.kafka),
        ("l7proto", &rules.l7proto),
        ("l7", &rules.l7),
    ] {
        if v.is_some() {
            return Err(unsupported(format!("{field}.{name}")));
        }
    }
    if dns {
        dns_rules(rules.dns.as_ref(), &format!("{field}.dns"), ctx.ingress)?;
    }
    let Some(list) = http else {
        return Ok(None);
    };
    if !ctx.l7_model {
        return Err(FieldError::new(
            format!("{field}.http"),
            "valid Cilium, but HTTP rules are not enforced when loading without the L7 filter \
             (l7_model off); refused, since enforcing only the port would allow every method \
             and path",
        ));
    }
    if ctx.host {
        return Err(FieldError::new(
            format!("{field}.http"),
            "HTTP rules in a host policy (nodeSelector) are not enforced: the L7 proxy serves \
             pods only; refused, since the data path would drop every connection to the port",
        ));
    }
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        out.push(http_rule(h, &format!("{field}.http[{i}]"))?);
    }
    Ok(Some(out))
}

/// `rules.dns`: accepted only when every entry is `matchPattern: "*"`, which allows every query
/// and so restricts nothing beyond the rule's ports (Cilium uses it for DNS visibility, which
/// wiremesh does not provide).
fn dns_rules(dns: Option<&Value>, field: &str, ingress: bool) -> Result<(), FieldError> {
    if ingress {
        return Err(FieldError::new(
            field,
            "DNS rules restrict the queries a pod sends: only valid in egress rules",
        ));
    }
    let Some(Value::Sequence(list)) = dns else {
        return Err(FieldError::new(field, "expected a list of DNS rules"));
    };
    for (i, entry) in list.iter().enumerate() {
        let every_query = entry.as_mapping().is_some_and(|m| {
            m.len() == 1 && m.get("matchPattern").and_then(Value::as_str) == Some("*")
        });
        if !every_query {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                "valid Cilium, but wiremesh has no DNS proxy: only matchPattern: \"*\" \
                 (every query) is accepted; refused, since enforcing only the port would \
                 allow every name",
            ));
        }
    }
    Ok(())
}

fn http_rule(h: &HttpRuleSpec, field: &str) -> Result<HttpRule, FieldError> {
    let pat = |v: &Option<String>, name: &str| -> Result<Option<Pattern>, FieldError> {
        match v {
            None => Ok(None),
            Some(s) => Pattern::new(s).map(Some).map_err(|e| {
                FieldError::new(
                    format!("{field}.{name}"),
                    format!("invalid regex {s:?}: {e}"),
                )
            }),
        }
    };
    let mut headers = Vec::new();
    for (i, h) in h.headers.iter().flatten().enumerate() {
        match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => {
                headers.push((k.trim().to_string(), Some(v.trim().to_string())))
            }
            None if !h.trim().is_empty() => headers.push((h.trim().to_string(), None)),
            _ => {
                return Err(FieldError::new(
                    format!("{field}.headers[{i}]"),
                    format!("invalid header {h:?} (expected 'Name' or 'Name: value')"),
                ))
            }
        }
    }
    for (i, m) in h.header_matches.iter().flatten().enumerate() {
        let f = format!("{field}.headerMatches[{i}]");
        if m.mismatch.is_some() {
            return Err(unsupported(format!("{f}.mismatch")));
        }
        if m.secret.is_some() {
            return Err(unsupported(format!("{f}.secret")));
        }
        headers.push((m.name.clone(), m.value.clone()));
    }
    Ok(HttpRule {
        field: field.to_string(),
        method: pat(&h.method, "method")?,
        path: pat(&h.path, "path")?,
        host: pat(&h.host, "host")?,
        headers,
    })
}

/// Why an `icmps[i].fields[j]` entry names no ICMP type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum IcmpError {
    #[error("unknown family {0:?} (expected IPv4 or IPv6)")]
    Family(String),
    #[error("unknown ICMP type {0:?}")]
    Type(String),
    #[error("ICMP type {0} is out of range (0-255)")]
    OutOfRange(i64),
}

/// ICMP type by number or by the names Cilium accepts.
pub(super) fn icmp_field(
    family: Option<&str>,
    ty: &StrOrInt,
) -> Result<(Protocol, u16), IcmpError> {
    let v6 = match family {
        None | Some("IPv4") => false,
        Some("IPv6") => true,
        Some(other) => return Err(IcmpError::Family(other.to_string())),
    };
    let proto = if v6 { Protocol::Icmpv6 } else { Protocol::Icmp };
    let n = match ty {
        StrOrInt::Int(n) => *n,
        StrOrInt::Str(s) => match (s.as_str(), v6) {
            ("EchoReply", false) => 0,
            ("DestinationUnreachable", false) => 3,
            ("Redirect", false) => 5,
            ("EchoRequest", false) => 8,
            ("TimeExceeded", false) => 11,
            ("ParameterProblem", false) => 12,
            ("DestinationUnreachable", true) => 1,
            ("PacketTooBig", true) => 2,
            ("TimeExceeded", true) => 3,
            ("ParameterProblem", true) => 4,
            ("EchoRequest", true) => 128,
            ("EchoReply", true) => 129,
            (s, _) => s
                .parse::<i64>()
                .map_err(|_| IcmpError::Type(s.to_string()))?,
        },
    };
    let n = u8::try_from(n).map_err(|_| IcmpError::OutOfRange(n))?;
    Ok((proto, u16::from(n)))
}
