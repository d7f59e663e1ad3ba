//! The control socket and its client: configuration push (refused whole when invalid, the one
//! in force kept), version, flows, stats, the state file, and the root-only check.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use wiremesh_l7::client::ClientError;
use wiremesh_l7::flows::Verdict;
use wiremesh_l7::{ProxyClient, Shared};

const NOBODY: u32 = 65534;

async fn control(shared: Arc<Shared>, dir: &std::path::Path) -> ProxyClient {
    let path = dir.join("proxy.sock");
    let listener = wiremesh_l7::control::bind(&path).expect("bind control socket");
    tokio::spawn(wiremesh_l7::control::serve(listener, shared));
    ProxyClient::new(&path)
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_and_the_old_one_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state/proxy.json");
    let up = upstream("127.0.0.1", false).await;
    let px = proxy(up.addr, Some(state.clone())).await;
    let client = control(px.shared.clone(), dir.path()).await;
    assert_eq!(client.config_version().await.expect("version"), 0);
    let good = config(up.addr.port(), RULES, 1);
    let applied = client.put_config(&good).await.expect("accepted");
    assert_eq!((applied.version, applied.saved), (1, true));
    let mut bad = config(up.addr.port(), r#"[{method: GET, path: "/other"}]"#, 2);
    let entry = bad.endpoints[0]
        .entries
        .iter_mut()
        .find(|e| e.http.is_some())
        .expect("an entry with rules");
    entry.http.as_mut().expect("rules")[0].path = Some("/x/(unclosed".into());
    let err = client.put_config(&bad).await.expect_err("refused");
    match &err {
        ClientError::Refused {
            status, message, ..
        } => {
            assert_eq!(*status, 400);
            assert!(
                message.contains("shop/api") && message.contains(".path"),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(client.config_version().await.expect("version"), 1);
    // Still judged by version 1.
    let a = exchange(
        CLIENT,
        px.addr,
        b"GET /public/a HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(a[0].status, 200);
    // The state file holds version 1, and a new proxy loads it.
    let saved = wiremesh_l7::state::load_state(&state)
        .expect("readable")
        .expect("saved");
    assert_eq!(saved, good);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&state).expect("state file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn flows_and_stats_through_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (up, px) = {
        let up = upstream("127.0.0.1", false).await;
        let px = proxy(up.addr, None).await;
        (up, px)
    };
    let client = control(px.shared.clone(), dir.path()).await;
    client
        .put_config(&config(up.addr.port(), RULES, 3))
        .await
        .expect("accepted");
    // A reader waiting for the next flow gets it as soon as it is recorded.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.flows(0, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    exchange(
        ATTACKER,
        px.addr,
        b"GET /private HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    let first = waiting.await.expect("task").expect("flows");
    assert_eq!(first.len(), 1);
    let f = &first[0];
    assert_eq!(f.verdict, Verdict::Dropped);
    assert_eq!(f.source.pod.as_deref(), Some("attacker"));
    assert!(
        f.source.labels.contains(&"app=attacker".to_string()),
        "{f:?}"
    );
    assert_eq!(f.destination.pod.as_deref(), Some("api"));
    assert_eq!(f.l4.port, up.addr.port());
    exchange(
        CLIENT,
        px.addr,
        b"GET /public/a HTTP/1.1\r\nHost: api\r\n\r\n",
        1,
    )
    .await;
    let next = client
        .flows(first[0].seq, Duration::ZERO)
        .await
        .expect("flows");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].verdict, Verdict::Forwarded);
    let stats = client.stats().await.expect("stats");
    assert_eq!((stats.forwarded, stats.dropped), (1, 1));
    assert_eq!(stats.latency_count, 2);
    assert_eq!(stats.config_version, 3);
}

/// Only root may use the control socket (the proxy holds every pod's policy).
#[tokio::test]
async fn the_control_socket_refuses_another_user() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (to act as another user)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // Let nobody reach the socket file, so that the credential check is what refuses.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let up = upstream("127.0.0.1", false).await;
    let px = proxy(up.addr, None).await;
    let client = control(px.shared.clone(), dir.path()).await;
    let path = dir.path().join("proxy.sock");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod");
    let answer = tokio::task::spawn_blocking(move || {
        as_user(NOBODY, NOBODY, move || {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
            s.write_all(b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("send");
            let mut out = String::new();
            s.read_to_string(&mut out).expect("read");
            out
        })
    })
    .await
    .expect("the blocking task");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("uid 65534"), "{answer}");
    // Root is served.
    assert_eq!(client.config_version().await.expect("version"), 0);
}

/// Runs `f` on a thread whose credentials are `uid`/`gid` (raw syscalls change only the
/// calling thread's credentials), so the control socket sees them through `SO_PEERCRED`.
fn as_user<T: Send + 'static>(uid: u32, gid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on this thread's own credentials.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        f()
    })
    .join()
    .expect("the thread acting as another user")
}
