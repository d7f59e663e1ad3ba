//! Invalid manifests: the message names the file, the resource (`kind namespace/name`) and the
//! field.

use policy::{load, load_with, LoadError, LoadOptions};

fn err(text: &str) -> String {
    match load([("policies.yaml", text)]) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const NP_HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-dns, namespace: default}\nspec:\n  podSelector: {}\n";

#[test]
fn port_out_of_range_names_file_resource_and_field() {
    let e = err(&format!(
        "{NP_HEAD}  ingress:\n  - ports:\n    - port: 53\n    - port: 70000\n"
    ));
    assert_eq!(
        e,
        "policies.yaml: NetworkPolicy default/allow-dns: spec.ingress[0].ports[1].port: port 70000 is out of range (1-65535)"
    );
}

#[test]
fn type_errors_carry_the_serde_path() {
    let e = err(&format!(
        "{NP_HEAD}  ingress:\n  - from: {{podSelector: {{}}}}\n"
    ));
    assert!(
        e.starts_with("policies.yaml: NetworkPolicy default/allow-dns: spec.ingress[0].from: "),
        "{e}"
    );
}

#[test]
fn unknown_fields_are_rejected() {
    let e = err(&format!(
        "{NP_HEAD}  ingress:\n  - from:\n    - podSelecter: {{}}\n"
    ));
    assert_eq!(e, "policies.yaml: NetworkPolicy default/allow-dns: spec.ingress[0].from[0].podSelecter: unknown field");
    let e = err("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoint: [{}]}]\n");
    assert!(e.starts_with("policies.yaml: CiliumNetworkPolicy x/c: spec.ingress[0].fromEndpoint: unknown field `fromEndpoint`"), "{e}");
}

#[test]
fn valid_but_unsupported_cilium_fields_are_refused_by_name() {
    let e = err("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: x}\nspec:\n  endpointSelector: {}\n  egress: [{toFQDNs: [{matchName: example.com}]}]\n");
    assert!(e.starts_with("policies.yaml: CiliumNetworkPolicy x/c: spec.egress[0].toFQDNs: valid Cilium, but not supported"), "{e}");
}

#[test]
fn semantic_errors() {
    let cases = [
        (
            "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]}]\n",
            "spec.ingress[0].from[0].ipBlock.except[0]: 192.168.0.0/16 must be a strict subset of cidr 10.0.0.0/8",
        ),
        (
            "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n",
            "spec.ingress[0].from[0]: ipBlock cannot be combined",
        ),
        ("  egress: [{to: [{}]}]\n", "spec.egress[0].to[0]: must specify a peer"),
        ("  ingress: [{ports: [{port: http, endPort: 90}]}]\n", "spec.ingress[0].ports[0].endPort: endPort cannot be used with the named port"),
        ("  ingress: [{ports: [{port: 90, endPort: 80}]}]\n", "spec.ingress[0].ports[0].endPort: endPort 80 is less than port 90"),
        ("  ingress: [{ports: [{port: 53, protocol: ICMP}]}]\n", "spec.ingress[0].ports[0].protocol: unsupported protocol \"ICMP\""),
        ("  ingress: [{ports: [{port: Not_A_Name}]}]\n", "spec.ingress[0].ports[0].port: \"Not_A_Name\" is neither"),
        ("  policyTypes: [Ingres]\n", "spec.policyTypes[0]: unknown policy type \"Ingres\""),
        (
            "  ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]}]\n",
            "spec.ingress[0].from[0].podSelector.matchExpressions[0].values: operator In needs at least one value",
        ),
    ];
    for (spec, want) in cases {
        let e = err(&format!("{NP_HEAD}{spec}"));
        let want = format!("policies.yaml: NetworkPolicy default/allow-dns: {want}");
        assert!(e.starts_with(&want), "got  {e}\nwant {want}");
    }
}

#[test]
fn cilium_semantic_errors() {
    let cnp = |spec: &str| {
        err(&format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: c, namespace: x}}\nspec:\n{spec}"))
    };
    let e = cnp("  nodeSelector: {}\n");
    assert!(e.contains("CiliumNetworkPolicy x/c: spec.nodeSelector: nodeSelector is only valid in a CiliumClusterwideNetworkPolicy"), "{e}");
    let e = cnp("  endpointSelector: {}\n  ingress: [{fromEntities: [everyone]}]\n");
    assert!(
        e.contains("spec.ingress[0].fromEntities[0]: unknown entity \"everyone\""),
        "{e}"
    );
    // HTTP rules are refused before they are read; the L7 model still checks them.
    let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: [{path: \"/a(\"}]}}]}]\n";
    let e = load_with([("policies.yaml", text)], LoadOptions::default())
        .map(|_| ())
        .expect_err("invalid regex")
        .to_string();
    assert!(
        e.contains("spec.ingress[0].toPorts[0].rules.http[0].path: invalid regex"),
        "{e}"
    );
    let e = cnp("  endpointSelector: {}\n  ingressDeny: [{toPorts: [{ports: [{port: \"80\"}], rules: {http: [{}]}}]}]\n");
    assert!(
        e.contains("spec.ingressDeny[0].toPorts[0].rules: L7 rules are not allowed in deny rules"),
        "{e}"
    );
    let e = cnp("  endpointSelector: {}\n  egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/8]}]}]\n");
    assert!(
        e.contains(
            "spec.egress[0].toCIDRSet[0].except[0]: 11.0.0.0/8 is not inside cidr 10.0.0.0/8"
        ),
        "{e}"
    );
    let e = err("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cc}\nspec:\n  endpointSelector: {matchLabels: {\"cidr:x\": \"\"}}\n");
    assert!(e.starts_with("policies.yaml: CiliumClusterwideNetworkPolicy cc: spec.endpointSelector.matchLabels[cidr:x]"), "{e}");
}

#[test]
fn document_level_errors() {
    let e = err("kind: Pod\nmetadata: {name: a}\n");
    assert_eq!(e, "policies.yaml: document 1: missing apiVersion or kind");
    let e = err("---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n[1, 2]\n");
    assert_eq!(
        e,
        "policies.yaml: document 2: not a Kubernetes object (expected a mapping)"
    );
    let e = err("a: [\n");
    assert!(
        e.starts_with("policies.yaml: document 1: invalid YAML:"),
        "{e}"
    );
    let e = err("apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: old, namespace: x}\nspec: {}\n");
    assert!(
        e.contains("NetworkPolicy x/old: apiVersion: extensions/v1beta1 is not supported"),
        "{e}"
    );
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nstatus: {podIPs: [{ip: 10.0.0.300}]}\n");
    assert_eq!(
        e,
        "policies.yaml: Pod x/p: status.podIPs[0].ip: invalid IP address \"10.0.0.300\""
    );
}

#[test]
fn duplicates_are_refused() {
    let doc = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
    let e = load([("one.yaml", doc), ("two.yaml", doc)])
        .map(|_| ())
        .expect_err("duplicate");
    assert!(matches!(e, LoadError::Duplicate { .. }));
    assert_eq!(
        e.to_string(),
        "two.yaml: Namespace a: defined twice (also in one.yaml)"
    );
}
