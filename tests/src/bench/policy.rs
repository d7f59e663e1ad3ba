//! `wiremesh-lab bench-policy`: what the number of policy rules selecting a pod costs. One TCP
//! stream (iperf3) from a client pod on node 1 to a server pod on node 2, across the tunnel,
//! with 0, 10, 1,000 and 10,000 ingress rules selecting the server, all in one lab and one
//! invocation, printed as ratios to the run with no rules. For each step it also measures how
//! long the change takes to be enforced: `wiremesh apply` itself, until node 2's agent logs the
//! map update, and until the first connection allowed only by the new rules gets through. Apart
//! from the lab, it times a full recompute (`policy::load` + `Compiled::build`) in this process.
//!
//! Every wait and every traffic run is bounded; traffic stays between the lab's two pods.

mod maplog;
mod rules;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use wiremesh_lab::{
    agent_binary, require_root, require_tools, unix_now, Host, Lab, NodeKind, Proto,
};

use super::procstat::{self, ProcSample};
use crate::cli::{check_interrupted, section};
use rules::{Recompute, MARKER_BASE, MAX_RULES, RANGE_CHECK_PORT};

const READY: Duration = Duration::from_secs(20);
const REACH: Duration = Duration::from_secs(15);
/// How long a change may take to be enforced (10,000 rules on a busy 2-core machine).
const ENFORCE: Duration = Duration::from_secs(120);
/// One connection attempt while waiting for a marker port to open: the resolution of that wait.
const MARKER_PROBE: Duration = Duration::from_millis(50);
/// A port that should be closed is declared closed after this long without an answer.
const CLOSED_PROBE: Duration = Duration::from_millis(500);
const IPERF_GRACE: Duration = Duration::from_secs(15);
/// The in-process recompute stops repeating once it has spent this long.
const RECOMPUTE_BUDGET: Duration = Duration::from_secs(30);
/// The agent that enforces the server's ingress.
const SERVER_NODE: u8 = 2;

/// One rule count's results.
#[derive(Debug)]
struct Step {
    rules: usize,
    recompute: Recompute,
    enforce: Option<Enforced>,
    runs: Vec<f64>,
    gbps: f64,
    retransmits: u64,
    agent_cpu: Duration,
    agent_rss_kib: u64,
}

/// How a change of policy reached node 2's data path.
#[derive(Debug)]
struct Enforced {
    /// `wiremesh apply -f` from start to exit.
    apply: Duration,
    /// From `apply` returning until node 2's agent logged the map update (negative: before).
    maps_updated: f64,
    /// Writing the maps, as the agent logged it.
    map_write: Option<Duration>,
    policy_upserts: u64,
    ipcache_upserts: u64,
    /// From `apply` returning until a connection to this step's marker port got through.
    first_allowed: Duration,
    /// CPU time of node 2's and node 1's agents from `apply` starting until node 2's maps were
    /// updated: admin request, load, identities, compile, desired state and map writes.
    agent_cpu: [Duration; 2],
}

pub fn run(seconds: u64, repeats: usize, counts: &[usize]) -> anyhow::Result<()> {
    require_root()?;
    require_tools(&["iperf3"])?;
    ensure!((1..=60).contains(&seconds), "--seconds must be 1..=60");
    ensure!((1..=9).contains(&repeats), "--repeats must be 1..=9");
    ensure!(
        counts.first() == Some(&0),
        "--rules must start with 0 (the baseline the others are compared to)"
    );
    ensure!(
        counts.len() <= 16
            && counts
                .iter()
                .all(|&n| n == 0 || (2..=MAX_RULES).contains(&n)),
        "--rules: at most 16 counts, each 0 or 2..={MAX_RULES}"
    );
    let duration = Duration::from_secs(seconds);
    let agent = agent_binary()?;
    print_header(&agent, seconds, repeats);

    section("Full recompute in this process (policy::load + Compiled::build), release build");
    let mut recomputes = Vec::new();
    for &n in counts {
        let r = rules::recompute(n, repeats, RECOMPUTE_BUDGET)
            .with_context(|| format!("loading the {n}-rule policy"))?;
        println!(
            "{n} rules: load {:.1} ms, compile {:.1} ms, CPU {:.0} ms, {} entries in the server's \
             map (median of {})",
            ms(r.load),
            ms(r.compile),
            ms(r.cpu),
            r.entries,
            r.samples
        );
        recomputes.push(r);
        check_interrupted()?;
    }

    section("Lab: 2 nodes, agents, client pod on node-1, server pod on node-2");
    let lab = Lab::new(2, 1).context("building the lab")?;
    let result = in_lab(&lab, counts, &recomputes, duration, repeats);
    if result.is_err() {
        lab.dump_logs();
    }
    let steps = result?;
    section("Results");
    print_table(&steps, repeats, seconds);
    Ok(())
}

fn in_lab(
    lab: &Lab,
    counts: &[usize],
    recomputes: &[Recompute],
    duration: Duration,
    repeats: usize,
) -> anyhow::Result<Vec<Step>> {
    let (client, server) = (rules::client().host, rules::server().host);
    lab.start_agents(READY).context("starting agents")?;
    for node in lab.node_ids() {
        lab.node(node).agent().wait_peer_count(1, READY)?;
    }
    lab.host(client).wait_reachable(server.ip(), REACH)?;
    let markers: Vec<u16> = (0..counts.len())
        .map(|s| MARKER_BASE + u16::try_from(s).unwrap_or(u16::MAX))
        .collect();
    let mut ports = markers.clone();
    ports.push(RANGE_CHECK_PORT);
    let _echo = lab.serve(&[server], &ports, &[])?;

    let log = lab.node(SERVER_NODE).log_path(NodeKind::Agent);
    let from = maplog::offset(&log);
    let base: Vec<String> = rules::base_objects().into_iter().map(|o| o.1).collect();
    lab.node(SERVER_NODE)
        .agent()
        .apply(&base.join("---\n"))
        .context("applying the Namespace and Pods")?;
    maplog::wait_update(&log, from, ENFORCE).context("node-2 enforcing on the server pod")?;
    wait_open(lab, client, server, RANGE_CHECK_PORT, REACH)?;

    let mut steps = Vec::new();
    let mut isolated = false;
    for (step, (&n, recompute)) in counts.iter().zip(recomputes).enumerate() {
        check_interrupted()?;
        section(&format!("{n} rules selecting the server"));
        let enforce = if n == 0 {
            if isolated {
                let from = maplog::offset(&log);
                lab.node(SERVER_NODE)
                    .agent()
                    .delete(&rules::network_policy(1, 0))?;
                maplog::wait_update(&log, from, ENFORCE)?;
                isolated = false;
            }
            None
        } else {
            if !isolated {
                // From no policy, every port is open: first isolate the server with the iperf3
                // rule alone, so this step's marker port is closed before the measured change.
                let from = maplog::offset(&log);
                lab.node(SERVER_NODE)
                    .agent()
                    .apply(&rules::network_policy(1, 0))?;
                maplog::wait_update(&log, from, ENFORCE)?;
                isolated = true;
            }
            Some(change(lab, n, markers[step])?)
        };
        if let Some(e) = &enforce {
            println!(
                "apply {:.0} ms; maps updated {:+.0} ms after it returned ({} policy, {} ipcache \
                 upserts, written in {}); first allowed connection after {:.0} ms; agent CPU \
                 meanwhile {:.2} s on node-2, {:.2} s on node-1",
                ms(e.apply),
                e.maps_updated * 1e3,
                e.policy_upserts,
                e.ipcache_upserts,
                e.map_write
                    .map_or("?".into(), |d| format!("{:.1} ms", ms(d))),
                ms(e.first_allowed),
                e.agent_cpu[0].as_secs_f64(),
                e.agent_cpu[1].as_secs_f64()
            );
        }
        wait_open(lab, client, server, RANGE_CHECK_PORT, REACH)?;
        steps.push(throughput(lab, n, *recompute, enforce, duration, repeats)?);
    }
    Ok(steps)
}

/// Applies the `n`-rule policy on node 2 and times its way to the data path.
fn change(lab: &Lab, n: usize, marker: u16) -> anyhow::Result<Enforced> {
    let (client, server) = (rules::client().host, rules::server().host);
    ensure!(
        !lab.host(client)
            .probe(server.ip(), marker, Proto::Tcp, CLOSED_PROBE),
        "marker port {marker} is open before the policy that opens it: the timing would be wrong"
    );
    let log = lab.node(SERVER_NODE).log_path(NodeKind::Agent);
    let from = maplog::offset(&log);
    let manifest = rules::network_policy(n, marker);
    let cpu = || -> anyhow::Result<[Duration; 2]> {
        let mut out = [Duration::ZERO; 2];
        for (slot, node) in out.iter_mut().zip([SERVER_NODE, 1]) {
            let pid = lab
                .node(node)
                .agent()
                .pid()
                .with_context(|| format!("node-{node}'s agent is not running"))?;
            *slot = procstat::sample(pid)
                .with_context(|| format!("reading node-{node}'s agent in /proc"))?
                .cpu;
        }
        Ok(out)
    };
    let cpu_before = cpu()?;
    let started = Instant::now();
    lab.node(SERVER_NODE)
        .agent()
        .apply(&manifest)
        .with_context(|| format!("applying {n} rules"))?;
    let (returned, returned_unix) = (Instant::now(), unix_now());
    let deadline = returned + ENFORCE;
    while !lab
        .host(client)
        .probe(server.ip(), marker, Proto::Tcp, MARKER_PROBE)
    {
        if Instant::now() >= deadline {
            bail!("marker port {marker} still closed {ENFORCE:?} after applying {n} rules");
        }
    }
    let first_allowed = returned.elapsed();
    let update = maplog::wait_update(&log, from, ENFORCE)?;
    let cpu_after = cpu()?;
    Ok(Enforced {
        agent_cpu: [0, 1].map(|i| cpu_after[i].saturating_sub(cpu_before[i])),
        apply: returned - started,
        maps_updated: update.at - returned_unix,
        map_write: update.elapsed,
        policy_upserts: update.policy_upserts,
        ipcache_upserts: update.ipcache_upserts,
        first_allowed,
    })
}

/// `repeats` bounded iperf3 runs client → server; the median, and node 2's agent meanwhile.
fn throughput(
    lab: &Lab,
    rules: usize,
    recompute: Recompute,
    enforce: Option<Enforced>,
    duration: Duration,
    repeats: usize,
) -> anyhow::Result<Step> {
    let (client, server) = (rules::client().host, rules::server().host);
    let pid = lab
        .node(SERVER_NODE)
        .agent()
        .pid()
        .context("node-2's agent is not running")?;
    let before = procstat::sample(pid).context("reading node-2's agent in /proc")?;
    let (mut runs, mut retransmits) = (Vec::new(), Vec::new());
    for _ in 0..repeats {
        check_interrupted()?;
        let (gbps, retr) = iperf_once(lab, client, server, duration)?;
        println!("{gbps:.3} Gbit/s, {retr} retransmits");
        runs.push(gbps);
        retransmits.push(retr);
    }
    let after: ProcSample = procstat::sample(pid).context("node-2's agent vanished")?;
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Step {
        rules,
        recompute,
        enforce,
        gbps: sorted[sorted.len() / 2],
        runs,
        retransmits: rules::median(&mut retransmits),
        agent_cpu: after.cpu.saturating_sub(before.cpu),
        agent_rss_kib: after.rss_kib,
    })
}

fn iperf_once(lab: &Lab, from: Host, to: Host, duration: Duration) -> anyhow::Result<(f64, u64)> {
    let (mut server, port) = lab.host(to).iperf_server()?;
    ensure!(
        (rules::IPERF_PORTS.0..RANGE_CHECK_PORT).contains(&port),
        "iperf3 got port {port}, outside the range the policy opens"
    );
    let client = lab.host(from).iperf_client(to.ip(), port, duration, "0")?;
    let report = client.finish(IPERF_GRACE)?;
    let _ = server.wait_timeout(IPERF_GRACE);
    if let Some(e) = report.error {
        bail!("iperf3: {e}");
    }
    let secs: f64 = report.intervals.iter().map(|i| i.1).sum();
    let secs = if secs > 0.0 {
        secs
    } else {
        duration.as_secs_f64()
    };
    ensure!(report.bytes_received > 0, "iperf3 moved no data");
    Ok((
        report.bytes_received as f64 * 8.0 / secs / 1e9,
        report.retransmits,
    ))
}

fn wait_open(lab: &Lab, from: Host, to: Host, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !lab
        .host(from)
        .probe(to.ip(), port, Proto::Tcp, Duration::from_millis(300))
    {
        if Instant::now() >= deadline {
            bail!("{from} cannot reach {to}:{port}/TCP within {timeout:?}");
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_header(agent: &std::path::Path, seconds: u64, repeats: usize) {
    let bin = std::env::var("WIREMESH_BIN")
        .map_or_else(|_| String::new(), |b| format!("WIREMESH_BIN={b} "));
    let args: Vec<String> = std::env::args().collect();
    println!("command: {bin}{}", args.join(" "));
    println!("wiremesh binary: {}", agent.display());
    if cfg!(debug_assertions) || agent.components().any(|c| c.as_os_str() == "debug") {
        println!(
            "WARNING: a debug build; for meaningful numbers run\n  cargo build --release --bins && \
             WIREMESH_BIN=target/release/wiremesh target/release/wiremesh-lab bench-policy"
        );
    }
    println!(
        "single TCP stream, iperf3 -t {seconds} -b 0, {repeats} runs per rule count (median), \
         bench/client (node-1) -> bench/server (node-2)"
    );
}

fn print_table(steps: &[Step], repeats: usize, seconds: u64) {
    let base = steps
        .iter()
        .find(|s| s.rules == 0)
        .map(|s| s.gbps)
        .filter(|b| *b > 0.0);
    println!(
        "| rules | server map entries | Gbit/s (median of {repeats} × {seconds} s) | ratio to 0 rules | runs | \
         node-2 agent CPU during runs | node-2 agent RSS | apply | apply → maps updated | map write | \
         apply → first allowed connection | agent CPU apply → enforced (node-2 / node-1) |"
    );
    println!("|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for s in steps {
        let ratio = base.map_or_else(|| "—".into(), |b| format!("{:.3}", s.gbps / b));
        let runs: Vec<String> = s.runs.iter().map(|g| format!("{g:.3}")).collect();
        let (apply, updated, write, allowed, cpu) = match &s.enforce {
            None => ("—".into(), "—".into(), "—".into(), "—".into(), "—".into()),
            Some(e) => (
                format!("{:.0} ms", ms(e.apply)),
                format!("{:+.0} ms", e.maps_updated * 1e3),
                e.map_write
                    .map_or("?".into(), |d| format!("{:.1} ms", ms(d))),
                format!("{:.0} ms", ms(e.first_allowed)),
                format!(
                    "{:.2} s / {:.2} s",
                    e.agent_cpu[0].as_secs_f64(),
                    e.agent_cpu[1].as_secs_f64()
                ),
            ),
        };
        println!(
            "| {} | {} | {:.3} | {ratio} | {} | {:.2} s | {:.1} MiB | {apply} | {updated} | {write} | {allowed} | {cpu} |",
            s.rules,
            s.recompute.entries,
            s.gbps,
            runs.join(", "),
            s.agent_cpu.as_secs_f64(),
            s.agent_rss_kib as f64 / 1024.0,
        );
    }
    println!();
    println!(
        "| rules | policy::load | Compiled::build | load + build | CPU time of load + build | \
         server map entries |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for s in steps {
        let r = &s.recompute;
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} ms | {} |",
            s.rules,
            ms(r.load),
            ms(r.compile),
            ms(r.load + r.compile),
            ms(r.cpu),
            r.entries
        );
    }
    println!(
        "\nmedian retransmits per run: {}",
        steps
            .iter()
            .map(|s| format!("{} rules: {}", s.rules, s.retransmits))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
