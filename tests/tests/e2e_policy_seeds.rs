//! The seeds' policies, as written in `policy/examples/`, applied with `wiremesh apply -f` to a
//! two-node lab and probed with real connections, locally and across the tunnel: default-deny +
//! allow-dns, frontend → backend on 8080, backend egress (redis 6379, HTTPS to the internet but
//! not to private ranges, DNS), monitoring (namespaceSelector AND podSelector) on 9090, and the
//! CiliumNetworkPolicy refused as written (its HTTP rules are not enforced yet) and its L3/L4
//! part applied. Then: an invalid apply leaves the policy in force untouched,
//! replies of allowed connections pass under default-deny egress, and the online trace agrees
//! with what the data path did.

mod common;

use std::time::Duration;

use wiremesh_lab::{namespace_manifest, Host, Lab, PodSpec, Proto};

const PROBE: Duration = Duration::from_millis(800);
/// How long a change may take to reach both nodes' enforcement.
const SETTLE: Duration = Duration::from_secs(15);

fn example(name: &str) -> String {
    let path = format!("{}/../policy/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `text` without its `rules:` blocks (the line and the lines indented deeper than it).
fn strip_http_rules(text: &str) -> String {
    let mut out = String::new();
    let mut skip_deeper_than: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if skip_deeper_than.is_some_and(|d| indent > d) {
            continue;
        }
        skip_deeper_than = None;
        if line.trim_start().starts_with("rules:") {
            skip_deeper_than = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(!out.contains("http"), "rules left in:\n{out}");
    out
}

struct Shop {
    frontend: PodSpec,
    backend: PodSpec,
    redis: PodSpec,
    coredns: PodSpec,
    prometheus: PodSpec,
    impostor: PodSpec,
}

impl Shop {
    /// The seeds' cluster on lab pods, spread over both nodes.
    fn new() -> Self {
        Self {
            frontend: PodSpec::new("shop", "frontend", Host::Pod(1, 1))
                .label("app", "frontend")
                .port("http", Proto::Tcp, 80),
            backend: PodSpec::new("shop", "backend", Host::Pod(2, 1))
                .label("app", "backend")
                .port("http", Proto::Tcp, 8080)
                .port("metrics", Proto::Tcp, 9090),
            redis: PodSpec::new("shop", "redis", Host::Pod(1, 2))
                .label("app", "redis")
                .port("redis", Proto::Tcp, 6379),
            coredns: PodSpec::new("kube-system", "coredns", Host::Pod(2, 2))
                .label("k8s-app", "kube-dns")
                .port("dns", Proto::Udp, 53)
                .port("dns-tcp", Proto::Tcp, 53),
            prometheus: PodSpec::new("monitoring", "prometheus", Host::Pod(1, 3))
                .label("app", "prometheus"),
            impostor: PodSpec::new("shop", "impostor", Host::Pod(2, 3)).label("app", "prometheus"),
        }
    }

    fn manifests(&self) -> String {
        let mut docs = vec![
            namespace_manifest("shop", &[("team", "shop")]),
            namespace_manifest("kube-system", &[]),
            namespace_manifest("monitoring", &[("purpose", "monitoring")]),
        ];
        for p in [
            &self.frontend,
            &self.backend,
            &self.redis,
            &self.coredns,
            &self.prometheus,
            &self.impostor,
        ] {
            docs.push(p.manifest());
        }
        docs.join("---\n")
    }
}

struct Check {
    what: &'static str,
    from: Host,
    to: Host,
    port: u16,
    proto: Proto,
    allowed: bool,
}

fn check(
    what: &'static str,
    from: &PodSpec,
    to: &PodSpec,
    port: u16,
    proto: Proto,
    allowed: bool,
) -> Check {
    Check {
        what,
        from: from.host,
        to: to.host,
        port,
        proto,
        allowed,
    }
}

/// Probes every check until all match or `SETTLE` passes; the mismatches at the end.
fn mismatches(lab: &Lab, checks: &[Check]) -> Vec<String> {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let probes: Vec<_> = checks
            .iter()
            .map(|c| (c.from, c.to.ip(), c.port, c.proto))
            .collect();
        let got = lab.probe_all(&probes, PROBE);
        let bad: Vec<String> = checks
            .iter()
            .zip(&got)
            .filter(|(c, got)| c.allowed != **got)
            .map(|(c, got)| {
                format!(
                    "{}: {} -> {} {}/{}: expected {}, observed {}",
                    c.what,
                    c.from,
                    c.to,
                    c.port,
                    c.proto,
                    verdict(c.allowed),
                    verdict(*got)
                )
            })
            .collect();
        if bad.is_empty() || std::time::Instant::now() > deadline {
            return bad;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed {
        "allowed"
    } else {
        "denied"
    }
}

#[test]
fn the_seeds_policies_work_as_written() {
    common::require_agent();
    let lab = common::lab(2, 3);
    common::start_mesh(&lab);
    let shop = Shop::new();
    let all_hosts: Vec<Host> = lab.all_pods();
    let _servers = lab
        .serve(&all_hosts, &[53, 80, 443, 6379, 8080, 9090], &[53])
        .expect("echo servers");
    lab.node(1)
        .agent()
        .apply(&shop.manifests())
        .expect("apply the cluster's objects");

    // No policy yet: nothing is isolated.
    let open = [
        check(
            "no policy",
            &shop.frontend,
            &shop.redis,
            6379,
            Proto::Tcp,
            true,
        ),
        check(
            "no policy",
            &shop.impostor,
            &shop.backend,
            9090,
            Proto::Tcp,
            true,
        ),
    ];
    let bad = mismatches(&lab, &open);
    assert!(bad.is_empty(), "before any policy:\n{}", bad.join("\n"));

    for file in [
        "default-deny.yaml",
        "frontend-backend.yaml",
        "backend-egress.yaml",
        "monitoring.yaml",
    ] {
        let out = lab
            .node(2)
            .agent()
            .apply(&example(file))
            .unwrap_or_else(|e| panic!("apply {file}: {e}"));
        assert!(out.contains("configured"), "{file}: {out}");
    }
    let s = &shop;
    let checks = [
        check(
            "frontend → backend 8080 (both ends allow)",
            &s.frontend,
            &s.backend,
            8080,
            Proto::Tcp,
            true,
        ),
        check(
            "frontend → backend 9090 (not in frontend's egress)",
            &s.frontend,
            &s.backend,
            9090,
            Proto::Tcp,
            false,
        ),
        check(
            "frontend → redis (default-deny egress)",
            &s.frontend,
            &s.redis,
            6379,
            Proto::Tcp,
            false,
        ),
        check(
            "frontend → DNS UDP (allow-dns)",
            &s.frontend,
            &s.coredns,
            53,
            Proto::Udp,
            true,
        ),
        check(
            "frontend → DNS TCP (allow-dns)",
            &s.frontend,
            &s.coredns,
            53,
            Proto::Tcp,
            true,
        ),
        check(
            "backend → redis 6379",
            &s.backend,
            &s.redis,
            6379,
            Proto::Tcp,
            true,
        ),
        check(
            "backend → frontend 443 (private range excepted)",
            &s.backend,
            &s.frontend,
            443,
            Proto::Tcp,
            false,
        ),
        check(
            "backend → DNS UDP",
            &s.backend,
            &s.coredns,
            53,
            Proto::Udp,
            true,
        ),
        check(
            "redis → backend (default-deny egress)",
            &s.redis,
            &s.backend,
            8080,
            Proto::Tcp,
            false,
        ),
        check(
            "prometheus → backend 9090 (ns AND pod selector)",
            &s.prometheus,
            &s.backend,
            9090,
            Proto::Tcp,
            true,
        ),
        check(
            "prometheus → redis 9090 closed port, 6379 not allowed",
            &s.prometheus,
            &s.redis,
            6379,
            Proto::Tcp,
            false,
        ),
        check(
            "impostor (same labels, other ns) → backend 9090",
            &s.impostor,
            &s.backend,
            9090,
            Proto::Tcp,
            false,
        ),
        check(
            "prometheus → frontend 80 (only 9090 allowed)",
            &s.prometheus,
            &s.frontend,
            80,
            Proto::Tcp,
            false,
        ),
        check(
            "DNS server is not isolated: prometheus → coredns",
            &s.prometheus,
            &s.coredns,
            53,
            Proto::Udp,
            true,
        ),
    ];
    let bad = mismatches(&lab, &checks);
    if !bad.is_empty() {
        lab.dump_logs();
    }
    assert!(
        bad.is_empty(),
        "{} of {} checks failed:\n{}",
        bad.len(),
        checks.len(),
        bad.join("\n")
    );

    // The online trace answers from the policy the agent enforces.
    let traced = lab
        .node(2)
        .agent()
        .trace(&[
            "--from",
            "shop/frontend",
            "--to",
            "shop/backend",
            "--port",
            "8080",
            "-o",
            "json",
        ])
        .expect("online trace");
    assert!(traced.contains("\"verdict\": \"allowed\""), "{traced}");
    let traced = lab
        .node(1)
        .agent()
        .trace(&[
            "--from",
            "shop/impostor",
            "--to",
            "shop/backend",
            "--port",
            "9090",
        ])
        .expect("online trace");
    assert!(traced.to_lowercase().contains("denied"), "{traced}");

    // An invalid apply is refused with the file, resource and field named, and changes nothing.
    let invalid = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                   metadata: {name: broken, namespace: shop}\n\
                   spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}\n";
    let out = lab
        .node(1)
        .agent()
        .objects_cmd("apply", invalid)
        .expect("run apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an invalid policy must be refused");
    assert!(
        stderr.contains("NetworkPolicy shop/broken")
            && stderr.contains("spec.ingress[0].ports[0].port"),
        "the error names the resource and the field: {stderr}"
    );
    let bad = mismatches(&lab, &checks);
    assert!(
        bad.is_empty(),
        "after the refused apply:\n{}",
        bad.join("\n")
    );

    // Deleting the policies opens everything again.
    for file in [
        "monitoring.yaml",
        "backend-egress.yaml",
        "frontend-backend.yaml",
        "default-deny.yaml",
    ] {
        lab.node(1)
            .agent()
            .delete(&example(file))
            .unwrap_or_else(|e| panic!("delete {file}: {e}"));
    }
    let reopened = [
        check(
            "no policy again",
            &s.redis,
            &s.backend,
            8080,
            Proto::Tcp,
            true,
        ),
        check(
            "no policy again",
            &s.impostor,
            &s.backend,
            9090,
            Proto::Tcp,
            true,
        ),
    ];
    let bad = mismatches(&lab, &reopened);
    assert!(bad.is_empty(), "after delete:\n{}", bad.join("\n"));

    // The CiliumNetworkPolicy example as written, HTTP rules included, is accepted: the L7
    // proxy enforces them (e2e_l7 exercises that with HTTP; the checks below send raw TCP,
    // which an HTTP port would reset, so they run against its L3/L4 part).
    lab.node(2)
        .agent()
        .apply(&example("cnp-l3l4.yaml"))
        .expect("apply cnp-l3l4.yaml as written, rules.http included");
    // Its L3/L4 part (the example without its `rules:`), which is enforceable as written.
    let l3l4 = strip_http_rules(&example("cnp-l3l4.yaml"));
    lab.node(2)
        .agent()
        .apply(&l3l4)
        .expect("apply cnp-l3l4.yaml without rules.http");
    #[rustfmt::skip]
    let cnp = [
        check("CNP: frontend → backend 8080 (fromEndpoints + toPorts)", &s.frontend, &s.backend, 8080, Proto::Tcp, true),
        check("CNP: impostor → backend 8080 (not frontend)", &s.impostor, &s.backend, 8080, Proto::Tcp, false),
        check("CNP: prometheus → backend 9090 (ingress isolated)", &s.prometheus, &s.backend, 9090, Proto::Tcp, false),
        check("CNP: backend → DNS UDP (toEndpoints kube-dns, port 53 ANY)", &s.backend, &s.coredns, 53, Proto::Udp, true),
        check("CNP: backend → DNS TCP (port 53 ANY)", &s.backend, &s.coredns, 53, Proto::Tcp, true),
        check("CNP: backend → redis 6379 (egress isolated)", &s.backend, &s.redis, 6379, Proto::Tcp, false),
        check("CNP: backend → frontend 443 (toCIDRSet excepts 10.0.0.0/8; CIDR rules select no pod)", &s.backend, &s.frontend, 443, Proto::Tcp, false),
        check("CNP: frontend → redis (frontend not selected)", &s.frontend, &s.redis, 6379, Proto::Tcp, true),
    ];
    let bad = mismatches(&lab, &cnp);
    assert!(
        bad.is_empty(),
        "CiliumNetworkPolicy example:\n{}",
        bad.join("\n")
    );
}
