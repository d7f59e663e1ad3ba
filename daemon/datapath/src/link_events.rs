//! Link and route changes as the kernel announces them (the rtnetlink multicast groups of
//! links and of IPv4 and IPv6 routes), so that the policy loop reacts to a re-created pod veth
//! or a new WireGuard device at once instead of at its next periodic check.
//!
//! It only wakes the loop up: it carries no state and decides nothing, and a lost notification
//! (a full socket buffer) costs at most the loop's period.

use anyhow::{Context, Result};
use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;

/// Subscribes to link and route changes. Each one that matters sends `()`; notifications that
/// arrive while one is pending are merged into it. Must be called inside a tokio runtime.
pub fn subscribe() -> Result<mpsc::Receiver<()>> {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ];
    let (conn, handle, mut messages) = rtnetlink::new_multicast_connection(&groups)
        .context("subscribing to link and route changes over rtnetlink")?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        // The connection lives as long as one of its ends does.
        let _handle = handle;
        while let Some((message, _)) = messages.next().await {
            if !matters(&message.payload) {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                return;
            }
        }
        tracing::warn!("the rtnetlink link and route notifications stopped; policy is re-checked every 2 s only");
    });
    Ok(rx)
}

fn matters(payload: &NetlinkPayload<RouteNetlinkMessage>) -> bool {
    matches!(
        payload,
        NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewLink(_)
                | RouteNetlinkMessage::DelLink(_)
                | RouteNetlinkMessage::NewRoute(_)
                | RouteNetlinkMessage::DelRoute(_)
        )
    )
}
