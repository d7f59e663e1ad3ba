//! How the CLI's commands reach the local agent: one [`AgentClient`] request on a runtime of
//! its own. It prints nothing; each command words its own errors.

use crate::api::{AgentClient, ApiError};

/// Why a command could not get its answer from the agent.
#[derive(Debug, thiserror::Error)]
pub(super) enum AskError {
    #[error(transparent)]
    Runtime(std::io::Error),
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Runs `f` against the agent of `run_dir`, on a runtime of its own.
pub(super) fn ask<T, F>(
    run_dir: &std::path::Path,
    f: impl FnOnce(AgentClient) -> F,
) -> Result<T, AskError>
where
    F: std::future::Future<Output = Result<T, ApiError>>,
{
    let client = AgentClient::for_run_dir(run_dir);
    let rt = crate::runtime().map_err(AskError::Runtime)?;
    Ok(rt.block_on(f(client))?)
}
