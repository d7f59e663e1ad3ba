//! A data path replaced in place, in memory: the peer keeps sending on its session with the old
//! device while the successor (configured from the old one's export) handshakes; what the
//! successor cannot route is forwarded to the old device, and every packet is delivered once.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use wiremesh_key::PrivateKey;

use super::device::{Device, Io};
use crate::model::{PeerChange, SetRequest};

#[derive(Default)]
struct Wire {
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    delivered: Vec<u32>,
    unrouted: Vec<(SocketAddr, Vec<u8>)>,
}

impl Io for Wire {
    fn send(&mut self, to: SocketAddr, packet: &[u8]) {
        self.outbox.push((to, packet.to_vec()));
    }
    fn deliver(&mut self, packet: &[u8]) {
        self.delivered.push(u32::from_be_bytes([
            packet[20], packet[21], packet[22], packet[23],
        ]));
    }
    fn unrouted(&mut self, from: SocketAddr, datagram: &[u8]) {
        self.unrouted.push((from, datagram.to_vec()));
    }
}

const PEER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, n], 51871))
}

fn ipv4(seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&24u16.to_be_bytes());
    p[8] = 64;
    p[9] = 253;
    p[12..16].copy_from_slice(&PEER.octets());
    p[16..20].copy_from_slice(&LOCAL.octets());
    p[20..24].copy_from_slice(&seq.to_be_bytes());
    p
}

fn change(key: wiremesh_key::PublicKey, n: u8, net: &str) -> SetRequest {
    let mut c = PeerChange::new(key);
    c.endpoint = Some(addr(n));
    c.replace_allowed_ips = true;
    c.allowed_ips = vec![net.parse().unwrap()];
    SetRequest {
        peers: vec![c],
        ..SetRequest::default()
    }
}

/// Delivers everything in flight: the peer's datagrams reach the successor (it holds the
/// sockets), whose unroutable ones go to the old device; replies go back to the peer.
fn pump(peer: &mut (Device, Wire), old: &mut (Device, Wire), new: &mut (Device, Wire)) {
    for _ in 0..100 {
        let to_node: Vec<_> = std::mem::take(&mut peer.1.outbox);
        let forwarded: Vec<_> = std::mem::take(&mut new.1.unrouted);
        let replies: Vec<_> = std::mem::take(&mut new.1.outbox)
            .into_iter()
            .chain(std::mem::take(&mut old.1.outbox))
            .collect();
        if to_node.is_empty() && forwarded.is_empty() && replies.is_empty() {
            return;
        }
        let now = Instant::now();
        for (_, p) in to_node {
            new.0.handle_datagram(&p, addr(1), now, &mut new.1);
        }
        for (from, p) in forwarded {
            old.0.handle_datagram(&p, from, now, &mut old.1);
        }
        for (to, p) in replies {
            assert_eq!(to, addr(1));
            peer.0.handle_datagram(&p, addr(2), now, &mut peer.1);
        }
    }
    panic!("the devices kept talking for 100 rounds");
}

#[test]
fn packets_on_the_old_session_are_forwarded_and_none_is_lost() {
    let (peer_key, node_key) = (PrivateKey::generate(), PrivateKey::generate());
    let now = Instant::now();
    let mut peer = (Device::new(peer_key.clone(), now), Wire::default());
    let mut old = (Device::new(node_key.clone(), now), Wire::default());
    peer.0
        .apply(change(node_key.public_key(), 2, "10.244.2.0/24"), now)
        .unwrap();
    old.0
        .apply(change(peer_key.public_key(), 1, "10.244.1.0/24"), now)
        .unwrap();
    // A session between the peer and the old device, as before the upgrade. The old device's
    // replies go straight to the peer here (it still reads the sockets).
    peer.0.handle_tun_packet(&ipv4(0), &mut peer.1);
    for _ in 0..10 {
        let to_old = std::mem::take(&mut peer.1.outbox);
        let to_peer = std::mem::take(&mut old.1.outbox);
        for (_, p) in to_old {
            old.0.handle_datagram(&p, addr(1), now, &mut old.1);
        }
        for (_, p) in to_peer {
            peer.0.handle_datagram(&p, addr(2), now, &mut peer.1);
        }
    }
    assert_eq!(old.1.delivered, vec![0], "no session before the upgrade");

    // The handover: the successor is configured from the old device's export.
    let mut config = old.0.export(51871, 0);
    let key = config.private_key.take().expect("the export holds the key");
    let mut new = (Device::new(key, now), Wire::default());
    new.0.set_index_base(old.0.next_index());
    new.0.apply(config, now).unwrap();
    assert!(!new.0.all_sessions_up());
    // The peer sends before the successor's handshake reaches it, and after.
    peer.0.handle_tun_packet(&ipv4(1), &mut peer.1);
    new.0.flush_new_peers(&mut new.1);
    peer.0.handle_tun_packet(&ipv4(2), &mut peer.1);
    pump(&mut peer, &mut old, &mut new);
    for seq in 3..10 {
        peer.0.handle_tun_packet(&ipv4(seq), &mut peer.1);
        pump(&mut peer, &mut old, &mut new);
    }
    assert!(new.0.all_sessions_up(), "the successor has a session");
    let mut got: Vec<u32> = old
        .1
        .delivered
        .iter()
        .chain(&new.1.delivered)
        .copied()
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>(), "lost or duplicated");
    assert!(
        old.1.delivered.contains(&1),
        "the old session's packet went through the old device"
    );
    assert!(
        new.1.delivered.contains(&9),
        "later packets use the successor's session"
    );
}
