//! HTTP in the lab, for the L7 tests: a server in a pod (`wiremesh-lab http-server`, whose
//! access log says which requests reached it and from which address) and `curl` as the client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::addr::Host;
use crate::error::{LabError, Result};
use crate::exec::{output, BgProcess};
use crate::handles::HostHandle;
use crate::lab::Lab;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// The `wiremesh-lab` binary: `$WIREMESH_LAB_BIN`, or the one next to `$WIREMESH_BIN` (the
/// agent's, so a custom `CARGO_TARGET_DIR` needs one variable only), or the debug build.
pub fn lab_binary() -> Result<PathBuf> {
    let beside_agent = std::env::var_os("WIREMESH_BIN")
        .map(|agent| PathBuf::from(agent).with_file_name("wiremesh-lab"))
        .filter(|p| p.is_file());
    let path = match (std::env::var_os("WIREMESH_LAB_BIN"), beside_agent) {
        (Some(p), _) => PathBuf::from(p),
        (None, Some(p)) => p,
        (None, None) => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest
                .parent()
                .unwrap_or(manifest)
                .join("target/debug/wiremesh-lab")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::Check(format!(
            "{} not found: build it (cargo build -p wiremesh-lab) or set WIREMESH_LAB_BIN",
            path.display()
        )))
    }
}

/// An HTTP server running in a pod; stopped on drop.
pub struct HttpServer {
    pub host: Host,
    pub port: u16,
    access_log: PathBuf,
    _process: BgProcess,
}

impl HttpServer {
    /// Every request that reached the server, as `METHOD PATH from PEER_IP`, in order.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `http://IP:PORT` of the server.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host.ip(), self.port)
    }
}

impl Lab {
    /// Starts an HTTP server in `host` on `port`, and waits until it listens.
    pub fn http_server(&self, host: Host, port: u16) -> Result<HttpServer> {
        self.http_server_with(&lab_binary()?, host, port, true)
    }

    /// [`Lab::http_server`] from a given `wiremesh-lab` binary; without `access_log` the server
    /// writes nothing per request (for benchmarks) and [`HttpServer::requests`] stays empty.
    pub fn http_server_with(
        &self,
        binary: &Path,
        host: Host,
        port: u16,
        access_log: bool,
    ) -> Result<HttpServer> {
        let name = host.to_string().replace('/', "-");
        let access = self.dir().join(format!("http-{name}-{port}.access"));
        let log = self.dir().join(format!("http-{name}-{port}.log"));
        let mut cmd = self.host_cmd(host, binary);
        cmd.args(["http-server", "--port", &port.to_string()]);
        if access_log {
            cmd.arg("--log").arg(&access);
        }
        let mut process = BgProcess::spawn(format!("http server on {host}"), &mut cmd, &log)?;
        self.wait_listening(host, &port.to_string(), &mut process)?;
        Ok(HttpServer {
            host,
            port,
            access_log: access,
            _process: process,
        })
    }
}

/// One HTTP request for [`HostHandle::http`].
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl HttpRequest {
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        Self {
            method: method.to_string(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = Some(body.to_vec());
        self
    }
}

/// What came back: the status (0 when no HTTP response came at all) and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

impl HostHandle<'_> {
    /// Sends `req` from here with curl; a connection that fails or times out is status 0.
    pub fn http(&self, req: &HttpRequest) -> Result<HttpReply> {
        let mut cmd = self.lab.host_cmd(self.host, "curl");
        cmd.args([
            "-s",
            "-S",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            &req.method,
        ]);
        cmd.args(["--max-time", &REQUEST_TIMEOUT.as_secs().to_string()]);
        // The path exactly as the test wrote it: curl would resolve `..` segments itself.
        cmd.arg("--path-as-is");
        for (name, value) in &req.headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        if req.body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.arg(&req.url);
        let out = output(
            &mut cmd,
            req.body.as_deref(),
            REQUEST_TIMEOUT + Duration::from_secs(2),
        )?;
        parse_reply(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            LabError::Check(format!(
                "curl {} {}: unparseable output: {}",
                req.method,
                req.url,
                String::from_utf8_lossy(&out.stderr)
            ))
        })
    }
}

/// curl's `-w "\n%{http_code}"` output: the body, a newline, the status.
fn parse_reply(stdout: &str) -> Option<HttpReply> {
    let (body, status) = stdout.rsplit_once('\n')?;
    Some(HttpReply {
        status: status.trim().parse().ok()?,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_curls_written_out_status() {
        assert_eq!(
            parse_reply("GET / from 10.244.1.11\n\n200"),
            Some(HttpReply {
                status: 200,
                body: "GET / from 10.244.1.11\n".into()
            })
        );
        assert_eq!(parse_reply("\n000").map(|r| r.status), Some(0));
        assert_eq!(parse_reply("garbage"), None);
    }
}
