//! `wiremesh-lab grpc-server` and `wiremesh-lab grpc-call`: a real gRPC service and client
//! (tonic, HTTP/2 cleartext with prior knowledge) for the L7 gRPC test. The service
//! `demo.Greeter` has two unary methods, `SayHello` and `SayGoodbye`; the server answers both and
//! appends `PATH from PEER_IP` to an access log, so a test can prove which calls reached it. The
//! client prints the call's outcome (gRPC status code, message, reply) as one JSON line. The
//! messages are derived by hand with prost: no protoc, no build script.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tonic::body::Body;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

/// The service's full name, the first part of every method path.
const SERVICE: &str = "demo.Greeter";
/// The methods the server implements.
const METHODS: [&str; 2] = ["SayHello", "SayGoodbye"];

#[derive(Clone, PartialEq, prost::Message)]
pub struct GreetRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GreetReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")
}

/// Serves `demo.Greeter` on `port` (every address) until killed.
pub fn serve(port: u16, log: PathBuf) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    let greeter = Greeter {
        log: Arc::new(Mutex::new(file)),
    };
    let addr = SocketAddr::from(([0u16; 8], port));
    runtime()?.block_on(async move {
        tonic::transport::Server::builder()
            .add_service(greeter)
            .serve(addr)
            .await
            .with_context(|| format!("serving gRPC on {addr}"))
    })
}

/// `demo.Greeter` as a tower service, routed by path the way tonic's generated code does it.
#[derive(Clone)]
struct Greeter {
    log: Arc<Mutex<std::fs::File>>,
}

impl NamedService for Greeter {
    const NAME: &'static str = SERVICE;
}

impl Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let method = Method {
            path: req.uri().path().to_string(),
            log: self.log.clone(),
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.unary(method, req).await)
        })
    }
}

/// One call of a method, by its path.
struct Method {
    path: String,
    log: Arc<Mutex<std::fs::File>>,
}

impl UnaryService<GreetRequest> for Method {
    type Response = GreetReply;
    type Future = BoxFuture<Response<GreetReply>, Status>;

    fn call(&mut self, req: Request<GreetRequest>) -> Self::Future {
        let peer = req.remote_addr().map_or_else(
            || "unknown".to_string(),
            |a| a.ip().to_canonical().to_string(),
        );
        let line = format!("{} from {peer}", self.path);
        if let Ok(mut f) = self.log.lock() {
            let _ = writeln!(f, "{line}");
        }
        let name = req.into_inner().name;
        let method = self
            .path
            .strip_prefix(&format!("/{SERVICE}/"))
            .filter(|m| METHODS.contains(m));
        let result = match method {
            Some(m) => Ok(Response::new(GreetReply {
                message: format!("{m} {name} from {peer}"),
            })),
            None => Err(Status::unimplemented(format!("no method {}", self.path))),
        };
        Box::pin(async move { result })
    }
}

/// Calls `demo.Greeter/<method>` on `target` (`IP:PORT`) and prints the outcome as JSON:
/// `{"code": N, "message": "...", "reply": "..."}`; `code` is -1 when no gRPC status came back
/// (the connection failed).
pub fn call(target: &str, method: &str, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let path = PathAndQuery::try_from(format!("/{SERVICE}/{method}"))
        .with_context(|| format!("method {method}"))?;
    let uri = format!("http://{target}");
    let outcome = runtime()?.block_on(async move {
        let endpoint = tonic::transport::Channel::from_shared(uri.clone())
            .with_context(|| format!("target {uri}"))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return Ok::<_, anyhow::Error>(outcome(-1, &format!("{e:#}"), "")),
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        if let Err(e) = grpc.ready().await {
            return Ok(outcome(-1, &format!("{e:#}"), ""));
        }
        let req = Request::new(GreetRequest {
            name: name.to_string(),
        });
        let result: Result<Response<GreetReply>, Status> =
            grpc.unary(req, path, ProstCodec::default()).await;
        Ok(match result {
            Ok(reply) => outcome(0, "", &reply.into_inner().message),
            Err(status) => outcome(i32::from(status.code()), status.message(), ""),
        })
    })?;
    println!("{outcome}");
    Ok(())
}

fn outcome(code: i32, message: &str, reply: &str) -> serde_json::Value {
    serde_json::json!({"code": code, "message": message, "reply": reply})
}
