//! HTTP/1.1 through the proxy (Test mode, loopback): forwarding unchanged, denial before the
//! server, keep-alive across a policy change, pipelining, and hostile input.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use wiremesh_l7::flows::Verdict;

async fn setup() -> (Upstream, Proxy) {
    let up = upstream("127.0.0.1", false).await;
    let px = proxy(up.addr, None).await;
    px.shared
        .apply(&config(up.addr.port(), RULES, 1))
        .expect("config");
    (up, px)
}

#[tokio::test]
async fn allowed_get_and_chunked_post_are_forwarded_unchanged() {
    let (up, px) = setup().await;
    let raw = b"GET /public/a?q=1 HTTP/1.1\r\nHost: api\r\nX-Custom: One\r\nAccept: */*\r\n\r\n\
                POST /submit HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n\
                5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let answers = exchange(CLIENT, px.addr, raw, 2).await;
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].body, "upstream GET /public/a?q=1");
    assert_eq!(answers[1].body, "upstream POST /submit");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    let headers = |s: &Seen| {
        let mut h = s.headers.clone();
        h.sort();
        h
    };
    assert_eq!(seen[0].method, "GET");
    assert_eq!(
        headers(&seen[0]),
        vec![
            ("accept".into(), "*/*".into()),
            ("host".into(), "api".into()),
            ("x-custom".into(), "One".into()),
        ],
        "exactly the client's headers: no Via, no X-Forwarded-For"
    );
    assert_eq!(seen[1].body, b"hello world");
    assert_eq!(
        headers(&seen[1]),
        vec![
            ("content-type".into(), "text/plain".into()),
            ("host".into(), "api".into()),
            ("transfer-encoding".into(), "chunked".into()),
        ]
    );
    // Both on one upstream connection, from the proxy.
    assert_eq!(seen[0].peer, seen[1].peer);
    let flows = px.shared.flows.after(0, 10);
    assert_eq!(flows.len(), 2);
    assert!(flows.iter().all(|f| f.verdict == Verdict::Forwarded));
    assert_eq!(flows[0].source.pod.as_deref(), Some("client"));
    assert_eq!(flows[0].destination.pod.as_deref(), Some("api"));
    let l7 = flows[1].l7.as_ref().expect("l7");
    assert_eq!(
        (l7.method.as_str(), l7.path.as_str(), l7.status),
        ("POST", "/submit", 200)
    );
    assert!(
        flows[0]
            .policy
            .as_deref()
            .is_some_and(|p| p.contains("http[0]")),
        "{flows:?}"
    );
}

#[tokio::test]
async fn denied_requests_get_403_and_never_reach_the_server() {
    let (up, px) = setup().await;
    let a = exchange(
        CLIENT,
        px.addr,
        b"GET /private HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(a[0].status, 403);
    assert_eq!(a[0].body, "Access denied\r\n");
    let a = exchange(
        CLIENT,
        px.addr,
        b"DELETE /public/a HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(a[0].status, 403);
    // Another workload, a path its rules would allow for the client.
    let a = exchange(
        ATTACKER,
        px.addr,
        b"GET /public/a HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(a[0].status, 403);
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    let flows = px.shared.flows.after(0, 10);
    assert_eq!(flows.len(), 3);
    assert!(flows.iter().all(
        |f| f.verdict == Verdict::Dropped && f.drop_reason.as_deref() == Some("Policy denied")
    ));
    assert_eq!(flows[2].source.pod.as_deref(), Some("attacker"));
    assert_eq!(px.shared.flows.snapshot(1).dropped, 3);
}

/// One keep-alive connection: the second request is judged by the configuration in force
/// when it arrives.
#[tokio::test]
async fn keep_alive_connection_follows_a_policy_change() {
    let (up, px) = setup().await;
    let mut stream = BufReader::new(connect_from(CLIENT, px.addr).await);
    let get = b"GET /public/a HTTP/1.1\r\nHost: api\r\n\r\n";
    stream.get_mut().write_all(get).await.expect("send");
    assert_eq!(read_answer(&mut stream).await.expect("answer").status, 200);
    px.shared
        .apply(&config(
            up.addr.port(),
            r#"[{method: GET, path: "/other"}]"#,
            2,
        ))
        .expect("config");
    stream.get_mut().write_all(get).await.expect("send");
    assert_eq!(read_answer(&mut stream).await.expect("answer").status, 403);
    stream
        .get_mut()
        .write_all(b"GET /other HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .expect("send");
    assert_eq!(read_answer(&mut stream).await.expect("answer").status, 200);
    assert_eq!(up.paths(), vec!["/public/a", "/other"]);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (up, px) = setup().await;
    let raw = b"GET /public/1 HTTP/1.1\r\nHost: api\r\n\r\n\
                GET /private HTTP/1.1\r\nHost: api\r\n\r\n\
                POST /submit HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\n\r\nabc\
                GET /public/2 HTTP/1.1\r\nHost: api\r\n\r\n";
    let answers = exchange(CLIENT, px.addr, raw, 4).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![200, 403, 200, 200]);
    assert_eq!(answers[3].body, "upstream GET /public/2");
    assert_eq!(up.paths(), vec!["/public/1", "/submit", "/public/2"]);
    assert_eq!(up.seen()[1].body, b"abc");
}

#[tokio::test]
async fn malformed_request_gets_400_and_a_flow() {
    let (up, px) = setup().await;
    let a = exchange(
        CLIENT,
        px.addr,
        b"GET /public/a HTTP/1.1\r\nHost api\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(a.first().map(|a| a.status), Some(400));
    let a = exchange(
        CLIENT,
        px.addr,
        b"POST /submit HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        1,
    )
    .await;
    // Bad chunking is found only once the body is read, after the request was allowed: the
    // server gets no complete request, the client gets 400 (its fault, not the server's: no
    // 503) and the connection is cut.
    assert_eq!(a.first().map(|a| a.status), Some(400), "{a:?}");
    assert!(up
        .seen()
        .iter()
        .all(|s| s.body.is_empty() || s.body == b"hello"));
    eventually("a flow for the malformed request", || {
        px.shared.flows.after(0, 10).iter().any(|f| {
            f.verdict == Verdict::Error && f.drop_reason.as_deref() == Some("malformed request")
        })
    })
    .await;
}

/// `Content-Length` with `Transfer-Encoding`: the smuggled second request never reaches the
/// server.
#[tokio::test]
async fn conflicting_length_headers_smuggle_nothing() {
    let (up, px) = setup().await;
    let smuggled = b"GET /private HTTP/1.1\r\nHost: api\r\n\r\n";
    let body = format!("0\r\n\r\n{}", String::from_utf8_lossy(smuggled));
    let raw = format!(
        "POST /submit HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    let answers = exchange(CLIENT, px.addr, raw.as_bytes(), 2).await;
    assert_eq!(answers.first().map(|a| a.status), Some(400), "{answers:?}");
    assert_eq!(answers.len(), 1, "the connection is closed after the 400");
    assert!(up.seen().is_empty(), "{:?}", up.seen());
}

#[tokio::test]
async fn oversized_headers_are_refused() {
    let (up, px) = setup().await;
    let big = format!(
        "GET /public/a HTTP/1.1\r\nHost: api\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 << 10)
    );
    let a = exchange(CLIENT, px.addr, big.as_bytes(), 1).await;
    assert!(
        matches!(a.first().map(|a| a.status), Some(431 | 400)),
        "{a:?}"
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = format!("GET /public/a HTTP/1.1\r\nHost: api\r\n{many}\r\n");
    let a = exchange(CLIENT, px.addr, raw.as_bytes(), 1).await;
    assert!(
        matches!(a.first().map(|a| a.status), Some(431 | 400)),
        "{a:?}"
    );
    assert!(up.seen().is_empty());
}

/// A client that sends its head slowly is cut off at the header timeout (1 s here).
#[tokio::test]
async fn slowloris_is_cut_off_at_the_header_timeout() {
    let (up, px) = setup().await;
    let mut stream = connect_from(CLIENT, px.addr).await;
    let start = Instant::now();
    stream
        .write_all(b"GET /public/a HTTP/1.1\r\nHost: api\r\n")
        .await
        .expect("send");
    let mut buf = Vec::new();
    let dripping = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b"X-A: b\r\n").await.is_err() {
                break;
            }
            let mut chunk = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(10), stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), dripping)
        .await
        .expect("the proxy closes the connection");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    assert!(up.seen().is_empty());
    eventually("a flow for the slow head", || {
        px.shared
            .flows
            .after(0, 10)
            .iter()
            .any(|f| f.drop_reason.as_deref() == Some("request head not received in time"))
    })
    .await;
}

/// The header timeout runs from a head's first byte: an idle keep-alive connection outlives
/// it (only the idle timeout ends it).
#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout() {
    let (up, px) = setup().await;
    let mut stream = BufReader::new(connect_from(CLIENT, px.addr).await);
    let get = b"GET /public/a HTTP/1.1\r\nHost: api\r\n\r\n";
    stream.get_mut().write_all(get).await.expect("send");
    assert_eq!(read_answer(&mut stream).await.expect("answer").status, 200);
    tokio::time::sleep(test_limits().header_timeout + Duration::from_millis(700)).await;
    stream.get_mut().write_all(get).await.expect("send");
    assert_eq!(read_answer(&mut stream).await.expect("answer").status, 200);
    assert_eq!(up.paths().len(), 2);
}

#[tokio::test]
async fn non_http_bytes_reset_the_connection() {
    let (up, px) = setup().await;
    let mut stream = connect_from(CLIENT, px.addr).await;
    // A TLS ClientHello's first bytes.
    stream
        .write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .await
        .expect("send");
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer within 5 s");
    let err = r.expect_err("reset, not a clean close");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(up.seen().is_empty());
    let flows = px.shared.flows.after(0, 10);
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].drop_reason.as_deref(), Some("not HTTP"));
    assert_eq!(flows[0].source.pod.as_deref(), Some("client"));
}

/// A WebSocket upgrade is a request like any other: allowed, it reaches the server (which here
/// declines to switch, so the connection stays HTTP); to a denied path it gets 403. An upgrade
/// to h2c and CONNECT are refused whatever the path.
#[tokio::test]
async fn upgrades_are_judged_and_h2c_and_connect_refused() {
    let (up, px) = setup().await;
    let ws = |path: &str, proto: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: {proto}\r\n\r\n"
        )
    };
    let a = exchange(CLIENT, px.addr, ws("/public/ws", "websocket").as_bytes(), 1).await;
    assert_eq!(a[0].status, 200, "forwarded: {a:?}");
    assert_eq!(up.paths(), vec!["/public/ws".to_string()]);
    for raw in [
        ws("/private/ws", "websocket"),
        ws("/public/h2c", "h2c"),
        "CONNECT api:443 HTTP/1.1\r\nHost: api:443\r\n\r\n".to_string(),
    ] {
        let a = exchange(CLIENT, px.addr, raw.as_bytes(), 1).await;
        assert_eq!(a[0].status, 403, "{raw}");
    }
    assert_eq!(up.paths(), vec!["/public/ws".to_string()], "nothing else");
}

/// No configuration (a proxy just restarted with none saved): everything is denied.
#[tokio::test]
async fn without_configuration_everything_is_denied() {
    let up = upstream("127.0.0.1", false).await;
    let px = proxy(up.addr, None).await;
    let a = exchange(
        CLIENT,
        px.addr,
        b"GET /public/a HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(a[0].status, 403);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_unreachable_server_gives_503() {
    // A port nothing listens on: bind one, note it, close it.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = gone.local_addr().expect("addr");
    drop(gone);
    let px = proxy(addr, None).await;
    px.shared
        .apply(&config(addr.port(), RULES, 1))
        .expect("config");
    let a = exchange(
        CLIENT,
        px.addr,
        b"GET /public/a HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(a[0].status, 503);
    let flows = px.shared.flows.after(0, 10);
    assert_eq!(flows[0].verdict, Verdict::Error);
}

/// The egress listener judges with the client's map: the local endpoint is the one owning the
/// connection's source address, the remote the original destination.
#[tokio::test]
async fn egress_requests_are_judged_by_the_clients_policy() {
    let up = upstream("127.0.0.1", false).await;
    let px = proxy_for(policy::Direction::Egress, up.addr, None).await;
    px.shared
        .apply(&egress_config(up.addr.port(), RULES, 1))
        .expect("config");
    let a = exchange(
        CLIENT,
        px.addr,
        b"GET /public/a HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(a[0].status, 200);
    let a = exchange(
        CLIENT,
        px.addr,
        b"GET /private HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(a[0].status, 403);
    // The attacker pod has no L7 configuration here: its traffic is not judged, so denied.
    let a = exchange(
        ATTACKER,
        px.addr,
        b"GET /public/a HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(a[0].status, 403);
    assert_eq!(up.paths(), vec!["/public/a"]);
    let flows = px.shared.flows.after(0, 10);
    assert_eq!(flows[0].source.pod.as_deref(), Some("client"));
    assert_eq!(flows[0].destination.pod.as_deref(), Some("api"));
}

/// A server that greets first (as SMTP or MySQL do) and then echoes one read.
async fn greeting_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 ready\r\n").await;
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&buf[..n]).await;
                }
            });
        }
    });
    addr
}

/// Reads what arrives within `within` (until the peer closes or the time is up).
async fn read_for(s: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, async {
        let mut buf = [0u8; 256];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(b"\r\n") {
                break;
            }
        }
    })
    .await;
    got
}

/// Where the proxy is a waypoint for Istio alone, a client that says nothing is taken for a
/// server-first protocol: after the silence allowed it is decided at L4 (allowed here by a
/// rule that reads no HTTP) and relayed, so it sees the server's greeting long before the
/// header timeout. Control: where Cilium's HTTP rules apply, the same silent client gets no
/// greeting (it must speak HTTP) and is cut off.
#[tokio::test]
async fn a_server_first_protocol_is_relayed_where_only_istio_brought_it() {
    let server = greeting_server().await;
    let px = proxy(server, None).await;
    px.shared
        .apply(&istio_config(
            "[{from: [{source: {namespaces: [shop]}}]}, {to: [{operation: {methods: [GET]}}]}]",
            1,
        ))
        .expect("config");
    let started = Instant::now();
    let mut s = connect_from(CLIENT, px.addr).await;
    let greeting = read_for(&mut s, Duration::from_secs(3)).await;
    assert_eq!(
        greeting, b"220 ready\r\n",
        "the server's greeting through the proxy"
    );
    assert!(
        started.elapsed() < test_limits().header_timeout,
        "after the silence allowed, not the header timeout: {:?}",
        started.elapsed()
    );
    s.write_all(b"HELO lab\r\n").await.expect("write");
    assert_eq!(
        read_for(&mut s, Duration::from_secs(3)).await,
        b"HELO lab\r\n"
    );

    // Control: under Cilium HTTP rules a silent client gets nothing from the server.
    px.shared
        .apply(&config(server.port(), RULES, 2))
        .expect("config");
    let mut s = connect_from(CLIENT, px.addr).await;
    let got = read_for(&mut s, Duration::from_secs(3)).await;
    assert!(got.is_empty(), "no greeting under HTTP rules: {got:?}");
}
