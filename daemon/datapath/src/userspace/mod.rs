//! The userspace data path: a TUN device and UDP sockets around the pure [`device::Device`]
//! (boringtun's `noise::Tunn` per peer and key pair), on a thread of its own with its own
//! single-threaded runtime, so control-plane work never delays a packet. The control plane
//! talks to it only through a bounded command channel carrying the same `SetRequest` /
//! `DeviceState` the UAPI uses.

mod allowed_ips;
pub mod device;
mod gate;
mod peer;
mod ratelimit;
mod sockets;
mod tun;

#[cfg(test)]
mod device_tests;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use wiremesh_key::PrivateKey;

use crate::model::{DeviceError, DeviceState, SetRequest};
use device::{Device, Io, BUF_SIZE};
use sockets::Sockets;

/// WireGuard's timers need a tick well under their smallest period (the 5 s rekey timeout).
const TICK: Duration = Duration::from_millis(250);
/// Packets handled per readiness event before the loop looks at its other inputs.
const BATCH: usize = 64;

enum Command {
    Set(SetRequest, oneshot::Sender<Result<(), DeviceError>>),
    Get(oneshot::Sender<DeviceState>),
}

/// The control plane's end of the data path. Dropping every clone stops the data path and
/// removes the interface.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    pub async fn set(&self, req: SetRequest) -> Result<(), DeviceError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Set(req, tx))
            .await
            .map_err(|_| DeviceError::Stopped)?;
        rx.await.map_err(|_| DeviceError::Stopped)?
    }

    pub async fn get(&self) -> Result<DeviceState, DeviceError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Get(tx))
            .await
            .map_err(|_| DeviceError::Stopped)?;
        rx.await.map_err(|_| DeviceError::Stopped)
    }
}

/// Creates the TUN interface and the UDP sockets (so that errors surface here, to the caller),
/// then starts the data-path thread.
pub fn start(interface: &str, key: PrivateKey, listen_port: u16) -> anyhow::Result<Handle> {
    use anyhow::Context;
    let tun = tun::Tun::create(interface).with_context(|| {
        format!("creating TUN interface {interface} (is /dev/net/tun available?)")
    })?;
    let (tx, rx) = mpsc::channel(64);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = interface.to_string();
    std::thread::Builder::new()
        .name(format!("datapath-{interface}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("data-path runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let sockets = match Sockets::bind(listen_port, 0) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("{e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let shell = Shell {
                    tun: Arc::new(tun),
                    sockets,
                };
                if let Err(e) = run(Device::new(key, Instant::now()), shell, rx).await {
                    tracing::error!(interface = %name, error = %e, "data path stopped");
                }
            });
        })
        .context("spawning the data-path thread")?;
    ready_rx
        .recv()
        .context("data-path thread died during start-up")??;
    Ok(Handle { tx })
}

/// The I/O half: where the device's outputs go.
struct Shell {
    tun: Arc<tun::Tun>,
    sockets: Sockets,
}

impl Io for Shell {
    fn send(&mut self, to: std::net::SocketAddr, packet: &[u8]) {
        self.sockets.send(packet, to);
    }

    fn deliver(&mut self, packet: &[u8]) {
        if let Err(e) = self.tun.write(packet) {
            tracing::trace!(error = %e, "TUN write dropped");
        }
    }
}

impl Shell {
    /// The shell's share of a `set`: the port and mark of its sockets. A failed rebind
    /// changes nothing.
    fn apply(&mut self, req: &SetRequest) -> Result<(), DeviceError> {
        if let Some(port) = req.listen_port.filter(|p| *p != self.sockets.port) {
            self.sockets = Sockets::bind(port, self.sockets.fwmark)?;
        }
        if let Some(mark) = req.fwmark.filter(|m| *m != self.sockets.fwmark) {
            self.sockets.set_mark(mark)?;
        }
        Ok(())
    }
}

async fn run(
    mut device: Device,
    mut shell: Shell,
    mut commands: mpsc::Receiver<Command>,
) -> io::Result<()> {
    // SAFETY: the descriptor is owned by the `Tun`, which this `AsyncFd` keeps alive through its
    // `Arc` for as long as it is registered.
    let tun_fd = unsafe { AsyncFd::register(shell.tun.clone()) }.map_err(io::Error::from)?;
    let mut buf = vec![0u8; BUF_SIZE];
    let mut tick = tokio::time::interval(TICK);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            ready = tun_fd.readable() => {
                let mut guard = ready?;
                for _ in 0..BATCH {
                    match tun_fd.get_ref().read(&mut buf) {
                        Ok(n) => device.handle_tun_packet(&buf[..n], &mut shell),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            ready = shell.sockets.v4.readable() => {
                ready?;
                recv_batch(&mut device, &mut shell, false, &mut buf);
            }
            ready = readable_v6(&shell.sockets) => {
                ready?;
                recv_batch(&mut device, &mut shell, true, &mut buf);
            }
            _ = tick.tick() => {
                device.tick(Instant::now(), &mut shell);
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(4) {
                    device.reset_rate_limiters();
                }
            }
            cmd = commands.recv() => match cmd {
                Some(Command::Set(req, reply)) => {
                    let res = shell.apply(&req).and_then(|()| device.apply(req, Instant::now()));
                    device.flush_new_peers(&mut shell);
                    let _ = reply.send(res);
                }
                Some(Command::Get(reply)) => {
                    let _ = reply.send(device.state(shell.sockets.port, shell.sockets.fwmark));
                }
                None => return Ok(()),
            },
        }
    }
}

fn recv_batch(device: &mut Device, shell: &mut Shell, v6: bool, buf: &mut [u8]) {
    for _ in 0..BATCH {
        let sock = match (v6, &shell.sockets.v6) {
            (true, Some(s)) => s,
            _ => &shell.sockets.v4,
        };
        match sock.try_recv_from(buf) {
            Ok((n, from)) => device.handle_datagram(&buf[..n], from, Instant::now(), shell),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                // ICMP errors surface here as ECONNREFUSED etc.; they concern one peer only.
                tracing::trace!(error = %e, "underlay receive error");
                return;
            }
        }
    }
}

async fn readable_v6(sockets: &Sockets) -> io::Result<()> {
    match &sockets.v6 {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}
