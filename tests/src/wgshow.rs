//! Reading `wg show <iface>` output, so tests can assert on what stock tooling sees.

use std::collections::BTreeMap;

/// One `peer:` section of `wg show`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: String,
    /// The indented `name: value` lines (`endpoint`, `allowed ips`, `latest handshake`,
    /// `transfer`, ...).
    pub fields: BTreeMap<String, String>,
}

impl WgPeer {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// The peers listed by `wg show <iface>`, in order.
pub fn parse_wg_show(text: &str) -> Vec<WgPeer> {
    let mut peers: Vec<WgPeer> = Vec::new();
    let mut in_peer = false;
    for line in text.lines() {
        let Some((name, value)) = line.trim().split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if !line.starts_with(char::is_whitespace) {
            in_peer = name == "peer";
            if in_peer {
                peers.push(WgPeer {
                    public_key: value.to_owned(),
                    fields: BTreeMap::new(),
                });
            }
            continue;
        }
        if let (true, Some(peer)) = (in_peer, peers.last_mut()) {
            peer.fields.insert(name.to_owned(), value.to_owned());
        }
    }
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peers_and_their_fields() {
        let text = "interface: wiremesh_wg0\n  public key: AAA=\n  private key: (hidden)\n  listening port: 51871\n\n\
                    peer: BBB=\n  endpoint: 198.18.0.2:51871\n  allowed ips: 10.244.2.0/24\n  \
                    latest handshake: 3 seconds ago\n  transfer: 1.23 KiB received, 2.34 KiB sent\n\n\
                    peer: CCC=\n  endpoint: 198.18.0.3:51871\n  allowed ips: 10.244.3.0/24\n";
        let peers = parse_wg_show(text);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].public_key, "BBB=");
        assert_eq!(peers[0].field("latest handshake"), Some("3 seconds ago"));
        assert_eq!(
            peers[0].field("transfer"),
            Some("1.23 KiB received, 2.34 KiB sent")
        );
        assert_eq!(peers[1].field("endpoint"), Some("198.18.0.3:51871"));
        assert_eq!(peers[1].field("latest handshake"), None);
    }
}
