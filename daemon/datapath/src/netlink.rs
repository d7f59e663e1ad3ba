//! Link and route management through rtnetlink: bring the WireGuard interface up with its MTU,
//! route each peer's pod CIDRs into it, find the underlay's MTU. Never shells out to `ip`.

use std::net::IpAddr;

use anyhow::{anyhow, Context, Result};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteProtocol};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

/// `proto static`: what `ip route` shows for routes set by a daemon rather than the kernel.
const PROTO: RouteProtocol = RouteProtocol::Static;

#[derive(Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

impl Netlink {
    /// Must be called inside a tokio runtime: the netlink connection runs as a task.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    pub async fn link_index(&self, name: &str) -> Result<u32> {
        let link = self
            .link(name)
            .await?
            .ok_or_else(|| anyhow!("interface {name} not found"))?;
        Ok(link.header.index)
    }

    /// Interface `name`, `None` if there is none.
    async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            // No such device.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -ENODEV => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
        }
    }

    pub async fn set_up(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| format!("setting interface #{index} up with MTU {mtu}"))
    }

    /// Puts `ip` on the interface as a host address (/32 or /128), unless it is there already.
    /// Never a replace: the kernel implements one as delete + add, and removing an interface's
    /// last address flushes every route through it, which would send pod traffic elsewhere
    /// (strict mode drops it) until the routes are back.
    pub async fn ensure_host_address(&self, index: u32, ip: IpAddr) -> Result<()> {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            let here = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(a) | AddressAttribute::Local(a) if *a == ip)
            });
            if here && msg.header.index == index && msg.header.prefix_len == len {
                return Ok(());
            }
        }
        self.handle
            .address()
            .add(index, ip, len)
            .execute()
            .await
            .with_context(|| format!("adding address {ip}/{len} to interface #{index}"))
    }

    /// The kind of interface `name` (`wireguard`, `tun`, ...), `None` if there is no such
    /// interface.
    pub async fn link_kind(&self, name: &str) -> Result<Option<String>> {
        use netlink_packet_route::link::LinkInfo;
        let Some(link) = self.link(name).await? else {
            return Ok(None);
        };
        let kind = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Kind(k) => Some(k.to_string()),
                _ => None,
            }),
            _ => None,
        });
        Ok(Some(kind.unwrap_or_default()))
    }

    /// Probes for the kernel WireGuard module by creating (and keeping) an interface of kind
    /// `wireguard`. Returns its index.
    pub async fn create_wireguard(&self, name: &str) -> Result<u32> {
        self.handle
            .link()
            .add(rtnetlink::LinkWireguard::new(name).build())
            .execute()
            .await
            .with_context(|| format!("creating WireGuard interface {name}"))?;
        self.link_index(name).await
    }

    /// Routes `net` into the interface, replacing any route to exactly `net` in the main table.
    pub async fn replace_route(&self, net: IpNet, index: u32) -> Result<()> {
        let msg = route_message(net, index)?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(|| format!("adding route {net} dev #{index}"))
    }

    pub async fn delete_route(&self, net: IpNet, index: u32) -> Result<()> {
        let msg = route_message(net, index)?;
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .with_context(|| format!("deleting route {net} dev #{index}"))
    }

    /// The MTU of the interface that holds `addr` (the node's underlay address), if any does.
    pub async fn mtu_of_interface_with(&self, addr: IpAddr) -> Result<Option<u32>> {
        let mut addrs = self.handle.address().get().execute();
        let mut index = None;
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            let holds = msg.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == addr)
            });
            if holds {
                index = Some(msg.header.index);
                break;
            }
        }
        let Some(index) = index else { return Ok(None) };
        let mut links = self.handle.link().get().match_index(index).execute();
        let Some(link) = links.try_next().await.context("reading link")? else {
            return Ok(None);
        };
        Ok(link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        }))
    }
}

impl Netlink {
    /// Every address of this host (this network namespace) except loopback and IPv6
    /// link-local ones: the addresses the host endpoint answers on.
    pub async fn local_addresses(&self) -> Result<Vec<IpAddr>> {
        let mut addrs = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            for attr in &msg.attributes {
                let (AddressAttribute::Address(ip) | AddressAttribute::Local(ip)) = attr else {
                    continue;
                };
                let link_local =
                    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                if !ip.is_loopback() && !link_local && !out.contains(ip) {
                    out.push(*ip);
                }
            }
        }
        Ok(out)
    }
}

/// Where the kernel routes one address: [`Netlink::route_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTo {
    pub ifindex: u32,
    pub ifname: String,
    /// Through a gateway (not directly attached to the interface).
    pub gateway: bool,
}

impl Netlink {
    /// Asks the kernel where it routes `ip` (`ip route get`), with the output interface's name.
    pub async fn route_to(&self, ip: IpAddr) -> Result<Option<RouteTo>> {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(ip, len)
            .map_err(|e| anyhow!("route to {ip}: {e:?}"))?
            .build();
        let mut routes = self.handle.route().get(msg).execute();
        let route = match routes.try_next().await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            // ENETUNREACH and friends: no route.
            Err(rtnetlink::Error::NetlinkError(_)) => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("looking up the route to {ip}")),
        };
        let mut ifindex = None;
        let mut gateway = false;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Oif(i) => ifindex = Some(*i),
                RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => gateway = true,
                _ => {}
            }
        }
        let Some(ifindex) = ifindex else {
            return Ok(None);
        };
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        let link = links
            .try_next()
            .await
            .with_context(|| format!("reading interface #{ifindex}"))?
            .ok_or_else(|| anyhow!("interface #{ifindex} vanished"))?;
        let ifname = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Some(RouteTo {
            ifindex,
            ifname,
            gateway,
        }))
    }
}

impl Netlink {
    /// Every interface of this host (this network namespace): name → ifindex.
    pub async fn links(&self) -> Result<std::collections::BTreeMap<String, u32>> {
        let mut links = self.handle.link().get().execute();
        let mut out = std::collections::BTreeMap::new();
        while let Some(link) = links.try_next().await.context("listing interfaces")? {
            let name = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(name) = name {
                out.insert(name, link.header.index);
            }
        }
        Ok(out)
    }
}

/// `net dev #index proto static` in the main table.
fn route_message(net: IpNet, index: u32) -> Result<netlink_packet_route::route::RouteMessage> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(net.network(), net.prefix_len())
        .map_err(|e| anyhow!("route to {net}: {e:?}"))?
        .output_interface(index)
        .protocol(PROTO)
        .build())
}

/// Policy routing that delivers packets carrying a mark to local sockets (what TPROXY needs):
/// `ip rule add fwmark MARK/MASK lookup TABLE pref PRIORITY` and `local default dev lo table
/// TABLE`, for IPv4 and IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalDelivery {
    pub mark: u32,
    pub mask: u32,
    pub table: u32,
    pub priority: u32,
}

impl Netlink {
    /// Installs `delivery`; idempotent (what is there already is kept).
    pub async fn ensure_local_delivery(&self, delivery: LocalDelivery) -> Result<()> {
        use netlink_packet_route::rule::{RuleAction, RuleAttribute};
        let lo = self.link_index("lo").await?;
        for v6 in [false, true] {
            let rule = self
                .handle
                .rule()
                .add()
                .table_id(delivery.table)
                .priority(delivery.priority)
                .fw_mark(delivery.mark)
                .action(RuleAction::ToTable);
            let mask = RuleAttribute::FwMask(delivery.mask);
            let added = if v6 {
                let mut rule = rule.v6();
                rule.message_mut().attributes.push(mask);
                rule.execute().await
            } else {
                let mut rule = rule.v4();
                rule.message_mut().attributes.push(mask);
                rule.execute().await
            };
            match added {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                Err(e) => {
                    return Err(anyhow!(
                        "adding rule fwmark {:#x}/{:#x} lookup {} ({}): {e}",
                        delivery.mark,
                        delivery.mask,
                        delivery.table,
                        if v6 { "IPv6" } else { "IPv4" }
                    ))
                }
            }
            let any: IpNet = if v6 {
                "::/0".parse()?
            } else {
                "0.0.0.0/0".parse()?
            };
            let route = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(any.network(), 0)
                .map_err(|e| anyhow!("local route: {e:?}"))?
                .output_interface(lo)
                .table_id(delivery.table)
                .kind(netlink_packet_route::route::RouteType::Local)
                .scope(netlink_packet_route::route::RouteScope::Host)
                .protocol(PROTO)
                .build();
            match self.handle.route().add(route).replace().execute().await {
                Ok(()) => {}
                // IPv6 disabled on this host (or in this namespace): no IPv6 to deliver.
                Err(rtnetlink::Error::NetlinkError(e))
                    if v6 && matches!(-e.raw_code(), libc::EACCES | libc::EAFNOSUPPORT) =>
                {
                    tracing::debug!("IPv6 is disabled: no IPv6 local delivery for marked packets");
                }
                Err(e) => {
                    return Err(anyhow!(
                        "adding local {any} dev lo table {}: {e}",
                        delivery.table
                    ))
                }
            }
        }
        Ok(())
    }
}

/// `ENODEV`, what the kernel answers for a link name that does not exist.
const ENODEV: i32 = 19;
