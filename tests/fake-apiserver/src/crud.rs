//! Reads and writes of objects: list, get, create (`POST`), replace (`PUT`), patch (merge and
//! strategic merge, applied as a JSON merge patch) and delete, with the real server's status
//! codes and `Status` bodies (404 NotFound, 409 AlreadyExists and Conflict, 422 Invalid).

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::request::{field_selector, Query};
use crate::resources::Resource;
use crate::response::{bad_request, error, error_about, full, status, Body};
use crate::state::{merge, Store};

/// Where a request points: a resource, its namespace (empty if cluster-scoped or all), and the
/// object's name (empty for the collection).
pub struct Target {
    pub r: &'static Resource,
    pub namespace: String,
    pub name: String,
}

pub fn list(store: &Store, t: &Target, query: &Query) -> Response<Body> {
    let (name, namespace) = field_selector(query);
    let st = store.lock();
    let items: Vec<&Value> = st
        .objects
        .iter()
        .filter(|((plural, ns, n), _)| {
            *plural == t.r.plural
                && (t.namespace.is_empty() || *ns == t.namespace)
                && namespace.as_ref().is_none_or(|want| want == ns)
                && name.as_ref().is_none_or(|want| want == n)
        })
        .map(|(_, v)| v)
        .collect();
    let list = json!({
        "kind": format!("{}List", t.r.kind), "apiVersion": t.r.api_version(),
        "metadata": { "resourceVersion": st.rv.to_string() }, "items": items,
    });
    full(StatusCode::OK, &list)
}

pub fn get(store: &Store, t: &Target) -> Response<Body> {
    let st = store.lock();
    match st.objects.get(&key(t)) {
        Some(v) => full(StatusCode::OK, v),
        None => not_found(t),
    }
}

/// `POST`: 201 with the object, or 409 `AlreadyExists` if the name is taken (checked and
/// inserted under one lock, so racing creates have exactly one winner).
pub async fn create(store: &Store, t: &Target, req: Request<Incoming>) -> Response<Body> {
    let object = match read_object(req, t).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        let msg = format!(
            "{} \"\" is invalid: metadata.name: Required value",
            t.r.kind
        );
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", msg);
    };
    let ns = match object["metadata"]["namespace"].as_str() {
        _ if !t.r.namespaced => String::new(),
        Some(ns) => ns.to_owned(),
        None => "default".to_owned(),
    };
    let mut exists = false;
    let create = |old: Option<&Value>| {
        exists = old.is_some();
        (!exists).then_some(("ADDED", Some(object)))
    };
    let created = store.change(t.r, &ns, &name, create, false);
    if exists {
        store.lock().create_conflicts += 1;
        let msg = format!("{} \"{name}\" already exists", t.r.plural);
        let (code, reason) = (StatusCode::CONFLICT, "AlreadyExists");
        return error_about(code, reason, msg, t.r.group, t.r.plural, &name);
    }
    match created {
        Some(v) => full(StatusCode::CREATED, &v),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "create".into(),
        ),
    }
}

/// `PUT`: the whole object replaced; 404 if it does not exist, 409 if it carries a
/// resourceVersion that is not the current one (none replaces unconditionally).
pub async fn replace(store: &Store, t: &Target, req: Request<Incoming>) -> Response<Body> {
    let mut object = match read_object(req, t).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    if object["metadata"]["name"].as_str() != Some(t.name.as_str()) {
        let msg = format!(
            "the name of the object ({:?}) does not match the name on the URL ({:?})",
            object["metadata"]["name"].as_str().unwrap_or(""),
            t.name
        );
        return bad_request(msg);
    }
    let wanted = object["metadata"]["resourceVersion"].take();
    let mut outcome = Ok(());
    let update = |old: Option<&Value>| {
        let Some(old) = old else {
            outcome = Err(false);
            return None;
        };
        let stale = !wanted.is_null() && wanted != old["metadata"]["resourceVersion"];
        if stale {
            outcome = Err(true);
            return None;
        }
        Some(("MODIFIED", Some(object)))
    };
    let replaced = store.change(t.r, &t.namespace, &t.name, update, false);
    match (outcome, replaced) {
        (Err(true), _) => conflict(t),
        (Err(false), _) | (_, None) => not_found(t),
        (Ok(()), Some(v)) => full(StatusCode::OK, &v),
    }
}

/// `PATCH` with `merge-patch+json` or `strategic-merge-patch+json` (applied as a JSON merge
/// patch, which is what strategic merge does for maps; lists are replaced whole). A
/// `metadata.resourceVersion` in the patch is a precondition (409 Conflict if stale).
pub async fn patch(store: &Store, t: &Target, req: Request<Incoming>) -> Response<Body> {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let base = content_type.split(';').next().unwrap_or("").trim();
    if !matches!(
        base,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        let msg = format!("the fake API server does not take {content_type:?} patches");
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            msg,
        );
    }
    let mut patch = match read_json(req).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let wanted = patch["metadata"]
        .as_object_mut()
        .and_then(|m| m.remove("resourceVersion"))
        .filter(|v| !v.is_null());
    let conflict_now = {
        let mut st = store.lock();
        st.patches += 1;
        let Some(current) = st.objects.get(&key(t)) else {
            return not_found(t);
        };
        let stale = wanted.is_some_and(|w| w != current["metadata"]["resourceVersion"]);
        let forced = st.forced_conflicts > 0;
        st.forced_conflicts = st.forced_conflicts.saturating_sub(1);
        forced || stale
    };
    if conflict_now {
        return conflict(t);
    }
    // Between the check and the change another request may slip in; the tests' writers never
    // race on one object with a precondition.
    let apply = |old: Option<&Value>| Some(("MODIFIED", Some(merge(Some(old?), &patch)?)));
    match store.change(t.r, &t.namespace, &t.name, apply, false) {
        Some(v) => full(StatusCode::OK, &v),
        None => not_found(t),
    }
}

/// `DELETE`: 200 with the object as it was, or 404.
pub fn delete(store: &Store, t: &Target) -> Response<Body> {
    let gone = |old: Option<&Value>| old.map(|_| ("DELETED", None));
    match store.change(t.r, &t.namespace, &t.name, gone, false) {
        Some(v) => full(StatusCode::OK, &v),
        None => not_found(t),
    }
}

fn key(t: &Target) -> (&'static str, String, String) {
    (t.r.plural, t.namespace.clone(), t.name.clone())
}

pub fn not_found(t: &Target) -> Response<Body> {
    let msg = format!("{} \"{}\" not found", t.r.plural, t.name);
    error_about(
        StatusCode::NOT_FOUND,
        "NotFound",
        msg,
        t.r.group,
        t.r.plural,
        &t.name,
    )
}

fn conflict(t: &Target) -> Response<Body> {
    let msg = format!(
        "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please \
         apply your changes to the latest version and try again",
        t.r.plural, t.name
    );
    let mut body = status(StatusCode::CONFLICT, "Conflict", msg);
    body["details"] = json!({ "name": t.name, "group": t.r.group, "kind": t.r.plural });
    full(StatusCode::CONFLICT, &body)
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| bad_request(format!("reading the request body: {e}")))?;
    serde_json::from_slice(&body.to_bytes())
        .map_err(|e| bad_request(format!("the request body is not JSON: {e}")))
}

/// The body of a create or replace: a JSON object of the URL's kind, in the URL's namespace
/// (which it takes when it names none).
async fn read_object(req: Request<Incoming>, t: &Target) -> Result<Value, Response<Body>> {
    let mut object = read_json(req).await?;
    if !object.is_object() {
        return Err(bad_request("the request body is not a JSON object".into()));
    }
    if let Some(kind) = object["kind"].as_str().filter(|k| *k != t.r.kind) {
        let msg = format!("{kind} sent to the {} endpoint", t.r.plural);
        return Err(bad_request(msg));
    }
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if t.r.namespaced && !t.namespace.is_empty() {
        let meta = &mut object["metadata"];
        match meta["namespace"].as_str() {
            Some(ns) if ns != t.namespace => {
                let msg = "the namespace of the provided object does not match the namespace \
                           sent on the request";
                return Err(bad_request(msg.into()));
            }
            _ => meta["namespace"] = t.namespace.clone().into(),
        }
    }
    Ok(object)
}
