//! `wiremesh`: the node agent (`wiremesh agent`) and the operator CLI (`wiremesh encrypt status`).

use wiremesh::{admin, agent, config, policy_api, policy_cmd, runtime, status, strict};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wiremesh", version, about = "WireGuard overlay network agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Encryption commands.
    Encrypt {
        #[command(subcommand)]
        command: EncryptCommand,
    },
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
        /// The agent's run directory (config key `runDir`).
        #[arg(long, default_value = "/run/wiremesh")]
        run_dir: PathBuf,
    },
    /// Remove the objects named in the manifests (kind, namespace, name) through the local agent.
    Delete {
        /// Manifest file. Repeatable.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// The agent's run directory (config key `runDir`).
        #[arg(long, default_value = "/run/wiremesh")]
        run_dir: PathBuf,
    },
    /// Key commands.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run the userspace data path (started by the agent; it outlives agent restarts).
    Datapath {
        /// Interface to create (config key `interface`).
        #[arg(long, default_value = config::DEFAULT_INTERFACE)]
        interface: String,
        /// UDP port (config key `listenPort`).
        #[arg(long, default_value_t = config::DEFAULT_PORT)]
        listen_port: u16,
        /// The node's private key file, created by the agent (`<stateDir>/<interface>.key`).
        #[arg(long)]
        key_file: PathBuf,
        /// Where to write this process's PID.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Members of this group (gid) may read (`get`, without keys) on the UAPI socket
        /// (config key `adminGroup`).
        #[arg(long)]
        admin_group: Option<u32>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Explain whether traffic is allowed, and by which policy and rule, from manifests
    /// (`kubectl get ns,pods,netpol,cnp -A -o yaml` output works as is).
    Trace(policy_cmd::TraceArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Rotate this node's key now (make before break; waits until it is committed).
    Rotate {
        /// The agent's run directory (config key `runDir`).
        #[arg(long, default_value = "/run/wiremesh")]
        run_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum EncryptCommand {
    /// Show the WireGuard interface, this node's public key and every peer.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// List every node in the store with its key epoch, and whether the key this node uses
        /// for it is the one it publishes.
        #[arg(long)]
        all_nodes: bool,
        /// The agent's run directory (config key `runDir`), where wiremesh.sock lives.
        #[arg(long, default_value = "/run/wiremesh")]
        run_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent { config } => run_agent(config),
        Command::Guard { config } => run_guard(config),
        Command::Apply { files, run_dir } => policy_api::run_objects(&files, false, &run_dir),
        Command::Delete { files, run_dir } => policy_api::run_objects(&files, true, &run_dir),
        Command::Policy {
            command: PolicyCommand::Trace(args),
        } => policy_cmd::run_trace(args),
        Command::Datapath {
            interface,
            listen_port,
            key_file,
            pid_file,
            admin_group,
        } => {
            init_logging();
            let opts = wiremesh_datapath::process::Options {
                interface,
                listen_port,
                key_file,
                pid_file,
                admin_group,
            };
            report(
                "wiremesh datapath",
                runtime()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(wiremesh_datapath::process::run(opts))),
            )
        }
        Command::Keys {
            command: KeysCommand::Rotate { run_dir },
        } => {
            let socket = run_dir.join("wiremesh.sock");
            let result = runtime().map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(admin::request(
                    &socket,
                    hyper::Method::POST,
                    admin::ROTATE_PATH,
                ))
            });
            match result.and_then(|body| Ok(serde_json::from_str::<status::EncryptStatus>(&body)?))
            {
                Ok(s) => {
                    println!(
                        "Rotated: key epoch {}, public key {}",
                        s.key_epoch, s.public_key
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("wiremesh keys rotate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Encrypt {
            command:
                EncryptCommand::Status {
                    json,
                    all_nodes,
                    run_dir,
                },
        } => encrypt_status(json, all_nodes, run_dir),
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn report(what: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(path: PathBuf) -> ExitCode {
    init_logging();
    let config = match config::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wiremesh agent: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(agent::run(config)));
    report("wiremesh agent", result)
}

fn run_guard(path: PathBuf) -> ExitCode {
    let config = match config::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wiremesh guard: {e}");
            return ExitCode::from(2);
        }
    };
    match strict::guard_once(&config) {
        Ok(done) => {
            if !config.strict_mode {
                eprintln!("wiremesh guard: WARNING: {done}");
            } else {
                println!("wiremesh guard: {done}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wiremesh guard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn encrypt_status(json: bool, all_nodes: bool, run_dir: PathBuf) -> ExitCode {
    let socket = run_dir.join("wiremesh.sock");
    let path = if all_nodes {
        admin::NODES_PATH
    } else {
        admin::STATUS_PATH
    };
    let result = runtime().map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            let body = admin::request(&socket, hyper::Method::GET, path).await?;
            if json {
                return Ok(body);
            }
            if all_nodes {
                let nodes: Vec<status::NodeStatus> = serde_json::from_str(&body)?;
                return Ok(status::render_nodes(&nodes));
            }
            let status: status::EncryptStatus = serde_json::from_str(&body)?;
            Ok(status.render(std::time::SystemTime::now()))
        })
    });
    match result {
        Ok(out) => {
            print!("{out}");
            if json {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wiremesh encrypt status: {e:#}");
            ExitCode::FAILURE
        }
    }
}
