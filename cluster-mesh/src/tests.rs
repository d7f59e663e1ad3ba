use super::*;

fn cluster(name: &str, id: u32, cidrs: &[&str]) -> Cluster {
    Cluster {
        name: name.into(),
        id: ClusterId::new(id).expect("a valid test ID"),
        pod_cidrs: cidrs
            .iter()
            .map(|c| c.parse().expect("a test CIDR"))
            .collect(),
    }
}

fn mesh() -> Federation {
    let mut f = Federation::new(cluster("c1", 1, &["10.244.0.0/16", "fd00:10:244::/56"]));
    f.admit(cluster("c2", 2, &["10.245.0.0/16"]))
        .expect("c2 joins");
    f
}

#[test]
fn cluster_ids_are_1_to_255() {
    assert_eq!(ClusterId::new(0), None);
    assert_eq!(ClusterId::new(256), None);
    assert_eq!(ClusterId::new(1).map(ClusterId::get), Some(1));
    assert_eq!(ClusterId::new(255).map(ClusterId::get), Some(255));
}

#[test]
fn disjoint_clusters_join_and_addresses_find_their_cluster() {
    let f = mesh();
    assert_eq!(f.clusters().count(), 2);
    assert_eq!(f.local().name, "c1");
    let of = |ip: &str| f.cluster_of(ip.parse().unwrap()).map(|c| c.name.clone());
    assert_eq!(of("10.245.3.4").as_deref(), Some("c2"));
    assert_eq!(of("fd00:10:244:1::5").as_deref(), Some("c1"));
    assert_eq!(of("192.0.2.1"), None);
}

/// Every refusal leaves the federation exactly as it was.
fn refused(f: &mut Federation, newcomer: Cluster) -> Conflict {
    let before: Vec<Cluster> = f.clusters().cloned().collect();
    let err = f.admit(newcomer).expect_err("the newcomer must be refused");
    let after: Vec<Cluster> = f.clusters().cloned().collect();
    assert_eq!(before, after, "a refusal changed what is in force");
    err
}

#[test]
fn a_taken_name_or_id_is_refused_naming_both() {
    let mut f = mesh();
    let err = refused(&mut f, cluster("c2", 3, &["10.246.0.0/16"]));
    assert!(matches!(err, Conflict::DuplicateName { .. }), "{err}");
    assert!(
        err.to_string().contains("\"c2\"") && err.to_string().contains('3'),
        "{err}"
    );

    let err = refused(&mut f, cluster("c3", 2, &["10.246.0.0/16"]));
    assert_eq!(
        err,
        Conflict::DuplicateId {
            id: ClusterId::new(2).unwrap(),
            existing: "c2".into(),
            newcomer: "c3".into()
        }
    );
    let err = refused(&mut f, cluster("c1", 1, &["10.246.0.0/16"]));
    assert!(
        matches!(err, Conflict::DuplicateName { .. }),
        "a remote cluster may never take the local cluster's name: {err}"
    );
}

#[test]
fn overlapping_pod_cidrs_are_refused_either_way_round() {
    let mut f = mesh();
    let inside = refused(&mut f, cluster("c3", 3, &["10.244.7.0/24"]));
    assert!(
        inside.to_string().contains("10.244.7.0/24")
            && inside.to_string().contains("10.244.0.0/16"),
        "{inside}"
    );
    let around = refused(&mut f, cluster("c3", 3, &["10.0.0.0/8"]));
    assert!(
        matches!(around, Conflict::OverlappingCidrs { .. }),
        "{around}"
    );
    let v6 = refused(&mut f, cluster("c3", 3, &["fd00:10:244:ff::/64"]));
    assert!(matches!(v6, Conflict::OverlappingCidrs { .. }), "{v6}");
    // Control: the neighbouring pool is fine.
    f.admit(cluster("c3", 3, &["10.246.0.0/16", "fd00:10:245::/56"]))
        .expect("a disjoint pool joins");
}

#[test]
fn a_cluster_may_change_its_own_pools_but_not_onto_anothers() {
    let mut f = mesh();
    f.admit(cluster("c2", 2, &["10.245.0.0/16", "10.250.0.0/16"]))
        .expect("c2 grows its pool");
    assert_eq!(f.get("c2").unwrap().pod_cidrs.len(), 2);
    refused(&mut f, cluster("c2", 2, &["10.244.0.0/15"]));
    assert!(f.remove("c1").is_none(), "the local cluster stays");
    assert!(f.remove("c2").is_some());
    assert!(f.get("c2").is_none());
}

#[test]
fn a_key_is_one_nodes_across_the_mesh() {
    let mut keys = KeyOwners::new();
    keys.claim("c1", "n1", [1u8; 32]).unwrap();
    keys.claim("c1", "n1", [1u8; 32])
        .expect("claiming again is fine");
    assert!(
        keys.claim("c1", "n2", [1u8; 32]).is_err(),
        "two nodes of one cluster may not share a key either"
    );
    let err = keys.claim("c2", "m1", [1u8; 32]).unwrap_err();
    assert_eq!(
        err,
        Conflict::SharedKey {
            existing: "c1".into(),
            existing_node: "n1".into(),
            newcomer: "c2".into(),
            newcomer_node: "m1".into()
        }
    );
    keys.release("c2", "m1", &[1u8; 32]);
    assert!(
        keys.claim("c2", "m1", [1u8; 32]).is_err(),
        "only the holder can release a key"
    );
    keys.release("c1", "n1", &[1u8; 32]);
    keys.claim("c2", "m1", [1u8; 32])
        .expect("a released key may be claimed");
    keys.release_cluster("c2");
    keys.claim("c1", "n2", [1u8; 32])
        .expect("a departed cluster's keys are free");
}

#[test]
fn claim_all_takes_every_key_or_none() {
    let mut owners = KeyOwners::new();
    owners.claim("c1", "node-1", 1u32).unwrap();
    // node-2 of c2 publishes a fresh key and, as its successor, node-1's: refused whole.
    let e = owners.claim_all("c2", "node-2", [7u32, 1]).unwrap_err();
    assert!(matches!(e, Conflict::SharedKey { .. }), "{e}");
    // Key 7 was not taken by the refused record: another node may claim it.
    owners.claim("c3", "node-9", 7).unwrap();
    owners.claim_all("c2", "node-2", [8u32, 9]).unwrap();
    assert!(owners.claim("c1", "node-1", 9).is_err());
    // Claiming one's own keys again is fine.
    owners.claim_all("c2", "node-2", [8u32, 9]).unwrap();
}
