//! Policy enforcement in the kernel: the eBPF tc programs built from `daemon/enforce/bpf/policy.bpf.c`
//! and the maps they read. This module loads the programs, attaches them to endpoints'
//! host-side interfaces and keeps the maps equal to a compiled policy ([`Desired`]).
//!
//! It must never let an endpoint fail open: the maps are pinned under the pin directory so
//! that enforcement outlives the agent, an interface with the programs but no endpoint config
//! drops everything, and a map update that fails marks the endpoint fail-closed.

mod apply;
mod desired;
pub mod events;
mod maps;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuHashMap};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfError, EbpfLoader};
use ipnet::IpNet;
use tracing::info;

pub use desired::{ipcache_entries, policy_key, MapEntries, Plan};
pub use desired::{plan, Desired, EndpointConfig};
use maps::{
    CounterKey, CounterValue, EndpointConfigValue, IpcacheData, IpcacheValue, PolicyKey,
    PolicyValue, DIR_INGRESS, IPCACHE_FAMILY_BITS, MAP_COUNTERS, MAP_ENDPOINTS, MAP_IPCACHE,
    MAP_POLICY, VERDICT_ALLOW,
};
pub use maps::{Reason, MARK_FROM_PROXY, MARK_MASK, MARK_TO_PROXY_EGRESS, MARK_TO_PROXY_INGRESS};

/// The eBPF object, compiled by build.rs; the ELF parser needs it 8-byte aligned.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/policy.bpf.o"));

/// Where the agent pins its maps (config key `policy.bpfPinDir`).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/wiremesh";

const PROG_FROM_POD: &str = "wm_from_pod";
const PROG_TO_POD: &str = "wm_to_pod";
const PROG_TO_HOST: &str = "wm_to_host";
const PROG_FROM_HOST: &str = "wm_from_host";
const PROG_FROM_TUNNEL: &str = "wm_from_tunnel";
/// A pod's host-side veth: tc ingress carries what the pod sends.
const POD_HOOKS: [(&str, TcAttachType); 2] = [
    (PROG_FROM_POD, TcAttachType::Ingress),
    (PROG_TO_POD, TcAttachType::Egress),
];
/// The WireGuard device as the host endpoint: tc ingress carries what arrives for the host.
const HOST_HOOKS: [(&str, TcAttachType); 2] = [
    (PROG_TO_HOST, TcAttachType::Ingress),
    (PROG_FROM_HOST, TcAttachType::Egress),
];
/// Our tc filter's fixed slot on every interface: a restarted agent replaces the program in
/// it atomically instead of stacking a second filter or leaving a gap.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 0x574d);

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("{path} is not on a BPF filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)")]
    NotBpfFs { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("loading the eBPF policy programs (pinned maps under {pin_dir}): {source}")]
    Load {
        pin_dir: PathBuf,
        source: Box<EbpfError>,
    },
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<ProgramError>,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<MapError>,
    },
    #[error("interface {ifname}: {source}")]
    Interface { ifname: String, source: io::Error },
    #[error("interface {ifname}: adding the clsact qdisc: {source}")]
    Qdisc {
        ifname: String,
        source: Box<TcError>,
    },
    #[error("attaching {name} to {ifname}: {source}")]
    Attach {
        ifname: String,
        name: &'static str,
        source: Box<ProgramError>,
    },
    #[error("{failed} map update(s) failed; endpoints {endpoints:?} are fail-closed: {first}")]
    FailClosed {
        failed: usize,
        endpoints: Vec<u32>,
        first: String,
    },
}

/// One counter: packets and bytes for (endpoint, direction, verdict, reason), all CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub ifindex: u32,
    /// `true`: entering the pod (its ingress policy).
    pub ingress: bool,
    pub allowed: bool,
    pub reason: Reason,
    pub packets: u64,
    pub bytes: u64,
}

/// The loaded programs and their pinned maps, plus a mirror of what the maps hold.
pub struct Enforcer {
    ebpf: Ebpf,
    endpoints: BpfHashMap<MapData, u32, EndpointConfigValue>,
    policy: BpfHashMap<MapData, PolicyKey, PolicyValue>,
    ipcache: LpmTrie<MapData, IpcacheData, IpcacheValue>,
    counters: PerCpuHashMap<MapData, CounterKey, CounterValue>,
    policy_state: HashMap<PolicyKey, u32>,
    ipcache_state: HashMap<IpNet, u32>,
}

impl Enforcer {
    /// Loads the programs, creating the maps under `pin_dir` or re-opening the ones an earlier
    /// agent pinned there (their content, and so enforcement, carries over).
    pub fn open(pin_dir: &Path) -> Result<Self, EnforceError> {
        check_bpf_fs(pin_dir)?;
        fs::create_dir_all(pin_dir).map_err(|source| EnforceError::Io {
            path: pin_dir.to_path_buf(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(OBJECT)
            .map_err(|source| EnforceError::Load {
                pin_dir: pin_dir.to_path_buf(),
                source: Box::new(source),
            })?;
        for name in [
            PROG_FROM_POD,
            PROG_TO_POD,
            PROG_TO_HOST,
            PROG_FROM_HOST,
            PROG_FROM_TUNNEL,
        ] {
            program(&mut ebpf, name)?
                .load()
                .map_err(|source| program_error(name, source))?;
        }
        let endpoints = BpfHashMap::try_from(take_map(&mut ebpf, MAP_ENDPOINTS)?)
            .map_err(|source| map_error(MAP_ENDPOINTS, source))?;
        let policy = BpfHashMap::try_from(take_map(&mut ebpf, MAP_POLICY)?)
            .map_err(|source| map_error(MAP_POLICY, source))?;
        let ipcache = LpmTrie::try_from(take_map(&mut ebpf, MAP_IPCACHE)?)
            .map_err(|source| map_error(MAP_IPCACHE, source))?;
        let counters = PerCpuHashMap::try_from(take_map(&mut ebpf, MAP_COUNTERS)?)
            .map_err(|source| map_error(MAP_COUNTERS, source))?;
        let mut enforcer = Self {
            ebpf,
            endpoints,
            policy,
            ipcache,
            counters,
            policy_state: HashMap::new(),
            ipcache_state: HashMap::new(),
        };
        enforcer.read_back()?;
        info!(
            pin_dir = %pin_dir.display(),
            policy_entries = enforcer.policy_state.len(),
            ipcache_entries = enforcer.ipcache_state.len(),
            "eBPF policy enforcement loaded"
        );
        Ok(enforcer)
    }

    /// Whether the maps hold a policy: re-opened from an earlier agent's pins rather than
    /// created empty (as after a reboot, which empties the BPF filesystem).
    pub fn holds_policy(&self) -> bool {
        !self.policy_state.is_empty() || !self.ipcache_state.is_empty()
    }

    /// Reads the pinned maps' content, so that the next [`Enforcer::apply`] changes only
    /// what differs.
    fn read_back(&mut self) -> Result<(), EnforceError> {
        let map_err = |name| move |source| map_error(name, source);
        for item in self.policy.iter() {
            let (k, v) = item.map_err(map_err(MAP_POLICY))?;
            self.policy_state.insert(k, v.flags);
        }
        for item in self.ipcache.iter() {
            let (k, v) = item.map_err(map_err(MAP_IPCACHE))?;
            if let Some(net) = ipcache_net(&k) {
                self.ipcache_state.insert(net, v.identity);
            }
        }
        Ok(())
    }

    /// Attaches both programs to `ifname`'s clsact hooks: tc ingress (packets leaving the pod)
    /// and tc egress (packets entering it). Idempotent: an attached program, ours or a
    /// previous agent's, is replaced in place, atomically.
    pub fn attach(&mut self, ifname: &str) -> Result<u32, EnforceError> {
        self.attach_hooks(ifname, &POD_HOOKS)
    }

    /// Attaches the host endpoint's programs to the WireGuard device `ifname` (an L3 device
    /// that also forwards pod traffic: only packets to or from the host's own addresses are
    /// judged there).
    pub fn attach_host(&mut self, ifname: &str) -> Result<u32, EnforceError> {
        self.attach_hooks(ifname, &HOST_HOOKS)
    }

    /// Attaches the tunnel program alone to the WireGuard device `ifname` (no host policy): on
    /// tc ingress it hands SYNs for local pods' HTTP rules to the L7 proxy and drops nothing.
    /// The host endpoint's egress program, if there, is removed.
    pub fn attach_tunnel(&mut self, ifname: &str) -> Result<u32, EnforceError> {
        let ifindex = self.attach_hooks(ifname, &[(PROG_FROM_TUNNEL, TcAttachType::Ingress)])?;
        let egress = our_slot(ifname, TcAttachType::Egress)?;
        // Nothing in the slot is the usual case: no host policy ever.
        let _ = aya::programs::links::Link::detach(egress);
        Ok(ifindex)
    }

    fn attach_hooks(
        &mut self,
        ifname: &str,
        hooks: &[(&'static str, TcAttachType)],
    ) -> Result<u32, EnforceError> {
        let ifindex = ifindex(ifname)?;
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) | Err(TcError::AlreadyAttached) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(EnforceError::Qdisc {
                    ifname: ifname.to_string(),
                    source: Box::new(e),
                })
            }
        }
        for &(name, hook) in hooks {
            let prog = program(&mut self.ebpf, name)?;
            let attach_err = |source| EnforceError::Attach {
                ifname: ifname.to_string(),
                name,
                source: Box::new(source),
            };
            let existing = our_slot(ifname, hook)?;
            let id = match prog.attach_to_link(existing) {
                Ok(id) => id,
                // Nothing in our slot yet.
                Err(_) => prog
                    .attach_with_options(
                        ifname,
                        hook,
                        TcAttachOptions::Netlink(NlOptions {
                            priority: TC_PRIORITY,
                            handle: TC_HANDLE,
                            classid: None,
                        }),
                    )
                    .map_err(attach_err)?,
            };
            let link = prog.take_link(id).map_err(attach_err)?;
            // The filter must outlive this process (a restart must not lapse enforcement);
            // the link is a netlink (ifindex, priority, handle) triple and owns no fd.
            std::mem::forget(link);
        }
        info!(ifname, ifindex, "policy programs attached");
        Ok(ifindex)
    }

    /// Removes our filters from `ifname` (the interface then enforces nothing).
    pub fn detach(&mut self, ifname: &str) -> Result<(), EnforceError> {
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            let link = our_slot(ifname, hook)?;
            aya::programs::links::Link::detach(link).map_err(|source| EnforceError::Attach {
                ifname: ifname.to_string(),
                name: "detach",
                source: Box::new(source),
            })?;
        }
        Ok(())
    }

    /// Forgets the endpoint: its interface, if the programs are still attached, drops all.
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), EnforceError> {
        match self.endpoints.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(map_error(MAP_ENDPOINTS, source)),
        }
    }

    fn write_endpoint(
        &mut self,
        ifindex: u32,
        value: EndpointConfigValue,
    ) -> Result<(), EnforceError> {
        self.endpoints
            .insert(ifindex, value, 0)
            .map_err(|source| map_error(MAP_ENDPOINTS, source))
    }

    /// Marks an endpoint fail-closed: its interface drops every packet until a later
    /// successful [`Enforcer::apply`].
    pub fn fail_closed(&mut self, ifindex: u32) -> Result<(), EnforceError> {
        let identity = self
            .endpoints
            .get(&ifindex, 0)
            .map(|v| v.identity)
            .unwrap_or(0);
        self.write_endpoint(ifindex, EndpointConfig::enforcing(identity).value(true))
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<Counter>, EnforceError> {
        let mut out = Vec::new();
        for item in self.counters.iter() {
            let (key, values) = item.map_err(|source| map_error(MAP_COUNTERS, source))?;
            let total = values
                .iter()
                .fold(CounterValue::default(), |acc, v| CounterValue {
                    packets: acc.packets + v.packets,
                    bytes: acc.bytes + v.bytes,
                });
            out.push(Counter {
                ifindex: key.ifindex,
                ingress: key.direction == DIR_INGRESS,
                allowed: key.verdict == VERDICT_ALLOW,
                reason: Reason::from_code(key.reason),
                packets: total.packets,
                bytes: total.bytes,
            });
        }
        out.sort_by_key(|c| (c.ifindex, !c.ingress, !c.allowed, c.reason));
        Ok(out)
    }
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, EnforceError> {
    let Some(prog) = ebpf.program_mut(name) else {
        return Err(EnforceError::Program {
            name,
            source: Box::new(ProgramError::UnexpectedProgramType),
        });
    };
    prog.try_into()
        .map_err(|source| program_error(name, source))
}

/// The link naming our filter's slot (`TC_PRIORITY`, `TC_HANDLE`) on `ifname`'s `hook`, whether
/// or not a program is attached there.
/// Removes our filters (priority 1, handle 0x574d, on both clsact hooks) from `ifname` if they
/// are there, needing no loaded program: what an uninstall (`wiremesh cleanup`) does to every
/// interface. Other filters on the interface (a CNI's) are left alone. `Ok(true)` if any of
/// ours was removed.
pub fn detach_ours(ifname: &str) -> Result<bool, EnforceError> {
    let mut removed = false;
    for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
        let link = our_slot(ifname, hook)?;
        match aya::programs::links::Link::detach(link) {
            Ok(()) => removed = true,
            // No such filter, or no clsact qdisc at all.
            Err(ProgramError::NetlinkError(e))
                if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => {}
            Err(source) => {
                return Err(EnforceError::Attach {
                    ifname: ifname.to_string(),
                    name: "detach",
                    source: Box::new(source),
                })
            }
        }
    }
    Ok(removed)
}

fn our_slot(ifname: &str, hook: TcAttachType) -> Result<SchedClassifierLink, EnforceError> {
    SchedClassifierLink::attached(ifname, hook, TC_PRIORITY, TC_HANDLE, None).map_err(|source| {
        EnforceError::Interface {
            ifname: ifname.to_string(),
            source,
        }
    })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, EnforceError> {
    ebpf.take_map(name).ok_or(EnforceError::Map {
        name,
        source: Box::new(MapError::InvalidName {
            name: name.to_string(),
        }),
    })
}

fn ipcache_net(key: &LpmKey<IpcacheData>) -> Option<IpNet> {
    let data = key.data();
    let len = u8::try_from(key.prefix_len().checked_sub(IPCACHE_FAMILY_BITS)?).ok()?;
    let ip: std::net::IpAddr = match data.family {
        4 => std::net::Ipv4Addr::new(data.addr[0], data.addr[1], data.addr[2], data.addr[3]).into(),
        6 => std::net::Ipv6Addr::from(data.addr).into(),
        _ => return None,
    };
    IpNet::new(ip, len).ok()
}

fn ifindex(ifname: &str) -> Result<u32, EnforceError> {
    let err = |source| EnforceError::Interface {
        ifname: ifname.to_string(),
        source,
    };
    let name = std::ffi::CString::new(ifname)
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call, which only
    // reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(index)
}

/// Fails unless `path` (or, while it does not exist yet, its nearest existing ancestor) is on
/// a BPF filesystem: pins anywhere else fail, and a directory made in sysfs would be wrong.
fn check_bpf_fs(path: &Path) -> Result<(), EnforceError> {
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return Err(EnforceError::NotBpfFs {
            path: path.to_path_buf(),
        });
    };
    let stat = nix::sys::statfs::statfs(existing).map_err(|e| EnforceError::Io {
        path: existing.to_path_buf(),
        source: io::Error::from(e),
    })?;
    if stat.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
        return Err(EnforceError::NotBpfFs {
            path: existing.to_path_buf(),
        });
    }
    Ok(())
}

/// Mounts a BPF filesystem at `path` unless one is there already (as Cilium does for
/// /sys/fs/bpf on nodes that lack it).
pub fn ensure_bpf_fs(path: &Path) -> Result<(), EnforceError> {
    if check_bpf_fs(path).is_ok() && path.exists() {
        return Ok(());
    }
    fs::create_dir_all(path).map_err(|source| EnforceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| EnforceError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    })?;
    info!(path = %path.display(), "mounted a BPF filesystem");
    Ok(())
}

fn map_error(name: &'static str, source: MapError) -> EnforceError {
    EnforceError::Map {
        name,
        source: Box::new(source),
    }
}

fn program_error(name: &'static str, source: ProgramError) -> EnforceError {
    EnforceError::Program {
        name,
        source: Box::new(source),
    }
}
