//! The `wiremesh` library: every part of the node agent, the data path and the operator CLI, so
//! that they can be tested (and fuzzed) in process; `main.rs` is only the command line.

pub mod admin;
pub mod agent;
pub mod config;
pub mod http;
pub mod metrics;
pub mod policy_api;
pub mod policy_cmd;
pub mod status;
pub mod strict;

/// The control plane's runtime: two workers, as the agent and the CLI need no more.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
