//! gRPC in the lab, for the L7 gRPC test: a `demo.Greeter` server in a pod (`wiremesh-lab
//! grpc-server`, whose access log says which calls reached it and from which address) and one
//! call at a time from another host (`wiremesh-lab grpc-call`), both tonic over cleartext HTTP/2.

use std::path::PathBuf;
use std::time::Duration;

use crate::addr::Host;
use crate::error::{LabError, Result};
use crate::exec::{output, BgProcess};
use crate::handles::HostHandle;
use crate::http::lab_binary;
use crate::lab::Lab;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// A gRPC server running in a pod; stopped on drop.
pub struct GrpcServer {
    pub host: Host,
    pub port: u16,
    access_log: PathBuf,
    _process: BgProcess,
}

impl GrpcServer {
    /// Every call that reached the server, as `/demo.Greeter/METHOD from PEER_IP`, in order.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `IP:PORT` of the server.
    pub fn target(&self) -> String {
        format!("{}:{}", self.host.ip(), self.port)
    }
}

impl Lab {
    /// Starts a gRPC server in `host` on `port`, and waits until it listens.
    pub fn grpc_server(&self, host: Host, port: u16) -> Result<GrpcServer> {
        let name = host.to_string().replace('/', "-");
        let access_log = self.dir().join(format!("grpc-{name}-{port}.access"));
        let log = self.dir().join(format!("grpc-{name}-{port}.log"));
        let mut cmd = self.host_cmd(host, lab_binary()?);
        cmd.args(["grpc-server", "--port", &port.to_string(), "--log"])
            .arg(&access_log);
        let mut process = BgProcess::spawn(format!("gRPC server on {host}"), &mut cmd, &log)?;
        self.wait_listening(host, &port.to_string(), &mut process)?;
        Ok(GrpcServer {
            host,
            port,
            access_log,
            _process: process,
        })
    }
}

/// The outcome of one call: the gRPC status code (0 OK, 7 PERMISSION_DENIED; -1 when no
/// status came back at all), its message, and the reply message of a successful call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcOutcome {
    pub code: i64,
    pub message: String,
    pub reply: String,
}

impl HostHandle<'_> {
    /// Calls `demo.Greeter/<method>` on `server` from here.
    pub fn grpc_call(&self, server: &GrpcServer, method: &str, name: &str) -> Result<GrpcOutcome> {
        let mut cmd = self.lab.host_cmd(self.host, lab_binary()?);
        cmd.args([
            "grpc-call",
            "--target",
            &server.target(),
            "--method",
            method,
        ]);
        cmd.args(["--name", name, "--timeout-secs"])
            .arg(CALL_TIMEOUT.as_secs().to_string());
        let out = output(&mut cmd, None, CALL_TIMEOUT + Duration::from_secs(4))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed: Option<serde_json::Value> = serde_json::from_str(stdout.trim()).ok();
        let outcome = parsed.and_then(|v| {
            Some(GrpcOutcome {
                code: v["code"].as_i64()?,
                message: v["message"].as_str()?.to_string(),
                reply: v["reply"].as_str()?.to_string(),
            })
        });
        outcome.ok_or_else(|| {
            LabError::Check(format!(
                "grpc-call {method} to {}: unparseable output {stdout:?}: {}",
                server.target(),
                String::from_utf8_lossy(&out.stderr)
            ))
        })
    }
}
