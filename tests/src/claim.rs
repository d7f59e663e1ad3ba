//! Claiming a unique lab prefix and working directory, and reclaiming what a dead lab left behind.
//!
//! A lab owns `/tmp/wiremesh-lab/<prefix>/` (created exclusively, with the owner's PID inside)
//! and every namespace named `<prefix>-*`. A prefix whose owner PID no longer runs is stale: its
//! namespaces, their processes and its directory are removed before the prefix is reused. Only
//! namespaces named with that exact prefix are touched, so other labs and other users of `ip netns`
//! are never affected.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{LabError, Result};
use crate::exec::{output, run};

/// Parent of every lab's working directory.
pub const LAB_ROOT: &str = "/tmp/wiremesh-lab";
const OWNER_FILE: &str = "owner.pid";
const IP_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug)]
pub(crate) struct Claim {
    pub prefix: String,
    pub dir: PathBuf,
}

/// Claims a fresh prefix (`wml<pid%10000><n>`) and its directory.
pub(crate) fn claim() -> Result<Claim> {
    let root = Path::new(LAB_ROOT);
    fs::create_dir_all(root).map_err(|e| LabError::io(root, e))?;
    let lock_path = root.join(".lock");
    let lock_file = File::create(&lock_path).map_err(|e| LabError::io(&lock_path, e))?;
    // Serialises claims, so two processes never both decide the same stale prefix is theirs.
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| LabError::io(&lock_path, errno.into()))?;
    let pid = std::process::id();
    for _ in 0..1000 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("wml{}{n}", pid % 10_000);
        let dir = root.join(&prefix);
        if dir.exists() {
            if owner_alive(&dir) {
                continue;
            }
            reclaim(&prefix, &dir)?;
        }
        fs::create_dir(&dir).map_err(|e| LabError::io(&dir, e))?;
        let owner = dir.join(OWNER_FILE);
        fs::write(&owner, pid.to_string()).map_err(|e| LabError::io(&owner, e))?;
        // No live lab holds this prefix (we hold its directory now), so any namespace
        // named with it is debris from a lab that died without cleaning up.
        delete_namespaces(&prefix)?;
        return Ok(Claim { prefix, dir });
    }
    Err(LabError::Check(format!(
        "no free lab prefix under {LAB_ROOT} after 1000 tries"
    )))
}

fn owner_alive(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join(OWNER_FILE)) else {
        return false;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return false;
    };
    // Signal 0 probes existence; EPERM still means the process exists.
    !matches!(
        kill(Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

fn reclaim(prefix: &str, dir: &Path) -> Result<()> {
    delete_namespaces(prefix)?;
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LabError::io(dir, e)),
    }
}

/// Names of the namespaces that belong to `prefix` (`<prefix>-...`).
pub(crate) fn namespaces_of(prefix: &str) -> Result<Vec<String>> {
    let listing = run(Command::new("ip").args(["netns", "list"]), IP_TIMEOUT)?;
    Ok(parse_netns_list(&listing, prefix))
}

fn parse_netns_list(listing: &str, prefix: &str) -> Vec<String> {
    let owned = format!("{prefix}-");
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(&owned))
        .map(str::to_owned)
        .collect()
}

/// Kills the processes left inside a dead lab's namespaces (its agents) and deletes them.
fn delete_namespaces(prefix: &str) -> Result<()> {
    for ns in namespaces_of(prefix)? {
        let pids = output(
            Command::new("ip").args(["netns", "pids", &ns]),
            None,
            IP_TIMEOUT,
        )?;
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        run(
            Command::new("ip").args(["netns", "delete", &ns]),
            IP_TIMEOUT,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_listing_is_filtered_by_exact_prefix() {
        let listing = "wml12-n1p1 (id: 3)\nwml12-n1 (id: 2)\nwml123-n1 (id: 4)\nother\nwml12-sw\n";
        assert_eq!(
            parse_netns_list(listing, "wml12"),
            ["wml12-n1p1", "wml12-n1", "wml12-sw"]
        );
    }
}
