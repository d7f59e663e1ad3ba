//! `wiremesh`: the node agent (`wiremesh agent`) and the operator CLI (`wiremesh encrypt status`).

mod admin;
mod agent;
mod config;
mod datapath;
mod device;
mod kernel;
mod netlink;
mod status;
mod userspace;

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
    /// Encryption commands.
    Encrypt {
        #[command(subcommand)]
        command: EncryptCommand,
    },
}

#[derive(Subcommand)]
enum EncryptCommand {
    /// Show the WireGuard interface, this node's public key and every peer.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The agent's run directory (config key `runDir`), where wiremesh.sock lives.
        #[arg(long, default_value = "/run/wiremesh")]
        run_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent { config } => run_agent(config),
        Command::Encrypt {
            command: EncryptCommand::Status { json, run_dir },
        } => encrypt_status(json, run_dir),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn run_agent(path: PathBuf) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("wiremesh agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn encrypt_status(json: bool, run_dir: PathBuf) -> ExitCode {
    let socket = run_dir.join("wiremesh.sock");
    let result = runtime().map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            let body = admin::get(&socket, admin::STATUS_PATH).await?;
            if json {
                return Ok(body);
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
