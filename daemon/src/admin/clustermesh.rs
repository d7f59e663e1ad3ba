//! `GET /v1/clustermesh` on the admin API: the cluster mesh as the agent last published it,
//! with each cluster's endpoints and identities from the policy in force. It reads a view and
//! changes nothing.

use super::server::{Reply, Routes};
use super::view::View;
use crate::api::{paths, ClusterMeshStatus};

/// `GET /v1/clustermesh`.
pub fn register(routes: &mut Routes, view: View<ClusterMeshStatus>) {
    routes.get(paths::CLUSTERMESH, move |_| {
        let status = view.get();
        async move { Reply::json(&status) }
    });
}
