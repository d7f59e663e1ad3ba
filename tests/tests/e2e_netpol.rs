//! The upstream Kubernetes network-policy e2e scenarios (kubernetes
//! `test/e2e/network/netpol/network_policy.go`), rewritten for the lab: namespaces x, y, z with
//! pods a, b, c spread over two nodes (so every table has pairs on one node and pairs across the
//! tunnel), each serving TCP 80 and 81 and UDP 80 behind upstream's named ports. Each scenario
//! applies its policies through `wiremesh apply` (alternating nodes), waits until the observed
//! reachability of every ordered pair equals the table written by hand in the upstream style,
//! deletes its policies and waits until everything is open again. Every failing scenario is
//! reported with its expected and observed tables before the test fails.
//!
//! Two tests, each with its own lab, so that CI's two test threads run them side by side.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wiremesh_lab::{namespace_manifest, Lab, NetpolModel, Proto, Reachability};

/// A denied probe costs this long, so keep it short; a lab answers in milliseconds.
const PROBE: Duration = Duration::from_millis(700);
/// How long a change may take to reach both nodes' enforcement.
const SETTLE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(300);

const TCP80: (u16, Proto) = (80, Proto::Tcp);
const TCP81: (u16, Proto) = (81, Proto::Tcp);
const UDP80: (u16, Proto) = (80, Proto::Udp);

const POD_A: &str = "{matchLabels: {pod: a}}";
const POD_B: &str = "{matchLabels: {pod: b}}";
const NS_NAME: &str = "kubernetes.io/metadata.name";

/// A NetworkPolicy: its namespace, name and `spec` (flow-style YAML).
struct Np {
    namespace: &'static str,
    name: &'static str,
    spec: String,
}

fn np(namespace: &'static str, name: &'static str, spec: impl Into<String>) -> Np {
    Np {
        namespace,
        name,
        spec: spec.into(),
    }
}

impl Np {
    fn manifest(&self) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: {}, namespace: {}}}\nspec: {}\n",
            self.name, self.namespace, self.spec
        )
    }
}

/// One change (policies created or replaced, objects relabelled) and the tables it must lead to.
struct Step {
    what: &'static str,
    policies: Vec<Np>,
    objects: Vec<String>,
    checks: Vec<((u16, Proto), Reachability)>,
    /// For a table that is all open, which a policy not yet in force would pass too: a trace
    /// (from, to, text) that must name the policy on every node before probing.
    traced: Option<(&'static str, &'static str, &'static str)>,
}

fn step(what: &'static str) -> Step {
    Step {
        what,
        policies: Vec::new(),
        objects: Vec::new(),
        checks: Vec::new(),
        traced: None,
    }
}

impl Step {
    fn policy(mut self, p: Np) -> Self {
        self.policies.push(p);
        self
    }

    fn object(mut self, manifest: String) -> Self {
        self.objects.push(manifest);
        self
    }

    fn check(mut self, case: (u16, Proto), r: Reachability) -> Self {
        self.checks.push((case, r));
        self
    }

    fn traced(mut self, from: &'static str, to: &'static str, text: &'static str) -> Self {
        self.traced = Some((from, to, text));
        self
    }
}

/// An upstream test (its `It(...)` title, or several when one lab scenario covers them) as
/// steps.
struct Scenario {
    upstream: &'static str,
    steps: Vec<Step>,
}

fn scenario(upstream: &'static str, steps: Vec<Step>) -> Scenario {
    Scenario { upstream, steps }
}

struct Runner<'a> {
    lab: &'a Lab,
    model: NetpolModel,
    applies: u8,
    failures: Vec<String>,
}

impl<'a> Runner<'a> {
    /// Applies the model's objects and checks that everything is open.
    fn new(lab: &'a Lab, model: NetpolModel) -> Self {
        lab.node(1)
            .agent()
            .apply(&model.manifests())
            .expect("apply the model's namespaces and pods");
        let runner = Self {
            lab,
            model,
            applies: 0,
            failures: Vec::new(),
        };
        if let Err(tables) = runner.wait_for(&runner.open_checks()) {
            panic!("before any policy, every pod must reach every other:\n{tables}");
        }
        runner
    }

    fn open(&self) -> Reachability {
        Reachability::new(&self.model.names(), true)
    }

    fn open_checks(&self) -> Vec<((u16, Proto), Reachability)> {
        [TCP80, TCP81, UDP80]
            .into_iter()
            .map(|c| (c, self.open()))
            .collect()
    }

    /// The node the next apply or delete goes through: both, in turn.
    fn next_node(&mut self) -> u8 {
        self.applies = self.applies.wrapping_add(1);
        1 + self.applies % self.lab.nodes()
    }

    /// Probes until every table matches or `SETTLE` passes; the tables that differ at the end.
    fn wait_for(&self, checks: &[((u16, Proto), Reachability)]) -> Result<Duration, String> {
        let start = Instant::now();
        let cases: Vec<(u16, Proto)> = checks.iter().map(|(c, _)| *c).collect();
        loop {
            let observed = self.lab.netpol_reachability(&self.model, &cases, PROBE);
            let wrong: Vec<String> = checks
                .iter()
                .zip(&observed)
                .filter(|((_, expected), got)| expected.mismatches(got) > 0)
                .map(|(((port, proto), expected), got)| {
                    format!(
                        "{port}/{proto}: {} pairs differ\n{}",
                        expected.mismatches(got),
                        expected.render_against(got)
                    )
                })
                .collect();
            if wrong.is_empty() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > SETTLE {
                return Err(wrong.join("\n"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the online trace on every node names `text` for `from` → `to` on TCP 80.
    fn wait_traced(&self, from: &str, to: &str, text: &str) -> Result<(), String> {
        let deadline = Instant::now() + SETTLE;
        for node in self.lab.node_ids() {
            loop {
                let out = self
                    .lab
                    .node(node)
                    .agent()
                    .trace(&["--from", from, "--to", to, "--port", "80"])
                    .unwrap_or_else(|e| e.to_string());
                if out.contains(text) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "node-{node}'s trace {from} -> {to} never named {text}:\n{out}"
                    ));
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }

    fn run(&mut self, s: &Scenario) {
        let started = Instant::now();
        let mut policies: BTreeMap<(&str, &str), String> = BTreeMap::new();
        let mut relabelled = false;
        for st in &s.steps {
            let mut docs: Vec<String> = st.policies.iter().map(Np::manifest).collect();
            docs.extend(st.objects.iter().cloned());
            for p in &st.policies {
                policies.insert((p.namespace, p.name), p.manifest());
            }
            relabelled |= !st.objects.is_empty();
            let node = self.next_node();
            if let Err(e) = self.lab.node(node).agent().apply(&docs.join("---\n")) {
                self.fail(s, st.what, &format!("apply through node-{node}: {e}"));
                break;
            }
            if let Some((from, to, text)) = st.traced {
                if let Err(e) = self.wait_traced(from, to, text) {
                    self.fail(s, st.what, &e);
                    continue;
                }
            }
            match self.wait_for(&st.checks) {
                Ok(t) => eprintln!("ok   {} / {}: {t:.1?}", s.upstream, st.what),
                Err(tables) => self.fail(s, st.what, &tables),
            }
        }
        let node = self.next_node();
        let all: Vec<String> = policies.into_values().collect();
        if let Err(e) = self.lab.node(node).agent().delete(&all.join("---\n")) {
            self.fail(s, "delete its policies", &e.to_string());
        }
        if relabelled {
            if let Err(e) = self.lab.node(node).agent().apply(&self.model.manifests()) {
                self.fail(s, "restore the labels", &e.to_string());
            }
        }
        if let Err(tables) = self.wait_for(&self.open_checks()) {
            self.fail(
                s,
                "everything open again after deleting its policies",
                &tables,
            );
        }
        eprintln!("done {} in {:.1?}", s.upstream, started.elapsed());
    }

    fn fail(&mut self, s: &Scenario, what: &str, detail: &str) {
        eprintln!("FAIL {} / {what}", s.upstream);
        self.failures
            .push(format!("=== {}\n--- {what}\n{detail}", s.upstream));
    }

    fn finish(self, total: usize) {
        if self.failures.is_empty() {
            return;
        }
        self.lab.dump_logs();
        panic!(
            "{} failure(s) in {total} scenarios (pods: {}):\n\n{}",
            self.failures.len(),
            self.model
                .pods()
                .iter()
                .map(|p| format!("{} {}", p.qualified(), p.host))
                .collect::<Vec<_>>()
                .join(", "),
            self.failures.join("\n\n")
        );
    }
}

fn run_all(scenarios: impl FnOnce(&NetpolModel, Reachability) -> Vec<Scenario>) {
    common::require_agent();
    let lab = common::lab(2, 5);
    common::start_mesh(&lab);
    let model = NetpolModel::new(lab.nodes());
    let _servers = lab
        .serve(
            &model.hosts(),
            &wiremesh_lab::NETPOL_TCP_PORTS,
            &wiremesh_lab::NETPOL_UDP_PORTS,
        )
        .expect("echo servers");
    let mut runner = Runner::new(&lab, model);
    let list = scenarios(&runner.model, runner.open());
    let started = Instant::now();
    for s in &list {
        runner.run(s);
    }
    eprintln!("{} scenarios in {:.1?}", list.len(), started.elapsed());
    runner.finish(list.len());
}

fn ns_is(ns: &str) -> String {
    format!("{{matchLabels: {{{NS_NAME}: {ns}}}}}")
}

fn ns_not_in(ns: &str) -> String {
    format!("{{matchExpressions: [{{key: {NS_NAME}, operator: NotIn, values: [{ns}]}}]}}")
}

fn ingress(pods: &str, rules: &str) -> String {
    format!("{{podSelector: {pods}, policyTypes: [Ingress], ingress: [{rules}]}}")
}

fn egress(pods: &str, rules: &str) -> String {
    format!("{{podSelector: {pods}, policyTypes: [Egress], egress: [{rules}]}}")
}

#[test]
fn upstream_ingress_scenarios() {
    run_all(|_, open| ingress_scenarios(&open));
}

#[test]
fn upstream_egress_and_update_scenarios() {
    run_all(egress_and_update_scenarios);
}

// The scenario lists are tables: one policy or check per line, laid out by hand.
#[rustfmt::skip]
fn ingress_scenarios(open: &Reachability) -> Vec<Scenario> {
    let deny_x = || np("x", "deny-ingress", ingress("{}", ""));
    vec![
        scenario(
            "should support a 'default-deny-ingress' policy (TCP and UDP)",
            vec![step("deny ingress to x")
                .policy(deny_x())
                .check(TCP80, open.clone().expect("*", "x", false))
                .check(UDP80, open.clone().expect("*", "x", false))],
        ),
        scenario(
            "should enforce policy to allow traffic from pods within server namespace based on PodSelector",
            vec![step("x/a from pod b")
                .policy(np("x", "x-a-allows-x-b", ingress(POD_A, &format!("{{from: [{{podSelector: {POD_B}}}]}}"))))
                .check(TCP80, open.clone().all_ingress("x/a", false).expect("x/b", "x/a", true))],
        ),
        scenario(
            "should enforce policy to allow ingress traffic for a target",
            vec![step("deny x, allow all to x/a")
                .policy(np("x", "deny-all", ingress("{}", "")))
                .policy(np("x", "allow-all-to-a", ingress(POD_A, "{from: [{podSelector: {}, namespaceSelector: {}}]}")))
                .check(TCP80, open.clone().expect("*", "x", false).all_ingress("x/a", true))],
        ),
        scenario(
            "should enforce policy to allow ingress traffic from pods in all namespaces",
            vec![step("x/a from every namespace")
                .policy(np("x", "allow-from-another-ns", ingress(POD_A, "{from: [{namespaceSelector: {}}]}")))
                .traced("y/a", "x/a", "x/allow-from-another-ns")
                .check(TCP80, open.clone())],
        ),
        scenario(
            "should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector",
            vec![step("x/a from namespaces labelled ns=y")
                .policy(np("x", "allow-client-a-via-ns-selector", ingress(POD_A, "{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}")))
                .check(TCP80, open.clone().expect("x", "x/a", false).expect("z", "x/a", false))],
        ),
        scenario(
            "should enforce policy to allow traffic based on NamespaceSelector with MatchLabels using default ns label",
            vec![step("x/a from kubernetes.io/metadata.name=y")
                .policy(np("x", "allow-client-a-via-ns-selector-for-immutable-ns-label", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {}}}]}}", ns_is("y")))))
                .check(TCP80, open.clone().expect("x", "x/a", false).expect("z", "x/a", false))],
        ),
        scenario(
            "should enforce policy based on PodSelector with MatchExpressions",
            vec![step("x/a from pod In [b]")
                .policy(np("x", "x-a-allows-x-b", ingress(POD_A, "{from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]}")))
                .check(TCP80, open.clone().all_ingress("x/a", false).expect("x/b", "x/a", true))],
        ),
        scenario(
            "should enforce policy based on NamespaceSelector with MatchExpressions",
            vec![step("x/a from namespace In [y]")
                .policy(np("x", "allow-ns-y-match-selector", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {{matchExpressions: [{{key: {NS_NAME}, operator: In, values: [y]}}]}}}}]}}"))))
                .check(TCP80, open.clone().expect("x", "x/a", false).expect("z", "x/a", false))],
        ),
        scenario(
            "should enforce policy based on PodSelector or NamespaceSelector",
            vec![step("x/a from (namespace NotIn [x]) or (pod b)")
                .policy(np("x", "allow-ns-y-match-selector", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {}}}, {{podSelector: {POD_B}}}]}}", ns_not_in("x")))))
                .check(TCP80, open.clone().expect("x/c", "x/a", false))],
        ),
        scenario(
            "should enforce policy based on PodSelector and NamespaceSelector",
            vec![step("x/a from pod b in namespace NotIn [x]")
                .policy(np("x", "allow-ns-y-podselector-and-nsselector", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {}, podSelector: {POD_B}}}]}}", ns_not_in("x")))))
                .check(TCP80, open.clone().all_ingress("x/a", false).expect("y/b", "x/a", true).expect("z/b", "x/a", true))],
        ),
        scenario(
            "should enforce policy based on Multiple PodSelectors and NamespaceSelectors",
            vec![step("x/a from pods In [b, c] in namespaces NotIn [x]")
                .policy(np("x", "allow-ns-y-z-pod-b-c", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {}, podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [b, c]}}]}}}}]}}", ns_not_in("x")))))
                .check(TCP80, open.clone().all_ingress("x/a", false)
                    .expect("y/b", "x/a", true).expect("y/c", "x/a", true)
                    .expect("z/b", "x/a", true).expect("z/c", "x/a", true))],
        ),
        scenario(
            "should enforce policy based on any PodSelectors",
            vec![step("x/a from pod b or pod c")
                .policy(np("x", "allow-ns-x-pod-b-c", ingress(POD_A, &format!("{{from: [{{podSelector: {POD_B}}}, {{podSelector: {{matchLabels: {{pod: c}}}}}}]}}"))))
                .check(TCP80, open.clone().all_ingress("x/a", false).expect("x/b", "x/a", true).expect("x/c", "x/a", true))],
        ),
        scenario(
            "should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector (TCP and UDP)",
            vec![step("x/a from y/a")
                .policy(np("x", "allow-ns-y-pod-a-via-namespace-pod-selector", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {}, podSelector: {POD_A}}}]}}", ns_is("y")))))
                .check(TCP80, open.clone().all_ingress("x/a", false).expect("y/a", "x/a", true))
                .check(UDP80, open.clone().all_ingress("x/a", false).expect("y/a", "x/a", true))],
        ),
        scenario(
            "should enforce policy based on Ports",
            vec![step("x/a from namespace y on TCP 81")
                .policy(np("x", "allow-client-a-via-ns-selector", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {}}}], ports: [{{port: 81, protocol: TCP}}]}}", ns_is("y")))))
                .check(TCP81, open.clone().expect("x", "x/a", false).expect("z", "x/a", false))
                .check(TCP80, open.clone().all_ingress("x/a", false))],
        ),
        scenario(
            "UDP: should enforce policy based on Ports; should not allow access by TCP when a policy specifies only UDP",
            vec![step("x/a from namespace y on UDP 80 only")
                .policy(np("x", "allow-ingress-on-udp-80", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {}}}], ports: [{{port: 80, protocol: UDP}}]}}", ns_is("y")))))
                .check(UDP80, open.clone().expect("x", "x/a", false).expect("z", "x/a", false))
                .check(TCP80, open.clone().all_ingress("x/a", false))],
        ),
        scenario(
            "should enforce multiple, stacked policies with overlapping podSelectors",
            vec![
                step("x/a from namespace y on 81")
                    .policy(np("x", "allow-client-a-via-ns-selector", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {}}}], ports: [{{port: 81, protocol: TCP}}]}}", ns_is("y")))))
                    .check(TCP81, open.clone().expect("x", "x/a", false).expect("z", "x/a", false))
                    .check(TCP80, open.clone().all_ingress("x/a", false)),
                step("a second policy adds 80")
                    .policy(np("x", "allow-client-a-via-ns-selector-80", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {}}}], ports: [{{port: 80, protocol: TCP}}]}}", ns_is("y")))))
                    .check(TCP80, open.clone().expect("x", "x/a", false).expect("z", "x/a", false))
                    .check(TCP81, open.clone().expect("x", "x/a", false).expect("z", "x/a", false)),
            ],
        ),
        scenario(
            "should support allow-all policy",
            vec![step("allow all ingress to x")
                .policy(np("x", "allow-all", ingress("{}", "{}")))
                .traced("y/a", "x/b", "x/allow-all")
                .check(TCP80, open.clone())
                .check(TCP81, open.clone())],
        ),
        scenario(
            "should allow ingress access on one named port",
            vec![step("x from anyone on serve-81-tcp")
                .policy(np("x", "allow-all", ingress("{}", "{ports: [{port: serve-81-tcp}]}")))
                .check(TCP81, open.clone())
                .check(TCP80, open.clone().expect("*", "x", false))
                .check(UDP80, open.clone().expect("*", "x", false))],
        ),
        scenario(
            "should allow ingress access from namespace on one named port",
            vec![step("x/a from namespace y on serve-80-tcp")
                .policy(np("x", "allow-client-a-via-ns-selector-80", ingress(POD_A, &format!("{{from: [{{namespaceSelector: {}}}], ports: [{{port: serve-80-tcp, protocol: TCP}}]}}", ns_is("y")))))
                .check(TCP80, open.clone().expect("x", "x/a", false).expect("z", "x/a", false))
                .check(TCP81, open.clone().all_ingress("x/a", false))],
        ),
        scenario(
            "should deny ingress from pods on other namespaces",
            vec![step("x from its own namespace only")
                .policy(np("x", "deny-empty-policy", ingress("{}", "{from: [{podSelector: {}}]}")))
                .check(TCP80, open.clone().expect("y", "x", false).expect("z", "x", false))],
        ),
        scenario(
            "should enforce ingress policy allowing any port traffic to a server on a specific protocol",
            vec![step("x/a on any TCP port")
                .policy(np("x", "allow-ingress-by-proto", ingress(POD_A, "{ports: [{protocol: TCP}]}")))
                .check(TCP80, open.clone())
                .check(TCP81, open.clone())
                .check(UDP80, open.clone().all_ingress("x/a", false))],
        ),
        scenario(
            "should enforce multiple ingress policies with ingress allow-all policy taking precedence",
            vec![
                step("x on port 80 only")
                    .policy(np("x", "allow-ingress-port-80", ingress("{}", "{ports: [{port: 80}]}")))
                    .check(TCP81, open.clone().expect("*", "x", false)),
                step("plus allow-all")
                    .policy(np("x", "allow-ingress", ingress("{}", "{}")))
                    .check(TCP81, open.clone()),
            ],
        ),
        scenario(
            "should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP",
            vec![step("deny x, allow SCTP 81 to x/a")
                .policy(deny_x())
                .policy(np("x", "allow-only-sctp-ingress-on-port-81", ingress(POD_A, "{ports: [{port: 81, protocol: SCTP}]}")))
                .check(TCP81, open.clone().expect("*", "x", false))],
        ),
        scenario(
            "should properly isolate pods that are selected by a policy allowing SCTP, even if the plugin doesn't support SCTP",
            vec![step("x/a on SCTP 80 only")
                .policy(np("x", "allow-only-sctp-ingress-on-port-80", ingress(POD_A, "{ports: [{port: 80, protocol: SCTP}]}")))
                .check(TCP81, open.clone().all_ingress("x/a", false))
                .check(TCP80, open.clone().all_ingress("x/a", false))],
        ),
    ]
}

#[rustfmt::skip]
fn egress_and_update_scenarios(model: &NetpolModel, open: Reachability) -> Vec<Scenario> {
    let ip = |p: &str| model.pod(p).ip();
    let relabelled = |p: &str, k: &str, v: &str| model.pod(p).clone().label(k, v).manifest();
    let to_y_a = || {
        np(
            "x",
            "allow-to-ns-y-pod-a",
            egress(
                POD_A,
                &format!(
                    "{{to: [{{namespaceSelector: {}, podSelector: {POD_A}}}]}}",
                    ns_is("y")
                ),
            ),
        )
    };
    let from_x_a = format!(
        "{{from: [{{namespaceSelector: {}, podSelector: {POD_A}}}]}}",
        ns_is("x")
    );
    let except_b = format!(
        "{{to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{}/32]}}}}]}}",
        ip("x/b")
    );
    vec![
        scenario(
            "should support a 'default-deny-all' policy; should stop enforcing policies after they are deleted",
            vec![step("deny all in and out of x")
                .policy(np("x", "deny-all", "{podSelector: {}, policyTypes: [Ingress, Egress]}"))
                .check(TCP80, open.clone().expect("*", "x", false).expect("x", "*", false))],
        ),
        scenario(
            // API defaulting: no policyTypes means Ingress, plus Egress only if egress has rules.
            "egress: [] without policyTypes isolates ingress only (API server defaulting)",
            vec![step("empty egress list in x")
                .policy(np("x", "empty-egress", "{podSelector: {}, egress: []}"))
                .check(TCP80, open.clone().expect("*", "x", false))],
        ),
        scenario(
            "should allow egress access on one named port",
            vec![step("x to serve-80-tcp only")
                .policy(np("x", "allow-egress", egress("{}", "{ports: [{port: serve-80-tcp}]}")))
                .check(TCP80, open.clone())
                .check(TCP81, open.clone().expect("x", "*", false))
                .check(UDP80, open.clone().expect("x", "*", false))],
        ),
        scenario(
            "should enforce updated policy",
            vec![
                step("allow all ingress to x")
                    .policy(np("x", "allow-all-mutate-to-deny-all", ingress("{}", "{}")))
                    .traced("y/a", "x/a", "x/allow-all-mutate-to-deny-all")
                    .check(TCP81, open.clone()),
                step("the same policy updated to deny all")
                    .policy(np("x", "allow-all-mutate-to-deny-all", ingress("{}", "")))
                    .check(TCP81, open.clone().expect("*", "x", false)),
            ],
        ),
        scenario(
            "should allow ingress access from updated namespace",
            vec![
                step("x/a from namespaces labelled ns2=updated")
                    .policy(np("x", "allow-client-a-via-ns-selector", ingress(POD_A, "{from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]}")))
                    .check(TCP80, open.clone().all_ingress("x/a", false)),
                step("namespace y relabelled ns2=updated")
                    .object(namespace_manifest("y", &[("ns2", "updated")]))
                    .check(TCP80, open.clone().all_ingress("x/a", false).expect("y", "x/a", true)),
            ],
        ),
        scenario(
            "should allow ingress access from updated pod",
            vec![
                step("x/a from pod b with pod2=updated")
                    .policy(np("x", "allow-client-a-via-pod-selector", ingress(POD_A, "{from: [{podSelector: {matchLabels: {pod: b, pod2: updated}}}]}")))
                    .check(TCP80, open.clone().all_ingress("x/a", false)),
                step("x/b relabelled pod2=updated")
                    .object(relabelled("x/b", "pod2", "updated"))
                    .check(TCP80, open.clone().all_ingress("x/a", false).expect("x/b", "x/a", true)),
            ],
        ),
        scenario(
            "should deny ingress access to updated pod",
            vec![
                step("deny ingress to target=isolated (no pod yet)")
                    .policy(np("x", "deny-ingress-via-label-selector", ingress("{matchLabels: {target: isolated}}", "")))
                    .check(TCP80, open.clone()),
                step("x/a relabelled target=isolated")
                    .object(relabelled("x/a", "target", "isolated"))
                    .check(TCP80, open.clone().all_ingress("x/a", false)),
            ],
        ),
        scenario(
            "should deny egress from pods based on PodSelector",
            vec![step("deny egress from x/a")
                .policy(np("x", "deny-egress-pod-a", egress(POD_A, "")))
                .check(TCP80, open.clone().all_egress("x/a", false))],
        ),
        scenario(
            "should deny egress from all pods in a namespace",
            vec![step("deny egress from x")
                .policy(np("x", "deny-egress-ns-x", egress("{}", "")))
                .check(TCP80, open.clone().expect("x", "*", false))],
        ),
        scenario(
            "should work with Ingress, Egress specified together",
            vec![step("x/a: ingress from pod b, egress to port 80")
                .policy(np("x", "allow-client-a-via-pod-selector", format!(
                    "{{podSelector: {POD_A}, policyTypes: [Egress, Ingress], \
                     ingress: [{{from: [{{podSelector: {POD_B}}}]}}], egress: [{{ports: [{{port: 80}}]}}]}}")))
                .check(TCP80, open.clone().all_ingress("x/a", false).expect("x/b", "x/a", true))
                .check(TCP81, open.clone().all_ingress("x/a", false).all_egress("x/a", false).expect("x/b", "x/a", true))],
        ),
        scenario(
            "should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)",
            vec![step("x/a to y/a only; y/a and y/b from x/a")
                .policy(to_y_a())
                .policy(np("y", "allow-from-xa-on-ya-match-selector", ingress(POD_A, &from_x_a)))
                .policy(np("y", "allow-from-xa-on-yb-match-selector", ingress(POD_B, &from_x_a)))
                .check(TCP80, open.clone()
                    .all_egress("x/a", false)
                    .all_ingress("y/a", false)
                    .all_ingress("y/b", false)
                    .expect("x/a", "y/a", true))],
        ),
        scenario(
            "should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
            vec![step("x/a to y/a only")
                .policy(to_y_a())
                .check(TCP80, open.clone().all_egress("x/a", false).expect("x/a", "y/a", true))],
        ),
        scenario(
            "should enforce multiple egress policies with egress allow-all policy taking precedence",
            vec![
                step("x to port 80 only")
                    .policy(np("x", "allow-egress-port-80", egress("{}", "{ports: [{port: 80}]}")))
                    .check(TCP81, open.clone().expect("x", "*", false)),
                step("plus allow-all")
                    .policy(np("x", "allow-egress", egress("{}", "{}")))
                    .check(TCP81, open.clone()),
            ],
        ),
        scenario(
            "should allow egress access to server in CIDR block",
            vec![step("x/a to y/b/32 and z/b/32")
                .policy(np("x", "allow-client-a-via-cidr-egress-rule", egress(POD_A, &format!(
                    "{{to: [{{ipBlock: {{cidr: {}/32}}}}, {{ipBlock: {{cidr: {}/32}}}}]}}", ip("y/b"), ip("z/b")))))
                .check(TCP80, open.clone().all_egress("x/a", false).expect("x/a", "y/b", true).expect("x/a", "z/b", true))],
        ),
        scenario(
            "should enforce except clause while egress access to server in CIDR block",
            vec![step("x/a to 10.244.0.0/16 except x/b and z/c")
                .policy(np("x", "allow-client-a-via-cidr-egress-rule", egress(POD_A, &format!(
                    "{{to: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{}/32, {}/32]}}}}]}}", ip("x/b"), ip("z/c")))))
                .check(TCP80, open.clone().expect("x/a", "x/b", false).expect("x/a", "z/c", false))],
        ),
        scenario(
            "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed",
            vec![
                step("x/a to 10.244.0.0/16 except x/b")
                    .policy(np("x", "allow-client-a-via-cidr-egress-rule", egress(POD_A, &except_b)))
                    .check(TCP80, open.clone().expect("x/a", "x/b", false)),
                step("a second policy allows x/b/32")
                    .policy(np("x", "allow-client-a-to-x-b", egress(POD_A, &format!("{{to: [{{ipBlock: {{cidr: {}/32}}}}]}}", ip("x/b")))))
                    .check(TCP80, open.clone()),
                step("the first policy updated to x/b/32 only")
                    .policy(np("x", "allow-client-a-via-cidr-egress-rule", egress(POD_A, &format!("{{to: [{{ipBlock: {{cidr: {}/32}}}}]}}", ip("x/b")))))
                    .check(TCP80, open.clone().all_egress("x/a", false).expect("x/a", "x/b", true)),
            ],
        ),
        scenario(
            "should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector",
            vec![
                step("allow all egress from x/a")
                    .policy(np("x", "allow-egress-for-target", egress(POD_A, "{}")))
                    .traced("x/a", "y/a", "x/allow-egress-for-target")
                    .check(TCP80, open.clone()),
                step("deny ingress to x/a")
                    .policy(np("x", "deny-ingress-via-label-selector", ingress(POD_A, "")))
                    .check(TCP80, open.clone().all_ingress("x/a", false)),
            ],
        ),
        scenario(
            "should enforce policy based on NamespaceSelector with MatchExpressions using default ns label",
            vec![step("x/a to namespaces NotIn [y]")
                .policy(np("x", "allow-ns-y-match-selector-for-immutable-ns-label", egress(POD_A, &format!("{{to: [{{namespaceSelector: {}}}]}}", ns_not_in("y")))))
                .check(TCP80, open.clone().expect("x/a", "y", false))],
        ),
        scenario(
            "endPort (NetworkPolicyEndPort): port ranges in ingress and egress",
            vec![step("x/a from TCP 81-82; x/b to TCP 79-80")
                .policy(np("x", "allow-ingress-81-82", ingress(POD_A, "{ports: [{port: 81, endPort: 82}]}")))
                .policy(np("x", "allow-egress-79-80", egress(POD_B, "{ports: [{port: 79, endPort: 80, protocol: TCP}]}")))
                .check(TCP80, open.clone().all_ingress("x/a", false))
                .check(TCP81, open.clone().all_egress("x/b", false))
                .check(UDP80, open.clone().all_ingress("x/a", false).all_egress("x/b", false))],
        ),
    ]
}
