//! One request on a downstream connection: judged with the configuration in force at that
//! moment (so a policy change applies to the next request of a keep-alive connection),
//! answered here when denied (403 `Access denied`, or a gRPC `PERMISSION_DENIED`), forwarded
//! unchanged when allowed, and recorded as one flow. It must never forward a denied request
//! nor one it could not judge: CONNECT and any Upgrade but HTTP/1.1's to `websocket` are
//! refused outright (`h2c` would turn the connection into requests nobody judges). A WebSocket
//! upgrade is a request like any other; once allowed and accepted by the server (101), the
//! connection is relayed byte for byte, as Envoy relays an upgraded connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use policy::Direction;

use crate::decide::{decide_request, Decision, RequestParts, DENIED_BODY, DENIED_STATUS};
use crate::flows::{Flow, FlowEndpoint, Verdict, L7};
use crate::forward::{Proto, Upstream};
use crate::snapshot::Snapshot;
use crate::state::Shared;

/// What a downstream answer's body is: the server's, streamed, or one of ours.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// One downstream connection.
pub struct Conn {
    pub dir: Direction,
    pub client: SocketAddr,
    /// The original destination.
    pub dst: SocketAddr,
    shared: Arc<Shared>,
    upstream: Upstream,
    /// HTTP/1.1: index of the first request with both `Content-Length` and
    /// `Transfer-Encoding` (see [`crate::framing`]), and of the next request to be handled.
    pub conflicting: Arc<AtomicU64>,
    /// Set when the server accepted a WebSocket upgrade (see [`crate::framing`]).
    pub switched: Arc<AtomicBool>,
    requests: AtomicU64,
}

impl Conn {
    pub fn new(
        dir: Direction,
        client: SocketAddr,
        dst: SocketAddr,
        shared: Arc<Shared>,
        proto: Proto,
    ) -> Self {
        let s = &shared.settings;
        let upstream = Upstream::new(proto, s.mode.clone(), s.mark, client.ip(), dst);
        Self {
            dir,
            client,
            dst,
            shared,
            upstream,
            conflicting: Arc::new(AtomicU64::new(crate::framing::NONE)),
            switched: Arc::new(AtomicBool::new(false)),
            requests: AtomicU64::new(0),
        }
    }

    fn flow(&self, snap: &Snapshot, verdict: Verdict) -> Flow {
        Flow::now(
            endpoint(snap, self.client),
            endpoint(snap, self.dst),
            verdict,
        )
    }

    /// A record for a connection refused before any request could be judged.
    pub fn record_connection(&self, verdict: Verdict, reason: &str, status: Option<u16>) {
        let snap = self.shared.snapshot();
        let mut flow = self.flow(&snap, verdict);
        flow.drop_reason = Some(reason.to_string());
        flow.l7 = status.map(|status| L7 {
            method: String::new(),
            path: String::new(),
            status,
            latency_ms: 0.0,
        });
        self.shared.flows.record(flow);
    }
}

impl Conn {
    /// A record for a connection Istio denied before any request (an L4 decision).
    pub fn record_denied_connection(&self, decision: &Decision) {
        let snap = self.shared.snapshot();
        let mut flow = self.flow(&snap, Verdict::Dropped);
        flow.drop_reason = Some("Policy denied".into());
        flow.policy = decision.policy_label();
        self.shared.flows.record(flow);
    }
}

/// Relays a connection that is not HTTP, which Istio allowed at L4 (`decision`), to the
/// original destination from the client's address, as ztunnel relays TCP: `prefix` (the bytes
/// read to tell what it is) first, then both directions until either side closes.
pub async fn relay_opaque(
    conn: Conn,
    mut stream: tokio::net::TcpStream,
    prefix: Vec<u8>,
    decision: &Decision,
) {
    use tokio::io::AsyncWriteExt;
    let s = &conn.shared.settings;
    let snap = conn.shared.snapshot();
    let mut flow = conn.flow(&snap, Verdict::Forwarded);
    flow.policy = decision.policy_label();
    let timeout = std::time::Duration::from_secs(5);
    let upstream =
        crate::forward::connect(&s.mode, s.mark, conn.client.ip(), conn.dst, timeout).await;
    let mut upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(client = %conn.client, dst = %conn.dst, error = %e, "upstream failed");
            let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            flow.verdict = Verdict::Error;
            flow.drop_reason = Some("upstream unreachable".into());
            conn.shared.flows.record(flow);
            return;
        }
    };
    conn.shared.flows.record(flow);
    if upstream.write_all(&prefix).await.is_err() {
        return;
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        tracing::debug!(client = %conn.client, dst = %conn.dst, error = %e, "relay ended");
    }
}

fn endpoint(snap: &Snapshot, addr: SocketAddr) -> FlowEndpoint {
    let pod = snap.pod(addr.ip());
    FlowEndpoint {
        namespace: pod.map(|p| p.namespace.clone()),
        pod: pod.map(|p| p.name.clone()),
        identity: snap.identity(addr.ip()),
        labels: pod.map_or_else(Vec::new, |p| {
            p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
        }),
        ip: Some(addr.ip()),
        port: addr.port(),
    }
}

/// What the handler saw of one request, for its flow record.
struct Seen {
    method: String,
    path: String,
    start: Instant,
}

impl Seen {
    fn l7(&self, status: u16) -> L7 {
        L7 {
            method: self.method.clone(),
            path: self.path.clone(),
            status,
            latency_ms: self.start.elapsed().as_secs_f64() * 1000.0,
        }
    }
}

impl Conn {
    /// Records `flow` as ended with `verdict` (why, if not forwarded) and answered `status`.
    fn record(&self, mut flow: Flow, verdict: Verdict, why: Option<String>, l7: L7) {
        flow.verdict = verdict;
        flow.drop_reason = why;
        flow.l7 = Some(l7);
        self.shared.flows.record(flow);
    }
}

/// The hyper service of a downstream connection.
pub async fn handle(
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let seen = Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.to_string()),
        start: Instant::now(),
    };
    let snap = conn.shared.snapshot();
    let grpc = is_grpc(&req);
    let mut flow = conn.flow(&snap, Verdict::Dropped);
    let websocket = match unproxied(&req) {
        Err(why) => {
            conn.record(flow, Verdict::Dropped, Some(why), seen.l7(DENIED_STATUS));
            return Ok(denied(grpc));
        }
        Ok(websocket) => websocket,
    };
    // hyper hands requests over one at a time, in order: this is the request's index.
    let index = conn.requests.fetch_add(1, Ordering::SeqCst);
    if index >= conn.conflicting.load(Ordering::SeqCst) {
        let why = "malformed request: both Content-Length and Transfer-Encoding";
        conn.record(flow, Verdict::Error, Some(why.into()), seen.l7(400));
        return Ok(bad_request());
    }
    if let Some(why) = crate::uri::abnormal_path(&seen.path) {
        let why = format!("path not in normal form: {why}");
        conn.record(flow, Verdict::Error, Some(why), seen.l7(400));
        return Ok(plain(StatusCode::BAD_REQUEST, "Bad Request\r\n"));
    }
    let decision = judge(&conn, &snap, &req);
    flow.policy = decision.policy_label();
    if !decision.allowed {
        let why = Some("Policy denied".into());
        conn.record(flow, Verdict::Dropped, why, seen.l7(DENIED_STATUS));
        return Ok(denied_with(grpc, decision.denied_body()));
    }
    Ok(forward(&conn, req, websocket, flow, &decision, &seen).await)
}

/// Sends an allowed request to the original destination and hands back its answer; a
/// WebSocket upgrade the server accepts is relayed from then on.
async fn forward(
    conn: &Arc<Conn>,
    mut req: Request<Incoming>,
    websocket: bool,
    flow: Flow,
    decision: &Decision,
    seen: &Seen,
) -> Response<ProxyBody> {
    let downstream = websocket.then(|| hyper::upgrade::on(&mut req));
    match conn.upstream.send(req).await {
        Ok(mut resp) => {
            if let Some(downstream) = downstream {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    conn.switched.store(true, Ordering::SeqCst);
                    let upstream = hyper::upgrade::on(&mut resp);
                    tokio::spawn(relay_upgraded(conn.clone(), downstream, upstream));
                }
            }
            // An Istio AUDIT policy matched: the request went through, flagged for audit.
            let verdict = if decision.audited() {
                Verdict::Audit
            } else {
                Verdict::Forwarded
            };
            conn.record(flow, verdict, None, seen.l7(resp.status().as_u16()));
            resp.map(Either::Left)
        }
        Err(e) if e.is_request_body() => {
            tracing::debug!(client = %conn.client, dst = %conn.dst, error = %e, "malformed request body");
            let why = Some("malformed request body".into());
            conn.record(flow, Verdict::Error, why, seen.l7(400));
            bad_request()
        }
        Err(e) => {
            tracing::debug!(client = %conn.client, dst = %conn.dst, error = %e, "upstream failed");
            let why = Some("upstream unreachable".into());
            conn.record(flow, Verdict::Error, why, seen.l7(503));
            plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error\r\n",
            )
        }
    }
}

/// Whether `req` is a WebSocket upgrade (`Ok(true)`), an ordinary request (`Ok(false)`), or one
/// the filter does not proxy (why).
fn unproxied(req: &Request<Incoming>) -> Result<bool, String> {
    if req.method() == Method::CONNECT {
        return Err("CONNECT is not proxied".into());
    }
    let Some(upgrade) = req.headers().get(UPGRADE) else {
        return Ok(false);
    };
    let websocket = upgrade
        .to_str()
        .is_ok_and(|p| p.trim().eq_ignore_ascii_case("websocket"));
    if websocket && req.version() == hyper::Version::HTTP_11 {
        Ok(true)
    } else {
        Err(format!(
            "Upgrade to {} is not proxied (only HTTP/1.1 to websocket)",
            String::from_utf8_lossy(upgrade.as_bytes())
        ))
    }
}

/// Relays an upgraded connection both ways until either side closes: the server accepted the
/// WebSocket upgrade the policy allowed.
async fn relay_upgraded(
    conn: Arc<Conn>,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(client = %conn.client, dst = %conn.dst, error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = hyper_util::rt::TokioIo::new(down);
    let mut up = hyper_util::rt::TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(client = %conn.client, dst = %conn.dst, error = %e, "upgraded relay ended");
    }
}

fn judge(conn: &Conn, snap: &Snapshot, req: &Request<Incoming>) -> Decision {
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|v| v.to_str().ok()));
    let parts = RequestParts {
        method: req.method().as_str(),
        path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        host,
        headers: req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect(),
    };
    decide_request(snap, conn.dir, conn.client.ip(), conn.dst, &parts)
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// The answer to a request refused before any policy was consulted: Cilium's 403.
fn denied(grpc: bool) -> Response<ProxyBody> {
    denied_with(grpc, DENIED_BODY)
}

/// The answer to a denied request: 403 with `body` (Cilium's or Istio's wording), or for gRPC
/// a trailers-only `PERMISSION_DENIED` with the same words (a gRPC client reads the status,
/// not the HTTP code).
fn denied_with(grpc: bool, body: &'static str) -> Response<ProxyBody> {
    if !grpc {
        return plain(StatusCode::FORBIDDEN, body);
    }
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static("7"));
    h.insert(
        "grpc-message",
        HeaderValue::from_static(body.trim_end_matches("\r\n")),
    );
    resp
}

/// 400, and the connection closes after it: what follows a request that could not be framed
/// cannot be trusted to start a new one.
fn bad_request() -> Response<ProxyBody> {
    let mut resp = plain(StatusCode::BAD_REQUEST, "Bad Request\r\n");
    resp.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn plain(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}
