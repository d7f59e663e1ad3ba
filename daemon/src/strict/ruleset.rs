//! The strict-mode guard as data: the nftables table `inet wiremesh` built from the config alone
//! (the cluster pod pool, this node's pod CIDRs, the WireGuard interface's name), and the
//! reading of its drop counters. Pure: no `nft`, no kernel, so it is tested without root.
//!
//! It must never depend on the store or the data path: the guard has to hold before either
//! exists (at boot) and after both are gone.

use std::borrow::Cow;
use std::collections::HashSet;

use ipnet::IpNet;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{
    Chain, Counter, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{self, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::config::Config;

/// The table's name; the family is `inet` (IPv4 and IPv6 in one table).
pub const TABLE: &str = "wiremesh";
/// Rules in a complete table: one per direction and family.
pub const RULES: usize = 4;
/// `filter` in postrouting: after every routing decision and DNAT, so the destination and the
/// output interface are final.
const EGRESS_PRIORITY: i32 = 0;
/// `raw` in prerouting: before conntrack, so a spoofed packet leaves no state behind.
const INGRESS_PRIORITY: i32 = -300;

/// What the guard is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardSpec {
    /// The WireGuard interface (`interface`): the only way pool traffic may leave or enter.
    pub interface: String,
    /// The cluster's pod pool(s) (`clusterPodCIDRs`) and every remote cluster's
    /// (`clusterMesh.clusters[].podCIDRs`), merged.
    pub pool: Vec<IpNet>,
    /// This node's own pod CIDRs (`podCIDRs`), merged: traffic to and from them stays local.
    pub local: Vec<IpNet>,
}

impl GuardSpec {
    /// A stable fingerprint of what the table is built from, written into every rule's comment:
    /// a table built from another config (another agent started on this host with other
    /// settings, a stale boot-time guard) is told apart from ours and installed again.
    pub fn fingerprint(&self) -> String {
        let text = format!("{}|{:?}|{:?}", self.interface, self.pool, self.local);
        // FNV-1a: the same on every run and every build, unlike the standard library's hasher.
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("(spec {hash:016x})")
    }

    pub fn from_config(config: &Config) -> Self {
        // Every remote cluster's pools too, refused ones included: traffic to a cluster the
        // mesh does not (or no longer) reach is dropped, never sent in clear.
        let remote = config
            .cluster_mesh
            .iter()
            .flat_map(|r| &r.cluster.pod_cidrs);
        let pools: Vec<IpNet> = config
            .cluster_pod_cidrs
            .iter()
            .chain(remote)
            .copied()
            .collect();
        Self {
            interface: config.interface.clone(),
            // Aggregated: an interval set refuses overlapping elements.
            pool: IpNet::aggregate(&pools),
            // The host address too: the host's traffic to itself goes through `lo`.
            local: IpNet::aggregate(&config.published_pod_cidrs()),
        }
    }
}

/// Which way a dropped packet was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// To a remote pod, out of an interface other than the WireGuard one (would leave in clear).
    Egress,
    /// From a remote pod's address, in on an interface other than the WireGuard one (spoofed or
    /// unauthenticated).
    Ingress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    fn set_type(self) -> SetType {
        match self {
            Family::V4 => SetType::Ipv4Addr,
            Family::V6 => SetType::Ipv6Addr,
        }
    }

    fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

pub const DIRECTIONS: [Direction; 2] = [Direction::Egress, Direction::Ingress];
pub const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// `egress_ipv4`, ...: the named counter of one rule.
pub fn counter_name(direction: Direction, family: Family) -> String {
    format!("{}_{}", direction.as_str(), family.as_str())
}

fn set_name(what: &str, family: Family) -> String {
    format!("{what}_{}", family.as_str())
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

/// One nft transaction that replaces the table in place: `add` (a no-op if it exists), `delete`,
/// then the whole new table. The kernel commits a transaction atomically, so a packet meets
/// either the old table or the new one, never none.
pub fn install(spec: &GuardSpec) -> Nftables<'static> {
    let mut objects = vec![
        add(NfListObject::Table(table())),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
        add(NfListObject::Table(table())),
    ];
    for direction in DIRECTIONS {
        for family in FAMILIES {
            objects.push(add(NfListObject::Counter(Counter {
                family: NfFamily::INet,
                table: TABLE.into(),
                name: counter_name(direction, family).into(),
                handle: None,
                packets: None,
                bytes: None,
            })));
        }
    }
    for family in FAMILIES {
        objects.push(add(set("pool", family, &spec.pool)));
        objects.push(add(set("local", family, &spec.local)));
    }
    for (direction, hook, priority) in [
        (Direction::Egress, NfHook::Postrouting, EGRESS_PRIORITY),
        (Direction::Ingress, NfHook::Prerouting, INGRESS_PRIORITY),
    ] {
        objects.push(add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: direction.as_str().into(),
            _type: Some(NfChainType::Filter),
            hook: Some(hook),
            prio: Some(priority),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        })));
        for family in FAMILIES {
            objects.push(add(NfListObject::Rule(rule(spec, direction, family))));
        }
    }
    Nftables {
        objects: objects.into(),
    }
}

/// One transaction that removes the table if it exists (`add` first makes `delete` succeed
/// either way).
pub fn remove() -> Nftables<'static> {
    Nftables {
        objects: vec![
            add(NfListObject::Table(table())),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
        ]
        .into(),
    }
}

fn add(object: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(object))
}

fn set(what: &str, family: Family, nets: &[IpNet]) -> NfListObject<'static> {
    let elems: Vec<Expression<'static>> = nets
        .iter()
        .filter(|n| family.contains(n))
        .map(|n| {
            Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(Expression::String(n.network().to_string().into())),
                len: u32::from(n.prefix_len()),
            }))
        })
        .collect();
    NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: set_name(what, family).into(),
        handle: None,
        set_type: SetTypeValue::Single(family.set_type()),
        policy: None,
        flags: Some(HashSet::from([SetFlag::Interval])),
        elem: (!elems.is_empty()).then(|| Cow::Owned(elems)),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

/// Egress: `oifname != IF <proto> daddr @pool <proto> daddr != @local counter drop`.
/// Ingress: `iifname != IF <proto> saddr @pool <proto> saddr != @local counter drop`.
fn rule(spec: &GuardSpec, direction: Direction, family: Family) -> Rule<'static> {
    let (interface, address) = match direction {
        Direction::Egress => (MetaKey::Oifname, "daddr"),
        Direction::Ingress => (MetaKey::Iifname, "saddr"),
    };
    let field = || {
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: family.protocol().into(),
                field: address.into(),
            },
        )))
    };
    let matches = |left, op, right: String| {
        Statement::Match(Match {
            left,
            right: Expression::String(right.into()),
            op,
        })
    };
    let expr = vec![
        matches(
            Expression::Named(NamedExpression::Meta(Meta { key: interface })),
            Operator::NEQ,
            spec.interface.clone(),
        ),
        matches(
            field(),
            Operator::EQ,
            format!("@{}", set_name("pool", family)),
        ),
        matches(
            field(),
            Operator::NEQ,
            format!("@{}", set_name("local", family)),
        ),
        Statement::Counter(stmt::Counter::Named(counter_name(direction, family).into())),
        Statement::Drop(None),
    ];
    Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: direction.as_str().into(),
        expr: expr.into(),
        handle: None,
        index: None,
        comment: Some(
            format!(
                "{} {}",
                match direction {
                    Direction::Egress => "wiremesh strict mode: pod traffic to another node leaves only through the tunnel",
                    Direction::Ingress => "wiremesh strict mode: remote pod addresses arrive only through the tunnel",
                },
                spec.fingerprint()
            )
            .into(),
        ),
    }
}

/// Packets dropped by the guard, per direction and family (the table's named counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DropCounts {
    pub egress_ipv4: u64,
    pub egress_ipv6: u64,
    pub ingress_ipv4: u64,
    pub ingress_ipv6: u64,
}

impl DropCounts {
    pub fn get(&self, direction: Direction, family: Family) -> u64 {
        match (direction, family) {
            (Direction::Egress, Family::V4) => self.egress_ipv4,
            (Direction::Egress, Family::V6) => self.egress_ipv6,
            (Direction::Ingress, Family::V4) => self.ingress_ipv4,
            (Direction::Ingress, Family::V6) => self.ingress_ipv6,
        }
    }

    fn slot(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "egress_ipv4" => &mut self.egress_ipv4,
            "egress_ipv6" => &mut self.egress_ipv6,
            "ingress_ipv4" => &mut self.ingress_ipv4,
            "ingress_ipv6" => &mut self.ingress_ipv6,
            _ => return None,
        })
    }
}

/// What `nft -j list table inet wiremesh` shows of the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub drops: DropCounts,
    /// Whether all four rules (built from the expected spec) and all four counters are there:
    /// anything else is a damaged or foreign table that must be installed again.
    pub complete: bool,
}

/// Reads the counters and checks completeness from `nft -j list table inet wiremesh` output:
/// complete means every rule and counter is there and every rule was built from the spec whose
/// [`GuardSpec::fingerprint`] is `fingerprint`. Parsed as plain JSON: nft counts in 64 bits.
pub fn parse_listing(json: &str, fingerprint: &str) -> Result<Listed, serde_json::Error> {
    let doc: serde_json::Value = serde_json::from_str(json)?;
    let mut drops = DropCounts::default();
    let (mut counters, mut rules) = (0, 0);
    let items = doc["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for item in items {
        if let Some(c) = item.get("counter") {
            if c["table"] != TABLE {
                continue;
            }
            let name = c["name"].as_str().unwrap_or_default();
            if let Some(slot) = drops.slot(name) {
                *slot = c["packets"].as_u64().unwrap_or(0);
                counters += 1;
            }
        } else if let Some(r) = item.get("rule") {
            let ours = r["comment"]
                .as_str()
                .is_some_and(|c| c.ends_with(fingerprint));
            if r["table"] == TABLE && ours {
                rules += 1;
            }
        }
    }
    Ok(Listed {
        drops,
        complete: counters == RULES && rules == RULES,
    })
}

#[cfg(test)]
#[path = "ruleset_tests.rs"]
mod tests;
