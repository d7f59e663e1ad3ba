//! The Debian root file system a lab VM boots: the one `scripts/systemd/boot-test.sh` caches at
//! [`VM_ROOTFS`], made with the same debootstrap line (so `scripts/test.sh` builds one, not two),
//! plus the few tools the tests run inside the VM (ping, nc), installed into that cache once.
//!
//! It never writes the cache while a VM runs on it: every VM boots a throwaway overlay of it,
//! and preparing happens before the overlay is mounted, once per process.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::exec::{require_tools, run};

/// The cached root (boot-test.sh's default ROOTFS).
pub const VM_ROOTFS: &str = "/var/tmp/wiremesh-vm";
/// boot-test.sh's debootstrap line: variant, packages, suite and mirror.
const DEBOOTSTRAP: [&str; 5] = [
    "--variant=minbase",
    "--include=systemd,systemd-sysv,dbus,iproute2,nftables",
    "bookworm",
    "", // the target directory, filled in
    "http://deb.debian.org/debian",
];
/// What the tests run inside the VM, by the file that proves it is installed (relative to the
/// root) and its Debian package. nftables: strict mode's guard (boot-test.sh adds it the same
/// way to a root cached before it was in the line above).
const PACKAGES: [(&str, &str); 3] = [
    ("usr/sbin/nft", "nftables"),
    ("usr/bin/ping", "iputils-ping"),
    ("usr/bin/nc.openbsd", "netcat-openbsd"),
];
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(1200);
const APT_TIMEOUT: Duration = Duration::from_secs(600);

/// One preparation at a time in this process (tests of one binary run on threads).
static PREPARE: Mutex<()> = Mutex::new(());

/// Makes sure [`VM_ROOTFS`] holds a bootable Debian with systemd and the tools the tests use:
/// debootstrap on first use, apt-get inside it for a missing tool. Fails naming the missing
/// host tool (debootstrap, systemd-nspawn), never skips.
pub fn prepare_rootfs() -> Result<&'static Path> {
    let _one = PREPARE.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(VM_ROOTFS);
    if !root.join("lib/systemd/systemd").is_file() {
        require_tools(&["debootstrap"])?;
        let tmp = format!("{VM_ROOTFS}.tmp");
        eprintln!("wiremesh-lab: creating {VM_ROOTFS} with debootstrap (once)");
        let mut args = DEBOOTSTRAP.map(str::to_owned);
        args[3].clone_from(&tmp);
        run(Command::new("debootstrap").args(&args), DEBOOTSTRAP_TIMEOUT)?;
        std::fs::rename(&tmp, root).map_err(|e| LabError::io(&tmp, e))?;
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(file, _)| !root.join(file).exists())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        eprintln!("wiremesh-lab: installing {missing:?} into {VM_ROOTFS} (once)");
        install(root, &missing)?;
    }
    Ok(root)
}

/// `apt-get install` inside the cached root (chrooted), with the host's resolver.
fn install(root: &Path, packages: &[&str]) -> Result<()> {
    require_tools(&["chroot"])?;
    let resolv = root.join("etc/resolv.conf");
    // A dangling link (systemd-resolved's) would make the copy write through it.
    let _ = std::fs::remove_file(&resolv);
    std::fs::copy("/etc/resolv.conf", &resolv).map_err(|e| LabError::io(&resolv, e))?;
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("chroot");
        cmd.arg(root)
            .args(["/usr/bin/env", "DEBIAN_FRONTEND=noninteractive", "apt-get"])
            .args(["-o", "DPkg::Lock::Timeout=300", "-qq"])
            .args(args);
        run(&mut cmd, APT_TIMEOUT)
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(packages);
    if apt(&install).is_err() {
        // The root's package lists may be older than the mirror's packages.
        apt(&["update"])?;
        apt(&install)?;
    }
    Ok(())
}
