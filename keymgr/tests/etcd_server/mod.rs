//! A real etcd server for one test: its own data directory and free loopback ports, so tests run
//! in parallel; killed by PID when dropped.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keymgr::store::EtcdTls;
use tempfile::TempDir;

pub struct EtcdServer {
    bin: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// Serve clients over TLS and require client certificates.
    tls: bool,
    child: Option<Child>,
}

impl EtcdServer {
    /// Picks free ports and a data directory without starting the server.
    pub fn reserve() -> Self {
        let bin = find_etcd().unwrap_or_else(|| {
            panic!("etcd not found: install etcd-server (scripts/test.sh does)")
        });
        Self {
            bin,
            dir: tempfile::tempdir().expect("tempdir for etcd"),
            client_port: free_port(),
            peer_port: free_port(),
            tls: false,
            child: None,
        }
    }

    /// Starts a fresh server and waits until it serves requests.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// Like [`EtcdServer::start`], over TLS with client certificates from a fresh test CA.
    pub async fn start_tls() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Self {
        for _ in 0..3 {
            let mut server = Self::reserve();
            if tls {
                server.make_certificates();
            }
            if server.try_run().await {
                return server;
            }
            // Most likely another test took one of the ports between probing and binding.
            eprintln!(
                "etcd did not come up; retrying on other ports\n{}",
                server.log()
            );
        }
        panic!("etcd did not start three times in a row (see its logs above)");
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The CA and a client certificate the server trusts (also its own certificate).
    pub fn tls_files(&self) -> EtcdTls {
        let dir = self.dir.path();
        EtcdTls {
            ca: dir.join("ca.pem"),
            cert: Some(dir.join("server.pem")),
            key: Some(dir.join("server.key")),
        }
    }

    fn make_certificates(&mut self) {
        let dir = self.dir.path();
        std::fs::write(
            dir.join("ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("write openssl extensions");
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        for cmd in [
            format!("req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"),
            format!("req {ec} -keyout server.key -out server.csr -subj /CN=127.0.0.1"),
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
             -days 2 -extfile ext"
                .into(),
        ] {
            let out = Command::new("openssl")
                .args(cmd.split_whitespace())
                .current_dir(dir)
                .output()
                .unwrap_or_else(|e| panic!("openssl not found ({e}): install openssl"));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "openssl {cmd} failed: {err}");
        }
        self.tls = true;
    }

    /// (Re)starts the server on its ports and data directory.
    pub async fn run(&mut self) {
        assert!(
            self.try_run().await,
            "etcd did not restart:\n{}",
            self.log()
        );
    }

    async fn try_run(&mut self) -> bool {
        assert!(self.child.is_none(), "etcd is already running");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let mut command = Command::new(&self.bin);
        if self.tls {
            let files = self.tls_files();
            command
                .args(["--client-cert-auth", "--trusted-ca-file"])
                .arg(&files.ca)
                .arg("--cert-file")
                .args(files.cert)
                .arg("--key-file")
                .args(files.key);
        }
        let child = command
            .args(["--name", "test", "--logger", "zap", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if self.healthy().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill();
        false
    }

    async fn healthy(&self) -> bool {
        let probe = async {
            let mut c = self.try_client().await?;
            c.get("/health-probe", None).await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Some(_))
        )
    }

    /// Kills the server (SIGKILL, by its PID), keeping its data for [`EtcdServer::run`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: its sockets stay open but it answers
    /// nothing, like a hung or partitioned server.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("etcd is not running").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    pub async fn client(&self) -> etcd_client::Client {
        self.try_client()
            .await
            .expect("connect test client to etcd")
    }

    async fn try_client(&self) -> Option<etcd_client::Client> {
        let mut options = etcd_client::ConnectOptions::new();
        if self.tls {
            let files = self.tls_files();
            let read = |p: Option<PathBuf>| std::fs::read(p.expect("path")).expect("read PEM");
            let ca = etcd_client::Certificate::from_pem(read(Some(files.ca)));
            let id = etcd_client::Identity::from_pem(read(files.cert), read(files.key));
            let tls = etcd_client::TlsOptions::new()
                .ca_certificate(ca)
                .identity(id);
            options = options.with_tls(tls);
        }
        etcd_client::Client::connect([self.url()], Some(options))
            .await
            .ok()
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local address").port()
}
