#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

//! Bad input at start-up: the agent exits non-zero and says what is wrong and where, before it
//! touches the network. Runs the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn agent(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wiremesh"))
        .args(["agent", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .output()
        .expect("running the wiremesh binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("agent.yaml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn unknown_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "nodeName: n1\nnodeIPs: [198.18.0.1]\nlistenPrt: 51871\n",
    );
    let (code, err) = agent(&cfg);
    assert_ne!(code, 0);
    assert!(
        err.contains("listenPrt") && err.contains("agent.yaml"),
        "{err}"
    );
}

#[test]
fn missing_node_name_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "nodeIPs: [198.18.0.1]\npodCIDRs: [10.244.1.0/24]\n",
    );
    let (code, err) = agent(&cfg);
    assert_ne!(code, 0);
    assert!(err.contains("nodeName: required"), "{err}");
}

#[test]
fn bad_cidr_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "nodeName: n1\nnodeIPs: [198.18.0.1]\npodCIDRs: [10.244.1.0/24, 10.244.300.0/24]\n",
    );
    let (code, err) = agent(&cfg);
    assert_ne!(code, 0);
    assert!(
        err.contains("podCIDRs[1]") && err.contains("10.244.300.0/24"),
        "{err}"
    );
}

#[test]
fn strict_mode_without_the_cluster_pool_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "nodeName: n1\nnodeIPs: [198.18.0.1]\npodCIDRs: [10.244.1.0/24]\n",
    );
    let (code, err) = agent(&cfg);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("clusterPodCIDRs: required") && err.contains("strictMode: false"),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let (code, err) = agent(Path::new("/nonexistent/wiremesh.yaml"));
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/wiremesh.yaml"), "{err}");
}

#[test]
fn world_readable_key_file_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let key = state.join("wiremesh_wg0.key");
    std::fs::write(&key, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "nodeName: n1\nnodeIPs: [198.18.0.1]\nclusterPodCIDRs: [10.244.0.0/16]\nstateDir: {}\nrunDir: {}\nstore: {{ kind: dir, dir: {{ path: {} }} }}\n",
            state.display(),
            dir.path().join("run").display(),
            dir.path().join("store").display()
        ),
    );
    let (code, err) = agent(&cfg);
    assert_ne!(code, 0);
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    // Refused before anything else happened: no record was published.
    assert!(
        !dir.path().join("store").exists(),
        "the agent went on after refusing its key"
    );
}

#[test]
fn key_file_owned_by_another_user_is_refused_with_the_fix() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (to give the key file to another user)"
    );
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let key = state.join("wiremesh_wg0.key");
    std::fs::write(&key, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(&key, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "nodeName: n1\nnodeIPs: [198.18.0.1]\nclusterPodCIDRs: [10.244.0.0/16]\nstateDir: {}\nrunDir: {}\nstore: {{ kind: dir, dir: {{ path: {} }} }}\n",
            state.display(),
            dir.path().join("run").display(),
            dir.path().join("store").display()
        ),
    );
    let (code, err) = agent(&cfg);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&key.display().to_string()), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(err.contains("chown 0 "), "{err}");
    // The secret itself is never printed, not even when refusing the file.
    assert!(!err.contains("dwdtCnMYpX08FsFy"), "{err}");
    assert!(
        !dir.path().join("store").exists(),
        "the agent went on after refusing its key"
    );
}
