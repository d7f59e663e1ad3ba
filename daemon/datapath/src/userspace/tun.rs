//! The TUN device of the userspace data path, through `tun-rs`: layer-3 frames, non-blocking,
//! and (unless switched off) with the kernel's offloads — `IFF_VNET_HDR` with
//! `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6` (and `TUN_F_USO4 | TUN_F_USO6` where the kernel has
//! them). The kernel then hands us TCP/UDP super-packets of up to 64 KiB, which `tun-rs` splits
//! into MTU-sized packets on read (wireguard-go's `gso_split`), and takes coalesced
//! super-packets on write (its GRO table), so that one system call moves dozens of packets in
//! each direction.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tun_rs::{DeviceBuilder, GROTable, SyncDevice, VIRTIO_NET_HDR_LEN};

/// Room left in front of every packet handed to [`Tun::write_batch`], where the virtio-net
/// header goes (whether or not offloads are on, so callers need not know).
pub const HEADROOM: usize = VIRTIO_NET_HDR_LEN;
/// The most packets one read splits into: a 64 KiB super-packet at the smallest MSS the
/// kernel's TCP uses (wireguard-go's figure).
pub const SPLIT_MAX: usize = tun_rs::IDEAL_BATCH_SIZE;
/// Room for the largest packet a TUN read can hold (64 KiB plus the virtio-net header).
pub const READ_SIZE: usize = 65_535 + VIRTIO_NET_HDR_LEN;

pub struct Tun {
    dev: SyncDevice,
}

impl Tun {
    pub fn create(name: &str, offload: bool) -> io::Result<Self> {
        if name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::other(format!(
                "interface name {name:?} is longer than {} bytes",
                libc::IFNAMSIZ - 1
            )));
        }
        let dev = DeviceBuilder::new()
            .name(name)
            .offload(offload)
            // Multi-queue, so that a successor data path can attach a queue of its own before
            // this one detaches (an in-place upgrade, see `crate::handover`).
            .multi_queue(true)
            .inherit_enable_state()
            .build_sync()
            .map_err(|e| io::Error::new(e.kind(), format!("TUN device {name}: {e}")))?;
        dev.set_nonblocking(true)?;
        Ok(Self { dev })
    }

    /// Whether the kernel hands this device TCP super-packets (and takes coalesced ones).
    pub fn tcp_offload(&self) -> bool {
        self.dev.tcp_gso()
    }

    /// Whether UDP super-packets (USO) are on as well (Linux ≥ 6.2).
    pub fn udp_offload(&self) -> bool {
        self.dev.udp_gso()
    }

    /// One read: a packet, or a super-packet split into `packets` (each MTU-sized, with
    /// correct headers and checksums). Returns how many of `packets` were filled; their
    /// lengths are in `sizes`.
    pub fn read_batch(
        &self,
        scratch: &mut [u8],
        packets: &mut [Vec<u8>],
        sizes: &mut [usize],
    ) -> io::Result<usize> {
        self.dev.recv_multiple(scratch, packets, sizes, 0)
    }

    /// Writes `packets` (each with [`HEADROOM`] bytes in front), coalescing consecutive
    /// segments of one flow into super-packets first when offloads are on.
    pub fn write_batch(&self, gro: &mut GROTable, packets: &mut [Vec<u8>]) -> io::Result<usize> {
        self.dev.send_multiple(gro, packets, HEADROOM)
    }
}

impl Tun {
    /// Detaches this queue from the interface (`TUNSETQUEUE` with `IFF_DETACH_QUEUE`): the
    /// kernel then sends everything to the other queues, a successor's. Whatever still waits in
    /// this queue is dropped, so the caller drains it first.
    pub fn detach_queue(&self) -> io::Result<()> {
        /// `_IOW('T', 217, int)`.
        const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;
        const IFF_DETACH_QUEUE: libc::c_short = 0x0400;
        // SAFETY: an all-zero ifreq is valid; only its flags are read by this ioctl.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        req.ifr_ifru.ifru_flags = IFF_DETACH_QUEUE;
        // SAFETY: a TUN descriptor this device owns, and a valid ifreq for the call's duration.
        let rc = unsafe { libc::ioctl(self.as_raw_fd(), TUNSETQUEUE, &mut req) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}
