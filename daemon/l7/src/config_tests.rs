//! Tests of the configuration's build and decode: built from real manifests through the policy
//! crate, so that the proxy's lookups are proven equal to `PolicyMap::lookup`.

use super::*;
use crate::snapshot::Snapshot;
use policy::{Compiled, Protocol};

/// Node n1 holds `api` (10.0.1.1, judged by HTTP rules from two policies plus a deny),
/// `client` (10.0.1.2) and `plain` (10.0.1.3, L4 rules only); `other` (10.0.2.1) is on n2.
pub(crate) const MANIFEST: &str = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
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
  metadata: {name: api, namespace: shop, labels: {app: api}}
  spec: {nodeName: n1, serviceAccountName: api-sa, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.1.1}], hostIP: 198.18.0.1}
- apiVersion: v1
  kind: Pod
  metadata: {name: client, namespace: shop, labels: {app: client}}
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.1.2}], hostIP: 198.18.0.1}
- apiVersion: v1
  kind: Pod
  metadata: {name: plain, namespace: shop, labels: {app: plain}}
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.1.3}], hostIP: 198.18.0.1}
- apiVersion: v1
  kind: Pod
  metadata: {name: other, namespace: shop, labels: {app: other}}
  spec: {nodeName: n2, containers: [{name: c, image: i}]}
  status: {podIPs: [{ip: 10.0.2.1}], hostIP: 198.18.0.2}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: get-a, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}, {matchLabels: {app: other}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/a/.*"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: post-b, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: POST, path: "/b", headers: ["X-Token: t1"]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-other, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4-only, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: plain}}]
    toPorts:
    - ports: [{port: "81", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: plain-l4, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: plain}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#;

pub(crate) fn fixture() -> (policy::Bundle, Compiled, L7Config) {
    let bundle = policy::load_with([("test.yaml", MANIFEST)], policy::LoadOptions::default())
        .expect("the manifest loads");
    let compiled = Compiled::build_for(&bundle, policy::Identities::build(&bundle), Some("n1"));
    let cfg = L7Config::build(&compiled, &bundle, "n1", 7);
    (bundle, compiled, cfg)
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

#[test]
fn only_endpoints_with_http_rules_on_this_node() {
    let (_, _, cfg) = fixture();
    let names: Vec<_> = cfg.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["api"]);
    assert_eq!(cfg.version, 7);
    // Every pod of the cluster, with its ServiceAccount (Kubernetes' default when unset).
    assert_eq!(cfg.pods.len(), 4);
    let account = |name: &str| {
        let pod = cfg.pods.iter().find(|p| p.name == name).expect("pod");
        pod.service_account.clone()
    };
    assert_eq!(account("api"), "api-sa");
    assert_eq!(account("client"), "default");
    let other = cfg.pods.iter().find(|p| p.name == "other").expect("other");
    assert_eq!(other.labels.get("app").map(String::as_str), Some("other"));
}

/// The decoded map answers every probe as the compiled one does, and the ipcache as the
/// identity cache does.
#[test]
fn decoded_map_and_ipcache_equal_the_compiled_ones() {
    let (bundle, compiled, cfg) = fixture();
    let snap = Snapshot::decode(&cfg).expect("decodes");
    let api = bundle.endpoint("shop", "api").expect("api");
    let map = &compiled.maps["shop/api"];
    let local = snap.endpoint(ip("10.0.1.1")).expect("api is judged");
    assert_eq!(local.map.len(), map.len());
    let remotes = [
        "10.0.1.2",
        "10.0.1.3",
        "10.0.2.1",
        "198.18.0.1",
        "198.18.0.2",
        "8.8.8.8",
    ];
    for remote in remotes {
        let id = compiled.identities.lookup(ip(remote), Some("n1"));
        assert_eq!(snap.identity(ip(remote)), id, "{remote}");
        for dir in [Direction::Ingress, Direction::Egress] {
            for port in [79u16, 80, 81, 8080] {
                let want = compiled.lookup(api, dir, ip(remote), Protocol::Tcp, port);
                let want = want.expect("api has a map");
                let got = local.map.lookup(dir, id, Protocol::Tcp, port);
                assert_eq!(got.allowed, want.allowed, "{remote} {dir} {port}");
                let fields = |v: &policy::MapVerdict| {
                    v.http.as_ref().map(|r| {
                        let mut f: Vec<String> = r.iter().map(|r| r.to_string()).collect();
                        f.sort();
                        f
                    })
                };
                assert_eq!(fields(&got), fields(&want), "{remote} {dir} {port}");
            }
        }
    }
}

#[test]
fn json_round_trip() {
    let (_, _, cfg) = fixture();
    let text = serde_json::to_vec(&cfg).expect("serialises");
    let back = parse(&text).expect("parses");
    assert_eq!(back, cfg);
}

#[test]
fn a_bad_pattern_is_refused_naming_endpoint_and_field() {
    let (_, _, mut cfg) = fixture();
    let (i, entry) = cfg.endpoints[0]
        .entries
        .iter_mut()
        .enumerate()
        .find(|(_, e)| e.http.as_ref().is_some_and(|h| !h.is_empty()))
        .expect("an entry with rules");
    entry.http.as_mut().expect("rules")[0].path = Some("/a/(".into());
    let err = Snapshot::decode(&cfg).expect_err("refused").to_string();
    assert!(err.contains("shop/api"), "{err}");
    assert!(err.contains(&format!("entries[{i}].http[0].path")), "{err}");
}

#[test]
fn bad_json_names_the_field() {
    let text = br#"{"version": 1, "endpoints": [{"namespace": "a", "name": "b", "ips": ["x"], "identity": 1, "entries": []}], "ipcache": [], "pods": []}"#;
    let err = parse(text).expect_err("refused").to_string();
    assert!(err.contains("endpoints[0].ips[0]"), "{err}");
}

#[test]
fn an_address_claimed_twice_is_refused() {
    let (_, _, mut cfg) = fixture();
    let mut twin = cfg.endpoints[0].clone();
    twin.name = "twin".into();
    cfg.endpoints.push(twin);
    let err = Snapshot::decode(&cfg).expect_err("refused").to_string();
    assert!(
        err.contains("10.0.1.1") && err.contains("shop/twin"),
        "{err}"
    );
}

#[test]
fn unknown_addresses_are_world() {
    let snap = Snapshot::decode(&L7Config::default()).expect("decodes");
    assert_eq!(snap.identity(ip("10.9.9.9")), policy::identity::WORLD);
    assert!(snap.endpoint(ip("10.0.1.1")).is_none());
    // An IPv4 client on the IPv6 listener is the same address.
    let (_, _, cfg) = fixture();
    let snap = Snapshot::decode(&cfg).expect("decodes");
    assert!(snap.endpoint(ip("::ffff:10.0.1.1")).is_some());
}
