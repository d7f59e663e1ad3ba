//! The incremental validator against the rules: unit cases for each rule and a property test
//! holding every verdict to `validate_set` on the whole set, whatever order records arrive in.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::{validate_set, Candidate};

fn key(i: u8) -> PublicKey {
    PublicKey::from_bytes([i + 1; 32])
}

fn rec(name: &str, key_index: u8, cidrs: &[&str]) -> NodeRecord {
    let endpoint = format!("198.18.0.{}:51871", key_index + 1);
    NodeRecord {
        pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        ..NodeRecord::new(name, key(key_index), endpoint.parse().unwrap())
    }
}

/// `rec` as read from `src/<name>` with seniority `s`.
fn at(s: u128, rec: NodeRecord) -> Read {
    Ok((format!("src/{}", rec.node_name), Seniority(s), rec))
}

fn names(r: &Records) -> Vec<String> {
    r.snapshot().nodes.keys().cloned().collect()
}

fn records() -> Records {
    Records::new(Origin::EtcdKey, Admission::default())
}

#[test]
fn a_conflict_refuses_only_the_younger_record_until_it_is_resolved() {
    let mut r = records();
    r.put(at(1, rec("b", 1, &["10.0.1.0/24"])));
    r.put(at(2, rec("a", 0, &["10.0.0.0/16"])));
    r.put(at(3, rec("c", 2, &["10.1.0.0/24"])));
    assert_eq!(names(&r), ["b", "c"]);
    let why = r.reason("src/a").unwrap();
    assert!(
        why.contains("field podCIDRs: 10.0.0.0/16 overlaps 10.0.1.0/24 of node b"),
        "{why}"
    );
    r.put(at(2, rec("a", 0, &["10.2.0.0/16"])));
    assert_eq!(names(&r), ["a", "b", "c"]);
    assert_eq!(r.refused(), 0);
    r.put(at(4, rec("d", 2, &["10.3.0.0/24"])));
    assert_eq!(names(&r), ["a", "b", "c"]);
    assert!(r.reason("src/d").unwrap().contains("publicKey"));
    r.delete("src/c");
    assert_eq!(names(&r), ["a", "b", "d"]);
}

/// Whichever record the validator sees first, the older one wins: the verdict is a function
/// of the set, so every node reaches the same one.
#[test]
fn the_older_record_wins_whichever_arrives_first() {
    let old = || at(10, rec("z-in-force", 0, &["10.244.1.0/24"]));
    let copy = || at(20, rec("a-copy", 1, &["10.244.1.0/24"]));
    let wide = || at(30, rec("all", 2, &["0.0.0.0/1"]));
    let reads = [old(), copy(), wide()];
    for perm in [
        [0, 1, 2],
        [1, 0, 2],
        [2, 1, 0],
        [1, 2, 0],
        [2, 0, 1],
        [0, 2, 1],
    ] {
        let mut r = records();
        for i in perm {
            r.put(reads[i].clone());
        }
        assert_eq!(names(&r), ["z-in-force"], "order {perm:?}");
        let why = r.reason("src/a-copy").unwrap();
        assert!(why.contains("of node z-in-force"), "{why}");
    }
}

#[test]
fn a_younger_record_that_wins_a_conflict_with_a_refused_one_stays() {
    // c conflicts only with b, which is refused (b conflicts with a): c is in force. When a
    // leaves, b wins its place back and c, younger than b, gives way.
    let mut r = records();
    r.put(at(1, rec("a", 0, &["10.0.0.0/16"])));
    r.put(at(2, rec("b", 1, &["10.0.1.0/24", "10.9.0.0/24"])));
    r.put(at(3, rec("c", 2, &["10.9.0.0/16"])));
    assert_eq!(names(&r), ["a", "c"]);
    r.delete("src/a");
    assert_eq!(names(&r), ["b"]);
    assert!(r.reason("src/c").unwrap().contains("node b"));
}

#[test]
fn pod_ranges_over_underlay_addresses_and_outside_the_pool_are_refused() {
    let admission = Admission {
        cluster_pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        local_addresses: vec!["10.244.99.1".parse().unwrap()],
    };
    let mut r = Records::new(Origin::File, admission);
    r.put(at(1, rec("a", 0, &["10.244.1.0/24"])));
    r.put(at(2, rec("everything", 1, &["0.0.0.0/1"])));
    r.put(at(3, rec("mine", 2, &["10.244.99.0/24"])));
    let mut inside = rec("inside", 3, &["10.244.4.0/24"]);
    inside.node_ips = vec!["10.244.1.9".parse().unwrap()];
    r.put(at(4, inside));
    assert_eq!(names(&r), ["a"]);
    assert!(r
        .reason("src/everything")
        .unwrap()
        .contains("not inside clusterPodCIDRs"));
    assert!(r
        .reason("src/mine")
        .unwrap()
        .contains("an address of this node"));
    let why = r.reason("src/inside").unwrap();
    assert!(
        why.contains("field nodeIPs: 10.244.1.9 lies inside 10.244.1.0/24"),
        "{why}"
    );

    let mut r = records();
    r.put(at(1, rec("a", 0, &["10.244.1.0/24"])));
    r.put(at(2, rec("underlay", 1, &["198.18.0.0/24"])));
    assert_eq!(names(&r), ["a"]);
    let why = r.reason("src/underlay").unwrap();
    assert!(
        why.contains("covers 198.18.0.1, the endpoint address of node a"),
        "{why}"
    );
}

#[test]
fn an_unchanged_record_leaves_the_snapshot_untouched() {
    let mut r = records();
    r.put(at(1, rec("a", 0, &["10.0.0.0/24"])));
    r.put(at(2, rec("b", 1, &["10.0.1.0/24"])));
    let before = r.snapshot();
    r.put(at(1, rec("a", 0, &["10.0.0.0/24"])));
    r.replace([
        at(1, rec("a", 0, &["10.0.0.0/24"])),
        at(2, rec("b", 1, &["10.0.1.0/24"])),
    ]);
    assert!(before.nodes.ptr_eq(&r.snapshot().nodes));
}

#[test]
fn a_relist_that_moves_a_cidr_refuses_nothing() {
    let mut r = records();
    r.put(at(1, rec("a", 0, &["10.0.0.0/24"])));
    r.replace([at(2, rec("b", 1, &["10.0.0.0/24"]))]);
    assert_eq!(names(&r), ["b"]);
    assert_eq!(r.refused(), 0);
}

#[test]
fn an_unreadable_source_drops_its_record() {
    let mut r = records();
    r.put(at(2, rec("a", 0, &["10.0.0.0/24"])));
    r.put(at(1, rec("b", 0, &["10.0.1.0/24"])));
    assert_eq!(names(&r), ["b"]);
    r.put(Err(Rejected {
        source: "src/b".into(),
        node_name: Some("b".into()),
        reason: "invalid JSON".into(),
    }));
    assert_eq!(names(&r), ["a"]);
    assert_eq!(r.reason("src/b"), Some("invalid JSON"));
    r.delete("src/b");
    assert_eq!(r.refused(), 0);
}

fn admission() -> Admission {
    Admission {
        cluster_pod_cidrs: vec!["10.0.0.0/15".parse().unwrap(), "fd00::/16".parse().unwrap()],
        local_addresses: vec!["10.1.3.1".parse().unwrap()],
    }
}

/// A record from a small universe, so that keys, CIDRs, addresses and seniorities collide
/// often; some CIDRs fall outside [`admission`]'s pool, some endpoints inside pod ranges.
fn arb_read() -> impl Strategy<Value = Read> {
    let cidr = prop_oneof![
        (0u8..3, 0u8..4, 14u8..=25).prop_map(|(a, b, len)| format!("10.{a}.{b}.0/{len}")),
        (0u8..2, 0u8..4, 30u8..=40).prop_map(|(a, b, len)| format!("fd00:{a}:{b}::/{len}")),
    ]
    .prop_map(|c| c.parse::<IpNet>().unwrap().trunc());
    let cidrs = proptest::collection::vec(cidr, 0..3);
    let endpoint = prop_oneof![
        (1u8..4).prop_map(|n| format!("198.18.0.{n}:51871")),
        (0u8..2, 0u8..4).prop_map(|(a, b)| format!("10.{a}.{b}.7:51871")),
    ];
    let head = (0u8..6, 0u8..5, proptest::option::of(0u8..5), 0u128..4);
    (head, cidrs, endpoint, any::<bool>()).prop_map(
        |((node, k, next, seniority), pod_cidrs, endpoint, unreadable)| {
            let name = format!("n{node}");
            let source = format!("src/{name}");
            if unreadable && k == 0 {
                let reason = "invalid JSON".into();
                let node_name = Some(name);
                return Err(Rejected {
                    source,
                    node_name,
                    reason,
                });
            }
            let rec = NodeRecord {
                pod_cidrs,
                next_public_key: next.map(key),
                ..NodeRecord::new(name, key(k), endpoint.parse().unwrap())
            };
            // As the stores do: a record that breaks its own rules never reaches the validator.
            match rec.validate() {
                Ok(()) => Ok((source, Seniority(seniority), rec)),
                Err(e) => Err(Rejected {
                    source,
                    node_name: Some(rec.node_name),
                    reason: e.to_string(),
                }),
            }
        },
    )
}

fn arb_op() -> impl Strategy<Value = Option<Read>> {
    // `None` deletes the source of the previous put (or nothing).
    prop_oneof![3 => arb_read().prop_map(Some), 1 => Just(None)]
}

proptest! {
    /// After every put or delete, the incremental verdict is the one `validate_set` reaches
    /// on the whole set: the same accepted records and the same refused sources.
    #[test]
    fn incremental_verdicts_match_validate_set(
        ops in proptest::collection::vec(arb_op(), 1..40)
    ) {
        let mut r = Records::new(Origin::EtcdKey, admission());
        let mut model: BTreeMap<String, Read> = BTreeMap::new();
        let mut last = String::new();
        for op in ops {
            match op {
                Some(read) => {
                    last = source(&read).to_owned();
                    model.insert(last.clone(), read.clone());
                    r.put(read);
                }
                None => {
                    model.remove(&last);
                    r.delete(&last);
                }
            }
            let set = model
                .iter()
                .filter_map(|(s, read)| {
                    let (_, seniority, record) = read.as_ref().ok()?;
                    let c = Candidate { source: s.clone(), seniority: *seniority, record: record.clone() };
                    Some((record.node_name.clone(), c))
                })
                .collect();
            let (accepted, conflicts) = validate_set(set, &admission());
            let got: BTreeMap<_, _> = r.snapshot().nodes.into_iter().collect();
            prop_assert_eq!(got, accepted);
            let unreadable = model.values().filter_map(|read| read.as_ref().err());
            let mut expected = 0;
            for refused in conflicts.iter().chain(unreadable) {
                expected += 1;
                prop_assert_eq!(r.reason(&refused.source), Some(refused.reason.as_str()), "{:?}", refused);
            }
            prop_assert_eq!(r.refused(), expected);
        }
    }

    /// Every order of arrival of one set of records ends in the same verdict.
    #[test]
    fn the_verdict_does_not_depend_on_the_order_of_arrival(
        reads in proptest::collection::vec(arb_read(), 1..6),
        seed in any::<u64>(),
    ) {
        // One read per source: a second one would replace the first, which is order itself.
        let mut seen = std::collections::HashSet::new();
        let reads: Vec<Read> = reads.into_iter().filter(|r| seen.insert(source(r).to_owned())).collect();
        let mut shuffled = reads.clone();
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut a = Records::new(Origin::EtcdKey, admission());
        reads.into_iter().for_each(|read| a.put(read));
        let mut b = Records::new(Origin::EtcdKey, admission());
        shuffled.into_iter().for_each(|read| b.put(read));
        prop_assert_eq!(a.snapshot(), b.snapshot());
    }
}
