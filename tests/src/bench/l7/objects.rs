//! What `bench-l7` applies: the namespace and pods, and the server's policy in each mode — an
//! L4 CiliumNetworkPolicy admitting the client to the server's port, or the same rule with N
//! HTTP rules, of which the requests match the last (the worst case for a proxy that tries the
//! rules in order). Pure: manifests as strings, and the paths the load uses.

use wiremesh_lab::{namespace_with_pods, Host, PodSpec};

pub const NAMESPACE: &str = "bench";
pub const CLIENT: Host = Host::Pod(1, 1);
pub const SERVER: Host = Host::Pod(2, 1);
/// A pod on the client's node the policies do not admit: proves the L4 policy is in force.
pub const OTHER: Host = Host::Pod(1, 2);
/// The HTTP server's port (the one the policies name).
pub const SERVER_PORT: u16 = 8080;
/// nginx's port in the server pod (no policy is in force while it is measured).
pub const NGINX_PORT: u16 = 8081;
/// A path no HTTP rule allows.
pub const DENIED_PATH: &str = "/denied";
/// Every policy of the benchmark has this name, so applying the next replaces the last.
const POLICY: &str = "bench-l7";

/// The Namespace and the three Pods.
pub fn workloads() -> String {
    let pods = [
        PodSpec::new(NAMESPACE, "client", CLIENT).label("app", "bench-client"),
        PodSpec::new(NAMESPACE, "server", SERVER).label("app", "bench-server"),
        PodSpec::new(NAMESPACE, "other", OTHER).label("app", "bench-other"),
    ];
    namespace_with_pods(NAMESPACE, &pods)
}

/// The path every request of a run asks for: with `rules` HTTP rules, the one only the last
/// rule allows (`/api/v1/svc<rules-1>/items`); without HTTP rules, that of one rule.
pub fn request_path(rules: usize) -> String {
    format!("/api/v1/svc{}/items", rules.max(1) - 1)
}

/// The server's policy: the client may reach [`SERVER_PORT`]/TCP; with `http_rules > 0`, only
/// with `GET /api/v1/svc<i>/.*` for i in 0..http_rules.
pub fn policy(http_rules: usize) -> String {
    let mut yaml = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
         metadata: {{name: {POLICY}, namespace: {NAMESPACE}}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: bench-server}}}}\n  ingress:\n  \
         - fromEndpoints: [{{matchLabels: {{app: bench-client}}}}]\n    toPorts:\n    \
         - ports: [{{port: \"{SERVER_PORT}\", protocol: TCP}}]\n"
    );
    if http_rules > 0 {
        yaml.push_str("      rules:\n        http:\n");
        for i in 0..http_rules {
            yaml.push_str(&format!(
                "        - {{method: GET, path: \"/api/v1/svc{i}/.*\"}}\n"
            ));
        }
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(policy: &str) -> policy::Bundle {
        let files = [("workloads", workloads()), ("policy", policy.to_owned())];
        policy::load(files.iter().map(|(n, m)| (*n, m.as_str())))
            .unwrap_or_else(|e| panic!("{e}\n{policy}"))
    }

    #[test]
    fn the_policies_load() {
        load(&policy(0));
        load(&policy(10));
        load(&policy(1000));
    }

    #[test]
    fn the_request_matches_only_the_last_rule() {
        let yaml = policy(10);
        assert_eq!(yaml.matches("method: GET").count(), 10);
        assert!(yaml.contains("\"/api/v1/svc9/.*\""));
        assert_eq!(request_path(10), "/api/v1/svc9/items");
        assert_eq!(request_path(1000), "/api/v1/svc999/items");
        assert_eq!(request_path(0), "/api/v1/svc0/items");
        assert!(!policy(0).contains("rules"));
    }
}
