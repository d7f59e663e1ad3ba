//! `wiremesh cleanup`: the node-side half of uninstalling (crate::cleanup).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;

/// `wiremesh cleanup --config FILE [--purge] [--wait]`. Refuses while an agent answers on the
/// admin socket: it would put everything back.
pub fn run(path: PathBuf, purge: bool, wait: bool) -> ExitCode {
    let config = match config::Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wiremesh cleanup: {e}");
            return ExitCode::from(2);
        }
    };
    let socket = config.admin_socket();
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        eprintln!(
            "wiremesh cleanup: an agent is running (it answers on {}); stop it first \
             (kubectl delete the DaemonSet, or systemctl disable --now wiremesh)",
            socket.display()
        );
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wiremesh cleanup: starting a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::cleanup::run(&config, purge)) {
        Ok(report) => {
            for line in &report.removed {
                println!("wiremesh cleanup: {line}");
            }
            if report.removed.is_empty() && report.failed.is_empty() {
                println!("wiremesh cleanup: nothing of wiremesh's was left on this node");
            }
            for line in &report.failed {
                eprintln!("wiremesh cleanup: FAILED {line}");
            }
            if report.failed.is_empty() {
                if wait {
                    runtime.block_on(wait_for_sigterm());
                }
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("wiremesh cleanup: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Says it is waiting (once the handlers are in place, so a SIGTERM right after the line is
/// caught) and returns on SIGTERM or SIGINT.
async fn wait_for_sigterm() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    let interrupted = tokio::signal::ctrl_c();
    println!("wiremesh cleanup: done; waiting for SIGTERM");
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupted => {}
    }
}
