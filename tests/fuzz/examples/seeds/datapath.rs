//! Seeds of the data path's targets: real WireGuard traffic between two devices (handshake
//! initiation, response, data, replays, a handshake flood), packets as read from the TUN, and
//! UAPI `set` requests and `get` answers as `wg` and the agent exchange them.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, SystemTime};

use keymgr::PrivateKey;
use wiremesh_datapath::uapi::format_set;
use wiremesh_datapath::uapi::state::format_get;
use wiremesh_datapath::model::{DeviceState, HandshakeStats, PeerChange, PeerState, Psk, SetRequest};
use wiremesh_fuzz::device::{encode, Op, Pair, B_KEY};

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&28u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..28].copy_from_slice(b"\x30\x39\x00\x35\x00\x08\x00\x00");
    p
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&8u16.to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn pod(node: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, 11)
}

fn pod6(node: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, node, 0, 0, 0, 0, 0x11)
}

fn device_seeds(dir: &Path) -> std::io::Result<()> {
    let ping = ipv4(pod(2), pod(1));
    let init = Pair::new(false).b_sends(&ping).remove(0);
    let response = Pair::new(false).b_answers_a().remove(0);
    let data = Pair::new(true).b_sends(&ping).remove(0);
    let b_hex = PrivateKey::from_bytes(B_KEY).public_key().to_hex();
    let next = PrivateKey::from_bytes([0x44; 32]);
    let uapi = |s: String| (Op::ApplyUapi, s.into_bytes());
    let seeds: Vec<(&str, Vec<(Op, Vec<u8>)>)> = vec![
        ("setup-only", vec![]),
        ("peer-ping-v4", vec![(Op::TunToPeer, ping.clone())]),
        ("peer-ping-v6", vec![(Op::TunToPeer, ipv6(pod6(2), pod6(1)))]),
        ("peer-spoofed-source", vec![(Op::TunToPeer, ipv4(pod(3), pod(1)))]),
        (
            "tun-packets",
            vec![
                (Op::TunToA, ipv4(pod(1), pod(2))),
                (Op::Pump, vec![]),
                (Op::TunToA, ipv4(pod(1), pod(3))),
                (Op::TunToA, ipv4(pod(1), Ipv4Addr::new(10, 9, 9, 9))),
                (Op::TunToA, ipv6(pod6(1), pod6(2))),
                (Op::Pump, vec![]),
            ],
        ),
        ("handshake-init-from-peer", vec![(Op::DatagramFromPeer, init.clone())]),
        (
            "handshake-init-from-stranger-and-mapped",
            vec![
                (Op::DatagramFromStranger, init.clone()),
                (Op::DatagramFromPeerMapped, init.clone()),
                (Op::Pump, vec![]),
            ],
        ),
        ("handshake-response", vec![(Op::DatagramFromPeer, response)]),
        ("data-of-another-session", vec![(Op::DatagramFromPeer, data)]),
        (
            "replay-mutate-truncate",
            vec![
                (Op::TunToPeer, ping.clone()),
                (Op::ReplayCaptured, vec![1]),
                (Op::MutateCaptured, vec![1, 16, 0, 1]),
                (Op::TruncateCaptured, vec![1, 20, 0]),
            ],
        ),
        (
            "timers",
            vec![
                (Op::Tick, vec![5]),
                (Op::Tick, vec![30]),
                (Op::TunToA, ipv4(pod(1), pod(2))),
                (Op::Tick, vec![200]),
            ],
        ),
        ("handshake-flood", {
            let mut ops = vec![(Op::DatagramFromStranger, init.clone()); 110];
            ops.push((Op::ResetRateLimiters, vec![]));
            ops.push((Op::DatagramFromPeer, init));
            ops
        }),
        (
            "uapi-remove-peer",
            vec![
                uapi(format!("public_key={b_hex}\nremove=true\n")),
                (Op::TunToPeer, ping.clone()),
            ],
        ),
        (
            "uapi-allowed-ips",
            vec![
                uapi(format!(
                    "public_key={b_hex}\nreplace_allowed_ips=true\nallowed_ip=10.244.3.0/24\n"
                )),
                (Op::TunToPeer, ipv4(pod(3), pod(1))),
                (Op::TunToPeer, ping.clone()),
            ],
        ),
        (
            "uapi-rotate",
            vec![
                uapi(format!(
                    "wiremesh_next_private_key={}\n",
                    next.to_hex_for_uapi().as_str()
                )),
                (Op::TunToPeer, ping.clone()),
                (Op::Tick, vec![2]),
                uapi(format!(
                    "private_key={}\n",
                    next.to_hex_for_uapi().as_str()
                )),
                (Op::Tick, vec![20]),
                (Op::TunToPeer, ping),
            ],
        ),
    ];
    for (name, ops) in seeds {
        write(dir, name, &encode(&ops))?;
    }
    Ok(())
}

fn key(n: u8) -> PrivateKey {
    PrivateKey::from_bytes([n; 32])
}

fn uapi_set_seeds(dir: &Path) -> std::io::Result<()> {
    let pk = |n| key(n).public_key().to_hex();
    // What `wg set` / `wg setconf` send (wireguard-tools' ipc-uapi.h), and the agent's requests.
    write(
        dir,
        "wg-set",
        format!(
            "set=1\nprivate_key={}\nlisten_port=51871\nreplace_peers=true\npublic_key={}\n\
             endpoint=198.18.0.2:51871\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=10.244.2.0/24\nallowed_ip=fd00::/64\n",
            key(1).to_hex_for_uapi().as_str(),
            pk(2)
        )
        .as_bytes(),
    )?;
    write(
        dir,
        "wg-set-remove-v6",
        format!(
            "set=1\nfwmark=0\npublic_key={0}\nendpoint=[fd00::1]:51871\npublic_key={0}\n\
             remove=true\npublic_key={1}\nupdate_only=true\npreshared_key={2}\n\
             protocol_version=1\n",
            pk(2),
            pk(3),
            "0".repeat(64)
        )
        .as_bytes(),
    )?;
    let mut c = PeerChange::new(key(2).public_key());
    c.endpoint = Some("[fd00::2]:51871".parse().expect("literal"));
    c.persistent_keepalive = Some(25);
    c.replace_allowed_ips = true;
    c.allowed_ips = vec!["10.244.2.0/24".parse().expect("literal")];
    c.next_public_key = Some(Some(key(4).public_key()));
    c.preshared_key = Some(Some(Psk([7; 32])));
    let mut withdraw = PeerChange::new(key(3).public_key());
    withdraw.next_public_key = Some(None);
    withdraw.preshared_key = Some(None);
    let agent = SetRequest {
        private_key: Some(key(1)),
        next_private_key: Some(Some(key(5))),
        listen_port: Some(51871),
        fwmark: Some(51),
        replace_peers: true,
        peers: vec![c, withdraw, PeerChange::removal(key(6).public_key())],
    };
    write(dir, "agent-set", format_set(&agent).as_bytes())?;
    let unstage = SetRequest {
        next_private_key: Some(None),
        ..SetRequest::default()
    };
    write(dir, "agent-unstage", format_set(&unstage).as_bytes())?;
    write(dir, "get", b"get=1\n")?;
    write(dir, "wiremesh-get", b"wiremesh_get=1\n")
}

fn uapi_get_seeds(dir: &Path) -> std::io::Result<()> {
    let peer = PeerState {
        public_key: key(2).public_key(),
        preshared_key: Some(Psk([7; 32])),
        endpoint: Some("198.18.0.2:51871".parse().expect("literal")),
        persistent_keepalive: 25,
        allowed_ips: vec![
            "10.244.2.0/24".parse().expect("literal"),
            "fd00:244:2::/64".parse().expect("literal"),
        ],
        last_handshake: Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)),
        rx_bytes: 10,
        tx_bytes: 20,
        next_public_key: Some(key(4).public_key()),
        active_key: Some(key(2).public_key()),
        ready_for: vec![key(1).public_key(), key(5).public_key()],
    };
    let fresh = PeerState {
        public_key: key(3).public_key(),
        preshared_key: None,
        endpoint: Some("[fd00::3]:51871".parse().expect("literal")),
        persistent_keepalive: 0,
        allowed_ips: vec![],
        last_handshake: None,
        rx_bytes: 0,
        tx_bytes: 0,
        next_public_key: None,
        active_key: None,
        ready_for: vec![],
    };
    let state = DeviceState {
        private_key: Some(key(1)),
        next_public_key: Some(key(5).public_key()),
        listen_port: 51871,
        fwmark: 51,
        peers: vec![peer, fresh],
        handshakes: Some(HandshakeStats {
            processed: 12,
            invalid_mac: 3,
            cookie_sent: 40,
            cookie_suppressed: 7,
            rate_limited: 900,
        }),
        process: None,
    };
    // The client collects the answer up to (not including) the empty line.
    let answer = |extended| format_get(&state, extended).trim_end_matches('\n').to_owned() + "\n";
    write(dir, "extended", answer(true).as_bytes())?;
    write(dir, "stock", answer(false).as_bytes())?;
    write(dir, "errno", b"errno=19\n")?;
    write(dir, "empty-device", b"listen_port=0\nerrno=0\n")
}

/// Writes the `device`, `uapi_set` and `uapi_get` corpora under `corpus`.
pub fn write_all(corpus: &Path) -> std::io::Result<()> {
    device_seeds(&corpus.join("device"))?;
    uapi_set_seeds(&corpus.join("uapi_set"))?;
    uapi_get_seeds(&corpus.join("uapi_get"))
}
