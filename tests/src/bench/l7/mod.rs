//! `wiremesh-lab bench-l7`: what the L7 filter costs an HTTP/1.1 keep-alive workload. A client
//! pod on node 1 sends requests to an HTTP server pod on node 2, across the tunnel, with no
//! policy, with an L4 CiliumNetworkPolicy, and with the same policy carrying N HTTP rules (the
//! requests match the last one), plus the same traffic through nginx as a reverse proxy in the
//! server pod with no policy; all in one lab and one invocation, printed as ratios to the L4
//! policy and to nginx.
//!
//! Every mode is checked to be in force before it is measured. Any error of allowed traffic (a
//! status other than 200, a failed connection or request) fails the run, after the table.
//! Every load run is bounded in time and count; traffic stays between the lab's pods.

mod nginx;
mod objects;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use wiremesh_lab::{agent_binary, output, require_root, require_tools, Host, Lab};

use crate::cli::http_load::{LoadReport, MAX_REQUESTS, MAX_SECONDS};
use crate::cli::{check_interrupted, section};
use nginx::Nginx;
use objects::{CLIENT, DENIED_PATH, NGINX_PORT, OTHER, SERVER, SERVER_PORT};

const READY: Duration = Duration::from_secs(20);
const REACH: Duration = Duration::from_secs(15);
/// How long a policy change may take to be in force (1,000 HTTP rules on a busy machine).
const SETTLE: Duration = Duration::from_secs(90);
/// One check request; a dropped connection shows as no answer within this long.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The command line of `bench-l7`.
#[derive(Debug, Clone)]
pub struct Options {
    pub seconds: u64,
    pub connections: usize,
    pub warmup: Duration,
    /// Cap on measured requests per run.
    pub requests: u64,
    pub repeats: usize,
    /// HTTP rule counts of the L7 modes.
    pub rules: Vec<usize>,
}

/// One measured mode.
#[derive(Debug, Clone, PartialEq)]
enum Mode {
    NoPolicy,
    Nginx,
    L4,
    L7(usize),
}

impl Mode {
    fn label(&self) -> String {
        match self {
            Mode::NoPolicy => "(a) no policy".into(),
            Mode::L4 => "(b) L4 policy".into(),
            Mode::L7(n) => format!("(c) L7, {n} HTTP rules"),
            Mode::Nginx => "(d) nginx, no policy".into(),
        }
    }

    fn port(&self) -> u16 {
        match self {
            Mode::Nginx => NGINX_PORT,
            _ => SERVER_PORT,
        }
    }

    fn path(&self) -> String {
        match self {
            Mode::L7(n) => objects::request_path(*n),
            _ => objects::request_path(0),
        }
    }
}

/// A mode's runs; the summary is the run with the median requests/s.
struct Row {
    mode: Mode,
    runs: Vec<LoadReport>,
}

impl Row {
    fn median(&self) -> &LoadReport {
        let mut by_rps: Vec<&LoadReport> = self.runs.iter().collect();
        by_rps.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        by_rps[by_rps.len() / 2]
    }

    fn errors(&self) -> u64 {
        self.runs.iter().map(|r| r.errors).sum()
    }
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    require_root()?;
    require_tools(&["nginx", "curl", "ss"])?;
    ensure!(
        (1..=MAX_SECONDS).contains(&opts.seconds),
        "--seconds must be 1..={MAX_SECONDS}"
    );
    ensure!(
        (1..=MAX_REQUESTS).contains(&opts.requests),
        "--requests must be 1..={MAX_REQUESTS}"
    );
    ensure!((1..=9).contains(&opts.repeats), "--repeats must be 1..=9");
    ensure!(
        !opts.rules.is_empty() && opts.rules.iter().all(|&n| (1..=10_000).contains(&n)),
        "--rules: each count 1..=10000"
    );
    let agent = agent_binary()?;
    let lab_bin = std::env::current_exe().context("finding this binary")?;
    print_header(&agent, &lab_bin, opts);

    section("Lab: 2 nodes, agents, bench/client on node-1, bench/server on node-2");
    let lab = Lab::new(2, 2).context("building the lab")?;
    let mut rows = Vec::new();
    let result = in_lab(&lab, &lab_bin, opts, &mut rows);
    if result.is_err() {
        lab.dump_logs();
    }
    section("Results");
    print_table(&rows, opts);
    result?;
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.errors() > 0)
        .map(|r| {
            let first = r.runs.iter().flat_map(|x| &x.first_errors).next();
            format!(
                "{}: {} errors (first: {})",
                r.mode.label(),
                r.errors(),
                first.map_or("?", String::as_str)
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!("allowed traffic failed: {}", failed.join("; "));
    }
    Ok(())
}

fn in_lab(lab: &Lab, lab_bin: &Path, opts: &Options, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    lab.start_agents(READY).context("starting agents")?;
    for node in lab.node_ids() {
        lab.node(node).agent().wait_peer_count(1, READY)?;
    }
    lab.host(CLIENT).wait_reachable(SERVER.ip(), REACH)?;
    let _server = lab
        .http_server_with(lab_bin, SERVER, SERVER_PORT, false)
        .context("starting the HTTP server")?;
    let _nginx = Nginx::start(lab, SERVER, NGINX_PORT, SERVER_PORT).context("starting nginx")?;
    lab.node(2)
        .agent()
        .apply(&objects::workloads())
        .context("applying the Namespace and Pods")?;

    let mut modes = vec![Mode::NoPolicy, Mode::Nginx, Mode::L4];
    modes.extend(opts.rules.iter().map(|&n| Mode::L7(n)));
    for mode in modes {
        check_interrupted()?;
        section(&mode.label());
        let settled = bring_into_force(lab, &mode)
            .with_context(|| format!("bringing {} into force", mode.label()))?;
        println!("in force after {:.1} s", settled.as_secs_f64());
        let mut runs = Vec::new();
        for _ in 0..opts.repeats {
            check_interrupted()?;
            let r = load(lab, lab_bin, &mode, opts)?;
            println!(
                "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} answered, {} errors{}",
                r.rps,
                r.p50_ms,
                r.p99_ms,
                r.count,
                r.errors,
                r.first_errors
                    .first()
                    .map_or(String::new(), |e| format!(" (first: {e})"))
            );
            runs.push(r);
        }
        rows.push(Row { mode, runs });
    }
    Ok(())
}

/// Applies the mode's policy and waits until requests show it is in force; how long that took.
fn bring_into_force(lab: &Lab, mode: &Mode) -> anyhow::Result<Duration> {
    let started = Instant::now();
    match mode {
        Mode::NoPolicy | Mode::Nginx => {}
        Mode::L4 => {
            lab.node(2).agent().apply(&objects::policy(0))?;
        }
        Mode::L7(n) => {
            lab.node(2).agent().apply(&objects::policy(*n))?;
        }
    }
    let path = mode.path();
    // (who, port, path, the status that shows the mode is in force; 0: no answer)
    let mut checks = vec![(CLIENT, mode.port(), path.clone(), 200)];
    match mode {
        Mode::NoPolicy | Mode::Nginx => {}
        Mode::L4 => {
            checks.push((CLIENT, SERVER_PORT, DENIED_PATH.into(), 200));
            checks.push((OTHER, SERVER_PORT, path, 0));
        }
        Mode::L7(_) => checks.push((CLIENT, SERVER_PORT, DENIED_PATH.into(), 403)),
    }
    let deadline = started + SETTLE;
    loop {
        let mut last = None;
        for (from, port, path, want) in &checks {
            let got = status(lab, *from, *port, path)?;
            if got != *want {
                last = Some(format!("GET :{port}{path} from {from}: {got}, want {want}"));
                break;
            }
        }
        let Some(last) = last else {
            return Ok(started.elapsed());
        };
        if Instant::now() >= deadline {
            bail!("not in force within {SETTLE:?}: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The status of one `GET` from `from` to the server pod (0: no answer within
/// [`CHECK_TIMEOUT`]).
fn status(lab: &Lab, from: Host, port: u16, path: &str) -> anyhow::Result<u16> {
    let mut cmd = lab.host(from).cmd("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time"])
        .arg(CHECK_TIMEOUT.as_secs_f64().to_string())
        .arg(format!("http://{}:{port}{path}", SERVER.ip()));
    let out = output(&mut cmd, None, CHECK_TIMEOUT + Duration::from_secs(5))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

/// One bounded run of `wiremesh-lab http-load` in the client pod.
fn load(lab: &Lab, lab_bin: &Path, mode: &Mode, opts: &Options) -> anyhow::Result<LoadReport> {
    let mut cmd: Command = lab.host(CLIENT).cmd(lab_bin);
    cmd.args(["http-load", "--addr"])
        .arg(format!("{}:{}", SERVER.ip(), mode.port()))
        .args(["--path", &mode.path()])
        .args(["--connections", &opts.connections.to_string()])
        .args(["--seconds", &opts.seconds.to_string()])
        .args(["--requests", &opts.requests.to_string()])
        .args(["--warmup-ms", &opts.warmup.as_millis().to_string()]);
    let limit = opts.warmup + Duration::from_secs(opts.seconds) + Duration::from_secs(30);
    let out = output(&mut cmd, None, limit)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "http-load failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).with_context(|| format!("http-load printed {stdout:?}"))
}

fn print_header(agent: &Path, lab_bin: &Path, opts: &Options) {
    let bin = std::env::var("WIREMESH_BIN")
        .map_or_else(|_| String::new(), |b| format!("WIREMESH_BIN={b} "));
    let args: Vec<String> = std::env::args().collect();
    println!("command: {bin}{}", args.join(" "));
    println!("wiremesh binary: {}", agent.display());
    println!("load generator and server: {}", lab_bin.display());
    let debug = |p: &Path| p.components().any(|c| c.as_os_str() == "debug");
    if cfg!(debug_assertions) || debug(agent) || debug(lab_bin) {
        println!(
            "WARNING: a debug build; for meaningful numbers run\n  cargo build --release -p \
             wiremesh -p wiremesh-lab && WIREMESH_BIN=target/release/wiremesh \
             target/release/wiremesh-lab bench-l7"
        );
    }
    println!(
        "HTTP/1.1 keep-alive GET, {} connections, one request in flight each, {} s after {} ms \
         of warm-up (at most {} requests), {} runs per mode (the median by req/s is reported); \
         bench/client (node-1) -> bench/server (node-2) across the tunnel; nginx ({} workers) in \
         the server pod on :{NGINX_PORT} proxying to 127.0.0.1:{SERVER_PORT}",
        opts.connections,
        opts.seconds,
        opts.warmup.as_millis(),
        opts.requests,
        opts.repeats,
        nginx::WORKERS
    );
}

fn print_table(rows: &[Row], opts: &Options) {
    let find = |m: &Mode| rows.iter().find(|r| &r.mode == m).map(Row::median);
    let (l4, ngx) = (find(&Mode::L4), find(&Mode::Nginx));
    let ratio = |x: f64, base: Option<&LoadReport>| {
        base.filter(|b| b.rps > 0.0)
            .map_or_else(|| "—".to_owned(), |b| format!("{:.3}", x / b.rps))
    };
    println!(
        "| mode | path | req/s (median of {}) | ratio to (b) L4 | ratio to (d) nginx | p50 ms | \
         p99 ms | p99 − (b) p99 | runs req/s | answered | errors |",
        opts.repeats
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    for row in rows {
        let m = row.median();
        let p99_delta = l4.map_or_else(
            || "—".to_owned(),
            |b| format!("{:+.3} ms", m.p99_ms - b.p99_ms),
        );
        let runs: Vec<String> = row.runs.iter().map(|r| format!("{:.0}", r.rps)).collect();
        println!(
            "| {} | {} | {:.0} | {} | {} | {:.3} | {:.3} | {p99_delta} | {} | {} | {} |",
            row.mode.label(),
            row.mode.path(),
            m.rps,
            ratio(m.rps, l4),
            ratio(m.rps, ngx),
            m.p50_ms,
            m.p99_ms,
            runs.join(", "),
            row.runs.iter().map(|r| r.count).sum::<u64>(),
            row.errors()
        );
    }
}
