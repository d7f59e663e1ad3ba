//! `wiremesh apply/delete -f` on the agent's side: the set the store would hold afterwards must
//! load as a whole (every policy valid, no duplicates), or nothing is written. It reads the
//! object store's and the node records' latest views, and writes only through the object
//! store; it never touches the policy in force.

use std::error::Error;
use std::sync::Arc;

use hyper::StatusCode;
use keymgr::store::objects::{ObjectRef, ObjectSet, ObjectStore, StoredObject};
use keymgr::Snapshot;
use tokio::sync::watch;

use super::server::{Reply, Routes};
use crate::api::{paths, ObjectsRequest, ObjectsResponse};

/// Loads an object set as the agent would (with the node records it knows), to refuse what
/// would not load before it is stored.
pub type Validate =
    Arc<dyn Fn(&ObjectSet, &Snapshot) -> Result<(), Box<dyn Error + Send + Sync>> + Send + Sync>;

/// What apply/delete reads and writes.
pub struct ObjectsView {
    pub store: Arc<ObjectStore>,
    pub nodes: watch::Receiver<Arc<Snapshot>>,
    pub validate: Validate,
}

/// Why an apply/delete stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("{store} has not been read yet (is it reachable?); nothing was stored")]
    NotSynced { store: String },
    #[error("{origin}: {reason}")]
    BadManifest { origin: String, reason: String },
    #[error("{0}")]
    Encode(serde_json::Error),
    #[error("{reason}\nnothing was stored; the policy in force is unchanged")]
    DoesNotLoad {
        reason: Box<dyn Error + Send + Sync>,
    },
    #[error("{source}; nothing is in force until it is stored")]
    Write { source: keymgr::StoreError },
}

impl ObjectsError {
    /// 400 for what the user must fix, 503 for what the agent cannot do now.
    fn status(&self) -> StatusCode {
        match self {
            Self::NotSynced { .. } | Self::Write { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadManifest { .. } | Self::Encode(_) | Self::DoesNotLoad { .. } => {
                StatusCode::BAD_REQUEST
            }
        }
    }
}

/// `POST /v1/objects`.
pub fn register(routes: &mut Routes, view: Arc<ObjectsView>) {
    routes.post_body(paths::OBJECTS, move |call| {
        let view = view.clone();
        async move {
            let request: ObjectsRequest = match serde_json::from_slice(&call.body) {
                Ok(r) => r,
                Err(e) => return Reply::with(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            let current = view.store.subscribe().borrow().clone();
            let nodes = view.nodes.borrow().clone();
            match change_objects(&view, &current, &nodes, request).await {
                Ok(r) => Reply::json(&r),
                // Only the error's own text: its causes are already in it.
                Err(e) => Reply::with(e.status(), format!("{e}\n")),
            }
        }
    });
}

/// Applies and deletes `req` against `current`, all or nothing.
pub async fn change_objects(
    view: &ObjectsView,
    current: &ObjectSet,
    nodes: &Snapshot,
    req: ObjectsRequest,
) -> Result<ObjectsResponse, ObjectsError> {
    if !current.synced {
        let store = view.store.describe();
        return Err(ObjectsError::NotSynced { store });
    }
    let bad = |origin: &str, reason: String| ObjectsError::BadManifest {
        origin: origin.to_string(),
        reason,
    };
    let mut next = current.clone();
    let mut resp = ObjectsResponse::default();
    let mut writes = Vec::new();
    let mut deletes = Vec::new();
    for d in &req.delete {
        let r = ObjectRef::of(&d.manifest).map_err(|e| bad(&d.origin, e.to_string()))?;
        if next.objects.remove(&r).is_some() {
            resp.deleted.push(r.to_string());
            deletes.push(r);
        } else {
            resp.not_found.push(r.to_string());
        }
    }
    for a in req.apply {
        let r = ObjectRef::of(&a.manifest).map_err(|e| bad(&a.origin, e.to_string()))?;
        let text = serde_json::to_string(&a.manifest).map_err(ObjectsError::Encode)?;
        if next.objects.get(&r).is_some_and(|o| o.manifest == text) {
            resp.unchanged.push(r.to_string());
            continue;
        }
        let stored = StoredObject {
            origin: a.origin,
            manifest: text.clone(),
        };
        next.objects.insert(r.clone(), stored);
        resp.configured.push(r.to_string());
        writes.push((r, text));
    }
    (view.validate)(&next, nodes).map_err(|reason| ObjectsError::DoesNotLoad { reason })?;
    if writes.is_empty() && deletes.is_empty() {
        return Ok(resp);
    }
    let written = view.store.write(writes, deletes).await;
    written.map_err(|source| ObjectsError::Write { source })?;
    Ok(resp)
}
