//! The server as a child process and `kubectl` runs against it, for the integration tests: a
//! lab directory (TLS files, state file, audit log, RBAC and token files, kubeconfigs), the
//! server started and waited for through its `ready <url>` line, stopped with SIGTERM.
//! Every wait is bounded.
#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const READY_WITHIN: Duration = Duration::from_secs(30);
const KUBECTL_WITHIN: Duration = Duration::from_secs(60);

/// `kubectl` from PATH; a missing one fails the test (install `kubernetes-client`).
pub fn kubectl_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "kubectl is not on PATH: these tests drive the fake API server with the real \
                 client; install it (scripts/install-deps.sh, or apt-get install \
                 kubernetes-client)"
            )
        })
}

/// One lab directory.
pub struct Lab {
    dir: tempfile::TempDir,
}

/// What one kubectl run printed.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Lab {
    /// A directory with the RBAC file and the tokens: `admin-token` (group `system:masters`)
    /// and `agent-token` (the agent's service account).
    pub fn new(rbac: &str) -> Self {
        let lab = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        lab.write("rbac.yaml", rbac);
        lab.write(
            "tokens",
            "# token=user[:groups]\nadmin-token=admin:system:masters\n\
             agent-token=system:serviceaccount:kube-system:wiremesh\n",
        );
        lab
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        path
    }

    pub fn audit(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// A kubeconfig for `server` with its CA and `token`.
    pub fn kubeconfig(&self, server: &Server, token: &str) -> String {
        let ca = self.tls_dir().join("ca.crt");
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             \x20   certificate-authority: {}\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: u\ncurrent-context: fake\nusers:\n- name: u\n  user:\n    \
             token: {token}\n",
            server.url,
            ca.display()
        );
        self.write(&format!("kubeconfig-{token}-{}", server.pid), &yaml)
    }

    /// Runs kubectl with `kubeconfig`, its cache inside the lab, bounded in time.
    pub fn kubectl(&self, kubectl: &Path, kubeconfig: &str, args: &[&str]) -> Run {
        let mut child = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--request-timeout=20s")
            .args(args)
            .env("HOME", self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", kubectl.display()));
        let status = wait_bounded(&mut child, KUBECTL_WITHIN)
            .unwrap_or_else(|| panic!("kubectl {args:?} did not finish in {KUBECTL_WITHIN:?}"));
        let mut run = Run {
            ok: status.success(),
            stdout: String::new(),
            stderr: String::new(),
        };
        if let Some(mut out) = child.stdout.take() {
            out.read_to_string(&mut run.stdout).unwrap();
        }
        if let Some(mut err) = child.stderr.take() {
            err.read_to_string(&mut run.stderr).unwrap();
        }
        run
    }

    /// Like [`Lab::kubectl`], failing the test unless kubectl succeeds; returns its stdout.
    pub fn kubectl_ok(&self, kubectl: &Path, kubeconfig: &str, args: &[&str]) -> String {
        let run = self.kubectl(kubectl, kubeconfig, args);
        assert!(run.ok, "kubectl {args:?} failed: {run:?}");
        run.stdout
    }
}

/// Waits for `child` at most `within` (the output pipes are small enough not to block it).
fn wait_bounded(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The server process.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub pid: u32,
}

impl Server {
    /// Starts the binary on a free loopback port with TLS, the lab's tokens, RBAC, audit log
    /// and state file, and waits for its `ready` line.
    pub fn start(lab: &Lab) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wiremesh-fake-apiserver"))
            .args(["--listen", "127.0.0.1:0", "--tls-dir"])
            .arg(lab.tls_dir())
            .arg("--tokens")
            .arg(lab.path("tokens"))
            .arg("--rbac")
            .arg(lab.path("rbac.yaml"))
            .arg("--audit")
            .arg(lab.audit())
            .arg("--state")
            .arg(lab.path("state.json"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting wiremesh-fake-apiserver");
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = Self {
            child: Some(child),
            url: String::new(),
            pid,
        };
        let line = rx
            .recv_timeout(READY_WITHIN)
            .unwrap_or_else(|_| panic!("no `ready` line within {READY_WITHIN:?}"));
        let url = line.trim().strip_prefix("ready ");
        server.url = url
            .unwrap_or_else(|| panic!("first line is not `ready <url>`: {line:?}"))
            .to_owned();
        assert!(
            server.url.starts_with("https://127.0.0.1:"),
            "{}",
            server.url
        );
        server
    }

    /// SIGTERM, then the exit status must be 0.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {}", child.id());
        let status = wait_bounded(&mut child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the server ignored SIGTERM for 10 s"));
        assert!(
            status.success(),
            "the server exited with {status} on SIGTERM"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
