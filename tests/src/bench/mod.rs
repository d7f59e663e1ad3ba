//! `wiremesh-lab bench`: single-stream TCP throughput pod-to-pod across two nodes, for the
//! unencrypted underlay, wiremesh, wireguard-go and boringtun-cli, all in one invocation, printed
//! as ratios to the baselines measured in that same run (absolute numbers vary with the machine
//! and its load; ratios within one run are what compare). Each mode gets a fresh lab, so no mode
//! inherits another's routes, conntrack entries or processes.
//!
//! Numbers mean something only for release builds:
//! `cargo build --release --bins && WIREMESH_BIN=target/release/wiremesh target/release/wiremesh-lab bench`.
//! boringtun-cli comes from PATH, or `target/bench-tools/bin`, or is `cargo install`ed there; if
//! that fails the run says so plainly and measures the rest. A mode that fails to run makes the
//! command exit non-zero.

pub mod l7;
pub mod policy;
mod procstat;
mod stock;

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use wiremesh_lab::{agent_binary, pod_ip, require_root, require_tools, Host, Lab};

use crate::cli::{check_interrupted, section};
use procstat::{sample, ProcSample};
use stock::{Stock, StockNodes};

const READY: Duration = Duration::from_secs(20);
const REACH: Duration = Duration::from_secs(15);
/// Beyond `-t`: connection setup, the final report, and the server's exit.
const IPERF_GRACE: Duration = Duration::from_secs(15);

/// One mode's result.
#[derive(Debug)]
struct Measured {
    gbps: f64,
    retransmits: u64,
    /// The data-path process of each node (none for the plain underlay).
    data_path: Vec<DataPath>,
}

#[derive(Debug)]
struct DataPath {
    node: u8,
    pid: u32,
    comm: String,
    /// After the run.
    after: ProcSample,
    /// CPU time spent during the iperf3 run.
    cpu_during: Duration,
}

pub fn run(seconds: u64) -> anyhow::Result<()> {
    require_root()?;
    require_tools(&["iperf3", "wg", "wireguard-go"])?;
    ensure!((1..=600).contains(&seconds), "--seconds must be 1..=600");
    let duration = Duration::from_secs(seconds);
    let agent = agent_binary()?;
    print_header(&agent);

    let mut rows: Vec<(&str, anyhow::Result<Measured>)> = Vec::new();
    section("plain: pods routed over the underlay veths, no tunnel");
    rows.push(("plain", report(plain(duration))));
    check_interrupted()?;
    section(&format!(
        "wiremesh: agents and `wiremesh datapath` ({})",
        agent.display()
    ));
    rows.push(("wiremesh", report(wiremesh(duration))));
    check_interrupted()?;
    section("wireguard-go (Debian), configured with wg set");
    rows.push((
        "wireguard-go",
        report(stock_mode(&Stock::WireguardGo, duration)),
    ));
    check_interrupted()?;
    section("boringtun-cli, configured with wg set");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tools = manifest
        .parent()
        .unwrap_or(manifest)
        .join("target/bench-tools");
    // A tool that cannot be had is reported, not failed: the bench is not a test.
    let mut unavailable = None;
    let boringtun = match stock::boringtun_cli(&tools) {
        Ok(bin) => report(stock_mode(&Stock::BoringtunCli(bin), duration)),
        Err(e) => {
            println!("boringtun-cli NOT MEASURED: it could not be installed: {e:#}");
            unavailable = Some("boringtun-cli");
            Err(e.context("boringtun-cli could not be installed"))
        }
    };
    rows.push(("boringtun-cli", boringtun));

    section("Results");
    print_table(&rows);
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.1.is_err() && Some(r.0) != unavailable)
        .map(|r| r.0)
        .collect();
    if !failed.is_empty() {
        bail!("not measured: {}", failed.join(", "));
    }
    Ok(())
}

fn report(result: anyhow::Result<Measured>) -> anyhow::Result<Measured> {
    match &result {
        Ok(m) => println!("{:.3} Gbit/s, {} retransmits", m.gbps, m.retransmits),
        Err(e) => println!("FAILED: {e:#}"),
    }
    result
}

fn plain(duration: Duration) -> anyhow::Result<Measured> {
    let lab = Lab::new(2, 1).context("building the lab")?;
    lab.node(1).bypass_tunnel(2)?;
    lab.node(2).bypass_tunnel(1)?;
    measure(&lab, &[], duration)
}

fn wiremesh(duration: Duration) -> anyhow::Result<Measured> {
    let lab = Lab::new(2, 1).context("building the lab")?;
    let result = (|| {
        lab.start_agents(READY).context("starting agents")?;
        for node in lab.node_ids() {
            lab.node(node).agent().wait_peer_count(1, READY)?;
        }
        lab.host(Host::Pod(1, 1))
            .wait_reachable(pod_ip(2, 1), REACH)?;
        let pids = lab
            .node_ids()
            .map(|n| {
                lab.node(n)
                    .datapath()
                    .pid()
                    .map(|pid| (n, pid))
                    .with_context(|| format!("node-{n} has no data-path process"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        measure(&lab, &pids, duration)
    })();
    if result.is_err() {
        lab.dump_logs();
    }
    result
}

fn stock_mode(stock: &Stock, duration: Duration) -> anyhow::Result<Measured> {
    let lab = Lab::new(2, 1).context("building the lab")?;
    // Declared after the lab, so it is dropped (its processes stopped) before the namespaces go.
    let nodes = StockNodes::start(&lab, stock)?;
    let pids: Vec<(u8, u32)> = lab
        .node_ids()
        .filter_map(|n| Some((n, nodes.pid(n)?)))
        .collect();
    let result = measure(&lab, &pids, duration);
    nodes.stop();
    result
}

/// One bounded iperf3 run from pod 1 of node 1 to pod 1 of node 2, sampling the given
/// data-path processes around it.
fn measure(lab: &Lab, pids: &[(u8, u32)], duration: Duration) -> anyhow::Result<Measured> {
    let (from, to) = (Host::Pod(1, 1), Host::Pod(2, 1));
    lab.host(from).wait_reachable(to.ip(), REACH)?;
    let before: Vec<Option<ProcSample>> = pids.iter().map(|&(_, pid)| sample(pid)).collect();
    let (mut server, port) = lab.host(to).iperf_server()?;
    let client = lab.host(from).iperf_client(to.ip(), port, duration, "0")?;
    let iperf = client.finish(IPERF_GRACE)?;
    let _ = server.wait_timeout(IPERF_GRACE);
    let mut data_path = Vec::new();
    for (&(node, pid), before) in pids.iter().zip(before) {
        let (Some(before), Some(after)) = (before, sample(pid)) else {
            bail!("node-{node}'s data path (pid {pid}) vanished during the run");
        };
        data_path.push(DataPath {
            node,
            pid,
            comm: procstat::comm(pid),
            after,
            cpu_during: after.cpu.saturating_sub(before.cpu),
        });
    }
    if let Some(e) = iperf.error {
        bail!("iperf3: {e}");
    }
    let secs: f64 = iperf.intervals.iter().map(|i| i.1).sum();
    let secs = if secs > 0.0 {
        secs
    } else {
        duration.as_secs_f64()
    };
    ensure!(iperf.bytes_received > 0, "iperf3 moved no data");
    Ok(Measured {
        gbps: iperf.bytes_received as f64 * 8.0 / secs / 1e9,
        retransmits: iperf.retransmits,
        data_path,
    })
}

fn print_header(agent: &Path) {
    let bin = std::env::var("WIREMESH_BIN")
        .map_or_else(|_| String::new(), |b| format!("WIREMESH_BIN={b} "));
    let args: Vec<String> = std::env::args().collect();
    println!("command: {bin}{}", args.join(" "));
    println!("wiremesh binary: {}", agent.display());
    if agent.components().any(|c| c.as_os_str() == "debug") {
        println!(
            "WARNING: this looks like a debug build; for meaningful numbers run\n  \
             cargo build --release --bins && WIREMESH_BIN=target/release/wiremesh target/release/wiremesh-lab bench"
        );
    }
    println!("single TCP stream, iperf3 -t <seconds> -b 0, pod-1 of node-1 -> pod-1 of node-2");
}

fn print_table(rows: &[(&str, anyhow::Result<Measured>)]) {
    let gbps = |name: &str| {
        rows.iter()
            .find(|r| r.0 == name)
            .and_then(|r| r.1.as_ref().ok())
            .map(|m| m.gbps)
    };
    let ratio = |x: f64, base: Option<f64>| {
        base.filter(|b| *b > 0.0)
            .map_or_else(|| "—".to_owned(), |b| format!("{:.3}", x / b))
    };
    let (plain, wggo) = (gbps("plain"), gbps("wireguard-go"));
    println!("| mode | Gbit/s | ratio to plain | ratio to wireguard-go | data-path RSS (node-1 / node-2) | data-path CPU during run (node-1 / node-2) | retransmits |");
    println!("|---|---:|---:|---:|---|---|---:|");
    for (name, result) in rows {
        let Ok(m) = result else {
            println!("| {name} | not measured | — | — | — | — | — |");
            continue;
        };
        let rss = per_node(&m.data_path, |d| {
            format!("{:.1} MiB", d.after.rss_kib as f64 / 1024.0)
        });
        let cpu = per_node(&m.data_path, |d| {
            format!("{:.1} s", d.cpu_during.as_secs_f64())
        });
        println!(
            "| {name} | {:.3} | {} | {} | {rss} | {cpu} | {} |",
            m.gbps,
            ratio(m.gbps, plain),
            ratio(m.gbps, wggo),
            m.retransmits
        );
    }
    println!();
    for (name, result) in rows {
        match result {
            Ok(m) => {
                for d in &m.data_path {
                    println!(
                        "{name}: node-{} data path pid {} ({}): VmRSS {} KiB, VmHWM {} KiB, CPU total {:.2} s",
                        d.node,
                        d.pid,
                        d.comm,
                        d.after.rss_kib,
                        d.after.hwm_kib,
                        d.after.cpu.as_secs_f64()
                    );
                }
            }
            Err(e) => println!("{name}: NOT MEASURED: {e:#}"),
        }
    }
}

fn per_node(data_path: &[DataPath], f: impl Fn(&DataPath) -> String) -> String {
    if data_path.is_empty() {
        return "— (kernel)".into();
    }
    data_path.iter().map(f).collect::<Vec<_>>().join(" / ")
}
