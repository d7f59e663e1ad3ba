//! A Linux TUN device opened directly through `/dev/net/tun`: layer-3 frames without the packet
//! information header, non-blocking, so the event loop can drain it in batches. Owning the ioctl
//! keeps `IFF_MULTI_QUEUE` and `TUNSETPERSIST` (re-attachable devices) within reach of the data
//! path without another abstraction in between.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub struct Tun {
    fd: OwnedFd,
}

impl Tun {
    pub fn create(name: &str) -> io::Result<Self> {
        let cname =
            CString::new(name).map_err(|_| io::Error::other("interface name has a NUL byte"))?;
        if cname.as_bytes().len() >= libc::IFNAMSIZ {
            return Err(io::Error::other(format!(
                "interface name {name:?} is longer than {} bytes",
                libc::IFNAMSIZ - 1
            )));
        }
        // SAFETY: plain open(2) of a constant path; the result is checked below.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("/dev/net/tun: {e}")));
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(cname.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out exactly
        // (16-byte name, then the flags union padded to 24 bytes).
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
        }
        Ok(Self { fd })
    }

    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: `packet` is valid for `packet.len()` bytes of reads.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
