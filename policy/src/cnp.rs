//! CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy → the policy model: the subject, and
//! each rule's peers (endpoints, CIDRs, entities); its ports are read in [`ports`]. It must never
//! drop a field it does not enforce: a valid Cilium field wiremesh cannot honour is refused by
//! name.

mod ports;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::cilium::{CidrRule, EgressRule, IcmpRule, IngressRule, PortRule, RuleSpec};
use crate::error::FieldError;
use crate::labels::Selector;
use crate::model::{
    Entity, Peer, Peers, Policy, PolicyId, PortSpec, PortValue, Ports, ProtoMatch, Rule, Subject,
    POD_NAMESPACE_LABEL,
};
use crate::parse::parse_cidr;
use ports::{icmp_field, port_rule};

/// How a rule list is read.
#[derive(Clone, Copy)]
pub(super) struct Ctx<'a> {
    /// `None` for a CiliumClusterwideNetworkPolicy.
    ns: Option<&'a str>,
    deny: bool,
    ingress: bool,
    /// Accept `rules.http` into the model instead of refusing it (see `LoadOptions`).
    l7_model: bool,
    /// The subject is nodes (`nodeSelector`): the L7 proxy serves pods only.
    host: bool,
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
    let subject = subject(spec, namespace, base)?;
    let host = matches!(subject, Subject::Nodes(_));
    let ctx = |ingress, deny| Ctx {
        ns: namespace,
        deny,
        ingress,
        l7_model,
        host,
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

/// Whom the rule spec applies to: endpoints (of the policy's namespace, for a
/// CiliumNetworkPolicy) or nodes (CiliumClusterwideNetworkPolicy only).
fn subject(spec: &RuleSpec, namespace: Option<&str>, base: &str) -> Result<Subject, FieldError> {
    Ok(
        match (&spec.endpoint_selector, &spec.node_selector, namespace) {
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
            (None, Some(sel), None) => {
                Subject::Nodes(selector(sel, &format!("{base}.nodeSelector"))?)
            }
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
        },
    )
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

pub(super) fn unsupported(field: String) -> FieldError {
    FieldError::new(
        field,
        "valid Cilium, but not supported by wiremesh; refused rather than ignored, \
         since ignoring it would change what the policy allows",
    )
}

fn rule(c: &Common<'_>, field: &str, ctx: Ctx<'_>) -> Result<Rule, FieldError> {
    for (name, present) in &c.unsupported {
        if *present {
            return Err(unsupported(format!("{field}.{name}")));
        }
    }
    let (any_l3, peers) = peers(c, field, ctx)?;
    let (any_l4, specs) = l4(c, field, ctx)?;
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

/// The rule's L3 peers, and whether it names any (an empty list is not "none named").
fn peers(c: &Common<'_>, field: &str, ctx: Ctx<'_>) -> Result<(bool, Vec<Peer>), FieldError> {
    let p = c.prefix;
    let mut peers = Vec::new();
    let mut any_l3 = false;
    for (i, sel) in c.endpoints.iter().copied().flatten().enumerate() {
        any_l3 = true;
        let mut s = selector(sel, &format!("{field}.{p}Endpoints[{i}]"))?;
        // Cilium docs: in a CiliumNetworkPolicy, endpoint selectors match the policy's own
        // namespace unless they name `io.kubernetes.pod.namespace` themselves.
        if let Some(ns) = ctx.ns {
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
            .map_err(|e| FieldError::new(format!("{field}.{p}CIDR[{i}]"), e.to_string()))?;
        peers.push(Peer::Cidr {
            cidr: net,
            except: Vec::new(),
        });
    }
    for (i, set) in c.cidr_set.iter().copied().flatten().enumerate() {
        any_l3 = true;
        peers.push(cidr_set(set, &format!("{field}.{p}CIDRSet[{i}]"))?);
    }
    for (i, e) in c.entities.iter().copied().flatten().enumerate() {
        any_l3 = true;
        peers.push(Peer::Entity(entity(e, ctx.deny).map_err(|e| {
            FieldError::new(format!("{field}.{p}Entities[{i}]"), e.to_string())
        })?));
    }
    Ok((any_l3, peers))
}

/// One `fromCIDRSet` / `toCIDRSet` entry at field `f`.
fn cidr_set(set: &CidrRule, f: &str) -> Result<Peer, FieldError> {
    if set.cidr_group_ref.is_some() {
        return Err(unsupported(format!("{f}.cidrGroupRef")));
    }
    if set.cidr_group_selector.is_some() {
        return Err(unsupported(format!("{f}.cidrGroupSelector")));
    }
    let Some(cidr) = &set.cidr else {
        return Err(FieldError::new(format!("{f}.cidr"), "missing"));
    };
    let net =
        parse_cidr(cidr, true).map_err(|e| FieldError::new(format!("{f}.cidr"), e.to_string()))?;
    let mut except = Vec::new();
    for (j, e) in set.except.iter().flatten().enumerate() {
        let ef = format!("{f}.except[{j}]");
        let en = parse_cidr(e, true).map_err(|err| FieldError::new(&ef, err.to_string()))?;
        if !net.contains(&en) {
            return Err(FieldError::new(
                ef,
                format!("{e} is not inside cidr {cidr}"),
            ));
        }
        except.push(en);
    }
    Ok(Peer::Cidr { cidr: net, except })
}

/// The rule's port specs (`toPorts`, `icmps`), and whether it names any.
fn l4(c: &Common<'_>, field: &str, ctx: Ctx<'_>) -> Result<(bool, Vec<PortSpec>), FieldError> {
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
                .map_err(|e| FieldError::new(ff, e.to_string()))?;
            specs.push(PortSpec {
                protocol: ProtoMatch::One(proto),
                port: PortValue::Range(ty, ty),
                http: None,
            });
        }
    }
    Ok((any_l4, specs))
}

fn selector(sel: &LabelSelector, field: &str) -> Result<Selector, FieldError> {
    Selector::compile(sel, true)
        .map_err(|e| FieldError::new(format!("{field}.{}", e.field), e.message))
}

/// Why an entity name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum EntityError {
    /// The world of one family would be matched as the world of both: wider in an allow rule,
    /// narrower in a deny rule.
    #[error(
        "valid Cilium, but wiremesh does not tell the world's address families apart; \
             entity {0:?} is refused (use world, or toCIDR 0.0.0.0/0 or ::/0)"
    )]
    WorldFamily(String),
    #[error(
        "valid Cilium, but entity {entity:?} selects nothing in wiremesh (it has no {entity} \
                 identity); refused, since this {verb} rule would {verb} nothing"
    )]
    SelectsNothing { entity: String, verb: &'static str },
    #[error(
        "unknown entity {0:?} (expected world, cluster, host, remote-node or all; \
             kube-apiserver, health, init, unmanaged and ingress are refused)"
    )]
    Unknown(String),
}

/// Cilium's entities. Those that stand for something wiremesh has no identity for are refused:
/// in a deny rule they would deny nothing, in an allow rule allow nothing, and neither is what
/// the rule says.
fn entity(s: &str, deny: bool) -> Result<Entity, EntityError> {
    match s {
        "world" => Ok(Entity::World),
        "world-ipv4" | "world-ipv6" => Err(EntityError::WorldFamily(s.to_string())),
        "cluster" => Ok(Entity::Cluster),
        "host" => Ok(Entity::Host),
        "remote-node" => Ok(Entity::RemoteNode),
        "all" => Ok(Entity::All),
        "kube-apiserver" | "health" | "init" | "unmanaged" | "ingress" => {
            Err(EntityError::SelectsNothing {
                entity: s.to_string(),
                verb: if deny { "deny" } else { "allow" },
            })
        }
        other => Err(EntityError::Unknown(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::ports::{icmp_field, IcmpError};
    use super::*;
    use crate::cilium::StrOrInt;
    use crate::parse::{parse_cidr, valid_port_name};

    /// The refusals' texts, word for word: users read them in `apply` and the agent's log.
    #[test]
    fn refusals_read_as_before() {
        let text = |s: &str, deny: bool| entity(s, deny).unwrap_err().to_string();
        assert_eq!(
            text("world-ipv4", false),
            "valid Cilium, but wiremesh does not tell the world's address families apart; \
             entity \"world-ipv4\" is refused (use world, or toCIDR 0.0.0.0/0 or ::/0)"
        );
        assert_eq!(
            text("health", true),
            "valid Cilium, but entity \"health\" selects nothing in wiremesh (it has no health \
             identity); refused, since this deny rule would deny nothing"
        );
        assert_eq!(
            text("everyone", false),
            "unknown entity \"everyone\" (expected world, cluster, host, remote-node or all; \
             kube-apiserver, health, init, unmanaged and ingress are refused)"
        );
        let icmp = |family, ty| icmp_field(family, &ty).unwrap_err();
        assert_eq!(
            icmp(Some("IPv5"), StrOrInt::Int(8)).to_string(),
            "unknown family \"IPv5\" (expected IPv4 or IPv6)"
        );
        assert_eq!(
            icmp(None, StrOrInt::Str("Echo".into())).to_string(),
            "unknown ICMP type \"Echo\""
        );
        assert_eq!(icmp(None, StrOrInt::Int(256)), IcmpError::OutOfRange(256));
        assert_eq!(
            IcmpError::OutOfRange(256).to_string(),
            "ICMP type 256 is out of range (0-255)"
        );
        assert_eq!(
            parse_cidr("10.0.0.0/33", true).unwrap_err().to_string(),
            "invalid CIDR \"10.0.0.0/33\""
        );
        assert_eq!(
            valid_port_name("HTTP").unwrap_err().to_string(),
            "\"HTTP\" is neither a port number nor a valid port name (IANA service name: at most \
             15 lower-case letters, digits and '-')"
        );
    }
}
