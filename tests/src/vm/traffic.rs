//! Traffic from inside a lab VM (iputils ping, netcat-openbsd, both in its root) and TCP
//! between a pod and the VM, each bounded in count and time.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::addr::Host;
use crate::error::{LabError, Result};
use crate::exec::{check, output, BgProcess};
use crate::handles::VmHandle;
use crate::traffic::{Ping, PingResult};

impl VmHandle<'_> {
    /// Runs `ping` inside the VM and returns its summary (lost packets are not an error).
    pub fn ping(&self, ping: &Ping) -> Result<PingResult> {
        let mut cmd = self.cmd("ping")?;
        cmd.args(ping.args());
        let out = output(&mut cmd, None, ping.deadline() + Duration::from_secs(5))?;
        let text = String::from_utf8_lossy(&out.stdout);
        PingResult::parse(&text).map_err(|_| LabError::Command {
            cmd: crate::exec::describe(&cmd),
            status: out.status.to_string(),
            stderr: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        })
    }

    /// Pings `to` from inside the VM once per attempt until it answers.
    pub fn wait_reachable(&self, to: impl Into<IpAddr>, timeout: Duration) -> Result<Duration> {
        let to = to.into();
        let start = Instant::now();
        loop {
            let last = match self.ping(&Ping::new(to).count(1)) {
                Ok(r) if r.received > 0 => return Ok(start.elapsed()),
                Ok(r) => r.to_string(),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= timeout {
                return Err(LabError::Timeout {
                    what: format!("{to} to answer ping from the VM on node-{}", self.node),
                    after: timeout,
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `data` over one TCP connection from `from` (a pod or node) to a listener inside
    /// the VM on its host address; returns what the listener received.
    pub fn tcp_from(&self, from: Host, data: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let port = self.lab.next_port().to_string();
        let received = self.lab.dir().join(format!("vm-tcp-{port}.out"));
        let log = self.lab.dir().join(format!("vm-tcp-{port}.log"));
        let mut server_cmd = self.cmd("nc")?;
        server_cmd.args(["-l", "-n", &self.host_address().to_string(), &port]);
        let mut server = BgProcess::spawn_split(
            format!("nc -l in the VM on node-{}", self.node),
            &mut server_cmd,
            &received,
            &log,
        )?;
        self.lab
            .wait_listening(Host::Node(self.node), &port, &mut server)?;
        let mut client = self.lab.host_cmd(from, "nc");
        client.args([
            "-N",
            "-n",
            "-w",
            "5",
            &self.host_address().to_string(),
            &port,
        ]);
        let out = output(&mut client, Some(data), timeout)?;
        check(&client, &out)?;
        server.wait_timeout(timeout)?;
        std::fs::read(&received).map_err(|e| LabError::io(&received, e))
    }

    /// Sends `data` over one TCP connection from inside the VM to a listener on `to`; returns
    /// what the listener received.
    pub fn tcp_to(&self, to: Host, data: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        let port = self.lab.next_port().to_string();
        let received = self.lab.dir().join(format!("vm-tcp-{port}.out"));
        let log = self.lab.dir().join(format!("vm-tcp-{port}.log"));
        let mut server_cmd = self.lab.host_cmd(to, "nc");
        server_cmd.args(["-l", "-n", &port]);
        let mut server =
            BgProcess::spawn_split(format!("nc -l on {to}"), &mut server_cmd, &received, &log)?;
        self.lab.wait_listening(to, &port, &mut server)?;
        let mut client = self.cmd("nc")?;
        client.args(["-N", "-n", "-w", "5", &to.ip().to_string(), &port]);
        let out = output(&mut client, Some(data), timeout)?;
        check(&client, &out)?;
        server.wait_timeout(timeout)?;
        std::fs::read(&received).map_err(|e| LabError::io(&received, e))
    }
}
