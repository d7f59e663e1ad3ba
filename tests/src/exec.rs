//! Running external programs with a deadline, and background processes that are stopped by PID.
//!
//! Nothing here waits without a bound: a foreground command that overruns its timeout is killed,
//! and a background process is killed when its handle is dropped.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{LabError, Result};

/// How often bounded waits look at a child again.
const POLL: Duration = Duration::from_millis(10);
/// How long to wait for a finished child's pipes to drain (a grandchild may still hold them).
const DRAIN: Duration = Duration::from_secs(1);

/// A command line for messages (`"ip" "-n" "x" ...`).
pub fn describe(cmd: &Command) -> String {
    format!("{cmd:?}")
}

/// Runs `cmd` to completion, feeding it `input` (or an empty stdin), and returns its output
/// whatever its exit status. Kills it if it is still running after `timeout`.
pub fn output(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Result<Output> {
    let line = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        // A writer thread, so a child that fills its stdout before reading stdin cannot deadlock
        // us; a child that exits early just makes the write fail, which is its business.
        thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match wait_deadline(&mut child, timeout) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&collect(stderr)).into_owned();
            return Err(LabError::CommandTimeout {
                cmd: line,
                after: timeout,
                stderr,
            });
        }
    };
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// Runs `cmd` with an empty stdin and returns its stdout; a non-zero exit is an error that
/// carries the command line and its stderr.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let out = output(cmd, None, timeout)?;
    check(cmd, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Turns a non-zero exit into [`LabError::Command`].
pub fn check(cmd: &Command, out: &Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(LabError::Command {
        cmd: describe(cmd),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    }
    rx
}

fn collect(rx: mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    rx.recv_timeout(DRAIN).unwrap_or_default()
}

fn wait_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// A process the lab started and owns: its stdout and stderr are appended to a log file, it runs
/// in its own process group (a Ctrl-C on the terminal reaches only the lab, which then stops its
/// children in order), and dropping the handle kills it by PID.
#[derive(Debug)]
pub struct BgProcess {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl BgProcess {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command, log: &Path) -> Result<Self> {
        Self::spawn_split(name, cmd, log, log)
    }

    /// Starts `cmd` with stdout appended to `out` and stderr to `log` (which may be the same).
    pub fn spawn_split(
        name: impl Into<String>,
        cmd: &mut Command,
        out: &Path,
        log: &Path,
    ) -> Result<Self> {
        let name = name.into();
        let open = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| LabError::io(path, e))
        };
        let stdout = open(out)?;
        let stderr = if out == log {
            stdout.try_clone().map_err(|e| LabError::io(log, e))?
        } else {
            open(log)?
        };
        cmd.stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            cmd: describe(cmd),
            source,
        })?;
        Ok(Self {
            name,
            child,
            log: log.to_path_buf(),
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status, if the process has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited() {
            return Ok(status);
        }
        match wait_deadline(&mut self.child, timeout) {
            Some(status) => {
                self.status = Some(status);
                Ok(status)
            }
            None => Err(LabError::Timeout {
                what: format!("{} (pid {}) to exit", self.name, self.pid()),
                after: timeout,
                last: "still running".into(),
            }),
        }
    }

    /// Sends `signal`, waits up to `grace`, then SIGKILLs. Signals go only to a child that has
    /// not been reaped, so its PID cannot have been reused by someone else's process.
    pub fn stop(&mut self, signal: Signal, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        self.signal(signal);
        if let Ok(status) = self.wait_timeout(grace) {
            return Some(status);
        }
        self.kill()
    }

    /// SIGKILL and reap. `None` only if the OS refused to report the status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
        self.status
    }

    /// Sends `signal` without waiting (no-op once the process has exited).
    pub fn signal(&mut self, signal: Signal) {
        if self.exited().is_some() {
            return;
        }
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

impl Drop for BgProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fails unless the process runs as root.
pub fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// Fails unless every tool is an executable on PATH; the error names the Debian package.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    for tool in tools {
        if which(tool).is_none() {
            return Err(LabError::MissingTool {
                tool: (*tool).into(),
                package: package_of(tool).into(),
            });
        }
    }
    Ok(())
}

/// Root plus every tool the end-to-end tests use. Tests call this first and panic on the error:
/// a missing prerequisite is a failure, never a skip.
pub fn preflight() -> Result<()> {
    require_root()?;
    require_tools(&[
        "ip",
        "wg",
        "wireguard-go",
        "tcpdump",
        "nc",
        "ping",
        "unshare",
        "mount",
        "ss",
        "sysctl",
        // The agents' strict mode (on by default) installs its guard with nft.
        "nft",
    ])
}

pub fn which(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn package_of(tool: &str) -> &'static str {
    match tool {
        "ip" | "ss" => "iproute2",
        "wg" => "wireguard-tools",
        "wireguard-go" => "wireguard-go",
        "tcpdump" => "tcpdump",
        "nc" => "netcat-openbsd",
        "ping" => "iputils-ping",
        "unshare" | "mount" | "nsenter" => "util-linux / mount",
        "sysctl" => "procps",
        "systemd-nspawn" => "systemd-container",
        "debootstrap" => "debootstrap",
        "chroot" => "coreutils",
        _ => "(unknown package)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_collects_stdout_and_status() {
        let out = output(
            Command::new("sh").args(["-c", "echo hi; exit 3"]),
            None,
            Duration::from_secs(5),
        )
        .expect("sh runs");
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn output_feeds_input() {
        let out = output(
            &mut Command::new("cat"),
            Some(b"data"),
            Duration::from_secs(5),
        )
        .expect("cat runs");
        assert_eq!(out.stdout, b"data");
    }

    #[test]
    fn overrunning_command_is_killed() {
        let start = Instant::now();
        let err = output(
            Command::new("sleep").arg("30"),
            None,
            Duration::from_millis(200),
        )
        .expect_err("sleep overruns");
        assert!(matches!(err, LabError::CommandTimeout { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn run_reports_failing_command() {
        let err = run(
            Command::new("sh").args(["-c", "echo oops >&2; exit 1"]),
            Duration::from_secs(5),
        )
        .expect_err("exit 1 is an error");
        let msg = err.to_string();
        assert!(msg.contains("oops") && msg.contains("sh"), "{msg}");
    }

    #[test]
    fn missing_tool_names_package() {
        let err = require_tools(&["wiremesh-no-such-tool"]).expect_err("tool is missing");
        assert!(err.to_string().contains("wiremesh-no-such-tool"));
    }
}
