//! Cleartext HTTP/2 (prior knowledge) through the proxy: per-stream decisions, gRPC denial.

mod common;

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http2;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use wiremesh_l7::flows::Verdict;

async fn h2_client(from: &str, proxy: std::net::SocketAddr) -> http2::SendRequest<Full<Bytes>> {
    let stream = connect_from(from, proxy).await;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake through the proxy");
    tokio::spawn(conn);
    sender
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("http://api{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request")
}

#[tokio::test]
async fn h2c_streams_are_judged_one_by_one() {
    let up = upstream("127.0.0.1", true).await;
    let px = proxy(up.addr, None).await;
    px.shared
        .apply(&config(up.addr.port(), RULES, 1))
        .expect("config");
    let mut c = h2_client(CLIENT, px.addr).await;
    let ok = c.send_request(get("/public/x")).await.expect("answer");
    assert_eq!(ok.status(), 200);
    let body = ok.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"upstream GET /public/x");
    let denied = c.send_request(get("/private")).await.expect("answer");
    assert_eq!(denied.status(), 403);
    let body = denied.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"Access denied\r\n");
    // The same connection goes on serving allowed streams.
    let post = Request::builder()
        .method("POST")
        .uri("http://api/submit")
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("request");
    assert_eq!(c.send_request(post).await.expect("answer").status(), 200);
    assert_eq!(up.paths(), vec!["/public/x", "/submit"]);
    assert_eq!(up.seen()[1].body, b"payload");
}

/// A denied gRPC call gets a trailers-only `PERMISSION_DENIED` (HTTP 200, grpc-status 7).
#[tokio::test]
async fn denied_grpc_call_gets_grpc_status_7() {
    let up = upstream("127.0.0.1", true).await;
    let px = proxy(up.addr, None).await;
    let rules = r#"[{method: POST, path: "/shop.Catalog/List"}]"#;
    px.shared
        .apply(&config(up.addr.port(), rules, 1))
        .expect("config");
    let mut c = h2_client(CLIENT, px.addr).await;
    let call = |method: &str| {
        Request::builder()
            .method("POST")
            .uri(format!("http://api/shop.Catalog/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            // A gRPC message frame: not compressed, length 0.
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .expect("request")
    };
    let denied = c.send_request(call("Delete")).await.expect("answer");
    assert_eq!(denied.status(), 200);
    assert_eq!(denied.headers()["grpc-status"], "7");
    assert!(denied.headers().contains_key("grpc-message"));
    assert_eq!(denied.headers()["content-type"], "application/grpc");
    let allowed = c.send_request(call("List")).await.expect("answer");
    assert_eq!(allowed.status(), 200);
    assert!(!allowed.headers().contains_key("grpc-status"));
    assert_eq!(up.paths(), vec!["/shop.Catalog/List"]);
    let flows = px.shared.flows.after(0, 10);
    let verdicts: Vec<Verdict> = flows.iter().map(|f| f.verdict).collect();
    assert_eq!(verdicts, vec![Verdict::Dropped, Verdict::Forwarded]);
}
