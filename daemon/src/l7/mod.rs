//! The L7 filter's kernel plumbing in the agent: the nftables table that hands connections the
//! eBPF programs marked to the proxy's transparent listeners ([`redirect`]), and the policy
//! routing that delivers them to local sockets.
//!
//! It must never send anything to the proxy that the programs did not mark, and its absence
//! must never open a path around the proxy: a marked SYN that finds no listener is routed on
//! unchanged and dropped at the pod's interface (`l7-unredirected`).

pub mod redirect;

use nftables::helper::{self, NftablesError};
use wiremesh_datapath::netlink::{LocalDelivery, Netlink};
use wiremesh_enforce::MARK_MASK;

pub use redirect::{Listeners, MARK_LOCAL};

/// The proxy's default listeners (Istio's: 15006 inbound, 15001 outbound).
pub const DEFAULT_LISTENERS: Listeners = Listeners {
    ingress_port: 15006,
    egress_port: 15001,
};

/// The routing table holding `local default dev lo` for proxied packets, and its rule's
/// preference (before the main table's 32766).
pub const ROUTING_TABLE: u32 = 2611;
pub const RULE_PRIORITY: u32 = 9;

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("L7 redirect: cannot run nft ({0}); install the nftables package (Debian: nftables)")]
    NoNft(#[source] std::io::Error),
    #[error(
        "L7 redirect: nft failed installing table inet {}: {stderr}",
        redirect::TABLE
    )]
    Nft { stderr: String },
    #[error("L7 redirect: policy routing for marked packets: {0:#}")]
    Routing(#[source] anyhow::Error),
}

/// Installs (or replaces) the table and the policy routing. Idempotent.
pub async fn install(netlink: &Netlink, listeners: Listeners) -> Result<(), RedirectError> {
    netlink
        .ensure_local_delivery(LocalDelivery {
            mark: MARK_LOCAL,
            mask: MARK_MASK,
            table: ROUTING_TABLE,
            priority: RULE_PRIORITY,
        })
        .await
        .map_err(RedirectError::Routing)?;
    let ruleset = redirect::install(listeners);
    tokio::task::spawn_blocking(move || helper::apply_ruleset(&ruleset))
        .await
        .map_err(|e| RedirectError::NoNft(std::io::Error::other(e)))?
        .map_err(|e| match e {
            NftablesError::NftExecution { inner, .. } => RedirectError::NoNft(inner),
            other => RedirectError::Nft {
                stderr: other.to_string(),
            },
        })?;
    tracing::info!(
        table = %format!("inet {}", redirect::TABLE),
        ingress_port = listeners.ingress_port,
        egress_port = listeners.egress_port,
        "L7 redirect installed: connections under HTTP rules go to the proxy"
    );
    Ok(())
}
