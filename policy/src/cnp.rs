//! CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy → the policy model.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use yaml_serde::Value;

use crate::cilium::{
    CidrRule, EgressRule, HttpRuleSpec, IcmpRule, IngressRule, L7Rules, PortRule, RuleSpec,
    StrOrInt,
};
use crate::error::FieldError;
use crate::http::{HttpRule, Pattern};
use crate::labels::Selector;
use crate::model::{
    Entity, Peer, Peers, Policy, PolicyId, PortSpec, PortValue, Ports, ProtoMatch, Protocol, Rule,
    Subject, POD_NAMESPACE_LABEL,
};
use crate::parse::{parse_cidr, valid_port_name};

/// How a rule list is read.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    /// `None` for a CiliumClusterwideNetworkPolicy.
    ns: Option<&'a str>,
    deny: bool,
    ingress: bool,
    /// Accept `rules.http` into the model instead of refusing it (see `LoadOptions`).
    l7_model: bool,
}

/// Converts one rule spec (`spec`, or `specs[i]` with `base` = `specs[i]`). `namespace` is
/// `None` for a CiliumClusterwideNetworkPolicy. `rules.http` is refused unless `l7_model`.
pub fn convert(
    spec: &RuleSpec,
    id: PolicyId,
    namespace: Option<&str>,
    base: &str,
    l7_model: bool,
) -> Result<Policy, FieldError> {
    let subject = match (&spec.endpoint_selector, &spec.node_selector, namespace) {
        (Some(_), Some(_), _) => {
            return Err(FieldError::new(
                base,
                "endpointSelector and nodeSelector are mutually exclusive",
            ))
        }
        (None, None, _) => {
            return Err(FieldError::new(
                base,
                "one of endpointSelector or nodeSelector is required",
            ))
        }
        (None, Some(_), Some(_)) => {
            return Err(FieldError::new(
                format!("{base}.nodeSelector"),
                "nodeSelector is only valid in a CiliumClusterwideNetworkPolicy",
            ))
        }
        (None, Some(sel), None) => Subject::Nodes(selector(sel, &format!("{base}.nodeSelector"))?),
        // Cilium docs: a CiliumNetworkPolicy's endpointSelector only selects endpoints of the
        // policy's namespace.
        (Some(sel), None, ns) => {
            let mut s = selector(sel, &format!("{base}.endpointSelector"))?;
            if let Some(ns) = ns {
                s.requirements
                    .push(Selector::equals(POD_NAMESPACE_LABEL, ns));
            }
            Subject::Endpoints(s)
        }
    };
    let ctx = |ingress, deny| Ctx {
        ns: namespace,
        deny,
        ingress,
        l7_model,
    };
    let ingress = rules(
        spec.ingress.as_ref(),
        &format!("{base}.ingress"),
        ctx(true, false),
    )?;
    let ingress_deny = rules(
        spec.ingress_deny.as_ref(),
        &format!("{base}.ingressDeny"),
        ctx(true, true),
    )?;
    let egress = rules(
        spec.egress.as_ref(),
        &format!("{base}.egress"),
        ctx(false, false),
    )?;
    let egress_deny = rules(
        spec.egress_deny.as_ref(),
        &format!("{base}.egressDeny"),
        ctx(false, true),
    )?;
    // Cilium: an endpoint selected by a rule with ingress (or ingressDeny) rules is in
    // default-deny for ingress, unless enableDefaultDeny.ingress is false; likewise egress.
    let dd = spec.enable_default_deny.clone().unwrap_or_default();
    let isolates_ingress =
        (!ingress.is_empty() || !ingress_deny.is_empty()) && dd.ingress != Some(false);
    let isolates_egress =
        (!egress.is_empty() || !egress_deny.is_empty()) && dd.egress != Some(false);
    Ok(Policy {
        id,
        subject,
        isolates_ingress,
        isolates_egress,
        ingress,
        egress,
        ingress_deny,
        egress_deny,
    })
}

/// The direction-independent view of an ingress or egress rule.
struct Common<'a> {
    endpoints: Option<&'a Vec<LabelSelector>>,
    cidr: Option<&'a Vec<String>>,
    cidr_set: Option<&'a Vec<CidrRule>>,
    entities: Option<&'a Vec<String>>,
    to_ports: Option<&'a Vec<PortRule>>,
    icmps: Option<&'a Vec<IcmpRule>>,
    /// (field name, present) of valid Cilium fields we refuse.
    unsupported: Vec<(&'static str, bool)>,
    /// "from" or "to".
    prefix: &'static str,
}

/// An ingress or egress rule as its direction-independent view.
trait Directional {
    fn common(&self) -> Common<'_>;
}

impl Directional for IngressRule {
    fn common(&self) -> Common<'_> {
        Common {
            endpoints: self.from_endpoints.as_ref(),
            cidr: self.from_cidr.as_ref(),
            cidr_set: self.from_cidr_set.as_ref(),
            entities: self.from_entities.as_ref(),
            to_ports: self.to_ports.as_ref(),
            icmps: self.icmps.as_ref(),
            unsupported: vec![
                ("fromRequires", self.from_requires.is_some()),
                ("fromGroups", self.from_groups.is_some()),
                ("fromNodes", self.from_nodes.is_some()),
                ("authentication", self.authentication.is_some()),
            ],
            prefix: "from",
        }
    }
}

impl Directional for EgressRule {
    fn common(&self) -> Common<'_> {
        Common {
            endpoints: self.to_endpoints.as_ref(),
            cidr: self.to_cidr.as_ref(),
            cidr_set: self.to_cidr_set.as_ref(),
            entities: self.to_entities.as_ref(),
            to_ports: self.to_ports.as_ref(),
            icmps: self.icmps.as_ref(),
            unsupported: vec![
                ("toRequires", self.to_requires.is_some()),
                ("toServices", self.to_services.is_some()),
                ("toFQDNs", self.to_fqdns.is_some()),
                ("toGroups", self.to_groups.is_some()),
                ("toNodes", self.to_nodes.is_some()),
                ("authentication", self.authentication.is_some()),
            ],
            prefix: "to",
        }
    }
}

/// The rules of `spec.<field>` (`ingress`, `egressDeny`, …).
fn rules<R: Directional>(
    list: Option<&Vec<R>>,
    field: &str,
    ctx: Ctx<'_>,
) -> Result<Vec<Rule>, FieldError> {
    list.iter()
        .copied()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(&r.common(), &format!("{field}[{i}]"), ctx))
        .collect()
}

fn unsupported(field: String) -> FieldError {
    FieldError::new(
        field,
        "valid Cilium, but not supported by wiremesh; refused rather than ignored, \
         since ignoring it would change what the policy allows",
    )
}

fn rule(c: &Common<'_>, field: &str, ctx: Ctx<'_>) -> Result<Rule, FieldError> {
    let ns = ctx.ns;
    for (name, present) in &c.unsupported {
        if *present {
            return Err(unsupported(format!("{field}.{name}")));
        }
    }
    let p = c.prefix;
    let mut peers = Vec::new();
    let mut any_l3 = false;
    for (i, sel) in c.endpoints.iter().copied().flatten().enumerate() {
        any_l3 = true;
        let mut s = selector(sel, &format!("{field}.{p}Endpoints[{i}]"))?;
        // Cilium docs: in a CiliumNetworkPolicy, endpoint selectors match the policy's own
        // namespace unless they name `io.kubernetes.pod.namespace` themselves.
        if let Some(ns) = ns {
            if !s.has_key(POD_NAMESPACE_LABEL) && !s.names_reserved() {
                s.requirements
                    .push(Selector::equals(POD_NAMESPACE_LABEL, ns));
            }
        }
        peers.push(Peer::Endpoints(s));
    }
    for (i, cidr) in c.cidr.iter().copied().flatten().enumerate() {
        any_l3 = true;
        let net = parse_cidr(cidr, true)
            .map_err(|m| FieldError::new(format!("{field}.{p}CIDR[{i}]"), m))?;
        peers.push(Peer::Cidr {
            cidr: net,
            except: Vec::new(),
        });
    }
    for (i, set) in c.cidr_set.iter().copied().flatten().enumerate() {
        any_l3 = true;
        let f = format!("{field}.{p}CIDRSet[{i}]");
        if set.cidr_group_ref.is_some() {
            return Err(unsupported(format!("{f}.cidrGroupRef")));
        }
        if set.cidr_group_selector.is_some() {
            return Err(unsupported(format!("{f}.cidrGroupSelector")));
        }
        let Some(cidr) = &set.cidr else {
            return Err(FieldError::new(format!("{f}.cidr"), "missing"));
        };
        let net = parse_cidr(cidr, true).map_err(|m| FieldError::new(format!("{f}.cidr"), m))?;
        let mut except = Vec::new();
        for (j, e) in set.except.iter().flatten().enumerate() {
            let ef = format!("{f}.except[{j}]");
            let en = parse_cidr(e, true).map_err(|m| FieldError::new(&ef, m))?;
            if !net.contains(&en) {
                return Err(FieldError::new(
                    ef,
                    format!("{e} is not inside cidr {cidr}"),
                ));
            }
            except.push(en);
        }
        peers.push(Peer::Cidr { cidr: net, except });
    }
    for (i, e) in c.entities.iter().copied().flatten().enumerate() {
        any_l3 = true;
        peers.push(Peer::Entity(entity(e, ctx.deny).map_err(|m| {
            FieldError::new(format!("{field}.{p}Entities[{i}]"), m)
        })?));
    }
    let mut specs = Vec::new();
    let mut any_l4 = false;
    for (i, pr) in c.to_ports.iter().copied().flatten().enumerate() {
        any_l4 = true;
        specs.extend(port_rule(pr, &format!("{field}.toPorts[{i}]"), ctx)?);
    }
    for (i, icmp) in c.icmps.iter().copied().flatten().enumerate() {
        any_l4 = true;
        for (j, f) in icmp.fields.iter().flatten().enumerate() {
            let ff = format!("{field}.icmps[{i}].fields[{j}]");
            let (proto, ty) = icmp_field(f.family.as_deref(), &f.icmp_type)
                .map_err(|m| FieldError::new(ff, m))?;
            specs.push(PortSpec {
                protocol: ProtoMatch::One(proto),
                port: PortValue::Range(ty, ty),
                http: None,
            });
        }
    }
    // Cilium: a rule without L3 fields but with toPorts/icmps applies to every peer; a rule
    // with neither (`ingress: [{}]`) allows nothing and only puts the endpoint in
    // default-deny.
    let peers = match (any_l3, any_l4) {
        (true, _) => Peers::List(peers),
        (false, true) => Peers::All,
        (false, false) => Peers::List(Vec::new()),
    };
    let ports = if any_l4 {
        Ports::List(specs)
    } else {
        Ports::All
    };
    Ok(Rule {
        field: field.to_string(),
        peers,
        ports,
    })
}

fn selector(sel: &LabelSelector, field: &str) -> Result<Selector, FieldError> {
    Selector::compile(sel, true)
        .map_err(|e| FieldError::new(format!("{field}.{}", e.field), e.message))
}

/// Cilium's entities. Those that stand for something wiremesh has no identity for are refused:
/// in a deny rule they would deny nothing, in an allow rule allow nothing, and neither is what
/// the rule says.
fn entity(s: &str, deny: bool) -> Result<Entity, String> {
    match s {
        "world" => Ok(Entity::World),
        // The world of one family would be matched as the world of both: wider in an allow
        // rule, narrower in a deny rule.
        "world-ipv4" | "world-ipv6" => Err(format!(
            "valid Cilium, but wiremesh does not tell the world's address families apart; \
             entity {s:?} is refused (use world, or toCIDR 0.0.0.0/0 or ::/0)"
        )),
        "cluster" => Ok(Entity::Cluster),
        "host" => Ok(Entity::Host),
        "remote-node" => Ok(Entity::RemoteNode),
        "all" => Ok(Entity::All),
        "kube-apiserver" | "health" | "init" | "unmanaged" | "ingress" => {
            let verb = if deny { "deny" } else { "allow" };
            Err(format!(
                "valid Cilium, but entity {s:?} selects nothing in wiremesh (it has no {s} \
                 identity); refused, since this {verb} rule would {verb} nothing"
            ))
        }
        other => Err(format!(
            "unknown entity {other:?} (expected world, cluster, host, remote-node or all; \
             kube-apiserver, health, init, unmanaged and ingress are refused)"
        )),
    }
}

fn port_rule(pr: &PortRule, field: &str, ctx: Ctx<'_>) -> Result<Vec<PortSpec>, FieldError> {
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
        // Cilium docs, PortProtocol.protocol: "Accepted values: TCP, UDP, SCTP, ANY. Matching
        // on ICMP is not supported." Default ANY.
        let protocol = match pp.protocol.as_deref() {
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
        };
        let number = match &pp.port {
            None => Some(0),
            Some(StrOrInt::Int(n)) => Some(*n),
            Some(StrOrInt::Str(s)) => s.parse::<i64>().ok(),
        };
        let port = match (number, &pp.port) {
            (Some(n), _) => {
                let start = u16::try_from(n).map_err(|_| {
                    FieldError::new(
                        format!("{f}.port"),
                        format!("port {n} is out of range (0-65535)"),
                    )
                })?;
                let end = match pp.end_port {
                    None | Some(0) => start,
                    Some(e) => {
                        let e = u16::try_from(e).ok().filter(|e| *e >= start).ok_or_else(|| {
                            FieldError::new(
                                format!("{f}.endPort"),
                                format!("endPort {e} must be within 0-65535 and not below port {start}"),
                            )
                        })?;
                        e
                    }
                };
                // Cilium docs: "If omitted or zero, any port matches."
                if start == 0 {
                    PortValue::All
                } else {
                    PortValue::Range(start, end)
                }
            }
            (None, Some(StrOrInt::Str(name))) => {
                if pp.end_port.is_some() {
                    return Err(FieldError::new(
                        format!("{f}.endPort"),
                        format!("endPort cannot be used with the named port {name:?}"),
                    ));
                }
                valid_port_name(name).map_err(|m| FieldError::new(format!("{f}.port"), m))?;
                PortValue::Named(name.clone())
            }
            (None, _) => PortValue::All,
        };
        out.push(PortSpec {
            protocol,
            port,
            http: http.clone(),
        });
    }
    Ok(out)
}

/// A port rule's `rules` (`field` = `...toPorts[i].rules`): the HTTP rules that restrict it
/// (`None`: unrestricted). Only what restricts nothing beyond L4 is accepted — no list, empty
/// lists, and DNS rules that allow every query (`matchPattern: "*"`, Cilium's "visibility"
/// rule); everything else is refused by name, since no L7 filter enforces it yet and an L4
/// allow would let every request through.
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
            "valid Cilium, but HTTP rules are not enforced by wiremesh yet (no L7 filter); \
             refused, since enforcing only the port would allow every method and path",
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

/// ICMP type by number or by the names Cilium accepts.
fn icmp_field(family: Option<&str>, ty: &StrOrInt) -> Result<(Protocol, u16), String> {
    let v6 = match family {
        None | Some("IPv4") => false,
        Some("IPv6") => true,
        Some(other) => return Err(format!("unknown family {other:?} (expected IPv4 or IPv6)")),
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
            (s, _) => match s.parse::<i64>() {
                Ok(n) => n,
                Err(_) => return Err(format!("unknown ICMP type {s:?}")),
            },
        },
    };
    let n = u8::try_from(n).map_err(|_| format!("ICMP type {n} is out of range (0-255)"))?;
    Ok((proto, u16::from(n)))
}
