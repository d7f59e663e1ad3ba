//! What carries pod-to-pod traffic in one bench mode, and a fresh two-node lab running it: the
//! plain underlay, wiremesh's agents, or a stock userspace WireGuard configured with `wg set`.
//! Every mode gets the same addressing, so only the data path differs.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use wiremesh_lab::{pod_ip, Host, Lab};

use super::procstat;
use super::stock::{Stock, StockNodes};

const READY: Duration = Duration::from_secs(20);
const REACH: Duration = Duration::from_secs(15);

/// One way of carrying the traffic.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Pods routed over the underlay veths, no tunnel (the kernel forwards; no data-path process).
    Plain,
    /// wiremesh's agents and their `wiremesh datapath` processes.
    Wiremesh,
    Stock(Stock),
    /// A mode whose program could not be had; measuring it fails with `why`.
    Unavailable {
        key: &'static str,
        why: String,
    },
}

impl Mode {
    /// The name on the command line (`--modes`) and in the tables.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Wiremesh => "wiremesh",
            Self::Stock(Stock::WireguardGo) => "wireguard-go",
            Self::Stock(Stock::BoringtunCli {
                threads: Some(_), ..
            }) => "boringtun-cli-2t",
            Self::Stock(Stock::BoringtunCli { threads: None, .. }) => "boringtun-cli",
            Self::Stock(Stock::Gotatun(_)) => "gotatun",
            Self::Unavailable { key, .. } => key,
        }
    }

    /// What runs, for the section header.
    pub fn describe(&self) -> String {
        match self {
            Self::Plain => "pods routed over the underlay veths, no tunnel".into(),
            Self::Wiremesh => "wiremesh agents and `wiremesh datapath`".into(),
            Self::Stock(Stock::BoringtunCli {
                bin,
                threads: Some(t),
            }) => format!("{} --threads {t}, configured with wg set", bin.display()),
            Self::Stock(stock) => format!(
                "{} (default options), configured with wg set",
                stock.binary().display()
            ),
            Self::Unavailable { .. } => "not available".into(),
        }
    }
}

/// A lab running one mode. Dropping it stops the stock processes before the namespaces go.
#[derive(Debug)]
pub struct Running {
    // Declared before `lab`, so it is dropped (its processes stopped) first.
    stock: Option<StockNodes>,
    pub lab: Lab,
    /// The data-path process of each node, as `(node, pid)`; empty for the plain underlay.
    pub pids: Vec<(u8, u32)>,
}

impl Running {
    /// Builds a fresh two-node lab (one pod each) and starts `mode` in it, until pod 1 of node
    /// 1 reaches pod 1 of node 2.
    pub fn start(mode: &Mode) -> anyhow::Result<Self> {
        let lab = Lab::new(2, 1).context("building the lab")?;
        let (stock, pids) = match mode {
            Mode::Plain => {
                lab.node(1).bypass_tunnel(2)?;
                lab.node(2).bypass_tunnel(1)?;
                (None, Vec::new())
            }
            Mode::Wiremesh => (None, start_wiremesh(&lab)?),
            Mode::Stock(stock) => {
                let nodes = StockNodes::start(&lab, stock)?;
                let pids = lab
                    .node_ids()
                    .filter_map(|n| Some((n, nodes.pid(n)?)))
                    .collect();
                (Some(nodes), pids)
            }
            Mode::Unavailable { why, .. } => bail!("not available: {why}"),
        };
        lab.host(Host::Pod(1, 1))
            .wait_reachable(pod_ip(2, 1), REACH)?;
        Ok(Self { stock, lab, pids })
    }

    /// The largest peak resident set (`VmHWM`) of the nodes' data paths, in MiB; `None` for
    /// the plain underlay. Fails if a data path has gone.
    pub fn peak_rss_mib(&self) -> anyhow::Result<Option<f64>> {
        let mut peak = None;
        for &(node, pid) in &self.pids {
            let s = procstat::sample(pid)
                .with_context(|| format!("node-{node}'s data path (pid {pid}) has gone"))?;
            let mib = s.hwm_kib as f64 / 1024.0;
            peak = Some(peak.map_or(mib, |p: f64| p.max(mib)));
        }
        Ok(peak)
    }

    /// Which processes are measured, e.g. `node-1 pid 42 (wireguard-go)`.
    pub fn data_paths(&self) -> String {
        if self.pids.is_empty() {
            return "none (the kernel forwards)".into();
        }
        self.pids
            .iter()
            .map(|&(node, pid)| format!("node-{node} pid {pid} ({})", procstat::comm(pid)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Stops the stock processes, then tears the lab down.
    pub fn stop(mut self) {
        if let Some(nodes) = self.stock.take() {
            nodes.stop();
        }
    }
}

fn start_wiremesh(lab: &Lab) -> anyhow::Result<Vec<(u8, u32)>> {
    let started = (|| {
        lab.start_agents(READY).context("starting agents")?;
        for node in lab.node_ids() {
            lab.node(node).agent().wait_peer_count(1, READY)?;
        }
        lab.host(Host::Pod(1, 1))
            .wait_reachable(pod_ip(2, 1), REACH)?;
        lab.node_ids()
            .map(|n| {
                lab.node(n)
                    .datapath()
                    .pid()
                    .map(|pid| (n, pid))
                    .with_context(|| format!("node-{n} has no data-path process"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })();
    if started.is_err() {
        lab.dump_logs();
    }
    started
}

/// `<program> --version`'s first line, to name what was measured.
pub fn version(program: &Path) -> String {
    let mut cmd = std::process::Command::new(program);
    cmd.arg("--version");
    wiremesh_lab::output(&mut cmd, None, Duration::from_secs(5)).map_or_else(
        |e| format!("? ({e})"),
        |out| {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines().next().unwrap_or("?").trim().to_owned()
        },
    )
}
