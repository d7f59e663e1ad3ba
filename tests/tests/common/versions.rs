//! The two versions an upgrade test runs: v1, the workspace binary, and v2, the same source
//! built with another `WIREMESH_VERSION`.

use std::path::{Path, PathBuf};
use std::process::Command;

const V2_SUFFIX: &str = "-upgrade-v2";

/// What `bin --version` reports.
pub fn version_of(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("running {} --version: {e}", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("{} --version printed {text:?}", bin.display()))
        .to_string()
}

/// The v2 binary and its version: `$WIREMESH_V2_BIN` if set (it must report a version other
/// than v1's; scripts/test.sh builds it), else built once with `cargo build -p wiremesh --bin
/// wiremesh` into `<workspace>/target/upgrade-v2` (a target dir of its own, kept between runs
/// so that only the first run pays for a full build).
pub fn v2_binary(v1_version: &str) -> (PathBuf, String) {
    if let Some(bin) = std::env::var_os("WIREMESH_V2_BIN") {
        let bin = PathBuf::from(bin);
        let v = version_of(&bin);
        assert_ne!(v, v1_version, "$WIREMESH_V2_BIN reports v1's version {v}");
        return (bin, v);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    let target = workspace.join("target/upgrade-v2");
    let version = format!("{v1_version}{V2_SUFFIX}");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--locked", "-p", "wiremesh", "--bin", "wiremesh"])
        .env("CARGO_TARGET_DIR", &target)
        .env("WIREMESH_VERSION", &version)
        .status()
        .expect("running cargo build for the v2 binary");
    assert!(status.success(), "building the v2 binary failed: {status}");
    let bin = target.join("debug/wiremesh");
    assert_eq!(version_of(&bin), version, "the v2 binary's version");
    (bin, version)
}
