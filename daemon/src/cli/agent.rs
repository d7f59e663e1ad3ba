//! The long-running programs: `wiremesh agent`, `wiremesh guard` (strict mode at boot),
//! `wiremesh datapath` and `wiremesh proxy`. Each loads what it needs, runs, and turns the
//! outcome into an exit code: 2 for a config that does not load, 1 for a failure while running.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::{agent, config, runtime, strict};

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

/// `wiremesh agent`.
pub fn run_agent(path: PathBuf) -> ExitCode {
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

/// `wiremesh guard`.
pub fn run_guard(path: PathBuf) -> ExitCode {
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

/// `wiremesh proxy`.
pub fn run_proxy(opts: wiremesh_l7::process::Options) -> ExitCode {
    init_logging();
    report(
        "wiremesh proxy",
        runtime()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(wiremesh_l7::process::run(opts))),
    )
}

/// `wiremesh datapath`.
pub fn run_datapath(opts: wiremesh_datapath::process::Options) -> ExitCode {
    init_logging();
    report(
        "wiremesh datapath",
        runtime()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(wiremesh_datapath::process::run(opts))),
    )
}
