//! The underlay UDP sockets of the userspace data path: IPv4 always, IPv6 where the kernel has
//! it (v6only, so the two never shadow each other).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

use crate::model::DeviceError;

/// Socket buffers of the underlay sockets (wireguard-go's figure): deep enough that a burst of
/// datagrams, a handshake flood among them, waits while the data-path thread is not scheduled,
/// rather than crowd out peers' packets at the socket.
const SOCKET_BUFFER: usize = 7 << 20;

pub struct Sockets {
    pub v4: UdpSocket,
    pub v6: Option<UdpSocket>,
    pub port: u16,
    pub fwmark: u32,
}

impl Sockets {
    pub fn bind(port: u16, fwmark: u32) -> Result<Self, DeviceError> {
        let bind_err = |e: io::Error| DeviceError::Bind {
            port,
            reason: e.to_string(),
        };
        let v4 = udp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)), fwmark).map_err(bind_err)?;
        let port = v4.local_addr().map_err(bind_err)?.port();
        let v6 = match udp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), fwmark) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::info!(port, error = %e, "no IPv6 underlay socket; IPv4 only");
                None
            }
        };
        Ok(Self {
            v4,
            v6,
            port,
            fwmark,
        })
    }

    pub fn set_mark(&mut self, mark: u32) -> Result<(), DeviceError> {
        for s in std::iter::once(&self.v4).chain(self.v6.as_ref()) {
            socket2::SockRef::from(s)
                .set_mark(mark)
                .map_err(|e| DeviceError::Invalid(format!("fwmark {mark}: {e}")))?;
        }
        self.fwmark = mark;
        Ok(())
    }

    pub fn send(&self, packet: &[u8], to: SocketAddr) {
        let sock = match (to, &self.v6) {
            (SocketAddr::V6(_), Some(v6)) => v6,
            _ => &self.v4,
        };
        if let Err(e) = sock.try_send_to(packet, to) {
            tracing::trace!(%to, error = %e, "underlay send dropped");
        }
    }
}

fn udp(addr: SocketAddr, fwmark: u32) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if fwmark != 0 {
        sock.set_mark(fwmark)?;
    }
    sock.set_nonblocking(true)?;
    grow_buffers(&sock);
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

/// Raises both buffers to [`SOCKET_BUFFER`]: past `net.core.[rw]mem_max` with the `*FORCE`
/// options (the data path runs with CAP_NET_ADMIN), else as far as the limits allow.
fn grow_buffers(sock: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(SOCKET_BUFFER).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let set = |opt| {
            // SAFETY: a valid socket descriptor and a pointer to a c_int of the given length.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    std::ptr::from_ref(&size).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            }
        };
        if set(force) != 0 && set(plain) != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "underlay socket buffer left at its default");
        }
    }
}
