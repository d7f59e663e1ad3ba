//! `wiremesh-lab`: bring a lab up by hand to explore it, or run the end-to-end demo.

mod bench;
mod cli;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wiremesh-lab",
    about = "wiremesh nodes and pods in network namespaces (needs root)"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a lab, start the agents, print how to get into each namespace, and keep it until
    /// Ctrl-C (SIGINT) or SIGTERM, then tear it down.
    Up {
        /// Nodes per cluster.
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        /// Clusters of `--nodes` nodes each, every one with its own store (or etcd), ID and
        /// pool, all linked through their agents' `clusterMesh`.
        #[arg(long, default_value_t = 1)]
        clusters: u8,
        #[arg(long, default_value_t = 2)]
        pods: u8,
        /// Build only the namespaces; start no agent.
        #[arg(long)]
        no_agents: bool,
        /// Run etcd on the switch (198.18.0.254:2379) and put the agents' store there, with
        /// this lease TTL in seconds (the agents' `store.etcd.leaseTTL`).
        #[arg(long, value_name = "LEASE_TTL_SECS")]
        etcd: Option<u64>,
        /// The agents' store: `dir` (the default), `etcd` (as `--etcd 5`), or `kubernetes`
        /// (the fake API server on the switch at 198.18.0.254:6443, standing in for
        /// kube-apiserver, with deploy/'s RBAC; drive it with kubectl).
        #[arg(long, value_enum, conflicts_with = "etcd")]
        store: Option<cli::up::StoreChoice>,
    },
    /// Build a lab, show pod-to-pod traffic across every node pair, the agent's and wg's view,
    /// and prove on a capture of the underlay that the traffic is encrypted; then tear down.
    Demo {
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        #[arg(long, default_value_t = 2)]
        pods: u8,
    },
    /// Pod-to-pod across two nodes for the plain underlay, wiremesh, wireguard-go, boringtun-cli
    /// (2 threads and its default) and gotatun, each in a fresh lab: sockperf ping-pong latency
    /// (p50, p99), iperf3 with 1 and 4 TCP streams and UDP at a fixed rate, and each data path's
    /// CPU per GB and peak RSS; medians of `--runs`, as ratios to wireguard-go and to plain
    /// within this one run, also as markdown. For meaningful numbers use release builds:
    /// `cargo build --release --bins && WIREMESH_BIN=target/release/wiremesh
    /// target/release/wiremesh-lab bench`.
    Bench {
        /// Length of each run (iperf3 `-t`, sockperf `-t`).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Runs per workload and mode (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Only these modes (comma-separated): plain, wiremesh, wireguard-go,
        /// boringtun-cli-2t, boringtun-cli, gotatun. Default: all.
        #[arg(long, value_delimiter = ',')]
        modes: Vec<String>,
    },
    /// Single-stream TCP throughput pod-to-pod across the tunnel with 0, 10, 1,000 and 10,000
    /// NetworkPolicy rules selecting the destination pod, in one lab, as ratios to 0 rules; how
    /// long each change takes to be enforced; and a full policy recompute's cost in-process.
    /// Use release builds: `cargo build --release --bins && WIREMESH_BIN=target/release/wiremesh
    /// target/release/wiremesh-lab bench-policy`.
    BenchPolicy {
        /// Length of each iperf3 run (`-t`).
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// iperf3 runs per rule count (the median is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Rule counts, in order; the first must be 0 (the baseline).
        #[arg(long, value_delimiter = ',', default_value = "0,10,1000,10000")]
        rules: Vec<usize>,
    },
    /// HTTP/1.1 keep-alive requests/s and p50/p99 latency pod-to-pod across the tunnel with no
    /// policy, an L4 CiliumNetworkPolicy, the same with N HTTP rules (the L7 filter), and
    /// through nginx as a reverse proxy in the server pod, as ratios to the L4 policy and to
    /// nginx. Fails if any allowed request fails. Use release builds: `cargo build --release -p
    /// wiremesh -p wiremesh-lab && WIREMESH_BIN=target/release/wiremesh
    /// target/release/wiremesh-lab bench-l7`.
    BenchL7 {
        /// Length of each measured run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Keep-alive connections of the load generator (one request in flight each).
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Requests answered in this first stretch of each run are not measured.
        #[arg(long, default_value_t = 1000)]
        warmup_ms: u64,
        /// Cap on measured requests per run.
        #[arg(long, default_value_t = cli::http_load::MAX_REQUESTS)]
        requests: u64,
        /// Runs per mode (the median by requests/s is reported).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// HTTP rule counts of the L7 modes; the requests match the last rule.
        #[arg(long, value_delimiter = ',', default_value = "10,1000")]
        rules: Vec<usize>,
    },
    /// (For the L7 tests.) An HTTP server answering every request with `METHOD PATH from
    /// PEER_IP`, and logging that line to `--log` if given.
    #[command(hide = true)]
    HttpServer {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        log: Option<std::path::PathBuf>,
    },
    /// (For bench-l7.) HTTP/1.1 keep-alive GET load against one address, bounded in time and
    /// count; prints one JSON object: count, errors, rps, p50_ms, p99_ms.
    #[command(hide = true)]
    HttpLoad {
        /// IP:PORT of the server.
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = cli::http_load::MAX_REQUESTS)]
        requests: u64,
        #[arg(long, default_value_t = 1000)]
        warmup_ms: u64,
    },
    /// (For the L7 gRPC test.) A gRPC server (`demo.Greeter`: `SayHello`, `SayGoodbye`) over
    /// cleartext HTTP/2, logging `PATH from PEER_IP` of every call to `--log`.
    #[command(hide = true)]
    GrpcServer {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        log: std::path::PathBuf,
    },
    /// (For the L7 gRPC test.) One unary call of `demo.Greeter/<METHOD>`; prints the gRPC
    /// status code, message and reply as JSON.
    #[command(hide = true)]
    GrpcCall {
        /// `IP:PORT` of the server.
        #[arg(long)]
        target: String,
        #[arg(long)]
        method: String,
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, default_value_t = 8)]
        timeout_secs: u64,
    },
    /// (For the hostile-HTTP test.) Sends stdin's bytes to `--connect` as they are, and prints
    /// the reply and how the connection ended (`eof`, `reset`, `timeout`) as JSON.
    #[command(hide = true)]
    RawTcp {
        #[arg(long)]
        connect: std::net::SocketAddr,
        /// Bytes per write (0: all at once).
        #[arg(long, default_value_t = 0)]
        step: usize,
        /// Pause between writes, milliseconds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Give the connection up after this many milliseconds.
        #[arg(long, default_value_t = 8000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = cli::install_signal_handlers() {
        eprintln!("wiremesh-lab: {e:#}");
        return ExitCode::FAILURE;
    }
    match dispatch(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nwiremesh-lab: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the subcommand.
fn up(
    nodes: u8,
    clusters: u8,
    pods: u8,
    agents: bool,
    etcd_ttl: Option<u64>,
    store: Option<cli::up::StoreChoice>,
) -> anyhow::Result<()> {
    cli::up::run(&cli::up::UpArgs {
        nodes,
        clusters,
        pods,
        agents,
        store: cli::up::StoreChoice::resolve(store, etcd_ttl),
    })
}

fn dispatch(command: Cmd) -> anyhow::Result<()> {
    match command {
        Cmd::Up {
            nodes,
            clusters,
            pods,
            no_agents,
            etcd,
            store,
        } => up(nodes, clusters, pods, !no_agents, etcd, store),
        Cmd::Demo { nodes, pods } => cli::demo::run(nodes, pods),
        Cmd::Bench {
            seconds,
            runs,
            modes,
        } => bench::run(&bench::Options {
            seconds,
            runs,
            modes,
        }),
        Cmd::BenchPolicy {
            seconds,
            repeats,
            rules,
        } => bench::policy::run(seconds, repeats, &rules),
        Cmd::BenchL7 {
            seconds,
            connections,
            warmup_ms,
            requests,
            repeats,
            rules,
        } => bench::l7::run(&bench::l7::Options {
            seconds,
            connections,
            warmup: Duration::from_millis(warmup_ms),
            requests,
            repeats,
            rules,
        }),
        Cmd::HttpServer { port, log } => cli::http_server::run(port, log),
        Cmd::GrpcServer { port, log } => cli::grpc::serve(port, log),
        Cmd::GrpcCall {
            target,
            method,
            name,
            timeout_secs,
        } => cli::grpc::call(&target, &method, &name, Duration::from_secs(timeout_secs)),
        Cmd::RawTcp {
            connect,
            step,
            interval_ms,
            timeout_ms,
        } => cli::raw_tcp::run(&cli::raw_tcp::RawArgs {
            connect,
            step,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
        }),
        Cmd::HttpLoad {
            addr,
            path,
            connections,
            seconds,
            requests,
            warmup_ms,
        } => cli::http_load::run(&cli::http_load::LoadSpec {
            addr,
            path,
            connections,
            duration: Duration::from_secs(seconds),
            max_requests: requests,
            warmup: Duration::from_millis(warmup_ms),
        }),
    }
}
