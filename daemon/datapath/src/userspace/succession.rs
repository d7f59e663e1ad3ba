//! The userspace shell's part of an in-place upgrade ([`crate::handover`]): the predecessor
//! hands over its UDP sockets and configuration, detaches its TUN queue when told, and from
//! then on decrypts only the datagrams its successor forwards; the successor starts from what
//! it was handed, with receiver indices above the predecessor's.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::time::Instant;

use wiremesh_key::PrivateKey;

use super::device::Device;
use super::sockets::Sockets;
use super::{create_tun, launch, read_tun, Handle, Shell, TunReads};
use crate::handover::{self, Offer};
use crate::model::{DeviceError, SetRequest};

/// What the predecessor gives: the offer and the descriptors to send with it (v4, forward,
/// then v6 if any, the order [`handover::receive_offer`] expects).
pub struct HandedOver {
    pub offer: Offer,
    pub fds: Vec<OwnedFd>,
}

/// What a successor starts from.
pub struct Successor {
    pub key: PrivateKey,
    /// The rest of the predecessor's configuration (no private key: the device starts with it).
    pub config: SetRequest,
    pub index_base: u32,
    pub sockets: handover::Sockets,
}

/// Predecessor: stops reading the UDP sockets and gives out duplicates of them, a datagram
/// socket for forwarded datagrams, and the configuration.
pub(super) fn hand_over(device: &Device, shell: &mut Shell) -> Result<HandedOver, DeviceError> {
    let failed = |what: &str, e: io::Error| DeviceError::Invalid(format!("handover: {what}: {e}"));
    shell.flush();
    let (v4, v6) = shell
        .sockets
        .duplicates()
        .map_err(|e| failed("duplicating the UDP sockets", e))?;
    let (mine, theirs) =
        UnixDatagram::pair().map_err(|e| failed("creating the forwarding socket", e))?;
    mine.set_nonblocking(true)
        .map_err(|e| failed("forwarding socket", e))?;
    let mine = tokio::net::UnixDatagram::from_std(mine)
        .map_err(|e| failed("registering the forwarding socket", e))?;
    let config = crate::uapi::format_set(&device.export(shell.sockets.port, shell.sockets.fwmark));
    let offer = Offer {
        version: crate::version().to_string(),
        index_base: device.next_index(),
        v6: v6.is_some(),
        config,
    };
    let mut fds = vec![v4, OwnedFd::from(theirs)];
    fds.extend(v6);
    shell.reading_udp = false;
    shell.forwarded = Some(mine);
    Ok(HandedOver { offer, fds })
}

/// Predecessor whose successor failed before it attached: reads its UDP sockets again (its
/// duplicates went with the failed offer) and stops taking forwarded datagrams.
pub(super) fn resume(shell: &mut Shell) {
    shell.reading_udp = true;
    shell.forwarded = None;
    tracing::warn!("the successor failed before taking over; this data path serves on");
}

/// Predecessor: encrypts what still waits in its TUN queue (its sessions are valid), then
/// detaches the queue so that the kernel sends everything to the successor's.
pub(super) fn detach(
    device: &mut Device,
    shell: &mut Shell,
    reads: &mut TunReads,
) -> io::Result<()> {
    for _ in 0..64 {
        if read_tun(device, shell, reads)? {
            break;
        }
    }
    shell.flush();
    if let Err(e) = shell.tun.detach_queue() {
        tracing::warn!(error = %e, "could not detach the TUN queue; the successor shares it until this process exits");
    }
    shell.reading_tun = false;
    Ok(())
}

pub(super) async fn readable(forwarded: &Option<tokio::net::UnixDatagram>) -> io::Result<()> {
    match forwarded {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// Predecessor: the datagrams its successor could not route, handled as if just received.
pub(super) fn recv_forwarded(device: &mut Device, shell: &mut Shell, buf: &mut [u8]) {
    for _ in 0..super::UDP_BUFFERS * super::UDP_ROUNDS {
        let Some(sock) = &shell.forwarded else {
            return;
        };
        let n = match sock.try_recv(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                tracing::trace!(error = %e, "forwarded datagram lost");
                return;
            }
        };
        if let Some((from, datagram)) = handover::decode_forwarded(&buf[..n]) {
            device.handle_datagram(datagram, from, Instant::now(), shell);
        }
    }
}

/// Successor: attaches a queue of its own to the predecessor's interface, adopts the UDP
/// sockets and configures the device; the data-path thread handshakes every peer at once.
pub fn start_successor(
    interface: &str,
    successor: Successor,
    offload: bool,
) -> anyhow::Result<Handle> {
    let Successor {
        key,
        config,
        index_base,
        sockets,
    } = successor;
    let now = Instant::now();
    let mut device = Device::new(key, now);
    device.set_index_base(index_base);
    let fwmark = config.fwmark.unwrap_or(0);
    device
        .apply(config, now)
        .map_err(|e| anyhow::anyhow!("the handed-over configuration: {e}"))?;
    let forward = UnixDatagram::from(sockets.forward);
    forward.set_nonblocking(true)?;
    let tun = create_tun(interface, offload)?;
    let (v4, v6) = (sockets.v4, sockets.v6);
    launch(interface, tun, device, Some(forward), move || {
        Sockets::adopt(v4, v6, fwmark, offload)
    })
}
