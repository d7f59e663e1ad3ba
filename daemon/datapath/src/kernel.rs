//! The kernel WireGuard backend, through defguard_wireguard_rs (netlink). Chosen by
//! `datapath: kernel`, or by `auto` where `ip link add type wireguard` works.
//!
//! UNTESTED END TO END: the machines this project is developed and tested on have no WireGuard
//! module, so only the translation between our device model and defguard's (below) is tested.

use std::sync::Mutex;

use defguard_wireguard_rs::host::Host;
use defguard_wireguard_rs::key::Key;
use defguard_wireguard_rs::net::IpAddrMask;
use defguard_wireguard_rs::peer::Peer;
use defguard_wireguard_rs::{InterfaceConfiguration, WGApi, WireguardInterfaceApi};
use ipnet::IpNet;
use wiremesh_key::{PrivateKey, PublicKey};

use crate::model::{DeviceError, DeviceState, PeerChange, PeerState, Psk, SetRequest};

pub struct Kernel {
    api: Mutex<WGApi<defguard_wireguard_rs::Kernel>>,
    interface: String,
}

fn kerr(e: impl std::fmt::Display) -> DeviceError {
    DeviceError::Kernel(e.to_string())
}

impl Kernel {
    /// Configures an existing kernel WireGuard interface (created by the caller through
    /// rtnetlink) with the node's key and port.
    pub fn configure(
        interface: &str,
        key: &PrivateKey,
        port: u16,
        mtu: u32,
    ) -> Result<Self, DeviceError> {
        let api = WGApi::<defguard_wireguard_rs::Kernel>::new(interface).map_err(kerr)?;
        let b64 = {
            use base64::Engine;
            zeroize::Zeroizing::new(
                base64::engine::general_purpose::STANDARD.encode(key.secret().as_bytes()),
            )
        };
        let mut config = InterfaceConfiguration {
            name: interface.to_string(),
            prvkey: b64.to_string(),
            addresses: Vec::new(),
            port,
            peers: Vec::new(),
            mtu: Some(mtu),
            fwmark: None,
        };
        let configured = api.configure_interface(&config);
        // The library's type holds the key in a plain String.
        zeroize::Zeroize::zeroize(&mut config.prvkey);
        configured.map_err(kerr)?;
        Ok(Self {
            api: Mutex::new(api),
            interface: interface.to_string(),
        })
    }

    pub fn set(&self, req: SetRequest) -> Result<(), DeviceError> {
        let api = self
            .api
            .lock()
            .map_err(|_| kerr("kernel backend lock poisoned"))?;
        if req.private_key.is_some() || req.listen_port.is_some() || req.fwmark.is_some() {
            return Err(DeviceError::Invalid(format!(
                "changing key, port or fwmark of kernel interface {} through wiremesh is not \
                 supported; use `wg set` directly",
                self.interface
            )));
        }
        let rotating =
            req.next_private_key.is_some() || req.peers.iter().any(|p| p.next_public_key.is_some());
        if rotating {
            return Err(DeviceError::Invalid(
                "make-before-break key rotation needs the userspace data path (datapath: userspace)"
                    .into(),
            ));
        }
        let host = api.read_interface_data().map_err(kerr)?;
        if req.replace_peers {
            for key in host.peers.keys() {
                api.remove_peer(key).map_err(kerr)?;
            }
        }
        for change in req.peers {
            let key = Key::new(*change.public_key.as_bytes());
            if change.remove {
                api.remove_peer(&key).map_err(kerr)?;
                continue;
            }
            let existing = host.peers.get(&key).filter(|_| !req.replace_peers);
            if existing.is_none() && change.update_only {
                continue;
            }
            api.configure_peer(&merge_peer(existing, &change))
                .map_err(kerr)?;
        }
        Ok(())
    }

    pub fn get(&self) -> Result<DeviceState, DeviceError> {
        let api = self
            .api
            .lock()
            .map_err(|_| kerr("kernel backend lock poisoned"))?;
        Ok(host_to_state(api.read_interface_data().map_err(kerr)?))
    }
}

/// The peer as it must be after `change`, starting from what the kernel has now.
fn merge_peer(existing: Option<&Peer>, change: &PeerChange) -> Peer {
    let mut peer = existing
        .cloned()
        .unwrap_or_else(|| Peer::new(Key::new(*change.public_key.as_bytes())));
    if let Some(psk) = change.preshared_key {
        peer.preshared_key = psk.map(|p| Key::new(p.0));
    }
    if let Some(ep) = change.endpoint {
        peer.endpoint = Some(ep);
    }
    if let Some(k) = change.persistent_keepalive {
        peer.persistent_keepalive_interval = (k != 0).then_some(k);
    }
    if change.replace_allowed_ips {
        peer.allowed_ips.clear();
    }
    for net in &change.allowed_ips {
        let mask = IpAddrMask::new(net.network(), net.prefix_len());
        if !peer.allowed_ips.contains(&mask) {
            peer.allowed_ips.push(mask);
        }
    }
    peer
}

fn host_to_state(host: Host) -> DeviceState {
    let mut peers: Vec<PeerState> = host
        .peers
        .into_values()
        .map(|p| PeerState {
            public_key: PublicKey::from_bytes(p.public_key.as_array()),
            preshared_key: p.preshared_key.map(|k| Psk(k.as_array())),
            endpoint: p.endpoint,
            persistent_keepalive: p.persistent_keepalive_interval.unwrap_or(0),
            allowed_ips: p
                .allowed_ips
                .iter()
                .filter_map(|m| IpNet::new(m.address, m.cidr).ok())
                .collect(),
            last_handshake: p.last_handshake,
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
            next_public_key: None,
            active_key: p
                .last_handshake
                .map(|_| PublicKey::from_bytes(p.public_key.as_array())),
            ready_for: Vec::new(),
        })
        .collect();
    peers.sort_by_key(|p| p.public_key);
    DeviceState {
        private_key: host
            .private_key
            .map(|k| PrivateKey::from_bytes(k.as_array())),
        next_public_key: None,
        listen_port: host.listen_port,
        fwmark: host.fwmark.unwrap_or(0),
        peers,
        handshakes: None,
        process: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PublicKey {
        PrivateKey::generate().public_key()
    }

    #[test]
    fn merge_adds_allowed_ips_and_keeps_existing_fields() {
        let pk = key();
        let mut change = PeerChange::new(pk);
        change.endpoint = Some("198.18.0.2:51871".parse().unwrap());
        change.allowed_ips = vec!["10.244.2.0/24".parse().unwrap()];
        let first = merge_peer(None, &change);
        assert_eq!(first.public_key.as_array(), *pk.as_bytes());
        assert_eq!(
            first.allowed_ips,
            vec![IpAddrMask::new("10.244.2.0".parse().unwrap(), 24)]
        );

        let mut second = PeerChange::new(pk);
        second.allowed_ips = vec!["fd00::/64".parse().unwrap()];
        let merged = merge_peer(Some(&first), &second);
        assert_eq!(merged.endpoint, first.endpoint);
        assert_eq!(merged.allowed_ips.len(), 2);

        let mut replace = PeerChange::new(pk);
        replace.replace_allowed_ips = true;
        replace.persistent_keepalive = Some(0);
        let replaced = merge_peer(Some(&merged), &replace);
        assert!(replaced.allowed_ips.is_empty());
        assert_eq!(replaced.persistent_keepalive_interval, None);
    }

    #[test]
    fn host_translates_to_device_state() {
        let pk = key();
        let mut peer = Peer::new(Key::new(*pk.as_bytes()));
        peer.allowed_ips = vec![IpAddrMask::new("10.244.2.0".parse().unwrap(), 24)];
        peer.rx_bytes = 7;
        let mut host = Host::new(51871, Key::new([1; 32]));
        host.peers.insert(peer.public_key.clone(), peer);
        let state = host_to_state(host);
        assert_eq!(state.listen_port, 51871);
        assert_eq!(state.peers.len(), 1);
        assert_eq!(state.peers[0].public_key, pk);
        assert_eq!(state.peers[0].rx_bytes, 7);
        assert_eq!(
            state.peers[0].allowed_ips,
            vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]
        );
    }
}
