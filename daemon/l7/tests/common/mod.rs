//! Shared pieces of the proxy's integration tests: a recording upstream server (HTTP/1.1 or
//! HTTP/2) on 127.0.0.1, a proxy in `Mode::Test` in front of it, configurations compiled from
//! real manifests (the server pod is 127.0.0.1, the client pod 127.0.0.2, an attacker pod
//! 127.0.0.3), and raw-socket HTTP/1.1 helpers for byte-exact requests.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use wiremesh_l7::{L7Config, Mode, ProxyLimits, Settings, Shared};

pub const CLIENT: &str = "127.0.0.2";
pub const ATTACKER: &str = "127.0.0.3";

/// A request as the upstream server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

/// A recording server.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("log").clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.path).collect()
    }
}

/// Starts a recording server speaking HTTP/2 (`h2`) or HTTP/1.1 on `ip`:0. It answers
/// `200 upstream <method> <path>`.
pub async fn upstream(ip: &str, h2: bool) -> Upstream {
    let listener = TcpListener::bind((ip, 0)).await.expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move { Ok::<_, Infallible>(record(req, peer, &log).await) }
                });
                let io = TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    Upstream { addr, seen }
}

async fn record(
    req: Request<Incoming>,
    peer: SocketAddr,
    log: &Mutex<Vec<Seen>>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let method = parts.method.to_string();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let answer = format!("upstream {method} {path}");
    log.lock().expect("log").push(Seen {
        method,
        path,
        headers,
        body,
        peer,
    });
    Response::new(Full::new(Bytes::from(answer)))
}

/// Limits small enough for tests.
pub fn test_limits() -> ProxyLimits {
    ProxyLimits {
        header_timeout: Duration::from_secs(1),
        server_first_after: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(10),
        ..ProxyLimits::default()
    }
}

/// A proxy judging ingress into the server pod, forwarding to `upstream`.
pub struct Proxy {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
}

pub async fn proxy(upstream: SocketAddr, state_file: Option<std::path::PathBuf>) -> Proxy {
    proxy_for(policy::Direction::Ingress, upstream, state_file).await
}

/// A proxy for connections redirected in direction `dir`.
pub async fn proxy_for(
    dir: policy::Direction,
    upstream: SocketAddr,
    state_file: Option<std::path::PathBuf>,
) -> Proxy {
    let shared = Arc::new(Shared::new(Settings {
        mode: Mode::Test { upstream },
        mark: 0,
        limits: test_limits(),
        state_file,
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(wiremesh_l7::serve_listener(listener, dir, shared.clone()));
    Proxy { addr, shared }
}

/// The cluster: node n1 with pods api (127.0.0.1), client (127.0.0.2), attacker (127.0.0.3).
fn cluster() -> String {
    let pod = |name: &str, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}\n\
             spec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\n\
             status: {{podIPs: [{{ip: {ip}}}], hostIP: 198.18.0.1}}\n"
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\napiVersion: v1\nkind: Node\n\
         metadata: {{name: n1}}\nstatus: {{addresses: [{{type: InternalIP, address: 198.18.0.1}}]}}\n{}{}{}",
        pod("api", "127.0.0.1"),
        pod("client", CLIENT),
        pod("attacker", ATTACKER)
    )
}

/// A configuration in which `client` may send `rules` (YAML flow list of `rules.http`
/// entries) to api on `port`.
pub fn config(port: u16, rules: &str, version: u64) -> L7Config {
    let cnp = format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: api-l7, namespace: shop}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n\
         \x20 - fromEndpoints: [{{matchLabels: {{app: client}}}}]\n    toPorts:\n\
         \x20   - ports: [{{port: \"{port}\", protocol: TCP}}]\n      rules:\n        http: {rules}\n"
    );
    compile(&cnp, version, "api")
}

/// A configuration in which the client pod may send `rules` to api on `port` (an egress
/// policy of the client's: the proxy judges at the client's side).
pub fn egress_config(port: u16, rules: &str, version: u64) -> L7Config {
    let cnp = format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: client-l7, namespace: shop}}\n\
         spec:\n  endpointSelector: {{matchLabels: {{app: client}}}}\n  egress:\n\
         \x20 - toEndpoints: [{{matchLabels: {{app: api}}}}]\n    toPorts:\n\
         \x20   - ports: [{{port: \"{port}\", protocol: TCP}}]\n      rules:\n        http: {rules}\n"
    );
    compile(&cnp, version, "client")
}

/// A configuration in which only an Istio AuthorizationPolicy (`rules`, a YAML flow list)
/// applies to api: the proxy is its waypoint.
pub fn istio_config(rules: &str, version: u64) -> L7Config {
    let authz = format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: api-authz, namespace: shop}}\n\
         spec:\n  selector: {{matchLabels: {{app: api}}}}\n  rules: {rules}\n"
    );
    compile(&authz, version, "api")
}

fn compile(cnp: &str, version: u64, judged: &str) -> L7Config {
    let text = format!("{}{cnp}", cluster());
    let bundle = policy::load_with([("t.yaml", text.as_str())], policy::LoadOptions::default())
        .unwrap_or_else(|e| panic!("manifest: {e}\n{text}"));
    let compiled =
        policy::Compiled::build_for(&bundle, policy::Identities::build(&bundle), Some("n1"));
    let cfg = L7Config::build(&compiled, &bundle, "n1", version);
    let names: Vec<&str> = cfg.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec![judged]);
    cfg
}

/// The usual rules: GET /public/..., POST /submit.
pub const RULES: &str = r#"[{method: GET, path: "/public/.*"}, {method: POST, path: "/submit"}]"#;

/// A TCP connection from `from` (a loopback address) to `to`.
pub async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let ip: IpAddr = from.parse().expect("ip");
    socket.bind(SocketAddr::new(ip, 0)).expect("bind client");
    socket.connect(to).await.expect("connect to the proxy")
}

/// One HTTP/1.1 response read off a raw stream (Content-Length bodies only, as both the
/// proxy's and the test server's answers have).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub async fn read_answer<R: tokio::io::AsyncRead + Unpin>(r: &mut BufReader<R>) -> Option<Answer> {
    let read = async {
        let mut line = String::new();
        if r.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).await.ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body).await.ok()?;
        Some(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()?
}

/// Sends `raw` on a new connection from `from` and reads `n` answers.
pub async fn exchange(from: &str, proxy: SocketAddr, raw: &[u8], n: usize) -> Vec<Answer> {
    let mut stream = connect_from(from, proxy).await;
    stream.write_all(raw).await.expect("send");
    let mut r = BufReader::new(stream);
    let mut out = Vec::new();
    for _ in 0..n {
        match read_answer(&mut r).await {
            Some(a) => out.push(a),
            None => break,
        }
    }
    out
}

/// Waits (bounded) until `f` holds.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
