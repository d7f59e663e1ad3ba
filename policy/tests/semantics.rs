//! One test per semantic point of the policy issue, each citing the sentence of the
//! Kubernetes API reference / NetworkPolicy docs / Cilium docs it checks.

mod common;

use common::{run, short, tcp, udp, yaml};
use policy::Protocol;

/// Namespaces x, y, z; pods a, b in x and y, c in z, on two nodes (as the upstream e2e
/// tests lay them out). Named port `serve` is 80 on x/a and 81 on x/b.
const CLUSTER: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {ns: x, env: prod}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: y, labels: {ns: y, env: prod}}}
- {apiVersion: v1, kind: Namespace, metadata: {name: z, labels: {ns: z}}}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}
- apiVersion: v1
  kind: Node
  metadata: {name: n2}
  status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: x, labels: {pod: a, tier: web}}
  spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: serve, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]}]}
  status: {podIPs: [{ip: 10.244.1.10}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: b, namespace: x, labels: {pod: b}}
  spec: {nodeName: n2, containers: [{name: c, image: i, ports: [{name: serve, containerPort: 81}]}]}
  status: {podIPs: [{ip: 10.244.2.10}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: a, namespace: y, labels: {pod: a}}
  spec: {nodeName: n2, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.244.2.11}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: b, namespace: y, labels: {pod: b, tier: db}}
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.244.1.11}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: c, namespace: z, labels: {pod: c}}
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.244.1.12}]}
"#;

fn with(policies: &str) -> policy::Bundle {
    yaml(&format!("{CLUSTER}\n---\n{policies}"))
}

fn np(name: &str, ns: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n")
}

fn cnp(name: &str, ns: &str, spec: &str) -> String {
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n")
}

// NetworkPolicy docs: "By default, a pod is non-isolated for egress; all outbound
// connections are allowed. By default, a pod is non-isolated for ingress; all inbound
// connections are allowed."
#[test]
fn no_policy_allows_everything() {
    let b = with("");
    assert_eq!(tcp(&b, "x/a", "y/b", 80), "allowed");
    assert_eq!(udp(&b, "z/c", "8.8.8.8", 53), "allowed");
}

// API reference, policyTypes: "If this field is not specified, it will default based on the
// existence of ingress or egress rules; policies that contain an egress section are assumed to
// affect egress, and all policies (whether or not they contain an ingress section) are assumed
// to affect ingress."
#[test]
fn policy_types_default() {
    let b = with(&np(
        "ingress-only",
        "x",
        "  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]",
    ));
    assert_eq!(
        tcp(&b, "x/a", "8.8.8.8", 443),
        "allowed",
        "egress not affected"
    );
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "ingress");
    let b = with(&np(
        "egress-section",
        "x",
        "  podSelector: {}\n  egress: [{to: [{podSelector: {}}]}]",
    ));
    assert_eq!(tcp(&b, "x/a", "8.8.8.8", 443), "egress");
    // Egress to x/b is allowed, but x/b is isolated for ingress by the same policy.
    assert_eq!(tcp(&b, "x/a", "x/b", 80), "ingress");
    assert_eq!(
        tcp(&b, "x/a", "y/b", 80),
        "egress",
        "podSelector alone: own namespace"
    );
    assert_eq!(
        tcp(&b, "y/a", "x/a", 80),
        "ingress",
        "ingress is affected although absent"
    );
    // An explicit policyTypes: [Egress] leaves ingress alone, and its ingress rules unused.
    let b = with(&np(
        "egress-type",
        "x",
        "  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]",
    ));
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "allowed");
    assert_eq!(tcp(&b, "x/a", "y/a", 80), "egress");
}

// API reference, NetworkPolicyPort.protocol: "If not specified, this field defaults to TCP."
// UDP and SCTP are distinct protocols.
#[test]
fn protocol_defaults_to_tcp_and_protocols_are_distinct() {
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]",
    ));
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "allowed");
    assert_eq!(udp(&b, "y/a", "x/a", 80), "ingress");
    assert_eq!(short(&run(&b, "y/a", "x/a", 80, Protocol::Sctp)), "ingress");
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress: [{ports: [{port: 80, protocol: SCTP}]}]",
    ));
    assert_eq!(short(&run(&b, "y/a", "x/a", 80, Protocol::Sctp)), "allowed");
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "ingress");
}

// API reference, ports: "If this field is empty or missing, this rule matches all ports";
// `[{}]` is not empty: one port entry, protocol TCP by default, port unset ("If this field is
// not provided, this matches all port names and numbers").
#[test]
fn ports_empty_list_vs_one_empty_entry() {
    let b = with(&np("p", "x", "  podSelector: {}\n  ingress: [{ports: []}]"));
    assert_eq!(udp(&b, "y/a", "x/a", 5353), "allowed");
    assert_eq!(short(&run(&b, "y/a", "x/a", 8, Protocol::Icmp)), "allowed");
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress: [{ports: [{}]}]",
    ));
    assert_eq!(tcp(&b, "y/a", "x/a", 12345), "allowed");
    assert_eq!(udp(&b, "y/a", "x/a", 53), "ingress");
    assert_eq!(short(&run(&b, "y/a", "x/a", 8, Protocol::Icmp)), "ingress");
}

// API reference, ingress.from: "If this field is empty or missing, this rule matches all
// sources (traffic not restricted by source)." An empty ingress list allows nothing.
#[test]
fn from_empty_vs_absent_vs_no_rules() {
    for spec in [
        "  podSelector: {}\n  ingress: [{from: []}]",
        "  podSelector: {}\n  ingress: [{}]",
    ] {
        let b = with(&np("p", "x", spec));
        assert_eq!(tcp(&b, "z/c", "x/a", 80), "allowed", "{spec}");
        assert_eq!(tcp(&b, "8.8.8.8", "x/a", 80), "allowed", "{spec}");
    }
    let b = with(&np("p", "x", "  podSelector: {}\n  ingress: []"));
    assert_eq!(tcp(&b, "x/b", "x/a", 80), "ingress");
}

// API reference, NetworkPolicyPeer.podSelector: "If namespaceSelector is also set, then the
// NetworkPolicyPeer as a whole selects the pods matching podSelector in the Namespaces selected
// by NamespaceSelector. Otherwise it selects the pods matching podSelector in the policy's own
// namespace." namespaceSelector: "If podSelector is also set, ... Otherwise it selects all Pods
// in the Namespaces selected by namespaceSelector." (`{}` selects all namespaces.)
#[test]
fn namespace_selector_absent_vs_empty() {
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]",
    ));
    assert_eq!(
        tcp(&b, "y/a", "x/b", 80),
        "ingress",
        "absent: own namespace only"
    );
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}, namespaceSelector: {}}]}]",
    ));
    assert_eq!(
        tcp(&b, "y/a", "x/b", 80),
        "allowed",
        "{{}}: every namespace"
    );
    assert_eq!(tcp(&b, "y/b", "x/b", 80), "ingress");
    assert_eq!(
        tcp(&b, "8.8.8.8", "x/b", 80),
        "ingress",
        "selectors never match outside"
    );
}

// NetworkPolicy docs, "Behavior of to and from selectors": one element with namespaceSelector
// and podSelector "allows connections from Pods with the label role=client in namespaces with
// the label user=alice"; two elements are OR'ed.
#[test]
fn and_within_peer_or_between_peers() {
    let and = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: a}}",
    ));
    assert_eq!(tcp(&and, "y/a", "x/b", 80), "allowed");
    assert_eq!(tcp(&and, "y/b", "x/b", 80), "ingress");
    assert_eq!(tcp(&and, "x/a", "x/b", 80), "ingress");
    let or = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    - podSelector: {matchLabels: {pod: a}}",
    ));
    assert_eq!(tcp(&or, "y/b", "x/b", 80), "allowed");
    assert_eq!(tcp(&or, "x/a", "x/b", 80), "allowed");
    assert_eq!(tcp(&or, "z/c", "x/b", 80), "ingress");
}

// API reference, LabelSelectorRequirement: NotIn and DoesNotExist match objects without the key
// (apimachinery `Requirement.Matches`).
#[test]
fn match_expressions_on_pods_and_namespaces() {
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: env, operator: DoesNotExist}]}\n    - podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [web]}]}",
    ));
    assert_eq!(tcp(&b, "z/c", "x/a", 80), "allowed", "z has no env label");
    assert_eq!(
        tcp(&b, "x/b", "x/a", 80),
        "allowed",
        "x/b has no tier label"
    );
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "ingress");
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {matchExpressions: [{key: tier, operator: Exists}]}\n  ingress: []",
    ));
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "ingress", "x/a has tier");
    assert_eq!(tcp(&b, "y/a", "x/b", 80), "allowed", "x/b is not selected");
}

// API reference, IPBlock: "except is a slice of CIDRs that should not be included within an IP
// Block"; upstream e2e ("should allow ingress access from updated pod" / ipBlock tests) selects
// pods by their addresses.
#[test]
fn ip_block_with_except_also_matches_pods() {
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.244.1.0/24, except: [10.244.1.11/32]}}]",
    ));
    assert_eq!(tcp(&b, "z/c", "x/a", 80), "allowed", "10.244.1.12 in block");
    assert_eq!(tcp(&b, "y/b", "x/a", 80), "ingress", "10.244.1.11 excepted");
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "ingress", "10.244.2.11 outside");
    assert_eq!(tcp(&b, "10.244.1.99", "x/a", 80), "allowed");
}

// API reference, endPort: "indicates that the range of ports from port to endPort if set,
// inclusive, should be allowed by the policy."
#[test]
fn end_port_range_is_inclusive() {
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress: [{ports: [{port: 8000, endPort: 8080}]}]",
    ));
    assert_eq!(tcp(&b, "y/a", "x/a", 7999), "ingress");
    assert_eq!(tcp(&b, "y/a", "x/a", 8000), "allowed");
    assert_eq!(tcp(&b, "y/a", "x/a", 8080), "allowed");
    assert_eq!(tcp(&b, "y/a", "x/a", 8081), "ingress");
}

// API reference, NetworkPolicyPort.port: "this can either be a numerical or named port on a
// pod" — resolved on the destination pod, in either direction.
#[test]
fn named_ports_resolve_on_destination() {
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress: [{ports: [{port: serve}]}]",
    ));
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "allowed");
    assert_eq!(tcp(&b, "y/a", "x/a", 81), "ingress");
    assert_eq!(tcp(&b, "y/a", "x/b", 81), "allowed");
    assert_eq!(tcp(&b, "y/a", "x/b", 80), "ingress");
    let b = with(&np(
        "p",
        "y",
        "  podSelector: {}\n  egress: [{ports: [{port: serve}]}]",
    ));
    assert_eq!(tcp(&b, "y/a", "x/b", 81), "allowed");
    assert_eq!(tcp(&b, "y/a", "x/b", 80), "egress");
    assert_eq!(
        tcp(&b, "y/a", "8.8.8.8", 80),
        "egress",
        "no pod to name the port on"
    );
    // The name's protocol must match too: dns is UDP on x/a.
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress: [{ports: [{port: dns, protocol: UDP}]}]",
    ));
    assert_eq!(udp(&b, "y/a", "x/a", 53), "allowed");
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress: [{ports: [{port: dns}]}]",
    ));
    assert_eq!(udp(&b, "y/a", "x/a", 53), "ingress");
}

// NetworkPolicy docs: "Network policies do not conflict; they are additive. ... the
// allowed connections are the union of what the applicable policies' ingress rules allow."
#[test]
fn policies_are_a_union() {
    let b = with(&format!(
        "{}{}",
        np(
            "one",
            "x",
            "  podSelector: {}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"
        ),
        np(
            "two",
            "x",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 443}]}]"
        ),
    ));
    assert_eq!(tcp(&b, "x/b", "x/a", 80), "allowed");
    assert_eq!(tcp(&b, "z/c", "x/a", 443), "allowed");
    assert_eq!(tcp(&b, "z/c", "x/a", 80), "ingress");
    let r = run(&b, "z/c", "x/a", 443, Protocol::Tcp);
    assert_eq!(r.ingress.selected_by.len(), 2);
}

// NetworkPolicy docs: "For a connection from a source pod to a destination pod to be allowed,
// both the egress policy on the source pod and the ingress policy on the destination pod need
// to allow the connection."
#[test]
fn both_ends_must_allow() {
    let b = with(&format!(
        "{}{}",
        np(
            "deny-out",
            "z",
            "  podSelector: {}\n  policyTypes: [Egress]"
        ),
        np(
            "deny-in",
            "x",
            "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"
        ),
    ));
    assert_eq!(tcp(&b, "z/c", "x/a", 80), "egress");
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "allowed");
    assert_eq!(tcp(&b, "x/b", "x/a", 80), "ingress");
}

// NetworkPolicy docs: traffic from the node a pod runs on is always allowed (kubelet probes);
// other nodes are subject to policy (they match no selector and, here, no ipBlock).
#[test]
fn own_node_allowed_remote_node_not() {
    let b = with(&np(
        "p",
        "x",
        "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}]}]",
    ));
    assert_eq!(tcp(&b, "198.18.0.1", "x/a", 80), "allowed");
    assert_eq!(tcp(&b, "198.18.0.2", "x/a", 80), "ingress");
}

// Cilium docs, endpointSelector: a CiliumNetworkPolicy selects endpoints of its own namespace;
// "fromEndpoints ... selects ... in the same namespace" unless the selector names
// `k8s:io.kubernetes.pod.namespace`; a CiliumClusterwideNetworkPolicy is not namespaced.
#[test]
fn cnp_namespace_scoping() {
    let b = with(&cnp(
        "c",
        "x",
        "  endpointSelector: {}\n  ingress: [{fromEndpoints: [{matchLabels: {pod: a}}]}]",
    ));
    assert_eq!(tcp(&b, "y/a", "x/b", 80), "ingress");
    assert_eq!(tcp(&b, "x/a", "x/b", 80), "allowed");
    assert_eq!(tcp(&b, "x/a", "y/b", 80), "allowed", "y is not selected");
    let b = with(&cnp(
        "c",
        "x",
        "  endpointSelector: {}\n  ingress: [{fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: y}}]}]",
    ));
    assert_eq!(tcp(&b, "y/a", "x/b", 80), "allowed");
    assert_eq!(tcp(&b, "x/a", "x/b", 80), "ingress");
    let ccnp = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: all}\nspec:\n  endpointSelector: {matchLabels: {pod: a}}\n  ingress: [{fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.env: prod}}]}]\n";
    let b = with(ccnp);
    assert_eq!(
        tcp(&b, "x/b", "y/a", 80),
        "allowed",
        "namespace labels are folded in"
    );
    assert_eq!(tcp(&b, "z/c", "y/a", 80), "ingress");
    assert_eq!(tcp(&b, "z/c", "x/b", 80), "allowed", "x/b not selected");
}

// Cilium docs, CIDR based: "CIDR rules do not apply to traffic where both sides of the
// connection are either managed by Cilium or use an IP belonging to a node in the cluster";
// "except: ... a list of subnets within the CIDR which should be excluded".
#[test]
fn cnp_cidr_rules_select_only_outside() {
    let b = with(&cnp(
        "c",
        "x",
        "  endpointSelector: {}\n  egress: [{toCIDRSet: [{cidr: 0.0.0.0/0, except: [8.8.4.0/24]}]}]",
    ));
    assert_eq!(tcp(&b, "x/a", "8.8.8.8", 53), "allowed");
    assert_eq!(tcp(&b, "x/a", "8.8.4.4", 53), "egress");
    assert_eq!(tcp(&b, "x/a", "y/a", 80), "egress", "pods are not world");
    assert_eq!(
        tcp(&b, "x/a", "198.18.0.2", 80),
        "egress",
        "nodes are not world"
    );
    let b = with(&cnp(
        "c",
        "x",
        "  endpointSelector: {}\n  ingress: [{fromCIDR: [10.244.0.0/16]}]",
    ));
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "ingress");
    assert_eq!(tcp(&b, "10.244.9.9", "x/a", 80), "allowed");
}

// Cilium docs, entities: "host: the local host ... remote-node: any node in any of the
// connected clusters other than the local host ... cluster: all network endpoints inside of
// the local cluster ... world: all endpoints outside of the cluster ... all".
#[test]
fn cnp_entities() {
    let cases = [
        (
            "world",
            [
                ("8.8.8.8", "allowed"),
                ("y/a", "ingress"),
                ("198.18.0.2", "ingress"),
            ],
        ),
        (
            "cluster",
            [
                ("8.8.8.8", "ingress"),
                ("y/a", "allowed"),
                ("198.18.0.2", "allowed"),
            ],
        ),
        (
            "remote-node",
            [
                ("8.8.8.8", "ingress"),
                ("y/a", "ingress"),
                ("198.18.0.2", "allowed"),
            ],
        ),
        (
            "all",
            [
                ("8.8.8.8", "allowed"),
                ("y/a", "allowed"),
                ("198.18.0.2", "allowed"),
            ],
        ),
    ];
    for (entity, expect) in cases {
        let b = with(&cnp(
            "c",
            "x",
            &format!("  endpointSelector: {{}}\n  ingress: [{{fromEntities: [{entity}]}}]"),
        ));
        for (from, want) in expect {
            assert_eq!(tcp(&b, from, "x/a", 80), want, "{entity} from {from}");
        }
    }
    let b = with(&cnp(
        "c",
        "x",
        "  endpointSelector: {}\n  egress: [{toEntities: [host]}]",
    ));
    assert_eq!(
        tcp(&b, "x/a", "198.18.0.1", 10250),
        "allowed",
        "x/a runs on n1"
    );
    assert_eq!(tcp(&b, "x/a", "198.18.0.2", 10250), "egress");
}

// Cilium docs, PortProtocol: "port ... If omitted or zero, any port matches"; protocol "ANY"
// matches TCP, UDP and SCTP; endPort makes a range; ICMP via `icmps` fields.
#[test]
fn cnp_to_ports_and_icmps() {
    let b = with(&cnp(
        "c",
        "x",
        "  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: \"53\", protocol: ANY}, {port: \"8000\", endPort: 8010, protocol: TCP}]}]\n  - icmps: [{fields: [{type: EchoRequest}]}]",
    ));
    assert_eq!(udp(&b, "y/a", "x/a", 53), "allowed");
    assert_eq!(tcp(&b, "y/a", "x/a", 53), "allowed");
    assert_eq!(short(&run(&b, "y/a", "x/a", 53, Protocol::Sctp)), "allowed");
    assert_eq!(tcp(&b, "y/a", "x/a", 8010), "allowed");
    assert_eq!(udp(&b, "y/a", "x/a", 8010), "ingress");
    assert_eq!(short(&run(&b, "y/a", "x/a", 8, Protocol::Icmp)), "allowed");
    assert_eq!(short(&run(&b, "y/a", "x/a", 0, Protocol::Icmp)), "ingress");
    let b = with(&cnp(
        "c",
        "x",
        "  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: \"0\"}]}]}]",
    ));
    assert_eq!(udp(&b, "y/a", "x/a", 9999), "allowed");
    assert_eq!(
        short(&run(&b, "y/a", "x/a", 8, Protocol::Icmp)),
        "ingress",
        "ANY is L4 only"
    );
}

// Cilium docs, deny policies: "Deny policies take precedence over allow policies", also over
// NetworkPolicy allows and the allow-all of a non-isolated direction.
#[test]
fn deny_wins() {
    let b = with(&format!(
        "{}{}",
        np("allow-all", "x", "  podSelector: {}\n  ingress: [{}]"),
        cnp(
            "deny",
            "x",
            "  endpointSelector: {}\n  ingressDeny: [{fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: z}}], toPorts: [{ports: [{port: \"80\"}]}]}]",
        ),
    ));
    let r = run(&b, "z/c", "x/a", 80, Protocol::Tcp);
    assert_eq!(short(&r), "ingress");
    assert_eq!(r.ingress.denied_by[0].policy, "CiliumNetworkPolicy x/deny");
    assert_eq!(tcp(&b, "z/c", "x/a", 81), "allowed");
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "allowed");
}

// Cilium docs: `ingress: [{}]` selects nothing and puts the endpoint in default deny;
// `enableDefaultDeny: {ingress: false}` adds the rules without isolating.
#[test]
fn cnp_default_deny_controls() {
    let b = with(&cnp("c", "x", "  endpointSelector: {}\n  ingress: [{}]"));
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "ingress");
    assert_eq!(tcp(&b, "x/a", "y/a", 80), "allowed", "egress untouched");
    let b = with(&cnp(
        "c",
        "x",
        "  endpointSelector: {}\n  enableDefaultDeny: {ingress: false}\n  ingressDeny: [{fromEntities: [world]}]",
    ));
    assert_eq!(tcp(&b, "y/a", "x/a", 80), "allowed");
    assert_eq!(tcp(&b, "8.8.8.8", "x/a", 80), "ingress");
}

/// Cilium docs, host firewall: "nodeSelector: Selects the nodes to which the policy applies";
/// such a policy governs the host endpoint of every node whose labels match, and a node no
/// such policy selects is not a host endpoint at all.
#[test]
fn node_selector_selects_host_endpoints() {
    let b = with(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n3, labels: {role: gateway, kubernetes.io/hostname: n3}}\n\
         status: {addresses: [{type: InternalIP, address: 198.18.0.3}]}\n---\n\
         apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\n\
         metadata: {name: gateway-ssh}\n\
         spec:\n  nodeSelector: {matchLabels: {kubernetes.io/hostname: n3}}\n  ingress:\n  \
         - fromEndpoints: [{matchLabels: {pod: a, k8s:io.kubernetes.pod.namespace: x}}]\n    \
         toPorts: [{ports: [{port: \"22\", protocol: TCP}]}]\n",
    );
    let compiled = policy::Compiled::build(&b);
    assert_eq!(
        compiled.host_maps.keys().collect::<Vec<_>>(),
        vec!["n3"],
        "only the labelled node is a host endpoint"
    );
    let map = &compiled.host_maps["n3"];
    let id = |ip: &str| compiled.identities.lookup(ip.parse().unwrap(), Some("n3"));
    let verdict = |ip: &str, port| {
        map.lookup(policy::Direction::Ingress, id(ip), Protocol::Tcp, port)
            .allowed
    };
    assert!(
        verdict("10.244.1.10", 22),
        "x/a may reach the gateway's SSH"
    );
    assert!(!verdict("10.244.1.10", 80), "only port 22");
    assert!(!verdict("10.244.2.10", 22), "x/b is not selected");
    assert!(
        map.lookup(
            policy::Direction::Egress,
            id("10.244.2.10"),
            Protocol::Tcp,
            80
        )
        .allowed,
        "egress is not isolated by an ingress-only policy"
    );
}
