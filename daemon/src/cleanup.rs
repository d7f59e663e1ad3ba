//! `wiremesh cleanup`: what uninstalling leaves behind on a node, removed — after the agent has
//! stopped (the DaemonSet deleted, or `systemctl disable --now wiremesh`). Cilium's
//! `cilium-dbg cleanup` in spirit: the data path and the L7 proxy stopped (by their PID files),
//! the WireGuard interface deleted (its routes go with it), our tc filters removed from every
//! interface (other filters, a CNI's, stay), the pinned maps and event ring unpinned (the
//! programs go with the last filter), the strict-mode and L7 nftables tables and the L7 policy
//! routing (rule and table) removed. With `--purge`, the state (key ring, saved peers and
//! policy) and the run directory go too.
//!
//! Every step runs even if an earlier one failed, and each failure is reported with what it
//! was removing: a half-cleaned node is said to be one. Removing strict mode means pod traffic
//! may leave in clear from here on — that is what uninstalling is; the command says so.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use netlink_packet_route::route::RouteAttribute;
use netlink_packet_route::rule::RuleAttribute;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::config::Config;

/// How long a stopped process gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What was removed and what could not be.
#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<String>,
    pub failed: Vec<String>,
}

impl Report {
    fn step(&mut self, what: &str, done: Result<Option<String>>) {
        match done {
            Ok(Some(removed)) => self.removed.push(removed),
            Ok(None) => {}
            Err(e) => self.failed.push(format!("{what}: {e:#}")),
        }
    }
}

/// Removes everything `config`'s agent installs on this node (see the module doc).
pub async fn run(config: &Config, purge: bool) -> Result<Report> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(conn);
    let mut report = Report::default();
    for (name, file) in [("L7 proxy", "proxy.pid"), ("data path", "datapath.pid")] {
        report.step(
            &format!("stopping the {name}"),
            stop(name, &config.run_dir.join(file)),
        );
    }
    let deleted = delete_link(&handle, &config.interface).await;
    report.step(&format!("deleting {}", config.interface), deleted);
    let detached = detach_filters(&handle).await;
    report.step("removing the tc filters", detached);
    report.step(
        "unpinning the policy maps",
        remove_dir(&config.policy.bpf_pin_dir),
    );
    let nft = tokio::task::spawn_blocking(remove_tables)
        .await
        .map_err(|e| anyhow!("{e}"))
        .and_then(|r| r);
    report.step("removing the nftables tables", nft);
    let routing = remove_l7_routing(&handle).await;
    report.step("removing the L7 policy routing", routing);
    if purge {
        report.step("purging the state", empty_dir(&config.state_dir));
        report.step("purging the run directory", empty_dir(&config.run_dir));
    }
    Ok(report)
}

/// SIGTERM to the PID in `pid_file` if it is a `wiremesh` process, SIGKILL after a grace.
fn stop(name: &str, pid_file: &Path) -> Result<Option<String>> {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return Ok(None);
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{}: not a PID: {text:?}", pid_file.display()))?;
    // A stale PID file may name someone else's process now (or, from another PID namespace —
    // a pod's —, this very process): only ever stop our own binary, never ourselves.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "wiremesh" || u32::try_from(pid).ok() == Some(std::process::id()) {
        return Ok(None);
    }
    let pid = Pid::from_raw(pid);
    kill(pid, Signal::SIGTERM).with_context(|| format!("kill -TERM {pid}"))?;
    let deadline = Instant::now() + STOP_GRACE;
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if kill(pid, None).is_ok() {
        kill(pid, Signal::SIGKILL).with_context(|| format!("kill -KILL {pid}"))?;
    }
    Ok(Some(format!("stopped the {name} (pid {pid})")))
}

async fn delete_link(handle: &rtnetlink::Handle, name: &str) -> Result<Option<String>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let index = match links.try_next().await {
        Ok(Some(link)) => link.header.index,
        Ok(None) => return Ok(None),
        // ENODEV: no such interface (the data path took it with it).
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    handle.link().del(index).execute().await?;
    Ok(Some(format!("deleted interface {name} and its routes")))
}

async fn detach_filters(handle: &rtnetlink::Handle) -> Result<Option<String>> {
    let mut names = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await? {
        names.extend(link.attributes.into_iter().find_map(|a| match a {
            netlink_packet_route::link::LinkAttribute::IfName(n) => Some(n),
            _ => None,
        }));
    }
    let mut from = Vec::new();
    for name in names {
        if wiremesh_enforce::detach_ours(&name)? {
            from.push(name);
        }
    }
    Ok((!from.is_empty()).then(|| format!("removed the policy programs from {}", from.join(", "))))
}

fn remove_dir(dir: &Path) -> Result<Option<String>> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(Some(format!("removed {}", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow!("{}: {e}", dir.display())),
    }
}

/// Removes what `dir` holds, keeping `dir` itself: in a pod or the lab it is a mount point
/// (a hostPath volume), which cannot be removed from inside.
fn empty_dir(dir: &Path) -> Result<Option<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("{}: {e}", dir.display())),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry.map_err(|e| anyhow!("{}: {e}", dir.display()))?.path();
        let gone = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        gone.map_err(|e| anyhow!("{}: {e}", path.display()))?;
        removed += 1;
    }
    Ok((removed > 0).then(|| format!("emptied {} ({removed} entries)", dir.display())))
}

/// Strict mode's `inet wiremesh` and the L7 redirect's `inet wiremesh_l7`, those that are
/// there. Blocking: runs `nft`.
fn remove_tables() -> Result<Option<String>> {
    use crate::l7::redirect;
    use crate::strict::ruleset;
    let mut removed = Vec::new();
    if table_exists(ruleset::TABLE)? {
        crate::strict::remove()?;
        removed.push(format!(
            "inet {} (strict mode: pod traffic is no longer held to the tunnel)",
            ruleset::TABLE
        ));
    }
    if table_exists(redirect::TABLE)? {
        nftables::helper::apply_ruleset(&redirect::remove())
            .map_err(|e| anyhow!("removing table inet {}: {e}", redirect::TABLE))?;
        removed.push(format!("inet {}", redirect::TABLE));
    }
    Ok((!removed.is_empty())
        .then(|| format!("removed the nftables tables {}", removed.join(" and "))))
}

fn table_exists(name: &str) -> Result<bool> {
    use nftables::helper::{get_current_ruleset_raw, NftablesError, DEFAULT_NFT};
    match get_current_ruleset_raw(DEFAULT_NFT, ["list", "table", "inet", name]) {
        Ok(_) => Ok(true),
        // nft says "No such file or directory" for a table that does not exist.
        Err(NftablesError::NftFailed { stderr, .. }) if stderr.contains("No such file") => {
            Ok(false)
        }
        Err(e) => Err(anyhow!("listing table inet {name}: {e}")),
    }
}

/// The rule `fwmark 0xd00/0xf00 lookup 2611` and table 2611's routes, v4 and v6.
async fn remove_l7_routing(handle: &rtnetlink::Handle) -> Result<Option<String>> {
    let table = crate::l7::ROUTING_TABLE;
    let mut removed = 0;
    for version in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
        let rules: Vec<_> = handle.rule().get(version).execute().try_collect().await?;
        for rule in rules {
            let ours = u32::from(rule.header.table) == table
                || rule.attributes.contains(&RuleAttribute::Table(table));
            if ours {
                handle.rule().del(rule).execute().await?;
                removed += 1;
            }
        }
    }
    for v6 in [false, true] {
        let filter = if v6 {
            rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let routes: Vec<_> = handle.route().get(filter).execute().try_collect().await?;
        for route in routes {
            let ours = u32::from(route.header.table) == table
                || route.attributes.contains(&RouteAttribute::Table(table));
            if ours {
                handle.route().del(route).execute().await?;
                removed += 1;
            }
        }
    }
    Ok((removed > 0).then(|| {
        format!("removed the L7 policy routing (table {table}: {removed} rules and routes)")
    }))
}
