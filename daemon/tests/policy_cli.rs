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

const CNP_HTTP: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n\
metadata: {name: get-only, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {app: a}}\n  \
ingress: [{toPorts: [{ports: [{port: \"80\", protocol: TCP}], rules: {http: [{method: GET}]}}]}]\n";

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\n";

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
    std::fs::write(dir.path().join("istio.yaml"), ISTIO_DENY).unwrap();
    std::fs::write(dir.path().join("service.yaml"), SERVICE).unwrap();
    // Control: without the policy the trace answers, and a Service is skipped with a note.
    let (code, out, err) = trace(dir.path(), &["cluster.yaml", "service.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("verdict: allowed"), "{out}");
    assert!(
        err.contains("note: service.yaml: skipped v1 Service x/s"),
        "{err}"
    );
    // The DENY policy is not enforced: the trace must not answer as if it did not exist.
    let (code, out, err) = trace(dir.path(), &["cluster.yaml", "istio.yaml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "no verdict: {out}");
    assert!(
        err.contains("istio.yaml: AuthorizationPolicy x/deny-b: kind: security.istio.io/v1 AuthorizationPolicy is a policy kind wiremesh does not enforce"),
        "{err}"
    );
    // apply refuses it before it talks to any agent (the run directory does not exist).
    let run_dir = dir.path().join("no-agent");
    let run_dir = run_dir.to_str().unwrap();
    let (code, _, err) = wiremesh(
        &["apply", "-f", "istio.yaml", "--run-dir", run_dir],
        dir.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("AuthorizationPolicy x/deny-b: kind:") && !err.contains("wiremesh.sock"),
        "{err}"
    );
    // Control: a file of non-policies gets past the check and fails only at the agent.
    let (code, _, err) = wiremesh(
        &["apply", "-f", "service.yaml", "--run-dir", run_dir],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("skipped"), "{err}");
}

#[test]
fn http_rules_are_refused_by_apply_and_trace() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), CLUSTER).unwrap();
    std::fs::write(dir.path().join("cnp.yaml"), CNP_HTTP).unwrap();
    let want = "cnp.yaml: CiliumNetworkPolicy x/get-only: spec.ingress[0].toPorts[0].rules.http: ";
    let (code, out, err) = trace(dir.path(), &["cluster.yaml", "cnp.yaml"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(want), "{err}");
    let run_dir = dir.path().join("no-agent");
    let (code, _, err) = wiremesh(
        &[
            "apply",
            "-f",
            "cnp.yaml",
            "--run-dir",
            run_dir.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(want), "{err}");
    // Control: the same policy without its HTTP rules is its L4 rule, and the trace says so.
    let l4 = CNP_HTTP.replace(", rules: {http: [{method: GET}]}", "");
    std::fs::write(dir.path().join("cnp.yaml"), l4).unwrap();
    let (code, out, err) = trace(dir.path(), &["cluster.yaml", "cnp.yaml"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("verdict: allowed"), "{out}");
}
