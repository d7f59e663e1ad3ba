//! The admin server: the local admin API on `<runDir>/wiremesh.sock` (see [`crate::api`] for
//! its paths and types) and the Prometheus listener on `metricsAddress`.
//!
//! `server.rs` serves the socket (who may ask, limits, routing) and knows no endpoint; each
//! subsystem's file registers its endpoints and reads only the views it is given
//! (`view.rs`): `encrypt.rs` status, nodes and `/healthz`; `keys.rs` rotation; `objects.rs`
//! apply/delete; `trace.rs` the online policy trace; `metrics.rs` `/metrics`; `flows.rs` recent flows; `clustermesh.rs` the cluster mesh; `probes.rs` kubelet's `/healthz` and `/readyz` on `healthAddress`. Nothing here
//! imports the agent: the agent builds [`AdminViews`] from its own state.

pub mod clustermesh;
pub mod encrypt;
pub mod flows;
pub mod keys;
pub mod metrics;
pub mod objects;
pub mod probes;
mod server;
pub mod tcp;
pub mod trace;
pub mod view;

use std::sync::Arc;

pub use server::{Acceptor, AdminServer, BindError, Call, Reply, Routes};

/// Everything the admin API reads, by subsystem.
pub struct AdminViews {
    pub encrypt: Arc<encrypt::EncryptView>,
    pub rotate: keys::Rotate,
    pub objects: Arc<objects::ObjectsView>,
    pub policy: view::View<view::PolicyView>,
    pub metrics: Arc<metrics::MetricsView>,
    /// Recent flows (`wiremesh observe`).
    pub flows: flows::Flows,
    /// The cluster mesh (`wiremesh clustermesh status`).
    pub clustermesh: view::View<crate::api::ClusterMeshStatus>,
}

impl AdminViews {
    /// Every subsystem's endpoints.
    pub fn routes(&self) -> Arc<Routes> {
        let mut routes = Routes::default();
        encrypt::register(&mut routes, self.encrypt.clone());
        keys::register(&mut routes, self.rotate.clone(), self.encrypt.clone());
        objects::register(&mut routes, self.objects.clone());
        trace::register(&mut routes, self.policy.clone());
        metrics::register(&mut routes, self.metrics.clone());
        flows::register(&mut routes, self.flows.clone());
        clustermesh::register(&mut routes, self.clustermesh.clone());
        Arc::new(routes)
    }
}
