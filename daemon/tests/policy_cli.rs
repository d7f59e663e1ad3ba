#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

//! `wiremesh apply -f` and the offline `wiremesh policy trace -f` refuse what wiremesh cannot
//! enforce as written, naming the file, the resource and the field, before anything reaches an
//! agent; objects that are not policies are still skipped with a note. Runs the real binary.

use std::path::Path;
use std::process::Command;

fn wiremesh(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wiremesh"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running the wiremesh binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CLUSTER: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\n\
spec: {nodeName: n1, containers: [{name: c, image: i}]}\nstatus: {podIPs: [{ip: 10.244.1.10}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}}\n\
spec: {nodeName: n2, containers: [{name: c, image: i}]}\nstatus: {podIPs: [{ip: 10.244.2.10}]}\n";

const ISTIO_DENY: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
metadata: {name: deny-b, namespace: x}\nspec: {selector: {matchLabels: {app: a}}, action: DENY, \
rules: [{from: [{source: {namespaces: [x]}}]}]}\n";

const ISTIO_CUSTOM: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
metadata: {name: ext-authz, namespace: x}\nspec: {selector: {matchLabels: {app: a}}, action: CUSTOM, \
provider: {name: opa}, rules: [{to: [{operation: {paths: [/admin]}}]}]}\n";

const CNP_HTTP: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
metadata: {name: get-only, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  \
ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{method: GET}]}}]}]\n";

const CONFIG_MAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: s, namespace: x}\n";

fn trace(dir: &Path, files: &[&str]) -> (i32, String, String) {
    let mut args = vec!["policy", "trace"];
    for f in files {
        args.extend(["-f", f]);
    }
    args.extend(["--from", "x/b", "--to", "x/a", "--port", "80"]);
    wiremesh(&args, dir)
}

#[test]
fn an_unenforced_policy_kind_is_refused_by_apply_and_trace() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).unwrap();
    std::fs::write(dir.path().join("custom.yaml"), ISTIO_CUSTOM).unwrap();
    std::fs::write(dir.path().join("configmap.yaml"), CONFIG_MAP).unwrap();
    // Control: without the policy the trace answers, and a ConfigMap is skipped with a note.
    let (code, out, err) = trace(dir.path(), &["cluster.yaml", "configmap.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("verdict: allowed"), "{out}");
    assert!(
        err.contains("note: configmap.yaml: skipped v1 ConfigMap x/s"),
        "{err}"
    );
    // A CUSTOM policy (an external authorizer) is not enforced: the trace must not answer as
    // if it did not exist.
    let (code, out, err) = trace(dir.path(), &["cluster.yaml", "custom.yaml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "no verdict: {out}");
    assert!(
        err.contains("custom.yaml: AuthorizationPolicy x/ext-authz: spec.action: valid Istio, but not supported"),
        "{err}"
    );
    // apply refuses it before it talks to any agent (the run directory does not exist).
    let run_dir = dir.path().join("no-agent");
    let run_dir = run_dir.to_str().unwrap();
    let (code, _, err) = wiremesh(
        &["apply", "-f", "custom.yaml", "--run-dir", run_dir],
        dir.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("AuthorizationPolicy x/ext-authz: spec.action:")
            && !err.contains("wiremesh.sock"),
        "{err}"
    );
    // Control: a file of non-policies gets past the check and fails only at the agent.
    let (code, _, err) = wiremesh(
        &["apply", "-f", "configmap.yaml", "--run-dir", run_dir],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("skipped"), "{err}");
}

#[test]
fn an_l4_only_authorization_policy_is_traced_as_enforced_by_the_programs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).unwrap();
    std::fs::write(dir.path().join("istio.yaml"), ISTIO_DENY).unwrap();
    // The DENY rule matches x/b's namespace: the connection is refused, by the eBPF programs.
    let (code, out, err) = trace(dir.path(), &["cluster.yaml", "istio.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("verdict: denied"), "{out}");
    assert!(out.contains("enforced by the eBPF programs"), "{out}");
    assert!(
        out.contains("denied by DENY policy AuthorizationPolicy x/deny-b spec.rules[0]"),
        "{out}"
    );
}

#[test]
fn http_rules_are_traced_request_by_request() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).unwrap();
    std::fs::write(dir.path().join("cnp.yaml"), CNP_HTTP).unwrap();
    let http_trace = |method: &str| {
        wiremesh(
            &[
                "policy",
                "trace",
                "-f",
                "cluster.yaml",
                "-f",
                "cnp.yaml",
                "--from",
                "x/b",
                "--to",
                "x/a",
                "--port",
                "80",
                "--http-method",
                method,
                "--http-path",
                "/",
            ],
            dir.path(),
        )
    };
    let (code, out, err) = http_trace("GET");
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("verdict: allowed"), "{out}");
    let (code, out, err) = http_trace("DELETE");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("verdict: denied"),
        "the HTTP rule admits GET only: {out}"
    );
}
