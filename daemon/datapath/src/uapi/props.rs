//! Property tests of the UAPI text in both directions: any `set` request the agent can build
//! reads back as the same request, and any `get` answer a data path can give reads back as the
//! same state (the fuzz targets `uapi_set` / `uapi_get` check the other way round: whatever
//! parses, formats back to a fixpoint).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use proptest::prelude::*;
use wiremesh_key::{PrivateKey, PublicKey};

use super::state::{format_get, parse_get};
use super::{format_set, parse, Request};
use crate::model::{DeviceState, PeerChange, PeerState, Psk, SetRequest};

/// 32 bytes that are not all zero: the text encodes "none" as the zero key.
fn key_bytes() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>().prop_map(|mut b| {
        b[0] |= 1;
        b
    })
}

fn public_key() -> impl Strategy<Value = PublicKey> {
    key_bytes().prop_map(PublicKey::from_bytes)
}

fn private_key() -> impl Strategy<Value = PrivateKey> {
    key_bytes().prop_map(PrivateKey::from_bytes)
}

fn endpoint() -> impl Strategy<Value = SocketAddr> {
    (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn network() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<std::net::Ipv4Addr>(), 0u8..=32).prop_map(|(a, l)| IpNet::new(a.into(), l)),
        (any::<std::net::Ipv6Addr>(), 0u8..=128).prop_map(|(a, l)| IpNet::new(a.into(), l)),
    ]
    .prop_map(|n| n.expect("prefix length in range"))
}

fn peer_change() -> impl Strategy<Value = PeerChange> {
    let fields = (
        any::<bool>(),
        proptest::option::of(proptest::option::of(key_bytes().prop_map(Psk))),
        proptest::option::of(endpoint()),
        proptest::option::of(any::<u16>()),
        any::<bool>(),
        proptest::collection::vec(network(), 0..4),
        proptest::option::of(proptest::option::of(public_key())),
    );
    (public_key(), any::<bool>(), fields).prop_map(|(key, remove, f)| {
        if remove {
            // A removal carries nothing else on the wire.
            return PeerChange::removal(key);
        }
        PeerChange {
            update_only: f.0,
            preshared_key: f.1,
            endpoint: f.2,
            persistent_keepalive: f.3,
            replace_allowed_ips: f.4,
            allowed_ips: f.5.into_iter().map(|n| n.trunc()).collect(),
            next_public_key: f.6,
            ..PeerChange::new(key)
        }
    })
}

fn set_request() -> impl Strategy<Value = SetRequest> {
    (
        proptest::option::of(private_key()),
        proptest::option::of(proptest::option::of(private_key())),
        proptest::option::of(any::<u16>()),
        proptest::option::of(any::<u32>()),
        any::<bool>(),
        proptest::collection::vec(peer_change(), 0..4),
    )
        .prop_map(|(pk, next, port, mark, replace, peers)| SetRequest {
            private_key: pk,
            next_private_key: next,
            listen_port: port,
            fwmark: mark,
            replace_peers: replace,
            peers,
        })
}

type PeerView = (
    PublicKey,
    (bool, bool),
    Option<Option<[u8; 32]>>,
    Option<SocketAddr>,
    Option<u16>,
    bool,
    Vec<IpNet>,
    Option<Option<PublicKey>>,
);

/// Everything a request says, private keys by their public half (they have no `PartialEq`).
fn view(r: &SetRequest) -> impl PartialEq + std::fmt::Debug {
    let peers: Vec<PeerView> = r
        .peers
        .iter()
        .map(|p| {
            (
                p.public_key,
                (p.remove, p.update_only),
                p.preshared_key.map(|o| o.map(|k| k.0)),
                p.endpoint,
                p.persistent_keepalive,
                p.replace_allowed_ips,
                p.allowed_ips.clone(),
                p.next_public_key,
            )
        })
        .collect();
    (
        r.private_key.as_ref().map(PrivateKey::public_key),
        r.next_private_key
            .as_ref()
            .map(|o| o.as_ref().map(PrivateKey::public_key)),
        (r.listen_port, r.fwmark, r.replace_peers),
        peers,
    )
}

fn peer_state() -> impl Strategy<Value = PeerState> {
    let handshake = (1u64..=i32::MAX as u64, 0u32..1_000_000_000)
        .prop_map(|(s, n)| UNIX_EPOCH + Duration::new(s, n));
    (
        (
            public_key(),
            proptest::option::of(key_bytes().prop_map(Psk)),
            proptest::option::of(endpoint()),
            any::<u16>(),
            proptest::collection::vec(network(), 0..4),
            proptest::option::of(handshake),
        ),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(public_key()),
            proptest::option::of(public_key()),
            proptest::collection::vec(public_key(), 0..3),
        ),
    )
        .prop_map(|(a, b)| PeerState {
            public_key: a.0,
            preshared_key: a.1,
            endpoint: a.2,
            persistent_keepalive: a.3,
            allowed_ips: a.4,
            last_handshake: a.5,
            rx_bytes: b.0,
            tx_bytes: b.1,
            next_public_key: b.2,
            active_key: b.3,
            ready_for: b.4,
        })
}

fn device_state() -> impl Strategy<Value = DeviceState> {
    (
        proptest::option::of(private_key()),
        proptest::option::of(public_key()),
        any::<u16>(),
        any::<u32>(),
        proptest::collection::vec(peer_state(), 0..4),
    )
        .prop_map(|(pk, next, port, fwmark, peers)| DeviceState {
            private_key: pk,
            next_public_key: next,
            listen_port: port,
            fwmark,
            peers,
            handshakes: None,
            process: None,
        })
}

proptest! {
    #[test]
    fn every_set_request_reads_back_as_itself(req in set_request()) {
        let text = format_set(&req);
        let Ok(Request::Set(back)) = parse(&text) else {
            panic!("format_set wrote what parse refuses:\n{}", text.as_str());
        };
        prop_assert_eq!(view(&back), view(&req), "{}", text.as_str());
    }

    #[test]
    fn every_extended_get_answer_reads_back_as_itself(state in device_state()) {
        let text = format_get(&state, true);
        let back = parse_get(&text).map_err(|e| TestCaseError::fail(format!("{e}:\n{}", text.as_str())))?;
        prop_assert_eq!(&back.peers, &state.peers);
        prop_assert_eq!(back.next_public_key, state.next_public_key);
        prop_assert_eq!((back.listen_port, back.fwmark), (state.listen_port, state.fwmark));
        prop_assert_eq!(
            back.private_key.map(|k| k.public_key()),
            state.private_key.map(|k| k.public_key())
        );
    }

    /// Stock `wg` sees no wiremesh extension, and the rest of the state whole.
    #[test]
    fn a_stock_get_answer_reads_back_without_the_extensions(state in device_state()) {
        let text = format_get(&state, false);
        let back = parse_get(&text).map_err(|e| TestCaseError::fail(format!("{e}:\n{}", text.as_str())))?;
        let expected: Vec<PeerState> = state
            .peers
            .iter()
            .map(|p| PeerState {
                next_public_key: None,
                active_key: None,
                ready_for: Vec::new(),
                ..p.clone()
            })
            .collect();
        prop_assert_eq!(back.peers, expected);
        prop_assert_eq!(back.next_public_key, None);
    }
}
