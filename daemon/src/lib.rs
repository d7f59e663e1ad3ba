//! The `wiremesh` library: the node agent, its admin API (wire types and client in `api`, the
//! server in `admin`) and the operator CLI (`cli`), so that they can be tested in process;
//! `main.rs` only parses the command line. The data path is `wiremesh-datapath`, the eBPF
//! enforcement `wiremesh-enforce`.

pub mod admin;
pub mod agent;
pub mod api;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod http;
pub mod l7;
pub mod strict;

/// `encrypt status`'s types under their earlier path (`agent/rotation.rs` formats times with
/// `status::rfc3339`).
pub use api::status;

/// The control plane's runtime: two workers, as the agent and the CLI need no more.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
