//! The traffic each bench mode carries, pod 1 of node 1 → pod 1 of node 2, and what is measured
//! of it: request/response latency (sockperf), one and four TCP streams, and UDP at a fixed
//! offered rate (iperf3). Every run is bounded by its duration plus a grace period, and every
//! process it starts is stopped by PID.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::sys::signal::Signal;
use wiremesh_lab::{BgProcess, Host, Lab, WG_MTU};

use super::mode::Running;
use super::parse::{self, IperfEnd};
use super::procstat::{self, ProcSample};

pub const FROM: Host = Host::Pod(1, 1);
pub const TO: Host = Host::Pod(2, 1);
/// Offered UDP rate: above what any userspace data path here carries, so loss shows its limit.
pub const UDP_RATE: &str = "2G";
/// The largest UDP payload that fits the tunnel MTU without fragmenting (IPv4 + UDP headers).
pub const UDP_PAYLOAD: u16 = WG_MTU - 20 - 8;
/// sockperf's message size.
pub const RR_BYTES: u16 = 64;
/// Beyond the run's own duration: connection setup, the final report, the server's exit.
const GRACE: Duration = Duration::from_secs(15);
const LISTEN: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(3);

/// One kind of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Latency,
    Tcp1,
    Tcp4,
    Udp,
}

/// One number a workload yields. The data-path cost comes from the single-stream TCP run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    RttP50,
    RttP99,
    Tcp1Gbps,
    Tcp1Retransmits,
    Tcp4Gbps,
    Tcp4Retransmits,
    /// What the iperf3 client really sent (context: one sender thread may not reach the rate).
    UdpSentGbps,
    UdpGbps,
    UdpLossPercent,
    /// CPU seconds of both nodes' data-path processes per GB received.
    CpuPerGb,
    /// The larger node's data-path peak RSS over the whole mode (not a per-run median).
    PeakRssMib,
}

impl Workload {
    /// In the order they run: latency first, on a quiet tunnel.
    pub const ALL: [Self; 4] = [Self::Latency, Self::Tcp1, Self::Tcp4, Self::Udp];

    pub fn name(self) -> &'static str {
        match self {
            Self::Latency => "latency",
            Self::Tcp1 => "TCP 1 stream",
            Self::Tcp4 => "TCP 4 streams",
            Self::Udp => "UDP",
        }
    }

    /// One bounded run; its numbers.
    pub fn run_once(
        self,
        running: &Running,
        duration: Duration,
    ) -> anyhow::Result<Vec<(Metric, f64)>> {
        let lab = &running.lab;
        match self {
            Self::Latency => {
                let rtt = sockperf(lab, duration)?;
                Ok(vec![
                    (Metric::RttP50, rtt.p50_us),
                    (Metric::RttP99, rtt.p99_us),
                ])
            }
            Self::Tcp1 => tcp1(running, duration),
            Self::Tcp4 => {
                let end = iperf(lab, &["-P", "4"], duration)?;
                Ok(vec![
                    (Metric::Tcp4Gbps, end.gbps),
                    (Metric::Tcp4Retransmits, end.retransmits as f64),
                ])
            }
            Self::Udp => {
                let len = UDP_PAYLOAD.to_string();
                let end = iperf(lab, &["-u", "-b", UDP_RATE, "-l", &len], duration)?;
                Ok(vec![
                    (Metric::UdpSentGbps, end.sent_gbps),
                    (Metric::UdpGbps, end.gbps),
                    (Metric::UdpLossPercent, end.lost_percent),
                ])
            }
        }
    }

    /// One line of what a run measured, for the progress log.
    pub fn describe(values: &[(Metric, f64)]) -> String {
        values
            .iter()
            .map(|&(m, v)| format!("{} {v:.*}", m.column(), m.decimals()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Metric {
    /// The column header (with its unit).
    pub fn column(self) -> &'static str {
        match self {
            Self::RttP50 => "p50 µs",
            Self::RttP99 => "p99 µs",
            Self::Tcp1Gbps | Self::Tcp4Gbps => "Gbit/s",
            Self::Tcp1Retransmits | Self::Tcp4Retransmits => "retransmits",
            Self::UdpSentGbps => "sent Gbit/s",
            Self::UdpGbps => "received Gbit/s",
            Self::UdpLossPercent => "loss %",
            Self::CpuPerGb => "CPU s/GB",
            Self::PeakRssMib => "peak RSS MiB",
        }
    }

    pub fn decimals(self) -> usize {
        match self {
            Self::Tcp1Retransmits | Self::Tcp4Retransmits => 0,
            Self::RttP50 | Self::RttP99 | Self::UdpLossPercent | Self::PeakRssMib => 1,
            Self::CpuPerGb => 2,
            Self::Tcp1Gbps | Self::Tcp4Gbps | Self::UdpSentGbps | Self::UdpGbps => 3,
        }
    }

    /// Whether this is what a data-path process costs (none for the plain underlay).
    pub fn is_data_path_cost(self) -> bool {
        matches!(self, Self::CpuPerGb | Self::PeakRssMib)
    }

    /// Whether ratios to the baselines mean something (retransmit counts and the UDP sender's
    /// rate are context only).
    pub fn has_ratios(self) -> bool {
        !matches!(
            self,
            Self::Tcp1Retransmits | Self::Tcp4Retransmits | Self::UdpSentGbps
        )
    }
}

/// One TCP stream, with the data paths' CPU time around it.
fn tcp1(running: &Running, duration: Duration) -> anyhow::Result<Vec<(Metric, f64)>> {
    let before: Vec<Option<ProcSample>> = running
        .pids
        .iter()
        .map(|&(_, pid)| procstat::sample(pid))
        .collect();
    let end = iperf(&running.lab, &[], duration)?;
    let mut cpu = Duration::ZERO;
    for (&(node, pid), before) in running.pids.iter().zip(before) {
        let (Some(before), Some(after)) = (before, procstat::sample(pid)) else {
            bail!("node-{node}'s data path (pid {pid}) vanished during the run");
        };
        cpu += after.cpu.saturating_sub(before.cpu);
    }
    let mut values = vec![
        (Metric::Tcp1Gbps, end.gbps),
        (Metric::Tcp1Retransmits, end.retransmits as f64),
    ];
    if !running.pids.is_empty() {
        values.push((
            Metric::CpuPerGb,
            cpu.as_secs_f64() / (end.bytes_received as f64 / 1e9),
        ));
    }
    Ok(values)
}

/// One bounded `iperf3 -c TO -t <duration> --json <extra>` from `FROM`, against a one-shot
/// server in `TO`.
fn iperf(lab: &Lab, extra: &[&str], duration: Duration) -> anyhow::Result<IperfEnd> {
    let (mut server, port) = lab.host(TO).iperf_server()?;
    let json = lab.dir().join(format!("bench-iperf3-{port}.json"));
    let log = lab.dir().join(format!("bench-iperf3-{port}.log"));
    let mut cmd = lab.host(FROM).cmd("iperf3");
    cmd.args(["-c", &TO.ip().to_string(), "-p", &port.to_string()])
        .args(["-t", &duration.as_secs().max(1).to_string(), "--json"])
        .args(extra);
    let mut client = BgProcess::spawn_split(format!("iperf3 -c on {FROM}"), &mut cmd, &json, &log)?;
    let status = client.wait_timeout(duration + GRACE);
    // Dropping either handle kills what is still running.
    let _ = server.wait_timeout(STOP_GRACE);
    status.with_context(|| format!("iperf3 client: {}", client.log()))?;
    let text =
        std::fs::read_to_string(&json).with_context(|| format!("reading {}", json.display()))?;
    let end = parse::iperf_end(&text).with_context(|| format!("iperf3 {}", extra.join(" ")))?;
    ensure!(end.bytes_received > 0, "iperf3 moved no data");
    Ok(end)
}

/// One bounded `sockperf ping-pong` (UDP, round-trip times) from `FROM` against a sockperf
/// server in `TO`, stopped by PID afterwards.
fn sockperf(lab: &Lab, duration: Duration) -> anyhow::Result<parse::Rtt> {
    let port = lab.next_port().to_string();
    let ip = TO.ip().to_string();
    let log = lab.dir().join(format!("bench-sockperf-server-{port}.log"));
    let mut cmd = lab.host(TO).cmd("sockperf");
    cmd.args(["server", "-i", &ip, "-p", &port]);
    let mut server = BgProcess::spawn(format!("sockperf server on {TO}"), &mut cmd, &log)?;
    let result = (|| {
        wait_udp_listening(lab, &port, &mut server)?;
        let mut client = lab.host(FROM).cmd("sockperf");
        client
            .args(["ping-pong", "-i", &ip, "-p", &port, "--full-rtt"])
            .args(["-m", &RR_BYTES.to_string()])
            .args(["-t", &duration.as_secs().max(1).to_string()]);
        let out = wiremesh_lab::run(&mut client, duration + GRACE)?;
        parse::sockperf_rtt(&out)
    })();
    server.stop(Signal::SIGTERM, STOP_GRACE);
    result
}

fn wait_udp_listening(lab: &Lab, port: &str, server: &mut BgProcess) -> anyhow::Result<()> {
    let deadline = Instant::now() + LISTEN;
    let filter = format!("sport = :{port}");
    loop {
        let mut ss = lab.host(TO).cmd("ss");
        ss.args(["-H", "-l", "-u", "-n", &filter]);
        if !wiremesh_lab::run(&mut ss, LISTEN)?.trim().is_empty() {
            return Ok(());
        }
        if let Some(status) = server.exited() {
            bail!("{} exited ({status}): {}", server.name(), server.log());
        }
        if Instant::now() >= deadline {
            bail!("{} did not listen within {LISTEN:?}", server.name());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
