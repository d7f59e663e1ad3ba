//! `wiremesh encrypt status`, `wiremesh keys rotate` and `wiremesh clustermesh status`: ask the local agent, print what it
//! answers (JSON as the agent sent it, or the text rendering).

use std::path::Path;
use std::process::ExitCode;

use super::ask::ask;
use crate::api::error_chain;

/// `wiremesh encrypt status [--json] [--all-nodes]`.
pub fn status(json: bool, all_nodes: bool, run_dir: &Path) -> ExitCode {
    let result = ask(run_dir, |agent| async move {
        Ok(match (json, all_nodes) {
            (true, false) => agent.status_json().await?,
            (true, true) => agent.nodes_json().await?,
            (false, true) => crate::api::status::render_nodes(&agent.nodes().await?),
            (false, false) => agent.status().await?.render(std::time::SystemTime::now()),
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
            eprintln!("wiremesh encrypt status: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `wiremesh keys rotate`.
pub fn rotate(run_dir: &Path) -> ExitCode {
    match ask(run_dir, |agent| async move { agent.rotate().await }) {
        Ok(s) => {
            println!(
                "Rotated: key epoch {}, public key {}",
                s.key_epoch, s.public_key
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wiremesh keys rotate: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `wiremesh clustermesh status [--json]`.
pub fn clustermesh_status(json: bool, run_dir: &Path) -> ExitCode {
    let result = ask(run_dir, |agent| async move {
        Ok(if json {
            agent.clustermesh_json().await? + "\n"
        } else {
            agent.clustermesh().await?.render()
        })
    });
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wiremesh clustermesh status: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
