//! The reference implementations on every node of a lab instead of the agent: wireguard-go,
//! boringtun-cli or gotatun, each configured with `wg set` on the agent's addressing
//! (`wiremesh_wg0`, UDP 51871, a route per remote pod CIDR), so only the data path differs from
//! a wiremesh run. The crates.io ones are found on PATH or installed with `cargo install`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use wiremesh_lab::{
    endpoint, pod_cidr, run, BgProcess, Host, KeyPair, Lab, WG_IFACE, WG_MTU, WG_PORT,
};

const START: Duration = Duration::from_secs(10);
const WG_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A userspace WireGuard that serves the UAPI socket in `/run/wireguard`.
#[derive(Debug, Clone)]
pub enum Stock {
    WireguardGo,
    /// boringtun-cli with `--threads` if given, else its own default.
    BoringtunCli {
        bin: PathBuf,
        threads: Option<u8>,
    },
    /// Mullvad's boringtun fork (crates.io `gotatun-cli`).
    Gotatun(PathBuf),
}

impl Stock {
    fn command(&self, lab: &Lab, node: u8) -> std::process::Command {
        match self {
            Self::WireguardGo => {
                let mut cmd = lab.node(node).cmd("wireguard-go");
                cmd.args(["-f", WG_IFACE])
                    .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
                cmd
            }
            Self::BoringtunCli { bin, threads } => boringtun_like(lab, node, bin, *threads),
            Self::Gotatun(bin) => boringtun_like(lab, node, bin, None),
        }
    }

    /// The program, for log file names and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::WireguardGo => "wireguard-go",
            Self::BoringtunCli { .. } => "boringtun-cli",
            Self::Gotatun(_) => "gotatun",
        }
    }

    /// The program's binary, to ask its version.
    pub fn binary(&self) -> PathBuf {
        match self {
            Self::WireguardGo => PathBuf::from("wireguard-go"),
            Self::BoringtunCli { bin, .. } | Self::Gotatun(bin) => bin.clone(),
        }
    }
}

/// The stock processes of a lab, one per node; dropping it stops them (before the lab's
/// namespaces go, as long as it is declared after the `Lab`).
#[derive(Debug)]
pub struct StockNodes {
    procs: Vec<BgProcess>,
}

impl StockNodes {
    /// Starts `stock` on every node, then peers every pair and routes the pod CIDRs into it.
    pub fn start(lab: &Lab, stock: &Stock) -> anyhow::Result<Self> {
        let mut procs = Vec::new();
        let mut keys = Vec::new();
        for node in lab.node_ids() {
            keys.push(lab.node(node).generate_key()?);
            let log = lab.node(node).dir().join(format!("{}.log", stock.name()));
            let proc = BgProcess::spawn(
                format!("{} on node-{node}", stock.name()),
                &mut stock.command(lab, node),
                &log,
            )?;
            procs.push(proc);
        }
        let mut nodes = Self { procs };
        for (node, own) in lab.node_ids().zip(&keys) {
            nodes.wait_socket(lab, node)?;
            configure(lab, node, own, &keys_of_others(lab, node, &keys))
                .with_context(|| format!("configuring {} on node-{node}", stock.name()))?;
        }
        Ok(nodes)
    }

    /// The PID of node `node`'s process.
    pub fn pid(&self, node: u8) -> Option<u32> {
        self.procs
            .get(usize::from(node).checked_sub(1)?)
            .map(BgProcess::pid)
    }

    /// SIGTERM to all, then SIGKILL whatever is left after a grace period.
    pub fn stop(mut self) {
        for p in &mut self.procs {
            p.stop(Signal::SIGTERM, STOP_GRACE);
        }
    }

    fn wait_socket(&mut self, lab: &Lab, node: u8) -> anyhow::Result<()> {
        let socket = lab
            .node(node)
            .dir()
            .join("wireguard")
            .join(format!("{WG_IFACE}.sock"));
        let deadline = Instant::now() + START;
        let proc = &mut self.procs[usize::from(node) - 1];
        while !socket.exists() {
            if let Some(status) = proc.exited() {
                bail!("{} exited ({status}): {}", proc.name(), proc.log());
            }
            if Instant::now() >= deadline {
                bail!("{} made no UAPI socket within {START:?}", proc.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// boringtun-cli and its fork gotatun share their command line.
fn boringtun_like(lab: &Lab, node: u8, bin: &Path, threads: Option<u8>) -> std::process::Command {
    let mut cmd = lab.node(node).cmd(bin);
    // The default thread count is the program's own, not one inherited from our environment.
    cmd.env_remove("WG_THREADS");
    if let Some(threads) = threads {
        cmd.args(["--threads", &threads.to_string()]);
    }
    // Its log file would otherwise be one shared by every node, in the host's /tmp.
    let name = bin.file_name().unwrap_or(bin.as_os_str()).to_string_lossy();
    cmd.arg("--log")
        .arg(lab.node(node).dir().join(format!("{name}.out")));
    cmd.args(["--foreground", "--disable-drop-privileges", WG_IFACE]);
    cmd
}

fn keys_of_others(lab: &Lab, node: u8, keys: &[KeyPair]) -> Vec<(u8, String)> {
    lab.node_ids()
        .zip(keys)
        .filter(|&(other, _)| other != node)
        .map(|(other, k)| (other, k.public_key.clone()))
        .collect()
}

fn configure(lab: &Lab, node: u8, keys: &KeyPair, peers: &[(u8, String)]) -> anyhow::Result<()> {
    let mut wg = lab.node(node).cmd("wg");
    wg.args(["set", WG_IFACE, "private-key"])
        .arg(&keys.private_key_file)
        .args(["listen-port", &WG_PORT.to_string()]);
    for (other, key) in peers {
        wg.args(["peer", key, "endpoint", &endpoint(*other)])
            .args(["allowed-ips", &pod_cidr(*other)]);
    }
    run(&mut wg, WG_TIMEOUT)?;
    let host = Host::Node(node);
    lab.host(host)
        .ip(&["link", "set", WG_IFACE, "mtu", &WG_MTU.to_string(), "up"])?;
    for (other, _) in peers {
        lab.host(host)
            .ip(&["route", "add", &pod_cidr(*other), "dev", WG_IFACE])?;
    }
    Ok(())
}

/// A binary from a crates.io package (`boringtun-cli`, `gotatun-cli`): on PATH, in
/// `<tools_dir>/bin`, or installed there with `cargo install <package> --locked`. The error says
/// why it could not be had.
pub fn cargo_tool(tools_dir: &Path, package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let installed = tools_dir.join("bin").join(bin);
    if let Some(found) = wiremesh_lab::which(bin) {
        return Ok(found);
    }
    if installed.is_file() {
        return Ok(installed);
    }
    println!(
        "installing {package} into {} (once; a few minutes)",
        tools_dir.display()
    );
    let mut cargo = std::process::Command::new("cargo");
    cargo
        .args(["install", package, "--locked", "--root"])
        .arg(tools_dir);
    // Only the end of cargo's output: the reason, not the whole build log.
    run(&mut cargo, Duration::from_secs(20 * 60)).map_err(|e| {
        anyhow::anyhow!(
            "`cargo install {package} --locked --root {}` failed: {}",
            tools_dir.display(),
            wiremesh_lab::tail(&e.to_string(), 6)
        )
    })?;
    if !installed.is_file() {
        bail!(
            "cargo install {package} succeeded but {} is missing",
            installed.display()
        );
    }
    Ok(installed)
}
