//! The userspace data path: a TUN device and UDP sockets around the pure [`device::Device`]
//! (boringtun's `noise::Tunn` per peer and key pair), on a thread of its own with its own
//! single-threaded runtime, so control-plane work never delays a packet. The control plane
//! talks to it only through a bounded command channel carrying the same `SetRequest` /
//! `DeviceState` the UAPI uses.

mod allowed_ips;
mod batch;
pub mod device;
mod gate;
mod peer;
mod ratelimit;
mod sockets;
mod succession;
mod tun;

#[cfg(test)]
mod device_tests;
#[cfg(test)]
mod handover_tests;
#[cfg(test)]
mod offload_tests;

use std::io::{self, IoSliceMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use wiremesh_key::PrivateKey;

use crate::model::{DeviceError, DeviceState, SetRequest};
use batch::{Inbox, Outbox};
use device::{Device, Io, BUF_SIZE};
use sockets::Sockets;

/// WireGuard's timers need a tick well under their smallest period (the 5 s rekey timeout).
const TICK: Duration = Duration::from_millis(250);
/// TUN reads (each a packet or a super-packet of up to 64 KiB) per readiness event before the
/// loop looks at its other inputs.
const BATCH: usize = 16;
/// `recvmmsg` calls per readiness event, and buffers per call.
const UDP_ROUNDS: usize = 4;
const UDP_BUFFERS: usize = 16;
/// Segmented sends, and decrypted packets, gathered before a flush is forced.
const OUTBOX_RUNS: usize = 64;
const INBOX_PACKETS: usize = tun::SPLIT_MAX;

enum Command {
    Set(SetRequest, oneshot::Sender<Result<(), DeviceError>>),
    Get(oneshot::Sender<DeviceState>),
    /// Stop reading the UDP sockets and hand them, with the configuration, to a successor.
    HandOver(oneshot::Sender<Result<succession::HandedOver, DeviceError>>),
    /// The successor's TUN queue is attached: drain ours and detach it.
    Detach(oneshot::Sender<()>),
    /// The successor failed before `Detach`: read the UDP sockets again, as before `HandOver`.
    Resume(oneshot::Sender<()>),
}

pub use succession::{start_successor, HandedOver, Successor};

/// The control plane's end of the data path. Dropping every clone stops the data path and
/// removes the interface.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    pub async fn set(&self, req: SetRequest) -> Result<(), DeviceError> {
        self.ask(|tx| Command::Set(req, tx)).await?
    }

    pub async fn get(&self) -> Result<DeviceState, DeviceError> {
        self.ask(Command::Get).await
    }

    /// Hands the sockets and the configuration over (see [`crate::handover`]); from then on
    /// this data path reads no datagram but those the successor forwards.
    pub async fn hand_over(&self) -> Result<HandedOver, DeviceError> {
        self.ask(Command::HandOver).await?
    }

    /// Undoes [`Handle::hand_over`] (before any [`Handle::detach`]): the successor never came
    /// up, so this data path reads its UDP sockets again.
    pub async fn resume(&self) -> Result<(), DeviceError> {
        self.ask(Command::Resume).await
    }

    /// Drains and detaches this data path's TUN queue.
    pub async fn detach(&self) -> Result<(), DeviceError> {
        self.ask(Command::Detach).await
    }

    /// Sends the command `make` builds around a reply channel, and waits for the reply; a data
    /// path that has stopped answers neither.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DeviceError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| DeviceError::Stopped)?;
        rx.await.map_err(|_| DeviceError::Stopped)
    }
}

/// Creates the TUN interface and the UDP sockets (so that errors surface here, to the caller),
/// then starts the data-path thread. `offload` turns the kernel's segmentation and coalescing
/// offloads on for both (where the kernel has them); off, every system call moves one packet.
pub fn start(
    interface: &str,
    key: PrivateKey,
    listen_port: u16,
    offload: bool,
) -> anyhow::Result<Handle> {
    let tun = create_tun(interface, offload)?;
    let device = Device::new(key, Instant::now());
    launch(interface, tun, device, None, move || {
        Sockets::bind(listen_port, 0, offload)
    })
}

fn create_tun(interface: &str, offload: bool) -> anyhow::Result<tun::Tun> {
    use anyhow::Context;
    tun::Tun::create(interface, offload)
        .with_context(|| format!("creating TUN interface {interface} (is /dev/net/tun available?)"))
}

/// Starts the data-path thread around `tun` and `device`; `sockets` runs on the thread's
/// runtime (tokio sockets belong to one). `forward` is where a successor sends the datagrams
/// it cannot route (its predecessor's).
fn launch(
    interface: &str,
    tun: tun::Tun,
    device: Device,
    forward: Option<std::os::unix::net::UnixDatagram>,
    sockets: impl FnOnce() -> Result<Sockets, DeviceError> + Send + 'static,
) -> anyhow::Result<Handle> {
    use anyhow::Context;
    let offload = tun.tcp_offload();
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
                let sockets = match sockets() {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("{e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tracing::info!(
                    interface = %name,
                    tun_tcp_offload = tun.tcp_offload(),
                    tun_udp_offload = tun.udp_offload(),
                    udp_segments = sockets.max_segments(),
                    udp_gro = sockets.v4.gro_segments() > 1 && offload,
                    "data path offloads"
                );
                let mut shell = Shell::new(tun, sockets);
                shell.forward = forward;
                if let Err(e) = run(device, shell, rx).await {
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

/// The I/O half: where the device's outputs go. They wait in the outbox and inbox until the
/// end of the event that produced them (or until a box is full), then leave in batches.
struct Shell {
    tun: Arc<tun::Tun>,
    sockets: Sockets,
    outbox: Outbox,
    inbox: Inbox,
    gro: tun_rs::GROTable,
    /// A successor's: where datagrams of its predecessor's sessions go.
    forward: Option<std::os::unix::net::UnixDatagram>,
    forward_buf: Vec<u8>,
    /// A predecessor's: the datagrams its successor forwards, once it has handed over.
    forwarded: Option<tokio::net::UnixDatagram>,
    /// Off once the sockets, then the TUN queue, are handed over.
    reading_udp: bool,
    reading_tun: bool,
}

impl Io for Shell {
    fn send(&mut self, to: std::net::SocketAddr, packet: &[u8]) {
        if self.outbox.push(to, packet) {
            self.flush_outbox();
        }
    }

    fn deliver(&mut self, packet: &[u8]) {
        if self.inbox.push(packet) {
            self.flush_inbox();
        }
    }

    fn unrouted(&mut self, from: std::net::SocketAddr, datagram: &[u8]) {
        let Some(forward) = &self.forward else {
            return;
        };
        crate::handover::encode_forwarded(from, datagram, &mut self.forward_buf);
        if let Err(e) = forward.send(&self.forward_buf) {
            tracing::trace!(error = %e, "forward to the predecessor dropped");
        }
    }
}

impl Shell {
    fn new(tun: tun::Tun, sockets: Sockets) -> Self {
        Self {
            tun: Arc::new(tun),
            outbox: Outbox::new(sockets.max_segments(), OUTBOX_RUNS),
            sockets,
            inbox: Inbox::new(tun::HEADROOM, INBOX_PACKETS),
            gro: tun_rs::GROTable::new(),
            forward: None,
            forward_buf: Vec::with_capacity(BUF_SIZE),
            forwarded: None,
            reading_udp: true,
            reading_tun: true,
        }
    }

    /// The shell's share of a `set`: the port and mark of its sockets. A failed rebind
    /// changes nothing.
    fn apply(&mut self, req: &SetRequest) -> Result<(), DeviceError> {
        if let Some(port) = req.listen_port.filter(|p| *p != self.sockets.port) {
            self.flush();
            self.sockets = Sockets::bind(port, self.sockets.fwmark, self.sockets.offload)?;
        }
        if let Some(mark) = req.fwmark.filter(|m| *m != self.sockets.fwmark) {
            self.sockets.set_mark(mark)?;
        }
        Ok(())
    }

    fn flush(&mut self) {
        self.flush_inbox();
        self.flush_outbox();
    }

    fn flush_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        for send in self.outbox.drain() {
            let sock = self.sockets.for_destination(send.to);
            if let Err(e) = sock.send(send.to, send.bytes, send.segment) {
                tracing::trace!(to = %send.to, error = %e, "underlay send dropped");
            }
        }
        // Segmentation may have been refused by the kernel meanwhile.
        self.outbox.set_max_segments(self.sockets.max_segments());
    }

    fn flush_inbox(&mut self) {
        if self.inbox.is_empty() {
            return;
        }
        if let Err(e) = self.tun.write_batch(&mut self.gro, self.inbox.take()) {
            tracing::trace!(error = %e, "TUN write dropped");
        }
    }
}

/// Buffers for reading the TUN: one for the raw (super-)packet, and the packets it splits into.
struct TunReads {
    scratch: Vec<u8>,
    packets: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl TunReads {
    fn new() -> Self {
        Self {
            scratch: vec![0; tun::READ_SIZE],
            packets: zeroed_buffers(tun::SPLIT_MAX, BUF_SIZE),
            sizes: vec![0; tun::SPLIT_MAX],
        }
    }
}

/// `count` buffers of `size` zero bytes, each allocated on its own (`vec![vec![0; size]; count]`
/// would clone the first, writing every page): memory the kernel hands out zeroed and that only
/// becomes resident where a packet is written, so a buffer sized for a 64 KiB super-packet costs
/// a page while it only ever holds MTU-sized packets.
fn zeroed_buffers(count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count).map(|_| vec![0; size]).collect()
}

/// Buffers for `recvmmsg`: each holds one datagram, or with `UDP_GRO` up to 64 of one sender.
struct UdpReads {
    bufs: Vec<Vec<u8>>,
    meta: Vec<quinn_udp::RecvMeta>,
}

impl UdpReads {
    fn new() -> Self {
        Self {
            bufs: zeroed_buffers(UDP_BUFFERS, u16::MAX as usize),
            meta: vec![quinn_udp::RecvMeta::default(); UDP_BUFFERS],
        }
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
    let mut tun_reads = TunReads::new();
    let mut udp_reads = UdpReads::new();
    let mut tick = tokio::time::interval(TICK);
    let mut ticks = 0u32;
    let mut forwarded = vec![0u8; BUF_SIZE];
    // A successor's peers: handshaken at once (see `Device::flush_new_peers`).
    device.flush_new_peers(&mut shell);
    shell.flush();
    loop {
        tokio::select! {
            ready = tun_fd.readable(), if shell.reading_tun => {
                let mut guard = ready?;
                if read_tun(&mut device, &mut shell, &mut tun_reads)? {
                    guard.clear_ready();
                }
            }
            ready = shell.sockets.v4.io.readable(), if shell.reading_udp => {
                ready?;
                recv_batch(&mut device, &mut shell, false, &mut udp_reads);
            }
            ready = readable_v6(&shell.sockets), if shell.reading_udp => {
                ready?;
                recv_batch(&mut device, &mut shell, true, &mut udp_reads);
            }
            _ = tick.tick() => {
                device.tick(Instant::now(), &mut shell);
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(4) {
                    device.reset_rate_limiters();
                }
            }
            ready = succession::readable(&shell.forwarded) => {
                ready?;
                succession::recv_forwarded(&mut device, &mut shell, &mut forwarded);
            }
            cmd = commands.recv() => match cmd {
                Some(cmd) => handle_command(cmd, &mut device, &mut shell, &mut tun_reads)?,
                None => return Ok(()),
            },
        }
        shell.flush();
    }
}

fn handle_command(
    cmd: Command,
    device: &mut Device,
    shell: &mut Shell,
    tun_reads: &mut TunReads,
) -> io::Result<()> {
    match cmd {
        Command::Set(req, reply) => {
            let res = shell
                .apply(&req)
                .and_then(|()| device.apply(req, Instant::now()));
            device.flush_new_peers(shell);
            let _ = reply.send(res);
        }
        Command::Get(reply) => {
            let mut state = device.state(shell.sockets.port, shell.sockets.fwmark);
            state.process = Some(crate::model::ProcessInfo {
                version: crate::version().to_string(),
                pid: std::process::id(),
                instance: crate::instance(),
            });
            let _ = reply.send(state);
        }
        Command::HandOver(reply) => {
            let _ = reply.send(succession::hand_over(device, shell));
        }
        Command::Resume(reply) => {
            succession::resume(shell);
            let _ = reply.send(());
        }
        Command::Detach(reply) => {
            succession::detach(device, shell, tun_reads)?;
            let _ = reply.send(());
        }
    }
    Ok(())
}

/// Reads up to [`BATCH`] (super-)packets from the TUN and encrypts them. Returns true once the
/// TUN is drained. A packet the kernel handed over malformed (a bad virtio-net header) is
/// dropped; only the device failing ends the data path.
fn read_tun(device: &mut Device, shell: &mut Shell, reads: &mut TunReads) -> io::Result<bool> {
    for _ in 0..BATCH {
        match shell
            .tun
            .read_batch(&mut reads.scratch, &mut reads.packets, &mut reads.sizes)
        {
            Ok(n) => {
                for (packet, &len) in reads.packets.iter().zip(&reads.sizes).take(n) {
                    device.handle_tun_packet(&packet[..len], shell);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error().is_some() => return Err(e),
            Err(e) => tracing::debug!(error = %e, "TUN packet dropped"),
        }
    }
    Ok(false)
}

fn recv_batch(device: &mut Device, shell: &mut Shell, v6: bool, reads: &mut UdpReads) {
    for _ in 0..UDP_ROUNDS {
        let sock = match (v6, &shell.sockets.v6) {
            (true, Some(s)) => s,
            _ => &shell.sockets.v4,
        };
        let received = {
            let mut slices: Vec<IoSliceMut<'_>> =
                reads.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            sock.recv(&mut slices, &mut reads.meta)
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                // ICMP errors surface here as ECONNREFUSED etc.; they concern one peer only.
                tracing::trace!(error = %e, "underlay receive error");
                return;
            }
        };
        let now = Instant::now();
        for (buf, meta) in reads.bufs.iter().zip(&reads.meta).take(n) {
            let stride = meta.stride.max(1);
            for datagram in buf[..meta.len].chunks(stride) {
                device.handle_datagram(datagram, meta.addr, now, shell);
            }
        }
    }
}

async fn readable_v6(sockets: &Sockets) -> io::Result<()> {
    match &sockets.v6 {
        Some(s) => s.io.readable().await,
        None => std::future::pending().await,
    }
}
