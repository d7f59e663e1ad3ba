//! The `wiremesh` command line: its clap definition and the commands' implementations (`main.rs`
//! only parses and dispatches here). The commands that talk to a running agent do so through
//! [`crate::api::AgentClient`] only; output text and exit codes are part of the interface (the
//! lab and scripts parse them): 0 done, 1 failed, 2 bad input.

mod agent;
mod ask;
mod cleanup;
mod datapath;
mod encrypt;
mod objects;
mod observe;
mod trace;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use trace::{Output, TraceArgs};

#[derive(Parser)]
#[command(name = "wiremesh", version = wiremesh_datapath::version(), about = "WireGuard overlay network agent")]
pub struct Cli {
    /// The agent's run directory (config key `runDir`), where wiremesh.sock lives: for the
    /// commands that talk to the local agent.
    #[arg(global = true, long, default_value = crate::api::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the node agent.
    Agent {
        /// Agent configuration (YAML; see docs/config.md).
        #[arg(long, short = 'c', default_value = "/etc/wiremesh/agent.yaml")]
        config: PathBuf,
    },
    /// Install the strict-mode guard (nftables table `inet wiremesh`) from the config alone, with
    /// no store and no data path: run at boot, before the network and the agent come up
    /// (scripts/systemd/wiremesh-guard.service). Idempotent; with `strictMode: false` it removes
    /// the table.
    Guard {
        /// Agent configuration (YAML; see docs/config.md).
        #[arg(long, short = 'c', default_value = "/etc/wiremesh/agent.yaml")]
        config: PathBuf,
    },
    /// Remove what the agent installed on this node, after it has stopped (uninstall): the data
    /// path and the L7 proxy, the WireGuard interface and its routes, the policy programs on
    /// every interface, the pinned maps, the strict-mode and L7 nftables tables and the L7
    /// policy routing. Refuses while an agent runs.
    Cleanup {
        /// Agent configuration (YAML; see docs/config.md).
        #[arg(long, short = 'c', default_value = "/etc/wiremesh/agent.yaml")]
        config: PathBuf,
        /// Also remove the state directory (the private keys, the saved peers and policy) and
        /// the run directory.
        #[arg(long)]
        purge: bool,
        /// After cleaning, wait (until SIGTERM) instead of exiting: a DaemonSet's pod
        /// (deploy/kubernetes/cleanup) stays Running, so `rollout status` says every node is
        /// clean.
        #[arg(long)]
        wait: bool,
    },
    /// Encryption commands.
    Encrypt {
        #[command(subcommand)]
        command: EncryptCommand,
    },
    /// Cluster mesh commands.
    Clustermesh {
        #[command(subcommand)]
        command: ClustermeshCommand,
    },
    /// This node's recent flows (connections allowed, packets dropped, HTTP requests), as
    /// Hubble shows them.
    Observe(observe::ObserveArgs),
    /// Policy commands.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Store Namespaces, Pods (endpoints) and policies (NetworkPolicy, CiliumNetworkPolicy,
    /// CiliumClusterwideNetworkPolicy) through the local agent; the whole resulting set is
    /// validated first, and nothing is stored if any of it is invalid.
    Apply {
        /// Manifest file (multi-document YAML or `kind: List`). Repeatable.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove the objects named in the manifests (kind, namespace, name) through the local agent.
    Delete {
        /// Manifest file. Repeatable.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Key commands.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run the userspace data path (started by the agent, it outlives agent restarts; or, with
    /// --config, as the data-path DaemonSet's container).
    Datapath(datapath::DatapathArgs),
    /// The data-path container's readiness (or, with --liveness, liveness) probe.
    DatapathProbe(datapath::ProbeArgs),
    /// Run the L7 filter: the transparent HTTP proxy that enforces HTTP rules (started by the
    /// agent; it outlives agent restarts).
    Proxy {
        /// Transparent listener for connections into local pods.
        #[arg(long, default_value_t = wiremesh_l7::process::DEFAULT_INGRESS_PORT)]
        ingress_port: u16,
        /// Transparent listener for connections out of local pods.
        #[arg(long, default_value_t = wiremesh_l7::process::DEFAULT_EGRESS_PORT)]
        egress_port: u16,
        /// The control socket the agent configures it through.
        #[arg(long)]
        control_socket: PathBuf,
        /// Where the last configuration is kept across restarts.
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Where to write this process's PID.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Worker threads serving connections, each with its own listeners (0: one per CPU).
        #[arg(long, default_value_t = 0)]
        workers: usize,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Explain whether traffic is allowed, and by which policy and rule, from manifests
    /// (`kubectl get ns,pods,netpol,cnp -A -o yaml` output works as is).
    Trace(TraceArgs),
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Rotate this node's key now (make before break; waits until it is committed).
    Rotate,
}

#[derive(Subcommand)]
pub enum ClustermeshCommand {
    /// Show each remote cluster: admitted or refused (and why), its store connected or not
    /// (since when, the last error), its nodes, refused records and last sync.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum EncryptCommand {
    /// Show the WireGuard interface, this node's public key and every peer.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// List every node in the store with its key epoch, and whether the key this node uses
        /// for it is the one it publishes.
        #[arg(long)]
        all_nodes: bool,
    },
}

/// Runs the command `cli` names; its exit code.
pub fn run(cli: Cli) -> ExitCode {
    let run_dir = cli.run_dir;
    match cli.command {
        Command::Agent { config } => agent::run_agent(config),
        Command::Guard { config } => agent::run_guard(config),
        Command::Cleanup {
            config,
            purge,
            wait,
        } => cleanup::run(config, purge, wait),
        Command::Datapath(args) => datapath::run(args),
        Command::DatapathProbe(args) => datapath::probe(&args),
        Command::Proxy {
            ingress_port,
            egress_port,
            control_socket,
            state_file,
            pid_file,
            workers,
        } => agent::run_proxy(wiremesh_l7::process::Options {
            ingress_port,
            egress_port,
            control_socket,
            state_file,
            mark: wiremesh_enforce::MARK_FROM_PROXY,
            pid_file,
            workers,
        }),
        Command::Apply { files } => objects::run(&files, false, &run_dir),
        Command::Delete { files } => objects::run(&files, true, &run_dir),
        Command::Policy {
            command: PolicyCommand::Trace(args),
        } => trace::run(args, &run_dir),
        Command::Keys {
            command: KeysCommand::Rotate,
        } => encrypt::rotate(&run_dir),
        Command::Encrypt {
            command: EncryptCommand::Status { json, all_nodes },
        } => encrypt::status(json, all_nodes, &run_dir),
        Command::Clustermesh {
            command: ClustermeshCommand::Status { json },
        } => encrypt::clustermesh_status(json, &run_dir),
        Command::Observe(args) => observe::run(&args, &run_dir),
    }
}
