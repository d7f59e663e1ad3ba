//! `keys rotate` on the admin API: asks the key rotator to rotate now, waits until it reports
//! the rotation committed, and answers the resulting status. The rotator is reached only
//! through [`Rotate`]; this module never touches keys itself.

use std::sync::Arc;

use futures::future::BoxFuture;
use hyper::StatusCode;

use super::encrypt::EncryptView;
use super::server::{Reply, Routes};
use crate::api::paths;

/// Why a rotation asked for through the admin API did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RotationFailed {
    #[error("the key rotator has stopped")]
    RotatorStopped,
    /// The rotator's own account of why it could not rotate (its text only: it names its
    /// causes itself).
    #[error("{0}")]
    Rotator(Box<dyn std::error::Error + Send + Sync>),
}

/// Rotates this node's key now; resolves once the rotation is committed (or failed).
pub type Rotate = Arc<dyn Fn() -> BoxFuture<'static, Result<(), RotationFailed>> + Send + Sync>;

/// `POST /v1/keys/rotate`.
pub fn register(routes: &mut Routes, rotate: Rotate, status: Arc<EncryptView>) {
    routes.post(paths::ROTATE, move |_| {
        let (rotate, status) = (rotate.clone(), status.clone());
        async move {
            if let Err(e) = rotate().await {
                return Reply::error(StatusCode::SERVICE_UNAVAILABLE, &e);
            }
            Reply::json_or_unavailable(status.status().await)
        }
    });
}
