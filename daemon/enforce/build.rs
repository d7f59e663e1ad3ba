//! Compiles the policy enforcement tc programs (`bpf/policy.bpf.c`) to eBPF bytecode with clang.
//! The object is embedded in the binary (`enforce::loader`). There is no fallback: without
//! clang the build fails, because an empty object would be a data path that enforces nothing.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PACKAGES: &str = "clang llvm libbpf-dev (Debian: apt-get install clang llvm libbpf-dev)";

fn main() {
    let source = "bpf/policy.bpf.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-changed=bpf/policy.h");
    println!("cargo:rerun-if-env-changed=CLANG");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("policy.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    // <linux/*.h> include <asm/types.h>, which Debian keeps under the multiarch directory.
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        other => panic!("no known multiarch include directory for target arch {other:?}"),
    };

    let output = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(&object)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) => panic!(
            "cannot run {clang:?} to build the eBPF policy programs ({e}); install {PACKAGES}"
        ),
    };
    if !output.status.success() {
        panic!(
            "{clang} failed to compile {source} ({}); it needs {PACKAGES}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    match std::fs::metadata(&object) {
        Ok(m) if m.len() > 0 => {}
        _ => panic!(
            "{clang} produced no object at {}; install {PACKAGES}",
            object.display()
        ),
    }
}
