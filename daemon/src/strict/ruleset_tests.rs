//! The guard table built from a config, checked as the JSON `nft -j -f -` receives.

use std::path::Path;

use serde_json::{json, Value};

use super::*;

const DUAL_PODS: &str = "podCIDRs: [10.244.1.0/24, \"fd00:10:244:1::/64\"]\n";
const DUAL_POOL: &str = "clusterPodCIDRs: [10.244.0.0/16, \"fd00:10:244::/56\"]\n";

fn config(extra: &str) -> Config {
    let text = format!("nodeName: node-1\nnodeIPs: [198.18.0.1, \"2001:2::1\"]\n{extra}");
    Config::parse(&text, Path::new("/etc/wiremesh/agent.yaml")).expect("valid config")
}

fn dual() -> GuardSpec {
    GuardSpec::from_config(&config(&format!("{DUAL_PODS}{DUAL_POOL}")))
}

fn commands(spec: &GuardSpec) -> Vec<Value> {
    let doc = serde_json::to_value(install(spec)).expect("serialises");
    doc["nftables"].as_array().expect("a command list").clone()
}

/// The objects the transaction adds of one kind (`set`, `rule`, ...).
fn added(cmds: &[Value], kind: &str) -> Vec<Value> {
    cmds.iter()
        .filter_map(|c| c["add"].get(kind).cloned())
        .collect()
}

fn prefix(addr: &str, len: u32) -> Value {
    json!({"prefix": {"addr": addr, "len": len}})
}

#[test]
fn replaces_the_table_in_one_transaction() {
    let cmds = commands(&dual());
    let table = json!({"family": "inet", "name": "wiremesh"});
    assert_eq!(cmds[0], json!({"add": {"table": table}}));
    assert_eq!(cmds[1], json!({"delete": {"table": table}}));
    assert_eq!(cmds[2], json!({"add": {"table": table}}));
    assert!(
        cmds[3..].iter().all(|c| c.get("add").is_some()),
        "after the swap only additions: {cmds:#?}"
    );
    assert_eq!(
        serde_json::to_value(remove()).expect("serialises")["nftables"],
        json!([{"add": {"table": table}}, {"delete": {"table": table}}])
    );
}

#[test]
fn sets_hold_the_pool_and_the_local_cidrs_per_family() {
    let sets = added(&commands(&dual()), "set");
    let by_name = |name: &str| {
        sets.iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no set {name} in {sets:#?}"))
            .clone()
    };
    let pool4 = by_name("pool_ipv4");
    assert_eq!(pool4["type"], "ipv4_addr");
    assert_eq!(pool4["flags"], json!(["interval"]));
    assert_eq!(pool4["elem"], json!([prefix("10.244.0.0", 16)]));
    assert_eq!(
        by_name("pool_ipv6")["elem"],
        json!([prefix("fd00:10:244::", 56)])
    );
    assert_eq!(by_name("pool_ipv6")["type"], "ipv6_addr");
    assert_eq!(
        by_name("local_ipv4")["elem"],
        json!([prefix("10.244.1.0", 24)])
    );
    assert_eq!(
        by_name("local_ipv6")["elem"],
        json!([prefix("fd00:10:244:1::", 64)])
    );
}

#[test]
fn egress_drops_pool_traffic_not_leaving_by_the_tunnel() {
    let cmds = commands(&dual());
    let chains = added(&cmds, "chain");
    let egress = chains
        .iter()
        .find(|c| c["name"] == "egress")
        .expect("egress chain");
    assert_eq!(
        (
            &egress["type"],
            &egress["hook"],
            &egress["prio"],
            &egress["policy"]
        ),
        (
            &json!("filter"),
            &json!("postrouting"),
            &json!(0),
            &json!("accept")
        )
    );
    let rules = added(&cmds, "rule");
    let rule = rules
        .iter()
        .find(|r| {
            r["chain"] == "egress" && r["expr"][1]["match"]["left"]["payload"]["protocol"] == "ip"
        })
        .expect("IPv4 egress rule");
    assert_eq!(
        rule["expr"],
        json!([
            {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "wiremesh_wg0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@pool_ipv4"}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@local_ipv4"}},
            {"counter": "egress_ipv4"},
            {"drop": null}
        ])
    );
}

#[test]
fn ingress_drops_pool_sources_not_arriving_by_the_tunnel() {
    let cmds = commands(&dual());
    let chains = added(&cmds, "chain");
    let ingress = chains
        .iter()
        .find(|c| c["name"] == "ingress")
        .expect("ingress chain");
    assert_eq!(
        (&ingress["hook"], &ingress["prio"]),
        (&json!("prerouting"), &json!(-300))
    );
    let rules = added(&cmds, "rule");
    let rule = rules
        .iter()
        .find(|r| {
            r["chain"] == "ingress" && r["expr"][1]["match"]["left"]["payload"]["protocol"] == "ip6"
        })
        .expect("IPv6 ingress rule");
    assert_eq!(
        rule["expr"],
        json!([
            {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "wiremesh_wg0"}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@pool_ipv6"}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@local_ipv6"}},
            {"counter": "ingress_ipv6"},
            {"drop": null}
        ])
    );
    assert_eq!(rules.len(), RULES);
    let counters: Vec<_> = added(&cmds, "counter")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        counters,
        ["egress_ipv4", "egress_ipv6", "ingress_ipv4", "ingress_ipv6"]
    );
}

#[test]
fn the_interface_name_comes_from_the_config() {
    let spec = GuardSpec::from_config(&config(&format!(
        "interface: wg-pods\n{DUAL_PODS}{DUAL_POOL}"
    )));
    let rules = added(&commands(&spec), "rule");
    assert!(rules
        .iter()
        .all(|r| r["expr"][0]["match"]["right"] == "wg-pods"));
}

#[test]
fn overlapping_pools_are_merged_and_a_missing_family_leaves_its_sets_empty() {
    let spec = GuardSpec::from_config(&config(
        "podCIDRs: [10.244.1.0/24]\nclusterPodCIDRs: [10.244.0.0/16, 10.244.0.0/17, 10.245.0.0/16]\n",
    ));
    let sets = added(&commands(&spec), "set");
    let pool4 = sets
        .iter()
        .find(|s| s["name"] == "pool_ipv4")
        .expect("pool");
    assert_eq!(pool4["elem"], json!([prefix("10.244.0.0", 15)]));
    let pool6 = sets
        .iter()
        .find(|s| s["name"] == "pool_ipv6")
        .expect("pool");
    assert!(
        pool6.get("elem").is_none(),
        "no IPv6 pool: an empty set, so the IPv6 rules match nothing: {pool6}"
    );
}

/// As `nft -j list table inet wiremesh` prints it (nft 1.0.6), abridged to what is read.
const LISTING: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
 {"table": {"family": "inet", "name": "wiremesh", "handle": 7}},
 {"counter": {"family": "inet", "name": "egress_ipv4", "table": "wiremesh", "handle": 2, "packets": 5000000000, "bytes": 420}},
 {"counter": {"family": "inet", "name": "egress_ipv6", "table": "wiremesh", "handle": 3, "packets": 0, "bytes": 0}},
 {"counter": {"family": "inet", "name": "ingress_ipv4", "table": "wiremesh", "handle": 4, "packets": 3, "bytes": 252}},
 {"counter": {"family": "inet", "name": "ingress_ipv6", "table": "wiremesh", "handle": 5, "packets": 2, "bytes": 208}},
 {"chain": {"family": "inet", "table": "wiremesh", "name": "egress", "handle": 10, "type": "filter", "hook": "postrouting", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "inet", "table": "wiremesh", "chain": "egress", "handle": 12, "expr": [], "comment": "wiremesh strict mode: ... (spec 00000000000000aa)"}},
 {"rule": {"family": "inet", "table": "wiremesh", "chain": "egress", "handle": 13, "expr": [], "comment": "wiremesh strict mode: ... (spec 00000000000000aa)"}},
 {"chain": {"family": "inet", "table": "wiremesh", "name": "ingress", "handle": 11, "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}},
 {"rule": {"family": "inet", "table": "wiremesh", "chain": "ingress", "handle": 14, "expr": [], "comment": "wiremesh strict mode: ... (spec 00000000000000aa)"}},
 {"rule": {"family": "inet", "table": "wiremesh", "chain": "ingress", "handle": 15, "expr": [], "comment": "wiremesh strict mode: ... (spec 00000000000000aa)"}}]}"#;

#[test]
fn reads_64_bit_counters_and_completeness() {
    let listed = parse_listing(LISTING, "(spec 00000000000000aa)").expect("parses");
    assert!(listed.complete);
    let foreign = parse_listing(LISTING, "(spec 00000000000000bb)").expect("parses");
    assert!(
        !foreign.complete,
        "a table built from another config (another agent on this host) is noticed"
    );
    assert_eq!(
        listed.drops,
        DropCounts {
            egress_ipv4: 5_000_000_000,
            egress_ipv6: 0,
            ingress_ipv4: 3,
            ingress_ipv6: 2,
        }
    );
    assert_eq!(listed.drops.get(Direction::Ingress, Family::V6), 2);
    let mut doc: Value = serde_json::from_str(LISTING).expect("parses");
    let items = doc["nftables"].as_array_mut().expect("list");
    items.pop();
    let damaged = parse_listing(&doc.to_string(), "(spec 00000000000000aa)").expect("parses");
    assert!(!damaged.complete, "a rule deleted by hand is noticed");
    assert!(parse_listing("not json", "").is_err());
}

#[test]
fn the_fingerprint_follows_every_input_of_the_table() {
    let spec = GuardSpec {
        interface: "wiremesh_wg0".into(),
        pool: vec!["10.244.0.0/16".parse().expect("cidr")],
        local: vec!["10.244.1.0/24".parse().expect("cidr")],
    };
    assert_eq!(spec.fingerprint(), spec.clone().fingerprint());
    let other_interface = GuardSpec {
        interface: "wmimpostor0".into(),
        ..spec.clone()
    };
    let other_local = GuardSpec {
        local: vec!["10.244.2.0/24".parse().expect("cidr")],
        ..spec.clone()
    };
    assert_ne!(spec.fingerprint(), other_interface.fingerprint());
    assert_ne!(spec.fingerprint(), other_local.fingerprint());
}
