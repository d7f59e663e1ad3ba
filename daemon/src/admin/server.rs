//! The admin server on `<runDir>/wiremesh.sock` (HTTP/1.1 over a Unix socket): who may ask
//! (root everything, `adminGroup` only GET, checked by the peer's credentials whatever the
//! file mode), the request limits, and the routing table the subsystems fill ([`Routes`]).
//! It knows no endpoint itself and reads no agent state: handlers do, through their views.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};
use wiremesh_datapath::listen::{self, Access, Limits, Refused, Role};

/// Why the admin socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("creating {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding admin socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting the owner and mode of {}", path.display())]
    Restrict {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a handler gets: the query string and, on routes that take one, the request body.
pub struct Call {
    pub query: Option<String>,
    pub body: Bytes,
}

/// What a handler answers.
pub struct Reply {
    pub code: StatusCode,
    pub body: String,
}

impl Reply {
    pub fn ok(body: String) -> Self {
        Self::with(StatusCode::OK, body)
    }

    pub fn with(code: StatusCode, body: String) -> Self {
        Self { code, body }
    }

    /// 200 with `value` as JSON.
    pub fn json<T: Serialize>(value: &T) -> Self {
        Self::ok(serde_json::to_string(value).unwrap_or_default())
    }

    /// `code` with the error and its causes as text.
    pub fn error(code: StatusCode, e: &dyn std::error::Error) -> Self {
        Self::with(code, format!("{}\n", crate::api::error_chain(e)))
    }

    /// `Ok` as JSON, an error as 503: what the agent cannot do now.
    pub fn json_or_unavailable<T: Serialize, E: std::error::Error>(r: Result<T, E>) -> Self {
        match r {
            Ok(value) => Self::json(&value),
            Err(e) => Self::error(StatusCode::SERVICE_UNAVAILABLE, &e),
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from(self.body)));
        *r.status_mut() = self.code;
        r
    }
}

type Handler = Arc<dyn Fn(Call) -> BoxFuture<'static, Reply> + Send + Sync>;

struct Route {
    handler: Handler,
    /// Whether the body is read (within the limits) before the handler runs.
    takes_body: bool,
}

/// The admin API's endpoints, as each subsystem registered them.
#[derive(Default)]
pub struct Routes {
    table: HashMap<(Method, &'static str), Route>,
}

impl Routes {
    /// `GET path`: readers may call it.
    pub fn get<F, Fut>(&mut self, path: &'static str, handler: F)
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        self.add(Method::GET, path, false, handler);
    }

    /// `POST path` whose body is ignored (never read).
    pub fn post<F, Fut>(&mut self, path: &'static str, handler: F)
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        self.add(Method::POST, path, false, handler);
    }

    /// `POST path` with a body, read within the server's limits first.
    pub fn post_body<F, Fut>(&mut self, path: &'static str, handler: F)
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        self.add(Method::POST, path, true, handler);
    }

    fn add<F, Fut>(&mut self, method: Method, path: &'static str, takes_body: bool, handler: F)
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |call| Box::pin(handler(call)));
        let route = Route {
            handler,
            takes_body,
        };
        self.table.insert((method, path), route);
    }

    /// Answers one request the caller is allowed to make: 404 for an unknown method or path.
    pub async fn dispatch(&self, req: Request<Incoming>, limits: &Limits) -> Reply {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let Some(route) = self.table.get(&(method, path.as_str())) else {
            return Reply::with(StatusCode::NOT_FOUND, "not found\n".into());
        };
        let query = req.uri().query().map(str::to_string);
        let body = if route.takes_body {
            match crate::http::read_body(req.into_body(), limits).await {
                Ok(b) => b,
                Err((code, text)) => return Reply::with(code, text),
            }
        } else {
            Bytes::new()
        };
        (route.handler)(Call { query, body }).await
    }
}

/// The admin socket, bound; dropping it removes the socket file. Its [`Acceptor`] serves it.
pub struct AdminServer {
    path: PathBuf,
    acceptor: Acceptor,
}

/// What serves the admin socket: [`Acceptor::serve`] is the accept loop, which the agent runs
/// as a supervised task. A restarted loop serves the same listening socket, so clients never
/// see the file vanish.
#[derive(Clone)]
pub struct Acceptor {
    listener: Arc<UnixListener>,
    routes: Arc<Routes>,
    access: Access,
    limits: Limits,
}

impl AdminServer {
    /// Binds `path` for `routes`: root may do everything, `access`'s reader group may only
    /// read (GET), anyone else gets 403 whatever the socket file's mode. Nothing is served
    /// before its [`Acceptor::serve`] runs.
    pub fn bind(
        path: &Path,
        routes: Arc<Routes>,
        access: Access,
        limits: Limits,
    ) -> Result<Self, BindError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| BindError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| BindError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        access
            .restrict_socket_file(path)
            .map_err(|source| BindError::Restrict {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            acceptor: Acceptor {
                listener: Arc::new(listener),
                routes,
                access,
                limits,
            },
        })
    }

    pub fn acceptor(&self) -> Acceptor {
        self.acceptor.clone()
    }
}

impl Acceptor {
    /// The accept loop: one task per connection, at most `limits.max_conns` at once. It only
    /// ends by panicking; dropping it stops accepting (connections already accepted go on).
    pub fn serve(&self) -> impl Future<Output = ()> + Send + 'static {
        let (listener, routes) = (self.listener.clone(), self.routes.clone());
        let (access, limits) = (self.access, self.limits);
        listen::accept_loop(
            "admin",
            limits.max_conns,
            move || {
                let listener = listener.clone();
                async move { listener.accept().await.map(|(s, _)| s) }
            },
            move |stream: UnixStream, permit| {
                let role = access.of_unix(&stream);
                let routes = routes.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        handle(req, routes.clone(), role.clone(), limits)
                    });
                    crate::http::serve_http(stream, limits, svc).await;
                    drop(permit);
                });
            },
        )
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle(
    req: Request<Incoming>,
    routes: Arc<Routes>,
    role: Result<Role, Refused>,
    limits: Limits,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = match role {
        Err(refused) => {
            tracing::warn!(path = req.uri().path(), "admin API: {refused}");
            Reply::with(StatusCode::FORBIDDEN, format!("{refused}\n"))
        }
        Ok(Role::Reader) if req.method() != Method::GET => {
            let refused = Refused::ReadOnly {
                role: "a member of adminGroup",
            };
            Reply::with(StatusCode::FORBIDDEN, format!("{refused}\n"))
        }
        Ok(_) => routes.dispatch(req, &limits).await,
    };
    Ok(reply.into_response())
}
