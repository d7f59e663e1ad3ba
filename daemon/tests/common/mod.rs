//! Test support for the in-process agent tests: a fake data path behind a UAPI socket that
//! counts what it is asked, the admin server's views wired to it, a way to act as another user,
//! a network namespace per test, and supervised tasks that die once on cue.

#![allow(dead_code)] // Each test binary uses part of this.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use keymgr::store::objects::ObjectStore;
use keymgr::store::StoreHealth;
use keymgr::{PrivateKey, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;
use wiremesh::admin::encrypt::{EncryptView, NodeFacts};
use wiremesh::admin::keys::RotationFailed;
use wiremesh::admin::metrics::MetricsView;
use wiremesh::admin::objects::ObjectsView;
use wiremesh::admin::view::{OwnKeyView, View};
use wiremesh::admin::AdminViews;
use wiremesh::api::Health;
use wiremesh_datapath::backend::Datapath;
use wiremesh_datapath::model::{DeviceState, DeviceView, PeerState};
use wiremesh_datapath::uapi::client::UapiClient;
use wiremesh_datapath::uapi::{self, state as uapi_state};

/// The RFC 7748 test vector private key, the secret the tests look for in logs.
pub const SECRET_HEX: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
pub const SECRET_B64: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
pub const PEER_HEX: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

/// A data path that answers the UAPI from a fixed state and counts every request.
pub struct FakeDatapath {
    pub path: PathBuf,
    pub gets: Arc<AtomicU64>,
    pub sets: Arc<AtomicU64>,
    /// The text of every `set` received.
    pub received: Arc<Mutex<Vec<String>>>,
}

impl FakeDatapath {
    pub fn start(dir: &Path) -> Self {
        let path = dir.join("fake-datapath.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (gets, sets) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (g, s, r) = (gets.clone(), sets.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (g, s, r) = (g.clone(), s.clone(), r.clone());
                tokio::spawn(async move {
                    let mut text = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !text.ends_with(b"\n\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => text.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&text).into_owned();
                    let answer = if text.starts_with("set=1") {
                        s.fetch_add(1, Ordering::SeqCst);
                        r.lock().unwrap().push(text);
                        uapi::format_errno(0)
                    } else {
                        g.fetch_add(1, Ordering::SeqCst);
                        uapi_state::format_get(&device_state(), text.starts_with("wiremesh_"))
                            .to_string()
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self {
            path,
            gets,
            sets,
            received,
        }
    }

    pub fn datapath(&self) -> Arc<Datapath> {
        Arc::new(Datapath::Process(UapiClient::new(&self.path)))
    }

    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::SeqCst)
    }
}

/// The state the fake data path reports: our secret key and one peer.
pub fn device_state() -> DeviceState {
    DeviceState {
        private_key: Some(PrivateKey::from_hex(SECRET_HEX).unwrap()),
        next_public_key: None,
        listen_port: 51871,
        fwmark: 0,
        peers: vec![PeerState {
            public_key: keymgr::PublicKey::from_hex(PEER_HEX).unwrap(),
            preshared_key: None,
            endpoint: Some("198.18.0.2:51871".parse().unwrap()),
            persistent_keepalive: 0,
            allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
            last_handshake: None,
            rx_bytes: 1234,
            tx_bytes: 5678,
            next_public_key: None,
            active_key: None,
            ready_for: Vec::new(),
        }],
        handshakes: None,
        process: None,
    }
}

/// The admin server's views over `datapath`, with a published data-path view (as the reconcile
/// loop leaves it), and the senders a test can publish another view or task health with.
pub struct TestAdmin {
    pub views: Arc<AdminViews>,
    pub device_view: watch::Sender<Option<Arc<DeviceView>>>,
    pub health: watch::Sender<Health>,
}

impl TestAdmin {
    pub fn datapath(&self) -> &Datapath {
        &self.views.encrypt.datapath
    }
}

pub fn admin_state(dir: &Path, datapath: Arc<Datapath>) -> TestAdmin {
    let (health_tx, health_rx) = watch::channel(Health::default());
    admin_state_with(dir, datapath, health_tx, health_rx)
}

/// The same, reading task health from `health_rx` (e.g. a real supervisor's view).
pub fn admin_state_with(
    dir: &Path,
    datapath: Arc<Datapath>,
    health_tx: watch::Sender<Health>,
    health_rx: watch::Receiver<Health>,
) -> TestAdmin {
    let own = OwnKeyView {
        public: PrivateKey::from_hex(SECRET_HEX).unwrap().public_key(),
        epoch: 1,
        created: SystemTime::now(),
        next: None,
        next_rotation: None,
    };
    let view = DeviceView::of(device_state(), SystemTime::now());
    let (view_tx, view_rx) = watch::channel(Some(Arc::new(view)));
    let store_dir = dir.join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let encrypt = Arc::new(EncryptView {
        facts: NodeFacts {
            interface: "wm_test0".into(),
            mtu: 1420,
            node_name: "n1".into(),
            cluster_name: "default".into(),
            store: "test".into(),
        },
        datapath,
        store_health: watch::channel(StoreHealth::Connected).1,
        snapshots: watch::channel(Arc::new(Snapshot::default())).1,
        own: View::fixed(own),
        names: View::fixed(Arc::new(HashMap::new())),
        strict: watch::channel(Default::default()).1,
        health: health_rx,
    });
    let policy = View::fixed(Default::default());
    let flows = wiremesh::admin::flows::Flows::default();
    let views = AdminViews {
        encrypt: encrypt.clone(),
        // A rotator that always fails: enough to tell that a rotation was reached.
        rotate: Arc::new(|| {
            Box::pin(async { Err(RotationFailed::Rotator("test rotator".into())) })
        }),
        objects: Arc::new(ObjectsView {
            store: Arc::new(ObjectStore::dir(&store_dir).unwrap()),
            nodes: watch::channel(Arc::new(Snapshot::default())).1,
            validate: Arc::new(|_, _| Ok(())),
        }),
        policy: policy.clone(),
        clustermesh: View::fixed(Default::default()),
        metrics: Arc::new(MetricsView {
            node: encrypt,
            device: view_rx,
            policy,
            totals: View::fixed(Default::default()),
            flows: flows.log.clone(),
            proxy_stats: flows.proxy_stats.subscribe(),
            clustermesh: watch::channel(Default::default()).1,
        }),
        flows,
    };
    TestAdmin {
        views: Arc::new(views),
        device_view: view_tx,
        health: health_tx,
    }
}

/// Runs `f` on a thread of its own whose credentials are `uid`/`gid`/`groups` (raw syscalls
/// change only the calling thread's credentials, unlike libc's process-wide wrappers), so that
/// whatever it connects to sees those credentials through `SO_PEERCRED`.
pub fn as_user<T: Send + 'static>(
    uid: u32,
    gid: u32,
    groups: &[u32],
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (to act as another user)"
    );
    let groups: Vec<libc::gid_t> = groups.to_vec();
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on this thread's own credentials; the buffer outlives them.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        assert_eq!(nix::unistd::geteuid().as_raw(), uid);
        f()
    })
    .join()
    .expect("the thread acting as another user panicked")
}

/// One blocking exchange on a Unix socket: write `request`, read until the peer closes or
/// answers with an empty line.
pub fn exchange(path: &Path, request: &[u8]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"\n\n") {
                    break;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Runs `body` on a thread of its own inside a new network namespace (threads it creates, such
/// as the data path's, are born in it too).
pub fn in_netns<F: FnOnce() + Send + 'static>(test: &str, body: F) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root (a network namespace): run as root, e.g. via scripts/test.sh"
    );
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET): a network namespace for the test");
        body();
    })
    .join()
    .expect("the test thread");
}

/// A supervisor whose first restart comes after `backoff`, long enough to see the gap.
pub fn slow_supervisor(backoff: Duration) -> wiremesh::agent::supervisor::Supervisor {
    use wiremesh::agent::supervisor::{Supervisor, Timing};
    Supervisor::new(Timing {
        first_backoff: backoff,
        healthy_after: Duration::from_secs(60),
    })
}

/// A supervised task's factory whose first run serves with `serve()` until `kill` fires and
/// then panics; later runs serve for ever.
pub fn dies_once<F, Fut>(
    kill: std::sync::Arc<tokio::sync::Notify>,
    serve: F,
) -> impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
       + Send
       + 'static
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut first = true;
    move || {
        let serving = serve();
        let kill = std::mem::take(&mut first).then(|| kill.clone());
        Box::pin(async move {
            match kill {
                Some(kill) => tokio::select! {
                    () = serving => {}
                    () = kill.notified() => panic!("injected fault"),
                },
                None => serving.await,
            }
            Ok(())
        })
    }
}

/// Waits (5 s at most) until the supervisor reports `task` in `state`.
pub async fn wait_task(
    health: &tokio::sync::watch::Receiver<wiremesh::api::Health>,
    task: &str,
    state: wiremesh::agent::supervisor::TaskState,
) {
    let mut watching = health.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        watching.wait_for(|h| h.get(task).is_some_and(|s| s.state == state)),
    )
    .await
    .unwrap_or_else(|_| panic!("task {task} is not {state:?} within 5 s"))
    .unwrap();
}
