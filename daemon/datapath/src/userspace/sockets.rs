//! The underlay UDP sockets of the userspace data path: IPv4 always, IPv6 where the kernel has
//! it (v6only, so the two never shadow each other). Batched through `quinn-udp`: `recvmmsg`
//! with `UDP_GRO` (one buffer then holds many datagrams of one sender, `stride` apart) and
//! `sendmsg` with `UDP_SEGMENT` (one call sends a run of same-size datagrams). quinn-udp probes
//! both at start and switches segmentation off for good if the kernel or driver refuses it
//! (EIO/EINVAL); the run that failed is then sent datagram by datagram, so nothing is lost.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::model::DeviceError;

/// Socket buffers of the underlay sockets (wireguard-go's figure): deep enough that a burst of
/// datagrams, a handshake flood among them, waits while the data-path thread is not scheduled,
/// rather than crowd out peers' packets at the socket.
const SOCKET_BUFFER: usize = 7 << 20;
/// How long a send waits for room in a full socket buffer before the datagrams are dropped.
const SEND_WAIT: Duration = Duration::from_millis(10);
/// The most datagrams one segmented send carries (the kernel's `UDP_MAX_SEGMENTS` on older
/// kernels; newer ones allow 128).
const MAX_SEGMENTS: usize = 64;

/// One underlay socket and its offload state.
pub struct Socket {
    pub io: UdpSocket,
    state: UdpSocketState,
}

pub struct Sockets {
    pub v4: Socket,
    pub v6: Option<Socket>,
    pub port: u16,
    pub fwmark: u32,
    pub offload: bool,
}

impl Sockets {
    pub fn bind(port: u16, fwmark: u32, offload: bool) -> Result<Self, DeviceError> {
        let bind_err = |e: io::Error| DeviceError::Bind {
            port,
            reason: e.to_string(),
        };
        let v4 = Socket::bind(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
            fwmark,
            offload,
        )
        .map_err(bind_err)?;
        let port = v4.io.local_addr().map_err(bind_err)?.port();
        let v6 = match Socket::bind(
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            fwmark,
            offload,
        ) {
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
            offload,
        })
    }

    /// Sockets handed over by a predecessor (the same open sockets: nothing queued in them is
    /// lost); `port` and `fwmark` are what its configuration says.
    pub fn adopt(
        v4: std::os::fd::OwnedFd,
        v6: Option<std::os::fd::OwnedFd>,
        fwmark: u32,
        offload: bool,
    ) -> Result<Self, DeviceError> {
        let adopt_err = |e: io::Error| DeviceError::Invalid(format!("adopted UDP socket: {e}"));
        let v4 = Socket::adopt(v4, offload).map_err(adopt_err)?;
        let v6 = v6
            .map(|fd| Socket::adopt(fd, offload))
            .transpose()
            .map_err(adopt_err)?;
        let port = v4.io.local_addr().map_err(adopt_err)?.port();
        Ok(Self {
            v4,
            v6,
            port,
            fwmark,
            offload,
        })
    }

    /// Duplicates of the sockets' descriptors, v4 then v6, for a successor.
    pub fn duplicates(&self) -> io::Result<(std::os::fd::OwnedFd, Option<std::os::fd::OwnedFd>)> {
        use std::os::fd::AsFd;
        let v4 = self.v4.io.as_fd().try_clone_to_owned()?;
        let v6 = self
            .v6
            .as_ref()
            .map(|s| s.io.as_fd().try_clone_to_owned())
            .transpose()?;
        Ok((v4, v6))
    }

    pub fn set_mark(&mut self, mark: u32) -> Result<(), DeviceError> {
        for s in std::iter::once(&self.v4).chain(self.v6.as_ref()) {
            socket2::SockRef::from(&s.io)
                .set_mark(mark)
                .map_err(|e| DeviceError::Invalid(format!("fwmark {mark}: {e}")))?;
        }
        self.fwmark = mark;
        Ok(())
    }

    /// The socket for a destination's address family.
    pub fn for_destination(&self, to: SocketAddr) -> &Socket {
        match (to, &self.v6) {
            (SocketAddr::V6(_), Some(v6)) => v6,
            _ => &self.v4,
        }
    }

    /// Datagrams per segmented send: 1 when offloads are off or the kernel refused them.
    pub fn max_segments(&self) -> usize {
        if !self.offload {
            return 1;
        }
        std::iter::once(&self.v4)
            .chain(self.v6.as_ref())
            .map(|s| s.state.max_gso_segments())
            .min()
            .unwrap_or(1)
            .clamp(1, MAX_SEGMENTS)
    }
}

impl Socket {
    fn bind(addr: SocketAddr, fwmark: u32, offload: bool) -> io::Result<Self> {
        let domain = socket2::Domain::for_address(addr);
        let sock =
            socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        if fwmark != 0 {
            sock.set_mark(fwmark)?;
        }
        sock.set_nonblocking(true)?;
        grow_buffers(&sock);
        sock.bind(&addr.into())?;
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        // quinn-udp sets "don't fragment" for QUIC's path-MTU probing; WireGuard leaves that
        // to the kernel's default, as before.
        let (level, opt, value) = match addr {
            SocketAddr::V4(_) => (
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_WANT,
            ),
            SocketAddr::V6(_) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                libc::IPV6_PMTUDISC_WANT,
            ),
        };
        set_int(&sock, level, opt, value)?;
        if !offload {
            // Without offloads every receive is one datagram, as on a kernel without GRO.
            set_int(&sock, libc::SOL_UDP, libc::UDP_GRO, 0)?;
        }
        Ok(Self {
            io: UdpSocket::from_std(sock.into())?,
            state,
        })
    }

    fn adopt(fd: std::os::fd::OwnedFd, offload: bool) -> io::Result<Self> {
        let sock = socket2::Socket::from(fd);
        sock.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        if !offload {
            set_int(&sock, libc::SOL_UDP, libc::UDP_GRO, 0)?;
        }
        Ok(Self {
            io: UdpSocket::from_std(sock.into())?,
            state,
        })
    }

    /// Whether receives may carry many datagrams per buffer (`UDP_GRO`).
    pub fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// One `recvmmsg`: fills `bufs` (each may hold several datagrams, `meta[i].stride` apart).
    pub fn recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        self.io.try_io(Interest::READABLE, || {
            self.state.recv(UdpSockRef::from(&self.io), bufs, meta)
        })
    }

    /// Sends a run of datagrams (`segment` bytes each, the last possibly shorter) in one call;
    /// waits briefly for room if the socket buffer is full. If segmentation was refused, sends
    /// the datagrams one by one.
    pub fn send(&self, to: SocketAddr, bytes: &[u8], segment: Option<usize>) -> io::Result<()> {
        match self.send_once(to, bytes, segment) {
            Err(e) if segment.is_some() && self.state.max_gso_segments() <= 1 => {
                tracing::info!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
                let size = segment.unwrap_or(bytes.len()).max(1);
                bytes
                    .chunks(size)
                    .try_for_each(|d| self.send_once(to, d, None))
            }
            other => other,
        }
    }

    fn send_once(&self, to: SocketAddr, bytes: &[u8], segment: Option<usize>) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: bytes,
            segment_size: segment,
            src_ip: None,
        };
        let sock = UdpSockRef::from(&self.io);
        match self.state.try_send(sock, &transmit) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_writable(&self.io, SEND_WAIT);
                self.state.try_send(UdpSockRef::from(&self.io), &transmit)
            }
            other => other,
        }
    }
}

/// Blocks the data-path thread until `sock` has room or `timeout` passes: the thread has
/// nothing better to do than wait for the underlay to drain.
fn wait_writable(sock: &UdpSocket, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

fn set_int(
    sock: &socket2::Socket,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            opt,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises both buffers to [`SOCKET_BUFFER`]: past `net.core.[rw]mem_max` with the `*FORCE`
/// options (the data path runs with CAP_NET_ADMIN), else as far as the limits allow.
fn grow_buffers(sock: &socket2::Socket) {
    let size = libc::c_int::try_from(SOCKET_BUFFER).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int(sock, libc::SOL_SOCKET, force, size).is_err()
            && set_int(sock, libc::SOL_SOCKET, plain, size).is_err()
        {
            tracing::debug!(error = %io::Error::last_os_error(), "underlay socket buffer left at its default");
        }
    }
}
