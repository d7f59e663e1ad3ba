//! The pure half of enforcement: what the BPF maps should hold for a compiled policy, and the
//! make-before-break plan that takes the maps from what they hold to that.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;

use ipnet::IpNet;
use policy::compile::{Entry, Key};
use policy::identity::IdentityLabels;
use policy::istio::AuthzEnforcement;
use policy::{Bundle, Direction, Identities};

use super::maps::{
    EndpointConfigValue, PolicyKey, DIR_AUTHZ, DIR_EGRESS, DIR_INGRESS, EP_AUTHZ_INGRESS_TCP,
    EP_ENFORCE_EGRESS, EP_ENFORCE_INGRESS, EP_FAIL_CLOSED, EP_PROXY_INGRESS_TCP, POLICY_ALLOW,
    POLICY_DENY, POLICY_L7,
};

/// Every entry of one endpoint's compiled policy map; the seam also lets tests feed maps
/// directly.
pub trait MapEntries {
    fn entries(&self) -> Vec<(Key, Entry)>;
}

impl MapEntries for policy::PolicyMap {
    fn entries(&self) -> Vec<(Key, Entry)> {
        self.iter().map(|(k, e)| (*k, e.clone())).collect()
    }
}

/// How one endpoint (a host-side interface) is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointConfig {
    /// The endpoint's own security identity.
    pub identity: u32,
    /// Judge packets entering the pod (tc egress of the interface).
    pub enforce_ingress: bool,
    /// Judge packets leaving the pod (tc ingress of the interface).
    pub enforce_egress: bool,
    /// Every TCP connection its policy map admits into the pod goes through the L7 proxy
    /// (Istio AuthorizationPolicies apply to it: the proxy is its waypoint). Connections
    /// from the pod's own node (kubelet probes) are exempt, as in Istio's ambient mode.
    pub proxy_ingress_tcp: bool,
    /// Istio AuthorizationPolicies that read only the connection apply: a TCP connection into
    /// the pod (except from its own node) needs an allow in the endpoint's authorization
    /// entries too; the programs enforce them, the proxy never sees the connection.
    pub authz_ingress_tcp: bool,
}

impl EndpointConfig {
    /// Enforce both directions; the policy map itself says whether a direction is isolated.
    pub fn enforcing(identity: u32) -> Self {
        Self {
            identity,
            enforce_ingress: true,
            enforce_egress: true,
            proxy_ingress_tcp: false,
            authz_ingress_tcp: false,
        }
    }

    pub(super) fn value(self, fail_closed: bool) -> EndpointConfigValue {
        let mut flags = 0;
        if self.enforce_ingress {
            flags |= EP_ENFORCE_INGRESS;
        }
        if self.enforce_egress {
            flags |= EP_ENFORCE_EGRESS;
        }
        if self.proxy_ingress_tcp {
            flags |= EP_PROXY_INGRESS_TCP;
        }
        if self.authz_ingress_tcp {
            flags |= EP_AUTHZ_INGRESS_TCP;
        }
        if fail_closed {
            flags |= EP_FAIL_CLOSED;
        }
        EndpointConfigValue {
            identity: self.identity,
            flags,
        }
    }
}

/// The complete wanted content of the endpoint, policy and ipcache maps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// ifindex → config.
    pub endpoints: BTreeMap<u32, EndpointConfig>,
    /// Policy map entries → `POLICY_ALLOW` / `POLICY_L7` / `POLICY_DENY` flags.
    pub policy: HashMap<PolicyKey, u32>,
    /// Prefix → identity (longest prefix wins; unmatched addresses are `world`).
    pub ipcache: HashMap<IpNet, u32>,
    /// Endpoints named in the interface mapping that the bundle does not know: they get no
    /// config, so their interfaces drop everything.
    pub unknown_endpoints: Vec<String>,
}

impl Desired {
    /// Builds the maps for the local endpoints `ifindexes` (`namespace/name` → ifindex) from a
    /// compiled bundle. `local_node` decides which node addresses are `host`.
    pub fn from_compiled<M: MapEntries>(
        identities: &Identities,
        maps: &BTreeMap<String, M>,
        bundle: &Bundle,
        local_node: Option<&str>,
        ifindexes: &BTreeMap<String, u32>,
    ) -> Self {
        let mut desired = Self {
            ipcache: ipcache_entries(identities, bundle, local_node),
            ..Self::default()
        };
        for (name, &ifindex) in ifindexes {
            let endpoint = bundle
                .endpoints
                .iter()
                .find(|ep| &ep.qualified_name() == name);
            let (Some(endpoint), Some(map)) = (endpoint, maps.get(name)) else {
                desired.unknown_endpoints.push(name.clone());
                continue;
            };
            // A dual-stack pod may have one identity per family; IPv4's names the endpoint.
            let mut ips = endpoint.ips.clone();
            ips.sort_by_key(|ip| !ip.is_ipv4());
            let identity = ips
                .first()
                .map(|ip| identities.lookup(*ip, local_node))
                .unwrap_or(policy::identity::WORLD);
            desired.add_endpoint(ifindex, identity, map);
            let authz = bundle.authz_for(endpoint);
            match policy::istio::enforcement(&authz, identities, &bundle.istio) {
                AuthzEnforcement::None => {}
                AuthzEnforcement::Proxy(_) => desired.set_flags(ifindex, |c| {
                    c.proxy_ingress_tcp = true;
                }),
                AuthzEnforcement::Programs(map) => desired.add_authz(ifindex, &map),
            }
        }
        desired
    }

    fn set_flags(&mut self, ifindex: u32, set: impl FnOnce(&mut EndpointConfig)) {
        if let Some(config) = self.endpoints.get_mut(&ifindex) {
            set(config);
        }
    }

    /// Enforces the Istio authorization entries `map` (ingress keys) on the endpoint behind
    /// `ifindex`, added before with [`Desired::add_endpoint`]: they go to the `DIR_AUTHZ` key
    /// space, and the endpoint consults it for every new TCP connection into the pod.
    pub fn add_authz<M: MapEntries>(&mut self, ifindex: u32, map: &M) {
        self.set_flags(ifindex, |c| c.authz_ingress_tcp = true);
        for (key, entry) in map.entries() {
            let mut flags = 0;
            if entry.allow {
                flags |= POLICY_ALLOW;
            }
            if entry.deny {
                flags |= POLICY_DENY;
            }
            if flags != 0 {
                let mut k = policy_key(ifindex, &key);
                k.direction = DIR_AUTHZ;
                self.policy.insert(k, flags);
            }
        }
    }

    /// Enforces `map` on the endpoint behind `ifindex`, whose own identity is `identity`.
    pub fn add_endpoint<M: MapEntries>(&mut self, ifindex: u32, identity: u32, map: &M) {
        self.endpoints
            .insert(ifindex, EndpointConfig::enforcing(identity));
        for (key, entry) in map.entries() {
            let mut flags = 0;
            if entry.allow {
                // A connection HTTP rules restrict is allowed only through the L7 proxy, which
                // applies them; without rules it is allowed here.
                flags |= match entry.http {
                    Some(_) => POLICY_L7,
                    None => POLICY_ALLOW,
                };
            }
            if entry.deny {
                flags |= POLICY_DENY;
            }
            if flags != 0 {
                self.policy.insert(policy_key(ifindex, &key), flags);
            }
        }
    }
}

pub fn policy_key(ifindex: u32, key: &Key) -> PolicyKey {
    PolicyKey {
        ifindex,
        identity: key.identity,
        port: key.port,
        direction: match key.direction {
            Direction::Ingress => DIR_INGRESS,
            Direction::Egress => DIR_EGRESS,
        },
        protocol: key.protocol,
        prefix: key.prefix,
        pad: [0; 3],
    }
}

/// The IP → identity cache as LPM entries, equal in meaning to `Identities::lookup`.
pub fn ipcache_entries(
    identities: &Identities,
    bundle: &Bundle,
    local_node: Option<&str>,
) -> HashMap<IpNet, u32> {
    let mut out = HashMap::new();
    // A CIDR identity's labels are every policy prefix containing its own prefix, which is
    // therefore the longest of them.
    for (id, labels) in identities.iter() {
        if let IdentityLabels::Cidr { cidrs } = labels {
            if let Some(own) = cidrs.iter().max_by_key(|net| net.prefix_len()) {
                out.insert(own.trunc(), id);
            }
        }
    }
    // Endpoint and node addresses are full-length entries and override a policy prefix of
    // the same length, as in the identity cache.
    let full = |ip: IpAddr| IpNet::from(ip);
    for ep in &bundle.endpoints {
        for ip in &ep.ips {
            out.insert(full(*ip), identities.lookup(*ip, local_node));
        }
    }
    // A node's address is `host` on that node and a remote-node identity elsewhere (one with
    // CIDR labels when it lies in a policy prefix, so that an `ipBlock` can select it).
    for node in bundle.nodes.values() {
        for ip in &node.ips {
            out.insert(full(*ip), identities.lookup(*ip, local_node));
        }
    }
    out
}

/// Changes that take a map from `current` to `desired`: every upsert is applied before any
/// removal, so an entry that allows a flow under both the old and the new policy is never
/// missing in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K, V> {
    pub upserts: Vec<(K, V)>,
    pub removals: Vec<K>,
}

pub fn plan<K: Hash + Eq + Copy + Ord, V: PartialEq + Copy>(
    current: &HashMap<K, V>,
    desired: &HashMap<K, V>,
) -> Plan<K, V> {
    let mut upserts: Vec<(K, V)> = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let mut removals: Vec<K> = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    upserts.sort_by_key(|(k, _)| *k);
    removals.sort();
    Plan { upserts, removals }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_adds_and_changes_before_it_removes_and_skips_unchanged() {
        let current: HashMap<u32, u32> = [(1, 1), (2, 1), (3, 1)].into();
        let desired: HashMap<u32, u32> = [(1, 1), (2, 3), (4, 1)].into();
        let p = plan(&current, &desired);
        assert_eq!(p.upserts, vec![(2, 3), (4, 1)]);
        assert_eq!(p.removals, vec![3]);
    }

    /// The LPM cache the data path gets answers as `Identities::lookup` does, node addresses in
    /// an `ipBlock` included (they get a remote-node identity with CIDR labels elsewhere, and
    /// stay `host` on their own node, which the host-endpoint programs rely on).
    #[test]
    fn ipcache_answers_as_the_identity_lookup() {
        let text = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n\
            status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}\n---\n\
            apiVersion: v1\nkind: Node\nmetadata: {name: n2}\n\
            status: {addresses: [{type: InternalIP, address: 198.18.0.2}]}\n---\n\
            apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n\
            spec: {nodeName: n1, containers: [{name: c, image: i}]}\n\
            status: {podIPs: [{ip: 10.244.1.10}]}\n---\n\
            apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
            metadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  \
            ingress: [{from: [{ipBlock: {cidr: 198.18.0.0/16, except: [198.18.0.1/32]}}]}]\n";
        let bundle = policy::load([("t.yaml", text)]).unwrap();
        let ids = Identities::build(&bundle);
        let remote = ids.lookup("198.18.0.2".parse().unwrap(), Some("n1"));
        assert_ne!(remote, policy::identity::REMOTE_NODE, "CIDR-labelled");
        for local in ["n1", "n2"] {
            let cache = ipcache_entries(&ids, &bundle, Some(local));
            let lpm = |ip: IpAddr| {
                cache
                    .iter()
                    .filter(|(net, _)| net.contains(&ip))
                    .max_by_key(|(net, _)| net.prefix_len())
                    .map_or(policy::identity::WORLD, |(_, id)| *id)
            };
            for ip in [
                "198.18.0.1",
                "198.18.0.2",
                "198.18.7.7",
                "10.244.1.10",
                "8.8.8.8",
            ] {
                let ip: IpAddr = ip.parse().unwrap();
                assert_eq!(lpm(ip), ids.lookup(ip, Some(local)), "{ip} on {local}");
            }
        }
        let on_n2 = ipcache_entries(&ids, &bundle, Some("n2"));
        assert_eq!(
            on_n2[&"198.18.0.2/32".parse().unwrap()],
            policy::identity::HOST
        );
    }

    /// Pods api (10.244.1.2, ifindex 7) and web (10.244.1.3, service account web, ifindex 8)
    /// of namespace prod on n1.
    const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: prod, labels: {app: api}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.244.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {nodeName: n1, serviceAccountName: web, containers: [{name: c, image: i}]}
status: {podIPs: [{ip: 10.244.1.3}]}
"#;

    /// The maps for PODS and `docs` on n1, and web's identity.
    fn desired_on_n1(docs: &[&str]) -> (Desired, u32) {
        let docs = std::iter::once(PODS).chain(docs.iter().copied());
        let bundle = policy::load(docs.map(|d| ("t.yaml", d))).unwrap();
        let compiled = policy::Compiled::build(&bundle);
        let ifindexes: BTreeMap<String, u32> =
            [("prod/api".to_string(), 7), ("prod/web".to_string(), 8)].into();
        let d = Desired::from_compiled(
            &compiled.identities,
            &compiled.maps,
            &bundle,
            Some("n1"),
            &ifindexes,
        );
        let web = compiled
            .identities
            .lookup("10.244.1.3".parse().unwrap(), Some("n1"));
        (d, web)
    }

    /// The authorization policy `api` on api, with `rules`.
    fn authz_on_api(rules: &str) -> String {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: api, namespace: prod}}\nspec:\n  \
             selector: {{matchLabels: {{app: api}}}}\n  rules: [{rules}]\n"
        )
    }

    fn waypoint_and_authz_flags(d: &Desired, ifindex: u32) -> (bool, bool) {
        let flags = d.endpoints[&ifindex].value(false).flags;
        (
            flags & EP_PROXY_INGRESS_TCP != 0,
            flags & EP_AUTHZ_INGRESS_TCP != 0,
        )
    }

    #[test]
    fn an_endpoint_an_http_authorization_policy_applies_to_sends_its_tcp_ingress_to_the_proxy() {
        let (d, _) = desired_on_n1(&[&authz_on_api("{to: [{operation: {methods: [GET]}}]}")]);
        assert_eq!(waypoint_and_authz_flags(&d, 7), (true, false));
        assert_eq!(waypoint_and_authz_flags(&d, 8), (false, false));
        assert!(d.policy.keys().all(|k| k.direction != DIR_AUTHZ));
        // Control: without the policy no endpoint is proxied.
        let (d, _) = desired_on_n1(&[]);
        assert_eq!(waypoint_and_authz_flags(&d, 7), (false, false));
    }

    #[test]
    fn an_l4_only_authorization_policy_is_enforced_by_the_programs_not_the_proxy() {
        let l4 = authz_on_api(
            "{from: [{source: {principals: [cluster.local/ns/prod/sa/web]}}], \
             to: [{operation: {ports: [\"8080\"]}}]}",
        );
        let (d, web) = desired_on_n1(&[&l4]);
        assert_eq!(
            waypoint_and_authz_flags(&d, 7),
            (false, true),
            "judged by the programs, never redirected"
        );
        let authz: Vec<_> = d
            .policy
            .iter()
            .filter(|(k, _)| k.direction == DIR_AUTHZ)
            .collect();
        assert_eq!(
            authz.len(),
            1,
            "one allow: web's account to 8080: {authz:?}"
        );
        let (key, flags) = authz[0];
        assert_eq!(
            (
                key.ifindex,
                key.identity,
                key.protocol,
                key.port,
                key.prefix,
                *flags
            ),
            (7, web, 6, 8080, 16, POLICY_ALLOW)
        );
        // Control: a policy that reads an address goes to the proxy, with no authorization
        // entries.
        let (d, _) = desired_on_n1(&[&authz_on_api(
            "{from: [{source: {ipBlocks: [10.244.1.0/24]}}]}",
        )]);
        assert_eq!(waypoint_and_authz_flags(&d, 7), (true, false));
        assert!(d.policy.keys().all(|k| k.direction != DIR_AUTHZ));
    }

    #[test]
    fn endpoint_flags() {
        let v = EndpointConfig::enforcing(300).value(true);
        assert_eq!(v.identity, 300);
        assert_eq!(
            v.flags,
            EP_ENFORCE_INGRESS | EP_ENFORCE_EGRESS | EP_FAIL_CLOSED
        );
    }
}
