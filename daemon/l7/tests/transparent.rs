//! Transparent mode's source binding, in a network namespace of its own: the upstream socket
//! is bound to the client's address, which is not an address of any interface (only a
//! policy-routing rule delivers its replies locally, as the tproxy setup does), so the server
//! sees the client pod's address. Binding such an address needs `IP_TRANSPARENT`.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremesh_l7::forward::{connect, Mode};

const CLIENT_POD: &str = "10.9.9.9";
const SERVER: &str = "10.1.0.1";

fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split(' '))
        .output()
        .expect("the ip command (iproute2)");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_netns<F: FnOnce() + Send + 'static>(body: F) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (a network namespace)"
    );
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): a network namespace for the test");
        body();
    })
    .join()
    .expect("the test thread");
}

#[test]
fn upstream_sees_the_clients_address() {
    in_netns(|| {
        ip("link set lo up");
        ip(&format!("addr add {SERVER}/32 dev lo"));
        // Replies to the client's address are delivered locally (to the transparent socket),
        // without the address being local: a rule and a `local` route in a table of their own.
        ip(&format!("rule add to {CLIENT_POD} lookup 100"));
        ip(&format!("route add local {CLIENT_POD}/32 dev lo table 100"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(check());
    });
}

async fn check() {
    let listener = tokio::net::TcpListener::bind((SERVER, 0))
        .await
        .expect("bind the server");
    let dst = listener.local_addr().expect("addr");
    let client: IpAddr = CLIENT_POD.parse().expect("ip");
    // Without IP_TRANSPARENT the address cannot be bound: the test's premise.
    let plain = std::net::TcpListener::bind(SocketAddr::new(client, 0));
    assert!(plain.is_err(), "{CLIENT_POD} must not be a local address");
    let server = tokio::spawn(async move {
        let (mut s, peer) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.expect("read");
        s.write_all(b"world").await.expect("write");
        peer
    });
    let mut up = connect(
        &Mode::Transparent,
        0xC00,
        client,
        dst,
        Duration::from_secs(5),
    )
    .await
    .expect("a transparent upstream connection");
    up.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), up.read_exact(&mut buf))
        .await
        .expect("the server answers")
        .expect("read");
    assert_eq!(&buf, b"world");
    let peer = server.await.expect("server task");
    assert_eq!(
        peer.ip(),
        client,
        "the server sees the client pod's address"
    );
    // The mark the eBPF programs look for is on the socket.
    let sock = socket2::SockRef::from(&up);
    assert_eq!(sock.mark().expect("SO_MARK"), 0xC00);
}

/// The `wiremesh proxy` process: it enforces the configuration saved by its predecessor from
/// the start (here: none for the address asked, so the request is denied), listens on both
/// families of its ports with IP_TRANSPARENT, and stops cleanly.
#[test]
fn the_process_restores_its_saved_configuration_and_fails_closed() {
    in_netns(|| {
        ip("link set lo up");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(process_check());
    });
}

async fn process_check() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("proxy-state.json");
    let saved = wiremesh_l7::L7Config {
        version: 41,
        ..Default::default()
    };
    std::fs::write(&state, serde_json::to_vec(&saved).expect("json")).expect("write state");
    let opts = wiremesh_l7::Options {
        ingress_port: 15006,
        egress_port: 15001,
        control_socket: dir.path().join("proxy.sock"),
        state_file: Some(state),
        mark: 0xC00,
        pid_file: Some(dir.path().join("proxy.pid")),
        // More than one, so that the connections below may land on different workers.
        workers: 2,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sock = opts.control_socket.clone();
    let proc = tokio::spawn(wiremesh_l7::process::run_until(opts, async move {
        let _ = stop_rx.await;
    }));
    let client = wiremesh_l7::ProxyClient::new(&sock);
    let mut version = None;
    for _ in 0..100 {
        if let Ok(v) = client.config_version().await {
            version = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(version, Some(41), "the saved configuration is in force");
    for addr in ["127.0.0.1:15006", "[::1]:15001"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("send");
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .await
            .expect("answer");
        assert!(line.starts_with("HTTP/1.1 403"), "{addr}: {line}");
    }
    stop_tx.send(()).expect("stop");
    proc.await.expect("task").expect("the proxy stops cleanly");
    assert!(!sock.exists(), "the control socket is removed");
    // Every worker closed its listeners: a socket without SO_REUSEPORT can take the ports.
    for addr in ["0.0.0.0:15006", "[::]:15001"] {
        let addr: std::net::SocketAddr = addr.parse().expect("address");
        wiremesh_l7::bind_transparent(addr)
            .unwrap_or_else(|e| panic!("{addr} still held after the proxy stopped: {e}"));
    }
}
