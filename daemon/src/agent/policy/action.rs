//! What the policy planner asks the I/O shell to do ([`Action`]) and what the shell reports
//! back (the results of netlink, the enforcer and the saved file), as plain data.
//!
//! It owns no behaviour: nothing here performs I/O or decides anything.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use keymgr::store::objects::Wanted;
use wiremesh_datapath::netlink::RouteTo;
use wiremesh_enforce::{Desired, EnforceError};

use super::saved::Saved;
use super::{PassReport, PolicyState};

/// One thing for the shell to do. An action whose result the planner needs (the ones documented
/// "answer with") is always the last one queued until that answer arrives.
#[derive(Debug)]
pub enum Action {
    /// List this host's addresses. Answer with [`super::planner::Planner::handle_local_addresses`].
    ListLocalAddresses,
    /// Allocate identity numbers cluster-wide through the object store. Answer with
    /// [`super::planner::Planner::handle_identities`].
    AllocateIdentities(Vec<Wanted>),
    /// Publish the policy in force (online trace, status, metrics).
    PublishState(Arc<PolicyState>),
    /// List the interfaces, then look up the route to each endpoint's address. Answer with
    /// [`super::planner::Planner::handle_links`].
    Observe(Vec<(String, IpAddr)>),
    /// Put the programs on interfaces and take them off others (blocking netlink calls).
    /// Answer with [`super::planner::Planner::handle_attach_result`].
    Attach(AttachOps),
    /// Bring the maps to this content (blocking map updates). Answer with
    /// [`super::planner::Planner::handle_apply_result`].
    Apply(Box<Desired>),
    /// Read the programs' packet counters into the metrics, naming each ifindex by the endpoint
    /// it serves (counters of other interfaces are left out).
    ReadCounters(BTreeMap<u32, String>),
    /// Write the accepted set to the saved file. Answer with
    /// [`super::planner::Planner::handle_save_result`].
    Save(Box<Saved>),
    /// Report a finished pass.
    PublishReport(PassReport),
}

/// The enforcer calls of one pass's attachment plan; the pure part of the plan (interfaces to
/// forget) is already done by the planner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachOps {
    /// Interfaces to attach the pod programs to.
    pub attach: Vec<String>,
    /// Interfaces to take them off.
    pub detach: Vec<String>,
    /// The programs on the WireGuard device.
    pub host: Option<HostOp>,
    /// The WireGuard interface's name.
    pub wg: String,
}

impl AttachOps {
    pub fn is_empty(&self) -> bool {
        self.attach.is_empty() && self.detach.is_empty() && self.host.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOp {
    /// The host endpoint's pair (which includes the tunnel's redirect).
    Attach,
    /// The tunnel program alone, replacing the host pair.
    Tunnel,
}

/// What the enforcer did with [`AttachOps`], each in the order asked.
#[derive(Debug, Default)]
pub struct AttachResults {
    /// Interface → the ifindex the programs are now attached to.
    pub attached: Vec<(String, Result<u32, EnforceError>)>,
    pub detached: Vec<(String, Result<(), EnforceError>)>,
    pub host: Option<HostResult>,
}

#[derive(Debug)]
pub enum HostResult {
    Attached(Result<u32, EnforceError>),
    Tunnel(Result<u32, EnforceError>),
}

/// What the kernel lists for one pass.
#[derive(Debug, Default)]
pub struct Observation {
    /// Every interface: name → ifindex.
    pub links: BTreeMap<String, u32>,
    /// Each endpoint asked about, its address and where the kernel routes it.
    pub routes: Vec<RouteLookup>,
}

#[derive(Debug)]
pub struct RouteLookup {
    pub endpoint: String,
    pub ip: IpAddr,
    pub route: Result<Option<RouteTo>, NetlinkError>,
}

/// A netlink request that failed (the data path's netlink helpers report `anyhow` chains),
/// shown with its whole chain.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct NetlinkError(pub anyhow::Error);
