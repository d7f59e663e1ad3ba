//! The wiremesh data path: what moves packets, and nothing that decides which.
//!
//! - [`model`]: the WireGuard device model both backends speak ([`model::SetRequest`] in,
//!   [`model::DeviceState`] out), in the cross-platform UAPI's `set`/`get` semantics;
//! - [`uapi`]: that model as UAPI text (parser and formatter), its server on the device's
//!   socket (`wg` talks to it) and the agent's client;
//! - [`userspace`]: the userspace device: a sans-IO core over boringtun's `noise` (`device`)
//!   and the shell that feeds it from the TUN device and the UDP sockets;
//! - [`kernel`]: the kernel module backend (defguard_wireguard_rs over netlink);
//! - [`backend`]: the seam the agent drives, one variant per backend;
//! - [`process`]: the `wiremesh datapath` process (the userspace device and its UAPI socket,
//!   outliving agent restarts);
//! - [`listen`]: local socket listeners: peer credentials, connection caps, write deadlines;
//! - [`netlink`], [`link_events`]: the interface's addresses and routes, and the kernel's
//!   link/route announcements.
//!
//! It links no store client (kube, etcd), no eBPF loader and no policy: `cargo tree -p
//! wiremesh-datapath` shows it.

pub mod backend;
pub mod handover;
pub mod kernel;
pub mod link_events;
pub mod listen;
pub mod model;
pub mod netlink;
pub mod process;
pub mod uapi;
pub mod userspace;

pub use backend::Datapath;

/// This binary's version: `WIREMESH_VERSION` at build time if set (so that a test can build a
/// distinguishable successor), the crate's version otherwise. `wiremesh --version`, the data
/// path's UAPI answer and `encrypt status` all read it here.
pub fn version() -> &'static str {
    match option_env!("WIREMESH_VERSION") {
        Some(v) if !v.is_empty() => v,
        _ => env!("CARGO_PKG_VERSION"),
    }
}

/// This process's instance: random, drawn once. The UAPI answer carries it so that a data-path
/// pod's probe can tell whether the data path answering on the interface's socket is its own
/// (PIDs cannot: each pod has its own PID namespace).
pub fn instance() -> u64 {
    static INSTANCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *INSTANCE.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // SAFETY: getrandom(2) writes at most `bytes.len()` bytes into the buffer it is given.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n != 8 {
            // No entropy source: the start time and PID still differ between two processes.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            return nanos ^ u64::from(std::process::id()).rotate_left(32);
        }
        u64::from_ne_bytes(bytes)
    })
}
