//! nginx as a reverse proxy in a lab pod, the production proxy `bench-l7` compares the L7
//! filter with: it listens on a port of the pod and proxies every request to an HTTP server on
//! the pod's loopback over keep-alive upstream connections, with no access log.
//!
//! Its files live in a directory of the lab's; it runs in the foreground as the lab's child,
//! in that child's process group, so stopping it reaches the master and every worker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use wiremesh_lab::{BgProcess, Host, Lab};

/// Worker processes: the L7 proxy's runtime has 2 worker threads.
pub const WORKERS: u32 = 2;
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running nginx; stopped (master and workers) on drop.
pub struct Nginx {
    process: BgProcess,
    pub dir: PathBuf,
}

impl Nginx {
    /// Starts nginx in `host` listening on `port`, proxying to `127.0.0.1:upstream`, and waits
    /// until it answers.
    pub fn start(lab: &Lab, host: Host, port: u16, upstream: u16) -> anyhow::Result<Self> {
        let dir = lab
            .dir()
            .join(format!("nginx-{}", host.to_string().replace('/', "-")));
        for sub in ["", "tmp"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(&dir, port, upstream))
            .with_context(|| format!("writing {}", conf.display()))?;
        let mut cmd = lab.host(host).cmd("nginx");
        cmd.arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"));
        let process = BgProcess::spawn(
            format!("nginx on {host}"),
            &mut cmd,
            &dir.join("stdout.log"),
        )?;
        let mut nginx = Self { process, dir };
        nginx.wait_up(lab, host, port)?;
        Ok(nginx)
    }

    fn wait_up(&mut self, lab: &Lab, host: Host, port: u16) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.process.exited() {
                anyhow::bail!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
                );
            }
            let listening = lab
                .host(host)
                .cmd("ss")
                .args(["-H", "-l", "-t", "-n", &format!("sport = :{port}")])
                .output()
                .is_ok_and(|o| !o.stdout.is_empty());
            if listening {
                return Ok(());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "nginx did not listen on {host}:{port} within 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers. Then the group, for workers a master killed
        // by force leaves behind: the group's id is our unreaped child's or a live worker's,
        // so it cannot name anyone else's processes.
        let pgid = Pid::from_raw(i32::try_from(self.process.pid()).unwrap_or(0));
        self.process.stop(Signal::SIGTERM, STOP_GRACE);
        if pgid.as_raw() > 0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// The configuration: `worker_processes` [`WORKERS`], an upstream with idle keep-alive
/// connections, HTTP/1.1 upstream, no access log, every path under `dir`. Keep-alive
/// connections are not closed after 1,000 requests (nginx's default, on both sides): the L7
/// proxy does not close them either.
fn config(dir: &Path, port: u16, upstream: u16) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nuser root;\nworker_processes {WORKERS};\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
         \x20 client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
         \x20 scgi_temp_path {d}/tmp/scgi;\n\
         \x20 upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; \
         keepalive_requests 1000000; }}\n\
         \x20 server {{\n    listen {port};\n    location / {{\n\
         \x20     proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_proxies_with_keepalive_and_keeps_files_in_its_dir() {
        let c = config(Path::new("/lab/nginx"), 8081, 8080);
        assert!(c.contains("listen 8081;"));
        assert!(c.contains("server 127.0.0.1:8080; keepalive 64; keepalive_requests 1000000;"));
        assert!(c.contains("proxy_set_header Connection \"\";"));
        assert!(c.contains("pid /lab/nginx/nginx.pid;"));
        assert!(c.contains("access_log off;"));
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }
}
