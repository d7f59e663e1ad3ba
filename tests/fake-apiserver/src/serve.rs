//! The HTTP(S) front: accepts connections, authenticates the bearer token, authorizes the
//! request with RBAC, routes it to discovery, CRUD or watch, and writes the audit record.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::audit::{AuditLog, AuditRecord};
use crate::auth::Tokens;
use crate::crud::{self, Target};
use crate::rbac::{Attributes, Authorizer, Decision};
use crate::request::{self, RequestInfo};
use crate::response::{error, full, page_not_found, status, text, Body};
use crate::state::Store;
use crate::{discovery, resources, watch};

/// Everything a request is answered from.
pub struct Shared {
    pub store: Arc<Store>,
    pub tokens: Tokens,
    /// `None`: every authenticated user may do everything.
    pub authorizer: Option<Authorizer>,
    pub audit: Option<AuditLog>,
}

/// Serves until the task is aborted (which drops every connection, watches included).
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let mut conns = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("wiremesh-fake-apiserver: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            match tls {
                None => connection(TokioIo::new(stream), shared).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => connection(TokioIo::new(stream), shared).await,
                    Err(e) => eprintln!("wiremesh-fake-apiserver: TLS handshake: {e}"),
                },
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

async fn connection<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), req));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/livez") {
        return Ok(text(StatusCode::OK, "ok"));
    }
    let query = request::query(req.uri().query());
    let info = request::parse(req.method().as_str(), &path, &query);
    let header = req.headers().get(hyper::header::AUTHORIZATION);
    let user = match shared
        .tokens
        .authenticate(header.and_then(|h| h.to_str().ok()))
    {
        Ok(user) => user,
        Err(_) => {
            let resp = error(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Unauthorized".into(),
            );
            shared.audit(&attributes(&info, "", &[]), &resp);
            return Ok(resp);
        }
    };
    let attrs = attributes(&info, &user.name, &user.groups);
    let decision = match &shared.authorizer {
        Some(a) => a.authorize(&attrs),
        None => Decision::Allow,
    };
    let resp = match decision {
        Decision::Deny(message) => forbidden(&info, message),
        Decision::Allow => route(&shared, info, &query, req).await,
    };
    shared.audit(&attrs, &resp);
    Ok(resp)
}

impl Shared {
    fn audit(&self, attrs: &Attributes, resp: &Response<Body>) {
        if let Some(log) = &self.audit {
            log.record(&AuditRecord::new(attrs, resp.status().as_u16()));
        }
    }
}

fn attributes(info: &RequestInfo, user: &str, groups: &[String]) -> Attributes {
    Attributes {
        user: user.to_owned(),
        groups: groups.to_vec(),
        verb: info.verb.clone(),
        api_group: info.api_group.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone(),
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        path: info.path.clone(),
    }
}

fn forbidden(info: &RequestInfo, message: String) -> Response<Body> {
    let mut body = status(StatusCode::FORBIDDEN, "Forbidden", message);
    body["details"] = json!({ "name": info.name, "group": info.api_group, "kind": info.resource });
    full(StatusCode::FORBIDDEN, &body)
}

async fn route(
    shared: &Arc<Shared>,
    info: RequestInfo,
    query: &request::Query,
    req: Request<Incoming>,
) -> Response<Body> {
    let store = &shared.store;
    if !info.is_resource_request() {
        let st = store.lock();
        return match (req.method(), discovery::document(&st, &info.path)) {
            (&Method::GET, Some(resp)) => resp,
            _ => not_served(req.method(), &info.path),
        };
    }
    let group_served = discovery::served(&store.lock(), &info.api_group);
    let Some(r) =
        resources::at(&info.api_group, &info.api_version, &info.resource).filter(|_| group_served)
    else {
        let known = resources::group_versions()
            .contains(&(info.api_group.as_str(), info.api_version.as_str()));
        return match known && group_served {
            true => not_served(req.method(), &info.path),
            false => page_not_found(),
        };
    };
    // `status` is served as the object itself: this server keeps no status apart.
    if !matches!(info.subresource.as_str(), "" | "status") {
        return not_served(req.method(), &info.path);
    }
    let namespace = if r.namespaced {
        info.namespace
    } else {
        String::new()
    };
    let t = Target {
        r,
        namespace,
        name: info.name,
    };
    match info.verb.as_str() {
        "watch" => watch::watch(store, &t, query),
        "list" => crud::list(store, &t, query),
        "get" => crud::get(store, &t),
        "create" if t.name.is_empty() => crud::create(store, &t, req).await,
        "update" => crud::replace(store, &t, req).await,
        "patch" => crud::patch(store, &t, req).await,
        "delete" => crud::delete(store, &t),
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!(
                "the fake API server does not serve {} on {}",
                info.verb, t.r.plural
            ),
        ),
    }
}

fn not_served(method: &Method, path: &str) -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("the server could not find the requested resource ({method} {path})"),
    )
}
