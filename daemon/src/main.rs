//! `wiremesh`: the node agent, the data path process and the operator CLI in one binary. The
//! commands live in the library (`wiremesh::cli`); this only parses and dispatches.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    wiremesh::cli::run(wiremesh::cli::Cli::parse())
}
