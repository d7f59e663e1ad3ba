//! Identity numbering and allocation.

mod stable_id_tests {
    use super::super::*;

    fn endpoint(app: &str) -> IdentityLabels {
        IdentityLabels::Endpoint {
            cluster_id: None,
            namespace: "x".into(),
            labels: Labels::from([("app".to_string(), app.to_string())]),
            ns_labels: Labels::new(),
            named_ports: NamedPorts::new(),
            cidrs: BTreeSet::new(),
        }
    }

    #[test]
    fn numbers_survive_other_label_sets_coming_and_going() {
        let mut taken = HashSet::new();
        let a = stable_id(&endpoint("a"), FIRST_ENDPOINT, FIRST_CIDR, &mut taken);
        let mut taken = HashSet::new();
        for other in ["0", "b", "c", "aa"] {
            stable_id(&endpoint(other), FIRST_ENDPOINT, FIRST_CIDR, &mut taken);
        }
        let again = stable_id(&endpoint("a"), FIRST_ENDPOINT, FIRST_CIDR, &mut taken);
        assert_eq!(a, again);
        assert!((FIRST_ENDPOINT..FIRST_CIDR).contains(&a));
    }

    #[test]
    fn collisions_take_the_next_free_number() {
        let mut taken = HashSet::from([FIRST_CIDR - 1]);
        let l = endpoint("a");
        let first = stable_id(&l, FIRST_ENDPOINT, FIRST_CIDR, &mut HashSet::new());
        taken.insert(first);
        let second = stable_id(&l, FIRST_ENDPOINT, FIRST_CIDR, &mut taken);
        assert_ne!(first, second);
        assert!((FIRST_ENDPOINT..FIRST_CIDR).contains(&second));
    }
}

mod allocation_tests {
    use super::super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.244.1.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.244.1.12}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24}}]}]
"#;

    fn id_of(ids: &Identities, ip: &str) -> IdentityId {
        ids.lookup(ip.parse().unwrap(), None)
    }

    #[test]
    fn assigned_numbers_are_used_and_the_rest_step_around_them() {
        let bundle = crate::load([("c.yaml", CLUSTER)]).unwrap();
        let local = Identities::build(&bundle);
        let a = local.labels(id_of(&local, "10.244.1.11")).unwrap().clone();
        let b = local.labels(id_of(&local, "10.244.1.12")).unwrap().clone();
        let b_local = id_of(&local, "10.244.1.12");
        // The cluster gave a's labels b's local number: b must move, a takes it.
        let (a_key, b_key) = (a.key(), b.key());
        assert_ne!(a_key, b_key);
        let assigned = move |l: &IdentityLabels| (l.key() == a_key).then_some(b_local);
        let ids = Identities::build_with(&bundle, &assigned);
        assert_eq!(id_of(&ids, "10.244.1.11"), b_local);
        let b_now = id_of(&ids, "10.244.1.12");
        assert_ne!(b_now, b_local);
        assert_eq!(ids.labels(b_now), Some(&b));
        // CIDR identities keep to their range; an out-of-range assignment is ignored.
        let world_cidr = id_of(&ids, "192.0.2.7");
        assert!(world_cidr >= FIRST_CIDR);
        let bad = |l: &IdentityLabels| matches!(l, IdentityLabels::Cidr { .. }).then_some(300);
        let ids = Identities::build_with(&bundle, &bad);
        assert!(id_of(&ids, "192.0.2.7") >= FIRST_CIDR);
        assert_eq!(b_key, b.key());
    }
}
