//! The fake API server's resources other than Nodes (for the object store): routing of their
//! paths, list/watch/get/create, discovery, and the helpers tests use to change them.

use super::*;

/// Helpers for the other resources; the Node tests (`kubernetes.rs`) use none of them.
#[allow(dead_code, reason = "used by kubernetes_objects.rs only")]
impl FakeApiServer {
    /// Creates or replaces an object of a resource other than Nodes (chosen by its `kind`;
    /// namespaced kinds default to `default`), as `kubectl apply` would.
    pub fn put(&self, manifest: Value) {
        self.put_with(manifest, false);
    }

    /// Like [`FakeApiServer::put`], but drops the event history: watches get 410 Gone and must
    /// relist to see the change. Open watches are ended.
    pub fn put_compacting(&self, manifest: Value) {
        self.put_with(manifest, true);
    }

    fn put_with(&self, manifest: Value, compact: bool) {
        let kind = manifest["kind"].as_str().expect("kind");
        let r = resource_of_kind(kind);
        let name = manifest["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        let ns = match manifest["metadata"]["namespace"].as_str() {
            _ if !r.namespaced => String::new(),
            Some(ns) => ns.to_owned(),
            None => "default".into(),
        };
        self.shared.change_object(
            r,
            &ns,
            &name,
            |old| {
                let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
                Some((event, Some(manifest)))
            },
            compact,
        );
    }

    /// Deletes an object of a resource other than Nodes (`namespace` empty if cluster-scoped).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let r = resource_of_kind(kind);
        let gone = |_: Option<&Value>| Some(("DELETED", None));
        self.shared.change_object(r, namespace, name, gone, false);
    }

    /// Like [`FakeApiServer::delete`], but drops the event history (see `put_compacting`).
    pub fn delete_compacting(&self, kind: &str, namespace: &str, name: &str) {
        let r = resource_of_kind(kind);
        let gone = |_: Option<&Value>| Some(("DELETED", None));
        self.shared.change_object(r, namespace, name, gone, true);
    }

    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = resource_of_kind(kind);
        let st = self.shared.state.lock().expect("state lock");
        st.objects
            .get(&(r.plural, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Installs or uninstalls the `cilium.io` CRDs (their objects are kept, as if the CRDs had
    /// been reinstalled with them).
    pub fn set_cilium_crds(&self, installed: bool) {
        self.shared
            .state
            .lock()
            .expect("state lock")
            .cilium_uninstalled = !installed;
    }

    /// How many creates were answered 409 AlreadyExists.
    pub fn create_conflicts(&self) -> u32 {
        self.shared
            .state
            .lock()
            .expect("state lock")
            .create_conflicts
    }
}

impl Shared {
    /// Like [`Shared::change`] for the other resources: `f` names the event and gives the new
    /// object (`None` deletes), or leaves everything as it is (`None`). Returns the object as
    /// stored (or as it was, deleted).
    pub(super) fn change_object(
        &self,
        r: &'static Resource,
        namespace: &str,
        name: &str,
        f: impl FnOnce(Option<&Value>) -> Option<(&'static str, Option<Value>)>,
        compact: bool,
    ) -> Option<Value> {
        let mut st = self.state.lock().expect("state lock");
        let key = (r.plural, namespace.to_owned(), name.to_owned());
        let (event, new) = f(st.objects.get(&key))?;
        st.rv += 1;
        let rv = st.rv;
        let object = match new {
            Some(mut v) => {
                v["apiVersion"] = r.group_version.into();
                v["kind"] = r.kind.into();
                let meta = &mut v["metadata"];
                meta["name"] = name.into();
                if r.namespaced {
                    meta["namespace"] = namespace.into();
                }
                meta["resourceVersion"] = rv.to_string().into();
                meta["managedFields"] = json!([{ "manager": "kubectl", "operation": "Apply" }]);
                if meta.get("uid").is_none() {
                    meta["uid"] = format!("uid-{name}-{rv}").into();
                    meta["creationTimestamp"] = "2026-01-01T00:00:00Z".into();
                }
                st.objects.insert(key, v.clone());
                v
            }
            None => {
                let mut v = st.objects.remove(&key)?;
                v["metadata"]["resourceVersion"] = rv.to_string().into();
                v
            }
        };
        if compact {
            st.log.clear();
            st.object_log.clear();
            st.compacted = rv;
        } else {
            let e = json!({ "type": event, "object": object });
            st.object_log.push((rv, r.plural, e));
        }
        drop(st);
        self.head.send_replace(rv);
        Some(object)
    }
}

/// Where a request for a resource other than Nodes goes.
pub(super) enum Route {
    Served(At),
    /// A `cilium.io` path while the CRDs are uninstalled.
    NotInstalled,
    Unknown,
}

/// A collection (`name` `None`) or one object, in one namespace or (`None`) all.
pub(super) struct At {
    r: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
}

pub(super) fn route(shared: &Shared, path: &str) -> Route {
    let (group_version, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("v1".to_owned(), rest)
    } else if let Some(rest) = path.strip_prefix("/apis/") {
        let mut parts = rest.splitn(3, '/');
        let (Some(g), Some(v), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            return Route::Unknown;
        };
        (format!("{g}/{v}"), rest)
    } else {
        return Route::Unknown;
    };
    if group_version.starts_with("cilium.io/")
        && shared.state.lock().expect("state lock").cilium_uninstalled
    {
        return Route::NotInstalled;
    }
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group_version == group_version && r.plural == plural)
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let at = match segments.as_slice() {
        ["namespaces", ns, plural] => find(plural).filter(|r| r.namespaced).map(|r| At {
            r,
            namespace: Some((*ns).to_owned()),
            name: None,
        }),
        ["namespaces", ns, plural, name] => find(plural).filter(|r| r.namespaced).map(|r| At {
            r,
            namespace: Some((*ns).to_owned()),
            name: Some((*name).to_owned()),
        }),
        [plural] => find(plural).map(|r| At {
            r,
            namespace: None,
            name: None,
        }),
        [plural, name] => find(plural).filter(|r| !r.namespaced).map(|r| At {
            r,
            namespace: None,
            name: Some((*name).to_owned()),
        }),
        _ => None,
    };
    at.map_or(Route::Unknown, Route::Served)
}

pub(super) async fn serve_resource(
    shared: &Arc<Shared>,
    method: Method,
    at: At,
    query: &BTreeMap<String, String>,
    req: Request<Incoming>,
) -> Response<Body> {
    let r = at.r;
    match (method, at.name) {
        (Method::GET, None) if query.get("watch").is_some_and(|w| w != "false") => {
            watch_events(shared, query, Watched::Objects(r, at.namespace))
        }
        (Method::GET, None) => {
            let st = shared.state.lock().expect("state lock");
            let items: Vec<&Value> = st
                .objects
                .iter()
                .filter(|((plural, ns, _), _)| {
                    *plural == r.plural && at.namespace.as_ref().is_none_or(|want| want == ns)
                })
                .map(|(_, v)| v)
                .collect();
            let list = json!({
                "kind": format!("{}List", r.kind), "apiVersion": r.group_version,
                "metadata": { "resourceVersion": st.rv.to_string() }, "items": items,
            });
            full(StatusCode::OK, &list)
        }
        (Method::GET, Some(name)) => {
            let ns = at.namespace.unwrap_or_default();
            let st = shared.state.lock().expect("state lock");
            match st.objects.get(&(r.plural, ns, name.clone())) {
                Some(v) => full(StatusCode::OK, v),
                None => object_not_found(r, &name),
            }
        }
        (Method::POST, None) if r.plural == "configmaps" && at.namespace.is_some() => {
            let ns = at.namespace.unwrap_or_default();
            create(shared, r, &ns, req).await
        }
        (method, _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "the fake API server does not serve {method} on {}",
                r.plural
            ),
        ),
    }
}

/// `POST`: 201 with the object, or 409 `AlreadyExists` if the name is taken.
pub(super) async fn create(
    shared: &Shared,
    r: &'static Resource,
    ns: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let Ok(body) = req.into_body().collect().await else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "body".into());
    };
    let object: Value = match serde_json::from_slice(&body.to_bytes()) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
        let msg = "metadata.name: Required value".to_string();
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", msg);
    };
    let mut exists = false;
    // The existence check and the insert happen under the one state lock.
    let create = |old: Option<&Value>| {
        exists = old.is_some();
        (!exists).then_some(("ADDED", Some(object)))
    };
    let created = shared.change_object(r, ns, &name, create, false);
    if exists {
        shared.state.lock().expect("state lock").create_conflicts += 1;
        let msg = format!("{} \"{name}\" already exists", r.plural);
        let mut body = status(StatusCode::CONFLICT, "AlreadyExists", msg);
        body["details"] = json!({ "name": name, "kind": r.plural });
        return full(StatusCode::CONFLICT, &body);
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

pub(super) fn object_not_found(r: &Resource, name: &str) -> Response<Body> {
    let msg = format!("{} \"{name}\" not found", r.plural);
    error(StatusCode::NOT_FOUND, "NotFound", msg)
}

/// What a real API server answers for a path no installed group serves.
pub(super) fn page_not_found() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from("404 page not found\n")).boxed_unsync());
    *resp.status_mut() = StatusCode::NOT_FOUND;
    let text = hyper::header::HeaderValue::from_static("text/plain; charset=utf-8");
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, text);
    resp
}

/// `GET /apis`: the API groups served besides the core group.
pub(super) fn discovery(shared: &Shared) -> Response<Body> {
    let mut groups = vec!["networking.k8s.io/v1"];
    if !shared.state.lock().expect("state lock").cilium_uninstalled {
        groups.push("cilium.io/v2");
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|gv| {
            let (name, version) = gv.split_once('/').expect("group/version");
            let v = json!({ "groupVersion": gv, "version": version });
            json!({ "name": name, "versions": [v.clone()], "preferredVersion": v })
        })
        .collect();
    let list = json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups });
    full(StatusCode::OK, &list)
}
