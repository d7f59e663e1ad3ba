//! `wiremesh-lab`: bring a lab up by hand to explore it, or run the end-to-end demo.

mod bench;
mod cli;

use std::process::ExitCode;

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
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        #[arg(long, default_value_t = 2)]
        pods: u8,
        /// Build only the namespaces; start no agent.
        #[arg(long)]
        no_agents: bool,
        /// Run etcd on the switch (198.18.0.254:2379) and put the agents' store there, with
        /// this lease TTL in seconds (the agents' `store.etcd.leaseTTL`).
        #[arg(long, value_name = "LEASE_TTL_SECS")]
        etcd: Option<u64>,
    },
    /// Build a lab, show pod-to-pod traffic across every node pair, the agent's and wg's view,
    /// and prove on a capture of the underlay that the traffic is encrypted; then tear down.
    Demo {
        #[arg(long, default_value_t = 3)]
        nodes: u8,
        #[arg(long, default_value_t = 2)]
        pods: u8,
    },
    /// Single-stream TCP throughput pod-to-pod across two nodes (iperf3) for the plain underlay,
    /// wiremesh, wireguard-go and boringtun-cli, as ratios within this one run, plus each data
    /// path's RSS and CPU time. For meaningful numbers use release builds:
    /// `cargo build --release --bins && WIREMESH_BIN=target/release/wiremesh
    /// target/release/wiremesh-lab bench`.
    Bench {
        /// Length of each iperf3 run (`-t`).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = cli::install_signal_handlers() {
        eprintln!("wiremesh-lab: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = match args.command {
        Cmd::Up {
            nodes,
            pods,
            no_agents,
            etcd,
        } => cli::up::run(nodes, pods, !no_agents, etcd),
        Cmd::Demo { nodes, pods } => cli::demo::run(nodes, pods),
        Cmd::Bench { seconds } => bench::run(seconds),
        Cmd::BenchPolicy {
            seconds,
            repeats,
            rules,
        } => bench::policy::run(seconds, repeats, &rules),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nwiremesh-lab: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}
