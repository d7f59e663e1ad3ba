#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

//! The local sockets (admin API, UAPI) and the metrics port under hostile clients, in process:
//! who may connect (SO_PEERCRED, whatever the file mode), request size caps, the slowloris
//! timeout, the connection cap, and metrics that never reach the data path. Needs root (to act
//! as other users).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{as_user, exchange, FakeDatapath, PEER_HEX, SECRET_HEX};
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremesh::admin::{metrics, AdminServer};
use wiremesh::api::{paths, AgentClient};
use wiremesh_datapath::listen::{Access, Limits};
use wiremesh_datapath::uapi::server::UapiServer;

const GROUP: u32 = 4242;
const NOBODY: u32 = 65534;

fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Other users must reach the sockets in it: only the credential check stands in the way.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The admin server on `<dir>/wiremesh.sock` with default access and limits.
fn serve_admin(dir: &Path, state: &common::TestAdmin) -> (std::path::PathBuf, AdminServer) {
    let sock = wiremesh::api::socket_path(dir);
    let server = bind_admin(
        &sock,
        state.views.routes(),
        Access::default(),
        Limits::ADMIN,
    );
    (sock, server)
}

/// Binds the admin socket at `sock` and runs its accept loop in a task of its own.
fn bind_admin(
    sock: &Path,
    routes: std::sync::Arc<wiremesh::admin::Routes>,
    access: Access,
    limits: Limits,
) -> AdminServer {
    let server = AdminServer::bind(sock, routes, access, limits).unwrap();
    tokio::spawn(server.acceptor().serve());
    server
}

fn widen(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// `wiremesh ARGS` as `uid`/`gid` (the real CLI, in a process of its own): exit, stdout+stderr.
fn cli_as(uid: u32, gid: u32, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wiremesh"))
        .args(args)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("running the wiremesh binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Waits until the server has closed `stream` (EOF or reset), at most `within`; returns when.
async fn closed_within(stream: &mut (impl AsyncReadExt + Unpin), within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open for {within:?}"
    );
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uapi_checks_the_peer_not_only_the_file_mode() {
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let sock = dir.path().join("wm_test0.sock");
    let access = Access {
        reader_gid: Some(GROUP),
    };
    let _server = UapiServer::bind_at(&sock, fake.datapath(), access, Limits::UAPI).unwrap();
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, GROUP));
    widen(&sock);

    // Anyone else: refused, whatever they ask, and the data path never hears of it.
    let s = sock.clone();
    let other = blocking(move || {
        as_user(NOBODY, NOBODY, &[], move || {
            let get = exchange(&s, b"get=1\n\n").unwrap();
            let set = exchange(
                &s,
                format!("set=1\nprivate_key={}\n\n", "11".repeat(32)).as_bytes(),
            )
            .unwrap();
            (get, set)
        })
    })
    .await;
    assert_eq!(other, ("errno=1\n\n".into(), "errno=1\n\n".into()));

    // The group (here as a supplementary group): get, without any key; never set.
    let s = sock.clone();
    let (get, set) = blocking(move || {
        as_user(NOBODY, NOBODY, &[GROUP], move || {
            let get = exchange(&s, b"get=1\n\n").unwrap();
            let set = exchange(
                &s,
                format!("set=1\npublic_key={PEER_HEX}\nremove=true\n\n").as_bytes(),
            )
            .unwrap();
            (get, set)
        })
    })
    .await;
    assert!(
        get.contains(&format!("public_key={PEER_HEX}")) && get.ends_with("errno=0\n\n"),
        "{get}"
    );
    assert!(
        !get.contains("private_key") && !get.contains(SECRET_HEX),
        "{get}"
    );
    assert_eq!(set, "errno=1\n\n");
    assert_eq!(fake.sets.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The control: root gets the private key (as `wg showconf` needs) and may set.
    let s = sock.clone();
    let (get, set) = blocking(move || {
        let get = exchange(&s, b"get=1\n\n").unwrap();
        let set = exchange(
            &s,
            format!("set=1\npublic_key={PEER_HEX}\nremove=true\n\n").as_bytes(),
        )
        .unwrap();
        (get, set)
    })
    .await;
    assert!(get.contains(&format!("private_key={SECRET_HEX}")), "{get}");
    assert_eq!(set, "errno=0\n\n");
    assert_eq!(fake.sets.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uapi_caps_line_length_and_request_size() {
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let sock = dir.path().join("wm_test0.sock");
    let limits = Limits {
        max_body: 64 << 10,
        ..Limits::UAPI
    };
    let _server = UapiServer::bind_at(&sock, fake.datapath(), Access::default(), limits).unwrap();
    let s = sock.clone();
    let (long_line, huge, normal) = blocking(move || {
        let long_line = exchange(
            &s,
            format!("set=1\nendpoint={}\n\n", "1".repeat(5000)).as_bytes(),
        )
        .unwrap();
        let many = format!(
            "set=1\npublic_key={PEER_HEX}\n{}\n",
            "allowed_ip=10.244.2.0/24\n".repeat(4000)
        );
        let huge = exchange(&s, many.as_bytes()).unwrap();
        let normal = exchange(
            &s,
            format!("set=1\npublic_key={PEER_HEX}\nallowed_ip=10.244.2.0/24\n\n").as_bytes(),
        )
        .unwrap();
        (long_line, huge, normal)
    })
    .await;
    let e2big = format!("errno={}\n\n", libc::E2BIG);
    assert_eq!(long_line, e2big);
    assert_eq!(huge, e2big);
    assert_eq!(normal, "errno=0\n\n", "the control request");
    assert_eq!(fake.sets.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uapi_slow_client_is_cut_off_and_the_cap_holds() {
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let sock = dir.path().join("wm_test0.sock");
    let limits = Limits {
        max_conns: 2,
        header_timeout: Duration::from_millis(500),
        ..Limits::UAPI
    };
    let _server = UapiServer::bind_at(&sock, fake.datapath(), Access::default(), limits).unwrap();
    // Slowloris: a request begun, never finished, one byte at a time.
    let mut slow = tokio::net::UnixStream::connect(&sock).await.unwrap();
    slow.write_all(b"get=1\n").await.unwrap();
    let mut idle = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(300),
        "closed after {took:?}, before the timeout"
    );
    closed_within(&mut idle, Duration::from_secs(5)).await;

    // The cap: two held connections (a generous timeout now), the third is closed unanswered.
    let limits = Limits {
        max_conns: 2,
        header_timeout: Duration::from_secs(60),
        ..Limits::UAPI
    };
    let sock2 = dir.path().join("wm_test1.sock");
    let _server2 = UapiServer::bind_at(&sock2, fake.datapath(), Access::default(), limits).unwrap();
    let held1 = tokio::net::UnixStream::connect(&sock2).await.unwrap();
    let _held2 = tokio::net::UnixStream::connect(&sock2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let s = sock2.clone();
    let third = blocking(move || exchange(&s, b"get=1\n\n")).await;
    assert!(
        matches!(&third, Ok(a) if a.is_empty()) || third.is_err(),
        "{third:?}"
    );
    // The control: a slot freed, the next client is answered.
    drop(held1);
    let s = sock2.clone();
    let answer = blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let a = exchange(&s, b"get=1\n\n").unwrap_or_default();
            if !a.is_empty() || Instant::now() > deadline {
                return a;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await;
    assert!(answer.ends_with("errno=0\n\n"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_other_users_and_lets_the_group_only_read() {
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let state = common::admin_state(dir.path(), fake.datapath());
    let sock = wiremesh::api::socket_path(dir.path());
    let access = Access {
        reader_gid: Some(GROUP),
    };
    let _server = bind_admin(&sock, state.views.routes(), access, Limits::ADMIN);
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, GROUP));
    let run_dir = dir.path().to_str().unwrap().to_string();

    let rd = run_dir.clone();
    let (ok, out) = blocking(move || {
        cli_as(
            NOBODY,
            GROUP,
            &["encrypt", "status", "--json", "--run-dir", &rd],
        )
    })
    .await;
    let peer = keymgr::PublicKey::from_hex(PEER_HEX).unwrap().to_base64();
    assert!(
        ok && out.contains(&peer),
        "the group may read status: {out}"
    );
    let rd = run_dir.clone();
    let (ok, out) =
        blocking(move || cli_as(NOBODY, GROUP, &["keys", "rotate", "--run-dir", &rd])).await;
    assert!(
        !ok && out.contains("403") && out.contains("may only read"),
        "{out}"
    );

    widen(&sock);
    let rd = run_dir.clone();
    let (ok, out) =
        blocking(move || cli_as(NOBODY, NOBODY, &["encrypt", "status", "--run-dir", &rd])).await;
    assert!(
        !ok && out.contains("403") && out.contains("permission denied: uid 65534"),
        "{out}"
    );

    // The control: root reaches the rotator (which fails on purpose in this test).
    let rd = run_dir.clone();
    let (ok, out) = blocking(move || cli_as(0, 0, &["keys", "rotate", "--run-dir", &rd])).await;
    assert!(!ok && out.contains("test rotator"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_body_over_the_limit_gets_413() {
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let state = common::admin_state(dir.path(), fake.datapath());
    let sock = wiremesh::api::socket_path(dir.path());
    let limits = Limits {
        max_body: 1024,
        ..Limits::ADMIN
    };
    let _server = bind_admin(&sock, state.views.routes(), Access::default(), limits);
    let big = format!("{{\"objects\": \"{}\"}}", "x".repeat(4096));
    let agent = AgentClient::new(&sock);
    let err = agent
        .send(Method::POST, paths::OBJECTS, big)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("413") && err.contains("1024"), "{err}");
    // The control: a small body reaches the parser (and is refused by it).
    let err = agent
        .send(Method::POST, paths::OBJECTS, "{".into())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("400"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_slowloris_and_idle_clients_are_cut_off_and_the_cap_holds() {
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let state = common::admin_state(dir.path(), fake.datapath());
    let sock = wiremesh::api::socket_path(dir.path());
    let limits = Limits {
        max_conns: 2,
        header_timeout: Duration::from_millis(700),
        ..Limits::ADMIN
    };
    let _server = bind_admin(&sock, state.views.routes(), Access::default(), limits);
    let mut slow = tokio::net::UnixStream::connect(&sock).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Slowloris: one more header line every 100 ms, for at most 10 s.
    let drip = async {
        let start = Instant::now();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
                return Some(start.elapsed());
            }
        }
        None
    };
    let mut idle = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let (took, dripped) = tokio::join!(closed_within(&mut idle, Duration::from_secs(5)), drip);
    assert!(
        took >= Duration::from_millis(500),
        "idle closed after {took:?}"
    );
    let dripped = dripped.expect("the slowloris client was never cut off");
    assert!(
        dripped >= Duration::from_millis(500),
        "cut off after {dripped:?}"
    );

    // The cap, on a server with a generous timeout.
    let limits = Limits {
        max_conns: 2,
        header_timeout: Duration::from_secs(60),
        ..Limits::ADMIN
    };
    let sock2 = dir.path().join("wiremesh2.sock");
    let _server2 = bind_admin(&sock2, state.views.routes(), Access::default(), limits);
    let held1 = tokio::net::UnixStream::connect(&sock2).await.unwrap();
    let _held2 = tokio::net::UnixStream::connect(&sock2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::UnixStream::connect(&sock2).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer)).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    drop(held1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = AgentClient::new(&sock2).healthz().await.unwrap();
    assert_eq!(
        ok, "ok\n",
        "the control: a freed slot serves the next client"
    );
}

async fn scrape(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("scrape answered")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

const GET_METRICS: &str = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_never_reach_the_data_path() {
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let state = common::admin_state(dir.path(), fake.datapath());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(metrics::serve(
        std::sync::Arc::new(listener),
        state.views.metrics.clone(),
        Limits::METRICS,
    ));
    for _round in 0..4 {
        let scrapes: Vec<_> = (0..12)
            .map(|_| tokio::spawn(scrape(addr, GET_METRICS)))
            .collect();
        for s in scrapes {
            let body = s.await.unwrap();
            assert!(body.starts_with("HTTP/1.1 200"), "{body}");
            assert!(body.contains("wiremesh_peers 1"), "{body}");
            assert!(
                body.contains("wiremesh_peer_rx_bytes_total{node=") && body.contains("} 1234"),
                "{body}"
            );
        }
    }
    assert_eq!(fake.gets(), 0, "a scrape reached the data path");
    let post = scrape(
        addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let other = scrape(addr, "GET /v1/encrypt/status HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    // The control: the detector counts a request that does reach the data path.
    let (sock, _admin) = serve_admin(dir.path(), &state);
    AgentClient::new(&sock).status_json().await.unwrap();
    assert_eq!(fake.gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_scraper_delays_nothing_else() {
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let state = common::admin_state(dir.path(), fake.datapath());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        max_conns: 4,
        header_timeout: Duration::from_secs(2),
        ..Limits::METRICS
    };
    tokio::spawn(metrics::serve(
        std::sync::Arc::new(listener),
        state.views.metrics.clone(),
        limits,
    ));
    let (sock, _admin) = serve_admin(dir.path(), &state);
    // Every slot taken by a scraper that starts a request and never finishes it.
    let mut hostile = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        hostile.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile the admin API and the data path answer as usual.
    for _ in 0..5 {
        let status = tokio::time::timeout(
            Duration::from_secs(5),
            AgentClient::new(&sock).status_json(),
        )
        .await
        .expect("the admin API answered while the metrics port was saturated")
        .unwrap();
        assert!(
            status.contains(&keymgr::PublicKey::from_hex(PEER_HEX).unwrap().to_base64()),
            "{status}"
        );
        state.datapath().get().await.unwrap();
    }
    assert_eq!(fake.gets(), 10);
    // The hostile connections are cut at the header timeout, and scrapes are served again.
    for s in &mut hostile {
        closed_within(s, Duration::from_secs(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = scrape(addr, GET_METRICS).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_shows_in_healthz_and_encrypt_status() {
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let state = common::admin_state(dir.path(), fake.datapath());
    let (sock, _server) = serve_admin(dir.path(), &state);
    let agent = AgentClient::new(&sock);
    let rd = dir.path().to_str().unwrap().to_string();
    // The control: every task running, nothing about tasks anywhere.
    assert_eq!(agent.healthz().await.unwrap(), "ok\n");
    let json = agent.status_json().await.unwrap();
    assert!(!json.contains("\"tasks\""), "{json}");
    let r = rd.clone();
    let (ok, out) = blocking(move || cli_as(0, 0, &["encrypt", "status", "--run-dir", &r])).await;
    assert!(ok && !out.contains("Task "), "{out}");

    state.health.send_modify(|h| {
        let restarting = wiremesh::api::TaskStatus {
            state: wiremesh::api::TaskState::Restarting,
            restarts: 1,
            last_failure: Some("panicked: boom".into()),
        };
        h.insert("rotation".into(), restarting);
    });
    let err = agent.healthz().await.unwrap_err().to_string();
    assert!(
        err.contains("503") && err.contains("task rotation is restarting (panicked: boom)"),
        "{err}"
    );
    let status = agent.status().await.unwrap();
    assert_eq!(status.tasks.len(), 1);
    let r = rd.clone();
    let (ok, out) = blocking(move || cli_as(0, 0, &["encrypt", "status", "--run-dir", &r])).await;
    assert!(
        ok && out.contains(
            "\tTask rotation: RESTARTING (restarted 1 times, last failure: panicked: boom)\n"
        ),
        "{out}"
    );
}

/// The real supervisor with a control loop that panics every time it runs: the agent's admin
/// API reports it at once (`/healthz` 503 naming the task and the panic, `encrypt status` a
/// RESTARTING line), and after five failures in a row the supervisor ends the agent with an
/// error naming the task instead of running on half-alive. The control: before the supervisor
/// has seen the panic, and for the loop that keeps running, nothing is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_loop_that_panics_is_reported_and_then_ends_the_agent() {
    use wiremesh::agent::supervisor::{Supervisor, TaskState, Timing};
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let mut supervisor = Supervisor::new(Timing {
        first_backoff: Duration::from_millis(200),
        healthy_after: Duration::from_secs(60),
    });
    supervisor.spawn("policy", || async {
        panic!("injected fault in the policy loop");
    });
    supervisor.spawn("rotation", || async {
        std::future::pending::<()>().await;
        Ok(())
    });
    let health = supervisor.health();
    let (unused_tx, _) = tokio::sync::watch::channel(Default::default());
    let state = common::admin_state_with(dir.path(), fake.datapath(), unused_tx, health.clone());
    let (sock, _server) = serve_admin(dir.path(), &state);
    let agent = AgentClient::new(&sock);
    assert_eq!(
        agent.healthz().await.unwrap(),
        "ok\n",
        "nothing reported yet"
    );

    let event_loop = tokio::spawn(async move { supervisor.run().await });
    let mut watching = health.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        watching.wait_for(|h| h["policy"].state == TaskState::Restarting),
    )
    .await
    .expect("the panic is noticed within 5 s")
    .unwrap();
    let err = agent.healthz().await.unwrap_err().to_string();
    assert!(
        err.contains("503")
            && err.contains("task policy is restarting")
            && err.contains("injected fault in the policy loop")
            && !err.contains("task rotation"),
        "{err}"
    );
    let rd = dir.path().to_str().unwrap().to_string();
    let (ok, out) = blocking(move || cli_as(0, 0, &["encrypt", "status", "--run-dir", &rd])).await;
    assert!(ok && out.contains("\tTask policy: RESTARTING ("), "{out}");
    assert!(!out.contains("Task rotation"), "{out}");

    let gave_up = tokio::time::timeout(Duration::from_secs(30), event_loop)
        .await
        .expect("the supervisor gives up within 30 s")
        .unwrap();
    assert_eq!(gave_up.task, "policy");
    assert_eq!(gave_up.failures, wiremesh::agent::supervisor::MAX_FAILURES);
    assert!(
        gave_up
            .to_string()
            .contains("injected fault in the policy loop"),
        "{gave_up}"
    );
    assert_eq!(health.borrow()["policy"].restarts, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_dir_flag_goes_before_or_after_the_command() {
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let state = common::admin_state(dir.path(), fake.datapath());
    let (_sock, _server) = serve_admin(dir.path(), &state);
    let peer = keymgr::PublicKey::from_hex(PEER_HEX).unwrap().to_base64();
    let rd = dir.path().to_str().unwrap().to_string();
    for args in [
        vec!["--run-dir", &rd, "encrypt", "status", "--json"],
        vec!["encrypt", "--run-dir", &rd, "status", "--json"],
        vec!["encrypt", "status", "--json", "--run-dir", &rd],
    ] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let (ok, out) = blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli_as(0, 0, &args)
        })
        .await;
        assert!(ok && out.contains(&peer), "{out}");
    }
    // The control: another run directory is another (absent) agent, named in the error.
    let other = dir.path().join("elsewhere");
    let other = other.to_str().unwrap().to_string();
    let o = other.clone();
    let (ok, out) = blocking(move || cli_as(0, 0, &["--run-dir", &o, "keys", "rotate"])).await;
    assert!(
        !ok && out.contains(&format!(
            "cannot reach the wiremesh agent at {other}/wiremesh.sock"
        )),
        "{out}"
    );
}

/// The admin socket's accept loop is a supervised task: when it dies, nothing answers on the
/// socket (the control: a request in the gap gets no reply), and once the supervisor has
/// restarted it from its factory the same socket is served again, the restart counted in
/// `/healthz?verbose`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_socket_is_served_again_after_its_accept_loop_dies() {
    use wiremesh::agent::supervisor::TaskState;
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let mut supervisor = common::slow_supervisor(Duration::from_secs(2));
    let health = supervisor.health();
    let (unused_tx, _) = tokio::sync::watch::channel(Default::default());
    let state = common::admin_state_with(dir.path(), fake.datapath(), unused_tx, health.clone());
    let sock = wiremesh::api::socket_path(dir.path());
    let server = AdminServer::bind(
        &sock,
        state.views.routes(),
        Access::default(),
        Limits::ADMIN,
    )
    .unwrap();
    let kill = std::sync::Arc::new(tokio::sync::Notify::new());
    let acceptor = server.acceptor();
    supervisor.spawn(
        "admin",
        common::dies_once(kill.clone(), move || acceptor.serve()),
    );
    let supervising = tokio::spawn(async move { supervisor.run().await });
    let agent = AgentClient::new(&sock);
    let before = agent.healthz_verbose().await.unwrap();
    assert_eq!(before, "[+]task admin ok\nhealthz check passed\n");

    kill.notify_one();
    common::wait_task(&health, "admin", TaskState::Restarting).await;
    let in_gap = tokio::time::timeout(Duration::from_millis(500), agent.healthz()).await;
    assert!(
        in_gap.is_err(),
        "the socket answered with its accept loop dead: {in_gap:?}"
    );
    common::wait_task(&health, "admin", TaskState::Running).await;
    let after = tokio::time::timeout(Duration::from_secs(5), agent.healthz_verbose())
        .await
        .expect("the restarted loop answers within 5 s")
        .unwrap();
    assert_eq!(
        after,
        "[+]task admin ok (restarted 1 times)\nhealthz check passed\n"
    );
    supervising.abort();
    drop(server);
}

/// The metrics listener's accept loop is a supervised task too: the same port is served again
/// after it died and was restarted (the control: no scrape is answered in the gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_is_served_again_after_its_accept_loop_dies() {
    use wiremesh::agent::supervisor::TaskState;
    let dir = open_dir();
    let fake = FakeDatapath::start(dir.path());
    let state = common::admin_state(dir.path(), fake.datapath());
    let listener = std::sync::Arc::new(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let addr = listener.local_addr().unwrap();
    let mut supervisor = common::slow_supervisor(Duration::from_secs(2));
    let health = supervisor.health();
    let kill = std::sync::Arc::new(tokio::sync::Notify::new());
    let view = state.views.metrics.clone();
    supervisor.spawn(
        "metrics",
        common::dies_once(kill.clone(), move || {
            metrics::serve(listener.clone(), view.clone(), Limits::METRICS)
        }),
    );
    let supervising = tokio::spawn(async move { supervisor.run().await });
    let body = scrape(addr, GET_METRICS).await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");

    kill.notify_one();
    common::wait_task(&health, "metrics", TaskState::Restarting).await;
    let in_gap = tokio::time::timeout(Duration::from_millis(500), scrape(addr, GET_METRICS)).await;
    assert!(
        in_gap.is_err(),
        "the port answered with its accept loop dead: {in_gap:?}"
    );
    common::wait_task(&health, "metrics", TaskState::Running).await;
    let body = tokio::time::timeout(Duration::from_secs(5), scrape(addr, GET_METRICS))
        .await
        .expect("the restarted loop answers within 5 s");
    assert!(
        body.starts_with("HTTP/1.1 200") && body.contains("wiremesh_peers 1"),
        "{body}"
    );
    supervising.abort();
}
