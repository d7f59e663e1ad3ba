//! `GET /v1/clustermesh` on the admin API: the cluster mesh as the agent last published it. It
//! reads one view and changes nothing.

use tokio::sync::watch;

use super::server::{Reply, Routes};
use crate::api::{paths, ClusterMeshStatus};

/// `GET /v1/clustermesh`.
pub fn register(routes: &mut Routes, view: watch::Receiver<ClusterMeshStatus>) {
    routes.get(paths::CLUSTERMESH, move |_| {
        let status = view.borrow().clone();
        async move { Reply::json(&status) }
    });
}
