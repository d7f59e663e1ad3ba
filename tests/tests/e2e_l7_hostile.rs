//! L7 against hostile clients: malformed and hostile HTTP/1.1 sent as raw bytes from a pod to a
//! port the proxy polices (through the real redirect, across the tunnel). Oversized heads get
//! 431/400 or a close, bad chunked framing 400 or a close, smuggling attempts (both
//! `Content-Length` and `Transfer-Encoding`, conflicting `Content-Length`s) 400 or a close and the
//! request hidden in their body, to a path the policy denies, never reaches the server (its
//! access log proves it); a dribbled head is cut off at the proxy's header timeout; bytes that
//! are not HTTP are refused; a WebSocket upgrade is judged by its path and, allowed, relayed
//! byte for byte, an upgrade to h2c is refused. After every attack another client's ordinary request is still
//! served. The controls: the same bytes sent before the policy, straight to the server, do
//! reach it (the hidden path shows in its log, the big head is served, garbage gets the server's
//! own 400, the dribbled head is not cut off), so each detector is proven to work.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wiremesh_lab::{
    namespace_with_pods, Host, HttpRequest, HttpServer, Lab, PodSpec, RawReply, RawSend,
};

const PORT: u16 = 8080;
/// How long a policy may take to be in force on the proxy's path.
const SETTLE: Duration = Duration::from_secs(30);
/// The proxy's header timeout (`ProxyLimits::default()`; the agent offers no knob for it).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A path the policy denies, hidden in smuggling attempts.
const HIDDEN: &str = "/admin/secret";

const BACKEND_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-l7-policy, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/api/.*"}
        - {method: POST, path: /api/upload}
"#;

const SERVER: Host = Host::Pod(2, 1);
/// Sends the attacks; admitted at L4 like any frontend.
const ATTACKER: Host = Host::Pod(1, 1);
/// An ordinary client that must keep being served.
const BYSTANDER: Host = Host::Pod(1, 2);

fn workloads() -> String {
    let pods = [
        PodSpec::new("production", "backend", SERVER).label("app", "backend"),
        PodSpec::new("production", "attacker", ATTACKER).label("app", "frontend"),
        PodSpec::new("production", "bystander", BYSTANDER).label("app", "frontend"),
    ];
    namespace_with_pods("production", &pods)
}

fn server_addr() -> SocketAddr {
    SocketAddr::from((SERVER.ip(), PORT))
}

fn raw(lab: &Lab, send: &RawSend) -> RawReply {
    lab.host(ATTACKER)
        .raw_tcp(send)
        .unwrap_or_else(|e| panic!("raw bytes from {ATTACKER}: {e}"))
}

fn send(lab: &Lab, bytes: impl Into<Vec<u8>>) -> RawReply {
    raw(lab, &RawSend::new(server_addr(), bytes))
}

fn get_status(lab: &Lab, from: Host, server: &HttpServer, path: &str) -> u16 {
    let req = HttpRequest::new("GET", format!("{}{path}", server.url()));
    lab.host(from)
        .http(&req)
        .unwrap_or_else(|e| panic!("GET {path} from {from}: {e}"))
        .status
}

/// The filter keeps serving: another client's allowed request gets the server's answer.
fn assert_serving(lab: &Lab, server: &HttpServer, after: &str) {
    let status = get_status(lab, BYSTANDER, server, "/api/ok");
    assert_eq!(
        status, 200,
        "after {after}, an allowed request from {BYSTANDER}"
    );
}

/// The proxy refused: it answered one of `statuses` or nothing, and ended the connection.
fn assert_refused(reply: &RawReply, statuses: &[u16], what: &str) {
    let answered = reply.status();
    assert!(
        reply.closed() && answered.is_none_or(|s| statuses.contains(&s)),
        "{what}: wanted {statuses:?} or a close, got {answered:?} and {:?} after {:?}: {:?}",
        reply.end,
        reply.elapsed,
        reply.reply
    );
}

fn hidden_requests(server: &HttpServer) -> usize {
    server
        .requests()
        .iter()
        .filter(|l| l.contains(HIDDEN))
        .count()
}

/// The request smuggled in the bodies below.
fn hidden_request() -> String {
    format!("GET {HIDDEN} HTTP/1.1\r\nHost: backend\r\n\r\n")
}

/// Both framings: a proxy reading `Content-Length` sees one request, a server reading the
/// chunked encoding sees the hidden second one (CL.TE).
fn cl_te() -> String {
    let body = format!("0\r\n\r\n{}", hidden_request());
    format!(
        "POST /api/upload HTTP/1.1\r\nHost: backend\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    )
}

/// The other way round (TE.CL): the hidden request is a chunk, `Content-Length` ends the
/// body before it.
fn te_cl() -> String {
    let chunk = hidden_request();
    format!(
        "POST /api/upload HTTP/1.1\r\nHost: backend\r\nContent-Length: 4\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    )
}

/// Two `Content-Length`s: with the first the hidden request is the next one, with the second
/// it is body.
fn duplicate_cl() -> String {
    let body = hidden_request();
    format!(
        "POST /api/upload HTTP/1.1\r\nHost: backend\r\nContent-Length: 0\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// An obfuscated `Transfer-Encoding` beside a `Content-Length` (TE.TE).
fn obfuscated_te() -> String {
    let body = format!("0\r\n\r\n{}", hidden_request());
    format!(
        "POST /api/upload HTTP/1.1\r\nHost: backend\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n{body}",
        body.len()
    )
}

/// The smuggling control: the hidden request sent openly after a chunked one.
fn pipelined() -> String {
    format!(
        "POST /api/upload HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n\
         0\r\n\r\n{}",
        hidden_request().replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
    )
}

/// A request whose one header is larger than the proxy's 64 KiB head limit.
fn oversized_header() -> String {
    format!(
        "GET /api/big HTTP/1.1\r\nHost: backend\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(80 << 10)
    )
}

/// More header lines than the proxy's 100.
fn too_many_headers() -> String {
    let lines: String = (0..150).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    format!("GET /api/many HTTP/1.1\r\nHost: backend\r\n{lines}Connection: close\r\n\r\n")
}

/// A head that never ends, dribbled a byte at a time.
fn slowloris(timeout: Duration) -> RawSend {
    let head = format!(
        "GET /api/slow HTTP/1.1\r\nHost: backend\r\nX-Pad: {}",
        "a".repeat(1000)
    );
    RawSend::new(server_addr(), head)
        .dribble(1, Duration::from_millis(250))
        .timeout(timeout)
}

/// An upgrade of `path` to `protocol`, with `payload` sent right behind the head.
fn upgrade(path: &str, protocol: &str, payload: &str) -> RawSend {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: backend\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n{payload}"
    );
    RawSend::new(server_addr(), head).timeout(Duration::from_secs(5))
}

/// Bytes sent over an upgraded connection, echoed by the lab's server.
const WS_PAYLOAD: &str = "bytes-after-the-upgrade";

/// A WebSocket upgrade to an allowed path is switched and relayed: 101, then the echo.
fn assert_websocket_relayed(reply: &RawReply, what: &str) {
    assert!(
        reply.status() == Some(101) && reply.reply.ends_with(WS_PAYLOAD),
        "{what}: wanted 101 and the echo of {WS_PAYLOAD:?}: {reply:?}"
    );
}

/// A TLS ClientHello's first bytes: not HTTP.
const NOT_HTTP: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03lab-not-http\r\n\r\n";

fn wait_enforced(lab: &Lab, server: &HttpServer) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let status = get_status(lab, BYSTANDER, server, "/settle/probe");
        if status == 403 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the HTTP rules were not enforced within {SETTLE:?}: last status {status}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Before the policy, straight to the server: each detector sees what it must.
fn controls(lab: &Lab, server: &HttpServer) {
    let reply = send(lab, pipelined());
    assert_eq!(reply.status(), Some(200), "control: {reply:?}");
    assert_eq!(
        hidden_requests(server),
        1,
        "control: the server's log shows a {HIDDEN} that reached it: {:?}",
        server.requests()
    );
    let reply = send(lab, oversized_header());
    assert_eq!(
        reply.status(),
        Some(200),
        "control: the server takes an 80 KiB head"
    );
    let reply = send(lab, NOT_HTTP);
    assert_eq!(
        reply.status(),
        Some(400),
        "control: the server itself answers garbage with 400: {reply:?}"
    );
    assert_websocket_relayed(
        &raw(lab, &upgrade("/api/ws", "websocket", WS_PAYLOAD)),
        "control: the server accepts a WebSocket upgrade",
    );
    let reply = raw(lab, &upgrade("/api/h2c", "h2c", ""));
    assert_eq!(reply.status(), Some(200), "control: {reply:?}");
    assert!(
        server
            .requests()
            .iter()
            .any(|l| l.starts_with("GET /api/h2c ")),
        "control: an h2c upgrade request reaches the server: {:?}",
        server.requests()
    );
    let bound = HEADER_TIMEOUT + Duration::from_secs(2);
    let reply = raw(lab, &slowloris(bound));
    assert_eq!(
        (reply.end, reply.reply.as_str()),
        (wiremesh_lab::RawEnd::Timeout, ""),
        "control: the server does not cut a dribbled head off within {bound:?}: {reply:?}"
    );
}

#[test]
fn hostile_http_is_refused_and_the_filter_keeps_serving() {
    common::require_agent();
    let lab = common::lab(2, 2);
    common::start_mesh(&lab);
    let server = lab
        .http_server(SERVER, PORT)
        .expect("the backend serves HTTP");
    lab.node(1)
        .agent()
        .apply(&workloads())
        .expect("apply the workloads");
    controls(&lab, &server);

    lab.node(1)
        .agent()
        .apply(BACKEND_POLICY)
        .expect("apply backend-l7-policy");
    wait_enforced(&lab, &server);
    let served_before = server.requests().len();

    let head_limits: [(&str, String); 2] = [
        ("a header over 64 KiB", oversized_header()),
        ("150 header lines", too_many_headers()),
    ];
    for (what, bytes) in head_limits {
        assert_refused(&send(&lab, bytes), &[431, 400], what);
        assert_serving(&lab, &server, what);
    }

    let bad_chunk =
        "POST /api/upload HTTP/1.1\r\nHost: backend\r\nTransfer-Encoding: chunked\r\n\r\n\
                     zz\r\nabc\r\n0\r\n\r\n";
    assert_refused(
        &send(&lab, bad_chunk),
        &[400],
        "a chunk size that is not hex",
    );
    assert_serving(&lab, &server, "bad chunked encoding");

    let smuggling: [(&str, String); 4] = [
        ("Content-Length and chunked (CL.TE)", cl_te()),
        ("chunked and Content-Length (TE.CL)", te_cl()),
        ("two different Content-Lengths", duplicate_cl()),
        (
            "chunked, then identity, and Content-Length",
            obfuscated_te(),
        ),
    ];
    for (what, bytes) in smuggling {
        assert_refused(&send(&lab, bytes), &[400], what);
        assert_serving(&lab, &server, what);
    }

    let bound = HEADER_TIMEOUT + Duration::from_secs(8);
    let reply = raw(&lab, &slowloris(bound));
    assert_refused(&reply, &[408], "a dribbled head");
    assert!(
        reply.elapsed >= HEADER_TIMEOUT - Duration::from_secs(1)
            && reply.elapsed < HEADER_TIMEOUT + Duration::from_secs(4),
        "a dribbled head is cut off at the header timeout ({HEADER_TIMEOUT:?}), not after {:?}",
        reply.elapsed
    );
    assert_serving(&lab, &server, "slowloris");

    let reply = send(&lab, NOT_HTTP);
    assert!(
        reply.closed() && reply.reply.is_empty(),
        "bytes that are not HTTP are refused without an answer: {reply:?}"
    );
    assert_serving(&lab, &server, "bytes that are not HTTP");

    // A WebSocket upgrade is judged like any request, then relayed byte for byte; an upgrade
    // to h2c (requests nobody would judge) is refused whatever the path.
    assert_websocket_relayed(
        &raw(&lab, &upgrade("/api/ws", "websocket", WS_PAYLOAD)),
        "an allowed WebSocket upgrade",
    );
    let reply = raw(&lab, &upgrade("/admin/ws", "websocket", WS_PAYLOAD));
    assert_eq!(reply.status(), Some(403), "a denied path: {reply:?}");
    let reply = raw(&lab, &upgrade("/api/h2c", "h2c", ""));
    assert_eq!(reply.status(), Some(403), "an upgrade to h2c: {reply:?}");
    assert_serving(&lab, &server, "upgrades");

    assert_eq!(
        hidden_requests(&server),
        1,
        "only the control's {HIDDEN} ever reached the server: {:?}",
        server.requests()
    );
    let reached: Vec<String> = server.requests().split_off(served_before);
    let unexpected: Vec<&String> = reached
        .iter()
        .filter(|l| {
            let ws = format!("GET /api/ws from {} upgrade", ATTACKER.ip());
            !l.starts_with("GET /api/ok from ") && **l != ws
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "after the policy, only the bystander's requests reached the server: {unexpected:?}"
    );
}
