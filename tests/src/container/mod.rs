//! A pod's container on a lab node, run with `runc` the way kubelet and containerd would run it:
//! the image unpacked by `umoci` into a bundle whose `config.json` is rewritten from the pod
//! spec ([`spec`]), the ConfigMap and service-account volumes written out as kubelet projects
//! them, and the container's probes run as kubelet runs them (an HTTP GET in the node's network
//! namespace, or the command inside the container: see [`Container::exec`]).
//!
//! It must never touch a container it did not create: runc keeps its state under a root of
//! this container's own (inside its work directory), the container ID is unique per run, and
//! drop deletes only that ID.

pub mod manifests;
mod node;
pub mod spec;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{HTTPGetAction, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::{LabError, Result};
use crate::exec::{output, run};
pub use manifests::{parse_workload, render_workload, Workload};
pub use spec::{
    capabilities, runtime_config, PodHost, CONTAINERD_DEFAULT_CAPS, SERVICE_ACCOUNT_DIR,
};

const RUNC_TIMEOUT: Duration = Duration::from_secs(30);
const UNPACK_TIMEOUT: Duration = Duration::from_secs(120);
const BUILD_TIMEOUT: Duration = Duration::from_secs(1200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(200);

/// An OCI image in a local layout: `<layout>:<tag>` as umoci names it.
#[derive(Debug, Clone)]
pub struct Image {
    pub layout: PathBuf,
    pub tag: String,
}

impl Image {
    /// `umoci`'s name for it.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.layout.display(), self.tag)
    }
}

/// Builds the wiremesh image from `binary` with `scripts/build-image.sh` into `out`, tagged
/// `version`; returns the image and the script's report (its size lines).
pub fn build_image(binary: &Path, version: &str, out: &Path) -> Result<(Image, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-image.sh");
    let report = run(
        Command::new(&script)
            .arg("--binary")
            .arg(binary)
            .args(["--version", version, "--out"])
            .arg(out),
        BUILD_TIMEOUT,
    )?;
    let image = Image {
        layout: out.join("wiremesh"),
        tag: version.to_string(),
    };
    Ok((image, report))
}

/// The service-account token volume's content, as kubelet projects it.
#[derive(Clone)]
pub struct ServiceAccountToken {
    pub token: String,
    pub ca_crt: Vec<u8>,
    pub namespace: String,
}

impl std::fmt::Debug for ServiceAccountToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountToken")
            .field("token", &"<redacted>")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// What to run: one container of a pod spec, with the data of the ConfigMaps it mounts.
#[derive(Debug, Clone)]
pub struct PodRun<'a> {
    pub pod: &'a PodSpec,
    pub container: &'a str,
    /// Each mounted ConfigMap's `data`, by ConfigMap name.
    pub config_maps: Vec<(String, BTreeMap<String, String>)>,
    pub service_account: Option<ServiceAccountToken>,
}

/// A container created and started by `runc`, stopped and deleted on drop.
#[derive(Debug)]
pub struct Container {
    id: String,
    work: PathBuf,
    netns: String,
    readiness: Option<Probe>,
    liveness: Option<Probe>,
    deleted: bool,
}

/// One probe's outcome, as kubelet judges it: an HTTP status from 200 to 399, or a command
/// that exits 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub passed: bool,
    /// The HTTP status, or the command's exit status and output.
    pub detail: String,
}

impl Container {
    /// Unpacks `image` into `work/bundle`, writes the volumes' files under `work`, rewrites the
    /// bundle's config from `run` for `host` (whose `config_maps` and `service_account` it
    /// fills in) and starts the container as `id` with `runc run -d`; its output goes to
    /// `work/container.log`. `netns` is the node's namespace name (`ip netns`).
    pub fn run(
        id: &str,
        work: &Path,
        image: &Image,
        run_spec: &PodRun<'_>,
        host: PodHost,
        netns: &str,
    ) -> Result<Self> {
        let mut this = Self::prepare(id, work, image, run_spec, host, netns)?;
        this.start()?;
        Ok(this)
    }

    /// [`Container::run`] up to the start: the image unpacked and the bundle written (kubelet
    /// has pulled the image), nothing running yet.
    pub fn prepare(
        id: &str,
        work: &Path,
        image: &Image,
        run_spec: &PodRun<'_>,
        mut host: PodHost,
        netns: &str,
    ) -> Result<Self> {
        std::fs::create_dir_all(work).map_err(|e| LabError::io(work, e))?;
        let bundle = work.join("bundle");
        if bundle.exists() {
            std::fs::remove_dir_all(&bundle).map_err(|e| LabError::io(&bundle, e))?;
        }
        crate::exec::run(
            Command::new("umoci")
                .args(["unpack", "--image", &image.reference()])
                .arg(&bundle),
            UNPACK_TIMEOUT,
        )?;
        write_volumes(work, run_spec, &mut host)?;
        let config_path = bundle.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| LabError::io(&config_path, e))?;
        let base: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LabError::Check(format!("{}: {e}", config_path.display())))?;
        let container = spec::container(run_spec.pod, run_spec.container)?;
        let config = runtime_config(base, run_spec.pod, container, &host)?;
        let pretty = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
        std::fs::write(&config_path, pretty).map_err(|e| LabError::io(&config_path, e))?;
        let this = Self {
            id: id.to_string(),
            work: work.to_path_buf(),
            netns: netns.to_string(),
            readiness: container.readiness_probe.clone(),
            liveness: container.liveness_probe.clone(),
            // Nothing to delete until it is started.
            deleted: true,
        };
        Ok(this)
    }

    /// Starts a prepared container (`runc run -d`).
    pub fn start(&mut self) -> Result<()> {
        let (id, work) = (self.id.clone(), self.work.clone());
        let bundle = work.join("bundle");
        let log = work.join("container.log");
        let log_file = std::fs::File::create(&log).map_err(|e| LabError::io(&log, e))?;
        let err_file = log_file.try_clone().map_err(|e| LabError::io(&log, e))?;
        let mut cmd = self.runc();
        cmd.args(["run", "-d", "--pid-file"])
            .arg(work.join("container.pid"))
            .arg("--bundle")
            .arg(&bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(log_file)
            .stderr(err_file);
        let status = run_status(&mut cmd)?;
        if !status.success() {
            return Err(LabError::Check(format!(
                "runc run {id} failed ({status}); its output:\n{}",
                self.log()
            )));
        }
        self.deleted = false;
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Everything the container wrote to stdout and stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("container.log")).unwrap_or_default()
    }

    /// The container's init process (the agent) as the host sees it.
    pub fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.work.join("container.pid")).ok()?;
        text.trim().parse().ok()
    }

    /// `runc state`'s status: `created`, `running`, `stopped`.
    pub fn status(&self) -> Result<String> {
        let out = run(self.runc().args(["state", &self.id]), RUNC_TIMEOUT)?;
        let state: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| LabError::Check(format!("runc state {}: {e}: {out}", self.id)))?;
        Ok(state["status"].as_str().unwrap_or("unknown").to_string())
    }

    /// Runs `args` inside the container, its output whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.exec_command(args)?;
        output(&mut cmd, None, RUNC_TIMEOUT)
    }

    /// `args` as a process of the container: in its init's mount, UTS, IPC, network and PID
    /// namespaces, with its init's root and working directory and the environment of its
    /// config, where `runc exec` would put it. Not `runc exec` itself: inside a chroot (the
    /// fresh-machine tool) the container's `pivot_root` does not move its mount namespace's
    /// root, so a process joining that namespace by `setns` — `runc exec` — finds the host's
    /// root instead of the image's; `nsenter --root` takes the init's own. Unlike `runc exec`,
    /// the process keeps this one's credentials (root, every capability).
    fn exec_command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Command> {
        let pid = self
            .pid()
            .ok_or_else(|| LabError::Check(format!("container {} has no init PID", self.id)))?;
        let config_path = self.work.join("bundle/config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| LabError::io(&config_path, e))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| LabError::Check(format!("{}: {e}", config_path.display())))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--target={pid}"))
            .args([
                "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd", "--",
            ])
            .args(args)
            .env_clear();
        let env = config["process"]["env"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (k, v) in env.iter().filter_map(|e| e.as_str()?.split_once('=')) {
            cmd.env(k, v);
        }
        Ok(cmd)
    }

    /// One readiness probe as kubelet runs it.
    pub fn probe_readiness(&self) -> Result<ProbeOutcome> {
        self.probe(self.readiness.as_ref(), "readinessProbe")
    }

    /// One liveness probe as kubelet runs it.
    pub fn probe_liveness(&self) -> Result<ProbeOutcome> {
        self.probe(self.liveness.as_ref(), "livenessProbe")
    }

    fn probe(&self, probe: Option<&Probe>, what: &str) -> Result<ProbeOutcome> {
        let probe =
            probe.ok_or_else(|| LabError::Check(format!("container {} has no {what}", self.id)))?;
        // Kubelet's default timeoutSeconds is 1.
        let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        if let Some(get) = &probe.http_get {
            let code = self.http_probe(get, timeout)?;
            return Ok(ProbeOutcome {
                passed: (200..400).contains(&code),
                detail: format!("HTTP {code}"),
            });
        }
        let command = probe
            .exec
            .as_ref()
            .and_then(|e| e.command.clone())
            .ok_or_else(|| {
                LabError::Check(format!(
                    "container {}: {what}: only httpGet and exec are reproduced",
                    self.id
                ))
            })?;
        let mut cmd = self.exec_command(&command)?;
        let out = output(&mut cmd, None, timeout + Duration::from_secs(2))?;
        Ok(ProbeOutcome {
            passed: out.status.success(),
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }

    /// An HTTP GET probe from the node's network namespace: its status code (0: no answer).
    fn http_probe(&self, probe: &HTTPGetAction, timeout: Duration) -> Result<u16> {
        let port = match &probe.port {
            IntOrString::Int(p) => p.to_string(),
            IntOrString::String(name) => {
                return Err(LabError::Check(format!(
                    "probe port '{name}': named ports are not reproduced"
                )))
            }
        };
        let host = probe.host.as_deref().unwrap_or("127.0.0.1");
        let path = probe.path.as_deref().unwrap_or("/");
        let url = format!("http://{host}:{port}{path}");
        let out = output(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.netns,
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                ])
                .args(["-w", "%{http_code}", "--max-time"])
                .arg(timeout.max(PROBE_TIMEOUT).as_secs().to_string())
                .arg(&url),
            None,
            timeout.max(PROBE_TIMEOUT) + Duration::from_secs(2),
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0))
    }

    /// Polls the readiness probe until it passes, for at most `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let outcome = self.probe_readiness()?;
            if outcome.passed {
                return Ok(());
            }
            if self.status().is_ok_and(|s| s == "stopped") || Instant::now() >= deadline {
                return Err(LabError::Check(format!(
                    "container {} not ready after {timeout:?} (last probe: {}, state {:?}); \
                     its log:\n{}",
                    self.id,
                    outcome.detail,
                    self.status().ok(),
                    tail_lines(&self.log(), crate::LOG_TAIL_LINES)
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, up to `grace` to exit, SIGKILL, then `runc delete`.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        if self.deleted {
            return Ok(());
        }
        let _ = output(
            self.runc().args(["kill", &self.id, "TERM"]),
            None,
            RUNC_TIMEOUT,
        );
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.status().is_ok_and(|s| s != "stopped") {
            std::thread::sleep(POLL);
        }
        if self.status().is_ok_and(|s| s != "stopped") {
            let _ = output(
                self.runc().args(["kill", &self.id, "KILL"]),
                None,
                RUNC_TIMEOUT,
            );
        }
        run(
            self.runc().args(["delete", "--force", &self.id]),
            RUNC_TIMEOUT,
        )?;
        self.deleted = true;
        Ok(())
    }

    /// `runc` with this container's private state root.
    fn runc(&self) -> Command {
        let mut cmd = Command::new("runc");
        cmd.arg("--root").arg(self.work.join("runc-state"));
        cmd
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = self.stop(Duration::from_secs(5)) {
            eprintln!("wiremesh-lab: deleting container {}: {e}", self.id);
        }
    }
}

fn run_status(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::Check(format!("spawning {}: {e}", crate::exec::describe(cmd))))?;
    let deadline = Instant::now() + RUNC_TIMEOUT;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| LabError::Check(format!("waiting for runc: {e}")))?
        {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Check(format!(
                "{} did not return within {RUNC_TIMEOUT:?}",
                crate::exec::describe(cmd)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes each ConfigMap's files and the service-account projection under `work`, creates each
/// emptyDir afresh, and points `host` at them.
fn write_volumes(work: &Path, run_spec: &PodRun<'_>, host: &mut PodHost) -> Result<()> {
    for volume in run_spec.pod.volumes.iter().flatten() {
        if volume.empty_dir.is_none() {
            continue;
        }
        let dir = work.join("empty-dirs").join(&volume.name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        host.empty_dirs.push((volume.name.clone(), dir));
    }
    for (name, data) in &run_spec.config_maps {
        let dir = work.join("configmaps").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        for (key, value) in data {
            let path = dir.join(key);
            std::fs::write(&path, value).map_err(|e| LabError::io(&path, e))?;
        }
        host.config_maps.push((name.clone(), dir));
    }
    if let Some(sa) = &run_spec.service_account {
        let dir = work.join("serviceaccount");
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io(&dir, e))?;
        let files: [(&str, &[u8]); 3] = [
            ("token", sa.token.as_bytes()),
            ("ca.crt", &sa.ca_crt),
            ("namespace", sa.namespace.as_bytes()),
        ];
        for (name, content) in files {
            let path = dir.join(name);
            std::fs::write(&path, content).map_err(|e| LabError::io(&path, e))?;
        }
        host.service_account = Some(dir);
    }
    Ok(())
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
