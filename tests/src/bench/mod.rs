//! `wiremesh-lab bench`: pod-to-pod traffic across two nodes for the unencrypted underlay,
//! wiremesh, wireguard-go, boringtun-cli (2 threads and its default) and gotatun, all in one
//! invocation: request/response latency, one and four TCP streams, UDP at a fixed offered rate,
//! and each data path's CPU per GB and peak RSS, as medians of several runs and as ratios to the
//! baselines measured in that same run (absolute numbers vary with the machine and its load;
//! ratios within one run are what compare). Each mode gets a fresh lab on the same addressing,
//! so no mode inherits another's routes, conntrack entries or processes.
//!
//! Numbers mean something only for release builds:
//! `cargo build --release --bins && WIREMESH_BIN=target/release/wiremesh target/release/wiremesh-lab bench`.
//! boringtun-cli and gotatun come from PATH, or `target/bench-tools/bin`, or are `cargo
//! install`ed there; if that fails the run says so plainly and measures the rest. Anything not
//! measured makes the command exit non-zero at the end.

pub mod l7;
mod mode;
mod parse;
pub mod policy;
mod procstat;
mod report;
mod stock;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use wiremesh_lab::{agent_binary, require_root, require_tools};

use crate::cli::{check_interrupted, section, stop_requested};
use mode::{Mode, Running};
use report::ModeResult;
use stock::Stock;
use workload::{Metric, Workload};

/// The thread count of the boringtun-cli mode that is not its default.
const BORINGTUN_THREADS: u8 = 2;
/// Every mode, in the order they run.
pub const MODES: [&str; 6] = [
    "plain",
    "wiremesh",
    "wireguard-go",
    "boringtun-cli-2t",
    "boringtun-cli",
    "gotatun",
];

/// What `wiremesh-lab bench` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// Length of each run.
    pub seconds: u64,
    /// Runs per workload (the median is reported).
    pub runs: usize,
    /// Mode keys to measure (a subset of [`MODES`]); empty: all.
    pub modes: Vec<String>,
}

pub fn run(options: &Options) -> anyhow::Result<()> {
    require_root()?;
    require_tools(&["iperf3", "sockperf", "ss", "wg", "wireguard-go"])?;
    ensure!(
        (1..=600).contains(&options.seconds),
        "--seconds must be 1..=600"
    );
    ensure!((1..=20).contains(&options.runs), "--runs must be 1..=20");
    let selected = selected_modes(&options.modes)?;
    let agent = agent_binary()?;
    let command = command_line();
    let started = Instant::now();
    print_header(&command, &agent, options, selected.len());

    let modes = build_modes(&selected, &tools_dir());
    let mut results = Vec::new();
    for mode in &modes {
        check_interrupted()?;
        section(&format!("{}: {}", mode.key(), mode.describe()));
        if let Mode::Stock(stock) = mode {
            println!("version: {}", mode::version(&stock.binary()));
        }
        results.push(measure_mode(mode, options));
    }
    check_interrupted()?;

    section("Results");
    report::print(&results, &command, options.runs);
    println!(
        "\nwhole run: {:.1} min",
        started.elapsed().as_secs_f64() / 60.0
    );
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.failures.is_empty())
        .map(|r| r.key)
        .collect();
    if !failed.is_empty() {
        bail!("not fully measured: {}", failed.join(", "));
    }
    Ok(())
}

fn selected_modes(asked: &[String]) -> anyhow::Result<Vec<&'static str>> {
    if let Some(unknown) = asked.iter().find(|m| !MODES.contains(&m.as_str())) {
        bail!(
            "unknown mode {unknown:?}; the modes are {}",
            MODES.join(", ")
        );
    }
    Ok(MODES
        .into_iter()
        .filter(|m| asked.is_empty() || asked.iter().any(|a| a == m))
        .collect())
}

/// The modes to run; the crates.io programs are installed first (only those needed), and one
/// that cannot be had becomes [`Mode::Unavailable`].
fn build_modes(selected: &[&'static str], tools: &Path) -> Vec<Mode> {
    let mut installed: Vec<(&str, Result<PathBuf, String>)> = Vec::new();
    let mut tool = |package: &'static str, bin: &'static str| {
        if let Some(found) = installed.iter().find(|t| t.0 == package) {
            return found.1.clone();
        }
        let got = stock::cargo_tool(tools, package, bin).map_err(|e| format!("{e:#}"));
        if let Err(e) = &got {
            println!("{bin} NOT AVAILABLE: {e}");
        }
        installed.push((package, got.clone()));
        got
    };
    selected
        .iter()
        .map(|&key| {
            let stock = match key {
                "plain" => return Mode::Plain,
                "wiremesh" => return Mode::Wiremesh,
                "wireguard-go" => return Mode::Stock(Stock::WireguardGo),
                "boringtun-cli-2t" => {
                    tool("boringtun-cli", "boringtun-cli").map(|bin| Stock::BoringtunCli {
                        bin,
                        threads: Some(BORINGTUN_THREADS),
                    })
                }
                "boringtun-cli" => tool("boringtun-cli", "boringtun-cli")
                    .map(|bin| Stock::BoringtunCli { bin, threads: None }),
                _ => tool("gotatun-cli", "gotatun").map(Stock::Gotatun),
            };
            stock.map_or_else(|why| Mode::Unavailable { key, why }, Mode::Stock)
        })
        .collect()
}

/// Every workload `runs` times in a fresh lab running `mode`. Failures are recorded, not
/// returned: the other workloads and modes are still measured.
fn measure_mode(mode: &Mode, options: &Options) -> ModeResult {
    let mut result = ModeResult {
        key: mode.key(),
        values: Vec::new(),
        failures: Vec::new(),
        data_path: !matches!(mode, Mode::Plain),
    };
    let running = match Running::start(mode) {
        Ok(running) => running,
        Err(e) => {
            println!("NOT MEASURED: {e:#}");
            result.failures.push(format!("{e:#}"));
            return result;
        }
    };
    println!("data paths: {}", running.data_paths());
    let duration = Duration::from_secs(options.seconds);
    for workload in Workload::ALL {
        match repeat(&running, workload, options.runs, duration) {
            Ok(medians) => result.values.extend(medians),
            Err(e) => {
                println!("{}: FAILED: {e:#}", workload.name());
                result.failures.push(format!("{}: {e:#}", workload.name()));
            }
        }
    }
    match running.peak_rss_mib() {
        Ok(Some(mib)) => result.values.push((Metric::PeakRssMib, mib)),
        Ok(None) => {}
        Err(e) => result.failures.push(format!("{e:#}")),
    }
    if !result.failures.is_empty() {
        running.lab.dump_logs();
    }
    running.stop();
    result
}

/// `runs` runs of `workload`; the median of each of its metrics.
fn repeat(
    running: &Running,
    workload: Workload,
    runs: usize,
    duration: Duration,
) -> anyhow::Result<Vec<(Metric, f64)>> {
    let mut samples: Vec<Vec<(Metric, f64)>> = Vec::new();
    for i in 1..=runs {
        if stop_requested() {
            bail!("interrupted");
        }
        let values = workload.run_once(running, duration)?;
        println!(
            "{} run {i}/{runs}: {}",
            workload.name(),
            Workload::describe(&values)
        );
        samples.push(values);
    }
    let metrics: Vec<Metric> = samples
        .first()
        .map(|s| s.iter().map(|v| v.0).collect())
        .unwrap_or_default();
    Ok(metrics
        .into_iter()
        .filter_map(|m| {
            let values: Vec<f64> = samples
                .iter()
                .flat_map(|s| s.iter().filter(|v| v.0 == m).map(|v| v.1))
                .collect();
            Some((m, parse::median(&values)?))
        })
        .collect())
}

/// Where the crates.io programs are installed: `<workspace>/target/bench-tools`.
fn tools_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("target/bench-tools")
}

fn command_line() -> String {
    let bin = std::env::var("WIREMESH_BIN")
        .map_or_else(|_| String::new(), |b| format!("WIREMESH_BIN={b} "));
    let args: Vec<String> = std::env::args().collect();
    format!("{bin}{}", args.join(" "))
}

fn print_header(command: &str, agent: &Path, options: &Options, modes: usize) {
    println!("command: {command}");
    println!("wiremesh binary: {}", agent.display());
    if agent.components().any(|c| c.as_os_str() == "debug") {
        println!(
            "WARNING: this looks like a debug build; for meaningful numbers run\n  \
             cargo build --release --bins && WIREMESH_BIN=target/release/wiremesh target/release/wiremesh-lab bench"
        );
    }
    // Per run: the duration plus about a second of setup; per mode: about five for the lab.
    let per_mode = Workload::ALL.len() as u64 * options.runs as u64 * (options.seconds + 1) + 5;
    println!(
        "pod-1 of node-1 -> pod-1 of node-2; {} workloads x {} runs x {} s per mode, {modes} modes: \
         about {:.0} min",
        Workload::ALL.len(),
        options.runs,
        options.seconds,
        (per_mode * modes as u64) as f64 / 60.0
    );
}
