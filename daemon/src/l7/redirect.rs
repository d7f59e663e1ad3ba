//! The kernel half of the L7 redirect as data: the nftables table `inet wiremesh_l7` that hands
//! connections the eBPF programs marked to the proxy's transparent listeners, and keeps the
//! packets of the proxy's connections on its sockets. Pure: no `nft`, so it is tested without
//! root (the lab tests run it in the kernel).
//!
//! The rules, in prerouting at `mangle` priority (after the strict guard's `raw` chain):
//! 1. `socket transparent 1` — a packet of a connection the proxy holds (the client's later
//!    packets, the server's replies to the proxy's upstream socket) is routed locally;
//! 2. a SYN marked `MARK_TO_PROXY_INGRESS` / `_EGRESS` by the programs goes to the ingress /
//!    egress listener (`tproxy`), per family.
//!
//! "Routed locally" is the mark [`MARK_LOCAL`] plus the policy routing rule the agent installs
//! (`fwmark MARK_LOCAL/MARK_MASK lookup` a table holding `local default dev lo`). It must never
//! match a packet the programs did not mark or that belongs to no proxy socket: everything else
//! passes this table untouched.

use nftables::expr::{
    BinaryOperation, Expression, Meta, MetaKey, NamedExpression, Socket, SocketAttr,
};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Mangle, Match, Operator, Statement, TProxy};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use wiremesh_enforce::{MARK_MASK, MARK_TO_PROXY_EGRESS, MARK_TO_PROXY_INGRESS};

/// The table's name; the family is `inet`.
pub const TABLE: &str = "wiremesh_l7";
const CHAIN: &str = "prerouting";
/// `mangle`: where TPROXY rules live, after the strict guard (`raw`) and conntrack.
const PRIORITY: i32 = -150;
/// The routing mark of packets delivered to a local (proxy) socket.
pub const MARK_LOCAL: u32 = 0x0d00;

/// Where the proxy listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listeners {
    pub ingress_port: u16,
    pub egress_port: u16,
}

/// One transaction replacing the table atomically (as the strict guard's).
pub fn install(listeners: Listeners) -> Nftables<'static> {
    let mut objects = vec![
        add(NfListObject::Table(table())),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
        add(NfListObject::Table(table())),
        add(NfListObject::Chain(Chain {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: CHAIN.into(),
            _type: Some(NfChainType::Filter),
            hook: Some(NfHook::Prerouting),
            prio: Some(PRIORITY),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        })),
        add(NfListObject::Rule(rule(
            vec![
                tcp(),
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::Socket(Socket {
                        key: std::borrow::Cow::Owned(SocketAttr::Transparent),
                    })),
                    right: Expression::Number(1),
                    op: Operator::EQ,
                }),
                set_mark(MARK_LOCAL),
                Statement::Accept(None),
            ],
            "wiremesh L7: packets of the proxy's connections stay on its sockets",
        ))),
    ];
    for (mark, port, which) in [
        (MARK_TO_PROXY_INGRESS, listeners.ingress_port, "ingress"),
        (MARK_TO_PROXY_EGRESS, listeners.egress_port, "egress"),
    ] {
        for family in ["ip", "ip6"] {
            objects.push(add(NfListObject::Rule(rule(
                vec![
                    nfproto(family),
                    tcp(),
                    has_mark(mark),
                    Statement::TProxy(TProxy {
                        family: Some(family.into()),
                        port,
                        addr: None,
                    }),
                    set_mark(MARK_LOCAL),
                    Statement::Accept(None),
                ],
                match which {
                    "ingress" => "wiremesh L7: connections to local pods' HTTP rules, to the proxy",
                    _ => {
                        "wiremesh L7: connections under local pods' egress HTTP rules, to the proxy"
                    }
                },
            ))));
        }
    }
    Nftables {
        objects: objects.into(),
    }
}

/// One transaction that removes the table if it exists.
pub fn remove() -> Nftables<'static> {
    Nftables {
        objects: vec![
            add(NfListObject::Table(table())),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table()))),
        ]
        .into(),
    }
}

fn table() -> Table<'static> {
    Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }
}

fn add(object: NfListObject<'static>) -> NfObject<'static> {
    NfObject::CmdObject(NfCmd::Add(object))
}

fn rule(expr: Vec<Statement<'static>>, comment: &'static str) -> Rule<'static> {
    Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: CHAIN.into(),
        expr: expr.into(),
        handle: None,
        index: None,
        comment: Some(comment.into()),
    }
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn tcp() -> Statement<'static> {
    Statement::Match(Match {
        left: meta(MetaKey::L4proto),
        right: Expression::String("tcp".into()),
        op: Operator::EQ,
    })
}

fn nfproto(family: &'static str) -> Statement<'static> {
    Statement::Match(Match {
        left: meta(MetaKey::Nfproto),
        right: Expression::String(if family == "ip" { "ipv4" } else { "ipv6" }.into()),
        op: Operator::EQ,
    })
}

/// `meta mark & MARK_MASK == mark`.
fn has_mark(mark: u32) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            meta(MetaKey::Mark),
            Expression::Number(MARK_MASK),
        ))),
        right: Expression::Number(mark),
        op: Operator::EQ,
    })
}

/// `meta mark set meta mark & ~MARK_MASK | mark`: the other bits (kube-proxy's, say) stay.
fn set_mark(mark: u32) -> Statement<'static> {
    Statement::Mangle(Mangle {
        key: meta(MetaKey::Mark),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            Expression::BinaryOperation(Box::new(BinaryOperation::AND(
                meta(MetaKey::Mark),
                Expression::Number(!MARK_MASK),
            ))),
            Expression::Number(mark),
        ]))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON `nft -j` gets: the statements that carry the design, in order.
    #[test]
    fn the_table_sends_marked_syns_to_the_listeners_and_keeps_proxy_sockets_local() {
        let json = serde_json::to_value(install(Listeners {
            ingress_port: 15006,
            egress_port: 15001,
        }))
        .unwrap();
        let rules: Vec<&serde_json::Value> = json["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["add"].get("rule"))
            .collect();
        assert_eq!(rules.len(), 5, "socket rule + 2 listeners x 2 families");
        let text = |r: &serde_json::Value| r["expr"].to_string();
        assert!(
            text(rules[0]).contains(r#""socket":{"key":"transparent"}"#),
            "{}",
            text(rules[0])
        );
        for (rule, mark, port, family) in [
            (rules[1], MARK_TO_PROXY_INGRESS, 15006, "ip"),
            (rules[2], MARK_TO_PROXY_INGRESS, 15006, "ip6"),
            (rules[3], MARK_TO_PROXY_EGRESS, 15001, "ip"),
            (rules[4], MARK_TO_PROXY_EGRESS, 15001, "ip6"),
        ] {
            let t = text(rule);
            assert!(t.contains(&format!(r#""right":{mark}"#)), "{t}");
            assert!(
                t.contains(&format!(
                    r#""tproxy":{{"family":"{family}","port":{port}}}"#
                )),
                "{t}"
            );
            assert!(t.contains(&format!(r#"{MARK_LOCAL}"#)), "{t}");
        }
        assert_eq!(
            MARK_LOCAL & !MARK_MASK,
            0,
            "the routing mark lies in the mask"
        );
    }
}
